package report

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/rs/zerolog"

	"github.com/pgaudit-proxy/pgaudit/analyzer"
	"github.com/pgaudit-proxy/pgaudit/internal/auditlog"
	"github.com/pgaudit-proxy/pgaudit/internal/testutil"
	"github.com/pgaudit-proxy/pgaudit/pooler"
	"github.com/pgaudit-proxy/pgaudit/rules"
)

func TestMain(m *testing.M) { testutil.Main(m) }

// sampleFinding is the finding testutil.CheckDashboardDOM expects to see
// rendered.
var sampleFinding = rules.Finding{
	ID: "missing-index:abc:reviews", Rule: rules.IDMissingIndex, Severity: rules.Warning,
	Fingerprint: "abc", Query: "select * from reviews where book_id = $1",
	Message:    "sequential scan on reviews (300000 rows) filtered by book_id",
	Suggestion: "CREATE INDEX CONCURRENTLY reviews_book_id_idx ON reviews (book_id);",
	Table:      "reviews", Count: 42, Database: "postgres",
	FirstSeen: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC), LastSeen: time.Date(2026, 1, 2, 4, 5, 6, 0, time.UTC),
}

// writeRun runs a proxy (transaction mode, pool of 2) with an audit log at
// path: three rounds of n/3+1 of each probe statement plus one failing
// statement, a pool record after each round, then one finding record with
// count findingCount.
func writeRun(t *testing.T, path, runID string, n int, findingCount int64) {
	t.Helper()
	al, err := auditlog.Open(auditlog.Config{Path: path, RunID: runID, StatsInterval: 150 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	up, err := pgconn.ParseConfig(testutil.Shared(t).DSN("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	settings := pooler.DefaultPoolSettings()
	settings.Size, settings.Mode = 2, pooler.TransactionMode
	cfg := &pooler.Config{
		Listen:    "127.0.0.1:0",
		Databases: map[string]*pooler.Database{"postgres": {Name: "postgres", Upstream: up, Pool: settings}},
		AuthType:  "trust",
	}
	log := zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel)
	pipeline := analyzer.NewPipeline(analyzer.PipelineConfig{Workers: 1, AuditLog: al, Logger: log})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := pipeline.Start(ctx); err != nil {
		t.Fatal(err)
	}
	proxy := pooler.New(cfg, pipeline, log)
	if err := proxy.Listen(); err != nil {
		t.Fatal(err)
	}
	served := make(chan struct{})
	go func() { defer close(served); _ = proxy.Serve(ctx) }()

	c, err := pgx.Connect(ctx, "postgres://postgres@"+proxy.Addr().String()+"/postgres?sslmode=disable")
	if err != nil {
		t.Fatal(err)
	}
	for round := 0; round < 3; round++ {
		before := pipeline.Counters().Processed
		sent := 0
		for i := 0; i < n/3+1; i++ {
			if _, err := c.Exec(ctx, "select $1::int as dashboard_probe, count(*) from generate_series(1, 50)", i); err != nil {
				t.Fatal(err)
			}
			var x int
			if err := c.QueryRow(ctx, "select $1::int + 1 as other_probe", i).Scan(&x); err != nil {
				t.Fatal(err)
			}
			sent += 2
		}
		if _, err := c.Exec(ctx, "select 1/0 as failing_probe"); err == nil {
			t.Fatal("division by zero succeeded")
		}
		sent++
		testutil.Eventually(t, 10*time.Second, "analyzer to process the workload", func() bool {
			return pipeline.Counters().Processed >= before+uint64(sent)
		})
		for _, ps := range proxy.PoolStats() {
			if err := al.WritePool(ps); err != nil {
				t.Fatal(err)
			}
		}
		time.Sleep(120 * time.Millisecond) // deliberate: pool records and stats spread over time, as in a real log
	}
	_ = c.Close(ctx)
	f := sampleFinding
	f.Count = findingCount
	if err := al.WriteFinding(f); err != nil {
		t.Fatal(err)
	}
	_ = proxy.Close()
	<-served
	if err := pipeline.Stop(ctx); err != nil { // writes the final stats record
		t.Fatal(err)
	}
	if err := al.Close(); err != nil {
		t.Fatal(err)
	}
}
