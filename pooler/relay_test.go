package pooler

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgaudit-proxy/pgaudit/internal/testutil"
	"github.com/pgaudit-proxy/pgaudit/wire"
)

// forModes runs f once per pool mode, each as a subtest.
func forModes(t *testing.T, f func(t *testing.T, mode PoolMode)) {
	for _, mode := range []PoolMode{TransactionMode, SessionMode} {
		t.Run(string(mode), func(t *testing.T) { f(t, mode) })
	}
}

// relayProxy is testProxy with pool mode and size, plus mutate.
func relayProxy(t *testing.T, mode PoolMode, size int, mutate func(*Config)) *Proxy {
	t.Helper()
	return testProxy(t, func(c *Config) {
		withMode(mode, size)(c)
		if mutate != nil {
			mutate(c)
		}
	})
}

// openClients connects n clients through p; they are closed when the test
// ends.
func openClients(t *testing.T, p *Proxy, n int) []*pgconn.PgConn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	conns := make([]*pgconn.PgConn, n)
	for i := range conns {
		c, err := pgconn.Connect(ctx, proxyDSN(p, "", ""))
		if err != nil {
			t.Fatalf("client %d: %v", i, err)
		}
		conns[i] = c
		t.Cleanup(func() { c.Close(context.Background()) })
	}
	return conns
}

// waitParked waits until want clients are parked.
func waitParked(t *testing.T, p *Proxy, want int) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for p.ParkedClients() != want {
		if time.Now().After(deadline) {
			t.Fatalf("%d clients parked, want %d", p.ParkedClients(), want)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func queryOne(ctx context.Context, c *pgconn.PgConn, sql string) (string, error) {
	res, err := c.Exec(ctx, sql).ReadAll()
	if err != nil {
		return "", err
	}
	if len(res) == 0 || len(res[len(res)-1].Rows) != 1 {
		return "", fmt.Errorf("unexpected result %v", res)
	}
	return string(res[len(res)-1].Rows[0][0]), nil
}

// TestRelayParkResume: idle clients park, are listed by
// SHOW CLIENTS meanwhile, and answer as before when they send again; a
// session-mode client keeps its server (and its settings) across parks.
func TestRelayParkResume(t *testing.T) {
	forModes(t, func(t *testing.T, mode PoolMode) {
		p := relayProxy(t, mode, 5, nil)
		conns := openClients(t, p, 4)
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		var pids []string
		for i, c := range conns {
			if mode == SessionMode {
				if _, err := queryOne(ctx, c, fmt.Sprintf("select set_config('application_name', 'c%d', false)", i)); err != nil {
					t.Fatal(err)
				}
			}
			pid, err := queryOne(ctx, c, "select pg_backend_pid()")
			if err != nil {
				t.Fatal(err)
			}
			pids = append(pids, pid)
		}
		waitParked(t, p, 4)
		if n := len(p.Clients()); n != 4 {
			t.Fatalf("SHOW CLIENTS lists %d clients, want 4", n)
		}
		for round := range 3 {
			for i, c := range conns {
				got, err := queryOne(ctx, c, fmt.Sprintf("select %d + %d", i, round))
				if err != nil {
					t.Fatalf("client %d round %d: %v", i, round, err)
				}
				if want := fmt.Sprint(i + round); got != want {
					t.Fatalf("client %d: got %s, want %s", i, got, want)
				}
				if mode == SessionMode {
					pid, err := queryOne(ctx, c, "select pg_backend_pid()")
					if err != nil || pid != pids[i] {
						t.Fatalf("session-mode client %d changed server: %s -> %s (%v)", i, pids[i], pid, err)
					}
					app, err := queryOne(ctx, c, "show application_name")
					if err != nil || app != fmt.Sprintf("c%d", i) {
						t.Fatalf("client %d: application_name %q (%v)", i, app, err)
					}
				}
			}
			waitParked(t, p, 4)
		}
	})
}

// TestRelayNotParkedInTransaction: a client idle inside a transaction is
// never parked, and its transaction goes on.
func TestRelayNotParkedInTransaction(t *testing.T) {
	forModes(t, func(t *testing.T, mode PoolMode) {
		p := relayProxy(t, mode, 2, nil)
		c := openClients(t, p, 1)[0]
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		xid, err := queryOne(ctx, c, "begin; select txid_current()")
		if err != nil {
			t.Fatal(err)
		}
		time.Sleep(20 * *relayParkAfter)
		if n := p.ParkedClients(); n != 0 {
			t.Fatalf("%d clients parked inside a transaction", n)
		}
		got, err := queryOne(ctx, c, "select txid_current()")
		if err != nil || got != xid {
			t.Fatalf("transaction %s, then %q (%v)", xid, got, err)
		}
		if _, err := c.Exec(ctx, "rollback").ReadAll(); err != nil {
			t.Fatal(err)
		}
		waitParked(t, p, 1)
	})
}

// TestRelayIdleTimeoutWhileParked: client_idle_timeout ends a parked
// client with FATAL 57P05, on time.
func TestRelayIdleTimeoutWhileParked(t *testing.T) {
	forModes(t, func(t *testing.T, mode PoolMode) {
		const timeout = 400 * time.Millisecond
		p := relayProxy(t, mode, 2, func(c *Config) {
			for _, db := range c.Databases {
				db.Pool.ClientIdleTimeout = timeout
			}
		})
		c := openClients(t, p, 1)[0]
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if _, err := queryOne(ctx, c, "select 1"); err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		waitParked(t, p, 1)
		for p.ClientCount() != 0 {
			if time.Since(start) > 10*time.Second {
				t.Fatal("idle client not ended")
			}
			time.Sleep(5 * time.Millisecond)
		}
		if took := time.Since(start); took < timeout-50*time.Millisecond {
			t.Fatalf("ended after %v, before client_idle_timeout %v", took, timeout)
		}
		_, err := queryOne(ctx, c, "select 1")
		wantPgError(t, err, "FATAL", wire.CodeIdleSessionTimeout, "")
	})
}

// TestRelayKillWhileParked: KILL reaches parked clients with 57P01.
func TestRelayKillWhileParked(t *testing.T) {
	forModes(t, func(t *testing.T, mode PoolMode) {
		p := relayProxy(t, mode, 3, nil)
		conns := openClients(t, p, 3)
		waitParked(t, p, 3)
		if n := p.Kill("postgres"); n != 3 {
			t.Fatalf("KILL ended %d sessions, want 3", n)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		for _, c := range conns {
			_, err := queryOne(ctx, c, "select 1")
			wantPgError(t, err, "FATAL", wire.CodeAdminShutdown, "")
		}
		waitNoClients(t, p)
	})
}

func waitNoClients(t *testing.T, p *Proxy) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for p.ClientCount() != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%d clients left", p.ClientCount())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestRelayShutdownWhileParked: Shutdown ends parked clients with 57P01
// and returns once they are gone; a client inside a transaction finishes
// it first.
func TestRelayShutdownWhileParked(t *testing.T) {
	forModes(t, func(t *testing.T, mode PoolMode) {
		p := relayProxy(t, mode, 4, nil)
		conns := openClients(t, p, 3)
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if _, err := conns[0].Exec(ctx, "begin; select 1").ReadAll(); err != nil {
			t.Fatal(err)
		}
		waitParked(t, p, 2)
		// A drain spares sessions younger than drainNewSessionGrace
		// (drain.go; TestDrain covers that): these must be older, so
		// their next statement gets 57P01. The wait is the rule under
		// test, not synchronisation.
		time.Sleep(drainNewSessionGrace)
		done := make(chan struct{})
		go func() { defer close(done); p.Shutdown(ctx) }()
		// The statements below must come after Shutdown began: sent
		// before, they are answered as usual (seen under load, when the
		// Shutdown goroutine had not run yet).
		testutil.Eventually(t, 5*time.Second, "Shutdown to begin", p.draining.Load)
		for _, c := range conns[1:] {
			_, err := queryOne(ctx, c, "select 1")
			wantPgError(t, err, "FATAL", wire.CodeAdminShutdown, "")
		}
		if _, err := queryOne(ctx, conns[0], "select 2"); err != nil {
			t.Fatalf("client in a transaction cut by Shutdown: %v", err)
		}
		if _, err := conns[0].Exec(ctx, "commit").ReadAll(); err != nil {
			t.Fatal(err)
		}
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Fatal("Shutdown did not return")
		}
		if n := p.ClientCount(); n != 0 {
			t.Fatalf("%d clients left after Shutdown", n)
		}
	})
}

// TestRelaySessionAsyncWhileParked: in session mode, what the server sends
// while the client is parked (a NotificationResponse) reaches the client
// at once, and a server that dies while the client is parked ends the
// client with 08006.
func TestRelaySessionAsyncWhileParked(t *testing.T) {
	p := relayProxy(t, SessionMode, 3, nil)
	other := openClients(t, p, 1)[0]
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cfg, err := pgconn.ParseConfig(proxyDSN(p, "", ""))
	if err != nil {
		t.Fatal(err)
	}
	notes := make(chan string, 4)
	cfg.OnNotification = func(_ *pgconn.PgConn, n *pgconn.Notification) { notes <- n.Channel + ":" + n.Payload }
	listener, err := pgconn.ConnectConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { listener.Close(context.Background()) })
	if _, err := listener.Exec(ctx, "listen relay_chan").ReadAll(); err != nil {
		t.Fatal(err)
	}
	pid, err := queryOne(ctx, listener, "select pg_backend_pid()")
	if err != nil {
		t.Fatal(err)
	}
	waitParked(t, p, 2)
	if _, err := other.Exec(ctx, "notify relay_chan, 'hello'").ReadAll(); err != nil {
		t.Fatal(err)
	}
	// The notification arrives only if the proxy relays it while
	// the listener sends nothing.
	wctx, wcancel := context.WithTimeout(ctx, 5*time.Second)
	defer wcancel()
	if err := listener.WaitForNotification(wctx); err != nil {
		t.Fatal(err)
	}
	if n := <-notes; n != "relay_chan:hello" {
		t.Fatalf("notification %q", n)
	}
	waitParked(t, p, 2)
	if _, err := other.Exec(ctx, "select pg_terminate_backend("+pid+")").ReadAll(); err != nil {
		t.Fatal(err)
	}
	_, err = queryOne(ctx, listener, "select 1")
	if err == nil {
		t.Fatal("query on a terminated server succeeded")
	}
	if _, err := queryOne(ctx, other, "select 1"); err != nil {
		t.Fatalf("other client: %v", err)
	}
}

// TestRelayClientGoneWhileParked: a client that closes its socket while
// parked ends its session at once; in session mode its server goes back
// to the pool (reset), in transaction mode nothing was held.
func TestRelayClientGoneWhileParked(t *testing.T) {
	forModes(t, func(t *testing.T, mode PoolMode) {
		p := relayProxy(t, mode, 2, nil)
		conns := openClients(t, p, 2)
		waitParked(t, p, 2)
		for _, c := range conns {
			// Close the socket without a Terminate, as a crashed client.
			_ = c.Conn().Close()
		}
		waitNoClients(t, p)
		var idle, active int
		for _, st := range p.PoolStats() {
			idle += st.ServersIdle
			active += st.ServersActive
		}
		if active != 0 {
			t.Fatalf("%d server connections still active", active)
		}
		if mode == SessionMode && idle != 2 {
			t.Fatalf("%d idle server connections, want the 2 released", idle)
		}
		c := openClients(t, p, 1)[0]
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if _, err := queryOne(ctx, c, "select 1"); err != nil {
			t.Fatal(err)
		}
	})
}

// TestRelayManyParked: 1000 clients park, then all send a query at once.
func TestRelayManyParked(t *testing.T) {
	const n = 1000
	p := relayProxy(t, TransactionMode, 5, func(c *Config) { c.MaxClientConn = 2 * n })
	conns := openClients(t, p, n)
	waitParked(t, p, n)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			got, err := queryOne(ctx, c, fmt.Sprintf("select %d", i))
			if err == nil && got != fmt.Sprint(i) {
				err = fmt.Errorf("client %d got %s", i, got)
			}
			if err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	waitParked(t, p, n)
}

// TestRelayKillBeforeFirstMessage: KILL reaches clients that logged in
// and have sent nothing yet (they wait for their first
// message without buffers, wire.Conn.WaitReadable, and the FATAL is
// written meanwhile); they are not parked (relay_park_after is long).
func TestRelayKillBeforeFirstMessage(t *testing.T) {
	forModes(t, func(t *testing.T, mode PoolMode) {
		p := relayProxy(t, mode, 3, func(c *Config) { c.RelayParkAfter = time.Minute })
		conns := openClients(t, p, 3)
		// A client gets its ReadyForQuery just before its session is
		// registered (login).
		deadline := time.Now().Add(10 * time.Second)
		for len(p.Clients()) != 3 && time.Now().Before(deadline) {
			time.Sleep(time.Millisecond)
		}
		if n := p.ParkedClients(); n != 0 {
			t.Fatalf("%d clients parked, want none before relay_park_after", n)
		}
		if n := p.Kill("postgres"); n != 3 {
			t.Fatalf("KILL ended %d sessions, want 3", n)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		for _, c := range conns {
			_, err := queryOne(ctx, c, "select 1")
			wantPgError(t, err, "FATAL", wire.CodeAdminShutdown, "")
		}
		waitNoClients(t, p)
	})
}

// TestRelayTLSNotParked: a TLS session (its state lives in crypto/tls)
// stays on its goroutine however long it is idle, while a plain session
// next to it parks; both answer afterwards.
func TestRelayTLSNotParked(t *testing.T) {
	forModes(t, func(t *testing.T, mode PoolMode) {
		cert := selfSignedTLS(t)
		p := relayProxy(t, mode, 3, func(c *Config) { c.TLS, c.ClientTLS = cert, "allow" })
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		tc := connectTLS(t, p, "")
		t.Cleanup(func() { tc.Close(context.Background()) })
		plain := openClients(t, p, 1)[0]
		for _, c := range []*pgconn.PgConn{tc, plain} {
			if _, err := queryOne(ctx, c, "select 1"); err != nil {
				t.Fatal(err)
			}
		}
		waitParked(t, p, 1)
		time.Sleep(20 * *relayParkAfter)
		if n := p.ParkedClients(); n != 1 {
			t.Fatalf("%d clients parked, want only the plain one", n)
		}
		for i, c := range []*pgconn.PgConn{tc, plain} {
			got, err := queryOne(ctx, c, fmt.Sprintf("select %d", i))
			if err != nil || got != fmt.Sprint(i) {
				t.Fatalf("client %d after the idle time: %q, %v", i, got, err)
			}
		}
	})
}

// TestRelayParkWhileReaderReleases: a pipelined client in transaction mode
// gets a background reader. After the last reply the reader detaches the
// server and then, with no lock held, releases it; in between the client
// goroutine sees the session idle (no server, no reader) and may park it,
// which drops the session's busy state. The reader must not touch that
// state afterwards: it did (flushStats on a nil busyState panicked with
// s.mu held, and the reader's panic handler then deadlocked on s.mu,
// hanging the session, KILL and shutdown). The hook holds the reader in
// that window until the session has parked.
func TestRelayParkWhileReaderReleases(t *testing.T) {
	p := testProxy(t, withMode(TransactionMode, 2))
	var parkedInWindow atomic.Int32
	hook := func(s *Session) {
		if s.proxy != p {
			return // another test's proxy
		}
		deadline := time.Now().Add(5 * time.Second)
		for s.parkState.Load() != parkParked && time.Now().Before(deadline) {
			time.Sleep(time.Millisecond)
		}
		if s.parkState.Load() == parkParked {
			parkedInWindow.Add(1)
		}
	}
	testHookReaderReleased.Store(&hook)
	t.Cleanup(func() { testHookReaderReleased.Store(nil) })

	c := dialWire(t, p.Addr().String(), nil)
	before := poolQueries(p)
	// Two Queries in one write: the second is buffered when the first
	// is sent, so the replies go through the background reader.
	c.send(&pgproto3.Query{String: "select 1"}, &pgproto3.Query{String: "select 2"})
	if st := c.recvRFQ(2); st != 'I' {
		t.Fatalf("status %c after the pipelined queries", st)
	}
	testutil.Eventually(t, 10*time.Second, "the session parked while the reader held the released server", func() bool {
		return parkedInWindow.Load() > 0
	})
	// The session resumes and serves the next query, and the pool counted
	// every query once.
	if st := c.query("select 3"); st != 'I' {
		t.Fatalf("status %c after a query once parked", st)
	}
	testutil.Eventually(t, 5*time.Second, "3 queries counted", func() bool { return poolQueries(p)-before == 3 })
}

// poolQueries sums the query counts of p's pools.
func poolQueries(p *Proxy) int64 {
	var n int64
	for _, st := range p.PoolStats() {
		n += st.Queries
	}
	return n
}
