package tracing

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/pgaudit-proxy/pgaudit/internal/event"
)

// TestSpansFromTraceparent: a statement with a traceparent becomes a span
// in that trace, with a child span for its pool wait; one without, a
// session-state event, or an invalid traceparent gets none.
func TestSpansFromTraceparent(t *testing.T) {
	exp := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp))
	defer tp.Shutdown(context.Background())
	o := New(tp)
	start := time.Date(2026, 11, 27, 8, 0, 0, 0, time.UTC)
	const traceID = "4bf92f3577b34da6a3ce929d0e0e4736"
	const parentID = "00f067aa0ba902b7"
	tp00 := "00-" + traceID + "-" + parentID + "-01"
	fp, _ := event.ParseFingerprint("0123456789abcdef")
	o.Record(Statement{Event: &event.Event{Kind: event.KindStatement, Protocol: event.ProtocolSimple,
		Text:     "select name from authors where id = 42",
		Database: "app", User: "app", Start: start, Duration: 30 * time.Millisecond, Wait: 12 * time.Millisecond,
		Command: "SELECT", Rows: 1, SessionID: 7},
		TraceParent: tp00, Normalized: "select name from authors where id = $1", Fingerprint: fp})
	for _, st := range []Statement{
		{Event: &event.Event{Kind: event.KindStatement, Text: "select 1", Start: start, Duration: time.Millisecond}},
		{Event: &event.Event{Kind: event.KindSessionState, Text: "set x = 1", Start: start}, TraceParent: tp00},
		{Event: &event.Event{Kind: event.KindStatement, Text: "select 1", Start: start}, TraceParent: "00-zz-01"},
		{TraceParent: tp00},
	} {
		o.Record(st)
	}
	spans := exp.GetSpans()
	if len(spans) != 2 {
		t.Fatalf("got %d spans, want a statement span and a wait span", len(spans))
	}
	var stmt, wait tracetest.SpanStub
	for _, s := range spans {
		if s.Name == "pgaudit pool wait" {
			wait = s
		} else {
			stmt = s
		}
	}
	if stmt.Name != "SELECT" || stmt.SpanContext.TraceID().String() != traceID || stmt.Parent.SpanID().String() != parentID {
		t.Fatalf("statement span %q trace %s parent %s", stmt.Name, stmt.SpanContext.TraceID(), stmt.Parent.SpanID())
	}
	if !stmt.StartTime.Equal(start) || stmt.EndTime.Sub(stmt.StartTime) != 30*time.Millisecond {
		t.Fatalf("statement span times %s..%s", stmt.StartTime, stmt.EndTime)
	}
	if wait.Parent.SpanID() != stmt.SpanContext.SpanID() || wait.EndTime.Sub(wait.StartTime) != 12*time.Millisecond {
		t.Fatalf("wait span parent %s duration %s", wait.Parent.SpanID(), wait.EndTime.Sub(wait.StartTime))
	}
	attrs := map[string]string{}
	for _, kv := range stmt.Attributes {
		attrs[string(kv.Key)] = kv.Value.Emit()
	}
	if attrs["db.query.text"] != "select name from authors where id = $1" || attrs["pgaudit.fingerprint"] != fp.String() {
		t.Fatalf("db.query.text = %q, fingerprint %q (normalized text only: literals must not leave the proxy)", attrs["db.query.text"], attrs["pgaudit.fingerprint"])
	}
}

// TestOTLPExport: StartOTLP delivers the spans to an OTLP/HTTP receiver.
func TestOTLPExport(t *testing.T) {
	got := make(chan string, 4)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		got <- fmt.Sprintf("%s %s %s %d", r.Method, r.URL.Path, r.Header.Get("Content-Type"), len(body))
		w.WriteHeader(http.StatusOK)
	}))
	defer srv.Close()
	tp, shutdown, err := StartOTLP(context.Background(), strings.TrimPrefix(srv.URL, "http://"), true, "test")
	if err != nil {
		t.Fatal(err)
	}
	New(tp).Record(Statement{Event: &event.Event{Kind: event.KindStatement, Protocol: event.ProtocolSimple,
		Text: "select 1", Start: time.Now(), Duration: time.Millisecond, Rows: 1},
		TraceParent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", Normalized: "select $1"})
	if err := shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	select {
	case req := <-got:
		if !strings.HasPrefix(req, "POST /v1/traces application/x-protobuf") || strings.HasSuffix(req, " 0") {
			t.Fatalf("receiver got %q", req)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no OTLP request arrived")
	}
}
