package rules

import (
	"fmt"
	"math"
	"strings"
	"time"
)

// Plan-based rules: seq-scan and missing-index. The analyzer's EXPLAIN
// sampler gathers the facts (a plan read from EXPLAIN (FORMAT JSON), the
// table's size and statistics from the catalogs, hypothetical-index costs
// from HypoPG); the functions here only decide and format.

// seqScanLimits returns cfg's thresholds with defaults for unset (zero or
// negative) fields.
func seqScanLimits(cfg SeqScanConfig) (minRows, maxSel float64) {
	minRows, maxSel = float64(cfg.MinTableRows), cfg.MaxSelectivity
	if minRows <= 0 {
		minRows = DefaultSeqScanMinTableRows
	}
	if maxSel <= 0 {
		maxSel = DefaultSeqScanMaxSelectivity
	}
	return minRows, maxSel
}

// minCostReduction returns cfg's threshold, or the default when unset or
// out of range.
func minCostReduction(cfg MissingIndexConfig) float64 {
	if r := cfg.MinCostReduction; r > 0 && r < 1 {
		return r
	}
	return DefaultMissingIndexCostReduction
}

// SeqScanQualifies reports whether a filtered sequential scan of a table
// estimated at rowsScanned rows (pg_class.reltuples) that returns an
// estimated rowsReturned rows passes cfg's thresholds (defaults for unset
// fields): the table has at least MinTableRows rows and
// rowsReturned/rowsScanned is at most MaxSelectivity. The EXPLAIN sampler
// uses it to decide which scans deserve an index search; EvaluateSeqScan
// applies the same test. cfg.Enabled is not consulted.
func SeqScanQualifies(cfg SeqScanConfig, rowsScanned, rowsReturned float64) bool {
	minRows, maxSel := seqScanLimits(cfg)
	if rowsScanned <= 0 || rowsScanned < minRows {
		return false
	}
	return Selectivity(rowsScanned, rowsReturned) <= maxSel
}

// Selectivity is rowsReturned/rowsScanned, clamped to [0, 1]; 1 when
// rowsScanned is not positive.
func Selectivity(rowsScanned, rowsReturned float64) float64 {
	if rowsScanned <= 0 {
		return 1
	}
	s := rowsReturned / rowsScanned
	return math.Max(0, math.Min(1, s))
}

// QualifiedTable names a table the way findings show it (Finding.Table and
// the stable id): the bare name in schema "public" (or when the schema is
// unknown), else schema.name. Names are not quoted.
func QualifiedTable(schema, table string) string {
	if schema == "" || schema == "public" {
		return table
	}
	return schema + "." + table
}

// PlanShapeFacts are the per-shape numbers both plan rules report: how often
// the statement runs and how long it takes, as measured by pgaudit.
type PlanShapeFacts struct {
	// Fingerprint is the shape's fingerprint (16 hex digits).
	Fingerprint string
	// Query is the normalized statement (no literal values).
	Query string
	// Database is where the statement ran and was explained, when known.
	Database string
	// Calls is how often the shape ran (from its statistics).
	Calls uint64
	// TotalTime is the time the shape took altogether.
	TotalTime time.Duration
	// MeanTime is TotalTime per call.
	MeanTime time.Duration
	// FirstSeen and LastSeen bound the shape's executions; zero when
	// unknown.
	FirstSeen, LastSeen time.Time
}

// SeqScanFacts describe one Seq Scan node with a Filter in the plan of one
// query shape.
type SeqScanFacts struct {
	PlanShapeFacts
	// Schema and Table name the scanned relation.
	Schema, Table string
	// Filter is the scan's Filter expression as EXPLAIN prints it.
	Filter string
	// EstimatedRowsScanned is the table's estimated size
	// (pg_class.reltuples).
	EstimatedRowsScanned float64
	// EstimatedRowsReturned is the planner's estimate of the rows the
	// filter keeps (Plan Rows; for a parallel scan summed over the planned
	// workers).
	EstimatedRowsReturned float64
	// ScanCost is the scan node's total cost; PlanCost the whole
	// statement's.
	ScanCost, PlanCost float64
	// Parallel is true for a parallel sequential scan.
	Parallel bool
	// RowsPerProcess is a parallel scan's Plan Rows as EXPLAIN prints it
	// (per process; EstimatedRowsReturned is the total).
	RowsPerProcess float64
	// GenericPlan is true when the plan was made without parameter values
	// (a generic plan for a parameterized shape).
	GenericPlan bool
	// PlanExcerpt is a one-line rendering of the scan node.
	PlanExcerpt string
	// SuggestedIndex, when the index advisor found one, is the CREATE
	// INDEX CONCURRENTLY statement that would serve the filter.
	SuggestedIndex string
}

// EvaluateSeqScan returns a seq-scan finding when cfg enables the rule and
// the facts pass its thresholds (a Filter, a table of at least
// MinTableRows estimated rows, a selectivity of at most MaxSelectivity;
// defaults for unset fields), else nil. cfg.Severity is not consulted:
// Config.Apply does that. The finding's stable id
// is StableID(IDSeqScan, fingerprint, table); Count is 1 and FirstSeen and
// LastSeen come from the facts (zero when unknown: the caller fills them).
//
// Evidence keys: table, schema, filter, estimated_rows_scanned,
// estimated_rows_returned, selectivity, scan_cost, plan_cost, parallel,
// generic_plan, calls, total_time_ms, mean_time_ms, plan_excerpt.
func EvaluateSeqScan(f SeqScanFacts, cfg SeqScanConfig) *Finding {
	if !cfg.IsEnabled() || f.Filter == "" || f.Table == "" || !SeqScanQualifies(cfg, f.EstimatedRowsScanned, f.EstimatedRowsReturned) {
		return nil
	}
	table := QualifiedTable(f.Schema, f.Table)
	sel := Selectivity(f.EstimatedRowsScanned, f.EstimatedRowsReturned)
	ev := map[string]any{
		"table":                   table,
		"schema":                  f.Schema,
		"filter":                  f.Filter,
		"estimated_rows_scanned":  planRound(f.EstimatedRowsScanned, 0),
		"estimated_rows_returned": planRound(f.EstimatedRowsReturned, 0),
		"selectivity":             planRound(sel, 6),
		"scan_cost":               planRound(f.ScanCost, 2),
		"plan_cost":               planRound(f.PlanCost, 2),
		"parallel":                f.Parallel,
		"generic_plan":            f.GenericPlan,
		"calls":                   f.Calls,
		"total_time_ms":           planMS(f.TotalTime),
		"mean_time_ms":            planMS(f.MeanTime),
	}
	if f.PlanExcerpt != "" {
		ev["plan_excerpt"] = f.PlanExcerpt
	}
	kept := "~" + planCount(f.EstimatedRowsReturned) + " rows"
	if f.Parallel && f.RowsPerProcess > 0 && f.RowsPerProcess != f.EstimatedRowsReturned {
		ev["estimated_rows_per_process"] = planRound(f.RowsPerProcess, 0)
		kept += " in total (~" + planCount(f.RowsPerProcess) + " per parallel process)"
	}
	sugg := f.SuggestedIndex
	if sugg == "" {
		sugg = fmt.Sprintf("Add an index on the columns %s filters on (%s), or rewrite the filter so an existing index applies.", table, f.Filter)
	}
	return &Finding{
		ID:          StableID(IDSeqScan, f.Fingerprint, table),
		Rule:        IDSeqScan,
		Severity:    Warning,
		Fingerprint: f.Fingerprint,
		Query:       f.Query,
		Message: fmt.Sprintf("sequential scan of %s (~%s rows) keeps %s (%s) with filter %s",
			table, planCount(f.EstimatedRowsScanned), kept, planPct(sel), f.Filter),
		Evidence:    ev,
		Suggestion:  sugg,
		Confidence:  "high",
		Table:       table,
		Count:       1,
		FirstSeen:   f.FirstSeen,
		LastSeen:    f.LastSeen,
		WindowStart: f.FirstSeen,
		WindowEnd:   f.LastSeen,
		Database:    f.Database,
	}
}

// IndexCandidateFacts describe one suggested index for a relation a shape
// scans sequentially.
type IndexCandidateFacts struct {
	PlanShapeFacts
	// Schema and Table name the indexed relation.
	Schema, Table string
	// Columns are the index's key columns, in order.
	Columns []string
	// CreateStatement is the ready CREATE INDEX CONCURRENTLY statement.
	CreateStatement string
	// Validated is true when the costs were measured with a hypothetical
	// index (HypoPG).
	Validated bool
	// CostBefore is the statement's plan cost without the index.
	CostBefore float64
	// CostAfter is the plan cost with the hypothetical index; zero (and
	// ignored) when unvalidated.
	CostAfter float64
	// ValidationNote says why the suggestion is unvalidated (for example
	// "HypoPG is not installed in this database").
	ValidationNote string
	// TableRows is the table's estimated size (pg_class.reltuples).
	TableRows float64
	// WriteStatsKnown is true when pg_stat_user_tables had a row for the
	// table; the counters below are then its cumulative values.
	WriteStatsKnown bool
	RowsInserted    int64 // n_tup_ins
	RowsUpdated     int64 // n_tup_upd
	RowsDeleted     int64 // n_tup_del
	RowsReadSeq     int64 // seq_tup_read
	RowsFetchedIdx  int64 // idx_tup_fetch
	// StatsSeconds is the time the counters above cover (since the
	// statistics were reset or, when never, since the server started);
	// zero when unknown.
	StatsSeconds float64
	// WriteRateWindow, when positive, is the time in seconds between two
	// readings of the table's counters by this process, and
	// WritesInWindow the rows written (inserted + updated + deleted)
	// between them: the table's current write rate.
	WriteRateWindow float64
	WritesInWindow  int64
	// ExistingIndexes is the number of indexes the table already has.
	ExistingIndexes int
}

// MinLifetimeStatsSeconds is how long pg_stat_user_tables' counters must
// cover before their lifetime average stands in for a write rate this
// process has not measured yet. Over a shorter span a bulk load (a
// restore, a seed script, the demo's data) reads as a write-heavy table.
const MinLifetimeStatsSeconds = 3600

// WritesPerSecond is the table's rows written (inserted + updated +
// deleted) per second, and the span in seconds it was measured over: the
// rate between two readings of the counters (WriteRateWindow) when there
// were two, else the counters' lifetime average when they cover at least
// MinLifetimeStatsSeconds, else -1 (not measured yet).
func (f *IndexCandidateFacts) WritesPerSecond() (rate, window float64) {
	if !f.WriteStatsKnown {
		return -1, 0
	}
	if f.WriteRateWindow > 0 {
		return float64(max(f.WritesInWindow, 0)) / f.WriteRateWindow, f.WriteRateWindow
	}
	if f.StatsSeconds < MinLifetimeStatsSeconds {
		return -1, 0
	}
	return float64(max(f.RowsInserted, 0)+max(f.RowsUpdated, 0)+max(f.RowsDeleted, 0)) / f.StatsSeconds, f.StatsSeconds
}

// CallsPerSecond is how often the shape ran per second between its first
// and last execution (at least one second), or -1 when unknown: the
// statements per second that would use the index.
func (f *PlanShapeFacts) CallsPerSecond() float64 {
	if f.Calls == 0 || f.FirstSeen.IsZero() || f.LastSeen.IsZero() {
		return -1
	}
	return float64(f.Calls) / max(f.LastSeen.Sub(f.FirstSeen).Seconds(), 1)
}

// WriteShare is the table write share reported by missing-index findings:
// rows written (inserted + updated + deleted) over rows written plus rows
// read (sequentially read + fetched by index), all from
// pg_stat_user_tables. 0 when no activity was counted.
func WriteShare(inserted, updated, deleted, seqRead, idxFetched int64) float64 {
	w := float64(max(inserted, 0) + max(updated, 0) + max(deleted, 0))
	r := float64(max(seqRead, 0) + max(idxFetched, 0))
	if w+r <= 0 {
		return 0
	}
	return w / (w + r)
}

// CostReduction is (before-after)/before, or 0 when before is not positive.
func CostReduction(before, after float64) float64 {
	if before <= 0 {
		return 0
	}
	return (before - after) / before
}

// EvaluateMissingIndex returns a missing-index finding for the candidate,
// or nil when cfg disables the rule, when there is no statement to suggest,
// or when a validated candidate cuts the plan cost by less than
// cfg.MinCostReduction (default 0.5). A validated finding is a Warning; an
// unvalidated one (no HypoPG) is Info, says so in its message, and its
// suggestion carries a comment line saying the index was not validated
// (Config.Apply, if called, replaces the severity with the configured
// one). The stable id is StableID(IDMissingIndex, fingerprint, table).
//
// Evidence keys: table, schema, columns, create_statement, validated,
// validation_note (unvalidated only), cost_before, cost_after and
// cost_reduction (validated only), table_rows, existing_indexes,
// writes_per_s and write_rate_window_s, shape_calls_per_s (when known), rows_inserted,
// rows_updated, rows_deleted, rows_read_seq, rows_fetched_idx (when write
// statistics are known), calls, total_time_ms, mean_time_ms. When the
// table's writes per second exceed the shape's calls per second, the
// message and the suggestion say so.
func EvaluateMissingIndex(f IndexCandidateFacts, cfg MissingIndexConfig) *Finding {
	if !cfg.IsEnabled() || f.CreateStatement == "" || len(f.Columns) == 0 || f.Table == "" {
		return nil
	}
	table := QualifiedTable(f.Schema, f.Table)
	cols := strings.Join(f.Columns, ", ")
	ev := map[string]any{
		"table":            table,
		"schema":           f.Schema,
		"columns":          append([]string(nil), f.Columns...),
		"create_statement": f.CreateStatement,
		"validated":        f.Validated,
		"table_rows":       planRound(f.TableRows, 0),
		"existing_indexes": f.ExistingIndexes,
		"calls":            f.Calls,
		"total_time_ms":    planMS(f.TotalTime),
		"mean_time_ms":     planMS(f.MeanTime),
	}
	if f.CostBefore > 0 {
		ev["cost_before"] = planRound(f.CostBefore, 2)
	}
	writes, writeWindow := f.WritesPerSecond()
	reads := f.CallsPerSecond()
	if writes >= 0 {
		ev["writes_per_s"] = planRound(writes, 2)
		ev["write_rate_window_s"] = planRound(writeWindow, 0)
	}
	if reads >= 0 {
		ev["shape_calls_per_s"] = planRound(reads, 2)
	}
	if f.WriteStatsKnown {
		ev["rows_inserted"] = f.RowsInserted
		ev["rows_updated"] = f.RowsUpdated
		ev["rows_deleted"] = f.RowsDeleted
		ev["rows_read_seq"] = f.RowsReadSeq
		ev["rows_fetched_idx"] = f.RowsFetchedIdx
	}
	var b strings.Builder
	b.WriteString(f.CreateStatement)
	sev := Warning
	var msg string
	if f.Validated {
		red := CostReduction(f.CostBefore, f.CostAfter)
		if red < minCostReduction(cfg) {
			return nil
		}
		ev["cost_after"] = planRound(f.CostAfter, 2)
		ev["cost_reduction"] = planRound(red, 4)
		msg = fmt.Sprintf("an index on %s (%s) cuts the plan cost from %.2f to %.2f (-%s), validated with HypoPG",
			table, cols, f.CostBefore, f.CostAfter, planPct(red))
	} else {
		sev = Info
		note := f.ValidationNote
		if note == "" {
			note = "HypoPG is not available"
		}
		ev["validation_note"] = note
		msg = fmt.Sprintf("an index on %s (%s) would likely serve this query (unvalidated: %s)", table, cols, note)
		fmt.Fprintf(&b, "\n-- unvalidated: %s; compare EXPLAIN before and after creating it", note)
	}
	if writes > 0 && reads >= 0 && writes > reads {
		// Writes dominate the reads the index would serve: every insert,
		// non-HOT update and delete must maintain it too.
		msg += fmt.Sprintf("; but writes dominate: %s takes %s rows written/s against %s/s of this query, and every write must also update the new index (%d existing)",
			table, rate(writes), rate(reads), f.ExistingIndexes)
		fmt.Fprintf(&b, "\n-- write cost: %s takes %s rows written/s (%d indexes already) against %s/s of this query; measure write throughput with and without the index before keeping it",
			table, rate(writes), f.ExistingIndexes, rate(reads))
	}
	return &Finding{
		ID:          StableID(IDMissingIndex, f.Fingerprint, table),
		Rule:        IDMissingIndex,
		Severity:    sev,
		Fingerprint: f.Fingerprint,
		Query:       f.Query,
		Message:     msg,
		Evidence:    ev,
		Suggestion:  b.String(),
		Confidence:  map[bool]string{true: "high", false: "medium"}[f.Validated],
		Table:       table,
		Count:       1,
		FirstSeen:   f.FirstSeen,
		LastSeen:    f.LastSeen,
		WindowStart: f.FirstSeen,
		WindowEnd:   f.LastSeen,
		Database:    f.Database,
	}
}

func planRound(v float64, digits int) float64 {
	p := math.Pow10(digits)
	return math.Round(v*p) / p
}

func planMS(d time.Duration) float64 { return planRound(float64(d)/float64(time.Millisecond), 3) }

func planPct(f float64) string {
	switch {
	case f == 0:
		return "0%"
	case f < 0.001:
		return "<0.1%"
	case f < 0.1:
		return fmt.Sprintf("%.1f%%", f*100)
	case f > 0.99 && f < 1:
		// Don't round a 99.8% cut up to "100%".
		return fmt.Sprintf("%.1f%%", f*100)
	}
	return fmt.Sprintf("%.0f%%", f*100)
}

// planCount formats a row estimate compactly (1234 → "1,234").
func planCount(v float64) string {
	n := int64(math.Round(v))
	s := fmt.Sprintf("%d", n)
	if n < 0 {
		return s
	}
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	return b.String()
}

// rate formats a per-second rate with sensible precision.
func rate(v float64) string {
	switch {
	case v >= 100:
		return fmt.Sprintf("%.0f", v)
	case v >= 1:
		return fmt.Sprintf("%.1f", v)
	}
	return fmt.Sprintf("%.2f", v)
}
