package pooler

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/binary"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/rs/zerolog"

	"github.com/pgaudit-proxy/pgaudit/wire"
)

// Users of FuzzStartupAuth: alice has a plain-text password, "user" the
// SCRAM verifier of RFC 7677 (password "pencil").
const fuzzUsers = `"alice" "secret"
"user" "SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY=:wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dU="
`

var fuzzFixture struct {
	once  sync.Once
	users *wire.Users
	tls   *tls.Config
}

// fuzzMethods are the auth_type values FuzzStartupAuth picks from.
var fuzzMethods = [4]string{wire.AuthTrust, wire.AuthPassword, wire.AuthMD5, wire.AuthSCRAM}

// fuzzLog records whether anything was logged that means the fuzz input
// got somewhere it must not.
type fuzzLog struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *fuzzLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *fuzzLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// frontend encodes client messages into one byte stream.
func frontend(msgs ...pgproto3.FrontendMessage) []byte {
	var out []byte
	for _, m := range msgs {
		var err error
		if out, err = m.Encode(out); err != nil {
			panic(err)
		}
	}
	return out
}

func fuzzStartup(params ...string) []byte {
	m := map[string]string{}
	for i := 0; i+1 < len(params); i += 2 {
		m[params[i]] = params[i+1]
	}
	return frontend(&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersion30, Parameters: m})
}

// fuzzConn is a client connection that delivers in, chunk bytes per read
// at most (all when 0), and then EOF, as a client that sent its bytes and
// shut down its side of a TCP connection; what the proxy writes is kept.
type fuzzConn struct {
	mu     sync.Mutex
	in     []byte
	chunk  int
	out    bytes.Buffer
	closed bool
}

var fuzzAddr = &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 40000}

func (c *fuzzConn) Read(b []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	switch {
	case c.closed:
		return 0, net.ErrClosed
	case len(c.in) == 0:
		return 0, io.EOF
	}
	if c.chunk > 0 && len(b) > c.chunk {
		b = b[:c.chunk]
	}
	n := copy(b, c.in)
	c.in = c.in[n:]
	return n, nil
}

func (c *fuzzConn) Write(b []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return 0, net.ErrClosed
	}
	return c.out.Write(b)
}

func (c *fuzzConn) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.closed = true
	return nil
}

func (c *fuzzConn) LocalAddr() net.Addr                { return fuzzAddr }
func (c *fuzzConn) RemoteAddr() net.Addr               { return fuzzAddr }
func (c *fuzzConn) SetDeadline(t time.Time) error      { return nil }
func (c *fuzzConn) SetReadDeadline(t time.Time) error  { return nil }
func (c *fuzzConn) SetWriteDeadline(t time.Time) error { return nil }

// FuzzStartupAuth drives the proxy's client side, from the first byte
// through SSLRequest/GSSENCRequest/CancelRequest negotiation, the
// StartupMessage and the authentication exchange, with arbitrary bytes
// over an in-memory connection that ends in EOF. conf picks auth_type
// (bits 0-1), client TLS (bit 2: allow, bit 3: require), a 40 KiB budget
// for connections logging in (bit 4) and how many bytes each read returns
// (bits 5-7). No database is configured, so a client that authenticates ends with
// 3D000 and nothing needs a server.
//
// Whatever the input, the handler must not panic, must return once the
// client has closed, must give back its login slot, client count and
// buffer budget, and with md5 or SCRAM (whose challenges are random) must
// never let the client through.
func FuzzStartupAuth(f *testing.F) {
	ssl := binary.BigEndian.AppendUint32([]byte{0, 0, 0, 8}, 1234<<16|5679)
	gss := binary.BigEndian.AppendUint32([]byte{0, 0, 0, 8}, 1234<<16|5680)
	cancel := wire.AppendCancelRequest(nil, 1<<30+1, []byte{1, 2, 3, 4})
	alice := fuzzStartup("user", "alice", "database", "app")
	scram := fuzzStartup("user", "user", "database", "pgaudit")
	f.Add(uint8(0), append(fuzzStartup("user", "alice", "database", "app"), frontend(&pgproto3.Terminate{})...))
	f.Add(uint8(1), append(bytes.Clone(alice), frontend(&pgproto3.PasswordMessage{Password: "secret"})...))
	f.Add(uint8(1), append(bytes.Clone(alice), frontend(&pgproto3.PasswordMessage{Password: "wrong"})...))
	f.Add(uint8(2), append(bytes.Clone(alice), frontend(&pgproto3.PasswordMessage{Password: "md5" + strings.Repeat("0", 32)})...))
	f.Add(uint8(3), append(bytes.Clone(scram), frontend(
		&pgproto3.SASLInitialResponse{AuthMechanism: "SCRAM-SHA-256", Data: []byte("n,,n=user,r=rOprNGfwEbeRWgbNEkqO")},
		&pgproto3.SASLResponse{Data: []byte("c=biws,r=rOprNGfwEbeRWgbNEkqO,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=")})...))
	f.Add(uint8(3), append(bytes.Clone(scram), frontend(&pgproto3.SASLInitialResponse{AuthMechanism: "SCRAM-SHA-256-PLUS", Data: []byte("p=tls-server-end-point,,n=,r=x")})...))
	// Conf bits 5-7 = 4: 8 bytes per read, so that nothing follows an
	// SSLRequest in the buffer when it is answered.
	f.Add(uint8(4<<5), append(append(bytes.Clone(ssl), gss...), alice...))
	f.Add(uint8(4<<5|4), append(bytes.Clone(ssl), 0x16, 0x03, 0x01, 0x00, 0x05, 0x01, 0x00, 0x00, 0x01, 0x00))
	f.Add(uint8(4<<5|3), append(append(bytes.Clone(ssl), gss...), scram...))
	f.Add(uint8(8), bytes.Clone(alice)) // TLS required, plaintext startup
	f.Add(uint8(0), cancel)
	f.Add(uint8(0), fuzzStartup("user", "alice", "replication", "database"))
	f.Add(uint8(0), append(binary.BigEndian.AppendUint32([]byte{0, 0, 0, 23}, 3<<16|2), "user\x00alice\x00_pq_.x\x00\x00\x00"...))
	f.Add(uint8(17), append(bytes.Clone(alice), 'p', 0, 0, 0xff, 0xff, 'a', 'b')) // a 64 KiB password claimed
	// A 48 KiB SASL message, 34 KiB of it sent, with a 40 KiB budget.
	f.Add(uint8(19), append(append(bytes.Clone(scram), 'p', 0, 0, 0xc0, 0x00), bytes.Repeat([]byte{'x'}, 34<<10)...))
	f.Add(uint8(0), []byte{0, 0, 0x27, 0x11, 0, 3, 0, 0}) // startup over 10000 bytes
	f.Add(uint8(0), []byte("GET / HTTP/1.1\r\n\r\n"))

	f.Fuzz(func(t *testing.T, conf uint8, data []byte) {
		fuzzFixture.once.Do(func() {
			users, err := wire.ParseUsers(strings.NewReader(fuzzUsers), "fuzz users")
			if err != nil {
				panic(err)
			}
			fuzzFixture.users, fuzzFixture.tls = users, selfSignedTLS(t)
		})
		method := fuzzMethods[conf&3]
		var logs fuzzLog
		cfg := &Config{
			Databases:          map[string]*Database{},
			AuthType:           method,
			Users:              fuzzFixture.users,
			ClientTLS:          "disable",
			ClientLoginTimeout: 5 * time.Second,
			MaxClientConn:      1,
		}
		if conf&4 != 0 {
			cfg.TLS, cfg.ClientTLS = fuzzFixture.tls, "allow"
		}
		if conf&8 != 0 {
			cfg.TLS, cfg.ClientTLS = fuzzFixture.tls, "require"
		}
		p := New(cfg, nil, zerolog.New(&logs).Level(zerolog.WarnLevel))
		if conf&16 != 0 {
			p.loginBudget.SetLimit(40 << 10)
		}
		nc := &fuzzConn{in: data}
		if k := conf >> 5; k > 0 {
			nc.chunk = 1 << (k - 1) // 1 to 64 bytes per read
		}
		p.wg.Add(1)
		done := make(chan struct{})
		go func() {
			defer close(done)
			p.handleConn(context.Background(), nc)
		}()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Fatal("the handler did not return after the client's input ended")
		}
		out := logs.String()
		if strings.Contains(out, "panic") {
			t.Fatalf("panic in the handler:\n%s", out)
		}
		if (method == wire.AuthMD5 || method == wire.AuthSCRAM) && strings.Contains(out, "3D000") {
			t.Fatalf("a client got past %s authentication:\n%s", method, out)
		}
		if strings.Contains(out, "exceed the budget") && !bytes.Contains(nc.out.Bytes(), []byte("53200")) {
			t.Fatalf("over client_buffer_budget without FATAL 53200 to the client:\n%s", out)
		}
		if !nc.closed {
			t.Fatal("the handler returned without closing the connection")
		}
		if n, l, a, b, lb := p.ClientCount(), p.LoginCount(), p.authed.Load(), p.BufferedClientBytes(), p.loginBudget.Used(); n != 0 || l != 0 || a != 0 || b != 0 || lb != 0 {
			t.Fatalf("after the connection: %d clients, %d logging in, %d authenticated, %d+%d bytes charged", n, l, a, b, lb)
		}
	})
}
