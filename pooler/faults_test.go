package pooler

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/rs/zerolog"

	"github.com/pgaudit-proxy/pgaudit/internal/pgtest"
	"github.com/pgaudit-proxy/pgaudit/internal/testutil"
)

// TestIntegrityUnderFaults moves money between accounts from 100 clients
// through a transaction pool of 10 while clients are killed mid-transaction,
// server backends are terminated, and Postgres restarts once. Afterwards the
// total is unchanged, every transfer a client saw commit is present, none
// that failed before COMMIT is, and the proxy serves new clients.
func TestIntegrityUnderFaults(t *testing.T) {
	if testing.Short() {
		t.Skip("fault test skipped in -short mode")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	c, err := pgtest.Start(ctx, pgtest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Stop()
	const accounts, initial = 50, int64(1000)
	if out, err := c.Psql(ctx, "", "-c", fmt.Sprintf(`create table accounts(id int primary key, balance bigint not null);
		insert into accounts select g, %d from generate_series(1, %d) g;
		create table transfers(id bigint primary key, src int, dst int, amount bigint)`, initial, accounts)); err != nil {
		t.Fatalf("schema: %v\n%s", err, out)
	}
	up, err := pgconn.ParseConfig(c.DSN(""))
	if err != nil {
		t.Fatal(err)
	}
	settings := DefaultPoolSettings()
	settings.Mode = TransactionMode
	settings.Size = 10
	settings.QueryWaitTimeout = 5 * time.Second
	settings.ServerLoginRetry = 100 * time.Millisecond
	db := &Database{Name: "postgres", Upstream: up, Pool: settings}
	p := New(&Config{Listen: "127.0.0.1:0", Databases: map[string]*Database{"postgres": db}, AuthType: "trust"}, nil,
		zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.ErrorLevel))
	if err := p.Listen(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { defer close(done); _ = p.Serve(ctx) }()
	defer func() { _ = p.Close(); <-done }()
	dsn := fmt.Sprintf("postgres://postgres@%s/postgres?sslmode=disable&application_name=bank", p.Addr())

	var (
		nextID     atomic.Int64
		mu         sync.Mutex
		committed  = map[int64]bool{}
		notApplied = map[int64]bool{}
		live       = map[int]*pgx.Conn{}
		stop       = make(chan struct{})
		wg         sync.WaitGroup
		commits    atomic.Int64
	)
	transfer := func(conn *pgx.Conn) error {
		id := nextID.Add(1)
		a, b := rand.IntN(accounts)+1, rand.IntN(accounts)+1
		for a == b {
			b = rand.IntN(accounts) + 1
		}
		lo, hi, amt := min(a, b), max(a, b), int64(rand.IntN(50)+1)
		if a != lo {
			amt = -amt
		}
		failBeforeCommit := func(err error) error {
			mu.Lock()
			notApplied[id] = true
			mu.Unlock()
			return err
		}
		tx, err := conn.Begin(ctx)
		if err != nil {
			return failBeforeCommit(err)
		}
		// Updates in id order: no deadlocks between transfers.
		if _, err := tx.Exec(ctx, "update accounts set balance = balance - $1 where id = $2", amt, lo); err != nil {
			_ = tx.Rollback(ctx)
			return failBeforeCommit(err)
		}
		if _, err := tx.Exec(ctx, "update accounts set balance = balance + $1 where id = $2", amt, hi); err != nil {
			_ = tx.Rollback(ctx)
			return failBeforeCommit(err)
		}
		if _, err := tx.Exec(ctx, "insert into transfers values ($1, $2, $3, $4)", id, lo, hi, amt); err != nil {
			_ = tx.Rollback(ctx)
			return failBeforeCommit(err)
		}
		if err := tx.Commit(ctx); err != nil {
			return err // ambiguous: the commit may or may not have happened
		}
		mu.Lock()
		committed[id] = true
		mu.Unlock()
		commits.Add(1)
		return nil
	}
	for i := 0; i < 100; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				conn, err := pgx.Connect(ctx, dsn)
				if err != nil {
					time.Sleep(50 * time.Millisecond) // deliberate: back off while the chaos runs
					continue
				}
				mu.Lock()
				live[i] = conn
				mu.Unlock()
				for {
					select {
					case <-stop:
						conn.Close(context.Background())
						return
					default:
					}
					if err := transfer(conn); err != nil {
						if conn.IsClosed() || !isRetryable(err) {
							break
						}
					}
				}
				mu.Lock()
				delete(live, i)
				mu.Unlock()
				conn.Close(context.Background())
			}
		}(i)
	}

	direct, err := pgx.Connect(ctx, c.DSN(""))
	if err != nil {
		t.Fatal(err)
	}
	chaos := func(d time.Duration) {
		end := time.Now().Add(d)
		for time.Now().Before(end) {
			time.Sleep(100 * time.Millisecond) // deliberate: the pace of the chaos
			// Kill a client mid-transaction by dropping its socket.
			mu.Lock()
			for _, conn := range live {
				_ = conn.PgConn().Conn().Close()
				break
			}
			mu.Unlock()
			// Terminate a server backend under the proxy.
			_, _ = direct.Exec(ctx, `select pg_terminate_backend(pid) from pg_stat_activity
				where backend_type = 'client backend' and pid <> pg_backend_pid() order by random() limit 1`)
		}
	}
	waitCommits := func(n int64) {
		testutil.Within(60*time.Second, func() bool { return commits.Load() >= n }) // checked below
	}
	waitCommits(20) // the clients are up
	chaos(2 * time.Second)
	beforeRestart := commits.Load()
	direct.Close(ctx)
	if err := c.Restart(ctx, 300*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	direct, err = pgx.Connect(ctx, c.DSN(""))
	if err != nil {
		t.Fatal(err)
	}
	defer direct.Close(context.Background())
	chaos(2 * time.Second)
	waitCommits(beforeRestart + 20) // progress after the restart
	close(stop)
	wg.Wait()
	if beforeRestart == 0 || commits.Load() == beforeRestart {
		t.Fatalf("no progress: %d commits before the restart, %d in all", beforeRestart, commits.Load())
	}

	var total int64
	if err := direct.QueryRow(ctx, "select sum(balance) from accounts").Scan(&total); err != nil {
		t.Fatal(err)
	}
	if total != accounts*initial {
		t.Fatalf("total balance %d, want %d", total, accounts*initial)
	}
	present := map[int64]bool{}
	rows, err := direct.Query(ctx, "select id from transfers")
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var id int64
		_ = rows.Scan(&id)
		present[id] = true
	}
	rows.Close()
	for id := range committed {
		if !present[id] {
			t.Errorf("transfer %d was committed to the client but is missing", id)
		}
	}
	for id := range notApplied {
		if present[id] {
			t.Errorf("transfer %d failed before COMMIT but is present", id)
		}
	}
	t.Logf("%d transfers committed (%d before the restart), %d failed before commit, %d rows", len(committed), beforeRestart, len(notApplied), len(present))

	// The proxy serves new clients, and no server connection is left in a
	// transaction.
	if !testutil.Within(2*time.Second, func() bool {
		var conn *pgx.Conn
		if conn, err = pgx.Connect(ctx, dsn); err != nil {
			return false
		}
		defer conn.Close(ctx)
		var one int
		err = conn.QueryRow(ctx, "select 1").Scan(&one)
		return err == nil
	}) {
		t.Fatalf("proxy does not serve new clients: %v", err)
	}
	var idleInTx int
	if err := direct.QueryRow(ctx, "select count(*) from pg_stat_activity where state like 'idle in transaction%'").Scan(&idleInTx); err != nil {
		t.Fatal(err)
	}
	if idleInTx != 0 {
		t.Fatalf("%d server connections left idle in transaction", idleInTx)
	}
}

// isRetryable says the client may go on with the same connection.
func isRetryable(err error) bool {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return pe.Severity != "FATAL" && pe.Code[:2] != "08" && pe.Code[:2] != "57"
	}
	return false
}
