package analyzer

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/pgaudit-proxy/pgaudit/rules"
)

func TestAnalyzeTableUse(t *testing.T) {
	t.Parallel()
	tests := []struct {
		sql           string
		read          bool
		reads, writes []string
	}{
		{"SELECT name FROM countries WHERE code = $1", true, []string{"countries"}, nil},
		{"SELECT a.x FROM public.a JOIN s.b ON a.id = b.id WHERE a.id = $1", true, []string{"a", "s.b"}, nil},
		{"WITH t AS (SELECT * FROM a) SELECT * FROM t WHERE id IN (SELECT id FROM b)", true, []string{"a", "b"}, nil},
		{"SELECT * FROM a WHERE id = $1 FOR UPDATE", false, nil, nil},
		{"SELECT 1", true, nil, nil},
		{"INSERT INTO a (x) SELECT x FROM b", false, nil, []string{"a"}},
		{"UPDATE a SET x = $1 WHERE id = $2", false, nil, []string{"a"}},
		{"DELETE FROM s.a USING b WHERE a.id = b.id", false, nil, []string{"s.a"}},
		{"WITH d AS (DELETE FROM a RETURNING *) SELECT * FROM d", false, nil, []string{"a"}},
		{"TRUNCATE a, b", false, nil, []string{"a", "b"}},
		{"not sql at all", false, nil, nil},
	}
	for _, tt := range tests {
		u := analyzeTableUse(tt.sql)
		if u.read != tt.read || !slices.Equal(u.reads, tt.reads) || !slices.Equal(u.writes, tt.writes) {
			t.Errorf("%s: read %v reads %v writes %v, want %v %v %v", tt.sql, u.read, u.reads, u.writes, tt.read, tt.reads, tt.writes)
		}
	}
}

// TestCacheDetectorSimulation checks the cache-aside simulation on known
// request times: a hit needs a fill younger than the TTL and no write to
// a table read since the fill.
func TestCacheDetectorSimulation(t *testing.T) {
	t.Parallel()
	t0 := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	read := &Shape{Fingerprint: 1, Normalized: "SELECT name FROM countries WHERE code = $1"}
	write := &Shape{Fingerprint: 2, Normalized: "UPDATE countries SET name = $1 WHERE code = $2"}
	at := func(s float64) time.Time { return t0.Add(time.Duration(s * float64(time.Second))) }
	run := func(writeAt float64) [3]int64 {
		d := NewCacheDetector(CacheDetectorConfig{})
		for _, s := range []float64{0, 0.5, 2, 30, 100} {
			if writeAt >= 0 && s > writeAt && s-writeAt < 1 {
				d.Observe(&Analyzed{Shape: write, Event: &Event{Start: at(writeAt), Rows: 1, NumParams: 2, ParamHash: 9}})
			}
			d.Observe(&Analyzed{Shape: read, Event: &Event{Start: at(s), Rows: 1, NumParams: 1, ParamHash: 7, ResultHash: 42}})
		}
		sh := d.shapes[1]
		if sh.calls != 5 || sh.repeats != 4 || sh.resCmp != 4 || sh.resSame != 4 {
			t.Fatalf("calls %d repeats %d results %d/%d", sh.calls, sh.repeats, sh.resSame, sh.resCmp)
		}
		return sh.hits
	}
	// TTL 1s: hit at 0.5; 10s: 0.5, 2; 60s: 0.5, 2, 30 (100 is 100s after the fill at 0).
	if got := run(-1); got != [3]int64{1, 2, 3} {
		t.Errorf("no writes: hits %v, want [1 2 3]", got)
	}
	// A write at 1.5s invalidates the entry filled at 0: 2s misses for
	// every TTL and refills; 60s then hits at 30.
	if got := run(1.5); got != [3]int64{1, 1, 2} {
		t.Errorf("write at 1.5s: hits %v, want [1 1 2]", got)
	}
}

// TestCacheDetectorVerdicts checks that the detector hands the rule the
// facts that make it fire or explain why not.
func TestCacheDetectorVerdicts(t *testing.T) {
	t.Parallel()
	t0 := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	read := &Shape{Fingerprint: 1, Normalized: "SELECT name FROM countries WHERE code = $1"}
	write := &Shape{Fingerprint: 2, Normalized: "UPDATE countries SET name = $1 WHERE code = $2"}
	feed := func(d *CacheDetector, n int, result func(i int) uint64, writeEvery int) {
		for i := 0; i < n; i++ {
			ts := t0.Add(time.Duration(i) * 100 * time.Millisecond)
			d.Observe(&Analyzed{Shape: read, Event: &Event{Start: ts, Rows: 1, NumParams: 1, ParamHash: uint64(i % 5), ResultHash: result(i)}})
			if writeEvery > 0 && i%writeEvery == 0 {
				d.Observe(&Analyzed{Shape: write, Event: &Event{Start: ts.Add(time.Millisecond), Rows: 1, NumParams: 2, ParamHash: 1}})
			}
		}
	}
	end := t0.Add(time.Minute)
	same := func(i int) uint64 { return uint64(i%5) + 100 }

	d := NewCacheDetector(CacheDetectorConfig{})
	feed(d, 200, same, 0)
	v := d.Evaluate(end)
	if len(v) != 1 || v[0].Finding == nil {
		t.Fatalf("same results, no writes: %+v", v)
	}
	ev := v[0].Finding.Evidence
	// Each key repeats every 500ms: a 1s TTL refills every third request.
	if ev["hit_rate_60s"] != 0.975 || ev["hit_rate_1s"] != 0.65 || ev["hit_rate_10s"] != 0.95 || ev["invalidating_writes"] != int64(0) {
		t.Errorf("evidence %v", ev)
	}

	d = NewCacheDetector(CacheDetectorConfig{})
	feed(d, 200, func(i int) uint64 { return uint64(i) + 1 }, 0)
	if v := d.Evaluate(end); len(v) != 1 || v[0].Finding != nil || v[0].Clear == "" {
		t.Errorf("differing results: %+v", v)
	}

	d = NewCacheDetector(CacheDetectorConfig{})
	feed(d, 200, same, 2)
	if v := d.Evaluate(end); len(v) != 1 || v[0].Finding != nil || v[0].Clear == "" {
		t.Errorf("writes between repeats: %+v", v)
	}

	// The window: after it, the shapes start afresh.
	d = NewCacheDetector(CacheDetectorConfig{Rule: rules.CacheCandidateConfig{Window: rules.Duration(time.Minute)}})
	feed(d, 200, same, 0)
	d.Evaluate(t0.Add(2 * time.Minute))
	if len(d.shapes) != 0 {
		t.Errorf("window over: %d shapes kept", len(d.shapes))
	}
}

// TestCacheCandidateLifecycle: the engine opens a cache-candidate finding
// and resolves it, saying why, once writes to the table start.
func TestCacheCandidateLifecycle(t *testing.T) {
	t.Parallel()
	t0 := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	e, err := NewEngine(EngineConfig{})
	if err != nil {
		t.Fatal(err)
	}
	read := &Shape{Fingerprint: 1, Normalized: "SELECT name FROM countries WHERE code = $1"}
	write := &Shape{Fingerprint: 2, Normalized: "UPDATE countries SET name = $1 WHERE code = $2"}
	for i := 0; i < 200; i++ {
		e.Observe(&Analyzed{Shape: read, Event: &Event{Start: t0.Add(time.Duration(i) * 10 * time.Millisecond),
			Rows: 1, NumParams: 1, ParamHash: uint64(i % 5), ResultHash: uint64(i%5) + 1}})
	}
	e.EvaluateCacheCandidates(t0.Add(10 * time.Second))
	fs := e.Findings()
	if len(fs) != 1 || fs[0].Rule != rules.IDCacheCandidate || !fs[0].Open() {
		t.Fatalf("findings %+v", fs)
	}
	for i := 0; i < 20; i++ {
		e.Observe(&Analyzed{Shape: write, Event: &Event{Start: t0.Add(11*time.Second + time.Duration(i)*time.Second),
			Rows: 1, NumParams: 2, ParamHash: 3}})
	}
	e.EvaluateCacheCandidates(t0.Add(40 * time.Second))
	fs = e.Findings()
	if len(fs) != 1 || fs[0].Open() || !strings.Contains(fs[0].Resolution, "20 writes to countries") {
		t.Fatalf("after writes: %+v", fs)
	}
}

// TestCacheDetectorMemoFollowsWindow: a shape's memo of its state in a
// detector is that detector's and that window's: a shape observed by two
// detectors counts in each, and after a new window starts its calls
// count from zero again.
func TestCacheDetectorMemoFollowsWindow(t *testing.T) {
	t.Parallel()
	t0 := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	read := &Shape{Fingerprint: 1, Normalized: "SELECT name FROM countries WHERE code = $1"}
	d1, d2 := NewCacheDetector(CacheDetectorConfig{}), NewCacheDetector(CacheDetectorConfig{})
	obs := func(d *CacheDetector, at time.Time, key uint64) {
		d.Observe(&Analyzed{Shape: read, Event: &Event{Start: at, Rows: 1, NumParams: 1, ParamHash: key}})
	}
	for i := range 3 {
		obs(d1, t0.Add(time.Duration(i)*time.Second), uint64(i))
		obs(d2, t0.Add(time.Duration(i)*time.Second), uint64(i))
	}
	obs(d2, t0.Add(3*time.Second), 3)
	obs(d1, t0.Add(3*time.Second), 3)                         // the memo is d1's
	d1.Evaluate(t0.Add(rules.DefaultCacheWindow + time.Hour)) // a new window
	obs(d1, t0.Add(2*time.Hour), 9)
	for _, c := range []struct {
		name  string
		d     *CacheDetector
		calls int64
	}{{"d1, new window", d1, 1}, {"d2", d2, 4}} {
		if s := c.d.shapes[read.Fingerprint]; s == nil || s.calls != c.calls {
			t.Errorf("%s: shape state %+v, want %d calls", c.name, s, c.calls)
		}
	}
}
