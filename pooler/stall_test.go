package pooler

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgaudit-proxy/pgaudit/internal/testutil"
)

// hugeQuery returns about 600 MB: far more than the socket buffers between
// Postgres, the proxy and a client hold.
const hugeQuery = "SELECT repeat('x', 1000000) FROM generate_series(1, 600)"

// stallClient logs in to addr with a raw connection, sends hugeQuery and
// never reads the reply. It returns the connection.
func stallClient(t testing.TB, addr string) net.Conn {
	t.Helper()
	c := dialWire(t, addr, map[string]string{"application_name": "stalled"})
	c.send(&pgproto3.Query{String: hugeQuery})
	return c.nc
}

// stallClientTLS is stallClient over TLS (sslmode=require): the proxy's
// writes then go through crypto/tls, not raw socket calls.
func stallClientTLS(t testing.TB, p *Proxy) net.Conn {
	t.Helper()
	conn := connectTLS(t, p, "&application_name=stalled")
	hc, err := conn.Hijack()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = hc.Conn.Close() })
	if _, ok := hc.Conn.(*tls.Conn); !ok {
		t.Fatalf("not a TLS connection: %T", hc.Conn)
	}
	q, _ := (&pgproto3.Query{String: hugeQuery}).Encode(nil)
	if _, err := hc.Conn.Write(q); err != nil {
		t.Fatal(err)
	}
	return hc.Conn
}

// connectTLS opens a client to p with sslmode=require (extra: more DSN
// parameters) and fails the test unless it got a TLS connection; the
// caller closes (or hijacks) it.
func connectTLS(t testing.TB, p *Proxy, extra string) *pgconn.PgConn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	dsn := strings.Replace(proxyDSN(p, "", extra), "sslmode=disable", "sslmode=require", 1)
	conn, err := pgconn.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := conn.Conn().(*tls.Conn); !ok {
		conn.Close(context.Background())
		t.Fatalf("sslmode=require client is not on TLS: %T", conn.Conn())
	}
	return conn
}

// stalledBackend waits until the backend running hugeQuery is blocked
// sending to its client (the proxy, which stopped reading because its own
// client does not read) and returns its PID.
func stalledBackend(t testing.TB, direct *pgconn.PgConn) string {
	t.Helper()
	return testutil.BlockedOnClientWrite(t, direct, hugeQuery)
}

// backendGone waits until the backend with pid has ended.
func backendGone(t *testing.T, direct *pgconn.PgConn, pid string) {
	t.Helper()
	testutil.Eventually(t, 10*time.Second, "the backend to end", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		res, err := direct.Exec(ctx, "select count(*) from pg_stat_activity where pid = "+pid).ReadAll()
		return err == nil && string(res[0].Rows[0][0]) == "0"
	})
}

// drainToEOF reads nc until the proxy closes it, and fails if it does not
// within d.
func drainToEOF(t testing.TB, nc net.Conn, d time.Duration) int64 {
	t.Helper()
	_ = nc.SetReadDeadline(time.Now().Add(d))
	n, err := io.Copy(io.Discard, nc)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("connection still open after %s (%d bytes read)", d, n)
	}
	return n
}

// timed runs f and returns how long it took; f must finish within 5 s.
func timed(t testing.TB, what string, f func()) time.Duration {
	t.Helper()
	done := make(chan struct{})
	start := time.Now()
	go func() { defer close(done); f() }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatalf("%s blocked for 5 s behind a client that does not read", what)
	}
	return time.Since(start)
}

// TestClientNotReading (issue 12, hole 6): a client that asks for a huge
// result and never reads it blocks its relay in a write. Meanwhile the
// proxy's introspection (Clients, Servers, PoolStats), a cancel (as
// query_timeout and CancelRequest send it) and other clients go on, and
// after client_write_timeout the client is dropped and its server
// connection destroyed: the backend, blocked sending the result, ends.
func TestClientNotReading(t *testing.T) {
	cert := selfSignedTLS(t)
	for _, tc := range []struct {
		mode PoolMode
		tls  bool
	}{{SessionMode, false}, {TransactionMode, false}, {TransactionMode, true}} {
		mode := tc.mode
		name := string(mode)
		if tc.tls {
			name += "-tls"
		}
		t.Run(name, func(t *testing.T) {
			const writeTimeout = 1500 * time.Millisecond
			p := testProxy(t, func(c *Config) {
				withMode(mode, 2)(c)
				for _, db := range c.Databases {
					db.Pool.ClientWriteTimeout = writeTimeout
				}
				if tc.tls {
					c.TLS, c.ClientTLS = cert, "allow"
				}
			})
			direct := directConn(t)
			start := time.Now()
			var nc net.Conn
			if tc.tls {
				nc = stallClientTLS(t, p)
			} else {
				nc = stallClient(t, p.Addr().String())
			}
			pid := stalledBackend(t, direct)

			var clients []ClientInfo
			timed(t, "Clients", func() { clients = p.Clients() })
			if len(clients) != 1 || clients[0].State != "active" || clients[0].ApplicationName != "stalled" {
				t.Errorf("Clients() = %+v, want the stalled client, active", clients)
			}
			var servers []ServerInfo
			timed(t, "Servers", func() { servers = p.Servers() })
			listed := false
			for _, s := range servers {
				listed = listed || fmt.Sprint(s.PID) == pid && s.State == "active" && s.SessionID == clients[0].SessionID
			}
			if !listed {
				t.Errorf("Servers() = %+v, want the stalled client's server (pid %s) active", servers, pid)
			}
			timed(t, "PoolStats", func() { _ = p.PoolStats() })
			timed(t, "cancel", func() {
				for _, s := range p.sessionList() {
					s.cancel()
				}
			})
			// Another client is served meanwhile.
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			other := connect(t, ctx, proxyDSN(p, "", ""), pgx.QueryExecModeSimpleProtocol)
			if got := queryString(t, ctx, other, "select 'served'"); got != "served" {
				t.Fatal(got)
			}
			other.Close(ctx)

			// client_write_timeout: dropped, and the server connection
			// destroyed (not returned to the pool mid-result).
			testutil.Eventually(t, writeTimeout+5*time.Second, "the stalled client to be dropped", func() bool { return len(p.Clients()) == 0 })
			if el := time.Since(start); el < writeTimeout {
				t.Errorf("client dropped after %s, before client_write_timeout (%s)", el, writeTimeout)
			}
			backendGone(t, direct, pid)
			n := drainToEOF(t, nc, 10*time.Second)
			if n >= 600*1000000 {
				t.Errorf("the client got the whole result (%d bytes)", n)
			}
			for _, s := range p.Servers() {
				if fmt.Sprint(s.PID) == pid {
					t.Errorf("server %+v still listed after client_write_timeout", s)
				}
			}
			// The pool serves new clients.
			again := connect(t, ctx, proxyDSN(p, "", ""), pgx.QueryExecModeSimpleProtocol)
			if got := queryString(t, ctx, again, "select 'again'"); got != "again" {
				t.Fatal(got)
			}
		})
	}
}
