package main

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgaudit-proxy/pgaudit/internal/pgtest"
	"github.com/pgaudit-proxy/pgaudit/internal/testutil"
	"github.com/pgaudit-proxy/pgaudit/pooler"
	"github.com/pgaudit-proxy/pgaudit/rules"
)

// TestExplainBinaryParamsThroughProxy (issue 14, item 7): pgx sends integer
// parameters in binary format (as GORM does through pgx); the EXPLAIN
// sampler decodes them by type OID and explains the shape with those
// example values instead of failing with 22021, so the seq scan is found.
func TestExplainBinaryParamsThroughProxy(t *testing.T) {
	t.Parallel() // its own cluster, proxy and log files
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	c := startE2ECluster(t, ctx, pgtest.Options{}, lintSchema, false)
	e := startE2EProxy(t, ctx, c, auditorOptions{Rules: rules.DefaultConfig(), Explain: postgresExplains(c), SamplerInterval: time.Hour}, 2,
		func(cfg *pooler.Config) { cfg.CaptureParams = true })
	aud := e.aud
	conn, err := pgx.Connect(ctx, e.DSN)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		var n int64
		// int32 and int64 arguments, encoded in binary format by pgx.
		if err := conn.QueryRow(ctx, "select count(*) from lint_events where kind = $1 and id > $2", int32(i), int64(-1)).Scan(&n); err != nil {
			t.Fatal(err)
		}
	}
	conn.Close(ctx)
	testutil.Within(10*time.Second, func() bool { return aud.pipeline.Counters().Processed >= 5 }) // the findings below tell
	aud.explainNow(ctx)
	sc := aud.sampler.Counters()
	e.stop()
	var seq *rules.Finding
	fs := aud.engine.Findings()
	for i := range fs {
		if fs[i].Rule == rules.IDSeqScan {
			seq = &fs[i]
		}
	}
	if sc.Failed != 0 || seq == nil {
		t.Fatalf("sampler %+v, findings %+v", sc, fs)
	}
	if seq.Evidence["generic_plan"] != false || seq.Evidence["filter"] != "((lint_events.id > $2) AND (lint_events.kind = $1))" /* as lint prints it from a generic plan */ {
		t.Errorf("seq-scan evidence %v", seq.Evidence)
	}
}

// TestExplainCadenceThroughProxy (issue 14, item 8): with a sampler tick of
// an hour, a new shape that cost enough is explained within seconds, and a
// shape never explained during a short run is explained at shutdown.
func TestExplainCadenceThroughProxy(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	c := startE2ECluster(t, ctx, pgtest.Options{}, lintSchema, false)
	start := func(t *testing.T, trigger time.Duration) (*auditor, string, func()) {
		e := startE2EProxy(t, ctx, c, auditorOptions{Rules: rules.DefaultConfig(), Explain: postgresExplains(c),
			SamplerInterval: time.Hour, ExplainTriggerCost: trigger}, 0, func(cfg *pooler.Config) { cfg.CaptureParams = true })
		return e.aud, e.DSN, e.stop
	}
	work := func(t *testing.T, dsn string) {
		conn, err := pgx.Connect(ctx, dsn)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close(ctx)
		for i := range 20 {
			var n int64
			if err := conn.QueryRow(ctx, "select count(*) from lint_events where kind = $1", int32(i)).Scan(&n); err != nil {
				t.Fatal(err)
			}
		}
	}
	hasSeqScan := func(aud *auditor) bool {
		for _, f := range aud.engine.Findings() {
			if f.Rule == rules.IDSeqScan {
				return true
			}
		}
		return false
	}
	t.Run("soon-after-cost", func(t *testing.T) {
		aud, dsn, stop := start(t, 0)
		defer stop()
		began := time.Now()
		work(t, dsn)
		if !testutil.Within(15*time.Second, func() bool { return hasSeqScan(aud) }) {
			t.Fatalf("no seq-scan finding 15 s after the shape cost enough: %+v", aud.sampler.Counters())
		}
		t.Logf("seq-scan found %s after the workload started", time.Since(began).Round(10*time.Millisecond))
	})
	t.Run("at-shutdown", func(t *testing.T) {
		aud, dsn, stop := start(t, -1) // no triggered rounds
		work(t, dsn)
		if hasSeqScan(aud) {
			t.Fatal("explained before shutdown")
		}
		stop()
		if !hasSeqScan(aud) {
			t.Fatalf("pending shape not explained at shutdown: %+v", aud.sampler.Counters())
		}
	})
}

// postgresExplains plans the statements of clients logged in as postgres
// (the tests' clients) on c as postgres, and nobody else's.
func postgresExplains(c *pgtest.Cluster) func(database, user string) (explainTarget, bool) {
	return func(_, user string) (explainTarget, bool) {
		return explainTarget{Key: "test", DSN: c.DSN(""), Role: "postgres"}, user == "postgres"
	}
}
