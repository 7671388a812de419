package rules

import (
	"fmt"
	"math"
	"time"
)

// ShapeFacts are one query shape's statistics, as the analyzer's per-shape
// Stats hold them: over a recent window (WindowStart to WindowEnd) in proxy
// mode, over the whole input in lint mode.
type ShapeFacts struct {
	// Fingerprint and Query (normalized) identify the shape.
	Fingerprint string
	Query       string
	// Calls counts executions, Errors those that failed; Rows sums the
	// row counts known.
	Calls, Errors uint64
	Rows          int64
	// Latency figures (percentiles from a sketch with 1% relative
	// accuracy).
	Total, Mean, P50, P90, P99, Max time.Duration
	// Share is Total as a fraction of all database time observed.
	Share float64
	// FirstSeen and LastSeen bound the executions.
	FirstSeen, LastSeen time.Time
	// WindowStart and WindowEnd bound the executions Calls and the latency
	// figures cover; zero means FirstSeen to LastSeen (everything).
	WindowStart, WindowEnd time.Time
	// TotalCalls counts executions since statistics began (the finding's
	// Count); zero means Calls.
	TotalCalls uint64
	// ApplicationName is the most frequent application of the shape.
	ApplicationName string
}

// EvaluateSlowQuery returns a slow-query finding when the shape ran at
// least min_calls times and its p99 is at or above p99_threshold (thresholds
// unset in cfg take their defaults), or nil. The finding's Count is the
// shape's Calls: store it with Store.Set, since the facts are cumulative.
func EvaluateSlowQuery(f ShapeFacts, cfg SlowQueryConfig) *Finding {
	if !cfg.IsEnabled() || f.Fingerprint == "" {
		return nil
	}
	threshold := time.Duration(cfg.P99Threshold)
	if threshold <= 0 {
		threshold = DefaultSlowQueryP99
	}
	minCalls := cfg.MinCalls
	if minCalls <= 0 {
		minCalls = DefaultSlowQueryMinCalls
	}
	if f.Calls < uint64(minCalls) || f.P99 < threshold {
		return nil
	}
	if f.TotalCalls < f.Calls {
		f.TotalCalls = f.Calls
	}
	if f.WindowStart.IsZero() {
		f.WindowStart, f.WindowEnd = f.FirstSeen, f.LastSeen
	}
	over := fmt.Sprintf("%d calls", f.Calls)
	if f.Calls != f.TotalCalls {
		over = fmt.Sprintf("%d calls in %s to %s UTC", f.Calls, f.WindowStart.UTC().Format("15:04:05"), f.WindowEnd.UTC().Format("15:04:05"))
	}
	rowsPerCall := 0.0
	if f.Calls > 0 {
		rowsPerCall = math.Round(float64(f.Rows)/float64(f.Calls)*100) / 100
	}
	sug := "Look at the plan: EXPLAIN (ANALYZE, BUFFERS) the statement with typical parameters on a replica or staging copy; pgaudit's seq-scan and missing-index findings for this fingerprint, if any, show what the planner does."
	switch {
	case rowsPerCall >= 1000:
		sug = fmt.Sprintf("It returns %.0f rows per call on average: paginate (keyset pagination), aggregate in SQL, or select fewer columns. ", rowsPerCall) + sug
	case f.P50 > 0 && f.P99 >= 10*f.P50:
		sug = fmt.Sprintf("The median is %s but the p99 %s: look for lock waits (pg_locks, log_lock_waits), cache misses or plan changes for some parameter values. ", fmtDuration(f.P50), fmtDuration(f.P99)) + sug
	}
	return &Finding{
		ID:          StableID(IDSlowQuery, f.Fingerprint),
		Rule:        IDSlowQuery,
		Severity:    cfg.SeverityOr(DefaultSeverity(IDSlowQuery)),
		Fingerprint: f.Fingerprint,
		Query:       f.Query,
		Message: fmt.Sprintf("slow query: p99 %s over %s (threshold %s, %.1f%% of database time)",
			fmtDuration(f.P99), over, fmtDuration(threshold), f.Share*100),
		Evidence: map[string]any{
			"calls":         int64(f.Calls),
			"total_calls":   int64(f.TotalCalls),
			"errors":        int64(f.Errors),
			"p50_ms":        Millis(f.P50),
			"p90_ms":        Millis(f.P90),
			"p99_ms":        Millis(f.P99),
			"max_ms":        Millis(f.Max),
			"mean_ms":       Millis(f.Mean),
			"total_ms":      Millis(f.Total),
			"share":         math.Round(f.Share*10000) / 10000,
			"rows_per_call": rowsPerCall,
			"threshold_ms":  Millis(threshold),
		},
		Suggestion:      sug,
		Count:           int64(f.TotalCalls),
		FirstSeen:       f.FirstSeen,
		LastSeen:        f.LastSeen,
		WindowStart:     f.WindowStart,
		WindowEnd:       f.WindowEnd,
		ApplicationName: f.ApplicationName,
	}
}

// SlowQueryCleared returns why an open slow-query finding for the shape is
// resolved, or "": the shape ran at least min_calls times in the window and
// its p99 there is below p99_threshold, or it ran fewer times and every
// one of them (its max) was below the threshold.
func SlowQueryCleared(f ShapeFacts, cfg SlowQueryConfig) string {
	threshold := time.Duration(cfg.P99Threshold)
	if threshold <= 0 {
		threshold = DefaultSlowQueryP99
	}
	minCalls := cfg.MinCalls
	if minCalls <= 0 {
		minCalls = DefaultSlowQueryMinCalls
	}
	if f.Calls > 0 && f.Calls < uint64(minCalls) && f.Max < threshold {
		return fmt.Sprintf("all %d calls since %s UTC took less than the %s threshold (max %s)",
			f.Calls, f.WindowStart.UTC().Format(time.DateTime), fmtDuration(threshold), fmtDuration(f.Max))
	}
	if f.Calls < uint64(minCalls) || f.P99 >= threshold {
		return ""
	}
	return fmt.Sprintf("p99 %s over %d calls since %s UTC, below the %s threshold",
		fmtDuration(f.P99), f.Calls, f.WindowStart.UTC().Format(time.DateTime), fmtDuration(threshold))
}
