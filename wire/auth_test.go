package wire

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/md5"
	"crypto/pbkdf2"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
)

// testSCRAMSecret builds a pg_authid SCRAM-SHA-256 secret for an ASCII
// password straight from RFC 5802, independently of the code under test.
func testSCRAMSecret(t *testing.T, password string, salt []byte) Secret {
	t.Helper()
	salted, err := pbkdf2.Key(sha256.New, password, salt, 4096, 32)
	if err != nil {
		t.Fatal(err)
	}
	mac := func(key []byte, msg string) []byte {
		m := hmac.New(sha256.New, key)
		m.Write([]byte(msg))
		return m.Sum(nil)
	}
	storedKey := sha256.Sum256(mac(salted, "Client Key"))
	serverKey := mac(salted, "Server Key")
	b64 := base64.StdEncoding.EncodeToString
	s, err := ParseSecret(fmt.Sprintf("SCRAM-SHA-256$4096:%s$%s:%s", b64(salt), b64(storedKey[:]), b64(serverKey)))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func mustSecret(t *testing.T, s string) Secret {
	t.Helper()
	secret, err := ParseSecret(s)
	if err != nil {
		t.Fatal(err)
	}
	return secret
}

// authServer accepts connections on a loopback listener and, for each,
// reads the startup packet, runs Authenticate and finishes the startup the
// way Postgres does. Authenticate's result for each connection is sent on
// results.
type authServer struct {
	addr    string
	results chan error
}

func startAuthServer(t *testing.T, method string, users *Users) *authServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &authServer{addr: ln.Addr().String(), results: make(chan error, 16)}
	done := make(chan struct{})
	t.Cleanup(func() {
		ln.Close()
		<-done
	})
	go func() {
		defer close(done)
		for {
			nc, err := ln.Accept()
			if err != nil {
				return
			}
			s.results <- serveAuth(nc, method, users)
		}
	}()
	return s
}

func serveAuth(nc net.Conn, method string, users *Users) error {
	defer nc.Close()
	_ = nc.SetDeadline(time.Now().Add(10 * time.Second))
	c := NewConn(nc, 0)
	body, err := c.R.ReadStartup()
	if err != nil {
		return fmt.Errorf("read startup: %w", err)
	}
	st, err := ParseStartup(body)
	if err != nil {
		return fmt.Errorf("parse startup: %w", err)
	}
	if st.Kind != StartupMessageKind {
		return fmt.Errorf("unexpected startup packet kind %d", st.Kind)
	}
	user := st.Get("user")
	secret, found := users.Lookup(user)
	authErr := Authenticate(c, method, user, secret, found)
	if authErr != nil {
		var we *Error
		if errors.As(authErr, &we) {
			if err := c.SendError(we); err != nil {
				return fmt.Errorf("send error: %w (after %w)", err, authErr)
			}
		}
		return authErr
	}
	var buf []byte
	for _, msg := range []pgproto3.BackendMessage{
		&pgproto3.AuthenticationOk{},
		&pgproto3.ParameterStatus{Name: "server_version", Value: "15.0"},
		&pgproto3.ParameterStatus{Name: "client_encoding", Value: "UTF8"},
		&pgproto3.ParameterStatus{Name: "standard_conforming_strings", Value: "on"},
		&pgproto3.BackendKeyData{ProcessID: 42, SecretKey: []byte{1, 2, 3, 4}},
		&pgproto3.ReadyForQuery{TxStatus: 'I'},
	} {
		if buf, err = msg.Encode(buf); err != nil {
			return err
		}
	}
	if err := c.WriteRaw(buf); err != nil {
		return err
	}
	if err := c.Flush(); err != nil {
		return err
	}
	// Wait for Terminate.
	if typ, _, err := c.R.ReadMessage(); err != nil || typ != 'X' {
		return fmt.Errorf("after startup: got %q, %v; want Terminate", typ, err)
	}
	return nil
}

// connect logs in with pgconn, the real client, and closes the connection.
func connect(t *testing.T, addr, user, password string) error {
	t.Helper()
	u := url.URL{
		Scheme:   "postgres",
		User:     url.UserPassword(user, password),
		Host:     addr,
		Path:     "/db",
		RawQuery: "sslmode=disable",
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pgconn.Connect(ctx, u.String())
	if err != nil {
		return err
	}
	return conn.Close(ctx)
}

func TestAuthenticateWithPgconn(t *testing.T) {
	users, err := LoadUsers(filepath.Join("testdata", "users.txt"))
	if err != nil {
		t.Fatal(err)
	}
	users = NewUsers(map[string]Secret{
		"plain":   mustSecret(t, "s3cret"),
		"unicode": mustSecret(t, "Ⅸ café"),
		"md5":     mustSecret(t, "md5"+md5hex("s3cret"+"md5")),
		"scram":   testSCRAMSecret(t, "s3cret", []byte("0123456789abcdef")),
		"alice":   users.m["alice"], // made by PostgreSQL 15, password "wonderland"
		"bob":     users.m["bob"],   // made by PostgreSQL 15 (md5), password "builder"
		"none":    {},
		`quo"te`:  mustSecret(t, "s3cret"),
	})

	tests := []struct {
		method, user, password string
		// wantCause is the reason the server records for a 28P01 failure;
		// nil means success.
		wantCause error
	}{
		{AuthTrust, "plain", "whatever", nil},
		{AuthTrust, "ghost", "", nil},

		{AuthPassword, "plain", "s3cret", nil},
		{AuthPassword, "plain", "wrong", errWrongPassword},
		{AuthPassword, "md5", "s3cret", nil},
		{AuthPassword, "md5", "wrong", errWrongPassword},
		{AuthPassword, "scram", "s3cret", nil},
		{AuthPassword, "scram", "wrong", errWrongPassword},
		{AuthPassword, "alice", "wonderland", nil},
		{AuthPassword, "none", "anything", errNoPassword},
		{AuthPassword, "ghost", "s3cret", errUnknownUser},

		{AuthMD5, "plain", "s3cret", nil},
		{AuthMD5, "plain", "wrong", errWrongPassword},
		{AuthMD5, "md5", "s3cret", nil},
		{AuthMD5, "md5", "wrong", errWrongPassword},
		{AuthMD5, "bob", "builder", nil},
		{AuthMD5, "bob", "wrong", errWrongPassword},
		// md5 cannot use a SCRAM secret: the server asks for SCRAM instead.
		{AuthMD5, "scram", "s3cret", nil},
		{AuthMD5, "scram", "wrong", errWrongPassword},
		{AuthMD5, "alice", "wonderland", nil},
		{AuthMD5, "none", "", errNoPassword},
		{AuthMD5, "ghost", "s3cret", errUnknownUser},

		{AuthSCRAM, "plain", "s3cret", nil},
		{AuthSCRAM, "plain", "wrong", errWrongPassword},
		{AuthSCRAM, "unicode", "Ⅸ café", nil},
		{AuthSCRAM, "scram", "s3cret", nil},
		{AuthSCRAM, "scram", "wrong", errWrongPassword},
		{AuthSCRAM, "alice", "wonderland", nil},
		{AuthSCRAM, "alice", "Wonderland", errWrongPassword},
		{AuthSCRAM, "md5", "s3cret", errNoSCRAMSecret},
		{AuthSCRAM, "none", "x", errNoPassword},
		{AuthSCRAM, "ghost", "s3cret", errUnknownUser},
		{AuthSCRAM, "ghost", "", errUnknownUser},
		{AuthSCRAM, `quo"te`, "s3cret", nil},
		{AuthSCRAM, `quo"te`, "wrong", errWrongPassword},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%s/%s/%s", tt.method, tt.user, tt.password), func(t *testing.T) {
			srv := startAuthServer(t, tt.method, users)
			clientErr := connect(t, srv.addr, tt.user, tt.password)
			serverErr := <-srv.results

			if tt.wantCause == nil {
				if clientErr != nil || serverErr != nil {
					t.Fatalf("client error = %v, server error = %v; want success", clientErr, serverErr)
				}
				return
			}
			var pgErr *pgconn.PgError
			if !errors.As(clientErr, &pgErr) {
				t.Fatalf("client error = %v (%T), want a *pgconn.PgError", clientErr, clientErr)
			}
			wantMsg := `password authentication failed for user "` + tt.user + `"`
			if pgErr.Severity != "FATAL" || pgErr.Code != "28P01" || pgErr.Message != wantMsg {
				t.Errorf("client got %s %s %q, want FATAL 28P01 %q", pgErr.Severity, pgErr.Code, pgErr.Message, wantMsg)
			}
			if !errors.Is(serverErr, tt.wantCause) {
				t.Errorf("server error = %v, want cause %v", serverErr, tt.wantCause)
			}
		})
	}
}

func md5hex(s string) string {
	sum := md5.Sum([]byte(s))
	return hex.EncodeToString(sum[:])
}

// connPair returns the two ends of a loopback TCP connection: the server
// end framed as a Conn, and the raw client end.
func connPair(t *testing.T) (*Conn, net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		nc, _ := ln.Accept()
		accepted <- nc
	}()
	client, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	server := <-accepted
	if server == nil {
		t.Fatal("accept failed")
	}
	deadline := time.Now().Add(10 * time.Second)
	_ = server.SetDeadline(deadline)
	_ = client.SetDeadline(deadline)
	t.Cleanup(func() {
		client.Close()
		server.Close()
	})
	return NewConn(server, 0), client
}

// scriptClient plays a client from raw messages: it reads the server's
// authentication request and answers with the next of replies, until the
// replies run out; then it either closes the connection (hangUp) or waits.
type scriptClient struct {
	t    *testing.T
	conn net.Conn
	r    *Reader
}

func newScriptClient(t *testing.T, conn net.Conn) *scriptClient {
	return &scriptClient{t: t, conn: conn, r: NewReader(conn, 0)}
}

// expect reads one message and decodes it into msg, which must have type
// typ.
func (c *scriptClient) expect(msg pgproto3.BackendMessage) {
	c.t.Helper()
	typ, raw, err := c.r.ReadMessage()
	if err != nil {
		c.t.Fatalf("client: read %T: %v", msg, err)
	}
	if typ != 'R' {
		c.t.Fatalf("client: got message type %q, want %T", typ, msg)
	}
	if err := msg.Decode(raw[5:]); err != nil {
		c.t.Fatalf("client: decode %T: %v", msg, err)
	}
}

func (c *scriptClient) send(raw []byte) {
	c.t.Helper()
	if _, err := c.conn.Write(raw); err != nil {
		c.t.Fatalf("client: write: %v", err)
	}
}

func mustEncode(msg pgproto3.Message) []byte {
	b, err := msg.Encode(nil)
	if err != nil {
		panic(err)
	}
	return b
}

// runAuth runs Authenticate on server in the background.
func runAuth(server *Conn, method, user string, secret Secret, found bool) <-chan error {
	done := make(chan error, 1)
	go func() { done <- Authenticate(server, method, user, secret, found) }()
	return done
}

// scramClientFinal computes a client-final-message for password given the
// client-first-message-bare, the server-first-message and the GS2 header,
// per RFC 5802, independently of the code under test.
func scramClientFinal(t *testing.T, password, clientFirstBare, serverFirst, gs2 string) (final, serverSig string) {
	t.Helper()
	var nonce, salt, iter string
	for _, attr := range strings.Split(serverFirst, ",") {
		switch attr[:2] {
		case "r=":
			nonce = attr[2:]
		case "s=":
			salt = attr[2:]
		case "i=":
			iter = attr[2:]
		}
	}
	if iter != "4096" {
		t.Fatalf("iterations = %q, want 4096", iter)
	}
	rawSalt, err := base64.StdEncoding.DecodeString(salt)
	if err != nil {
		t.Fatal(err)
	}
	salted, _ := pbkdf2.Key(sha256.New, password, rawSalt, 4096, 32)
	mac := func(key []byte, msg string) []byte {
		m := hmac.New(sha256.New, key)
		m.Write([]byte(msg))
		return m.Sum(nil)
	}
	withoutProof := "c=" + base64.StdEncoding.EncodeToString([]byte(gs2)) + ",r=" + nonce
	authMessage := clientFirstBare + "," + serverFirst + "," + withoutProof
	clientKey := mac(salted, "Client Key")
	storedKey := sha256.Sum256(clientKey)
	sig := mac(storedKey[:], authMessage)
	proof := make([]byte, len(sig))
	for i := range sig {
		proof[i] = clientKey[i] ^ sig[i]
	}
	serverSig = "v=" + base64.StdEncoding.EncodeToString(mac(mac(salted, "Server Key"), authMessage))
	return withoutProof + ",p=" + base64.StdEncoding.EncodeToString(proof), serverSig
}

// TestSCRAMGS2Headers runs SCRAM by hand with both GS2 headers a client
// without channel binding may send.
func TestSCRAMGS2Headers(t *testing.T) {
	secret := testSCRAMSecret(t, "pencil", []byte("saltsaltsaltsalt"))
	for _, gs2 := range []string{"n,,", "y,,"} {
		for _, password := range []string{"pencil", "wrong"} {
			t.Run(gs2+password, func(t *testing.T) {
				server, conn := connPair(t)
				done := runAuth(server, AuthSCRAM, "user", secret, true)
				c := newScriptClient(t, conn)

				var sasl pgproto3.AuthenticationSASL
				c.expect(&sasl)
				if len(sasl.AuthMechanisms) != 1 || sasl.AuthMechanisms[0] != "SCRAM-SHA-256" {
					t.Fatalf("mechanisms = %q, want [SCRAM-SHA-256]", sasl.AuthMechanisms)
				}
				bare := "n=,r=fyko+d2lbbFgONRv9qkxdawL"
				c.send(mustEncode(&pgproto3.SASLInitialResponse{AuthMechanism: "SCRAM-SHA-256", Data: []byte(gs2 + bare)}))
				var cont pgproto3.AuthenticationSASLContinue
				c.expect(&cont)
				final, wantSig := scramClientFinal(t, password, bare, string(cont.Data), gs2)
				c.send(mustEncode(&pgproto3.SASLResponse{Data: []byte(final)}))

				err := <-done
				if password == "wrong" {
					if !errors.Is(err, errWrongPassword) {
						t.Fatalf("Authenticate() = %v, want wrong password", err)
					}
					return
				}
				if err != nil {
					t.Fatalf("Authenticate() = %v", err)
				}
				var fin pgproto3.AuthenticationSASLFinal
				c.expect(&fin)
				if string(fin.Data) != wantSig {
					t.Errorf("server-final = %q, want %q", fin.Data, wantSig)
				}
			})
		}
	}
}

// TestSCRAMRFC7677 checks the exchange against the example of RFC 7677
// section 3, with the server nonce fixed.
func TestSCRAMRFC7677(t *testing.T) {
	// StoredKey and ServerKey of "pencil" with the RFC's salt, computed
	// with Python's hashlib.
	secret := mustSecret(t, "SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY=:wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dU=")
	s := newSCRAMServer("user", secret)
	s.serverNonce = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"

	serverFirst, err := s.handleClientFirst([]byte("n,,n=user,r=rOprNGfwEbeRWgbNEkqO"))
	if err != nil {
		t.Fatal(err)
	}
	if want := "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"; string(serverFirst) != want {
		t.Fatalf("server-first = %q, want %q", serverFirst, want)
	}
	serverFinal, failure, err := s.handleClientFinal([]byte("c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="))
	if err != nil || failure != nil {
		t.Fatalf("handleClientFinal() = %v, %v", failure, err)
	}
	if want := "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="; string(serverFinal) != want {
		t.Errorf("server-final = %q, want %q", serverFinal, want)
	}
}

// TestSCRAMMockSalt checks that an unknown user sees the same salt on every
// attempt, as a real user does, and a different one from other users.
func TestSCRAMMockSalt(t *testing.T) {
	salt := func(user string) string {
		s := newSCRAMServer(user, Secret{})
		first, err := s.handleClientFirst([]byte("n,,n=,r=abc"))
		if err != nil {
			t.Fatal(err)
		}
		_, rest, _ := strings.Cut(string(first), ",s=")
		return rest
	}
	if a, b := salt("ghost"), salt("ghost"); a != b {
		t.Errorf("salts for one unknown user differ: %q, %q", a, b)
	}
	if a, b := salt("ghost"), salt("phantom"); a == b {
		t.Errorf("salts for two unknown users are the same: %q", a)
	}
}

// TestAuthenticateProtocolErrors sends malformed or unexpected messages
// and checks the error the client would get.
func TestAuthenticateProtocolErrors(t *testing.T) {
	secret := mustSecret(t, "pencil")
	initial := func(mech, data string) []byte {
		return mustEncode(&pgproto3.SASLInitialResponse{AuthMechanism: mech, Data: []byte(data)})
	}
	tests := []struct {
		name    string
		method  string
		replies func(t *testing.T) [][]byte // sent one per server request
		code    string
		msg     string
	}{
		{
			name:   "query instead of password",
			method: AuthMD5,
			replies: func(t *testing.T) [][]byte {
				return [][]byte{mustEncode(&pgproto3.Query{String: "SELECT 1"})}
			},
			code: CodeProtocolViolation, msg: `expected password response, got message type 'Q'`,
		},
		{
			name:   "query instead of SASL response",
			method: AuthSCRAM,
			replies: func(t *testing.T) [][]byte {
				return [][]byte{mustEncode(&pgproto3.Query{String: "SELECT 1"})}
			},
			code: CodeProtocolViolation, msg: `expected SASL response, got message type 'Q'`,
		},
		{
			name:   "password without terminator",
			method: AuthPassword,
			replies: func(t *testing.T) [][]byte {
				return [][]byte{{'p', 0, 0, 0, 10, 'p', 'e', 'n', 'c', 'i', 'l'}}
			},
			code: CodeProtocolViolation, msg: "invalid password packet size",
		},
		{
			name:   "password with trailing bytes",
			method: AuthPassword,
			replies: func(t *testing.T) [][]byte {
				return [][]byte{{'p', 0, 0, 0, 8, 'a', 0, 'b', 0}}
			},
			code: CodeProtocolViolation, msg: "invalid password packet size",
		},
		{
			name:   "oversize auth message",
			method: AuthPassword,
			replies: func(t *testing.T) [][]byte {
				return [][]byte{{'p', 0, 0x10, 0, 0}}
			},
			code: CodeProtocolViolation, msg: "invalid password response message",
		},
		{
			name:   "channel binding",
			method: AuthSCRAM,
			replies: func(t *testing.T) [][]byte {
				return [][]byte{initial("SCRAM-SHA-256", "p=tls-server-end-point,,n=,r=abc")}
			},
			code: CodeProtocolViolation, msg: "SCRAM channel binding is not supported",
		},
		{
			name:   "PLUS mechanism",
			method: AuthSCRAM,
			replies: func(t *testing.T) [][]byte {
				return [][]byte{initial("SCRAM-SHA-256-PLUS", "p=tls-server-end-point,,n=,r=abc")}
			},
			code: CodeProtocolViolation, msg: "client selected an invalid SASL authentication mechanism",
		},
		{
			name:   "unknown mechanism",
			method: AuthSCRAM,
			replies: func(t *testing.T) [][]byte {
				return [][]byte{initial("PLAIN", "\x00user\x00pencil")}
			},
			code: CodeProtocolViolation, msg: "client selected an invalid SASL authentication mechanism",
		},
		{
			name:   "bad data length",
			method: AuthSCRAM,
			replies: func(t *testing.T) [][]byte {
				b := initial("SCRAM-SHA-256", "n,,n=,r=abc")
				b[len(b)-len("n,,n=,r=abc")-1]++ // length one too large
				return [][]byte{b}
			},
			code: CodeProtocolViolation, msg: "invalid SASL initial response",
		},
		{
			name:   "no client-first data",
			method: AuthSCRAM,
			replies: func(t *testing.T) [][]byte {
				b := initial("SCRAM-SHA-256", "")
				copy(b[len(b)-4:], []byte{0xff, 0xff, 0xff, 0xff}) // length -1
				return [][]byte{b}
			},
			code: CodeProtocolViolation, msg: "malformed SCRAM message",
		},
		{
			name:   "authzid",
			method: AuthSCRAM,
			replies: func(t *testing.T) [][]byte {
				return [][]byte{initial("SCRAM-SHA-256", "n,a=admin,n=,r=abc")}
			},
			code: CodeFeatureNotSupported, msg: "client uses authorization identity, but it is not supported",
		},
		{
			name:   "mandatory extension",
			method: AuthSCRAM,
			replies: func(t *testing.T) [][]byte {
				return [][]byte{initial("SCRAM-SHA-256", "n,,m=ext,n=,r=abc")}
			},
			code: CodeFeatureNotSupported, msg: "client requires an unsupported SCRAM extension",
		},
		{
			name:   "wrong nonce",
			method: AuthSCRAM,
			replies: func(t *testing.T) [][]byte {
				return [][]byte{
					initial("SCRAM-SHA-256", "n,,n=,r=abc"),
					mustEncode(&pgproto3.SASLResponse{Data: []byte("c=biws,r=abcdef,p=" + base64.StdEncoding.EncodeToString(make([]byte, 32)))}),
				}
			},
			code: CodeProtocolViolation, msg: "invalid SCRAM response",
		},
		{
			name:   "channel binding flag changed",
			method: AuthSCRAM,
			replies: func(t *testing.T) [][]byte {
				return [][]byte{
					initial("SCRAM-SHA-256", "n,,n=,r=abc"),
					mustEncode(&pgproto3.SASLResponse{Data: []byte("c=eSws,r=abc,p=" + base64.StdEncoding.EncodeToString(make([]byte, 32)))}),
				}
			},
			code: CodeProtocolViolation, msg: "unexpected SCRAM channel-binding attribute in client-final-message",
		},
		{
			name:   "short proof",
			method: AuthSCRAM,
			replies: func(t *testing.T) [][]byte {
				return [][]byte{
					initial("SCRAM-SHA-256", "n,,n=,r=abc"),
					mustEncode(&pgproto3.SASLResponse{Data: []byte("c=biws,r=abc,p=AAAA")}),
				}
			},
			code: CodeProtocolViolation, msg: "malformed SCRAM message",
		},
		{
			name:   "unknown method",
			method: "ldap",
			replies: func(t *testing.T) [][]byte {
				return nil
			},
			code: CodeInvalidAuthorization, msg: `authentication method "ldap" is not supported`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			server, conn := connPair(t)
			done := runAuth(server, tt.method, "user", secret, true)
			c := newScriptClient(t, conn)
			for _, reply := range tt.replies(t) {
				_, _, err := c.r.ReadMessage() // the server's request
				if err != nil {
					t.Fatalf("client: read: %v", err)
				}
				c.send(reply)
			}
			err := <-done
			var we *Error
			if !errors.As(err, &we) {
				t.Fatalf("Authenticate() = %v, want a *wire.Error", err)
			}
			if we.Severity != "FATAL" || we.Code != tt.code || we.Message != tt.msg {
				t.Errorf("Authenticate() = %s %s %q, want FATAL %s %q", we.Severity, we.Code, we.Message, tt.code, tt.msg)
			}
		})
	}
}

// TestAuthenticateHangUp checks that a client that goes away mid-exchange
// yields a read error (EOF, unexpected EOF or a reset), not a *Error.
func TestAuthenticateHangUp(t *testing.T) {
	tests := []struct {
		name    string
		method  string
		replies [][]byte // sent one per server request, then the client hangs up
	}{
		{"before password", AuthPassword, nil},
		{"before md5 response", AuthMD5, nil},
		{"before client-first", AuthSCRAM, nil},
		{"before client-final", AuthSCRAM, [][]byte{
			mustEncode(&pgproto3.SASLInitialResponse{AuthMechanism: "SCRAM-SHA-256", Data: []byte("n,,n=,r=abc")}),
		}},
		{"mid-message", AuthMD5, [][]byte{{'p', 0, 0, 0, 40, 'm', 'd', '5'}}},
		{"mid-header", AuthMD5, [][]byte{{'p', 0, 0}}},
		{"terminate", AuthSCRAM, [][]byte{{'X', 0, 0, 0, 4}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			server, conn := connPair(t)
			done := runAuth(server, tt.method, "user", mustSecret(t, "pencil"), true)
			c := newScriptClient(t, conn)
			for _, reply := range tt.replies {
				if _, _, err := c.r.ReadMessage(); err != nil {
					t.Fatalf("client: read: %v", err)
				}
				c.send(reply)
			}
			if len(tt.replies) == 0 {
				if _, _, err := c.r.ReadMessage(); err != nil {
					t.Fatalf("client: read: %v", err)
				}
			}
			conn.Close()
			err := <-done
			// A client that hangs up with a server message unread resets
			// the connection instead of closing it (RST, not FIN),
			// depending on whether that message arrived first.
			if !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, syscall.ECONNRESET) {
				t.Fatalf("Authenticate() = %v, want an error wrapping io.EOF, io.ErrUnexpectedEOF or ECONNRESET", err)
			}
			var we *Error
			if errors.As(err, &we) {
				t.Errorf("Authenticate() = %v is a *wire.Error, which the caller would try to send", err)
			}
		})
	}
}

// TestAuthenticateRestoresMaxBody checks that the Reader's body limit is
// back to its value after the exchange.
func TestAuthenticateRestoresMaxBody(t *testing.T) {
	server, conn := connPair(t)
	server.R.SetMaxBody(1 << 20)
	done := runAuth(server, AuthPassword, "user", mustSecret(t, "pencil"), true)
	c := newScriptClient(t, conn)
	c.expect(&pgproto3.AuthenticationCleartextPassword{})
	c.send(mustEncode(&pgproto3.PasswordMessage{Password: "pencil"}))
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if server.R.maxBody != 1<<20 {
		t.Errorf("maxBody = %d after Authenticate, want %d", server.R.maxBody, 1<<20)
	}
}

func TestParseClientFirst(t *testing.T) {
	tests := []struct {
		in               string
		gs2, bare, nonce string
		wantErr          string
	}{
		{in: "n,,n=,r=abc", gs2: "n,,", bare: "n=,r=abc", nonce: "abc"},
		{in: "y,,n=user,r=a+b/c", gs2: "y,,", bare: "n=user,r=a+b/c", nonce: "a+b/c"},
		{in: "n,,n=,r=abc,x=ext,Y=", gs2: "n,,", bare: "n=,r=abc,x=ext,Y=", nonce: "abc"},
		{in: "", wantErr: "malformed"},
		{in: "n", wantErr: "malformed"},
		{in: "n,", wantErr: "malformed"},
		{in: "n,x", wantErr: "malformed"},
		{in: "x,,n=,r=abc", wantErr: "malformed"},
		{in: "n,,r=abc", wantErr: "malformed"},
		{in: "n,,n=", wantErr: "malformed"},
		{in: "n,,n=,r=", wantErr: "malformed"},
		{in: "n,,n=,r=a b", wantErr: "malformed"},
		{in: "n,,n=,r=abc,", wantErr: "malformed"},
		{in: "n,,n=,r=abc,1=x", wantErr: "malformed"},
		{in: "n,,n=,r=abc,x", wantErr: "malformed"},
		{in: "n,,n=,r=a\x00bc", wantErr: "malformed"},
		{in: "n,,n=,r=\x7f", wantErr: "malformed"},
		{in: "p=tls-server-end-point,,n=,r=abc", wantErr: "channel binding"},
		{in: "n,a=x,n=,r=abc", wantErr: "authorization identity"},
		{in: "n,,m=x,n=,r=abc", wantErr: "extension"},
	}
	for _, tt := range tests {
		m, err := parseClientFirst([]byte(tt.in))
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("parseClientFirst(%q) error = %v, want %q", tt.in, err, tt.wantErr)
			}
			continue
		}
		if err != nil {
			t.Errorf("parseClientFirst(%q) error = %v", tt.in, err)
			continue
		}
		if m.gs2Header != tt.gs2 || m.bare != tt.bare || m.nonce != tt.nonce {
			t.Errorf("parseClientFirst(%q) = %+v", tt.in, m)
		}
	}
}

func TestParseClientFinal(t *testing.T) {
	proof := base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{7}, 32))
	tests := []struct {
		in                 string
		cb, nonce, noProof string
		wantErr            string
	}{
		{in: "c=biws,r=abc,p=" + proof, cb: "biws", nonce: "abc", noProof: "c=biws,r=abc"},
		{in: "c=biws,r=abc,x=1,p=" + proof, cb: "biws", nonce: "abc", noProof: "c=biws,r=abc,x=1"},
		{in: "", wantErr: "empty"},
		{in: "r=abc,p=" + proof, wantErr: "malformed"},
		{in: "c=biws,p=" + proof, wantErr: "malformed"},
		{in: "c=biws,r=abc", wantErr: "no proof"},
		{in: "c=biws,r=abc,", wantErr: "malformed"},
		{in: "c=biws,r=abc,p=" + proof + ",x=1", wantErr: "Garbage"},
		{in: "c=biws,r=abc,p=" + proof + ",", wantErr: "malformed"},
		{in: "c=biws,r=abc,p=AAAA", wantErr: "Malformed proof"},
		{in: "c=biws,r=abc,p=!!!!", wantErr: "Malformed proof"},
		{in: "c=biws,r=abc,p=" + proof + "\x00", wantErr: "null"},
	}
	for _, tt := range tests {
		m, err := parseClientFinal([]byte(tt.in))
		if tt.wantErr != "" {
			var we *Error
			if err == nil || !errors.As(err, &we) || !strings.Contains(we.Message+" "+we.Detail, tt.wantErr) {
				t.Errorf("parseClientFinal(%q) error = %v, want %q", tt.in, err, tt.wantErr)
			}
			continue
		}
		if err != nil {
			t.Errorf("parseClientFinal(%q) error = %v", tt.in, err)
			continue
		}
		if m.channelBinding != tt.cb || m.nonce != tt.nonce || m.withoutProof != tt.noProof || len(m.proof) != 32 {
			t.Errorf("parseClientFinal(%q) = %+v", tt.in, m)
		}
	}
}
