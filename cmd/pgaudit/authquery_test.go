package main

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

	"github.com/jackc/pgerrcode"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/rs/zerolog"

	"github.com/pgaudit-proxy/pgaudit/internal/pgtest"
	"github.com/pgaudit-proxy/pgaudit/pooler"
	"github.com/pgaudit-proxy/pgaudit/wire"
)

// authQueryCluster is a cluster that asks every role but postgres for a
// password (SCRAM, md5 for app_md5), with roles whose secrets the proxy
// learns only through auth_query, run as pgaudit_auth through a SECURITY
// DEFINER function (the setup PgBouncer recommends).
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

// startConfigured loads config text (a [pgaudit] body and more) the way
// `pgaudit proxy --config` does, with the SQL admin console, and starts
// the proxy; it stops when the test ends.
func startConfigured(t *testing.T, config string) *pooler.Proxy {
	t.Helper()
	st, err := loadSettings(proxyFlags{configPath: writeFile(t, "pgaudit.toml", config), adminListen: strPtr("")})
	if err != nil {
		t.Fatal(err)
	}
	st.proxy.Admin = newAdmin(adminOptions{Log: zerolog.Nop()}).Console()
	p := pooler.New(st.proxy, nil, zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel))
	if err := p.Listen(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { defer close(done); _ = p.Serve(context.Background()) }()
	t.Cleanup(func() { _ = p.Close(); <-done })
	return p
}

// authQueryConfig is a config with no users file: auth_query as
// pgaudit_auth, its password in a file, one database without a fixed user.
func authQueryConfig(t *testing.T, c *pgtest.Cluster, authType, cache, poolMode, authPW, extra string) string {
	return fmt.Sprintf(`[pgaudit]
listen = "127.0.0.1:0"
auth_type = %q
auth_user = "pgaudit_auth"
auth_password_file = %q
auth_query = "SELECT usename, passwd FROM public.pgaudit_lookup($1)"
auth_query_cache = %q
pool_mode = %q
default_pool_size = 4
admin_users = ["app_alice"]
%s
[databases.postgres]
host = "127.0.0.1"
port = %d
sslmode = "disable"
`, authType, writeFile(t, "auth.pw", authPW+"\n"), cache, poolMode, extra, c.Port)
}

func userDSN(p *pooler.Proxy, user, pw, db string) string {
	if db == "" {
		db = "postgres"
	}
	return fmt.Sprintf("postgres://%s:%s@%s/%s?sslmode=disable", user, pw, p.Addr(), db)
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

// whoAmI logs in through dsn and returns current_user/session_user.
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
// same user with the keys recovered from the client's proof (with the md5
// hash for an md5 role), as PgBouncer does.
func TestAuthQuerySCRAMPassThrough(t *testing.T) {
	c := authQueryCluster(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	direct, err := pgconn.Connect(ctx, c.DSN(""))
	if err != nil {
		t.Fatal(err)
	}
	defer direct.Close(context.Background())
	backends := func(user string) string {
		res, err := direct.Exec(ctx, fmt.Sprintf("select count(*) from pg_stat_activity where usename = '%s'", user)).ReadAll()
		if err != nil {
			t.Fatal(err)
		}
		return string(res[0].Rows[0][0])
	}
	// The server really asks app_alice for a password: without one the
	// login fails, so a proxy login that works used the keys.
	if _, err := pgconn.Connect(ctx, fmt.Sprintf("postgres://app_alice@127.0.0.1:%d/postgres?sslmode=disable", c.Port)); err == nil {
		t.Fatal("the cluster let app_alice in without a password")
	}

	t.Run("scram-sha-256", func(t *testing.T) {
		p := startConfigured(t, authQueryConfig(t, c, "scram-sha-256", "1s", "session", "auth-pw", ""))
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
		if n := backends("app_alice"); n != "3" {
			t.Errorf("%s server backends of app_alice, want 3", n)
		}
		for _, conn := range conns {
			conn.Close(ctx)
		}

		// psql, with the password from the environment.
		psql := func(pw, sql string) (string, error) {
			cmd := exec.CommandContext(ctx, c.Bin("psql"), "-X", "-At", "-c", sql,
				fmt.Sprintf("postgres://app_alice@%s/postgres?sslmode=disable", p.Addr()))
			cmd.Env = append(os.Environ(), "PGPASSWORD="+pw)
			out, err := cmd.CombinedOutput()
			return strings.TrimSpace(string(out)), err
		}
		if out, err := psql("alice-pw", "select current_user"); err != nil || out != "app_alice" {
			t.Errorf("psql: %v %q", err, out)
		}
		if out, err := psql("wrong", "select 1"); err == nil || !strings.Contains(out, `password authentication failed for user "app_alice"`) {
			t.Errorf("psql with a wrong password: %v %q", err, out)
		}

		// Wrong password and unknown user: the same 28P01.
		_, err := whoAmI(ctx, userDSN(p, "app_alice", "wrong", ""))
		wantPgError(t, err, "FATAL", pgerrcode.InvalidPassword, `password authentication failed for user "app_alice"`)
		_, err = whoAmI(ctx, userDSN(p, "nosuchrole", "x", ""))
		wantPgError(t, err, "FATAL", pgerrcode.InvalidPassword, `password authentication failed for user "nosuchrole"`)
		// An md5 role cannot authenticate with SCRAM, as in Postgres.
		_, err = whoAmI(ctx, userDSN(p, "app_md5", "md5-pw", ""))
		wantPgError(t, err, "FATAL", pgerrcode.InvalidPassword, `password authentication failed for user "app_md5"`)
		for _, st := range p.PoolStats() {
			if st.User != "app_alice" {
				t.Errorf("pool for %q: failed logins must not create pools", st.User)
			}
		}
	})

	t.Run("transaction-mode", func(t *testing.T) {
		p := startConfigured(t, authQueryConfig(t, c, "scram-sha-256", "1s", "transaction", "auth-pw", ""))
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
		p := startConfigured(t, authQueryConfig(t, c, "md5", "1s", "session", "auth-pw", ""))
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
		wantPgError(t, err, "FATAL", pgerrcode.InvalidPassword, `password authentication failed for user "app_md5"`)
	})

	t.Run("password-change", func(t *testing.T) {
		p := startConfigured(t, authQueryConfig(t, c, "scram-sha-256", "50ms", "session", "auth-pw", ""))
		if _, err := whoAmI(ctx, userDSN(p, "app_alice", "alice-pw", "")); err != nil {
			t.Fatal(err)
		}
		if _, err := direct.Exec(ctx, "alter role app_alice password 'alice-pw2'").ReadAll(); err != nil {
			t.Fatal(err)
		}
		defer func() {
			_, _ = direct.Exec(context.Background(), "alter role app_alice password 'alice-pw'").ReadAll()
		}()
		time.Sleep(100 * time.Millisecond) // deliberate: outlive the 50ms cache lifetime under test
		_, err := whoAmI(ctx, userDSN(p, "app_alice", "alice-pw", ""))
		wantPgError(t, err, "FATAL", pgerrcode.InvalidPassword, `password authentication failed for user "app_alice"`)
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
		res, err := direct.Exec(ctx, `set password_encryption = 'scram-sha-256';
create role pgaudit_verifier password 'alice-pw';
select rolpassword from pg_authid where rolname = 'pgaudit_verifier'`).ReadAll()
		if err != nil {
			t.Fatal(err)
		}
		users := writeFile(t, "users.txt", fmt.Sprintf("\"app_alice\" %q\n", res[len(res)-1].Rows[0][0]))
		p := startConfigured(t, fmt.Sprintf("[pgaudit]\nlisten = \"127.0.0.1:0\"\nauth_file = %q\n[databases.postgres]\nhost = \"127.0.0.1\"\nport = %d\nsslmode = \"disable\"\n", users, c.Port))
		_, err = whoAmI(ctx, userDSN(p, "app_alice", "alice-pw", ""))
		pe := wantPgError(t, err, "FATAL", pgerrcode.InvalidPassword, "")
		if !strings.Contains(pe.Message, "SCRAM secret") {
			t.Errorf("message %q does not explain the stale secret", pe.Message)
		}
	})

	// The admin console: with auth_dbname, admin users are looked up
	// there too; without it, only the users file counts.
	t.Run("admin-console", func(t *testing.T) {
		showVersion := func(p *pooler.Proxy, pw string) error {
			conn, err := pgconn.Connect(ctx, userDSN(p, "app_alice", pw, "pgaudit"))
			if err != nil {
				return err
			}
			defer conn.Close(ctx)
			_, err = conn.Exec(ctx, "SHOW VERSION").ReadAll()
			return err
		}
		p := startConfigured(t, authQueryConfig(t, c, "scram-sha-256", "1s", "session", "auth-pw", `auth_dbname = "postgres"`))
		if err := showVersion(p, "alice-pw"); err != nil {
			t.Fatalf("admin console via auth_dbname: %v", err)
		}
		wantPgError(t, showVersion(p, "wrong"), "FATAL", pgerrcode.InvalidPassword, `password authentication failed for user "app_alice"`)
		p = startConfigured(t, authQueryConfig(t, c, "scram-sha-256", "1s", "session", "auth-pw", ""))
		wantPgError(t, showVersion(p, "alice-pw"), "FATAL", pgerrcode.InvalidPassword, `password authentication failed for user "app_alice"`)
	})

	t.Run("lookup-failure", func(t *testing.T) {
		p := startConfigured(t, authQueryConfig(t, c, "scram-sha-256", "1s", "session", "wrong", ""))
		_, err := whoAmI(ctx, userDSN(p, "app_alice", "alice-pw", ""))
		wantPgError(t, err, "FATAL", wire.CodeConnectionFailure, "authentication lookup failed")
	})
}
