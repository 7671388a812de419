package rules

import (
	"strings"
	"testing"
	"time"
)

func seqFacts() SeqScanFacts {
	return SeqScanFacts{
		PlanShapeFacts: PlanShapeFacts{Fingerprint: "00ab", Query: "SELECT * FROM items WHERE category = $1",
			Calls: 10, TotalTime: 50 * time.Millisecond, MeanTime: 5 * time.Millisecond},
		Schema: "public", Table: "items", Filter: "(items.category = $1)",
		EstimatedRowsScanned: 100000, EstimatedRowsReturned: 100, ScanCost: 1986, PlanCost: 1986,
		GenericPlan: true, PlanExcerpt: "Seq Scan on public.items",
	}
}

func TestEvaluateSeqScan(t *testing.T) {
	t.Parallel()
	f := EvaluateSeqScan(seqFacts(), SeqScanConfig{})
	if f == nil {
		t.Fatal("no finding")
	}
	if f.ID != "seq-scan:00ab:items" || f.Rule != IDSeqScan || f.Severity != Warning || f.Table != "items" || f.Count != 1 {
		t.Errorf("finding %+v", f)
	}
	if f.Evidence["selectivity"] != 0.001 || f.Evidence["estimated_rows_scanned"] != 100000.0 || f.Evidence["mean_time_ms"] != 5.0 {
		t.Errorf("evidence %v", f.Evidence)
	}
	if !strings.Contains(f.Message, "~100,000 rows") || !strings.Contains(f.Suggestion, "Add an index") {
		t.Errorf("message %q suggestion %q", f.Message, f.Suggestion)
	}
	withIdx := seqFacts()
	withIdx.SuggestedIndex = "CREATE INDEX CONCURRENTLY x ON items (category);"
	if f := EvaluateSeqScan(withIdx, SeqScanConfig{}); f.Suggestion != withIdx.SuggestedIndex {
		t.Errorf("suggestion %q", f.Suggestion)
	}
	other := seqFacts()
	other.Schema = "app"
	if f := EvaluateSeqScan(other, SeqScanConfig{}); f.Table != "app.items" || f.ID != "seq-scan:00ab:app.items" {
		t.Errorf("schema-qualified: %+v", f)
	}

	off := false
	for name, c := range map[string]struct {
		mod func(*SeqScanFacts)
		cfg SeqScanConfig
	}{
		"no filter":         {func(f *SeqScanFacts) { f.Filter = "" }, SeqScanConfig{}},
		"small table":       {func(f *SeqScanFacts) { f.EstimatedRowsScanned = 9999; f.EstimatedRowsReturned = 1 }, SeqScanConfig{}},
		"never analyzed":    {func(f *SeqScanFacts) { f.EstimatedRowsScanned = -1 }, SeqScanConfig{}},
		"not selective":     {func(f *SeqScanFacts) { f.EstimatedRowsReturned = 20000 }, SeqScanConfig{}},
		"raised table size": {nil, SeqScanConfig{MinTableRows: 1000000}},
		"lower selectivity": {nil, SeqScanConfig{MaxSelectivity: 0.0001}},
		"disabled":          {nil, SeqScanConfig{Common: Common{Enabled: &off}}},
	} {
		facts := seqFacts()
		if c.mod != nil {
			c.mod(&facts)
		}
		if f := EvaluateSeqScan(facts, c.cfg); f != nil {
			t.Errorf("%s: unexpected finding %+v", name, f)
		}
	}
	// Boundaries are inclusive.
	edge := seqFacts()
	edge.EstimatedRowsScanned, edge.EstimatedRowsReturned = 10000, 1000
	if EvaluateSeqScan(edge, SeqScanConfig{}) == nil {
		t.Error("10000 rows at selectivity 0.1 should fire")
	}
}

func idxFacts() IndexCandidateFacts {
	return IndexCandidateFacts{
		PlanShapeFacts:  PlanShapeFacts{Fingerprint: "00ab", Query: "SELECT * FROM items WHERE category = $1", Calls: 3},
		Schema:          "public",
		Table:           "items",
		Columns:         []string{"category"},
		CreateStatement: "CREATE INDEX CONCURRENTLY items_category_idx ON public.items (category);",
		Validated:       true, CostBefore: 1986, CostAfter: 281.5,
		TableRows: 100000, WriteStatsKnown: true, RowsInserted: 100000, RowsReadSeq: 300000,
		StatsSeconds: 1000, WriteRateWindow: 1000, WritesInWindow: 100000, ExistingIndexes: 1,
	}
}

func TestEvaluateMissingIndex(t *testing.T) {
	t.Parallel()
	f := EvaluateMissingIndex(idxFacts(), MissingIndexConfig{})
	if f == nil {
		t.Fatal("no finding")
	}
	if f.ID != "missing-index:00ab:items" || f.Severity != Warning || f.Suggestion != idxFacts().CreateStatement {
		t.Errorf("finding %+v", f)
	}
	if f.Evidence["cost_reduction"] != 0.8583 || f.Evidence["writes_per_s"] != 100.0 || f.Evidence["existing_indexes"] != 1 {
		t.Errorf("evidence %v", f.Evidence)
	}

	weak := idxFacts()
	weak.CostAfter = 1100
	if f := EvaluateMissingIndex(weak, MissingIndexConfig{}); f != nil {
		t.Errorf("45%% cut reported: %+v", f)
	}
	if f := EvaluateMissingIndex(weak, MissingIndexConfig{MinCostReduction: 0.4}); f == nil {
		t.Error("45% cut not reported at min_cost_reduction 0.4")
	}

	un := idxFacts()
	un.Validated, un.CostAfter, un.ValidationNote = false, 0, "HypoPG is not installed in this database"
	f = EvaluateMissingIndex(un, MissingIndexConfig{})
	if f == nil || f.Severity != Info || !strings.Contains(f.Message, "unvalidated") ||
		!strings.Contains(f.Suggestion, "\n-- unvalidated: HypoPG is not installed") || f.Evidence["cost_after"] != nil {
		t.Errorf("unvalidated finding %+v", f)
	}

	// Issue 14, item 10: ~4,000 writes/s on the table against 0.4 calls/s
	// of the shape; the old write share called that 3.4 %. The message
	// and the suggestion say that writes dominate.
	heavy := idxFacts()
	heavy.RowsInserted, heavy.RowsReadSeq, heavy.StatsSeconds = 4_000_000, 114_000_000, 1000
	heavy.WriteRateWindow, heavy.WritesInWindow = 1000, 4_000_000
	heavy.Calls, heavy.FirstSeen, heavy.LastSeen = 400, t0, t0.Add(1000*time.Second)
	f = EvaluateMissingIndex(heavy, MissingIndexConfig{})
	if f.Evidence["writes_per_s"] != 4000.0 || f.Evidence["shape_calls_per_s"] != 0.4 ||
		!strings.Contains(f.Message, "writes dominate: items takes 4000 rows written/s against 0.40/s of this query") ||
		!strings.Contains(f.Suggestion, "\n-- write cost: items takes 4000 rows written/s (1 indexes already)") {
		t.Errorf("write-heavy: %q / %q / %v", f.Message, f.Suggestion, f.Evidence)
	}
	// A bulk load just before (the demo's 300,000 rows, 13 s after the
	// server started) is not a write rate: with no second reading of the
	// counters and a lifetime under MinLifetimeStatsSeconds, the rate is
	// unknown and nothing says writes dominate.
	loaded := idxFacts()
	loaded.RowsInserted, loaded.StatsSeconds, loaded.WriteRateWindow, loaded.WritesInWindow = 300_000, 13, 0, 0
	loaded.Calls, loaded.FirstSeen, loaded.LastSeen = 42, t0, t0.Add(2*time.Second)
	if f := EvaluateMissingIndex(loaded, MissingIndexConfig{}); f.Evidence["writes_per_s"] != nil || strings.Contains(f.Message, "writes dominate") {
		t.Errorf("bulk load read as a write rate: %q %v", f.Message, f.Evidence)
	}
	// Over a long lifetime the average stands in until a rate is measured.
	old := idxFacts()
	old.WriteRateWindow, old.WritesInWindow, old.StatsSeconds = 0, 0, 2*MinLifetimeStatsSeconds
	if f := EvaluateMissingIndex(old, MissingIndexConfig{}); f.Evidence["writes_per_s"] != 13.89 || f.Evidence["write_rate_window_s"] != 2.0*MinLifetimeStatsSeconds {
		t.Errorf("lifetime rate: %v", f.Evidence)
	}
	light := idxFacts()
	light.Calls, light.FirstSeen, light.LastSeen = 100000, t0, t0.Add(1000*time.Second)
	if f := EvaluateMissingIndex(light, MissingIndexConfig{}); strings.Contains(f.Message, "writes dominate") || strings.Contains(f.Suggestion, "write cost") {
		t.Errorf("read-heavy table flagged: %q", f.Message)
	}
	none := idxFacts()
	none.Columns = nil
	off := false
	if EvaluateMissingIndex(none, MissingIndexConfig{}) != nil ||
		EvaluateMissingIndex(idxFacts(), MissingIndexConfig{Common: Common{Enabled: &off}}) != nil {
		t.Error("finding without columns or with the rule disabled")
	}
}

func TestPlanHelpers(t *testing.T) {
	t.Parallel()
	if WriteShare(0, 0, 0, 0, 0) != 0 || WriteShare(1, 1, 1, 1, 0) != 0.75 {
		t.Error("WriteShare")
	}
	if CostReduction(0, 1) != 0 || CostReduction(200, 50) != 0.75 {
		t.Error("CostReduction")
	}
	if Selectivity(0, 5) != 1 || Selectivity(100, 200) != 1 || Selectivity(1000, 10) != 0.01 {
		t.Error("Selectivity")
	}
	if QualifiedTable("", "t") != "t" || QualifiedTable("public", "t") != "t" || QualifiedTable("s", "t") != "s.t" {
		t.Error("QualifiedTable")
	}
	for v, want := range map[float64]string{0: "0", 999: "999", 1000: "1,000", 1234567.4: "1,234,567", -5: "-5"} {
		if got := planCount(v); got != want {
			t.Errorf("planCount(%v) = %q, want %q", v, got, want)
		}
	}
}

// TestSeqScanParallelRows (issue 14, item 3): a parallel scan's message
// gives the total the planner expects, and says how it relates to the
// per-process rows its plan excerpt prints.
func TestSeqScanParallelRows(t *testing.T) {
	f := seqFacts()
	f.Parallel, f.RowsPerProcess, f.EstimatedRowsReturned = true, 12, 20
	f.PlanExcerpt = "Parallel Seq Scan on public.items (cost=0.00..1068.00 rows=12 per process, ~20 in total) Filter: (items.category = $1)"
	fd := EvaluateSeqScan(f, SeqScanConfig{})
	if !strings.Contains(fd.Message, "keeps ~20 rows in total (~12 per parallel process)") ||
		fd.Evidence["estimated_rows_per_process"] != 12.0 || fd.Evidence["estimated_rows_returned"] != 20.0 {
		t.Errorf("message %q evidence %v", fd.Message, fd.Evidence)
	}
	if fd := EvaluateSeqScan(seqFacts(), SeqScanConfig{}); fd.Evidence["estimated_rows_per_process"] != nil || strings.Contains(fd.Message, "in total") {
		t.Errorf("serial scan: %q %v", fd.Message, fd.Evidence)
	}
}
