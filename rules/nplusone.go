package rules

import (
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"
)

// N+1 forms: how a run was tied to its source statement.
const (
	// FormRowCount: the source's row count is known and at least the run's
	// length. Confidence high.
	FormRowCount = "row-count"
	// FormInTransaction: no row counts; the source and the run sit inside
	// one transaction. Confidence medium.
	FormInTransaction = "in-transaction"
	// FormAfterSelect: no row counts; the run directly follows a different
	// SELECT and is tied to it by a trace or short gaps. Confidence medium.
	FormAfterSelect = "after-select"
)

// N+1 ties: what holds a run together.
const (
	TieTransaction = "transaction"
	TieTrace       = "trace"
	TieGap         = "gap"
)

// Confidence values.
const (
	ConfidenceHigh   = "high"
	ConfidenceMedium = "medium"
)

// NPlusOneFacts describe one run of a repeated statement in one client
// session, as the analyzer's session tracker saw it.
type NPlusOneFacts struct {
	// Fingerprint and Query identify the repeated shape (Query normalized).
	Fingerprint string
	Query       string
	// Repeats is the run's length; DistinctParams the number of distinct
	// parameter sets (or literal values) in it.
	Repeats        int
	DistinctParams int
	// Total is the time the repeated statements took together; Span runs
	// from the start of the first to the end of the last.
	Total time.Duration
	Span  time.Duration
	// SourceFingerprint, SourceQuery and SourceRows describe the statement
	// whose rows drive the loop; SourceRows is -1 when unknown.
	SourceFingerprint string
	SourceQuery       string
	SourceRows        int64
	// Table and Column are the relation and column the repeated statement
	// looks up, from its parse tree; empty when not found.
	Table  string
	Column string
	// Rewrite is the repeated statement rewritten to fetch all rows at
	// once, or empty when none could be built.
	Rewrite string
	// Batch is true when the repeated statement already uses IN or ANY:
	// such a run is a chunked batch, not an N+1.
	Batch bool
	// Form is FormRowCount, FormInTransaction or FormAfterSelect; Tie is
	// TieTransaction, TieTrace or TieGap.
	Form string
	Tie  string
	// Context of the run.
	SessionID       uint64
	Database        string
	User            string
	ApplicationName string
	ClientAddr      string
	TraceParent     string
	// First is when the first repeat started, Last when the last one
	// ended.
	First, Last time.Time
}

// EvaluateNPlusOne turns the facts of one run into an n-plus-one finding,
// or nil when the rule is disabled or the facts do not meet cfg's
// thresholds (thresholds unset in cfg take their defaults): at least
// min_repeats repeats and distinct parameter sets, a source statement of a
// different shape, a known source row count at least the run's length
// (or, without row counts, a medium-confidence form), and no IN/ANY batch.
// The finding's Count is 1 (one run); Store.Add accumulates runs.
func EvaluateNPlusOne(f NPlusOneFacts, cfg NPlusOneConfig) *Finding {
	if !cfg.IsEnabled() {
		return nil
	}
	minRepeats := cfg.MinRepeats
	if minRepeats <= 0 {
		minRepeats = DefaultNPlusOneMinRepeats
	}
	if f.Batch || f.Repeats < minRepeats || f.DistinctParams < minRepeats ||
		f.SourceFingerprint == "" || f.SourceFingerprint == f.Fingerprint {
		return nil
	}
	confidence := ConfidenceHigh
	switch f.Form {
	case FormRowCount:
		if f.SourceRows < int64(f.Repeats) {
			return nil
		}
	case FormInTransaction, FormAfterSelect:
		if f.SourceRows >= 0 {
			return nil // with a row count, only the strong form counts
		}
		confidence = ConfidenceMedium
	default:
		return nil
	}
	target := "rows"
	if f.Table != "" {
		target = f.Table
		if f.Column != "" {
			target += "." + f.Column
		}
	}
	var msg string
	switch f.Form {
	case FormRowCount:
		msg = fmt.Sprintf("N+1: %d lookups on %s, one per row of a preceding query that returned %d rows (%s total)",
			f.Repeats, target, f.SourceRows, fmtDuration(f.Total))
	case FormInTransaction:
		msg = fmt.Sprintf("N+1 (no row counts): %d lookups on %s with distinct parameters after a SELECT in the same transaction (%s total)",
			f.Repeats, target, fmtDuration(f.Total))
	default:
		msg = fmt.Sprintf("N+1 (no row counts): %d lookups on %s with distinct parameters right after a SELECT (%s total)",
			f.Repeats, target, fmtDuration(f.Total))
	}
	ev := map[string]any{
		"repeats":            int64(f.Repeats),
		"distinct_params":    int64(f.DistinctParams),
		"total_ms":           Millis(f.Total),
		"mean_ms":            Millis(f.Total / time.Duration(max(f.Repeats, 1))),
		"span_ms":            Millis(f.Span),
		"source_query":       f.SourceQuery,
		"source_fingerprint": f.SourceFingerprint,
		"source_rows":        f.SourceRows,
		"form":               f.Form,
		"tie":                f.Tie,
		"session_id":         strconv.FormatUint(f.SessionID, 10),
	}
	if f.Column != "" {
		ev["column"] = f.Column
	}
	if f.Rewrite != "" {
		ev["rewrite"] = f.Rewrite
	}
	var sug strings.Builder
	if f.Rewrite != "" {
		fmt.Fprintf(&sug, "Fetch all rows in one query: %s, passing the %d keys from the source query as one array", f.Rewrite, f.Repeats)
	} else {
		sug.WriteString("Fetch all rows in one query (WHERE key = ANY($1) with an array of the keys)")
	}
	sug.WriteString(", or JOIN ")
	if f.Table != "" {
		sug.WriteString(f.Table)
	} else {
		sug.WriteString("the looked-up table")
	}
	sug.WriteString(" to the source query. In an ORM, eager-load the association (Rails includes/preload, Django select_related/prefetch_related, SQLAlchemy selectinload, Hibernate JOIN FETCH / @BatchSize, GORM Preload).")
	first, last := f.First, f.Last
	if last.IsZero() {
		last = first
	}
	return &Finding{
		ID:              StableID(IDNPlusOne, f.Fingerprint),
		Rule:            IDNPlusOne,
		Severity:        cfg.SeverityOr(DefaultSeverity(IDNPlusOne)),
		Fingerprint:     f.Fingerprint,
		Query:           f.Query,
		Message:         msg,
		Evidence:        ev,
		Suggestion:      sug.String(),
		Confidence:      confidence,
		Table:           f.Table,
		Count:           1,
		FirstSeen:       first,
		LastSeen:        last,
		WindowStart:     first,
		WindowEnd:       last,
		Database:        f.Database,
		ApplicationName: f.ApplicationName,
		ClientAddr:      f.ClientAddr,
		TraceParent:     f.TraceParent,
	}
}

// Millis converts d to milliseconds rounded to the microsecond, the unit of
// every *_ms evidence key.
func Millis(d time.Duration) float64 {
	return math.Round(float64(d)/float64(time.Microsecond)) / 1000
}

// fmtDuration prints d rounded for messages ("12.3ms", "1.5s").
func fmtDuration(d time.Duration) string {
	switch {
	case d >= time.Second:
		return d.Round(10 * time.Millisecond).String()
	case d >= time.Millisecond:
		return d.Round(100 * time.Microsecond).String()
	default:
		return d.Round(time.Microsecond).String()
	}
}
