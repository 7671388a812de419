package otlplog

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	promtest "github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/pgaudit-proxy/pgaudit/internal/auditlog"
	"github.com/pgaudit-proxy/pgaudit/internal/event"
	"github.com/pgaudit-proxy/pgaudit/internal/testutil"
)

func TestMain(m *testing.M) { testutil.Main(m) }

const testTraceParent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"

// openMirrored opens an audit log writing to buf that mirrors into a new
// Exporter for endpoint.
func openMirrored(t *testing.T, endpoint string, queue int, buf io.Writer) (*auditlog.Log, *Exporter) {
	t.Helper()
	exp, err := New(Config{Endpoint: endpoint, QueueSize: queue, ExportInterval: 50 * time.Millisecond,
		ExportTimeout: 2 * time.Second, ServiceVersion: "test",
		Server: func(db string) (string, int, bool) { return "db.internal", 5432, db == "shop" }})
	if err != nil {
		t.Fatal(err)
	}
	al, err := auditlog.Open(auditlog.Config{Writer: buf, Mirror: exp, RunID: "run1", FlushInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	return al, exp
}

func TestRecordsReachCollector(t *testing.T) {
	col := testutil.StartCollector(t)
	var file bytes.Buffer
	al, exp := openMirrored(t, col.Endpoint, 0, &file)
	start := time.Date(2026, 12, 2, 10, 0, 0, 0, time.UTC)
	al.WriteStatement(&auditlog.Statement{
		Event: &event.Event{Database: "shop", User: "app", ApplicationName: "api", ClientAddr: "10.1.2.3",
			Text: "SELECT * FROM users WHERE email = 'secret@example.com'", Start: start,
			Duration: 1500 * time.Microsecond, Command: "SELECT", Rows: 1, SessionID: 7},
		HasShape: true, Fingerprint: 0xabc, Query: "SELECT * FROM users WHERE email = $1",
		TraceParent: testTraceParent, Tags: map[string]string{"route": "/login"},
	})
	al.WriteStatement(&auditlog.Statement{
		Event: &event.Event{Database: "shop", User: "app", Text: "INSERT INTO orders VALUES (42)",
			Command: "INSERT", SQLState: "23505", Rows: -1},
		HasShape: true, Fingerprint: 0xdef, Query: "INSERT INTO orders VALUES ($1)",
	})
	if err := al.WriteFinding(map[string]any{"id": "n-plus-one:abc", "rule": "n-plus-one", "severity": "warning",
		"fingerprint": "0000000000000abc", "query": "SELECT * FROM users WHERE email = $1", "message": "N+1 loop",
		"evidence": map[string]any{"repeats": 40, "share": 0.5}, "count": 3, "database": "shop",
		"traceparent": testTraceParent}); err != nil {
		t.Fatal(err)
	}
	if err := al.WritePool(map[string]any{"database": "shop", "user": "app", "pool_mode": "transaction",
		"pool_size": 20, "cl_active": 3, "utilization": 0.25}); err != nil {
		t.Fatal(err)
	}
	stats := map[string]any{"calls": 5, "total_us": 100.0, "overflow": 0, "omitted": 0,
		"shapes": []any{
			map[string]any{"fingerprint": "0000000000000abc", "query": "SELECT * FROM users WHERE email = $1",
				"calls": 4, "errors": 0, "rows": 4, "p99_us": 20.5, "sketch": map[string]any{"bins": []int{1}}},
		},
		"other": map[string]any{"calls": 1, "errors": 1, "rows": 0, "p99_us": 3.0}}
	if err := al.WriteStats(stats, true); err != nil {
		t.Fatal(err)
	}
	if err := al.Close(); err != nil {
		t.Fatal(err)
	}
	if err := exp.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	c := exp.Counters()
	if c.Exported != 6 || c.Failed != 0 || c.Dropped != 0 || c.Queued != 0 {
		t.Fatalf("counters = %+v, want 6 exported and nothing else", c)
	}
	var recs []testutil.LogRecord
	testutil.Eventually(t, 10*time.Second, "6 records in the collector's file", func() bool {
		recs = col.Records(t)
		return len(recs) >= 6
	})
	if len(recs) != 6 {
		t.Fatalf("collector has %d records, want 6", len(recs))
	}
	byName := map[string][]testutil.LogRecord{}
	for _, r := range recs {
		byName[r.EventName] = append(byName[r.EventName], r)
		if r.Resource["service.name"] != "pgaudit" {
			t.Errorf("%s: resource service.name = %v", r.EventName, r.Resource["service.name"])
		}
		if r.Attributes["db.system.name"] != "postgresql" || r.Attributes["pgaudit.run_id"] != "run1" {
			t.Errorf("%s: db.system.name %v, run_id %v", r.EventName, r.Attributes["db.system.name"], r.Attributes["pgaudit.run_id"])
		}
	}
	stmts := byName[EventStatement]
	if len(stmts) != 2 {
		t.Fatalf("%d statement records, want 2", len(stmts))
	}
	ok, failed := stmts[0], stmts[1]
	tests := []struct {
		rec  testutil.LogRecord
		key  string
		want any
	}{
		{ok, "db.namespace", "shop"},
		{ok, "db.query.text", "SELECT * FROM users WHERE email = $1"},
		{ok, "db.query.summary", "SELECT users"},
		{ok, "db.operation.name", "SELECT"},
		{ok, "db.collection.name", "users"},
		{ok, "db.response.returned_rows", int64(1)},
		{ok, "server.address", "db.internal"},
		{ok, "server.port", int64(5432)},
		{ok, "client.address", "10.1.2.3"},
		{ok, "user.name", "app"},
		{ok, "pgaudit.application_name", "api"},
		{ok, "pgaudit.duration_us", int64(1500)},
		{ok, "pgaudit.fingerprint", "0000000000000abc"},
		{ok, "pgaudit.session_id", int64(7)},
		{ok, "pgaudit.tags.route", "/login"},
		{ok, "pgaudit.start", "2026-12-02T10:00:00Z"},
		{ok, "db.response.status_code", nil},
		{failed, "db.response.status_code", "23505"},
		{failed, "error.type", "23505"},
		{failed, "db.query.summary", "INSERT orders"},
		{failed, "db.response.returned_rows", nil},
	}
	for _, tt := range tests {
		if got := tt.rec.Attributes[tt.key]; got != tt.want {
			t.Errorf("%s %s = %#v, want %#v", tt.rec.EventName, tt.key, got, tt.want)
		}
	}
	for _, r := range stmts {
		for k, v := range r.Attributes {
			if s, ok := v.(string); ok && (strings.Contains(s, "secret@") || strings.Contains(s, "42")) {
				t.Errorf("attribute %s carries a literal: %q", k, s)
			}
		}
	}
	if ok.TraceID != "4bf92f3577b34da6a3ce929d0e0e4736" || ok.SpanID != "00f067aa0ba902b7" {
		t.Errorf("statement trace context = %q/%q", ok.TraceID, ok.SpanID)
	}
	if failed.TraceID != "" || failed.SeverityText != "ERROR" || ok.SeverityText != "INFO" {
		t.Errorf("failed statement: trace %q, severity %q; ok severity %q", failed.TraceID, failed.SeverityText, ok.SeverityText)
	}
	if ok.Body != "SELECT * FROM users WHERE email = $1" || !ok.Time.Equal(ok.Time.UTC()) {
		t.Errorf("statement body %v", ok.Body)
	}

	f := byName[EventFinding]
	if len(f) != 1 {
		t.Fatalf("%d finding records", len(f))
	}
	for key, want := range map[string]any{
		"pgaudit.finding.rule": "n-plus-one", "pgaudit.finding.id": "n-plus-one:abc",
		"pgaudit.finding.evidence.repeats": int64(40), "pgaudit.finding.evidence.share": 0.5,
		"pgaudit.finding.count": int64(3), "db.namespace": "shop", "db.query.summary": "SELECT users",
		"pgaudit.fingerprint": "0000000000000abc", "server.address": "db.internal",
	} {
		if got := f[0].Attributes[key]; got != want {
			t.Errorf("finding %s = %#v, want %#v", key, got, want)
		}
	}
	if f[0].SeverityText != "WARN" || f[0].Body != "N+1 loop" || f[0].TraceID != "4bf92f3577b34da6a3ce929d0e0e4736" {
		t.Errorf("finding severity %q body %v trace %q", f[0].SeverityText, f[0].Body, f[0].TraceID)
	}

	p := byName[EventPool]
	if len(p) != 1 || p[0].Attributes["db.namespace"] != "shop" || p[0].Attributes["pgaudit.pool.pool_size"] != int64(20) ||
		p[0].Attributes["pgaudit.pool.utilization"] != 0.25 || p[0].Attributes["pgaudit.pool.pool_mode"] != "transaction" {
		t.Errorf("pool records: %+v", p)
	}

	s := byName[EventStats]
	if len(s) != 2 {
		t.Fatalf("%d stats records, want 2 (one shape, other)", len(s))
	}
	if s[0].Attributes["db.query.summary"] != "SELECT users" || s[0].Attributes["pgaudit.stats.calls"] != int64(4) ||
		s[0].Attributes["pgaudit.stats.p99_us"] != 20.5 || s[0].Attributes["pgaudit.stats.final"] != true ||
		s[0].Attributes["pgaudit.stats.seq"] != int64(1) || s[0].Attributes["pgaudit.stats.sketch.bins"] != nil {
		t.Errorf("stats shape record: %+v", s[0].Attributes)
	}
	if s[1].Attributes["pgaudit.stats.other"] != true || s[1].Attributes["pgaudit.stats.errors"] != int64(1) {
		t.Errorf("stats other record: %+v", s[1].Attributes)
	}
	// The file got the same records (one stats record for two shapes).
	if n := strings.Count(file.String(), "\n"); n != 5 {
		t.Errorf("audit file has %d records, want 5", n)
	}
}

// TestDeadCollectorDropsAndCounts mirrors records to an endpoint where
// nothing listens, from several goroutines: no call blocks, the queue
// stays bounded, and every record is accounted for as failed or dropped.
func TestDeadCollectorDropsAndCounts(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := "http://" + l.Addr().String()
	_ = l.Close()
	const queue, writers, each = 16, 4, 500
	al, exp := openMirrored(t, dead, queue, io.Discard)
	var wg sync.WaitGroup
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				al.WriteStatement(&auditlog.Statement{
					Event:    &event.Event{Database: "shop", Command: "SELECT", SessionID: uint64(w)},
					HasShape: true, Query: fmt.Sprintf("SELECT %d", i%3),
				})
				if q := exp.Counters().Queued; q > queue {
					t.Errorf("queue holds %d records, more than its %d", q, queue)
					return
				}
			}
		}()
	}
	wg.Wait()
	c := exp.Counters()
	if c.Dropped == 0 {
		t.Errorf("no record dropped with a dead collector: %+v", c)
	}
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(exp)
	if problems, err := promtest.GatherAndLint(reg); err != nil || len(problems) > 0 {
		t.Errorf("metrics lint: %v %v", err, problems)
	}
	if got := gatherCounter(t, reg, "pgaudit_otlp_log_records_dropped_total"); got < float64(c.Dropped) {
		t.Errorf("dropped metric %v < %d", got, c.Dropped)
	}
	_ = al.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_ = exp.Shutdown(ctx)
	c = exp.Counters()
	if c.Exported != 0 || c.Queued != 0 || c.Failed+c.Dropped != writers*each {
		t.Errorf("after shutdown %+v: want failed+dropped = %d, nothing exported or queued", c, writers*each)
	}
	// Records after shutdown are dropped, not sent.
	al2, err := auditlog.Open(auditlog.Config{Writer: io.Discard, Mirror: exp, FlushInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	al2.WriteStatement(&auditlog.Statement{Event: &event.Event{Database: "shop"}})
	_ = al2.Close()
	if got := exp.Counters().Dropped; got != c.Dropped+1 {
		t.Errorf("a record after shutdown: dropped %d, want %d", got, c.Dropped+1)
	}
}

// gatherCounter returns the value of counter name in reg.
func gatherCounter(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			return mf.GetMetric()[0].GetCounter().GetValue()
		}
	}
	t.Fatalf("metric %s not registered", name)
	return 0
}

func TestEndpointValidation(t *testing.T) {
	tests := []struct {
		endpoint string
		ok       bool
	}{
		{"http://127.0.0.1:4318", true},
		{"https://collector.example:4318/otlp", true},
		{"http://127.0.0.1:4318/v1/logs", true},
		{"127.0.0.1:4318", false},
		{"grpc://127.0.0.1:4317", false},
		{"http://user:hunter2@127.0.0.1:4318", false},
		{"http://", false},
		{"http://user:hunter2@127.0.0.1:bad port", false},
	}
	for _, tt := range tests {
		err := CheckEndpoint(tt.endpoint)
		if (err == nil) != tt.ok {
			t.Errorf("CheckEndpoint(%q) = %v, want ok %v", tt.endpoint, err, tt.ok)
		}
		if err != nil && strings.Contains(err.Error(), "hunter2") {
			t.Errorf("error reveals the password: %v", err)
		}
	}
}
