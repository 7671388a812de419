package analyzer

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/pgaudit-proxy/pgaudit/internal/testutil"
	"github.com/pgaudit-proxy/pgaudit/rules"
)

// findingRecords decodes the finding records of an audit log.
func findingRecords(t *testing.T, log string) []rules.Finding {
	t.Helper()
	var out []rules.Finding
	for _, line := range strings.Split(strings.TrimSpace(log), "\n") {
		var rec struct {
			Record  string        `json:"record"`
			Finding rules.Finding `json:"finding"`
		}
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			t.Fatalf("%v: %s", err, line)
		}
		if rec.Record == "finding" {
			out = append(out, rec.Finding)
		}
	}
	return out
}

// TestSlowQueryResolves (issue 14, item 4): a slow-query finding on
// "begin" whose latency recovered is resolved, not frozen at the old p99;
// the resolution is written to the audit log, and a new slow period
// reopens it.
func TestSlowQueryResolves(t *testing.T) {
	var out testutil.Buffer
	al := testAuditLog(t, &out, nil)
	st := NewStats(StatsConfig{Now: fixedClock})
	now := t0
	e := newTestEngine(t, EngineConfig{Stats: st, AuditLog: al, Now: func() time.Time { return now }})
	fp := NewFingerprinter(FingerprintConfig{})
	run := func(from time.Time, n int, d time.Duration) {
		for i := range n {
			ev := stmt("begin")
			ev.Start = from.Add(time.Duration(i) * 100 * time.Millisecond)
			ev.Duration = d
			st.Record(ev, analyze(fp, ev).Shape)
		}
	}
	run(t0, 300, 880*time.Millisecond)
	now = t0.Add(time.Minute)
	e.evaluate()
	fs := e.Findings()
	if len(fs) != 1 || fs[0].Rule != rules.IDSlowQuery || !fs[0].Open() || fs[0].Status != rules.StatusOpen {
		t.Fatalf("findings %+v", fs)
	}
	// Twenty minutes of fast begins: the window no longer holds the slow
	// ones, though the cumulative p99 still does.
	run(t0.Add(20*time.Minute), 2000, 30*time.Millisecond)
	if sh := st.TopShapes(ByTotalTime, 1)[0]; sh.P99 < 500*time.Millisecond || sh.RecentP99 > 40*time.Millisecond {
		t.Fatalf("cumulative p99 %s, recent p99 %s", sh.P99, sh.RecentP99)
	}
	now = t0.Add(24 * time.Minute)
	e.evaluate()
	fs = e.Findings()
	if len(fs) != 1 || fs[0].Open() || !fs[0].ResolvedAt.Equal(now) || !strings.Contains(fs[0].Resolution, "below the 500ms threshold") {
		t.Fatalf("not resolved: %+v", fs)
	}
	if fs[0].Evidence["p99_ms"].(float64) < 500 {
		t.Errorf("a resolved finding keeps the numbers that made it: %v", fs[0].Evidence)
	}
	recs := findingRecords(t, out.String())
	if last := recs[len(recs)-1]; last.Status != rules.StatusResolved || last.ResolvedAt.IsZero() {
		t.Fatalf("no resolved record: %+v", last)
	}
	if c := e.Counters(); c.Resolved != 1 {
		t.Errorf("counters %+v", c)
	}
	// Slow again: reopened, with the window of the new numbers.
	run(t0.Add(30*time.Minute), 300, 900*time.Millisecond)
	now = t0.Add(31 * time.Minute)
	e.evaluate()
	fs = e.Findings()
	if len(fs) != 1 || !fs[0].Open() || !fs[0].ResolvedAt.IsZero() || fs[0].WindowStart.Before(t0.Add(20*time.Minute)) {
		t.Fatalf("not reopened: %+v", fs)
	}
	recs = findingRecords(t, out.String())
	if last := recs[len(recs)-1]; last.Status != rules.StatusOpen {
		t.Fatalf("no reopened record: %+v", last)
	}
}

// TestSlowQueryResolvesRareShape: a shape that now runs less than
// min_calls times per window resolves when every recent call was fast.
func TestSlowQueryResolvesRareShape(t *testing.T) {
	st := NewStats(StatsConfig{Now: fixedClock})
	now := t0
	e := newTestEngine(t, EngineConfig{Stats: st, Now: func() time.Time { return now }})
	fp := NewFingerprinter(FingerprintConfig{})
	run := func(from time.Time, n int, d time.Duration) {
		for i := range n {
			ev := stmt("SELECT * FROM reports WHERE id = 1")
			ev.Start, ev.Duration = from.Add(time.Duration(i)*time.Second), d
			st.Record(ev, analyze(fp, ev).Shape)
		}
	}
	run(t0, 20, time.Second)
	e.evaluate()
	run(t0.Add(30*time.Minute), 3, 20*time.Millisecond)
	e.evaluate()
	if fs := e.Findings(); len(fs) != 1 || fs[0].Open() || !strings.Contains(fs[0].Resolution, "all 3 calls") {
		t.Fatalf("findings %+v", fs)
	}
	// One slow call among fewer than min_calls neither resolves nor
	// reopens: too few calls to judge a p99.
	run(t0.Add(31*time.Minute), 1, 2*time.Second)
	e.evaluate()
	if fs := e.Findings(); fs[0].Open() || fs[0].Resolution == "" {
		t.Fatalf("changed on too few calls: %+v", fs[0])
	}
}

// TestPoolSaturationResolves: the first evaluation that finds the pool
// below the thresholds resolves the finding.
func TestPoolSaturationResolves(t *testing.T) {
	var out testutil.Buffer
	e := newTestEngine(t, EngineConfig{AuditLog: testAuditLog(t, &out, nil)})
	busy := rules.PoolFacts{Database: "app", User: "web", Size: 2, Utilization: 1, Window: time.Minute, Acquires: 100, Waits: 90,
		WaitP99: 400 * time.Millisecond, MaxWait: 450 * time.Millisecond, At: t0}
	e.ObservePool(busy)
	idle := rules.PoolFacts{Database: "app", User: "web", Size: 2, Utilization: 0.05, Window: time.Minute, Acquires: 3, At: t0.Add(time.Minute)}
	e.ObservePool(idle)
	fs := e.Findings()
	if len(fs) != 1 || fs[0].Open() || !fs[0].ResolvedAt.Equal(idle.At) || !fs[0].LastSeen.Equal(t0) ||
		!fs[0].WindowStart.Equal(t0.Add(-time.Minute)) || !fs[0].WindowEnd.Equal(t0) {
		t.Fatalf("findings %+v", fs)
	}
	e.ObservePool(idle) // already resolved: no second record
	if recs := findingRecords(t, out.String()); len(recs) != 2 || recs[1].Status != rules.StatusResolved {
		t.Fatalf("records %+v", recs)
	}
}

// TestResolveStaleAndPlan: event-driven findings resolve when not seen for
// ResolveAfter; plan findings when their shape stops running or a new
// EXPLAIN no longer shows them.
func TestResolveStaleAndPlan(t *testing.T) {
	e := newTestEngine(t, EngineConfig{ResolveAfter: 10 * time.Minute})
	add := func(id, rule, fp string, last time.Time) {
		e.Report(rules.Finding{ID: id, Rule: rule, Fingerprint: fp, Severity: rules.Warning, FirstSeen: last, LastSeen: last})
	}
	add("n-plus-one:01", rules.IDNPlusOne, "0000000000000001", t0)
	add("n-plus-one:02", rules.IDNPlusOne, "0000000000000002", t0.Add(9*time.Minute))
	add("seq-scan:03:t", rules.IDSeqScan, "0000000000000003", t0)
	add("missing-index:03:t", rules.IDMissingIndex, "0000000000000003", t0)
	add("seq-scan:04:t", rules.IDSeqScan, "0000000000000004", t0)
	// Shape 3 still runs; shape 4 stopped.
	e.ResolveStale(t0.Add(15*time.Minute), map[string]time.Time{"0000000000000003": t0.Add(14 * time.Minute)})
	status := func() map[string]string {
		m := map[string]string{}
		for _, f := range e.Findings() {
			m[f.ID] = f.Status
		}
		return m
	}
	want := map[string]string{"n-plus-one:01": "resolved", "n-plus-one:02": "open", "seq-scan:03:t": "open",
		"missing-index:03:t": "open", "seq-scan:04:t": "resolved"}
	for id, s := range want {
		if status()[id] != s {
			t.Errorf("%s: %s, want %s", id, status()[id], s)
		}
	}
	// Explained again after CREATE INDEX: no seq scan, no candidate.
	e.ResolvePlan("0000000000000003", nil, t0.Add(16*time.Minute))
	if s := status(); s["seq-scan:03:t"] != "resolved" || s["missing-index:03:t"] != "resolved" || s["n-plus-one:02"] != "open" {
		t.Errorf("after ResolvePlan: %v", s)
	}
	// Open findings sort first.
	if fs := e.Findings(); !fs[0].Open() || fs[len(fs)-1].Open() {
		t.Errorf("order: %+v", fs)
	}
}
