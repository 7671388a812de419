package pooler

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/rs/zerolog"

	"github.com/pgaudit/pgaudit/internal/pgtest"
	"github.com/pgaudit/pgaudit/wire"
)

// TestTrustAdmitsOnlyListedUsers: with auth_type trust and a users file, a
// user missing from the file is refused with Postgres's own error for a
// missing role, and nothing reaches the server.
func TestTrustAdmitsOnlyListedUsers(t *testing.T) {
	p := testProxy(t, func(c *Config) {
		c.AuthType = "trust"
		c.Users = wire.NewUsers(map[string]wire.Secret{"postgres": {}})
	})
	if err := connectErr(t, proxyDSN(p, "", "")); err != nil {
		t.Fatalf("listed user: %v", err)
	}
	// The role exists in Postgres, but not in the users file.
	setupAuthRoles(t)
	for _, user := range []string{"nosuchrole", plainUser} {
		err := connectErr(t, userDSN(p, user, "", ""))
		wantPgError(t, err, "FATAL", "28000", `role "`+user+`" does not exist`)
	}
	for _, st := range p.PoolStats() {
		if st.User != "postgres" {
			t.Errorf("a pool was created for an unlisted user: %+v", st)
		}
	}
}

// authQueryCluster is a cluster that asks for passwords (SCRAM, or md5 for
// app_md5) from every role but postgres, with roles whose secrets the
// proxy learns only through auth_query, run as pgaudit_auth through a
// SECURITY DEFINER function (the setup PgBouncer recommends).
func authQueryCluster(t *testing.T) *pgtest.Cluster {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c, err := pgtest.Start(ctx, pgtest.Options{HBA: strings.Join([]string{
		"local all all trust",
		"host all postgres 127.0.0.1/32 trust",
		"host all app_md5 127.0.0.1/32 md5",
		"host all all 127.0.0.1/32 scram-sha-256",
	}, "\n") + "\n"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Stop)
	setup := `
set password_encryption = 'scram-sha-256';
create role app_alice login password 'alice-pw';
create role pgaudit_auth login password 'auth-pw';
set password_encryption = 'md5';
create role app_md5 login password 'md5-pw';
create function public.pgaudit_lookup(i_user text, out usename name, out passwd text)
  returns setof record language sql security definer set search_path = pg_catalog
  as $$ select usename, passwd from pg_shadow where usename = i_user $$;
revoke all on function public.pgaudit_lookup(text) from public;
grant execute on function public.pgaudit_lookup(text) to pgaudit_auth;`
	if out, err := c.Psql(ctx, "", "-q", "-c", setup); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	return c
}

// authQueryProxy starts a proxy in front of c that knows no users itself.
func authQueryProxy(t *testing.T, c *pgtest.Cluster, method string, ttl time.Duration, mutate ...func(*Config)) *Proxy {
	t.Helper()
	up, err := pgconn.ParseConfig(c.DSN("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	settings := DefaultPoolSettings()
	settings.Size = 4
	db := &Database{Name: "postgres", Upstream: up, Pool: settings} // no forced user
	cfg := &Config{
		Listen:    "127.0.0.1:0",
		Databases: map[string]*Database{"postgres": db},
		AuthType:  method,
		AuthQuery: &AuthQuery{User: "pgaudit_auth", Password: "auth-pw", Query: "SELECT usename, passwd FROM public.pgaudit_lookup($1)", CacheTTL: ttl},
	}
	for _, m := range mutate {
		m(cfg)
	}
	log := zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel)
	p := New(cfg, nil, log)
	if err := p.Listen(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { defer close(done); _ = p.Serve(context.Background()) }()
	t.Cleanup(func() { _ = p.Close(); <-done })
	return p
}

// whoAmI logs in through dsn and returns current_user and session_user.
func whoAmI(ctx context.Context, dsn string) (string, error) {
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return "", err
	}
	defer conn.Close(ctx)
	var cur, sess string
	if err := conn.QueryRow(ctx, "select current_user, session_user").Scan(&cur, &sess); err != nil {
		return "", err
	}
	return cur + "/" + sess, nil
}

// TestAuthQuerySCRAMPassThrough: no users file; the proxy learns each
// user's secret with auth_query, the client authenticates with its own
// password, and the proxy logs in to a server that demands SCRAM as that
// same user with the keys recovered from the client's proof (and with
// the md5 hash for an md5 role), as PgBouncer does.
func TestAuthQuerySCRAMPassThrough(t *testing.T) {
	c := authQueryCluster(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	direct, err := pgconn.Connect(ctx, c.DSN(""))
	if err != nil {
		t.Fatal(err)
	}
	defer direct.Close(context.Background())
	// The server really asks app_alice for a password: without one the
	// login fails, so a proxy login that works used the keys.
	if _, err := pgconn.Connect(ctx, fmt.Sprintf("postgres://app_alice@127.0.0.1:%d/postgres?sslmode=disable", c.Port)); err == nil {
		t.Fatal("the cluster let app_alice in without a password")
	}

	t.Run("scram-sha-256", func(t *testing.T) {
		p := authQueryProxy(t, c, wire.AuthSCRAM, time.Second)
		// Several clients at once: each needs its own server login with
		// the keys.
		var wg sync.WaitGroup
		conns := make([]*pgx.Conn, 3)
		errs := make([]error, 3)
		for i := range conns {
			wg.Add(1)
			go func() {
				defer wg.Done()
				conns[i], errs[i] = pgx.Connect(ctx, userDSN(p, "app_alice", "alice-pw", ""))
			}()
		}
		wg.Wait()
		for i, conn := range conns {
			if errs[i] != nil {
				t.Fatalf("client %d: %v", i, errs[i])
			}
			var who string
			if err := conn.QueryRow(ctx, "select current_user || '/' || session_user").Scan(&who); err != nil {
				t.Fatal(err)
			}
			if who != "app_alice/app_alice" {
				t.Errorf("client %d runs as %s, want app_alice/app_alice", i, who)
			}
		}
		if n := backendsOf(t, direct, "app_alice"); n != 3 {
			t.Errorf("%d server backends of app_alice, want 3", n)
		}
		for _, conn := range conns {
			conn.Close(ctx)
		}

		// psql, with the password from the environment.
		psql := exec.CommandContext(ctx, c.Bin("psql"), "-X", "-At", "-c", "select current_user",
			fmt.Sprintf("postgres://app_alice@%s/postgres?sslmode=disable", p.Addr()))
		psql.Env = append(os.Environ(), "PGPASSWORD=alice-pw")
		if out, err := psql.CombinedOutput(); err != nil || strings.TrimSpace(string(out)) != "app_alice" {
			t.Errorf("psql: %v %q", err, out)
		}
		psql = exec.CommandContext(ctx, c.Bin("psql"), "-X", "-At", "-c", "select 1",
			fmt.Sprintf("postgres://app_alice@%s/postgres?sslmode=disable", p.Addr()))
		psql.Env = append(os.Environ(), "PGPASSWORD=wrong")
		if out, err := psql.CombinedOutput(); err == nil || !strings.Contains(string(out), `password authentication failed for user "app_alice"`) {
			t.Errorf("psql with a wrong password: %v %q", err, out)
		}

		// Wrong password and unknown user: the same 28P01.
		_, err := whoAmI(ctx, userDSN(p, "app_alice", "wrong", ""))
		wantPgError(t, err, "FATAL", "28P01", `password authentication failed for user "app_alice"`)
		_, err = whoAmI(ctx, userDSN(p, "nosuchrole", "x", ""))
		wantPgError(t, err, "FATAL", "28P01", `password authentication failed for user "nosuchrole"`)
		// An md5 role cannot authenticate with SCRAM, as in Postgres.
		_, err = whoAmI(ctx, userDSN(p, "app_md5", "md5-pw", ""))
		wantPgError(t, err, "FATAL", "28P01", `password authentication failed for user "app_md5"`)
		for _, st := range p.PoolStats() {
			if st.User != "app_alice" {
				t.Errorf("pool for %q: failed logins must not create pools", st.User)
			}
		}
	})

	t.Run("transaction-mode", func(t *testing.T) {
		p := authQueryProxy(t, c, wire.AuthSCRAM, time.Second, withMode(TransactionMode, 2))
		var wg sync.WaitGroup
		errs := make(chan error, 6)
		for i := 0; i < 6; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				conn, err := pgx.Connect(ctx, userDSN(p, "app_alice", "alice-pw", ""))
				if err != nil {
					errs <- err
					return
				}
				defer conn.Close(ctx)
				for j := 0; j < 5; j++ {
					var who string
					if err := conn.QueryRow(ctx, "select current_user::text").Scan(&who); err != nil || who != "app_alice" {
						errs <- fmt.Errorf("query %d: %q %v", j, who, err)
						return
					}
				}
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Error(err)
		}
	})

	t.Run("md5", func(t *testing.T) {
		p := authQueryProxy(t, c, wire.AuthMD5, time.Second)
		for _, u := range []struct{ user, pw string }{{"app_md5", "md5-pw"}, {"app_alice", "alice-pw"}} {
			who, err := whoAmI(ctx, userDSN(p, u.user, u.pw, ""))
			if err != nil {
				t.Fatalf("%s: %v", u.user, err)
			}
			if who != u.user+"/"+u.user {
				t.Errorf("%s runs as %s", u.user, who)
			}
		}
		_, err := whoAmI(ctx, userDSN(p, "app_md5", "wrong", ""))
		wantPgError(t, err, "FATAL", "28P01", `password authentication failed for user "app_md5"`)
	})

	t.Run("password-change", func(t *testing.T) {
		p := authQueryProxy(t, c, wire.AuthSCRAM, 50*time.Millisecond)
		if _, err := whoAmI(ctx, userDSN(p, "app_alice", "alice-pw", "")); err != nil {
			t.Fatal(err)
		}
		if _, err := direct.Exec(ctx, "alter role app_alice password 'alice-pw2'").ReadAll(); err != nil {
			t.Fatal(err)
		}
		defer func() {
			_, _ = direct.Exec(context.Background(), "alter role app_alice password 'alice-pw'").ReadAll()
		}()
		time.Sleep(100 * time.Millisecond) // the cached secret expires
		_, err := whoAmI(ctx, userDSN(p, "app_alice", "alice-pw", ""))
		wantPgError(t, err, "FATAL", "28P01", `password authentication failed for user "app_alice"`)
		p.Pools()[0].DropIdle() // new server logins use the new keys
		who, err := whoAmI(ctx, userDSN(p, "app_alice", "alice-pw2", ""))
		if err != nil || who != "app_alice/app_alice" {
			t.Fatalf("after the password change: %q, %v", who, err)
		}
	})

	// A users file whose SCRAM verifier is not the server's (the password
	// changed since it was copied) lets the client in, but the server
	// login fails with 28P01 rather than with a confusing error.
	t.Run("stale-users-file", func(t *testing.T) {
		stale := wire.NewUsers(map[string]wire.Secret{"app_alice": mustSecret(t, scramVerifier(t, "alice-pw"))})
		p := authQueryProxy(t, c, wire.AuthSCRAM, time.Second, func(cfg *Config) { cfg.AuthQuery, cfg.Users = nil, stale })
		_, err := whoAmI(ctx, userDSN(p, "app_alice", "alice-pw", ""))
		pe := wantPgError(t, err, "FATAL", "28P01", "")
		if !strings.Contains(pe.Message, "SCRAM secret") {
			t.Errorf("message %q does not explain the stale secret", pe.Message)
		}
	})

	// The admin console: with auth_dbname, admin users are looked up
	// there too; without it, only the users file counts.
	t.Run("admin-console", func(t *testing.T) {
		admin := func(dbname string) func(*Config) {
			return func(cfg *Config) {
				cfg.AuthDatabase = dbname
				cfg.AuthQuery.DBName = dbname
				cfg.AdminUsers = []string{"app_alice"}
				cfg.Admin = welcomeOnlyAdmin{}
			}
		}
		p := authQueryProxy(t, c, wire.AuthSCRAM, time.Second, admin("postgres"))
		conn, err := pgconn.Connect(ctx, userDSN(p, "app_alice", "alice-pw", "pgaudit"))
		if err != nil {
			t.Fatalf("admin console via auth_dbname: %v", err)
		}
		conn.Close(ctx)
		_, err = pgconn.Connect(ctx, userDSN(p, "app_alice", "wrong", "pgaudit"))
		wantPgError(t, err, "FATAL", "28P01", `password authentication failed for user "app_alice"`)

		p = authQueryProxy(t, c, wire.AuthSCRAM, time.Second, admin(""))
		_, err = pgconn.Connect(ctx, userDSN(p, "app_alice", "alice-pw", "pgaudit"))
		wantPgError(t, err, "FATAL", "28P01", `password authentication failed for user "app_alice"`)
	})

	t.Run("lookup-failure", func(t *testing.T) {
		p := authQueryProxy(t, c, wire.AuthSCRAM, time.Second, func(cfg *Config) { cfg.AuthQuery.Password = "wrong" })
		_, err := whoAmI(ctx, userDSN(p, "app_alice", "alice-pw", ""))
		var pe *pgconn.PgError
		if !errors.As(err, &pe) || pe.Code != wire.CodeConnectionFailure {
			t.Fatalf("auth_query failing: want 08006, got %v", err)
		}
	})
}

func mustSecret(t *testing.T, s string) wire.Secret {
	t.Helper()
	sec, err := wire.ParseSecret(s)
	if err != nil {
		t.Fatal(err)
	}
	return sec
}

// scramVerifier has the test cluster compute a fresh verifier (new salt)
// for password.
func scramVerifier(t *testing.T, password string) string {
	t.Helper()
	conn := directConn(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	res, err := conn.Exec(ctx, fmt.Sprintf(`
set password_encryption = 'scram-sha-256';
drop role if exists pgaudit_verifier; create role pgaudit_verifier password '%s';
select rolpassword from pg_authid where rolname = 'pgaudit_verifier'`, password)).ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	return string(res[len(res)-1].Rows[0][0])
}

// welcomeOnlyAdmin is an admin console that greets the client and waits
// for it to leave.
type welcomeOnlyAdmin struct{}

func (welcomeOnlyAdmin) ServeAdmin(_ context.Context, c *wire.Conn, _ string) error {
	if err := c.WriteRaw(wire.AppendReadyForQuery(wire.AppendAuthOK(nil), 'I')); err != nil {
		return err
	}
	if err := c.Flush(); err != nil {
		return err
	}
	for {
		typ, _, err := c.R.ReadMessage()
		if err != nil || typ == 'X' {
			return err
		}
	}
}
