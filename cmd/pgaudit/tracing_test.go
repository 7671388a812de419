package main

import (
	"context"
	"testing"
	"time"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/pgaudit-proxy/pgaudit/analyzer"
	"github.com/pgaudit-proxy/pgaudit/tracing"
)

// TestTraceObserverSpans runs events through a real analysis pipeline with
// the proxy's tracing wiring: a statement whose sqlcommenter comment
// carries a traceparent becomes a span in that trace with its normalized
// text (no literals) and fingerprint; one without a traceparent gets none.
func TestTraceObserverSpans(t *testing.T) {
	exp := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp))
	defer func() { _ = tp.Shutdown(context.Background()) }()
	pl := analyzer.NewPipeline(analyzer.PipelineConfig{})
	if err := pl.AddObserver(traceObserver(tracing.New(tp))); err != nil {
		t.Fatal(err)
	}
	if err := pl.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	start := time.Date(2026, 11, 27, 8, 0, 0, 0, time.UTC)
	const traceID = "4bf92f3577b34da6a3ce929d0e0e4736"
	const parentID = "00f067aa0ba902b7"
	pl.Offer(&analyzer.Event{Kind: analyzer.KindStatement, Protocol: analyzer.ProtocolSimple,
		Text:     "select name from authors where id = 42 /*traceparent='00-" + traceID + "-" + parentID + "-01',route='%2Fbooks'*/",
		Database: "app", User: "app", Start: start, Duration: 30 * time.Millisecond,
		Command: "SELECT", Rows: 1, SessionID: 7})
	pl.Offer(&analyzer.Event{Kind: analyzer.KindStatement, Protocol: analyzer.ProtocolSimple, Text: "select 1",
		Start: start, Duration: time.Millisecond, Rows: 1})
	if err := pl.Stop(context.Background()); err != nil {
		t.Fatal(err)
	}
	spans := exp.GetSpans()
	if len(spans) != 1 {
		t.Fatalf("got %d spans, want one statement span", len(spans))
	}
	s := spans[0]
	if s.Name != "SELECT" || s.SpanContext.TraceID().String() != traceID || s.Parent.SpanID().String() != parentID {
		t.Fatalf("statement span %q trace %s parent %s", s.Name, s.SpanContext.TraceID(), s.Parent.SpanID())
	}
	attrs := map[string]string{}
	for _, kv := range s.Attributes {
		attrs[string(kv.Key)] = kv.Value.Emit()
	}
	if attrs["db.query.text"] != "select name from authors where id = $1" || len(attrs["pgaudit.fingerprint"]) != 16 {
		t.Fatalf("db.query.text %q fingerprint %q (normalized text only)", attrs["db.query.text"], attrs["pgaudit.fingerprint"])
	}
}
