package pooler

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgaudit-proxy/pgaudit/internal/testutil"
)

// expectClosed reads from nc until the peer closes it, failing if that
// takes longer than a few seconds. It returns what was read.
func expectClosed(t testing.TB, nc net.Conn) []byte {
	t.Helper()
	_ = nc.SetReadDeadline(time.Now().Add(5 * time.Second))
	b, err := io.ReadAll(nc)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("connection not closed within 5s (read %q)", b)
	}
	return b
}

// readErrorAndClose expects at most one ErrorResponse and then the
// connection closed; it returns the error (nil when nothing was sent).
func readErrorAndClose(t testing.TB, nc net.Conn) *pgproto3.ErrorResponse {
	t.Helper()
	b := expectClosed(t, nc)
	if len(b) == 0 {
		return nil
	}
	if b[0] != 'E' || len(b) < 5 || int(binary.BigEndian.Uint32(b[1:5]))+1 != len(b) {
		t.Fatalf("want one ErrorResponse before the close, got %q", b)
	}
	var er pgproto3.ErrorResponse
	if err := er.Decode(b[5:]); err != nil {
		t.Fatal(err)
	}
	return &er
}

// wantFatal checks er is a FATAL error with code.
func wantFatal(t testing.TB, er *pgproto3.ErrorResponse, code string) {
	t.Helper()
	if er == nil {
		t.Fatalf("connection closed without an ErrorResponse, want FATAL %s", code)
	}
	if er.Severity != "FATAL" || er.Code != code {
		t.Fatalf("got %s %s %q, want FATAL %s", er.Severity, er.Code, er.Message, code)
	}
}

// proxyServes checks that a normal client still works and that no client
// is left registered.
func proxyServes(t testing.TB, p *Proxy) {
	t.Helper()
	if err := connectErr(t, proxyDSN(p, "", "")); err != nil {
		t.Fatalf("proxy no longer serves clients: %v", err)
	}
	if !testutil.Within(3*time.Second, func() bool { return p.ClientCount() <= 0 }) {
		t.Fatalf("%d clients still registered", p.ClientCount())
	}
}

func startupBytes(version uint32, params ...string) []byte {
	b := []byte{0, 0, 0, 0}
	b = binary.BigEndian.AppendUint32(b, version)
	for _, p := range params {
		b = append(b, p...)
		b = append(b, 0)
	}
	b = append(b, 0)
	binary.BigEndian.PutUint32(b, uint32(len(b)))
	return b
}

func TestBadStartup(t *testing.T) {
	p := testProxy(t, nil)
	cases := []struct {
		name  string
		input []byte
		code  string // expected FATAL code, "" when a silent close is fine
	}{
		{"http", []byte("GET / HTTP/1.1\r\nHost: example\r\n\r\n"), ""},
		{"tls-client-hello", []byte{0x16, 0x03, 0x01, 0x00, 0xa5, 0x01, 0x00, 0x00, 0xa1, 0x03, 0x03}, ""},
		{"length-too-small", []byte{0, 0, 0, 2, 0, 0, 0, 0}, ""},
		{"length-too-large", append([]byte{0, 0, 0x4e, 0x21}, make([]byte, 64)...), ""},
		{"negative-length", []byte{0xff, 0xff, 0xff, 0xf0, 0, 3, 0, 0}, ""},
		{"no-user", startupBytes(3<<16, "database", "postgres"), "08P01"},
		{"unterminated", func() []byte { b := startupBytes(3<<16, "user", "postgres"); return b[:len(b)-1] }(), ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			nc := dialRaw(t, p.Addr().String())
			_ = nc.SetWriteDeadline(time.Now().Add(wireTimeout))
			if _, err := nc.Write(tc.input); err != nil {
				t.Fatal(err)
			}
			if tc.name == "unterminated" {
				// The length covers one more byte than was sent: the proxy
				// waits for it until the client goes away.
				_ = nc.(*net.TCPConn).CloseWrite()
			}
			er := readErrorAndClose(t, nc)
			if tc.code != "" {
				wantFatal(t, er, tc.code)
			} else if er != nil && er.Severity != "FATAL" {
				t.Errorf("got %s %s %q", er.Severity, er.Code, er.Message)
			}
			proxyServes(t, p)
		})
	}
	t.Run("truncated-then-close", func(t *testing.T) {
		nc := dialRaw(t, p.Addr().String())
		b := startupBytes(3<<16, "user", "postgres", "database", "postgres")
		if _, err := nc.Write(b[:len(b)/2]); err != nil {
			t.Fatal(err)
		}
		time.Sleep(50 * time.Millisecond) // deliberate: hang up after the proxy has read part of the message
		nc.Close()
		proxyServes(t, p)
	})
}

// TestProtocolVersions compares the proxy's answers to unusual protocol
// versions with Postgres's.
func TestProtocolVersions(t *testing.T) {
	p := testProxy(t, nil)
	// first reads the first message after sending startup.
	first := func(addr string, startup []byte) (pgproto3.BackendMessage, *wireConn) {
		nc := dialRaw(t, addr)
		_ = nc.SetWriteDeadline(time.Now().Add(wireTimeout))
		if _, err := nc.Write(startup); err != nil {
			t.Fatal(err)
		}
		c := newWireConn(t, nc)
		m, err := c.receive()
		if err != nil {
			t.Fatalf("%s: %v", addr, err)
		}
		return m, c
	}
	t.Run("3.2", func(t *testing.T) {
		startup := startupBytes(3<<16|2, "user", "postgres", "database", "postgres", "_pq_.pgaudit_test", "1")
		dm, dc := first(directAddr(), startup)
		want := transcriptLine(dm)
		if err := dc.readStartup(); err != nil {
			t.Fatal(err)
		}
		pm, pc := first(p.Addr().String(), startup)
		if got := transcriptLine(pm); got != want {
			t.Errorf("answer to a 3.2 StartupMessage:\nproxy:  %s\ndirect: %s", got, want)
		}
		if err := pc.readStartup(); err != nil {
			t.Fatalf("login after NegotiateProtocolVersion: %v", err)
		}
		if st := pc.query("select 1"); st != 'I' {
			t.Errorf("status %q", st)
		}
		if len(pc.key) != 4 {
			t.Errorf("BackendKeyData key of %d bytes after negotiating 3.0", len(pc.key))
		}
		pc.terminate()
		dc.terminate()
	})
	t.Run("2.0", func(t *testing.T) {
		// Postgres answers a protocol 2 client in protocol 2: 'E' and a
		// NUL-terminated text. A version-3 ErrorResponse is acceptable
		// from the proxy as long as it refuses and closes.
		startup := startupBytes(2<<16, "user", "postgres", "database", "postgres")
		for _, addr := range []string{directAddr(), p.Addr().String()} {
			nc := dialRaw(t, addr)
			if _, err := nc.Write(startup); err != nil {
				t.Fatal(err)
			}
			b := expectClosed(t, nc)
			if len(b) == 0 || b[0] != 'E' || !strings.Contains(string(b), "unsupported frontend protocol 2.0") {
				t.Errorf("%s answered %q", addr, b)
			}
		}
		proxyServes(t, p)
	})
	for _, v := range []struct {
		name    string
		version uint32
	}{{"4.0", 4 << 16}, {"1234.5681", 1234<<16 | 5681}} {
		t.Run(v.name, func(t *testing.T) {
			startup := startupBytes(v.version, "user", "postgres", "database", "postgres")
			dm, _ := first(directAddr(), startup)
			pm, pc := first(p.Addr().String(), startup)
			de, ok1 := dm.(*pgproto3.ErrorResponse)
			pe, ok2 := pm.(*pgproto3.ErrorResponse)
			if !ok1 || !ok2 {
				t.Fatalf("want ErrorResponses; direct %s, proxy %s", transcriptLine(dm), transcriptLine(pm))
			}
			if pe.Severity != de.Severity || pe.Code != de.Code {
				t.Errorf("proxy %s %s %q; direct %s %s %q", pe.Severity, pe.Code, pe.Message, de.Severity, de.Code, de.Message)
			}
			if prefix := "unsupported frontend protocol " + v.name; !strings.HasPrefix(pe.Message, prefix) {
				t.Errorf("proxy message %q; direct %q", pe.Message, de.Message)
			}
			expectClosed(t, pc.nc)
			proxyServes(t, p)
		})
	}
}

// TestBadMessagesAfterLogin: protocol violations after login end the
// session with FATAL 08P01 and leave the proxy and its pool healthy.
func TestBadMessagesAfterLogin(t *testing.T) {
	for _, mode := range []PoolMode{SessionMode, TransactionMode} {
		t.Run(string(mode), func(t *testing.T) {
			p := testProxy(t, func(c *Config) {
				withMode(mode, 2)(c)
				c.MaxMessageSize = 1 << 20
			})
			addr := p.Addr().String()

			t.Run("unknown-type", func(t *testing.T) {
				// Postgres's own answer is the reference.
				var want *pgproto3.ErrorResponse
				for _, target := range []string{directAddr(), addr} {
					c := dialWire(t, target, nil)
					if _, err := c.nc.Write([]byte{'z', 0, 0, 0, 4}); err != nil {
						t.Fatal(err)
					}
					er := readErrorAndClose(t, c.nc)
					wantFatal(t, er, "08P01")
					if want == nil {
						want = er
					} else if er.Message != want.Message {
						t.Errorf("proxy %q, direct %q", er.Message, want.Message)
					}
				}
				proxyServes(t, p)
			})

			t.Run("oversize", func(t *testing.T) {
				c := dialWire(t, addr, nil)
				// Below the limit works.
				if st := c.query("select length('" + strings.Repeat("a", 512<<10) + "')"); st != 'I' {
					t.Fatalf("status %q", st)
				}
				q, _ := (&pgproto3.Query{String: strings.Repeat("a", 2<<20)}).Encode(nil)
				werr := make(chan error, 1)
				go func() {
					_ = c.nc.SetWriteDeadline(time.Now().Add(wireTimeout))
					_, err := c.nc.Write(q)
					werr <- err
				}()
				wantFatal(t, readErrorAndClose(t, c.nc), "08P01")
				<-werr // the write may fail: the proxy stopped reading
				proxyServes(t, p)
				waitPool(t, p, 2*time.Second, "after the oversize message", func(active, _ int) bool { return active == 0 })
			})

			t.Run("oversize-in-transaction", func(t *testing.T) {
				c := dialWire(t, addr, nil)
				c.query("begin")
				hdr := []byte{'Q', 0, 0, 0, 0}
				binary.BigEndian.PutUint32(hdr[1:], 2<<20)
				if _, err := c.nc.Write(hdr); err != nil {
					t.Fatal(err)
				}
				wantFatal(t, readErrorAndClose(t, c.nc), "08P01")
				waitPool(t, p, 2*time.Second, "after the oversize message", func(active, _ int) bool { return active == 0 })
				waitNoIdleInTransaction(t)
				proxyServes(t, p)
			})

			t.Run("invalid-length", func(t *testing.T) {
				c := dialWire(t, addr, nil)
				if _, err := c.nc.Write([]byte{'Q', 0, 0, 0, 3}); err != nil {
					t.Fatal(err)
				}
				wantFatal(t, readErrorAndClose(t, c.nc), "08P01")
				proxyServes(t, p)
			})

			t.Run("truncated-then-close", func(t *testing.T) {
				c := dialWire(t, addr, nil)
				c.query("begin")
				if _, err := c.nc.Write([]byte{'Q', 0, 0, 0, 100, 's', 'e', 'l', 'e', 'c', 't'}); err != nil {
					t.Fatal(err)
				}
				time.Sleep(50 * time.Millisecond) // deliberate: hang up after the proxy has read part of the message
				c.nc.Close()
				proxyServes(t, p)
				waitPool(t, p, 2*time.Second, "after the truncated message", func(active, _ int) bool { return active == 0 })
				waitNoIdleInTransaction(t)
			})
		})
	}
}

// TestLargeServerMessages: max message size bounds what clients send, not
// what the server answers; a row bigger than the limit reaches the client
// as it does directly.
func TestLargeServerMessages(t *testing.T) {
	p := testProxy(t, func(c *Config) { c.MaxMessageSize = 1 << 20 })
	c := dialWire(t, p.Addr().String(), nil)
	c.send(&pgproto3.Query{String: "select repeat('x', 2 << 20)"})
	m := c.recvUntil(func(m pgproto3.BackendMessage) bool {
		return isType[*pgproto3.ReadyForQuery](m) || isType[*pgproto3.ErrorResponse](m)
	})
	if er, ok := m.(*pgproto3.ErrorResponse); ok {
		t.Fatalf("a 2 MiB row with a 1 MiB client message limit: %s %s %q %q", er.Severity, er.Code, er.Message, er.Detail)
	}
}

// TestClientLoginTimeout: a client that does not finish logging in within
// client_login_timeout is dropped.
func TestClientLoginTimeout(t *testing.T) {
	p := testProxy(t, func(c *Config) {
		c.ClientLoginTimeout = 300 * time.Millisecond
		c.AuthType = "md5"
		c.Users = authUsers(t)
	})
	t.Run("silent", func(t *testing.T) {
		nc := dialRaw(t, p.Addr().String())
		start := time.Now()
		expectClosed(t, nc)
		if d := time.Since(start); d > 2*time.Second {
			t.Errorf("dropped after %v", d)
		}
	})
	t.Run("stalled-auth", func(t *testing.T) {
		nc := dialRaw(t, p.Addr().String())
		if _, err := nc.Write(startupBytes(3<<16, "user", plainUser, "database", "postgres")); err != nil {
			t.Fatal(err)
		}
		c := newWireConn(t, nc)
		m, err := c.receive()
		if err != nil {
			t.Fatal(err)
		}
		if _, ok := m.(*pgproto3.AuthenticationMD5Password); !ok {
			t.Fatalf("want AuthenticationMD5Password, got %s", transcriptLine(m))
		}
		start := time.Now()
		expectClosed(t, nc)
		if d := time.Since(start); d > 2*time.Second {
			t.Errorf("dropped after %v", d)
		}
	})
	t.Run("slow-but-in-time", func(t *testing.T) {
		// The timeout covers login only, not the session after it.
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		conn, err := pgconn.Connect(ctx, userDSN(p, plainUser, plainPW, ""))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close(ctx)
		time.Sleep(500 * time.Millisecond) // deliberate: outlive the login timeout
		if _, err := conn.Exec(ctx, "select 1").ReadAll(); err != nil {
			t.Fatalf("session after the login timeout passed: %v", err)
		}
	})
	if err := connectErr(t, userDSN(p, plainUser, plainPW, "")); err != nil {
		t.Fatalf("proxy no longer serves clients: %v", err)
	}
}

// TestMaxClientConn: with max_client_conn = 2 the third client gets 53300.
func TestMaxClientConn(t *testing.T) {
	p := testProxy(t, func(c *Config) { c.MaxClientConn = 2 })
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var conns []*pgconn.PgConn
	for i := 0; i < 2; i++ {
		conn, err := pgconn.Connect(ctx, proxyDSN(p, "", ""))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close(ctx)
		conns = append(conns, conn)
	}
	err := connectErr(t, proxyDSN(p, "", ""))
	wantPgError(t, err, "FATAL", "53300", "")
	// A full proxy refuses before authenticating: the first answer to the
	// StartupMessage is the error, not an authentication request (no SCRAM
	// or auth_query work is spent on a client that will be refused).
	raw := newWireConn(t, dialRaw(t, p.Addr().String()))
	raw.send(&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersion30,
		Parameters: map[string]string{"user": "nobody_at_all", "database": "postgres"}})
	if er, ok := raw.recv().(*pgproto3.ErrorResponse); !ok || er.Code != "53300" {
		t.Fatalf("a client over max_client_conn got %#v first, want ErrorResponse 53300", er)
	}
	// A CancelRequest is not a client: it still works at the limit.
	marker := fmt.Sprintf("at_limit_%d", time.Now().UnixNano())
	done := runAsync(conns[0], fmt.Sprintf("select pg_sleep(30) /* %s */", marker))
	waitActive(t, marker, done)
	if err := conns[0].CancelRequest(ctx); err != nil {
		t.Fatal(err)
	}
	select {
	case r := <-done:
		wantPgError(t, r.err, "ERROR", "57014", "")
	case <-time.After(5 * time.Second):
		t.Fatal("cancel at max_client_conn did not work")
	}
	// The rejected client does not count once gone; a place frees up when
	// a client leaves.
	conns[0].Close(ctx)
	testutil.Within(3*time.Second, func() bool { return p.ClientCount() <= 1 }) // checked below
	if err := connectErr(t, proxyDSN(p, "", "")); err != nil {
		t.Fatalf("after a client left: %v", err)
	}
	if _, err := conns[1].Exec(ctx, "select 1").ReadAll(); err != nil {
		t.Fatalf("connected client: %v", err)
	}
}

// TestCloseDropsClientsInStartup: Close must not wait for clients that are
// still in the startup or authentication phase.
func TestCloseDropsClientsInStartup(t *testing.T) {
	users := authUsers(t)
	p := testProxy(t, func(c *Config) {
		c.AuthType = "md5"
		c.Users = users
	})
	silent := dialRaw(t, p.Addr().String())
	inAuth := dialRaw(t, p.Addr().String())
	if _, err := inAuth.Write(startupBytes(3<<16, "user", plainUser, "database", "postgres")); err != nil {
		t.Fatal(err)
	}
	c := newWireConn(t, inAuth)
	if _, err := c.receive(); err != nil {
		t.Fatal(err)
	}
	testutil.Within(3*time.Second, func() bool { return p.ClientCount() >= 2 }) // checked below
	closed := make(chan struct{})
	go func() { _ = p.Close(); close(closed) }()
	select {
	case <-closed:
	case <-time.After(3 * time.Second):
		// Unblock Close so the test can end.
		silent.Close()
		inAuth.Close()
		<-closed
		t.Fatal("Close waited for clients that had not logged in (until client_login_timeout)")
	}
	expectClosed(t, silent)
	expectClosed(t, inAuth)
}
