package analyzer

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/pgaudit-proxy/pgaudit/internal/auditlog"
	"github.com/pgaudit-proxy/pgaudit/internal/testutil"
	"github.com/pgaudit-proxy/pgaudit/rules"
)

func newTestEngine(t *testing.T, cfg EngineConfig) *Engine {
	t.Helper()
	e, err := NewEngine(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Stop)
	return e
}

func sessionState(detail, text string) *Event {
	return &Event{Kind: KindSessionState, Detail: detail, Text: text, SessionID: 9,
		Database: "app", User: "worker", ApplicationName: "jobs", Start: t0, Rows: -1}
}

func TestEngineTxnPoolingUnsafe(t *testing.T) {
	t.Parallel()
	fp := NewFingerprinter(FingerprintConfig{})
	e := newTestEngine(t, EngineConfig{})
	e.Observe(analyze(fp, sessionState("listen", "LISTEN jobs")))
	e.Observe(analyze(fp, sessionState("listen", "LISTEN jobs")))
	e.Observe(analyze(fp, sessionState("advisory_lock", "SELECT pg_advisory_lock(42) /* pgaudit:ignore txn-pooling-unsafe */")))
	fs := e.Findings()
	if len(fs) != 1 || fs[0].Rule != rules.IDTxnPoolingUnsafe || fs[0].Count != 2 || fs[0].Evidence["feature"] != "listen" ||
		fs[0].Query != "LISTEN jobs" || fs[0].Severity != rules.Error {
		t.Fatalf("findings %+v", fs)
	}
	c := e.Counters()
	if c.Raised != 3 || c.Suppressed != 1 || c.Findings != 1 {
		t.Errorf("counters %+v", c)
	}
	// A statement event is not a session-state finding.
	e.Observe(analyze(fp, stmt("LISTEN other")))
	if len(e.Findings()) != 1 {
		t.Error("statement raised txn-pooling-unsafe")
	}
}

// slowStats builds statistics with one slow shape and one fast shape.
func slowStats(slowCalls int) *Stats {
	st := NewStats(StatsConfig{Now: fixedClock})
	fp := NewFingerprinter(FingerprintConfig{})
	for i := range slowCalls {
		ev := stmt("SELECT * FROM orders WHERE status = 'open' ORDER BY created_at")
		ev.Duration = 600*time.Millisecond + time.Duration(i)*time.Millisecond
		a := analyze(fp, ev)
		st.Record(ev, a.Shape)
	}
	for range 100 {
		ev := stmt("SELECT 1")
		st.Record(ev, analyze(fp, ev).Shape)
	}
	return st
}

func TestEngineSlowQuery(t *testing.T) {
	t.Parallel()
	e := newTestEngine(t, EngineConfig{Stats: slowStats(20)})
	e.EvaluateSlowQueries()
	fs := e.Findings()
	if len(fs) != 1 || fs[0].Rule != rules.IDSlowQuery || fs[0].Count != 20 || fs[0].Evidence["calls"] != int64(20) {
		t.Fatalf("findings %+v", fs)
	}
	// Evaluating again over the same cumulative statistics changes nothing.
	e.EvaluateSlowQueries()
	if fs := e.Findings(); len(fs) != 1 || fs[0].Count != 20 {
		t.Errorf("re-evaluation: %+v", fs)
	}

	tests := []struct {
		name string
		cfg  rules.Config
	}{
		{"min calls", rules.Config{SlowQuery: rules.SlowQueryConfig{MinCalls: 21}}},
		{"threshold", rules.Config{SlowQuery: rules.SlowQueryConfig{P99Threshold: rules.Duration(time.Second)}}},
		{"disabled", rules.Config{SlowQuery: rules.SlowQueryConfig{Common: rules.Common{Enabled: new(bool)}}}},
		{"ignored by fingerprint", rules.Config{Ignore: []rules.Ignore{{Fingerprint: fs[0].Fingerprint}}}},
		{"ignored by rule", rules.Config{Ignore: []rules.Ignore{{Rule: rules.IDSlowQuery}}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newTestEngine(t, EngineConfig{Rules: tt.cfg, Stats: slowStats(20)})
			e.Flush()
			if fs := e.Findings(); len(fs) != 0 {
				t.Errorf("findings %+v", fs)
			}
		})
	}
}

func TestEngineSlowQueryInlineIgnore(t *testing.T) {
	t.Parallel()
	st := NewStats(StatsConfig{})
	e := newTestEngine(t, EngineConfig{Stats: st})
	fp := NewFingerprinter(FingerprintConfig{})
	for i := range 20 {
		ev := stmt("SELECT pg_sleep(1) /* pgaudit:ignore slow-query */")
		ev.Duration = time.Second
		ev.Start = t0.Add(time.Duration(i) * time.Second)
		a := analyze(fp, ev)
		st.Record(ev, a.Shape)
		e.Observe(a)
	}
	e.Flush()
	if fs := e.Findings(); len(fs) != 0 {
		t.Errorf("inline ignore not honoured: %+v", fs)
	}
}

func TestEnginePoolAndAuditLog(t *testing.T) {
	t.Parallel()
	var out testutil.Buffer
	al := testAuditLog(t, &out, nil)
	sev := rules.Error
	e := newTestEngine(t, EngineConfig{AuditLog: al, Now: fixedClock,
		Rules: rules.Config{PoolSaturation: rules.PoolSaturationConfig{Common: rules.Common{Severity: &sev}}}})
	facts := rules.PoolFacts{Database: "app", User: "web", Mode: "transaction", Size: 10, Utilization: 0.9,
		Window: time.Minute, Waits: 10, WaitP99: 5 * time.Millisecond, MaxWait: 9 * time.Millisecond}
	for range 6 { // counts 1..6: records at 1, 2 and 4
		e.ObservePool(facts)
	}
	e.ObservePool(rules.PoolFacts{Database: "app", User: "idle", Size: 10, Utilization: 0.1})
	fs := e.Findings()
	if len(fs) != 1 || fs[0].Severity != rules.Error || fs[0].Count != 6 || !fs[0].LastSeen.Equal(fixedClock()) {
		t.Fatalf("findings %+v", fs)
	}
	if n := strings.Count(out.String(), `"record":"finding"`); n != 3 {
		t.Errorf("%d finding records, want 3:\n%s", n, out.String())
	}
	if c := e.Counters(); c.Reported != 3 || c.Raised != 6 {
		t.Errorf("counters %+v", c)
	}
}

// TestEngineReport: findings built elsewhere (the EXPLAIN sampler) go
// through the configuration and inline ignores like any other.
func TestEngineReport(t *testing.T) {
	t.Parallel()
	seq := rules.Finding{ID: "seq-scan:00000000000000ab:audit_log", Rule: rules.IDSeqScan, Severity: rules.Warning,
		Fingerprint: "00000000000000ab", Table: "audit_log", LastSeen: t0}
	sev := rules.Info
	e := newTestEngine(t, EngineConfig{Rules: rules.Config{SeqScan: rules.SeqScanConfig{Common: rules.Common{Severity: &sev}}}})
	if ch := e.Report(seq); ch != rules.New {
		t.Fatalf("change %v", ch)
	}
	if fs := e.Findings(); len(fs) != 1 || fs[0].Severity != rules.Info {
		t.Errorf("override not applied: %+v", fs)
	}

	e = newTestEngine(t, EngineConfig{Rules: rules.Config{Ignore: []rules.Ignore{{Rule: rules.IDSeqScan, Table: "audit_log"}}}})
	if ch := e.Report(seq); ch != rules.Unchanged || len(e.Findings()) != 0 {
		t.Errorf("ignored table reported")
	}

	e = newTestEngine(t, EngineConfig{})
	fp := NewFingerprinter(FingerprintConfig{})
	a := analyze(fp, stmt("SELECT * FROM audit_log WHERE at > now() - interval '1 day' -- pgaudit:ignore seq-scan"))
	e.Observe(a)
	seq.Fingerprint = a.Shape.Fingerprint.String()
	if ch := e.Report(seq); ch != rules.Unchanged || len(e.Findings()) != 0 {
		t.Errorf("inline ignore on the explained statement not honoured")
	}
}

func TestEngineConfigInvalid(t *testing.T) {
	t.Parallel()
	if _, err := NewEngine(EngineConfig{Rules: rules.Config{NPlusOne: rules.NPlusOneConfig{MinRepeats: 1}}}); err == nil {
		t.Error("invalid rules config accepted")
	}
}

// TestEngineInPipeline wires the engine into a running pipeline with the
// audit log, as the proxy does: events of many sessions, one N+1 loop, a
// session-state event; the audit log gets a finding record for each.
func TestEngineInPipeline(t *testing.T) {
	t.Parallel()
	var out testutil.Buffer
	al := testAuditLog(t, &out, func(c *auditlog.Config) { c.Sample = auditlog.SampleNone; c.StatsInterval = -1 })
	p := NewPipeline(PipelineConfig{Workers: 2, AuditLog: al})
	// The clock stands at the events' time, as in a live proxy.
	e := newTestEngine(t, EngineConfig{Stats: p.Stats(), AuditLog: al, SweepInterval: time.Millisecond, EvalInterval: time.Millisecond,
		Now: func() time.Time { return t0 }})
	if err := p.AddObserver(e); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := p.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if err := e.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if err := e.Start(ctx); err == nil {
		t.Error("second Start succeeded")
	}
	var evs []*Event
	evs = append(evs, pgbenchN()...)
	evs = append(evs, ormExtended()...)
	evs = append(evs, sysbench(true)()...)
	evs = append(evs, sessionState("temp_table", "CREATE TEMP TABLE scratch (id int)"))
	for _, ev := range evs {
		if err := p.Submit(ctx, ev); err != nil {
			t.Fatal(err)
		}
	}
	stop(t, p)
	e.Stop()
	e.Flush()
	fs := e.Findings()
	var got []string
	for _, f := range fs {
		got = append(got, f.Rule)
	}
	if strings.Join(got, ",") != "txn-pooling-unsafe,n-plus-one" {
		t.Fatalf("findings %v", got)
	}
	if n := strings.Count(out.String(), `"record":"finding"`); n != 2 {
		t.Errorf("%d finding records:\n%s", n, out.String())
	}
	if !strings.Contains(out.String(), `"rewrite":"SELECT authors.* FROM authors WHERE authors.id = ANY($1)"`) {
		t.Errorf("finding record lacks the rewrite:\n%s", out.String())
	}
}
