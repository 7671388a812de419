package pooler

import (
	"context"
	"fmt"
	"os/exec"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

var pgbenchInit sync.Once

func initPgbench(t *testing.T) {
	pgbenchInit.Do(func() {
		out, err := exec.Command(cluster.Bin("pgbench"), "-i", "-q", "-s", "1", cluster.DSN("postgres")).CombinedOutput()
		if err != nil {
			t.Fatalf("pgbench -i: %v\n%s", err, out)
		}
	})
}

var failedRe = regexp.MustCompile(`number of failed transactions: (\d+)`)

// TestPgbenchThroughProxy runs pgbench in each protocol through session and
// transaction pools smaller than the client count, and requires zero failed
// transactions.
func TestPgbenchThroughProxy(t *testing.T) {
	initPgbench(t)
	for _, mode := range []PoolMode{SessionMode, TransactionMode} {
		for _, proto := range []string{"simple", "extended", "prepared"} {
			t.Run(string(mode)+"/"+proto, func(t *testing.T) {
				// The scenario: 100 clients onto a transaction pool
				// of 10 (session mode needs a server per client).
				clients, pool := "100", 10
				if mode == SessionMode {
					pool = 100
				}
				p := testProxy(t, withMode(mode, pool))
				ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
				defer cancel()
				out, err := exec.CommandContext(ctx, cluster.Bin("pgbench"), "-n", "-c", clients, "-j", "2", "-t", "20", "-M", proto,
					proxyDSN(p, "", "")).CombinedOutput()
				if err != nil {
					t.Fatalf("pgbench: %v\n%s", err, out)
				}
				m := failedRe.FindSubmatch(out)
				if m == nil || string(m[1]) != "0" {
					t.Fatalf("pgbench reported failures:\n%s", out)
				}
				if !strings.Contains(string(out), "number of transactions actually processed: 2000/2000") {
					t.Fatalf("pgbench did not process all transactions:\n%s", out)
				}
			})
		}
	}
}

// TestPgxExecModesTransactionPool runs pgx in every QueryExecMode with
// several clients interleaving on two server connections.
func TestPgxExecModesTransactionPool(t *testing.T) {
	p := testProxy(t, withMode(TransactionMode, 2))
	modes := []pgx.QueryExecMode{
		pgx.QueryExecModeCacheStatement, pgx.QueryExecModeCacheDescribe, pgx.QueryExecModeDescribeExec,
		pgx.QueryExecModeExec, pgx.QueryExecModeSimpleProtocol,
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for _, mode := range modes {
		t.Run(mode.String(), func(t *testing.T) {
			var wg sync.WaitGroup
			errs := make(chan error, 8)
			for c := 0; c < 6; c++ {
				wg.Add(1)
				go func(c int) {
					defer wg.Done()
					cfg, err := pgx.ParseConfig(proxyDSN(p, "", ""))
					if err != nil {
						errs <- err
						return
					}
					cfg.DefaultQueryExecMode = mode
					conn, err := pgx.ConnectConfig(ctx, cfg)
					if err != nil {
						errs <- err
						return
					}
					defer conn.Close(ctx)
					for i := 0; i < 30; i++ {
						var got int
						var s string
						if err := conn.QueryRow(ctx, "select $1::int + 1, $2::text", i, fmt.Sprint("c", c)).Scan(&got, &s); err != nil {
							errs <- fmt.Errorf("client %d iter %d: %w", c, i, err)
							return
						}
						if got != i+1 || s != fmt.Sprint("c", c) {
							errs <- fmt.Errorf("client %d got %d %q", c, got, s)
							return
						}
						// A transaction spanning several round trips.
						tx, err := conn.Begin(ctx)
						if err != nil {
							errs <- err
							return
						}
						var n int
						if err := tx.QueryRow(ctx, "select count(*) from generate_series(1, $1::int)", i+1).Scan(&n); err != nil || n != i+1 {
							errs <- fmt.Errorf("in tx: %v (n=%d)", err, n)
							_ = tx.Rollback(ctx)
							return
						}
						if err := tx.Commit(ctx); err != nil {
							errs <- err
							return
						}
					}
				}(c)
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				t.Error(err)
			}
		})
	}
}
