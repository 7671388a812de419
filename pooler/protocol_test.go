package pooler

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgaudit-proxy/pgaudit/internal/pgtest"
	"github.com/pgaudit-proxy/pgaudit/internal/testutil"
	"github.com/pgaudit-proxy/pgaudit/wire"
)

// waitActive waits until a backend runs a statement containing marker; it
// fails if done yields first (the statement ended before it was seen).
func waitActive(t testing.TB, marker string, done <-chan asyncResult) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn := directConn(t)
	for {
		res, err := conn.Exec(ctx, fmt.Sprintf("select count(*) from pg_stat_activity where state = 'active' and query like '%%%s%%' and pid <> pg_backend_pid()", marker)).ReadAll()
		if err != nil {
			t.Fatal(err)
		}
		if string(res[0].Rows[0][0]) != "0" {
			return
		}
		select {
		case r := <-done:
			t.Fatalf("statement %q ended before it was seen running: %v", marker, r.err)
		case <-ctx.Done():
			t.Fatalf("no backend started %q", marker)
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// stillRunning checks that the statement behind done is not over after a
// moment (a cancel that should not have hit it), then cancels it properly.
func stillRunning(t testing.TB, conn *pgconn.PgConn, done <-chan asyncResult, what string) {
	t.Helper()
	select {
	case r := <-done:
		t.Fatalf("%s: the statement ended: %v", what, r.err)
	case <-time.After(300 * time.Millisecond):
	}
	if err := conn.CancelRequest(context.Background()); err != nil {
		t.Fatal(err)
	}
	select {
	case r := <-done:
		wantPgError(t, r.err, "ERROR", "57014", "")
	case <-time.After(5 * time.Second):
		t.Fatal("statement not canceled with the right key")
	}
}

// runAsync runs sql on conn in a goroutine; the channel yields its error
// and duration.
type asyncResult struct {
	err error
	dur time.Duration
}

func runAsync(conn *pgconn.PgConn, sql string) <-chan asyncResult {
	ch := make(chan asyncResult, 1)
	go func() {
		start := time.Now()
		_, err := conn.Exec(context.Background(), sql).ReadAll()
		ch <- asyncResult{err, time.Since(start)}
	}()
	return ch
}

// checkCancel runs pg_sleep(30) on dsn, cancels it with the key the client
// got, and expects 57014 soon.
func checkCancel(t testing.TB, dsn string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	conn, err := pgconn.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	marker := fmt.Sprintf("cancel_me_%d", time.Now().UnixNano())
	done := runAsync(conn, fmt.Sprintf("select pg_sleep(30) /* %s */", marker))
	waitActive(t, marker, done)
	if err := conn.CancelRequest(ctx); err != nil {
		t.Fatalf("CancelRequest: %v", err)
	}
	select {
	case r := <-done:
		wantPgError(t, r.err, "ERROR", "57014", "canceling statement due to user request")
	case <-time.After(5 * time.Second):
		t.Fatal("statement not canceled within 5s")
	}
	// The connection is still usable.
	if _, err := conn.Exec(ctx, "select 1").ReadAll(); err != nil {
		t.Fatalf("after cancel: %v", err)
	}
}

// sendCancel sends a raw CancelRequest to addr and checks that nothing is
// answered.
func sendCancel(t testing.TB, addr string, pid uint32, key []byte) {
	t.Helper()
	nc := dialRaw(t, addr)
	_ = nc.SetDeadline(time.Now().Add(wireTimeout))
	if _, err := nc.Write(wire.AppendCancelRequest(nil, pid, key)); err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(nc)
	if len(b) != 0 || err != nil {
		t.Errorf("CancelRequest answered with %q, %v; want the connection closed without a reply", b, err)
	}
}

func TestCancel(t *testing.T) {
	for _, mode := range []PoolMode{SessionMode, TransactionMode} {
		t.Run(string(mode), func(t *testing.T) {
			p := testProxy(t, withMode(mode, 1))
			t.Run("right-key", func(t *testing.T) { checkCancel(t, proxyDSN(p, "", "")) })

			t.Run("wrong-key", func(t *testing.T) {
				ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
				defer cancel()
				conn, err := pgconn.Connect(ctx, proxyDSN(p, "", ""))
				if err != nil {
					t.Fatal(err)
				}
				defer conn.Close(ctx)
				marker := fmt.Sprintf("wrong_key_%d", time.Now().UnixNano())
				done := runAsync(conn, fmt.Sprintf("select pg_sleep(30) /* %s */", marker))
				waitActive(t, marker, done)
				key := append([]byte(nil), conn.SecretKey()...)
				key[0] ^= 0xff
				sendCancel(t, p.Addr().String(), conn.PID(), key)
				sendCancel(t, p.Addr().String(), conn.PID()+1, conn.SecretKey())
				stillRunning(t, conn, done, "after CancelRequests with wrong keys")
			})

			t.Run("closed-session-key", func(t *testing.T) {
				ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
				defer cancel()
				old, err := pgconn.Connect(ctx, proxyDSN(p, "", ""))
				if err != nil {
					t.Fatal(err)
				}
				oldPID, oldKey := old.PID(), append([]byte(nil), old.SecretKey()...)
				if err := old.Close(ctx); err != nil {
					t.Fatal(err)
				}
				// With a pool of one, the new session gets the same server
				// connection (and, in session mode, the same PID).
				waitPool(t, p, 2*time.Second, "old session's server", func(active, _ int) bool { return active == 0 })
				conn, err := pgconn.Connect(ctx, proxyDSN(p, "", ""))
				if err != nil {
					t.Fatal(err)
				}
				defer conn.Close(ctx)
				if mode == SessionMode && conn.PID() != oldPID {
					t.Logf("note: the new session got another backend (%d, was %d)", conn.PID(), oldPID)
				}
				marker := fmt.Sprintf("old_key_%d", time.Now().UnixNano())
				done := runAsync(conn, fmt.Sprintf("select pg_sleep(30) /* %s */", marker))
				waitActive(t, marker, done)
				sendCancel(t, p.Addr().String(), oldPID, oldKey)
				stillRunning(t, conn, done, "after a CancelRequest with a closed session's key")
			})

			t.Run("idle-cancel", func(t *testing.T) {
				// A cancel while nothing runs must not hit the next statement.
				ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
				defer cancel()
				conn, err := pgconn.Connect(ctx, proxyDSN(p, "", ""))
				if err != nil {
					t.Fatal(err)
				}
				defer conn.Close(ctx)
				if err := conn.CancelRequest(ctx); err != nil {
					t.Fatal(err)
				}
				// Deliberate: a CancelRequest has no reply; give it time
				// to arrive, so that one acted on late would hit the
				// statement below (which must not be cancelled).
				time.Sleep(100 * time.Millisecond)
				if _, err := conn.Exec(ctx, "select pg_sleep(0.3)").ReadAll(); err != nil {
					t.Fatalf("statement after an idle cancel: %v", err)
				}
			})
		})
	}
}

// TestCancelProtocol32 logs in asking for protocol 3.2 (longer cancel keys
// there) and cancels.
func TestCancelProtocol32(t *testing.T) {
	p := testProxy(t, withMode(TransactionMode, 2))
	checkCancel(t, proxyDSN(p, "", "&max_protocol_version=3.2"))
}

// TestSessionModeBackendPID: in session mode the client sees the real
// backend PID, and pg_terminate_backend ends the client's connection with
// the server's FATAL 57P01, as directly.
func TestSessionModeBackendPID(t *testing.T) {
	p := testProxy(t, withMode(SessionMode, 2))
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	conn, err := pgconn.Connect(ctx, proxyDSN(p, "", ""))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	res, err := conn.Exec(ctx, "select pg_backend_pid()").ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	if got := string(res[0].Rows[0][0]); got != fmt.Sprint(conn.PID()) {
		t.Errorf("BackendKeyData PID %d, pg_backend_pid() %s", conn.PID(), got)
	}
}

func terminateSelf(t testing.TB, dsn string) *pgconn.PgError {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	conn, err := pgconn.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	_, err = conn.Exec(ctx, "select pg_terminate_backend(pg_backend_pid())").ReadAll()
	var pe *pgconn.PgError
	if !errors.As(err, &pe) {
		t.Fatalf("want a server error, got %v", err)
	}
	// The connection is over.
	if _, err := conn.Exec(ctx, "select 1").ReadAll(); err == nil {
		t.Errorf("connection still usable after pg_terminate_backend")
	}
	return pe
}

func TestTerminateBackend(t *testing.T) {
	want := terminateSelf(t, cluster.DSN(""))
	if want.Code != "57P01" || want.Severity != "FATAL" {
		t.Fatalf("directly: %s %s %s", want.Severity, want.Code, want.Message)
	}
	for _, mode := range []PoolMode{SessionMode, TransactionMode} {
		t.Run(string(mode), func(t *testing.T) {
			p := testProxy(t, withMode(mode, 2))
			got := terminateSelf(t, proxyDSN(p, "", ""))
			if got.Code != want.Code || got.Severity != want.Severity || got.Message != want.Message {
				t.Errorf("through the proxy: %s %s %q; directly: %s %s %q", got.Severity, got.Code, got.Message, want.Severity, want.Code, want.Message)
			}
			waitPool(t, p, 2*time.Second, "terminated server", func(active, _ int) bool { return active == 0 })
			if err := connectErr(t, proxyDSN(p, "", "")); err != nil {
				t.Errorf("next client: %v", err)
			}
		})
	}
}

// want08006 checks for a connection failure error: FATAL at login, or, in
// transaction mode where a login needs no server once the pool knows the
// server's parameters, ERROR at the first statement.
func want08006(t testing.TB, err error) *pgconn.PgError {
	t.Helper()
	var pe *pgconn.PgError
	if !errors.As(err, &pe) || pe.Code != "08006" || (pe.Severity != "FATAL" && pe.Severity != "ERROR") {
		t.Fatalf("want 08006, got %v", err)
	}
	return pe
}

// TestUpstreamUnreachable: a database whose server cannot be reached gives
// 08006 with the cause in the detail; other databases keep working.
func TestUpstreamUnreachable(t *testing.T) {
	port, err := pgtest.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	p := testProxy(t, func(c *Config) {
		db := *c.Databases["postgres"]
		db.Upstream = db.Upstream.Copy()
		db.Upstream.Port = uint16(port)
		db.Pool.ServerConnectTimeout = 2 * time.Second
		c.Databases["postgres"] = &db
	})
	for i := 0; i < 2; i++ {
		start := time.Now()
		err := connectErr(t, proxyDSN(p, "", ""))
		pe := want08006(t, err)
		if !strings.Contains(pe.Detail, "refused") {
			t.Errorf("attempt %d: detail %q does not carry the upstream error", i, pe.Detail)
		}
		if d := time.Since(start); d > 3*time.Second {
			t.Errorf("attempt %d took %v", i, d)
		}
	}
	if err := connectErr(t, proxyDSN(p, "template1", "")); err != nil {
		t.Errorf("another database: %v", err)
	}
}

// TestUpstreamRestart stops and starts a second cluster behind a session-mode
// and a transaction-mode proxy: clients get 08006 while it is down and are
// served again right after, not handed a dead pooled server.
func TestUpstreamRestart(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a second cluster")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c2, err := pgtest.Start(ctx, pgtest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Stop()
	modes := []PoolMode{SessionMode, TransactionMode}
	proxies := map[PoolMode]*Proxy{}
	for _, mode := range modes {
		proxies[mode] = testProxy(t, func(c *Config) {
			up, err := pgconn.ParseConfig(c2.DSN(""))
			if err != nil {
				t.Fatal(err)
			}
			for _, db := range c.Databases {
				db.Upstream = up
				db.Pool.Mode = mode
				db.Pool.Size = 2
				db.Pool.ServerConnectTimeout = 2 * time.Second
			}
		})
	}
	held := map[PoolMode]*pgconn.PgConn{}
	for _, mode := range modes {
		p := proxies[mode]
		// An idle server is left in the pool before the restart.
		if err := connectErr(t, proxyDSN(p, "", "")); err != nil {
			t.Fatal(err)
		}
		waitPool(t, p, 2*time.Second, string(mode)+": before the restart", func(active, idle int) bool { return active == 0 && idle == 1 })
		// A session that is connected while the server goes away.
		conn, err := pgconn.Connect(ctx, proxyDSN(p, "", ""))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close(ctx)
		held[mode] = conn
	}
	if err := c2.StopServer(ctx); err != nil {
		t.Fatal(err)
	}
	for _, mode := range modes {
		if _, err := held[mode].Exec(ctx, "select 1").ReadAll(); err == nil {
			t.Errorf("%s: query on a connection whose server stopped succeeded", mode)
		}
		err = connectErr(t, proxyDSN(proxies[mode], "", ""))
		if pe := want08006(t, err); pe.Detail == "" {
			t.Errorf("%s: no upstream error in the detail", mode)
		}
	}
	if err := c2.StartServer(ctx); err != nil {
		t.Fatal(err)
	}
	started := time.Now()
	for _, mode := range modes {
		var errs []error
		if !testutil.Within(2*time.Second-time.Since(started), func() bool {
			err := connectErr(t, proxyDSN(proxies[mode], "", ""))
			if err != nil {
				errs = append(errs, err)
			}
			return err == nil
		}) {
			t.Fatalf("%s: not served within 2s of the restart: %v", mode, errs)
		}
		if len(errs) > 0 {
			t.Errorf("%s: the first client after the restart failed (a dead pooled server?): %v", mode, errs[0])
		}
	}
}

// TestNoLeaks lets many clients come and go, many of them killed
// mid-transaction, mid-statement, mid-COPY or mid-pipeline, and checks that
// no server is held, none is left idle in transaction, and the next clients
// get clean servers.
func TestNoLeaks(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	setup, err := pgconn.Connect(ctx, cluster.DSN(""))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := setup.Exec(ctx, "create table if not exists leak_t(a int)").ReadAll(); err != nil {
		t.Fatal(err)
	}
	setup.Close(ctx)

	behaviours := []func(c *wireConn){
		func(c *wireConn) { c.query("select 1"); c.terminate() },
		func(c *wireConn) { c.query("begin"); c.query("insert into leak_t values (1)"); c.nc.Close() },
		func(c *wireConn) {
			c.query("begin")
			c.send(&pgproto3.Query{String: "select pg_sleep(0.2)"})
			time.Sleep(20 * time.Millisecond) // deliberate: hang up while the statement runs
			c.nc.Close()
		},
		func(c *wireConn) { c.query("begin"); c.query("select 1/0"); c.nc.Close() },
		func(c *wireConn) {
			c.send(&pgproto3.Query{String: "copy leak_t from stdin"})
			c.recvUntil(isType[*pgproto3.CopyInResponse])
			c.send(&pgproto3.CopyData{Data: []byte("1\n")})
			c.nc.Close()
		},
		func(c *wireConn) {
			c.send(&pgproto3.Parse{Query: "select pg_sleep(0.05)"}, &pgproto3.Bind{}, &pgproto3.Execute{}, &pgproto3.Flush{})
			c.nc.Close()
		},
		func(c *wireConn) { c.query("begin"); c.query("select 1"); c.terminate() },
		func(c *wireConn) {
			c.send(&pgproto3.Parse{Query: "select 1"}, &pgproto3.Bind{}, &pgproto3.Execute{}, &pgproto3.Sync{})
			c.nc.Close()
		},
		func(c *wireConn) {
			c.query("begin")
			c.send(&pgproto3.Query{String: "select generate_series(1, 100000)"})
			c.recvUntil(isType[*pgproto3.DataRow])
			c.nc.Close()
		},
	}
	for _, mode := range []PoolMode{SessionMode, TransactionMode} {
		t.Run(string(mode), func(t *testing.T) {
			p := testProxy(t, withMode(mode, 3))
			var wg sync.WaitGroup
			sem := make(chan struct{}, 6)
			for i := 0; i < 4*len(behaviours); i++ {
				wg.Add(1)
				sem <- struct{}{}
				go func(i int) {
					defer wg.Done()
					defer func() { <-sem }()
					c := dialWire(t, p.Addr().String(), map[string]string{"application_name": "leakcheck"})
					behaviours[i%len(behaviours)](c)
				}(i)
			}
			wg.Wait()
			testutil.Within(5*time.Second, func() bool { return p.ClientCount() <= 0 }) // checked below
			if n := p.ClientCount(); n > 0 {
				t.Errorf("%d clients still registered", n)
			}
			waitPool(t, p, 5*time.Second, "after all clients left", func(active, _ int) bool { return active == 0 })
			waitNoIdleInTransaction(t)
			// The next clients get clean servers.
			for i := 0; i < 6; i++ {
				c := dialWire(t, p.Addr().String(), nil)
				if st := c.query("select count(*) from pg_prepared_statements"); st != 'I' {
					t.Errorf("a new client's first statement ended in status %q: the server was handed out dirty", st)
				}
				c.terminate()
			}
		})
	}
}

func waitNoIdleInTransaction(t testing.TB) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pgconn.Connect(ctx, cluster.DSN(""))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var n string
	if !testutil.Within(3*time.Second, func() bool {
		res, err := conn.Exec(ctx, "select count(*) from pg_stat_activity where state like 'idle in transaction%' and pid <> pg_backend_pid()").ReadAll()
		if err != nil {
			t.Fatal(err)
		}
		n = string(res[0].Rows[0][0])
		return n == "0"
	}) {
		t.Fatalf("%s backends left idle in transaction", n)
	}
}

// TestPsqlCopy runs psql's \copy in and out through the proxy.
func TestPsqlCopy(t *testing.T) {
	dir := t.TempDir()
	in := filepath.Join(dir, "in.csv")
	var want strings.Builder
	for i := 1; i <= 500; i++ {
		fmt.Fprintf(&want, "%d,row %d\n", i, i)
	}
	if err := os.WriteFile(in, []byte(want.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, mode := range []PoolMode{SessionMode, TransactionMode} {
		t.Run(string(mode), func(t *testing.T) {
			table := "psql_copy_" + string(mode)
			if out, err := cluster.Psql(context.Background(), "", "-c", fmt.Sprintf("drop table if exists %s; create table %s(a int, b text)", table, table)); err != nil {
				t.Fatalf("%v\n%s", err, out)
			}
			p := testProxy(t, withMode(mode, 2))
			out := filepath.Join(dir, "out-"+string(mode)+".csv")
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			cmd := exec.CommandContext(ctx, cluster.Bin("psql"), "-X", "-v", "ON_ERROR_STOP=1", "-d", proxyDSN(p, "", ""),
				"-c", fmt.Sprintf(`\copy %s from '%s' csv`, table, in),
				"-c", fmt.Sprintf(`\copy %s from pstdin csv`, table),
				"-c", fmt.Sprintf(`\copy (select * from %s order by a) to '%s' csv`, table, out),
				"-c", fmt.Sprintf(`\copy (select count(*) from %s) to stdout`, table))
			cmd.Stdin = strings.NewReader("501,from stdin\n")
			res, err := cmd.CombinedOutput()
			if err != nil {
				t.Fatalf("psql: %v\n%s", err, res)
			}
			if !strings.Contains(string(res), "501") {
				t.Errorf("psql output %q lacks the count 501", res)
			}
			got, err := os.ReadFile(out)
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != want.String()+"501,from stdin\n" {
				t.Errorf("\\copy out differs from what went in (%d bytes vs %d)", len(got), want.Len()+15)
			}
			waitPool(t, p, 2*time.Second, "after psql", func(active, _ int) bool { return active == 0 })
		})
	}
}

// TestPgbenchConnectPerTransaction runs pgbench -C (a new connection per
// transaction) with the extended protocol.
func TestPgbenchConnectPerTransaction(t *testing.T) {
	initPgbench(t)
	for _, mode := range []PoolMode{SessionMode, TransactionMode} {
		t.Run(string(mode), func(t *testing.T) {
			p := testProxy(t, withMode(mode, 4))
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			out, err := exec.CommandContext(ctx, cluster.Bin("pgbench"), "-n", "-C", "-c", "4", "-j", "2", "-t", "15", "-M", "extended",
				proxyDSN(p, "", "")).CombinedOutput()
			if err != nil {
				t.Fatalf("pgbench: %v\n%s", err, out)
			}
			m := failedRe.FindSubmatch(out)
			if m == nil || string(m[1]) != "0" {
				t.Fatalf("pgbench reported failures:\n%s", out)
			}
			if !strings.Contains(string(out), "number of transactions actually processed: 60/60") {
				t.Fatalf("pgbench did not process all transactions:\n%s", out)
			}
			waitPool(t, p, 2*time.Second, "after pgbench", func(active, _ int) bool { return active == 0 })
		})
	}
}

// firstValue runs a group on c and returns the first column of the first
// DataRow (or the error message) and the final status.
func firstValue(c *wireConn, msgs ...pgproto3.FrontendMessage) string {
	c.send(msgs...)
	var v string
	got := false
	c.recvUntil(func(m pgproto3.BackendMessage) bool {
		switch m := m.(type) {
		case *pgproto3.DataRow:
			if !got {
				v, got = string(m.Values[0]), true
			}
		case *pgproto3.ErrorResponse:
			if !got {
				v, got = "ERROR "+m.Code+" "+m.Message, true
			}
		}
		return isType[*pgproto3.ReadyForQuery](m)
	})
	return v
}

// TestTransactionModeInterleaving runs two raw clients on a pool of one
// server: their unnamed and same-named statements must not mix, and a
// client in a transaction keeps the server until it ends.
func TestTransactionModeInterleaving(t *testing.T) {
	p := testProxy(t, withMode(TransactionMode, 1))
	a := dialWire(t, p.Addr().String(), nil)
	b := dialWire(t, p.Addr().String(), nil)
	check := func(what, got, want string) {
		t.Helper()
		if got != want {
			t.Errorf("%s: got %q, want %q", what, got, want)
		}
	}
	a.send(&pgproto3.Parse{Query: "select 'A'"}, &pgproto3.Sync{})
	a.recvRFQ(1)
	b.send(&pgproto3.Parse{Query: "select 'B', 2"}, &pgproto3.Sync{})
	b.recvRFQ(1)
	check("A's unnamed statement", firstValue(a, &pgproto3.Bind{}, &pgproto3.Execute{}, &pgproto3.Sync{}), "A")
	b.send(&pgproto3.Describe{ObjectType: 'S'}, &pgproto3.Sync{})
	rd := b.recvUntil(isType[*pgproto3.RowDescription]).(*pgproto3.RowDescription)
	if len(rd.Fields) != 2 {
		t.Errorf("B's unnamed statement described with %d columns, want 2", len(rd.Fields))
	}
	b.recvRFQ(1)
	check("B's unnamed statement", firstValue(b, &pgproto3.Bind{}, &pgproto3.Execute{}, &pgproto3.Sync{}), "B")

	a.send(&pgproto3.Parse{Name: "s", Query: "select 'A2'"}, &pgproto3.Sync{})
	a.recvRFQ(1)
	b.send(&pgproto3.Parse{Name: "s", Query: "select 'B2'"}, &pgproto3.Sync{})
	b.recvRFQ(1)
	check("A's statement s", firstValue(a, &pgproto3.Bind{PreparedStatement: "s"}, &pgproto3.Execute{}, &pgproto3.Sync{}), "A2")
	check("B's statement s", firstValue(b, &pgproto3.Bind{PreparedStatement: "s"}, &pgproto3.Execute{}, &pgproto3.Sync{}), "B2")
	a.send(&pgproto3.Close{ObjectType: 'S', Name: "s"}, &pgproto3.Sync{})
	a.recvRFQ(1)
	check("B's statement s after A closed its own", firstValue(b, &pgproto3.Bind{PreparedStatement: "s"}, &pgproto3.Execute{}, &pgproto3.Sync{}), "B2")
	check("A's closed statement", firstValue(a, &pgproto3.Bind{PreparedStatement: "s"}, &pgproto3.Execute{}, &pgproto3.Sync{}), `ERROR 26000 prepared statement "s" does not exist`)

	// A holds the only server inside a transaction; B waits.
	if st := a.query("begin; select 1"); st != 'T' {
		t.Fatalf("status %q", st)
	}
	b.send(&pgproto3.Query{String: "select 'B waited'"})
	_ = b.nc.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	if m, err := b.fe.Receive(); err == nil {
		t.Fatalf("B was answered while A held the only server in a transaction: %s", transcriptLine(m))
	}
	// The timeout interrupted Receive between messages; go on reading.
	if st := a.query("commit"); st != 'I' {
		t.Fatalf("status %q", st)
	}
	v := ""
	b.recvUntil(func(m pgproto3.BackendMessage) bool {
		if dr, ok := m.(*pgproto3.DataRow); ok {
			v = string(dr.Values[0])
		}
		return isType[*pgproto3.ReadyForQuery](m)
	})
	check("B after A committed", v, "B waited")
	a.terminate()
	b.terminate()
}

// TestInvalidStartupParameter: Postgres refuses a login with an unknown or
// invalid setting; through the proxy the client must learn the same, at
// login.
func TestInvalidStartupParameter(t *testing.T) {
	for _, opt := range []string{"&options=-c%20no_such_setting%3D1", "&statement_timeout=abc"} {
		want := connectErr(t, cluster.DSN("")+opt)
		var wantPE *pgconn.PgError
		if !errors.As(want, &wantPE) {
			t.Fatalf("directly with %s: %v", opt, want)
		}
		for _, mode := range []PoolMode{SessionMode, TransactionMode} {
			t.Run(string(mode)+opt, func(t *testing.T) {
				p := testProxy(t, withMode(mode, 2))
				// The first login, and one after the pool has servers.
				for i := 0; i < 2; i++ {
					err := connectErr(t, proxyDSN(p, "", opt))
					wantPgError(t, err, "FATAL", wantPE.Code, wantPE.Message)
					if err := connectErr(t, proxyDSN(p, "", "")); err != nil {
						t.Fatalf("valid login: %v", err)
					}
				}
			})
		}
	}
}
