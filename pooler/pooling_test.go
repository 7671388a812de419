package pooler

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgaudit-proxy/pgaudit/analyzer"
	"github.com/pgaudit-proxy/pgaudit/internal/testutil"
)

func connect(t *testing.T, ctx context.Context, dsn string, mode pgx.QueryExecMode) *pgx.Conn {
	t.Helper()
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		t.Fatal(err)
	}
	cfg.DefaultQueryExecMode = mode
	c, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close(context.Background()) })
	return c
}

func queryString(t *testing.T, ctx context.Context, c *pgx.Conn, sql string) string {
	t.Helper()
	var s string
	if err := c.QueryRow(ctx, sql).Scan(&s); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return s
}

// TestSettingsIsolation: in transaction mode two clients share one server
// connection, and neither ever sees the other's SET; SET LOCAL stays in its
// transaction; startup parameters follow their client.
func TestSettingsIsolation(t *testing.T) {
	for _, mode := range []pgx.QueryExecMode{pgx.QueryExecModeSimpleProtocol, pgx.QueryExecModeCacheStatement} {
		t.Run(string(mode), func(t *testing.T) {
			p := testProxy(t, withMode(TransactionMode, 1))
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			a := connect(t, ctx, proxyDSN(p, "", "&application_name=client_a"), mode)
			b := connect(t, ctx, proxyDSN(p, "", "&application_name=client_b&search_path=b_schema"), mode)
			defaultTimeout := queryString(t, ctx, b, "show statement_timeout")

			if _, err := a.Exec(ctx, "SET search_path TO a_schema, public"); err != nil {
				t.Fatal(err)
			}
			if _, err := a.Exec(ctx, "SET statement_timeout = '1234ms'"); err != nil {
				t.Fatal(err)
			}
			for i := 0; i < 3; i++ {
				if got := queryString(t, ctx, b, "show search_path"); got != "b_schema" {
					t.Fatalf("client B sees search_path %q", got)
				}
				if got := queryString(t, ctx, b, "show statement_timeout"); got != defaultTimeout {
					t.Fatalf("client B sees statement_timeout %q", got)
				}
				if got := queryString(t, ctx, b, "select current_setting('application_name')"); got != "client_b" {
					t.Fatalf("client B sees application_name %q", got)
				}
				if got := queryString(t, ctx, a, "show search_path"); got != "a_schema, public" {
					t.Fatalf("client A lost its search_path: %q", got)
				}
				if got := queryString(t, ctx, a, "show statement_timeout"); got != "1234ms" {
					t.Fatalf("client A lost its statement_timeout: %q", got)
				}
				if got := queryString(t, ctx, a, "select current_setting('application_name')"); got != "client_a" {
					t.Fatalf("client A sees application_name %q", got)
				}
			}
			// SET LOCAL is undone at commit.
			tx, err := b.Begin(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := tx.Exec(ctx, "SET LOCAL statement_timeout = '777ms'"); err != nil {
				t.Fatal(err)
			}
			var inTx string
			if err := tx.QueryRow(ctx, "show statement_timeout").Scan(&inTx); err != nil || inTx != "777ms" {
				t.Fatalf("SET LOCAL inside tx: %q %v", inTx, err)
			}
			if err := tx.Commit(ctx); err != nil {
				t.Fatal(err)
			}
			if got := queryString(t, ctx, a, "show statement_timeout"); got != "1234ms" {
				t.Fatalf("A sees %q after B's SET LOCAL", got)
			}
			if got := queryString(t, ctx, b, "show statement_timeout"); got != defaultTimeout {
				t.Fatalf("SET LOCAL leaked out of its transaction: %q", got)
			}
			// RESET returns to the default, and a rolled back SET is undone.
			if _, err := a.Exec(ctx, "RESET statement_timeout"); err != nil {
				t.Fatal(err)
			}
			if got := queryString(t, ctx, a, "show statement_timeout"); got != defaultTimeout {
				t.Fatalf("after RESET A sees %q", got)
			}
			tx, err = a.Begin(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := tx.Exec(ctx, "SET search_path TO rolled_back"); err != nil {
				t.Fatal(err)
			}
			if err := tx.Rollback(ctx); err != nil {
				t.Fatal(err)
			}
			if got := queryString(t, ctx, a, "show search_path"); got != "a_schema, public" {
				t.Fatalf("rolled back SET is visible: %q", got)
			}
		})
	}
}

// TestWaitQueue: more clients than the pool allows wait in FIFO order, and
// a waiter past query_wait_timeout gets 53300 and keeps its connection.
func TestWaitQueue(t *testing.T) {
	p := testProxy(t, func(c *Config) {
		withMode(TransactionMode, 1)(c)
		for _, db := range c.Databases {
			db.Pool.QueryWaitTimeout = 400 * time.Millisecond
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	holder := connect(t, ctx, proxyDSN(p, "", ""), pgx.QueryExecModeSimpleProtocol)
	waiter := connect(t, ctx, proxyDSN(p, "", ""), pgx.QueryExecModeSimpleProtocol)
	tx, err := holder.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	_, err = waiter.Exec(ctx, "select 1")
	var pe *pgconn.PgError
	if !errors.As(err, &pe) || pe.Code != "53300" || !strings.Contains(pe.Message, "query_wait_timeout") {
		t.Fatalf("want 53300 query_wait_timeout, got %v", err)
	}
	if el := time.Since(start); el < 350*time.Millisecond || el > 5*time.Second {
		t.Fatalf("timeout after %s, want about 400ms", el)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if got := queryString(t, ctx, waiter, "select 'still here'"); got != "still here" {
		t.Fatal(got)
	}

	// FIFO: waiters queued one after the other are served in that order.
	p2 := testProxy(t, withMode(TransactionMode, 1))
	holder2 := connect(t, ctx, proxyDSN(p2, "", ""), pgx.QueryExecModeSimpleProtocol)
	tx2, err := holder2.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// Each waiter records when its statement ran on the server; the
	// order of those times is the order the pool served them.
	ranAt := make([]time.Time, 5)
	var wg sync.WaitGroup
	for i := 0; i < 5; i++ {
		c := connect(t, ctx, proxyDSN(p2, "", ""), pgx.QueryExecModeSimpleProtocol)
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			if err := c.QueryRow(ctx, "select clock_timestamp()").Scan(&ranAt[i]); err != nil {
				t.Error(err)
			}
		}(i)
		// Let waiter i enqueue before i+1.
		testutil.Within(5*time.Second, func() bool { return p2.PoolStats()[0].ClientsWaiting >= i+1 }) // checked below
	}
	if st := p2.PoolStats()[0]; st.ClientsWaiting != 5 || st.OldestWait <= 0 {
		t.Fatalf("waiting clients %d, oldest wait %s", st.ClientsWaiting, st.OldestWait)
	}
	if err := tx2.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	order := []int{0, 1, 2, 3, 4}
	sort.Slice(order, func(a, b int) bool { return ranAt[order[a]].Before(ranAt[order[b]]) })
	if fmt.Sprint(order) != "[0 1 2 3 4]" {
		t.Fatalf("waiters served in order %v", order)
	}
	st := p2.PoolStats()[0]
	if st.Waits == 0 || st.MaxWait <= 0 || st.WaitP99 <= 0 {
		t.Fatalf("wait statistics not recorded: %+v", st)
	}
}

// TestSessionStateDetection: statements that need a session pin the client
// and are reported as session-state events.
func TestSessionStateDetection(t *testing.T) {
	cases := []struct{ detail, sql string }{
		{"listen", "LISTEN some_channel"},
		{"advisory_lock", "SELECT pg_advisory_lock(42)"},
		{"temp_table", "CREATE TEMP TABLE scratch(x int)"},
		{"with_hold", "DECLARE c CURSOR WITH HOLD FOR SELECT 1"},
		{"prepare", "PREPARE q(int) AS SELECT $1"},
	}
	for _, tc := range cases {
		t.Run(tc.detail, func(t *testing.T) {
			sink := &captureSink{}
			p := testProxyWithSink(t, withMode(TransactionMode, 2), sink)
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			c := connect(t, ctx, proxyDSN(p, "", "&application_name=detector"), pgx.QueryExecModeSimpleProtocol)
			pidBefore := queryString(t, ctx, c, "select pg_backend_pid()::text")
			if _, err := c.Exec(ctx, tc.sql); err != nil {
				t.Fatal(err)
			}
			// Another client takes the other server; the pinned client keeps
			// its own.
			other := connect(t, ctx, proxyDSN(p, "", ""), pgx.QueryExecModeSimpleProtocol)
			otherTx, err := other.Begin(ctx)
			if err != nil {
				t.Fatal(err)
			}
			for i := 0; i < 3; i++ {
				if pid := queryString(t, ctx, c, "select pg_backend_pid()::text"); pid != pidBefore {
					t.Fatalf("pinned client moved from backend %s to %s", pidBefore, pid)
				}
			}
			_ = otherTx.Rollback(ctx)
			if p.SessionStateDetections() != 1 {
				t.Fatalf("detections = %d", p.SessionStateDetections())
			}
			var found *analyzer.Event
			for _, ev := range sink.snapshot() {
				if ev.Kind == analyzer.KindSessionState {
					found = &ev
				}
			}
			if found == nil || found.Detail != tc.detail || found.ApplicationName != "detector" || found.Text != tc.sql {
				t.Fatalf("session-state event = %+v", found)
			}
		})
	}
}

// TestIdleTransactionTimeout: a client idle inside a transaction is cut off
// with 25P03 and its transaction rolled back.
func TestIdleTransactionTimeout(t *testing.T) {
	p := testProxy(t, func(c *Config) {
		withMode(TransactionMode, 2)(c)
		for _, db := range c.Databases {
			db.Pool.IdleTransactionTimeout = 300 * time.Millisecond
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c := connect(t, ctx, proxyDSN(p, "", ""), pgx.QueryExecModeSimpleProtocol)
	if _, err := c.Exec(ctx, "BEGIN"); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Exec(ctx, "CREATE TABLE idle_tx_probe(x int)"); err != nil {
		t.Fatal(err)
	}
	// The client stays idle until the proxy has ended the transaction.
	direct := connect(t, ctx, cluster.DSN(""), pgx.QueryExecModeSimpleProtocol)
	idleInTx := func() string {
		return queryString(t, ctx, direct, "select count(*)::text from pg_stat_activity where state like 'idle in transaction%'")
	}
	testutil.Eventually(t, 5*time.Second, "no backend left idle in transaction", func() bool { return idleInTx() == "0" })
	_, err := c.Exec(ctx, "COMMIT")
	if err == nil {
		t.Fatal("COMMIT after idle_transaction_timeout succeeded")
	}
	if got := queryString(t, ctx, direct, "select count(*)::text from pg_class where relname = 'idle_tx_probe'"); got != "0" {
		t.Fatal("the timed-out transaction was committed")
	}
}

// TestQueryTimeout: a statement running past query_timeout is canceled.
func TestQueryTimeout(t *testing.T) {
	p := testProxy(t, func(c *Config) {
		withMode(TransactionMode, 2)(c)
		for _, db := range c.Databases {
			db.Pool.QueryTimeout = 300 * time.Millisecond
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c := connect(t, ctx, proxyDSN(p, "", ""), pgx.QueryExecModeSimpleProtocol)
	start := time.Now()
	_, err := c.Exec(ctx, "select pg_sleep(10)")
	var pe *pgconn.PgError
	if !errors.As(err, &pe) || pe.Code != "57014" {
		t.Fatalf("want 57014, got %v", err)
	}
	if time.Since(start) > 5*time.Second {
		t.Fatal("query_timeout did not cancel in time")
	}
	if got := queryString(t, ctx, c, "select 'ok'"); got != "ok" {
		t.Fatal(got)
	}
}

// TestPreparedStatementsTransactionMode covers DEALLOCATE ALL, Close, and
// recovery from "cached plan must not change result type" after DDL.
func TestPreparedStatementsTransactionMode(t *testing.T) {
	p := testProxy(t, withMode(TransactionMode, 1))
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	direct := connect(t, ctx, cluster.DSN(""), pgx.QueryExecModeSimpleProtocol)
	if _, err := direct.Exec(ctx, "drop table if exists plan_change; create table plan_change(a int); insert into plan_change values (1)"); err != nil {
		t.Fatal(err)
	}
	a := connect(t, ctx, proxyDSN(p, "", ""), pgx.QueryExecModeCacheStatement)
	b := connect(t, ctx, proxyDSN(p, "", ""), pgx.QueryExecModeCacheStatement)
	for _, c := range []*pgx.Conn{a, b} {
		var n int
		if err := c.QueryRow(ctx, "select * from plan_change").Scan(&n); err != nil || n != 1 {
			t.Fatalf("before DDL: %v", err)
		}
	}
	if _, err := direct.Exec(ctx, "alter table plan_change add column b int default 2"); err != nil {
		t.Fatal(err)
	}
	for _, c := range []*pgx.Conn{a, b} {
		var x, y int
		var err error
		for attempt := 0; attempt < 2; attempt++ {
			err = c.QueryRow(ctx, "select * from plan_change").Scan(&x, &y)
			if err == nil {
				break
			}
		}
		if err != nil || x != 1 || y != 2 {
			t.Fatalf("after DDL the statement did not recover: %v", err)
		}
	}
	if _, err := a.Exec(ctx, "DEALLOCATE ALL"); err != nil {
		t.Fatal(err)
	}
	var v int
	if err := b.QueryRow(ctx, "select $1::int * 2", 21).Scan(&v); err != nil || v != 42 {
		t.Fatalf("after another client's DEALLOCATE ALL: %v", err)
	}
	if err := a.Deallocate(ctx, "select $1::int * 2"); err != nil && !strings.Contains(err.Error(), "does not exist") {
		t.Fatalf("deallocate: %v", err)
	}
	if err := a.QueryRow(ctx, "select $1::int * 2", 4).Scan(&v); err != nil || v != 8 {
		t.Fatalf("after Close: %v", err)
	}
}

// TestPoolStats checks the counters and utilization after some traffic.
func TestPoolStats(t *testing.T) {
	p := testProxy(t, withMode(TransactionMode, 2))
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c := connect(t, ctx, proxyDSN(p, "", ""), pgx.QueryExecModeCacheStatement)
	start := time.Now()
	for i := 0; i < 20; i++ {
		if _, err := c.Exec(ctx, "select pg_sleep(0.005)"); err != nil {
			t.Fatal(err)
		}
	}
	// A transaction that sits idle for 100 ms counts that time too.
	tx, err := c.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond) // deliberate: the idle time under test
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	elapsed := time.Since(start)
	// The counters move to the pool when the server is released, just
	// after the client got its last reply.
	var st []PoolStats
	testutil.Within(2*time.Second, func() bool { // checked below
		st = p.PoolStats()
		return len(st) != 1 || st[0].XactTime >= 200*time.Millisecond
	})
	if len(st) != 1 {
		t.Fatalf("pools: %+v", st)
	}
	s := st[0]
	if s.Transactions < 21 || s.Queries < 20 || s.BytesIn == 0 || s.BytesOut == 0 {
		t.Fatalf("counters: %+v", s)
	}
	if s.XactTime < 200*time.Millisecond || s.XactTime > elapsed {
		t.Fatalf("transaction time %v: want at least 20 x 5 ms + 100 ms idle, at most the %v elapsed", s.XactTime, elapsed)
	}
	if s.Utilization <= 0 || s.Utilization > 1 {
		t.Fatalf("utilization %v", s.Utilization)
	}
	if s.ServersActive != 0 || s.ServersIdle < 1 || s.ClientsActive != 1 {
		t.Fatalf("server/client counts: %+v", s)
	}
}

// TestReload changes the pool size and a database's settings while clients
// are connected; nobody is dropped.
func TestReload(t *testing.T) {
	p := testProxy(t, withMode(TransactionMode, 1))
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c := connect(t, ctx, proxyDSN(p, "", ""), pgx.QueryExecModeCacheStatement)
	if got := queryString(t, ctx, c, "select 'before'"); got != "before" {
		t.Fatal(got)
	}
	next := *p.config()
	next.Databases = map[string]*Database{}
	for name, db := range p.config().Databases {
		cp := *db
		cp.Pool.Size = 3
		next.Databases[name] = &cp
	}
	p.Reload(&next)
	// Three clients can now hold a server each at the same time.
	var txs []pgx.Tx
	for i := 0; i < 3; i++ {
		other := connect(t, ctx, proxyDSN(p, "", ""), pgx.QueryExecModeSimpleProtocol)
		tx, err := other.Begin(ctx)
		if err != nil {
			t.Fatalf("client %d after reload: %v", i, err)
		}
		txs = append(txs, tx)
	}
	for _, tx := range txs {
		_ = tx.Rollback(ctx)
	}
	if got := queryString(t, ctx, c, "select 'after'"); got != "after" {
		t.Fatal(got)
	}
	if st := p.PoolStats()[0]; st.Size != 3 {
		t.Fatalf("pool size after reload = %d", st.Size)
	}
}

// TestStartupOptions: options=-c and GUC startup parameters reach the
// server in both modes, as they do directly.
func TestStartupOptions(t *testing.T) {
	for _, mode := range []PoolMode{SessionMode, TransactionMode} {
		t.Run(string(mode), func(t *testing.T) {
			p := testProxy(t, withMode(mode, 1))
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			// The first client warms the pool; the second one is greeted
			// from the cache in transaction mode.
			for i := 0; i < 2; i++ {
				c := connect(t, ctx, proxyDSN(p, "", "&options=-c%20statement_timeout%3D4321&search_path=s1&DateStyle=German"), pgx.QueryExecModeSimpleProtocol)
				if got := queryString(t, ctx, c, "show statement_timeout"); got != "4321ms" {
					t.Fatalf("statement_timeout = %q", got)
				}
				if got := queryString(t, ctx, c, "show search_path"); got != "s1" {
					t.Fatalf("search_path = %q", got)
				}
				if got := c.PgConn().ParameterStatus("DateStyle"); !strings.HasPrefix(got, "German") {
					t.Fatalf("DateStyle reported as %q", got)
				}
				c.Close(ctx)
			}
		})
	}
}

// TestResetToStartupValues: in transaction mode RESET, RESET ALL and
// DISCARD ALL return a client's settings to the values of its startup
// packet, as on a direct connection, not to the server connection's, and
// another client on the same server connection keeps seeing the defaults.
func TestResetToStartupValues(t *testing.T) {
	p := testProxy(t, withMode(TransactionMode, 1))
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	a := connect(t, ctx, proxyDSN(p, "", "&options=-c%20statement_timeout%3D4321&search_path=s1"), pgx.QueryExecModeSimpleProtocol)
	b := connect(t, ctx, proxyDSN(p, "", ""), pgx.QueryExecModeSimpleProtocol)
	defaultPath := queryString(t, ctx, b, "show search_path")
	for _, reset := range []string{"RESET search_path", "RESET ALL", "DISCARD ALL"} {
		for _, sql := range []string{"SET search_path TO elsewhere", "SET statement_timeout = 99", reset} {
			if _, err := a.Exec(ctx, sql); err != nil {
				t.Fatalf("%s: %v", sql, err)
			}
		}
		if got := queryString(t, ctx, b, "show search_path"); got != defaultPath {
			t.Fatalf("after client A's %s, client B sees search_path %q, want %q", reset, got, defaultPath)
		}
		if got := queryString(t, ctx, a, "show search_path"); got != "s1" {
			t.Errorf("after %s: search_path %q, want the startup value s1", reset, got)
		}
		want := "99ms" // RESET search_path leaves statement_timeout alone
		if reset != "RESET search_path" {
			want = "4321ms"
		}
		if got := queryString(t, ctx, a, "show statement_timeout"); got != want {
			t.Errorf("after %s: statement_timeout %q, want %q", reset, got, want)
		}
	}
}

// TestGracefulShutdown: clients in the middle of a transaction finish it;
// each is then told 57P01, and no client sees a transaction cut short.
func TestGracefulShutdown(t *testing.T) {
	p := testProxy(t, withMode(TransactionMode, 4))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	direct := connect(t, ctx, cluster.DSN(""), pgx.QueryExecModeSimpleProtocol)
	if _, err := direct.Exec(ctx, "drop table if exists shutdown_t; create table shutdown_t(client int, n int)"); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var cut []string
	committed := 0
	for i := 0; i < 8; i++ {
		conn := connect(t, ctx, proxyDSN(p, "", ""), pgx.QueryExecModeCacheStatement)
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			for n := 0; ; n++ {
				tx, err := conn.Begin(ctx)
				if err != nil {
					return // refused between transactions: expected
				}
				_, err = tx.Exec(ctx, "insert into shutdown_t values ($1, $2)", i, n)
				if err == nil {
					_, err = tx.Exec(ctx, "select pg_sleep(0.05)")
				}
				if err == nil {
					err = tx.Commit(ctx)
				}
				if err != nil {
					mu.Lock()
					cut = append(cut, fmt.Sprintf("client %d transaction %d: %v", i, n, err))
					mu.Unlock()
					return
				}
				mu.Lock()
				committed++
				mu.Unlock()
			}
		}(i)
	}
	testutil.Eventually(t, 10*time.Second, "every client to commit", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return committed >= 8
	})
	sctx, scancel := context.WithTimeout(ctx, 10*time.Second)
	p.Shutdown(sctx)
	scancel()
	wg.Wait()
	if len(cut) > 0 {
		t.Fatalf("transactions cut by the shutdown:\n%s", strings.Join(cut, "\n"))
	}
	if committed == 0 || p.ClientCount() != 0 {
		t.Fatalf("committed %d, clients left %d", committed, p.ClientCount())
	}
	var rows int
	if err := direct.QueryRow(ctx, "select count(*) from shutdown_t").Scan(&rows); err != nil || rows != committed {
		t.Fatalf("%d rows for %d commits (%v)", rows, committed, err)
	}
}

// TestReloadUnderLoad: RELOAD (Proxy.Reload) during a pgbench run causes
// no client error.
func TestReloadUnderLoad(t *testing.T) {
	initPgbench(t)
	p := testProxy(t, withMode(TransactionMode, 4))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	done := make(chan []byte, 1)
	go func() {
		out, _ := exec.CommandContext(ctx, cluster.Bin("pgbench"), "-n", "-S", "-c", "16", "-j", "2", "-T", "4", "-M", "prepared", proxyDSN(p, "", "")).CombinedOutput()
		done <- out
	}()
	for i := 0; i < 6; i++ {
		time.Sleep(400 * time.Millisecond) // deliberate: reload every 400ms while pgbench runs
		next := *p.config()
		next.Databases = map[string]*Database{}
		for name, db := range p.config().Databases {
			cp := *db
			cp.Pool.Size = 2 + i%3
			next.Databases[name] = &cp
		}
		p.Reload(&next)
	}
	out := <-done
	if m := failedRe.FindSubmatch(out); m == nil || string(m[1]) != "0" || strings.Contains(string(out), "aborted") {
		t.Fatalf("pgbench during reloads:\n%s", out)
	}
}

// TestIdleServerTerminated: a server backend terminated while its client is
// idle outside a transaction (no background reader then, in either mode)
// is noticed at the client's next request: the client gets the server's
// FATAL or 08006, never a hang, and a new client is served.
func TestIdleServerTerminated(t *testing.T) {
	for _, mode := range []PoolMode{SessionMode, TransactionMode} {
		t.Run(string(mode), func(t *testing.T) {
			p := testProxy(t, withMode(mode, 1))
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			a := connect(t, ctx, proxyDSN(p, "", ""), pgx.QueryExecModeSimpleProtocol)
			// The pool has one server: this is the backend the next
			// request uses in either mode.
			pid := queryString(t, ctx, a, "select pg_backend_pid()::text")
			admin, err := pgconn.Connect(ctx, cluster.DSN(""))
			if err != nil {
				t.Fatal(err)
			}
			defer admin.Close(ctx)
			if _, err := admin.Exec(ctx, "select pg_terminate_backend("+pid+")").ReadAll(); err != nil {
				t.Fatal(err)
			}
			testutil.Eventually(t, 5*time.Second, "the terminated backend to exit", func() bool {
				res, err := admin.Exec(ctx, "select 1 from pg_stat_activity where pid = "+pid).ReadAll()
				return err == nil && len(res) == 1 && len(res[0].Rows) == 0
			})
			// The pool looks for a closed server only when it has been
			// idle over 50 ms (Pool.checkOut): be sure it has.
			time.Sleep(60 * time.Millisecond) // deliberate: the idle time under test
			var got string
			err = a.QueryRow(ctx, "select 'after'").Scan(&got)
			if mode == TransactionMode {
				// The pool notices the dead idle server on checkout and
				// serves the request on a new one.
				if err != nil || got != "after" {
					t.Fatalf("transaction mode: got %q, %v", got, err)
				}
			} else {
				var pe *pgconn.PgError
				if !errors.As(err, &pe) || (pe.Code != "57P01" && pe.Code != "08006") {
					t.Fatalf("session mode: want FATAL 57P01 or 08006 for the terminated backend, got %q, %v", got, err)
				}
			}
			b := connect(t, ctx, proxyDSN(p, "", ""), pgx.QueryExecModeSimpleProtocol)
			if s := queryString(t, ctx, b, "select 'new client'"); s != "new client" {
				t.Fatal(s)
			}
		})
	}
}

// TestClientGoneMidStatement: a transaction-mode client that disconnects
// while its statement runs (without sending a cancel, as pgconn would)
// frees its server within seconds and the statement is canceled, although
// the client goroutine was waiting on the server.
func TestClientGoneMidStatement(t *testing.T) {
	p := testProxy(t, withMode(TransactionMode, 1))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	a := dialWire(t, p.Addr().String(), nil)
	a.send(&pgproto3.Query{String: "select pg_sleep(20)"})
	admin, err := pgconn.Connect(ctx, cluster.DSN(""))
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(ctx)
	running := func(want string) func() bool {
		return func() bool {
			res, err := admin.Exec(ctx, "select count(*) from pg_stat_activity where query = 'select pg_sleep(20)' and state = 'active'").ReadAll()
			return err == nil && len(res) == 1 && len(res[0].Rows) == 1 && string(res[0].Rows[0][0]) == want
		}
	}
	testutil.Eventually(t, 5*time.Second, "the statement to run", running("1"))
	_ = a.nc.Close()

	start := time.Now()
	b := connect(t, ctx, proxyDSN(p, "", ""), pgx.QueryExecModeSimpleProtocol)
	if s := queryString(t, ctx, b, "select 'served'"); s != "served" {
		t.Fatal(s)
	}
	if el := time.Since(start); el > 5*time.Second {
		t.Fatalf("next client served after %s: the gone client's server was held", el)
	}
	// The abandoned statement was canceled, not left running.
	testutil.Eventually(t, 5*time.Second, "the abandoned statement to be canceled", running("0"))
}

// TestPauseAppliesToNewPools: after PAUSE of all databases or of one, a
// client of a pool created afterwards (the database is first seen then)
// waits too, and is served on RESUME.
func TestPauseAppliesToNewPools(t *testing.T) {
	for _, pause := range []string{"", "template1"} {
		t.Run("pause "+pause, func(t *testing.T) {
			p := testProxy(t, withMode(TransactionMode, 2))
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			p.Pause(pause)
			done := make(chan error, 1)
			go func() {
				c, err := pgx.Connect(ctx, proxyDSN(p, "template1", ""))
				if err == nil {
					_, err = c.Exec(ctx, "select 1")
					c.Close(ctx)
				}
				done <- err
			}()
			select {
			case err := <-done:
				t.Fatalf("a client of a pool created while paused was served (err %v)", err)
			case <-time.After(500 * time.Millisecond):
			}
			if pause == "" {
				// RESUME of one database keeps a global PAUSE, as in
				// PgBouncer.
				if n := p.Resume("template1"); n != 0 || !p.Paused("template1") {
					t.Fatalf("RESUME template1 under a global PAUSE resumed %d pools, paused %v", n, p.Paused("template1"))
				}
				select {
				case err := <-done:
					t.Fatalf("served after RESUME of one database under a global PAUSE (err %v)", err)
				case <-time.After(200 * time.Millisecond):
				}
			}
			p.Resume(pause)
			if p.Paused("template1") {
				t.Fatal("still paused after RESUME")
			}
			select {
			case err := <-done:
				if err != nil {
					t.Fatalf("after RESUME: %v", err)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("client still waiting after RESUME")
			}
		})
	}
}
