package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/rs/zerolog"

	"github.com/pgaudit-proxy/pgaudit/internal/pgtest"
	"github.com/pgaudit-proxy/pgaudit/pooler"
	"github.com/pgaudit-proxy/pgaudit/rules"
)

// slowLogin forwards TCP connections to addr after a delay, like a server
// whose login (network round trips, SCRAM, a busy postmaster) is slow. It
// returns its address and a stop function.
func slowLogin(t *testing.T, addr string, delay time.Duration) (string, func()) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				time.Sleep(delay) // deliberate: a slow network path to the server
				u, err := net.Dial("tcp", addr)
				if err != nil {
					return
				}
				defer u.Close()
				done := make(chan struct{})
				go func() { _, _ = io.Copy(u, c); u.Close(); close(done) }()
				_, _ = io.Copy(c, u)
				c.Close()
				<-done
			}()
		}
	}()
	return ln.Addr().String(), func() { ln.Close(); wg.Wait() }
}

// TestPoolSaturationThroughProxy (issue 14, item 1): one client doing a
// few queries on a fresh pool of 20 behind a server with a slow login is
// not a saturated pool (connect time is not queueing); 20 clients running
// pg_sleep on a pool of 2 are.
func TestPoolSaturationThroughProxy(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	c, err := pgtest.Start(ctx, pgtest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Stop()
	up, err := pgconn.ParseConfig(c.DSN(""))
	if err != nil {
		t.Fatal(err)
	}
	run := func(t *testing.T, mode pooler.PoolMode, size int, login time.Duration, work func(dsn string)) (pooler.PoolStats, []rules.Finding) {
		t.Helper()
		cfg := up.Copy()
		if login > 0 {
			addr, stop := slowLogin(t, net.JoinHostPort(up.Host, strconv.Itoa(int(up.Port))), login)
			defer stop()
			host, port, _ := net.SplitHostPort(addr)
			p, _ := strconv.Atoi(port)
			cfg.Host, cfg.Port = host, uint16(p)
			cfg.Fallbacks = nil
		}
		log := zerolog.Nop()
		aud, err := startAuditor(ctx, auditorOptions{Rules: rules.DefaultConfig(), Log: log})
		if err != nil {
			t.Fatal(err)
		}
		st := pooler.DefaultPoolSettings()
		st.Mode = mode
		st.Size = size
		p := pooler.New(&pooler.Config{Listen: "127.0.0.1:0", AuthType: "trust",
			Databases: map[string]*pooler.Database{"postgres": {Name: "postgres", Upstream: cfg, Pool: st}}}, aud.pipeline, log)
		if err := p.Listen(); err != nil {
			t.Fatal(err)
		}
		done := make(chan struct{})
		go func() { defer close(done); _ = p.Serve(ctx) }()
		work(fmt.Sprintf("postgres://postgres@%s/postgres?sslmode=disable", p.Addr()))
		stats := p.PoolStats()
		aud.observePools(stats)
		_ = p.Close()
		<-done
		aud.stop(log)
		if len(stats) != 1 {
			t.Fatalf("pools: %+v", stats)
		}
		return stats[0], aud.engine.Findings()
	}
	saturation := func(fs []rules.Finding) *rules.Finding {
		for i := range fs {
			if fs[i].Rule == rules.IDPoolSaturation {
				return &fs[i]
			}
		}
		return nil
	}

	t.Run("one-client-idle-pool", func(t *testing.T) {
		for _, mode := range []pooler.PoolMode{pooler.SessionMode, pooler.TransactionMode} {
			ps, fs := run(t, mode, 20, 300*time.Millisecond, func(dsn string) {
				// A new user: connect, a few statements, disconnect, twice.
				for range 2 {
					conn, err := pgx.Connect(ctx, dsn)
					if err != nil {
						t.Fatal(err)
					}
					for i := range 5 {
						if _, err := conn.Exec(ctx, "select $1::int", i); err != nil {
							t.Fatal(err)
						}
					}
					conn.Close(ctx)
				}
			})
			t.Logf("%s: acquires %d waits %d p99 %s max %s; connects %d p99 %s max %s; utilization %.3f",
				mode, ps.RecentAcquires, ps.RecentWaits, ps.RecentWaitP99, ps.RecentMaxWait, ps.Connects, ps.ConnectP99, ps.ConnectMax, ps.Utilization)
			if f := saturation(fs); f != nil {
				t.Fatalf("%s: false alarm on an idle pool: %s %v", mode, f.Message, f.Evidence)
			}
			if ps.Connects < 1 || ps.ConnectMax < 300*time.Millisecond {
				t.Errorf("%s: connect time not measured: %d connects, max %s", mode, ps.Connects, ps.ConnectMax)
			}
			if ps.RecentWaits != 0 || ps.RecentWaitP99 > ps.RecentMaxWait || ps.WaitP99 > ps.MaxWait {
				t.Errorf("%s: queue waits %d p99 %s max %s (lifetime p99 %s max %s)", mode, ps.RecentWaits, ps.RecentWaitP99, ps.RecentMaxWait, ps.WaitP99, ps.MaxWait)
			}
		}
	})

	t.Run("twenty-clients-pool-of-two", func(t *testing.T) {
		ps, fs := run(t, pooler.TransactionMode, 2, 0, func(dsn string) {
			var wg sync.WaitGroup
			for range 20 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					conn, err := pgx.Connect(ctx, dsn)
					if err != nil {
						t.Error(err)
						return
					}
					defer conn.Close(ctx)
					for range 4 {
						if _, err := conn.Exec(ctx, "select pg_sleep(0.05)"); err != nil {
							t.Error(err)
							return
						}
					}
				}()
			}
			wg.Wait()
		})
		f := saturation(fs)
		if f == nil {
			t.Fatalf("saturated pool not found: %+v", ps)
		}
		t.Logf("%s", f.Message)
		if f.Evidence["reason"] != "utilization,p99_wait" {
			t.Errorf("reason %v, want utilization,p99_wait: %v", f.Evidence["reason"], f.Evidence)
		}
		if w := f.Evidence["waits"].(int64); w < 20 {
			t.Errorf("waits %d", w)
		}
		if p99, mx := f.Evidence["p99_wait_ms"].(float64), f.Evidence["max_wait_ms"].(float64); p99 > mx || p99 < 50 {
			t.Errorf("p99 %v max %v", p99, mx)
		}
	})
}

// TestNoSaturationPgbench20on20 (issue 14, acceptance): pgbench -S, -N and
// a sysbench-like OLTP read/write script with 20 clients on a
// transaction-mode pool of 20 give no pool-saturation and no N+1 finding.
func TestNoSaturationPgbench20on20(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	c := startE2ECluster(t, ctx, pgtest.Options{Conf: []string{"max_connections = 100"}}, "", true)
	// oltp is sysbench's oltp_read_write transaction on pgbench's tables:
	// ten point selects, four range selects (plain, sum, ordered,
	// distinct), two updates, a delete and an insert.
	oltp := filepath.Join(t.TempDir(), "oltp.sql")
	var script strings.Builder
	script.WriteString("\\set r random(1, 100000 * :scale - 100)\n\\set u random(1, 100000 * :scale)\nBEGIN;\n")
	for i := 0; i < 10; i++ {
		fmt.Fprintf(&script, "\\set a%d random(1, 100000 * :scale)\nSELECT abalance FROM pgbench_accounts WHERE aid = :a%d;\n", i, i)
	}
	script.WriteString(`SELECT filler FROM pgbench_accounts WHERE aid BETWEEN :r AND :r + 99;
SELECT sum(abalance) FROM pgbench_accounts WHERE aid BETWEEN :r AND :r + 99;
SELECT filler FROM pgbench_accounts WHERE aid BETWEEN :r AND :r + 99 ORDER BY filler;
SELECT DISTINCT filler FROM pgbench_accounts WHERE aid BETWEEN :r AND :r + 99 ORDER BY filler;
UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid = :a0;
UPDATE pgbench_accounts SET filler = md5(:u::text) WHERE aid = :u;
DELETE FROM pgbench_history WHERE aid = :u;
INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (1, 1, :u, 1, now());
END;
`)
	if err := os.WriteFile(oltp, []byte(script.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, mode := range []string{"-S", "-N", "oltp"} {
		t.Run(mode, func(t *testing.T) {
			e := startE2EProxy(t, ctx, c, auditorOptions{Rules: rules.DefaultConfig()}, 20, nil)
			dsn := e.DSN
			script := []string{mode}
			if mode == "oltp" {
				script = []string{"-f", oltp}
			}
			args := append(append([]string{"-n"}, script...), "-c", "20", "-j", "2", "-T", "4", "-M", "extended", dsn)
			out, err := exec.CommandContext(ctx, c.Bin("pgbench"), args...).CombinedOutput()
			if err != nil {
				t.Fatalf("pgbench: %v\n%s", err, out)
			}
			stats := e.proxy.PoolStats()
			e.aud.observePools(stats)
			e.stop()
			for _, ps := range stats {
				t.Logf("%s: utilization %.2f, %d of %d acquisitions queued (p99 %s), connects %d (p99 %s)", mode,
					ps.Utilization, ps.RecentWaits, ps.RecentAcquires, ps.RecentWaitP99, ps.Connects, ps.ConnectP99)
			}
			for _, f := range e.findings("") {
				if f.Rule == rules.IDPoolSaturation || f.Rule == rules.IDNPlusOne {
					t.Errorf("%s: %s", f.Rule, f.Message)
				}
			}
		})
	}
}
