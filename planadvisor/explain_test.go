package planadvisor

import (
	"context"
	"errors"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgaudit-proxy/pgaudit/analyzer"
	"github.com/pgaudit-proxy/pgaudit/internal/event"
	"github.com/pgaudit-proxy/pgaudit/internal/pgtest"
	"github.com/pgaudit-proxy/pgaudit/internal/testutil"
	"github.com/pgaudit-proxy/pgaudit/rules"
)

// The tests below run against a real Postgres started by internal/pgtest:
// one cluster, a database with a 100k-row table shared by the tests that
// only read, and copies of it for the two that create an index or an
// extension.

const hypopgControl = "/usr/share/postgresql/15/extension/hypopg.control"

const explainSetupSQL = `
CREATE TABLE items (
	id bigint PRIMARY KEY,
	category int NOT NULL,
	price numeric NOT NULL,
	name text NOT NULL,
	doc json
);
INSERT INTO items SELECT g, g % 1000, (g % 500)::numeric, 'item ' || g, '{}'
	FROM generate_series(1, 100000) g;
CREATE TABLE victims (id int PRIMARY KEY, v int NOT NULL);
INSERT INTO victims SELECT g, g % 100 FROM generate_series(1, 20000) g;
CREATE TABLE side_effects (n int);
CREATE FUNCTION note_call() RETURNS int VOLATILE LANGUAGE plpgsql AS $$
BEGIN
	INSERT INTO side_effects VALUES (1);
	RETURN 1;
END $$;
`

type explainEnv struct {
	c    *pgtest.Cluster
	hypo bool
}

// Databases of the explain tests: tests that only read share the base;
// the two that create an index or an extension get copies made up front.
const (
	dbShared = "explain_base"
	dbIndex  = "explain_index"
	dbHypo   = "explain_hypo"
)

func startExplainEnv(t *testing.T) *explainEnv {
	t.Helper()
	env := &explainEnv{c: startCluster(t)}
	env.psql(t, "", "CREATE DATABASE explain_base")
	env.psql(t, "explain_base", explainSetupSQL)
	env.psql(t, "explain_base", "VACUUM ANALYZE items, victims")
	_, err := os.Stat(hypopgControl)
	env.hypo = err == nil
	env.psql(t, "", "CREATE DATABASE "+dbIndex+" TEMPLATE explain_base")
	if env.hypo {
		env.psql(t, "", "CREATE DATABASE "+dbHypo+" TEMPLATE explain_base")
		env.psql(t, dbHypo, "CREATE EXTENSION hypopg")
	}
	return env
}

func (env *explainEnv) psql(t *testing.T, db, sql string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, err := env.c.Psql(ctx, db, "-q", "-At", "-c", sql)
	if err != nil {
		t.Fatalf("psql %q: %v\n%s", sql, err, out)
	}
	return strings.TrimSpace(string(out))
}

func (env *explainEnv) explainer(t *testing.T, db string, mod func(*ExplainConfig)) *Explainer {
	t.Helper()
	cfg := ExplainConfig{DSN: env.c.DSN(db), Rate: 1000, Burst: 100}
	if mod != nil {
		mod(&cfg)
	}
	e, err := NewExplainer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Close)
	return e
}

// statsOf records one simple-protocol event per query (the first the
// slowest) and returns the statistics.
func statsOf(db string, queries ...string) *analyzer.Stats {
	fp := analyzer.NewFingerprinter(analyzer.FingerprintConfig{})
	st := analyzer.NewStats(analyzer.StatsConfig{})
	for i, q := range queries {
		ev := &event.Event{Kind: event.KindStatement, Protocol: event.ProtocolSimple, Text: q, Database: db,
			Start: time.Now(), Duration: time.Duration(len(queries)-i) * 10 * time.Millisecond, Rows: 1}
		sh, _ := fp.Lookup(q, ev.Protocol)
		st.Record(ev, sh)
	}
	return st
}

func newTestSampler(t *testing.T, st *analyzer.Stats, e *Explainer) (*Sampler, *[]*rules.Finding) {
	t.Helper()
	var found []*rules.Finding
	s, err := NewSampler(SamplerConfig{
		Stats: st, Explainer: e,
		Emit: func(f *rules.Finding) { found = append(found, f) },
	})
	if err != nil {
		t.Fatal(err)
	}
	return s, &found
}

func findRule(fs []*rules.Finding, rule string) *rules.Finding {
	for _, f := range fs {
		if f.Rule == rule {
			return f
		}
	}
	return nil
}

// connState reports what an explainer connection holds after use: its
// prepared statements and (when HypoPG is installed) hypothetical indexes.
func connState(t *testing.T, e *Explainer, hypo bool) (prepared, hypothetical int) {
	t.Helper()
	ctx := context.Background()
	conn, err := e.pool.acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer e.pool.release(conn, false)
	if err := conn.QueryRow(ctx, "SELECT count(*) FROM pg_prepared_statements").Scan(&prepared); err != nil {
		t.Fatal(err)
	}
	if hypo {
		if err := conn.QueryRow(ctx, "SELECT count(*) FROM hypopg_list_indexes").Scan(&hypothetical); err != nil {
			t.Fatal(err)
		}
	}
	return prepared, hypothetical
}

func TestExplainPostgres(t *testing.T) {
	t.Parallel() // its own cluster
	env := startExplainEnv(t)

	t.Run("SeqScanAndUnvalidatedIndex", func(t *testing.T) {
		db := dbIndex
		e := env.explainer(t, db, nil)
		st := statsOf(db,
			"SELECT id, name FROM items WHERE category = 42",
			"SELECT name FROM items WHERE id = 7",
		)
		s, found := newTestSampler(t, st, e)
		ctx := context.Background()
		if n := s.RunOnce(ctx); n != 2 {
			t.Fatalf("RunOnce explained %d shapes, want 2 (counters %+v, explainer %+v)", n, s.Counters(), e.Counters())
		}
		seq := findRule(*found, rules.IDSeqScan)
		mi := findRule(*found, rules.IDMissingIndex)
		if seq == nil || mi == nil || len(*found) != 2 {
			t.Fatalf("want one seq-scan and one missing-index finding, got %d: %+v", len(*found), *found)
		}
		if seq.Table != "items" || seq.Evidence["estimated_rows_scanned"].(float64) < 99000 ||
			seq.Evidence["filter"] != "(items.category = $1)" || !strings.Contains(seq.Query, "category = $1") {
			t.Errorf("seq-scan finding: %+v", seq)
		}
		if seq.ID != rules.StableID(rules.IDSeqScan, seq.Fingerprint, "items") {
			t.Errorf("seq-scan id %q", seq.ID)
		}
		want := "CREATE INDEX CONCURRENTLY items_category_idx ON public.items (category);"
		if mi.Evidence["validated"] != false || !strings.HasPrefix(mi.Suggestion, want+"\n-- unvalidated") || mi.Severity != rules.Info {
			t.Errorf("missing-index finding: %+v", mi)
		}
		// The table was bulk-loaded on a cluster started seconds ago: that
		// is not a write rate, and no rate is claimed from one reading.
		if mi.Evidence["existing_indexes"] != 1 || mi.Evidence["writes_per_s"] != nil || mi.Evidence["rows_inserted"] == nil {
			t.Errorf("missing-index evidence: %v", mi.Evidence)
		}
		t.Logf("seq-scan: %s", seq.Message)
		t.Logf("missing-index: %s / evidence %v", mi.Message, mi.Evidence)

		// A second round inside explain_interval checks nothing again.
		if n := s.RunOnce(ctx); n != 0 {
			t.Errorf("second round explained %d shapes", n)
		}

		// Create the suggested index for real and check the plan cost
		// falls by at least half.
		before := mi.Evidence["cost_before"].(float64)
		env.psql(t, db, strings.SplitN(mi.Suggestion, "\n", 2)[0])
		p, err := e.Explain(ctx, ExplainRequest{Query: seq.Query})
		if err != nil {
			t.Fatal(err)
		}
		after := p.TotalCost()
		t.Logf("plan cost with the real index: before %.2f, after %.2f (%.1f%% less)", before, after, 100*(before-after)/before)
		if after > before/2 {
			t.Errorf("plan cost fell from %.2f to %.2f only", before, after)
		}
		if sc := p.SeqScans(); len(sc) != 0 {
			t.Errorf("still a seq scan after creating the index: %+v", sc)
		}
		if prep, _ := connState(t, e, false); prep != 0 {
			t.Errorf("%d prepared statements left on the explainer's connection", prep)
		}
	})

	t.Run("CreateExtensionOnlyWithConsent", func(t *testing.T) {
		if !env.hypo {
			t.Skipf("HypoPG is not installed (%s missing)", hypopgControl)
		}
		ctx := context.Background()
		q := ExplainRequest{Query: "SELECT * FROM items WHERE price = $1"}
		// Without consent the explainer never installs anything.
		in, err := env.explainer(t, dbIndex, nil).Inspect(ctx, q, InspectOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if in.HypoPG || env.psql(t, dbIndex, "SELECT count(*) FROM pg_extension WHERE extname = 'hypopg'") != "0" {
			t.Fatal("hypopg used or installed without AllowCreateExtension")
		}
		e := env.explainer(t, dbIndex, func(c *ExplainConfig) { c.AllowCreateExtension = true })
		in, err = e.Inspect(ctx, q, InspectOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if !in.HypoPG || len(in.Scans) != 1 || in.Scans[0].Advice == nil || !in.Scans[0].Advice.Validated {
			t.Fatalf("with AllowCreateExtension: %+v", in)
		}
		adv := in.Scans[0].Advice
		t.Logf("price: %v cost %.2f -> %.2f, tried %+v", adv.Columns, adv.CostBefore, adv.CostAfter, adv.Tried)
	})

	t.Run("HypoPG", func(t *testing.T) {
		if !env.hypo {
			t.Skipf("HypoPG is not installed (%s missing): apt-get install -y postgresql-15-hypopg", hypopgControl)
		}
		db := dbHypo
		e := env.explainer(t, db, nil)
		st := statsOf(db,
			"SELECT id, name FROM items WHERE category = 42 AND price > 10 ORDER BY name",
			"SELECT name FROM items WHERE id = 7",
		)
		s, found := newTestSampler(t, st, e)
		ctx := context.Background()
		s.RunOnce(ctx)
		mi := findRule(*found, rules.IDMissingIndex)
		if mi == nil || findRule(*found, rules.IDSeqScan) == nil {
			t.Fatalf("findings: %+v (explainer %+v)", *found, e.Counters())
		}
		before, after := mi.Evidence["cost_before"].(float64), mi.Evidence["cost_after"].(float64)
		t.Logf("HypoPG: %s\n  suggestion: %s\n  cost before %.2f, hypothetical after %.2f", mi.Message, mi.Suggestion, before, after)
		if mi.Evidence["validated"] != true || mi.Severity != rules.Warning || after > before/2 {
			t.Errorf("missing-index finding: %+v", mi)
		}
		if c := e.Counters(); c.Validations == 0 {
			t.Errorf("no validation explains counted: %+v", c)
		}
		if prep, hypo := connState(t, e, true); prep != 0 || hypo != 0 {
			t.Errorf("explainer connection keeps %d prepared statements and %d hypothetical indexes", prep, hypo)
		}
		env.psql(t, db, strings.SplitN(mi.Suggestion, "\n", 2)[0])
		p, err := e.Explain(ctx, ExplainRequest{Query: mi.Query})
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("HypoPG: real index cost %.2f (hypothetical %.2f, before %.2f)", p.TotalCost(), after, before)
		if p.TotalCost() > before/2 {
			t.Errorf("real index: cost %.2f, before %.2f", p.TotalCost(), before)
		}
	})

	t.Run("HypoPGInReadOnlyTransaction", func(t *testing.T) {
		if !env.hypo {
			t.Skipf("HypoPG is not installed (%s missing)", hypopgControl)
		}
		db := dbHypo
		ctx := context.Background()
		conn, err := pgx.Connect(ctx, env.c.DSN(db))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close(ctx)
		tx, err := conn.BeginTx(ctx, pgx.TxOptions{AccessMode: pgx.ReadOnly})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := tx.Exec(ctx, "SELECT * FROM hypopg_create_index('CREATE INDEX ON items (category)')"); err != nil {
			t.Fatalf("hypopg_create_index in a read-only transaction: %v", err)
		}
		_ = tx.Rollback(ctx)
		var n int
		if err := conn.QueryRow(ctx, "SELECT count(*) FROM hypopg_list_indexes").Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n != 1 {
			t.Errorf("after ROLLBACK %d hypothetical indexes, want 1 (they are not transactional)", n)
		}
	})

	t.Run("IndexedQueryGivesNoFinding", func(t *testing.T) {
		db := dbShared
		e := env.explainer(t, db, nil)
		st := statsOf(db, "SELECT name FROM items WHERE id = 7", "SELECT * FROM items WHERE id IN (1, 2, 3)",
			"SELECT count(*) FROM items")
		s, found := newTestSampler(t, st, e)
		if n := s.RunOnce(context.Background()); n != 3 {
			t.Fatalf("explained %d shapes", n)
		}
		if len(*found) != 0 {
			t.Errorf("findings for indexed or unfiltered queries: %+v", *found)
		}
	})

	t.Run("AdvisorCatalog", func(t *testing.T) {
		e := env.explainer(t, dbShared, nil)
		in, err := e.Inspect(context.Background(),
			ExplainRequest{Query: "SELECT * FROM items WHERE doc IS NULL AND name = $1 AND price > $2 ORDER BY category"}, InspectOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if len(in.Scans) != 1 || in.Scans[0].Table == nil || in.Scans[0].Advice == nil {
			t.Fatalf("scans %+v", in.Scans)
		}
		ti, adv := in.Scans[0].Table, in.Scans[0].Advice
		btree := map[string]bool{}
		for _, c := range ti.Columns {
			btree[c.Name] = c.Btree
		}
		if !btree["id"] || !btree["category"] || !btree["price"] || !btree["name"] || btree["doc"] {
			t.Errorf("btree opclass per column: %v", btree)
		}
		if len(ti.Indexes) != 1 || ti.Indexes[0].Name != "items_pkey" || len(ti.Indexes[0].Keys) != 1 || ti.Indexes[0].Keys[0] != 1 {
			t.Errorf("indexes %+v", ti.Indexes)
		}
		if len(adv.Skipped) == 0 || adv.Skipped[0].Column != "doc" || !strings.Contains(adv.Skipped[0].Reason, "json") {
			t.Errorf("skipped %+v", adv.Skipped)
		}
		if adv.Validated || strings.Join(adv.Columns, ",") != "name,price" {
			t.Errorf("advice %+v", adv)
		}
		if env.psql(t, dbShared, "SELECT count(*) FROM pg_extension WHERE extname = 'hypopg'") != "0" {
			t.Error("hypopg installed without consent")
		}
	})

	t.Run("DMLLeavesRowsInPlace", func(t *testing.T) {
		db := dbShared
		e := env.explainer(t, db, nil)
		ctx := context.Background()
		sum := func() string { return env.psql(t, db, "SELECT count(*), sum(v) FROM victims") }
		was := sum()
		for _, q := range []string{
			"DELETE FROM victims WHERE v = $1",
			"DELETE FROM victims",
			"UPDATE victims SET v = v + 1 WHERE v = $1",
			"INSERT INTO victims SELECT id + 1000000, v FROM victims WHERE v = 3",
		} {
			in, err := e.Inspect(ctx, ExplainRequest{Query: q}, InspectOptions{})
			if err != nil {
				t.Fatalf("%s: %v", q, err)
			}
			if in.Plan.Root.NodeType != "ModifyTable" {
				t.Errorf("%s: root %s", q, in.Plan.Root.NodeType)
			}
		}
		// With example parameters (custom plan) too.
		in, err := e.Inspect(ctx, ExplainRequest{Query: "DELETE FROM victims WHERE v = $1", Params: []string{"7"}}, InspectOptions{})
		if err != nil || in.Mode != ModeParams {
			t.Fatalf("with params: %v %+v", err, in)
		}
		if now := sum(); now != was {
			t.Errorf("rows changed by explained DML: %s, was %s", now, was)
		}
	})

	t.Run("VolatileFunctionNotRun", func(t *testing.T) {
		db := dbShared
		e := env.explainer(t, db, nil)
		ctx := context.Background()
		for _, q := range []string{
			"SELECT note_call() FROM items WHERE category = $1",
			"SELECT * FROM items WHERE category = note_call()",
			"SELECT * FROM items WHERE id = $1 AND note_call() = 1",
			"DELETE FROM victims WHERE v = note_call()",
		} {
			if _, err := e.Inspect(ctx, ExplainRequest{Query: q}, InspectOptions{}); err != nil {
				t.Fatalf("%s: %v", q, err)
			}
		}
		if n := env.psql(t, db, "SELECT count(*) FROM side_effects"); n != "0" {
			t.Errorf("side_effects has %s rows: the function ran", n)
		}
	})

	t.Run("NeverExplained", func(t *testing.T) {
		db := dbShared
		e := env.explainer(t, db, nil)
		ctx := context.Background()
		refused := []string{
			"DROP TABLE victims",
			"TRUNCATE victims",
			"SELECT * FROM items WHERE id = 1; DELETE FROM victims",
			"WITH d AS (DELETE FROM victims RETURNING *) SELECT count(*) FROM d",
			"WITH d AS (DELETE FROM victims RETURNING id) SELECT * FROM items WHERE id IN (SELECT id FROM d)",
			"SELECT * INTO victims_copy FROM victims",
			"SELECT * FROM victims WHERE v = 1 FOR UPDATE",
			"INSERT INTO victims VALUES (-1, -1)",
			"EXPLAIN ANALYZE DELETE FROM victims",
			"SELECT note_call()",
		}
		for _, q := range refused {
			_, err := e.Inspect(ctx, ExplainRequest{Query: q}, InspectOptions{})
			if !errors.Is(err, ErrNotExplainable) {
				t.Errorf("Inspect(%q): %v, want ErrNotExplainable", q, err)
			}
		}
		c := e.Counters()
		if c.Run != 0 || c.Skipped != uint64(len(refused)) {
			t.Errorf("counters %+v: want 0 run, %d skipped", c, len(refused))
		}
		// The sampler refuses them too, before taking a connection.
		s, found := newTestSampler(t, statsOf(db, refused...), e)
		s.RunOnce(ctx)
		if sc := s.Counters(); sc.NotExplainable != uint64(len(refused)) || sc.Checked != 0 || len(*found) != 0 {
			t.Errorf("sampler counters %+v, findings %d", sc, len(*found))
		}
		if got := env.psql(t, db, "SELECT count(*) FROM victims") + "/" + env.psql(t, db, "SELECT count(*) FROM side_effects"); got != "20000/0" {
			t.Errorf("victims/side_effects rows = %s, want 20000/0", got)
		}
		if env.psql(t, db, "SELECT to_regclass('victims_copy') IS NULL") != "t" {
			t.Error("SELECT INTO created a table")
		}
	})

	t.Run("TimeoutRecordedAndSamplerCarriesOn", func(t *testing.T) {
		db := dbShared
		ctx := context.Background()
		locker, err := pgx.Connect(ctx, env.c.DSN(db))
		if err != nil {
			t.Fatal(err)
		}
		defer locker.Close(ctx)
		tx, err := locker.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer tx.Rollback(ctx)
		if _, err := tx.Exec(ctx, "LOCK TABLE victims IN ACCESS EXCLUSIVE MODE"); err != nil {
			t.Fatal(err)
		}

		// lock_timeout (500ms default) fires first.
		e := env.explainer(t, db, nil)
		start := time.Now()
		_, err = e.Inspect(ctx, ExplainRequest{Query: "SELECT * FROM victims WHERE v = $1"}, InspectOptions{})
		if !errors.Is(err, ErrExplainTimeout) || !strings.Contains(err.Error(), "55P03") {
			t.Fatalf("locked table: %v, want a lock_timeout", err)
		}
		t.Logf("lock_timeout after %v: %v", time.Since(start).Round(time.Millisecond), err)

		// statement_timeout fires when it is the shorter one.
		e2 := env.explainer(t, db, func(c *ExplainConfig) {
			c.StatementTimeout = 100 * time.Millisecond
			c.LockTimeout = 10 * time.Second
		})
		_, err = e2.Inspect(ctx, ExplainRequest{Query: "SELECT * FROM victims WHERE v = $1"}, InspectOptions{})
		if !errors.Is(err, ErrExplainTimeout) || !strings.Contains(err.Error(), "57014") {
			t.Fatalf("locked table: %v, want a statement_timeout", err)
		}
		if c := e2.Counters(); c.Timeouts != 1 || c.Errors != 0 {
			t.Errorf("counters %+v", c)
		}

		// The sampler records the timeout and goes on to the next shape.
		st := statsOf(db, "SELECT * FROM victims WHERE v = 5", "SELECT id, name FROM items WHERE category = 42")
		s, found := newTestSampler(t, st, e)
		if n := s.RunOnce(ctx); n != 1 {
			t.Errorf("explained %d shapes, want 1", n)
		}
		sc := s.Counters()
		if sc.Timeouts != 1 || sc.Failed != 1 || sc.Checked != 2 {
			t.Errorf("sampler counters %+v", sc)
		}
		if f := findRule(*found, rules.IDSeqScan); f == nil || f.Table != "items" {
			t.Errorf("no seq-scan finding for items after the timeout: %+v", *found)
		}
		if c := e.Counters(); c.Timeouts != 2 {
			t.Errorf("explainer counters %+v", c)
		}
		// Once the lock is gone the same explainer works again.
		_ = tx.Rollback(ctx)
		if _, err := e.Explain(ctx, ExplainRequest{Query: "SELECT * FROM victims WHERE v = $1"}); err != nil {
			t.Errorf("after the lock: %v", err)
		}
	})

	t.Run("ParamsModesAndRun", func(t *testing.T) {
		db := dbShared
		e := env.explainer(t, db, nil)
		ctx := context.Background()
		q := "SELECT * FROM items WHERE category = $1 AND price < $2"
		gen, err := e.Inspect(ctx, ExplainRequest{Query: q}, InspectOptions{NoAdvice: true})
		if err != nil {
			t.Fatal(err)
		}
		wantMode := ModeGenericPrepared
		if gen.ServerVersion >= 16 {
			wantMode = ModeGeneric
		}
		if gen.Mode != wantMode || len(gen.Scans) != 1 || !strings.Contains(gen.Scans[0].Filter, "$1") {
			t.Errorf("generic: mode %s scans %+v", gen.Mode, gen.Scans)
		}
		cus, err := e.Inspect(ctx, ExplainRequest{Query: q, Params: []string{"42", "100.5"}}, InspectOptions{NoAdvice: true})
		if err != nil {
			t.Fatal(err)
		}
		// The filter uses the statement's own placeholders, never "?"
		// (issue 14, item 3) nor the values.
		if cus.Mode != ModeParams || len(cus.Scans) != 1 || cus.Scans[0].Filter != gen.Scans[0].Filter ||
			strings.Contains(cus.Scans[0].Filter, "42") || strings.Contains(cus.Scans[0].Filter, "?") {
			t.Errorf("params: mode %s scans %+v", cus.Mode, cus.Scans)
		}
		// A wrong number of example values falls back to a generic plan.
		if in, err := e.Inspect(ctx, ExplainRequest{Query: q, Params: []string{"1"}}, InspectOptions{NoAdvice: true}); err != nil || in.Mode != wantMode {
			t.Errorf("short params: %v %+v", err, in)
		}
		// A bad example value fails the explain (and leaves no state).
		if _, err := e.Inspect(ctx, ExplainRequest{Query: q, Params: []string{"not a number", "1"}}, InspectOptions{NoAdvice: true}); err == nil ||
			strings.Contains(err.Error(), "not a number") || !strings.Contains(err.Error(), "22P02") {
			t.Errorf("bad parameter value: %v", err)
		}
		if prep, _ := connState(t, e, false); prep != 0 {
			t.Errorf("%d prepared statements left", prep)
		}

		// Observe keeps example parameters in memory; Run uses them.
		st := analyzer.NewStats(analyzer.StatsConfig{})
		fp := analyzer.NewFingerprinter(analyzer.FingerprintConfig{})
		var mu sync.Mutex
		var found []*rules.Finding
		s, err := NewSampler(SamplerConfig{Stats: st, Explainer: e, Interval: 20 * time.Millisecond,
			Emit: func(f *rules.Finding) { mu.Lock(); found = append(found, f); mu.Unlock() }})
		if err != nil {
			t.Fatal(err)
		}
		ev := &event.Event{Kind: event.KindStatement, Protocol: event.ProtocolExtended, Text: "SELECT * FROM items WHERE category = $1",
			Params: []string{"42"}, NumParams: 1, Database: db, Duration: time.Millisecond}
		sh, ann := fp.Lookup(ev.Text, ev.Protocol)
		st.Record(ev, sh)
		s.Observe(&analyzer.Analyzed{Event: ev, Shape: sh, Annotations: ann})
		rctx, cancel := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() { done <- s.Run(rctx) }()
		testutil.Eventually(t, 10*time.Second, "two sampler rounds", func() bool { return s.Counters().Rounds >= 2 })
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
		mu.Lock()
		defer mu.Unlock()
		seq := findRule(found, rules.IDSeqScan)
		if seq == nil || seq.Evidence["generic_plan"] != false || seq.Database != db ||
			strings.Contains(seq.Message+seq.Evidence["filter"].(string)+seq.Evidence["plan_excerpt"].(string), "42") {
			t.Errorf("Run findings: %+v", found)
		}
		if c := s.Counters(); c.Checked != 1 || c.Rounds < 2 {
			t.Errorf("sampler counters %+v", c)
		}
	})
}

func TestExplainerConfig(t *testing.T) {
	if _, err := NewExplainer(ExplainConfig{}); err == nil {
		t.Error("no DSN accepted")
	}
	e, err := NewExplainer(ExplainConfig{DSN: "postgres://u@127.0.0.1:1/db?application_name=mine"})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	rp := e.pool.cfg.RuntimeParams
	if rp["application_name"] != "mine" || rp["default_transaction_read_only"] != "on" {
		t.Errorf("runtime params %v", rp)
	}
	if e.cfg.MaxConns != 2 || e.cfg.StatementTimeout != 2*time.Second || e.cfg.LockTimeout != 500*time.Millisecond || e.stmtTO != "2000" || e.lockTO != "500" {
		t.Errorf("defaults %+v", e.cfg)
	}
	// A connection failure is an error, counted.
	_, err = e.Inspect(context.Background(), ExplainRequest{Query: "SELECT * FROM t WHERE id = $1"}, InspectOptions{})
	if err == nil || e.Counters().Errors != 1 {
		t.Errorf("unreachable server: %v, counters %+v", err, e.Counters())
	}
	if _, err := NewSampler(SamplerConfig{}); err == nil {
		t.Error("empty sampler config accepted")
	}
}

func TestRateLimiter(t *testing.T) {
	t.Parallel()
	l := newRateLimiter(50, 1)
	ctx := context.Background()
	start := time.Now()
	for range 4 {
		if err := l.wait(ctx); err != nil {
			t.Fatal(err)
		}
	}
	// 1 immediate + 3 at 50/s: at least ~60ms.
	if d := time.Since(start); d < 50*time.Millisecond {
		t.Errorf("4 waits at 50/s took %v", d)
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	slow := newRateLimiter(0.001, 1)
	_ = slow.wait(ctx)
	if err := slow.wait(cctx); err == nil {
		t.Error("wait on a cancelled context succeeded")
	}
}

// TestMeasureWrites: the write rate is the difference between two readings
// of a table's counters at least minWriteRateWindow apart; a first reading,
// a reading too soon after it and a statistics reset give none.
func TestMeasureWrites(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	s := &Sampler{now: func() time.Time { return now }}
	read := func(ins, upd, del int64) *TableInfo {
		ti := &TableInfo{OID: 42, StatsKnown: true, Inserted: ins, Updated: upd, Deleted: del}
		s.measureWrites("db", &Inspection{Scans: []ScanReport{{Table: ti}}})
		return ti
	}
	steps := []struct {
		advance       time.Duration
		ins, upd, del int64
		window        float64
		written       int64
	}{
		{0, 300000, 0, 0, 0, 0},                     // first reading: the bulk load is no rate
		{5 * time.Second, 300050, 0, 0, 0, 0},       // too soon after it
		{15 * time.Second, 300100, 50, 50, 20, 200}, // 20 s after the first reading
		{10 * time.Minute, 301000, 50, 50, 620, 1100},
		{time.Second, 302000, 50, 50, 0, 0}, // the reading was renewed 1 s ago
		{20 * time.Second, 10, 0, 0, 0, 0},  // statistics reset
		{20 * time.Second, 410, 0, 0, 20, 400},
	}
	for i, st := range steps {
		now = now.Add(st.advance)
		ti := read(st.ins, st.upd, st.del)
		if ti.WriteRateWindow != st.window || ti.WritesInWindow != st.written {
			t.Errorf("step %d: window %v s, %d written; want %v s, %d", i, ti.WriteRateWindow, ti.WritesInWindow, st.window, st.written)
		}
	}
	// Another database's table of the same OID has readings of its own.
	other := &TableInfo{OID: 42, StatsKnown: true, Inserted: 5}
	s.measureWrites("other", &Inspection{Scans: []ScanReport{{Table: other}}})
	if other.WriteRateWindow != 0 {
		t.Errorf("reading shared across databases: %+v", other)
	}
}
