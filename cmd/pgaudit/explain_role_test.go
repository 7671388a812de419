package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgerrcode"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/rs/zerolog"

	"github.com/pgaudit-proxy/pgaudit/analyzer"
	"github.com/pgaudit-proxy/pgaudit/internal/pgtest"
	"github.com/pgaudit-proxy/pgaudit/internal/testutil"
	"github.com/pgaudit-proxy/pgaudit/pooler"
	"github.com/pgaudit-proxy/pgaudit/rules"
)

// explainRoleSchema is issue 12's setup: a superuser-owned table mallory
// has no grant on, and mallory's own schema with a table and an IMMUTABLE
// plpgsql function that, when the EXPLAIN sampler plans it (the planner
// folds IMMUTABLE calls), takes advisory lock 42 and terminates the
// superuser backend whose pid is in m.victim. For mallory's own
// executions it does nothing, as an attacker's function would.
const explainRoleSchema = `
CREATE ROLE mallory LOGIN PASSWORD 'mallory-pw';
CREATE TABLE secrets (id int, v int);
INSERT INTO secrets SELECT g, g % 1000 FROM generate_series(1, 100000) g;
CREATE SCHEMA m AUTHORIZATION mallory;
SET ROLE mallory;
CREATE TABLE m.t (id int, v int);
INSERT INTO m.t SELECT g, g % 1000 FROM generate_series(1, 100000) g;
CREATE TABLE m.victim (pid int);
CREATE FUNCTION m.evil(int) RETURNS int IMMUTABLE LANGUAGE plpgsql AS $$
BEGIN
	IF current_setting('application_name') <> 'pgaudit-explain' THEN
		RETURN $1;
	END IF;
	PERFORM pg_advisory_lock(42);
	PERFORM pg_terminate_backend(pid) FROM m.victim;
	RETURN $1;
END $$;
RESET ROLE;
ANALYZE secrets, m.t;
`

// TestExplainRunsAsClientRole is issue 12, hole 1: a database entry with
// no user and no explain_dsn (clients log in upstream as themselves, with
// their password from the users file, which Postgres requires of mallory), the
// proxy's environment pointing libpq's default user at the superuser
// (PGUSER=postgres, as when pgaudit runs as the OS user postgres). The
// EXPLAIN sampler must plan mallory's statements as mallory: her function
// neither terminates the superuser's backend nor leaves an advisory lock,
// the statement she was denied (42501) is never planned and yields no
// finding, and the sampler's connections are mallory's, not the default
// user's.
func TestExplainRunsAsClientRole(t *testing.T) {
	t.Run("PlainPassword", func(t *testing.T) { testExplainRunsAsClientRole(t, false) })
	// The users file holds mallory's SCRAM verifier, as copied from
	// pg_authid: the sampler logs in with the keys her own login left
	// in her pool (SCRAM pass-through), still as mallory.
	t.Run("SCRAMVerifier", func(t *testing.T) { testExplainRunsAsClientRole(t, true) })
}

func testExplainRunsAsClientRole(t *testing.T, scramFile bool) {
	if testing.Short() {
		t.Skip("needs a real Postgres; skipped with -short")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	// mallory must log in with her password; everyone else is trusted.
	c, err := pgtest.Start(ctx, pgtest.Options{Conf: []string{"log_connections = on"}, HBA: `
local all all trust
host all mallory 127.0.0.1/32 scram-sha-256
host all all 127.0.0.1/32 trust
`})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Stop()
	if out, err := c.Psql(ctx, "", "-q", "-c", explainRoleSchema); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}

	// The superuser backend mallory's function goes after.
	victim, err := pgx.Connect(ctx, c.DSN(""))
	if err != nil {
		t.Fatal(err)
	}
	defer victim.Close(ctx)
	if _, err := victim.Exec(ctx, "INSERT INTO m.victim SELECT pg_backend_pid()"); err != nil {
		t.Fatal(err)
	}

	t.Setenv("PGUSER", "postgres") // libpq's default user: the superuser
	dir := t.TempDir()
	usersFile := filepath.Join(dir, "users.txt")
	secret := "mallory-pw"
	if scramFile {
		if err := victim.QueryRow(ctx, "SELECT rolpassword FROM pg_authid WHERE rolname = 'mallory'").Scan(&secret); err != nil || !strings.HasPrefix(secret, "SCRAM-SHA-256$") {
			t.Fatalf("mallory's verifier: %q, %v", secret, err)
		}
	}
	if err := os.WriteFile(usersFile, []byte(fmt.Sprintf("%q %q\n", "mallory", secret)), 0o600); err != nil {
		t.Fatal(err)
	}
	conf := filepath.Join(dir, "pgaudit.toml")
	if err := os.WriteFile(conf, fmt.Appendf(nil, `
[pgaudit]
listen = "127.0.0.1:0"
auth_type = "scram-sha-256"
auth_file = %q
pool_mode = "transaction"
admin_listen = ""

[databases.postgres]
host = "127.0.0.1"
port = %d
dbname = "postgres"
sslmode = "disable"
`, usersFile, c.Port), 0o600); err != nil {
		t.Fatal(err)
	}
	st, err := loadSettings(proxyFlags{configPath: conf})
	if err != nil {
		t.Fatal(err)
	}
	log := zerolog.Nop()
	aud, err := startAuditor(ctx, st.auditorOptions(log))
	if err != nil {
		t.Fatal(err)
	}
	p := pooler.New(st.proxy, aud.pipeline, log)
	st.attachProxy(p)
	if err := p.Listen(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { defer close(done); _ = p.Serve(ctx) }()
	stopped := false
	stop := func() {
		if !stopped {
			stopped = true
			_ = p.Close()
			<-done
			aud.stop(log)
		}
	}
	defer stop()

	mallory, err := pgx.Connect(ctx, fmt.Sprintf("postgres://mallory:mallory-pw@%s/postgres?sslmode=disable", p.Addr()))
	if err != nil {
		t.Fatal(err)
	}
	defer mallory.Close(ctx)
	var who string
	if err := mallory.QueryRow(ctx, "SELECT current_user").Scan(&who); err != nil || who != "mallory" {
		t.Fatalf("through the proxy: current_user %q, %v", who, err)
	}
	for i := range 3 {
		var n int
		// Her function, planned by her own session: harmless there.
		if err := mallory.QueryRow(ctx, fmt.Sprintf("SELECT count(*) FROM m.t WHERE v = m.evil(%d)", i), pgx.QueryExecModeSimpleProtocol).Scan(&n); err != nil {
			t.Fatal(err)
		}
		// A table she has no grant on: 42501 every time.
		_, err := mallory.Exec(ctx, fmt.Sprintf("SELECT * FROM secrets WHERE v = %d", i), pgx.QueryExecModeSimpleProtocol)
		var pe *pgconn.PgError
		if !errors.As(err, &pe) || pe.Code != pgerrcode.InsufficientPrivilege {
			t.Fatalf("SELECT from secrets as mallory: %v, want 42501", err)
		}
		// A plain seq scan of her own table: planned, as her.
		if err := mallory.QueryRow(ctx, fmt.Sprintf("SELECT count(*) FROM m.t WHERE v = %d", i), pgx.QueryExecModeSimpleProtocol).Scan(&n); err != nil {
			t.Fatal(err)
		}
	}
	// Wait for the analyzer to have seen all nine statements.
	testutil.Eventually(t, 30*time.Second, "the analyzer to see all 9 statements", func() bool {
		var calls uint64
		for _, sh := range aud.pipeline.Stats().TopShapes(analyzer.ByTotalTime, 50) {
			if strings.Contains(sh.Query, "m.t") || strings.Contains(sh.Query, "secrets") {
				calls += sh.Calls
			}
		}
		return calls >= 9
	})
	aud.explainNow(ctx)

	if err := victim.Ping(ctx); err != nil {
		t.Errorf("superuser backend after the sampler ran: %v (terminated by mallory's function)", err)
	}
	observer, err := pgx.Connect(ctx, c.DSN(""))
	if err != nil {
		t.Fatal(err)
	}
	defer observer.Close(ctx)
	var locks int
	if err := observer.QueryRow(ctx, "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'").Scan(&locks); err != nil {
		t.Fatal(err)
	}
	if locks != 0 {
		t.Errorf("%d advisory locks held after the sampler ran", locks)
	}
	// Per-client connections are not kept while idle (a backend leaves
	// pg_stat_activity a moment after its client closed).
	var idle int
	testutil.Within(5*time.Second, func() bool {
		if err := observer.QueryRow(ctx, "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pgaudit-explain'").Scan(&idle); err != nil {
			t.Fatal(err)
		}
		return idle == 0
	})
	if idle != 0 {
		t.Errorf("%d EXPLAIN connections still open 5s after the round", idle)
	}
	// Who the sampler's connections logged in as (log_connections).
	logText, err := os.ReadFile(c.LogFile)
	if err != nil {
		t.Fatal(err)
	}
	var users []string
	for _, line := range strings.Split(string(logText), "\n") {
		if !strings.Contains(line, "connection authorized") || !strings.Contains(line, "application_name=pgaudit-explain") {
			continue
		}
		_, rest, _ := strings.Cut(line, " user=")
		u, _, _ := strings.Cut(rest, " ")
		users = append(users, u)
	}
	if len(users) == 0 {
		t.Error("the sampler opened no connection")
	}
	for _, u := range users {
		if u != "mallory" {
			t.Errorf("EXPLAIN connections logged in as %v, want only mallory", users)
			break
		}
	}

	stop()
	var onT bool
	for _, f := range aud.engine.Findings() {
		if f.Table == "secrets" {
			t.Errorf("finding about a table mallory was denied: %s %s", f.Rule, f.Query)
		}
		if f.Rule == rules.IDSeqScan && f.Table == "m.t" && !strings.Contains(f.Query, "evil") {
			onT = true
		}
		if strings.Contains(f.Query, "evil") {
			t.Errorf("the shape calling mallory's function was planned: %s %s", f.Rule, f.Query)
		}
	}
	if !onT {
		t.Errorf("no seq-scan finding for mallory's own m.t: the sampler did not plan as her (findings %+v)", aud.engine.Findings())
	}
}

// TestExplainTargets: which connection plans whose statements, from the
// configuration alone (no server needed).
func TestExplainTargets(t *testing.T) {
	t.Setenv("PGUSER", "postgres")
	t.Setenv("PGPASSWORD", "os-users-secret")
	dir := t.TempDir()
	users := filepath.Join(dir, "users.txt")
	if err := os.WriteFile(users, []byte(`"mallory" "mallory-pw"`+"\n"+`"alice" "md5c6b6dd02ea2bd4d9d3b4ae6e1e52e3be"`+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	load := func(t *testing.T, dbs string) (*settings, error) {
		t.Helper()
		conf := filepath.Join(dir, t.Name()[strings.LastIndex(t.Name(), "/")+1:]+".toml")
		body := "[pgaudit]\nlisten = \"127.0.0.1:0\"\nauth_type = \"md5\"\nauth_file = \"" + users + "\"\n" + dbs
		if err := os.WriteFile(conf, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return loadSettings(proxyFlags{configPath: conf})
	}

	t.Run("NoUserNoExplainDSN", func(t *testing.T) {
		st, err := load(t, "[databases.app]\nhost = \"db\"\nport = 5432\n")
		if err != nil {
			t.Fatal(err)
		}
		tg, ok := st.explainTarget("app", "mallory")
		if !ok || tg.Role != "mallory" || tg.Conn == nil || tg.Conn.User != "mallory" || tg.Conn.Password != "mallory-pw" || tg.Conn.Host != "db" {
			t.Errorf("mallory: %v %+v", ok, tg)
		}
		// No plain-text password: none at all, never the OS user's.
		tg, ok = st.explainTarget("app", "alice")
		if !ok || tg.Role != "alice" || tg.Conn.User != "alice" || tg.Conn.Password != "" {
			t.Errorf("alice: %v role %q user %q password set %v", ok, tg.Role, tg.Conn.User, tg.Conn.Password != "")
		}
		for _, c := range [][2]string{{"app", ""}, {"", "mallory"}, {"other", "mallory"}} {
			if _, ok := st.explainTarget(c[0], c[1]); ok {
				t.Errorf("database %q user %q: planned, want not", c[0], c[1])
			}
		}
	})

	t.Run("ForcedUser", func(t *testing.T) {
		st, err := load(t, "[databases.app]\nhost = \"db\"\nuser = \"app\"\npassword = \"app-pw\"\n")
		if err != nil {
			t.Fatal(err)
		}
		for _, u := range []string{"mallory", "alice"} {
			tg, ok := st.explainTarget("app", u)
			if !ok || tg.Role != "app" || tg.Conn.User != "app" || tg.Conn.Password != "app-pw" {
				t.Errorf("%s: %v %+v", u, ok, tg)
			}
		}
	})

	t.Run("ExplainDSNServesItsRoleOnly", func(t *testing.T) {
		st, err := load(t, "[databases.app]\nhost = \"db\"\nexplain_dsn = \"postgres://mallory@replica/app\"\n")
		if err != nil {
			t.Fatal(err)
		}
		if tg, ok := st.explainTarget("app", "mallory"); !ok || tg.DSN != "postgres://mallory@replica/app" || tg.Role != "mallory" {
			t.Errorf("mallory: %v %+v", ok, tg)
		}
		if tg, ok := st.explainTarget("app", "alice"); ok {
			t.Errorf("alice planned on mallory's explain_dsn: %+v", tg)
		}
	})

	t.Run("ExplainDSNWithoutUser", func(t *testing.T) {
		_, err := load(t, "[databases.app]\nhost = \"db\"\nexplain_dsn = \"host=replica dbname=app\"\n")
		if err == nil || !strings.Contains(err.Error(), "names no user") {
			t.Errorf("err = %v", err)
		}
	})

	t.Run("ExplainDSNOtherThanForcedUser", func(t *testing.T) {
		_, err := load(t, "[databases.app]\nhost = \"db\"\nuser = \"app\"\nexplain_dsn = \"postgres://postgres@db/app\"\n")
		if err == nil || !strings.Contains(err.Error(), `runs as "app"`) {
			t.Errorf("err = %v", err)
		}
	})

	t.Run("LintDSNWithoutUser", func(t *testing.T) {
		log := filepath.Join(dir, "empty.log")
		if err := os.WriteFile(log, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		var out strings.Builder
		err := runLint(context.Background(), lintFlags{format: "auto", output: "json", failOn: "warning", logLevel: "error", dsn: "host=127.0.0.1 dbname=postgres"}, []string{log}, &out, &out)
		if exitCode(err) != 2 || !strings.Contains(err.Error(), "must name its user") {
			t.Errorf("lint --dsn without a user: %v", err)
		}
	})
}
