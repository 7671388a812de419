package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/rs/zerolog"

	"github.com/pgaudit-proxy/pgaudit/internal/pgtest"
	"github.com/pgaudit-proxy/pgaudit/internal/testutil"
	"github.com/pgaudit-proxy/pgaudit/pooler"
	"github.com/pgaudit-proxy/pgaudit/rules"
)

// startE2ECluster starts a throwaway cluster for an end-to-end test, runs
// schema in it (when not empty) and, with pgbenchInit, pgbench -i -s 1. The
// cluster stops when the test ends.
func startE2ECluster(t *testing.T, ctx context.Context, opts pgtest.Options, schema string, pgbenchInit bool) *pgtest.Cluster {
	t.Helper()
	c, err := pgtest.Start(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Stop)
	if schema != "" {
		if out, err := c.Psql(ctx, "", "-q", "-c", schema); err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
	}
	if pgbenchInit {
		if out, err := exec.CommandContext(ctx, c.Bin("pgbench"), "-i", "-q", "-s", "1", c.DSN("")).CombinedOutput(); err != nil {
			t.Fatalf("pgbench -i: %v\n%s", err, out)
		}
	}
	return c
}

// e2eProxy is an auditor and a transaction-mode proxy in front of a test
// cluster's postgres database, accepting clients with trust.
type e2eProxy struct {
	aud   *auditor
	proxy *pooler.Proxy
	// DSN is the proxy's address for user and database postgres.
	DSN  string
	log  zerolog.Logger
	done chan struct{}
}

// startE2EProxy starts an auditor with opts (its logger set to Nop) and a transaction pool of size in front of c; mutate, when
// not nil, adjusts the proxy config before it starts. Call stop once.
func startE2EProxy(t *testing.T, ctx context.Context, c *pgtest.Cluster, opts auditorOptions, size int, mutate func(*pooler.Config)) *e2eProxy {
	t.Helper()
	opts.Log = zerolog.Nop()
	aud, err := startAuditor(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	up, err := pgconn.ParseConfig(c.DSN(""))
	if err != nil {
		t.Fatal(err)
	}
	st := pooler.DefaultPoolSettings()
	st.Mode = pooler.TransactionMode
	if size > 0 {
		st.Size = size
	}
	cfg := &pooler.Config{Listen: "127.0.0.1:0", AuthType: "trust",
		Databases: map[string]*pooler.Database{"postgres": {Name: "postgres", Upstream: up, Pool: st}}}
	if mutate != nil {
		mutate(cfg)
	}
	p := pooler.New(cfg, aud.pipeline, opts.Log)
	if err := p.Listen(); err != nil {
		t.Fatal(err)
	}
	e := &e2eProxy{aud: aud, proxy: p, log: opts.Log, done: make(chan struct{}),
		DSN: fmt.Sprintf("postgres://postgres@%s/postgres?sslmode=disable", p.Addr())}
	go func() { defer close(e.done); _ = p.Serve(ctx) }()
	return e
}

// stop closes the proxy and stops the auditor (judging what is still
// open), after which its findings are final.
func (e *e2eProxy) stop() {
	_ = e.proxy.Close()
	<-e.done
	e.aud.stop(e.log)
}

// findings returns the auditor's findings of rule (all when rule is "").
func (e *e2eProxy) findings(rule string) []rules.Finding {
	var out []rules.Finding
	for _, f := range e.aud.engine.Findings() {
		if rule == "" || f.Rule == rule {
			out = append(out, f)
		}
	}
	return out
}

// waitForLog waits until the file at path (a Postgres log the logging
// collector writes) contains text.
func waitForLog(t *testing.T, path, text string) {
	t.Helper()
	testutil.Eventually(t, 10*time.Second, path+" to contain "+strconv.Quote(text), func() bool {
		b, err := os.ReadFile(path)
		return err == nil && bytes.Contains(b, []byte(text))
	})
}
