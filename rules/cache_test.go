package rules

import (
	"slices"
	"strings"
	"testing"
	"time"
)

func TestEvaluateCacheCandidate(t *testing.T) {
	t.Parallel()
	t0 := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	base := CacheFacts{
		Fingerprint: "5e0c3b1a9d2f7e44", Query: "SELECT name FROM countries WHERE code = $1",
		Tables: []string{"countries"}, Calls: 600, Repeats: 595, Keys: 5,
		RowsCompared: 595, RowsSame: 595, ResultsCompared: 37, ResultsSame: 37,
		Hits: [3]int64{500, 590, 595}, Total: 60 * time.Millisecond,
		WindowStart: t0, WindowEnd: t0.Add(time.Minute), FirstSeen: t0, LastSeen: t0.Add(time.Minute),
	}
	f, why := EvaluateCacheCandidate(base, CacheCandidateConfig{})
	if f == nil {
		t.Fatalf("no finding: %s", why)
	}
	r, _ := LookupRule(IDCacheCandidate)
	for k := range f.Evidence {
		if !slices.ContainsFunc(r.Evidence, func(e EvidenceKey) bool { return e.Key == k }) {
			t.Errorf("undocumented evidence key %q", k)
		}
	}
	if f.Evidence["hit_rate_1s"] != 0.8333 || f.Evidence["hit_rate_60s"] != 0.9917 || f.Count != 600 ||
		f.Severity != Info || f.ID != "cache-candidate:5e0c3b1a9d2f7e44" || f.Table != "countries" {
		t.Errorf("finding %+v", f)
	}
	if !strings.Contains(f.Suggestion, "83% with a 1s TTL") || !strings.Contains(f.Suggestion, "writes to countries") {
		t.Errorf("suggestion %q", f.Suggestion)
	}

	for _, tt := range []struct {
		name   string
		change func(*CacheFacts)
		why    string // "" = nothing to say
	}{
		{"few calls", func(f *CacheFacts) { f.Calls = 99 }, ""},
		{"random keys", func(f *CacheFacts) { f.Repeats = 100 }, "repeat earlier parameter values"},
		{"row counts differ", func(f *CacheFacts) { f.RowsSame = 500 }, "same row count"},
		{"no samples", func(f *CacheFacts) { f.ResultsCompared, f.ResultsSame = 1, 1 }, ""},
		{"results differ", func(f *CacheFacts) { f.ResultsSame = 30 }, "same result"},
		{"written", func(f *CacheFacts) { f.Writes = 7 }, "7 writes to countries (0.12/s"},
		{"low hit rate", func(f *CacheFacts) { f.Hits[2] = 200 }, "60s cache would have hit 33%"},
		{"no tables", func(f *CacheFacts) { f.Tables = nil }, ""},
	} {
		facts := base
		facts.Hits = base.Hits
		tt.change(&facts)
		f, why := EvaluateCacheCandidate(facts, CacheCandidateConfig{})
		if f != nil || !strings.Contains(why, tt.why) || (tt.why == "") != (why == "") {
			t.Errorf("%s: finding %v, why %q, want %q", tt.name, f != nil, why, tt.why)
		}
	}
	// 6 writes a minute are 0.1/s: allowed.
	facts := base
	facts.Writes = 6
	if f, why := EvaluateCacheCandidate(facts, CacheCandidateConfig{}); f == nil || f.Evidence["invalidating_writes"] != int64(6) {
		t.Errorf("6 writes a minute: %v %q", f, why)
	}
	if f, _ := EvaluateCacheCandidate(base, CacheCandidateConfig{Common: Common{Enabled: ptr(false)}}); f != nil {
		t.Error("disabled rule fired")
	}
}

func TestCacheCandidateConfigValidate(t *testing.T) {
	t.Parallel()
	c := Config{CacheCandidate: CacheCandidateConfig{MinRepeatShare: 1.5, MaxWriteRate: -1, Window: Duration(-time.Second)}}
	err := c.Validate()
	for _, want := range []string{"rules.cache-candidate.min_repeat_share", "rules.cache-candidate.max_write_rate", "rules.cache-candidate.window"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Validate: %v, want %s", err, want)
		}
	}
	d := DefaultConfig().CacheCandidate
	if d.MinCalls != DefaultCacheMinCalls || time.Duration(d.Window) != DefaultCacheWindow || !DefaultConfig().Enabled(IDCacheCandidate) {
		t.Errorf("defaults %+v", d)
	}
}
