package rules

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/pgaudit-proxy/pgaudit/internal/testutil"
)

func shape(p99 time.Duration, calls uint64) ShapeFacts {
	return ShapeFacts{
		Fingerprint: "9f1c2a3b4c5d6e7f", Query: "SELECT * FROM orders WHERE status = $1 ORDER BY created_at",
		Calls: calls, Rows: int64(calls) * 40, Total: time.Duration(calls) * p99 / 3,
		Mean: p99 / 3, P50: p99 / 4, P90: p99 / 2, P99: p99, Max: p99 * 2, Share: 0.4213,
		FirstSeen: t0, LastSeen: t0.Add(time.Hour), ApplicationName: "shop",
	}
}

func TestEvaluateSlowQuery(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		facts ShapeFacts
		cfg   SlowQueryConfig
		fire  bool
	}{
		{"p99 over default", shape(600*time.Millisecond, 50), SlowQueryConfig{}, true},
		{"p99 at threshold", shape(500*time.Millisecond, 50), SlowQueryConfig{}, true},
		{"p99 under default", shape(499*time.Millisecond, 50), SlowQueryConfig{}, false},
		{"too few calls", shape(2*time.Second, 9), SlowQueryConfig{}, false},
		{"configured threshold", shape(300*time.Millisecond, 50), SlowQueryConfig{P99Threshold: Duration(250 * time.Millisecond)}, true},
		{"configured min calls", shape(time.Second, 50), SlowQueryConfig{MinCalls: 51}, false},
		{"disabled", shape(time.Second, 50), SlowQueryConfig{Common: Common{Enabled: ptr(false)}}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := EvaluateSlowQuery(tt.facts, tt.cfg)
			if (f != nil) != tt.fire {
				t.Fatalf("fired %v, want %v", f != nil, tt.fire)
			}
			if f == nil {
				return
			}
			if f.ID != "slow-query:9f1c2a3b4c5d6e7f" || f.Count != 50 || f.Evidence["p99_ms"] != Millis(tt.facts.P99) {
				t.Errorf("%+v", f)
			}
		})
	}
	sev := Error
	f := EvaluateSlowQuery(shape(time.Second, 50), SlowQueryConfig{Common: Common{Severity: &sev}})
	if f.Severity != Error {
		t.Errorf("severity override: %v", f.Severity)
	}
}

func pool(util float64, p99 time.Duration) PoolFacts {
	return PoolFacts{Database: "app", User: "web", Mode: "transaction", Size: 20, Utilization: util,
		Window: time.Minute, Acquires: 5000, Waits: 1200, WaitP99: p99, MaxWait: 3 * p99, ClientsWaiting: 7, ClientsActive: 20, At: t0}
}

func TestEvaluatePoolSaturation(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		facts  PoolFacts
		cfg    PoolSaturationConfig
		reason string
	}{
		{"utilization at threshold", pool(0.8, time.Millisecond), PoolSaturationConfig{}, "utilization"},
		{"utilization under", pool(0.79, time.Millisecond), PoolSaturationConfig{}, ""},
		{"p99 wait over", pool(0.5, 60*time.Millisecond), PoolSaturationConfig{}, "p99_wait"},
		{"p99 wait at threshold", pool(0.5, 50*time.Millisecond), PoolSaturationConfig{}, ""},
		{"both", pool(0.95, 80*time.Millisecond), PoolSaturationConfig{}, "utilization,p99_wait"},
		{"configured utilization", pool(0.85, 0), PoolSaturationConfig{Utilization: 0.9}, ""},
		{"configured wait", pool(0.5, 20*time.Millisecond), PoolSaturationConfig{P99Wait: Duration(10 * time.Millisecond)}, "p99_wait"},
		{"no waits", func() PoolFacts { p := pool(0.5, time.Second); p.Waits = 0; return p }(), PoolSaturationConfig{}, ""},
		{"disabled", pool(1, time.Second), PoolSaturationConfig{Common: Common{Enabled: ptr(false)}}, ""},
		// An idle pool behind a slow server login (issue 14, item 1): no
		// queueing, a few connects of 300 ms; no finding.
		{"idle pool, slow connects", PoolFacts{Database: "app", User: "x", Size: 20, Utilization: 0.01, Window: time.Minute,
			Acquires: 64, Connects: 3, ConnectP99: 308 * time.Millisecond, ConnectMax: 308 * time.Millisecond, At: t0}, PoolSaturationConfig{}, ""},
		// Fully used but nobody queued (20 clients on 20 servers): not
		// saturated.
		{"busy, no queue", func() PoolFacts {
			p := pool(0.95, 0)
			p.Waits, p.ClientsWaiting, p.MaxWait = 0, 0, 0
			return p
		}(), PoolSaturationConfig{}, ""},
		{"busy, clients waiting now", func() PoolFacts {
			p := pool(0.95, 0)
			p.Waits, p.MaxWait = 0, 0
			return p
		}(), PoolSaturationConfig{}, "utilization"},
		{"too few waits", func() PoolFacts { p := pool(0.3, time.Second); p.Waits = 19; return p }(), PoolSaturationConfig{}, ""},
		{"configured min waits", func() PoolFacts { p := pool(0.3, time.Second); p.Waits = 5; return p }(), PoolSaturationConfig{MinWaits: 5}, "p99_wait"},
		// A p99 above the max is capped at the max: 524 ms over a max of
		// 40 ms is not over 50 ms.
		{"p99 capped by max", func() PoolFacts { p := pool(0.3, 524*time.Millisecond); p.MaxWait = 40 * time.Millisecond; return p }(), PoolSaturationConfig{}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := EvaluatePoolSaturation(tt.facts, tt.cfg)
			if tt.reason == "" {
				if f != nil {
					t.Fatalf("fired: %s", f.Message)
				}
				return
			}
			if f == nil {
				t.Fatal("did not fire")
			}
			if f.Evidence["reason"] != tt.reason || f.ID != "pool-saturation:app/web" {
				t.Errorf("reason %v id %s", f.Evidence["reason"], f.ID)
			}
		})
	}
	f := EvaluatePoolSaturation(pool(0.95, time.Millisecond), PoolSaturationConfig{})
	// 19 of 20 servers busy; 70% utilization needs 28.
	if f.Evidence["busy_servers"] != 19.0 || f.Evidence["suggested_pool_size"] != int64(28) {
		t.Errorf("evidence %v", f.Evidence)
	}
}

func TestEvaluateNPlusOne(t *testing.T) {
	t.Parallel()
	base := func() NPlusOneFacts {
		return NPlusOneFacts{Fingerprint: "a1", Query: "q", Repeats: 10, DistinctParams: 10,
			SourceFingerprint: "b2", SourceRows: 10, Form: FormRowCount, Tie: TieGap}
	}
	tests := []struct {
		name   string
		mutate func(*NPlusOneFacts)
		cfg    NPlusOneConfig
		want   string // confidence, "" for no finding
	}{
		{"row count", func(*NPlusOneFacts) {}, NPlusOneConfig{}, ConfidenceHigh},
		{"source has more rows", func(f *NPlusOneFacts) { f.SourceRows = 100 }, NPlusOneConfig{}, ConfidenceHigh},
		{"source has fewer rows", func(f *NPlusOneFacts) { f.SourceRows = 9 }, NPlusOneConfig{}, ""},
		{"too few repeats", func(f *NPlusOneFacts) { f.Repeats, f.DistinctParams = 4, 4 }, NPlusOneConfig{}, ""},
		{"too few distinct", func(f *NPlusOneFacts) { f.DistinctParams = 4 }, NPlusOneConfig{}, ""},
		{"min repeats configured", func(*NPlusOneFacts) {}, NPlusOneConfig{MinRepeats: 11}, ""},
		{"no source", func(f *NPlusOneFacts) { f.SourceFingerprint = "" }, NPlusOneConfig{}, ""},
		{"source is the same shape", func(f *NPlusOneFacts) { f.SourceFingerprint = "a1" }, NPlusOneConfig{}, ""},
		{"batch", func(f *NPlusOneFacts) { f.Batch = true }, NPlusOneConfig{}, ""},
		{"weak form", func(f *NPlusOneFacts) { f.SourceRows, f.Form = -1, FormInTransaction }, NPlusOneConfig{}, ConfidenceMedium},
		{"weak form with a row count", func(f *NPlusOneFacts) { f.Form = FormAfterSelect }, NPlusOneConfig{}, ""},
		{"unknown form", func(f *NPlusOneFacts) { f.Form = "" }, NPlusOneConfig{}, ""},
		{"disabled", func(*NPlusOneFacts) {}, NPlusOneConfig{Common: Common{Enabled: ptr(false)}}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			facts := base()
			tt.mutate(&facts)
			f := EvaluateNPlusOne(facts, tt.cfg)
			switch {
			case tt.want == "" && f != nil:
				t.Fatalf("fired: %s", f.Message)
			case tt.want != "" && f == nil:
				t.Fatal("did not fire")
			case f != nil && (f.Confidence != tt.want || f.ID != "n-plus-one:a1"):
				t.Errorf("confidence %q id %q", f.Confidence, f.ID)
			}
		})
	}
}

func TestEvaluateTxnPoolingUnsafe(t *testing.T) {
	t.Parallel()
	for _, feat := range []string{"listen", "advisory_lock", "temp_table", "with_hold", "prepare", "something_new"} {
		f := EvaluateTxnPoolingUnsafe(SessionStateFacts{Feature: feat, Fingerprint: "c3", Query: "LISTEN jobs", SessionID: 4, At: t0}, TxnPoolingUnsafeConfig{})
		if f == nil || f.Severity != Error || f.ID != "txn-pooling-unsafe:c3" || f.Suggestion == "" || f.Evidence["feature"] != feat {
			t.Errorf("%s: %+v", feat, f)
		}
	}
	if f := EvaluateTxnPoolingUnsafe(SessionStateFacts{Feature: "listen"}, TxnPoolingUnsafeConfig{}); f.ID != "txn-pooling-unsafe:listen" {
		t.Errorf("id without fingerprint: %s", f.ID)
	}
	if EvaluateTxnPoolingUnsafe(SessionStateFacts{Feature: "listen"}, TxnPoolingUnsafeConfig{Common: Common{Enabled: ptr(false)}}) != nil {
		t.Error("disabled rule fired")
	}
}

// exampleFindings returns one finding of every rule, built from realistic
// facts: the golden file doubles as the examples in docs/rules.md.
func exampleFindings() []*Finding {
	return []*Finding{
		EvaluateNPlusOne(NPlusOneFacts{
			Fingerprint: "4cfd56da01cf1718", Query: `SELECT "authors".* FROM "authors" WHERE "authors"."id" = $1 LIMIT $2`,
			Repeats: 20, DistinctParams: 18, Total: 6100 * time.Microsecond, Span: 9800 * time.Microsecond,
			SourceFingerprint: "0f9e963d188ede14", SourceQuery: "SELECT id, title, author_id FROM books WHERE published > $1 ORDER BY id LIMIT $2", SourceRows: 20,
			Table: "authors", Column: "id", Rewrite: "SELECT authors.* FROM authors WHERE authors.id = ANY($1)",
			Form: FormRowCount, Tie: TieGap, SessionID: 17, Database: "shop", ApplicationName: "web",
			ClientAddr: "10.0.0.7:51234", First: t0, Last: t0.Add(9800 * time.Microsecond),
		}, NPlusOneConfig{}),
		EvaluateSlowQuery(ShapeFacts{
			Fingerprint: "9f1c2a3b4c5d6e7f", Query: "SELECT * FROM orders WHERE status = $1 ORDER BY created_at",
			Calls: 1250, Errors: 2, Rows: 1250 * 4200, Total: 1250 * 310 * time.Millisecond, Mean: 310 * time.Millisecond,
			P50: 280 * time.Millisecond, P90: 520 * time.Millisecond, P99: 740 * time.Millisecond, Max: 1900 * time.Millisecond,
			Share: 0.3817, FirstSeen: t0, LastSeen: t0.Add(time.Hour), ApplicationName: "web",
		}, SlowQueryConfig{}),
		EvaluatePoolSaturation(PoolFacts{
			Database: "shop", User: "web", Mode: "transaction", Size: 10, Utilization: 0.93, Window: time.Minute,
			Acquires: 21400, Waits: 5230, WaitP99: 85 * time.Millisecond, MaxWait: 410 * time.Millisecond, Connects: 2, ConnectP99: 6200 * time.Microsecond, ConnectMax: 6200 * time.Microsecond, ClientsWaiting: 12, ClientsActive: 10, At: t0,
		}, PoolSaturationConfig{}),
		EvaluateTxnPoolingUnsafe(SessionStateFacts{
			Feature: "advisory_lock", Fingerprint: "5b0d6c1e2f3a4b5c", Query: "SELECT pg_advisory_lock($1)",
			SessionID: 42, Database: "shop", User: "worker", ApplicationName: "jobs", At: t0,
		}, TxnPoolingUnsafeConfig{}),
		EvaluateSeqScan(SeqScanFacts{
			PlanShapeFacts: PlanShapeFacts{Fingerprint: "7a8b9c0d1e2f3a4b", Query: "SELECT * FROM reviews WHERE book_id = $1",
				Database: "shop", Calls: 900, TotalTime: 9 * time.Second, MeanTime: 10 * time.Millisecond, FirstSeen: t0, LastSeen: t0.Add(time.Hour)},
			Schema: "public", Table: "reviews", Filter: "(book_id = $1)",
			EstimatedRowsScanned: 250000, EstimatedRowsReturned: 5, ScanCost: 4722.5, PlanCost: 4722.5, GenericPlan: true,
			PlanExcerpt:    "Seq Scan on reviews  (cost=0.00..4722.50 rows=5 width=64) Filter: (book_id = $1)",
			SuggestedIndex: "CREATE INDEX CONCURRENTLY ON public.reviews (book_id);",
		}, SeqScanConfig{}),
		EvaluateMissingIndex(IndexCandidateFacts{
			PlanShapeFacts: PlanShapeFacts{Fingerprint: "7a8b9c0d1e2f3a4b", Query: "SELECT * FROM reviews WHERE book_id = $1",
				Database: "shop", Calls: 900, TotalTime: 9 * time.Second, MeanTime: 10 * time.Millisecond, FirstSeen: t0, LastSeen: t0.Add(time.Hour)},
			Schema: "public", Table: "reviews", Columns: []string{"book_id"},
			CreateStatement: "CREATE INDEX CONCURRENTLY ON public.reviews (book_id);",
			Validated:       true, CostBefore: 4722.5, CostAfter: 12.4, TableRows: 250000,
			WriteStatsKnown: true, RowsInserted: 250000, RowsUpdated: 1200, RowsDeleted: 30, RowsReadSeq: 9000000, RowsFetchedIdx: 120000,
			StatsSeconds: 30 * 86400, ExistingIndexes: 1,
		}, MissingIndexConfig{}),
	}
}

func TestExampleFindingsGolden(t *testing.T) {
	t.Parallel()
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	enc.SetIndent("", "  ")
	for _, f := range exampleFindings() {
		if f == nil {
			t.Fatal("an example did not fire")
		}
		if err := enc.Encode(f); err != nil {
			t.Fatal(err)
		}
	}
	testutil.Golden(t, "findings.golden", b.Bytes())
}

// TestRegistry checks the metadata against the evaluators: every rule id
// is registered once with a description, and every evidence key an
// evaluator emits is documented.
func TestRegistry(t *testing.T) {
	t.Parallel()
	ids := RuleIDs()
	want := []string{IDNPlusOne, IDSeqScan, IDMissingIndex, IDPoolSaturation, IDTxnPoolingUnsafe, IDSlowQuery, IDCacheCandidate}
	slices.Sort(ids)
	slices.Sort(want)
	if !slices.Equal(ids, want) {
		t.Fatalf("registered %v, want %v", ids, want)
	}
	for _, r := range Rules() {
		if r.Description == "" || len(r.Evidence) == 0 {
			t.Errorf("%s: missing description or evidence", r.ID)
		}
	}
	// Unvalidated missing-index findings carry validation_note.
	unvalidated := exampleFindings()[5]
	unvalidated.Evidence["validation_note"] = "x"
	for _, f := range append(exampleFindings(), unvalidated) {
		r, ok := LookupRule(f.Rule)
		if !ok {
			t.Fatalf("unregistered rule %s", f.Rule)
		}
		for k := range f.Evidence {
			if !slices.ContainsFunc(r.Evidence, func(e EvidenceKey) bool { return e.Key == k }) {
				t.Errorf("%s emits undocumented evidence key %q", f.Rule, k)
			}
		}
	}
	if _, ok := LookupRule("nope"); ok || DefaultSeverity("nope") != Info {
		t.Error("unknown rule found")
	}
}

// TestDocsCoverRegistry: docs/rules.md names every rule, threshold and
// evidence key.
func TestDocsCoverRegistry(t *testing.T) {
	t.Parallel()
	doc, err := os.ReadFile(filepath.Join("..", "docs", "rules.md"))
	if err != nil {
		t.Fatal(err)
	}
	text := string(doc)
	for _, r := range Rules() {
		if !strings.Contains(text, "## `"+r.ID+"`") {
			t.Errorf("docs/rules.md has no section for %s", r.ID)
		}
		for _, th := range r.Thresholds {
			if !strings.Contains(text, "`"+th.Key+"`") {
				t.Errorf("docs/rules.md: %s threshold %s undocumented", r.ID, th.Key)
			}
		}
		for _, e := range r.Evidence {
			if !strings.Contains(text, "`"+e.Key+"`") {
				t.Errorf("docs/rules.md: %s evidence %s undocumented", r.ID, e.Key)
			}
		}
	}
}

func ptr[T any](v T) *T { return &v }

// TestSessionIDString (issue 14, item 3): session ids from Postgres logs
// exceed 2^53; the evidence carries them as strings so JSON readers keep
// every digit.
func TestSessionIDString(t *testing.T) {
	const id = uint64(9223372036854780370)
	f := EvaluateNPlusOne(NPlusOneFacts{Fingerprint: "a1", Query: "q", Repeats: 10, DistinctParams: 10,
		SourceFingerprint: "b2", SourceRows: 10, Form: FormRowCount, Tie: TieGap, SessionID: id}, NPlusOneConfig{})
	b, err := json.Marshal(f.Evidence)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), `"session_id":"9223372036854780370"`) {
		t.Errorf("evidence %s", b)
	}
	s := EvaluateTxnPoolingUnsafe(SessionStateFacts{Feature: "listen", Fingerprint: "a1", SessionID: id}, TxnPoolingUnsafeConfig{})
	if s.Evidence["session_id"] != "9223372036854780370" {
		t.Errorf("evidence %v", s.Evidence)
	}
}
