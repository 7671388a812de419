package pooler

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/md5"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"errors"
	"fmt"
	"math/big"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgaudit-proxy/pgaudit/wire"
)

// authRoles are created once in the test cluster (which trusts every
// loopback connection, so the proxy reaches it without a password).
var authRoles = struct {
	once  sync.Once
	err   error
	scram string // pg_authid verifier of pgaudit_scram's password
}{}

const (
	plainUser, plainPW = "pgaudit_plain", "plain-pw"
	md5User, md5PW     = "pgaudit_md5", "md5-pw"
	scramUser, scramPW = "pgaudit_scram", "scram-pw"
)

func setupAuthRoles(t *testing.T) {
	t.Helper()
	authRoles.once.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		conn, err := pgconn.Connect(ctx, cluster.DSN(""))
		if err != nil {
			authRoles.err = err
			return
		}
		defer conn.Close(ctx)
		for _, u := range []string{plainUser, md5User, scramUser} {
			if _, err := conn.Exec(ctx, fmt.Sprintf("do $$ begin if not exists (select from pg_roles where rolname = '%s') then create role %s login; end if; end $$", u, u)).ReadAll(); err != nil {
				authRoles.err = err
				return
			}
		}
		// Let Postgres make a real SCRAM verifier.
		res, err := conn.Exec(ctx, fmt.Sprintf("set password_encryption = 'scram-sha-256'; alter role %s password '%s'; select rolpassword from pg_authid where rolname = '%s'", scramUser, scramPW, scramUser)).ReadAll()
		if err != nil {
			authRoles.err = err
			return
		}
		authRoles.scram = string(res[len(res)-1].Rows[0][0])
	})
	if authRoles.err != nil {
		t.Fatal(authRoles.err)
	}
}

func md5Secret(user, pw string) string {
	sum := md5.Sum([]byte(pw + user))
	return "md5" + hex.EncodeToString(sum[:])
}

func authUsers(t *testing.T) *wire.Users {
	t.Helper()
	setupAuthRoles(t)
	m := map[string]wire.Secret{}
	for user, text := range map[string]string{plainUser: plainPW, md5User: md5Secret(md5User, md5PW), scramUser: authRoles.scram} {
		s, err := wire.ParseSecret(text)
		if err != nil {
			t.Fatal(err)
		}
		m[user] = s
	}
	if m[scramUser].Kind() != wire.SecretSCRAM || m[md5User].Kind() != wire.SecretMD5 || m[plainUser].Kind() != wire.SecretPlain {
		t.Fatalf("unexpected secret kinds: %v %v %v", m[plainUser], m[md5User], m[scramUser])
	}
	return wire.NewUsers(m)
}

// directConn opens a connection straight to the test cluster, closed when
// the test ends.
func directConn(t testing.TB) *pgconn.PgConn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pgconn.Connect(ctx, cluster.DSN(""))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

// backendsOf counts the server backends of a role.
func backendsOf(t testing.TB, conn *pgconn.PgConn, user string) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	res, err := conn.Exec(ctx, fmt.Sprintf("select count(*) from pg_stat_activity where usename = '%s'", user)).ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	var n int
	fmt.Sscan(string(res[0].Rows[0][0]), &n)
	return n
}

// connectErr connects with dsn and returns the server error, or nil after
// checking the connection works.
func connectErr(t testing.TB, dsn string) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pgconn.Connect(ctx, dsn)
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	res, err := conn.Exec(ctx, "select current_user").ReadAll()
	if err != nil {
		return err
	}
	if len(res) != 1 || len(res[0].Rows) != 1 {
		return fmt.Errorf("unexpected result %v", res)
	}
	return nil
}

// wantPgError checks that err carries a server error with code and, when
// message is not empty, that exact message.
func wantPgError(t testing.TB, err error, severity, code, message string) *pgconn.PgError {
	t.Helper()
	var pe *pgconn.PgError
	if !errors.As(err, &pe) {
		t.Fatalf("want %s %s error, got %v", severity, code, err)
	}
	if pe.Code != code || pe.Severity != severity || (message != "" && pe.Message != message) {
		t.Fatalf("want %s %s %q, got %s %s %q (detail %q)", severity, code, message, pe.Severity, pe.Code, pe.Message, pe.Detail)
	}
	return pe
}

func userDSN(p *Proxy, user, pw, db string) string {
	if db == "" {
		db = "postgres"
	}
	return fmt.Sprintf("postgres://%s:%s@%s/%s?sslmode=disable&application_name=authtest", user, pw, p.Addr(), db)
}

// TestAuthMethods logs in with each auth_type and each kind of stored secret.
func TestAuthMethods(t *testing.T) {
	users := authUsers(t)
	direct := directConn(t)
	type attempt struct {
		user, pw string
		ok       bool
	}
	cases := map[string][]attempt{
		"md5": {
			{plainUser, plainPW, true}, {md5User, md5PW, true}, {scramUser, scramPW, true},
			{plainUser, "wrong", false}, {md5User, "wrong", false}, {scramUser, "wrong", false},
			{"pgaudit_nobody", "x", false},
		},
		"scram-sha-256": {
			{plainUser, plainPW, true}, {scramUser, scramPW, true},
			{plainUser, "wrong", false}, {scramUser, "wrong", false},
			// An md5 hash cannot verify SCRAM: refused like a wrong password.
			{md5User, md5PW, false},
			{"pgaudit_nobody", "x", false},
		},
		"password": {
			{plainUser, plainPW, true}, {md5User, md5PW, true}, {scramUser, scramPW, true},
			{plainUser, "wrong", false}, {"pgaudit_nobody", "x", false},
		},
		"trust": {
			{plainUser, "anything", true}, {md5User, "", true},
		},
	}
	for _, method := range []string{"md5", "scram-sha-256", "password", "trust"} {
		t.Run(method, func(t *testing.T) {
			p := testProxy(t, func(c *Config) {
				c.AuthType = method
				c.Users = users
			})
			for _, a := range cases[method] {
				name := fmt.Sprintf("%s/%s", a.user, map[bool]string{true: "right", false: "wrong"}[a.ok])
				before := backendsOf(t, direct, a.user)
				err := connectErr(t, userDSN(p, a.user, a.pw, ""))
				if a.ok {
					if err != nil {
						t.Errorf("%s: %v", name, err)
					}
					continue
				}
				var pe *pgconn.PgError
				if !errors.As(err, &pe) {
					t.Errorf("%s: want 28P01, got %v", name, err)
					continue
				}
				want := fmt.Sprintf("password authentication failed for user %q", a.user)
				if pe.Code != "28P01" || pe.Severity != "FATAL" || pe.Message != want {
					t.Errorf("%s: got %s %s %q, want FATAL 28P01 %q", name, pe.Severity, pe.Code, pe.Message, want)
				}
				if after := backendsOf(t, direct, a.user); after != before {
					t.Errorf("%s: a failed login opened a server connection (%d backends before, %d after)", name, before, after)
				}
			}
			// Nothing reached the server for the failed logins: only the
			// successful users have pools.
			for _, st := range p.PoolStats() {
				if st.User == "pgaudit_nobody" {
					t.Errorf("a pool was created for an unknown user: %+v", st)
				}
			}
		})
	}
}

// TestAuthFailureOpensNoServer checks with a fresh proxy that failed logins
// create no pool and no backend at all.
func TestAuthFailureOpensNoServer(t *testing.T) {
	users := authUsers(t)
	p := testProxy(t, func(c *Config) {
		c.AuthType = "scram-sha-256"
		c.Users = users
	})
	direct := directConn(t)
	before := backendsOf(t, direct, scramUser)
	for i := 0; i < 3; i++ {
		err := connectErr(t, userDSN(p, scramUser, "nope", ""))
		wantPgError(t, err, "FATAL", "28P01", fmt.Sprintf("password authentication failed for user %q", scramUser))
	}
	if n := len(p.PoolStats()); n != 0 {
		t.Errorf("failed logins created %d pools: %+v", n, p.PoolStats())
	}
	if after := backendsOf(t, direct, scramUser); after != before {
		t.Errorf("failed logins opened server connections: %d backends before, %d after", before, after)
	}
}

// TestUnknownDatabase: without a "*" entry an unknown database is refused by
// the proxy like Postgres does, after authentication and without a server;
// with "*" the server's own error is passed on.
func TestUnknownDatabase(t *testing.T) {
	users := authUsers(t)
	t.Run("no-fallback", func(t *testing.T) {
		p := testProxy(t, func(c *Config) {
			delete(c.Databases, "*")
			c.AuthType = "md5"
			c.Users = users
		})
		direct := directConn(t)
		before := backendsOf(t, direct, plainUser)
		err := connectErr(t, userDSN(p, plainUser, plainPW, "nope_db"))
		wantPgError(t, err, "FATAL", "3D000", `database "nope_db" does not exist`)
		// Authentication comes first, as in Postgres.
		err = connectErr(t, userDSN(p, plainUser, "wrong", "nope_db"))
		wantPgError(t, err, "FATAL", "28P01", "")
		if n := len(p.PoolStats()); n != 0 {
			t.Errorf("unknown database created %d pools", n)
		}
		if after := backendsOf(t, direct, plainUser); after != before {
			t.Errorf("unknown database opened server connections: %d before, %d after", before, after)
		}
		if err := connectErr(t, userDSN(p, plainUser, plainPW, "postgres")); err != nil {
			t.Errorf("known database: %v", err)
		}
	})
	t.Run("fallback", func(t *testing.T) {
		p := testProxy(t, nil)
		err := connectErr(t, proxyDSN(p, "nope_db", ""))
		wantPgError(t, err, "FATAL", "3D000", `database "nope_db" does not exist`)
		if err := connectErr(t, proxyDSN(p, "template1", "")); err != nil {
			t.Errorf("database through the fallback entry: %v", err)
		}
	})
}

// selfSignedTLS returns a server TLS config with a fresh ECDSA certificate
// for 127.0.0.1 and localhost.
func selfSignedTLS(t testing.TB) *tls.Config {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "pgaudit test"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames:     []string{"localhost"},
		IPAddresses:  []net.IP{net.ParseIP("127.0.0.1")},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}, MinVersion: tls.VersionTLS12}
}

// tlsConnect connects through p with sslmode and reports whether the
// connection uses TLS.
func tlsConnect(t testing.TB, p *Proxy, sslmode string) (usesTLS bool, err error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	dsn := strings.Replace(proxyDSN(p, "", ""), "sslmode=disable", "sslmode="+sslmode, 1)
	conn, err := pgconn.Connect(ctx, dsn)
	if err != nil {
		return false, err
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "select 1").ReadAll(); err != nil {
		return false, err
	}
	if tc, ok := conn.Conn().(*tls.Conn); ok {
		st := tc.ConnectionState()
		if !st.HandshakeComplete {
			t.Errorf("sslmode=%s: TLS handshake not complete", sslmode)
		}
		return true, nil
	}
	return false, nil
}

func TestClientTLS(t *testing.T) {
	cert := selfSignedTLS(t)
	t.Run("require", func(t *testing.T) {
		p := testProxy(t, func(c *Config) { c.TLS, c.ClientTLS = cert, "require" })
		for _, mode := range []string{"require", "prefer"} {
			usesTLS, err := tlsConnect(t, p, mode)
			if err != nil || !usesTLS {
				t.Errorf("sslmode=%s: tls=%v err=%v", mode, usesTLS, err)
			}
		}
		_, err := tlsConnect(t, p, "disable")
		wantPgError(t, err, "FATAL", "28000", "")
	})
	t.Run("allow", func(t *testing.T) {
		p := testProxy(t, func(c *Config) { c.TLS, c.ClientTLS = cert, "allow" })
		for mode, want := range map[string]bool{"require": true, "prefer": true, "disable": false} {
			usesTLS, err := tlsConnect(t, p, mode)
			if err != nil || usesTLS != want {
				t.Errorf("sslmode=%s: tls=%v (want %v) err=%v", mode, usesTLS, want, err)
			}
		}
	})
	t.Run("no-tls", func(t *testing.T) {
		p := testProxy(t, nil)
		if _, err := tlsConnect(t, p, "require"); err == nil {
			t.Errorf("sslmode=require succeeded without TLS configured")
		}
		usesTLS, err := tlsConnect(t, p, "prefer")
		if err != nil || usesTLS {
			t.Errorf("sslmode=prefer: tls=%v err=%v", usesTLS, err)
		}
	})
	t.Run("cancel-over-tls", func(t *testing.T) {
		// pgconn encrypts the cancel connection like the main one.
		p := testProxy(t, func(c *Config) { c.TLS, c.ClientTLS = cert, "require" })
		dsn := strings.Replace(proxyDSN(p, "", ""), "sslmode=disable", "sslmode=require", 1)
		checkCancel(t, dsn)
	})
}

// TestGSSENCRequest: the proxy refuses GSSAPI encryption with 'N' and the
// client goes on in the clear or with TLS.
func TestGSSENCRequest(t *testing.T) {
	cert := selfSignedTLS(t)
	p := testProxy(t, func(c *Config) { c.TLS, c.ClientTLS = cert, "allow" })
	gssenc := []byte{0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x30}
	sslreq := []byte{0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f}
	for _, withTLS := range []bool{false, true} {
		nc := dialRaw(t, p.Addr().String())
		_ = nc.SetDeadline(time.Now().Add(wireTimeout))
		if _, err := nc.Write(gssenc); err != nil {
			t.Fatal(err)
		}
		var b [1]byte
		if _, err := nc.Read(b[:]); err != nil || b[0] != 'N' {
			t.Fatalf("GSSENCRequest answer %q, %v; want 'N'", b[0], err)
		}
		var conn net.Conn = nc
		if withTLS {
			if _, err := nc.Write(sslreq); err != nil {
				t.Fatal(err)
			}
			if _, err := nc.Read(b[:]); err != nil || b[0] != 'S' {
				t.Fatalf("SSLRequest answer %q, %v; want 'S'", b[0], err)
			}
			tc := tls.Client(nc, &tls.Config{InsecureSkipVerify: true})
			if err := tc.Handshake(); err != nil {
				t.Fatal(err)
			}
			conn = tc
		}
		c := newWireConn(t, conn)
		c.fe.Send(&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersion30, Parameters: map[string]string{"user": "postgres", "database": "postgres"}})
		if err := c.fe.Flush(); err != nil {
			t.Fatal(err)
		}
		if err := c.readStartup(); err != nil {
			t.Fatalf("startup after GSSENCRequest (tls=%v): %v", withTLS, err)
		}
		if st := c.query("select 1"); st != 'I' {
			t.Errorf("status %q", st)
		}
		c.terminate()
	}
}

// TestSSLRequestWithTrailingData: bytes sent after SSLRequest before the
// answer are refused (CVE-2021-23222), as by Postgres.
func TestSSLRequestWithTrailingData(t *testing.T) {
	p := testProxy(t, func(c *Config) { c.TLS, c.ClientTLS = selfSignedTLS(t), "allow" })
	nc := dialRaw(t, p.Addr().String())
	_ = nc.SetDeadline(time.Now().Add(wireTimeout))
	startup, _ := (&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersion30, Parameters: map[string]string{"user": "postgres"}}).Encode(nil)
	if _, err := nc.Write(append([]byte{0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f}, startup...)); err != nil {
		t.Fatal(err)
	}
	c := newWireConn(t, nc)
	m, err := c.receive()
	if err != nil {
		t.Fatalf("want an ErrorResponse, got %v", err)
	}
	er, ok := m.(*pgproto3.ErrorResponse)
	if !ok || er.Code != "08P01" || er.Severity != "FATAL" {
		t.Fatalf("want FATAL 08P01, got %s", transcriptLine(m))
	}
	expectClosed(t, nc)
}
