package main

import (
	"context"
	"os/exec"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgaudit-proxy/pgaudit/internal/pgtest"
	"github.com/pgaudit-proxy/pgaudit/pooler"
	"github.com/pgaudit-proxy/pgaudit/rules"
)

const cacheSchema = `
create table countries(code text primary key, name text not null);
insert into countries values ('de', 'Germany'), ('fr', 'France'), ('it', 'Italy'),
  ('es', 'Spain'), ('pt', 'Portugal'), ('nl', 'Netherlands'), ('be', 'Belgium');
`

// TestCacheCandidateThroughProxy (issue 14, item 16) drives real clients
// through the proxy on a real Postgres: a loop reading the same few rows
// of a rarely written table is a cache candidate, with hit rates; pgbench
// -S (random keys), a read whose table is written between repeats and a
// read whose result differs between repeats (same parameters) are not.
func TestCacheCandidateThroughProxy(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	c := startE2ECluster(t, ctx, pgtest.Options{}, cacheSchema, true)

	// startProxy returns a proxy DSN and a function that stops everything
	// and returns the cache-candidate findings.
	startProxy := func(t *testing.T, sampleEvery int) (string, func() []rules.Finding) {
		e := startE2EProxy(t, ctx, c, auditorOptions{Rules: rules.DefaultConfig()}, 4,
			func(cfg *pooler.Config) { cfg.ResultSampleEvery = sampleEvery })
		return e.DSN, func() []rules.Finding {
			e.stop()
			return e.findings(rules.IDCacheCandidate)
		}
	}
	codes := []string{"de", "fr", "it", "es", "pt"}
	connect := func(t *testing.T, dsn string, mode pgx.QueryExecMode) *pgx.Conn {
		cfg, err := pgx.ParseConfig(dsn)
		if err != nil {
			t.Fatal(err)
		}
		cfg.DefaultQueryExecMode = mode
		conn, err := pgx.ConnectConfig(ctx, cfg)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close(context.Background()) })
		return conn
	}
	readLoop := func(t *testing.T, conn *pgx.Conn, query string, n int, between func(i int)) {
		for i := 0; i < n; i++ {
			rows, err := conn.Query(ctx, query, codes[i%len(codes)])
			if err != nil {
				t.Fatal(err)
			}
			for rows.Next() {
			}
			if err := rows.Err(); err != nil {
				t.Fatal(err)
			}
			if between != nil {
				between(i)
			}
		}
	}

	for _, tc := range []struct {
		name        string
		mode        pgx.QueryExecMode
		sampleEvery int
	}{
		{"extended, default sampling", pgx.QueryExecModeCacheStatement, 0},
		{"simple protocol, every result", pgx.QueryExecModeSimpleProtocol, 1},
	} {
		t.Run("positive/"+tc.name, func(t *testing.T) {
			dsn, stop := startProxy(t, tc.sampleEvery)
			readLoop(t, connect(t, dsn, tc.mode), "select name from countries where code = $1", 600, nil)
			fs := stop()
			if len(fs) != 1 {
				t.Fatalf("want 1 cache-candidate finding, got %+v", fs)
			}
			f := fs[0]
			t.Logf("%s\n%s\n%v", f.Message, f.Suggestion, f.Evidence)
			ev := f.Evidence
			if ev["calls"] != int64(600) || ev["distinct_params"] != int64(5) || ev["invalidating_writes"] != int64(0) {
				t.Errorf("evidence %v", ev)
			}
			if h := ev["hit_rate_60s"].(float64); h < 0.95 {
				t.Errorf("hit_rate_60s %v, want about 595/600", h)
			}
			if n := ev["result_samples"].(int64); n < 2 || ev["same_result_share"] != 1.0 {
				t.Errorf("result samples %v, same %v", n, ev["same_result_share"])
			}
			if tb := ev["tables"].([]string); len(tb) != 1 || tb[0] != "countries" {
				t.Errorf("tables %v", tb)
			}
			if f.Status != "" && f.Status != rules.StatusOpen || f.WindowStart.IsZero() {
				t.Errorf("status %q, window %v..%v", f.Status, f.WindowStart, f.WindowEnd)
			}
		})
	}

	t.Run("negative/pgbench-S", func(t *testing.T) {
		dsn, stop := startProxy(t, 1)
		if out, err := exec.CommandContext(ctx, c.Bin("pgbench"), "-n", "-S", "-c", "4", "-t", "300", "-M", "prepared", dsn).CombinedOutput(); err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
		if fs := stop(); len(fs) != 0 {
			t.Fatalf("false cache-candidate finding: %+v", fs)
		}
	})
	t.Run("negative/written between repeats", func(t *testing.T) {
		dsn, stop := startProxy(t, 1)
		conn := connect(t, dsn, pgx.QueryExecModeCacheStatement)
		readLoop(t, conn, "select name from countries where code = $1", 600, func(i int) {
			if _, err := conn.Exec(ctx, "update countries set name = name where code = $1", codes[i%len(codes)]); err != nil {
				t.Fatal(err)
			}
		})
		if fs := stop(); len(fs) != 0 {
			t.Fatalf("false cache-candidate finding: %+v", fs)
		}
	})
	t.Run("negative/result differs", func(t *testing.T) {
		dsn, stop := startProxy(t, 1)
		readLoop(t, connect(t, dsn, pgx.QueryExecModeCacheStatement),
			"select name, clock_timestamp() from countries where code = $1", 600, nil)
		if fs := stop(); len(fs) != 0 {
			t.Fatalf("false cache-candidate finding: %+v", fs)
		}
	})
}
