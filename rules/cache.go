package rules

import (
	"fmt"
	"math"
	"strings"
	"time"
)

// CacheCandidateConfig configures the cache-candidate rule
// ([rules.cache-candidate]). The rule needs result hashes, which only the
// proxy sees: it never fires in lint mode.
type CacheCandidateConfig struct {
	Common
	// MinCalls is the number of executions of the shape in the window
	// needed before it is judged. Default 100.
	MinCalls int `toml:"min_calls" json:"min_calls,omitempty"`
	// MinRepeatShare: the share of executions whose parameter values
	// (keyed hash) were already seen in the window must be at least this
	// (0..1). Default 0.5.
	MinRepeatShare float64 `toml:"min_repeat_share" json:"min_repeat_share,omitempty"`
	// MinSameResult: of the repeats compared, the share that returned the
	// same row count, and of the sampled results compared, the share with
	// the same result hash, must be at least this (0..1). Default 0.95.
	MinSameResult float64 `toml:"min_same_result" json:"min_same_result,omitempty"`
	// MinResultSamples is the number of sampled result-hash comparisons
	// (two sampled executions with the same parameters) needed. Default 2.
	MinResultSamples int `toml:"min_result_samples" json:"min_result_samples,omitempty"`
	// MaxWriteRate: writes per second to the tables the shape reads, over
	// the window, must be at most this. Default 0.1 (one every 10 s).
	MaxWriteRate float64 `toml:"max_write_rate" json:"max_write_rate,omitempty"`
	// MinHitRate: the simulated cache-aside hit rate with the longest TTL
	// (60 s) must be at least this (0..1). Default 0.5.
	MinHitRate float64 `toml:"min_hit_rate" json:"min_hit_rate,omitempty"`
	// Window is how long the facts accumulate before they start afresh.
	// Default 10m.
	Window Duration `toml:"window" json:"window,omitempty"`
}

// Defaults of the cache-candidate thresholds.
const (
	DefaultCacheMinCalls         = 100
	DefaultCacheMinRepeatShare   = 0.5
	DefaultCacheMinSameResult    = 0.95
	DefaultCacheMinResultSamples = 2
	DefaultCacheMaxWriteRate     = 0.1
	DefaultCacheMinHitRate       = 0.5
	DefaultCacheWindow           = 10 * time.Minute
)

// CacheTTLs are the TTLs the cache-aside simulation reports, shortest
// first; MinHitRate applies to the last.
var CacheTTLs = [...]time.Duration{time.Second, 10 * time.Second, time.Minute}

func (c CacheCandidateConfig) withDefaults() CacheCandidateConfig {
	if c.MinCalls == 0 {
		c.MinCalls = DefaultCacheMinCalls
	}
	if c.MinRepeatShare == 0 {
		c.MinRepeatShare = DefaultCacheMinRepeatShare
	}
	if c.MinSameResult == 0 {
		c.MinSameResult = DefaultCacheMinSameResult
	}
	if c.MinResultSamples == 0 {
		c.MinResultSamples = DefaultCacheMinResultSamples
	}
	if c.MaxWriteRate == 0 {
		c.MaxWriteRate = DefaultCacheMaxWriteRate
	}
	if c.MinHitRate == 0 {
		c.MinHitRate = DefaultCacheMinHitRate
	}
	if c.Window == 0 {
		c.Window = Duration(DefaultCacheWindow)
	}
	return c
}

func (c CacheCandidateConfig) validate(bad func(rule, key, format string, args ...any)) {
	for _, v := range []struct {
		key string
		v   float64
	}{{"min_repeat_share", c.MinRepeatShare}, {"min_same_result", c.MinSameResult}, {"min_hit_rate", c.MinHitRate}} {
		if v.v < 0 || v.v > 1 {
			bad(IDCacheCandidate, v.key, "%g is outside 0..1", v.v)
		}
	}
	if c.MinCalls < 0 {
		bad(IDCacheCandidate, "min_calls", "%d is negative", c.MinCalls)
	}
	if c.MinResultSamples < 0 {
		bad(IDCacheCandidate, "min_result_samples", "%d is negative", c.MinResultSamples)
	}
	if c.MaxWriteRate < 0 {
		bad(IDCacheCandidate, "max_write_rate", "%g is negative", c.MaxWriteRate)
	}
	if c.Window < 0 {
		bad(IDCacheCandidate, "window", "negative duration %s", c.Window)
	}
}

// CacheFacts are one read shape's repeat, result and write facts over a
// window, gathered by the analyzer (proxy mode).
type CacheFacts struct {
	Fingerprint, Query string
	// Tables are the tables the shape reads (from the parse tree).
	Tables []string
	// Calls counts executions in the window; Repeats those whose
	// parameter values were seen before in the window; Keys the distinct
	// parameter sets tracked.
	Calls, Repeats, Keys int64
	// RowsCompared counts repeats whose row count could be compared with
	// the previous execution of the same parameters, RowsSame those equal.
	RowsCompared, RowsSame int64
	// ResultsCompared counts sampled result hashes compared with the
	// previous sampled one of the same parameters, ResultsSame those equal.
	ResultsCompared, ResultsSame int64
	// Writes counts statements that wrote rows to Tables in the window:
	// the invalidations a cache would have needed.
	Writes int64
	// Hits are the simulated cache-aside hits with each of CacheTTLs.
	Hits [len(CacheTTLs)]int64
	// Total is the time the executions took together.
	Total time.Duration
	// WindowStart and WindowEnd bound the window (first execution to the
	// evaluation).
	WindowStart, WindowEnd time.Time
	// FirstSeen is the shape's first execution since the detector
	// started; LastSeen its latest.
	FirstSeen, LastSeen time.Time
	Database            string
	ApplicationName     string
}

func share(n, d int64) float64 {
	if d <= 0 {
		return 0
	}
	return float64(n) / float64(d)
}

func round4(f float64) float64 { return math.Round(f*10000) / 10000 }

// EvaluateCacheCandidate returns a cache-candidate finding when the shape
// meets every threshold of cfg (unset ones take their defaults), or nil
// with why not (empty when the shape did not run min_calls times, so
// nothing can be said).
func EvaluateCacheCandidate(f CacheFacts, cfg CacheCandidateConfig) (*Finding, string) {
	if !cfg.IsEnabled() || f.Fingerprint == "" || len(f.Tables) == 0 {
		return nil, ""
	}
	cfg = cfg.withDefaults()
	if f.Calls < int64(cfg.MinCalls) {
		return nil, ""
	}
	span := f.WindowEnd.Sub(f.WindowStart).Seconds()
	rate := 0.0
	if f.Writes > 0 {
		rate = float64(f.Writes) / math.Max(span, 1)
	}
	repeat := share(f.Repeats, f.Calls)
	sameRows := share(f.RowsSame, f.RowsCompared)
	sameRes := share(f.ResultsSame, f.ResultsCompared)
	last := len(CacheTTLs) - 1
	hit := share(f.Hits[last], f.Calls)
	tables := strings.Join(f.Tables, ", ")
	switch {
	case repeat < cfg.MinRepeatShare:
		return nil, fmt.Sprintf("%.0f%% of %d calls repeat earlier parameter values (below %.0f%%)", repeat*100, f.Calls, cfg.MinRepeatShare*100)
	case f.RowsCompared > 0 && sameRows < cfg.MinSameResult:
		return nil, fmt.Sprintf("%.0f%% of repeats returned the same row count (below %.0f%%)", sameRows*100, cfg.MinSameResult*100)
	case f.ResultsCompared < int64(cfg.MinResultSamples):
		return nil, ""
	case sameRes < cfg.MinSameResult:
		return nil, fmt.Sprintf("%.0f%% of %d sampled repeats returned the same result (below %.0f%%)", sameRes*100, f.ResultsCompared, cfg.MinSameResult*100)
	case rate > cfg.MaxWriteRate:
		return nil, fmt.Sprintf("%d writes to %s (%.2f/s, above %.2f/s)", f.Writes, tables, rate, cfg.MaxWriteRate)
	case hit < cfg.MinHitRate:
		return nil, fmt.Sprintf("a %s cache would have hit %.0f%% of calls (below %.0f%%)", ttlKey(CacheTTLs[last]), hit*100, cfg.MinHitRate*100)
	}
	ev := map[string]any{
		"calls":               f.Calls,
		"repeat_share":        round4(repeat),
		"distinct_params":     f.Keys,
		"same_rows_share":     round4(sameRows),
		"result_samples":      f.ResultsCompared,
		"same_result_share":   round4(sameRes),
		"tables":              f.Tables,
		"invalidating_writes": f.Writes,
		"writes_per_s":        round4(rate),
		"window_s":            math.Round(span*10) / 10,
		"total_ms":            Millis(f.Total),
	}
	rates := make([]string, len(CacheTTLs))
	for i, ttl := range CacheTTLs {
		h := share(f.Hits[i], f.Calls)
		ev[fmt.Sprintf("hit_rate_%s", ttlKey(ttl))] = round4(h)
		rates[i] = fmt.Sprintf("%.0f%% with a %s TTL", h*100, ttlKey(ttl))
	}
	saved := time.Duration(0)
	if f.Calls > 0 {
		saved = time.Duration(float64(f.Total) * hit)
	}
	ev["saved_ms"] = Millis(saved)
	inval := fmt.Sprintf("no write to %s was seen in the window", tables)
	if f.Writes > 0 {
		inval = fmt.Sprintf("%d writes to %s in the window (%.2f/s) would each have had to invalidate it", f.Writes, tables, rate)
	}
	return &Finding{
		ID:          StableID(IDCacheCandidate, f.Fingerprint),
		Rule:        IDCacheCandidate,
		Severity:    cfg.SeverityOr(DefaultSeverity(IDCacheCandidate)),
		Fingerprint: f.Fingerprint,
		Query:       f.Query,
		Table:       f.Tables[0],
		Message: fmt.Sprintf("cache candidate: %.0f%% of %d calls repeat earlier parameter values with the same result; a %s cache-aside would have hit %.0f%%",
			repeat*100, f.Calls, ttlKey(CacheTTLs[last]), hit*100),
		Evidence: ev,
		Suggestion: fmt.Sprintf("Cache the result in the application (cache-aside, keyed by the parameter values): over the window it would have hit %s, saving about %s of database time. Invalidate on writes to %s: %s.",
			strings.Join(rates, ", "), fmtDuration(saved), tables, inval),
		Count:           f.Calls,
		FirstSeen:       f.FirstSeen,
		LastSeen:        f.LastSeen,
		WindowStart:     f.WindowStart,
		WindowEnd:       f.WindowEnd,
		Database:        f.Database,
		ApplicationName: f.ApplicationName,
	}, ""
}

// ttlKey writes a TTL as the evidence keys do: "1s", "10s", "60s".
func ttlKey(d time.Duration) string { return fmt.Sprintf("%ds", int(d/time.Second)) }
