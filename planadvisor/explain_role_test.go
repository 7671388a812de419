package planadvisor

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgaudit-proxy/pgaudit/analyzer"
	"github.com/pgaudit-proxy/pgaudit/internal/event"
	"github.com/pgaudit-proxy/pgaudit/internal/pgtest"
	"github.com/pgaudit-proxy/pgaudit/rules"
)

// roleSetupSQL: mallory, a non-superuser, owns schema m with a table, an
// IMMUTABLE plpgsql function that, when planned by the explainer, takes
// advisory lock 42 and terminates the superuser backend whose pid is in
// m.victim, and objects that reach it indirectly (a view, an operator, a
// column default). secrets belongs to the superuser, with no grant.
const roleSetupSQL = `
CREATE ROLE mallory LOGIN;
CREATE TABLE secrets (id int, v int);
INSERT INTO secrets SELECT g, g % 1000 FROM generate_series(1, 50000) g;
CREATE SCHEMA m AUTHORIZATION mallory;
SET ROLE mallory;
CREATE TABLE m.t (id int, v int);
INSERT INTO m.t SELECT g, g % 1000 FROM generate_series(1, 50000) g;
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
CREATE FUNCTION m.evil_eq(int, int) RETURNS bool IMMUTABLE LANGUAGE plpgsql AS $$
BEGIN RETURN m.evil($1) = $2; END $$;
CREATE OPERATOR m.=== (LEFTARG = int, RIGHTARG = int, FUNCTION = m.evil_eq);
CREATE FUNCTION m.locker(int) RETURNS int IMMUTABLE LANGUAGE plpgsql AS $$
BEGIN PERFORM pg_advisory_lock(43); RETURN $1; END $$;
CREATE FUNCTION m.harmless() RETURNS int VOLATILE LANGUAGE plpgsql AS $$ BEGIN RETURN 1; END $$;
CREATE VIEW m.evil_view AS SELECT * FROM m.t WHERE v = m.evil(1);
CREATE VIEW m.view_of_view AS SELECT * FROM m.evil_view;
CREATE TABLE m.sink (id int, v int, tag int DEFAULT m.evil(3));
RESET ROLE;
ANALYZE secrets, m.t;
`

type roleEnv struct {
	c      *pgtest.Cluster
	victim *pgx.Conn
	hypo   bool // HypoPG installed: the advisor plans as mallory too
}

func startRoleEnv(t *testing.T) *roleEnv {
	t.Helper()
	c := startCluster(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if out, err := c.Psql(ctx, "", "-q", "-c", roleSetupSQL); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	victim, err := pgx.Connect(ctx, c.DSN(""))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { victim.Close(context.Background()) })
	if _, err := victim.Exec(ctx, "INSERT INTO m.victim SELECT pg_backend_pid()"); err != nil {
		t.Fatal(err)
	}
	env := &roleEnv{c: c, victim: victim}
	if _, err := os.Stat(hypopgControl); err == nil {
		if _, err := victim.Exec(ctx, "CREATE EXTENSION hypopg"); err != nil {
			t.Fatal(err)
		}
		env.hypo = true
	}
	return env
}

func (env *roleEnv) malloryDSN() string {
	return fmt.Sprintf("postgres://mallory@127.0.0.1:%d/postgres?sslmode=disable", env.c.Port)
}

// unharmed fails the test when the superuser backend was terminated or an
// advisory lock is held by anyone.
func (env *roleEnv) unharmed(t *testing.T) {
	t.Helper()
	ctx := context.Background()
	if err := env.victim.Ping(ctx); err != nil {
		t.Fatalf("superuser backend terminated: %v", err)
	}
	var locks int
	if err := env.victim.QueryRow(ctx, "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'").Scan(&locks); err != nil {
		t.Fatal(err)
	}
	if locks != 0 {
		t.Errorf("%d advisory locks held", locks)
	}
}

func (env *roleEnv) explainer(t *testing.T, cfg ExplainConfig) *Explainer {
	t.Helper()
	cfg.Rate, cfg.Burst = 1000, 100
	e, err := NewExplainer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Close)
	return e
}

// TestExplainRoleIsolation: issue 12, hole 1, at the analyzer: every
// defence on its own against mallory's IMMUTABLE function (advisory lock
// 42 plus pg_terminate_backend of a superuser backend).
func TestExplainRoleIsolation(t *testing.T) {
	t.Parallel() // its own cluster
	env := startRoleEnv(t)
	ctx := context.Background()
	evil := "SELECT count(*) FROM m.t WHERE v = m.evil(1)"

	t.Run("ConnectionOfAnotherRoleRefused", func(t *testing.T) {
		// A superuser DSN for mallory's statements: refused on connect,
		// before anything is planned.
		e := env.explainer(t, ExplainConfig{DSN: env.c.DSN(""), Role: "mallory"})
		_, err := e.Inspect(ctx, ExplainRequest{Query: evil}, InspectOptions{})
		if !errors.Is(err, ErrRoleMismatch) {
			t.Fatalf("Inspect: %v, want ErrRoleMismatch", err)
		}
		if c := e.Counters(); c.RoleMismatch != 1 || c.Run != 0 {
			t.Errorf("counters %+v", c)
		}
		env.unharmed(t)
	})

	t.Run("RoleDefaultSetRoleRefused", func(t *testing.T) {
		// A role-level default (ALTER ROLE ... SET role): session_user is
		// mallory, current_user is not.
		if _, err := env.victim.Exec(ctx, "CREATE ROLE helper; GRANT helper TO mallory; ALTER ROLE mallory SET role = 'helper'"); err != nil {
			t.Fatal(err)
		}
		defer func() {
			if _, err := env.victim.Exec(ctx, "ALTER ROLE mallory RESET role"); err != nil {
				t.Fatal(err)
			}
		}()
		e := env.explainer(t, ExplainConfig{DSN: env.malloryDSN(), Role: "mallory"})
		_, err := e.Inspect(ctx, ExplainRequest{Query: "SELECT * FROM m.t WHERE v = 1"}, InspectOptions{})
		if !errors.Is(err, ErrRoleMismatch) || !strings.Contains(err.Error(), "helper") {
			t.Fatalf("Inspect: %v, want ErrRoleMismatch naming helper", err)
		}
	})

	t.Run("RunsAsMalloryWithoutPrivilege", func(t *testing.T) {
		// With the user-code check off, the function does run at plan
		// time, but as mallory: pg_terminate_backend is refused (42501),
		// and the advisory lock it took goes with DISCARD ALL.
		// Both are told apart as user code (the error's context names
		// the function; the lock is seen before the rollback).
		e := env.explainer(t, ExplainConfig{DSN: env.malloryDSN(), Role: "mallory", skipUserCodeCheck: true})
		_, err := e.Inspect(ctx, ExplainRequest{Query: evil}, InspectOptions{})
		var pe *pgconn.PgError
		if !errors.As(err, &pe) || pe.Code != "42501" || !errors.Is(err, ErrRunsUserCode) {
			t.Fatalf("Inspect: %v, want mallory's 42501 from pg_terminate_backend, as user code", err)
		}
		env.unharmed(t)
		_, err = e.Inspect(ctx, ExplainRequest{Query: "SELECT * FROM m.t WHERE v = m.locker(1)"}, InspectOptions{})
		if !errors.Is(err, ErrRunsUserCode) || !strings.Contains(err.Error(), "advisory lock") {
			t.Fatalf("Inspect with a lock-taking function: %v, want ErrRunsUserCode", err)
		}
		env.unharmed(t)
		if c := e.Counters(); c.Discarded != 0 || c.UserCode != 2 || c.Errors != 0 {
			t.Errorf("counters %+v: want 2 user code, none discarded (DISCARD ALL cleans up)", c)
		}
	})

	t.Run("UserCodeRefusedBeforePlanning", func(t *testing.T) {
		e := env.explainer(t, ExplainConfig{DSN: env.malloryDSN(), Role: "mallory"})
		for _, q := range []string{
			evil,
			"SELECT * FROM m.t WHERE m.evil(v) = 1",
			"SELECT * FROM m.t WHERE v OPERATOR(m.===) 1",
			"SELECT * FROM m.evil_view WHERE id = 1",
			"SELECT * FROM m.view_of_view WHERE id = 1",
			"INSERT INTO m.sink (id, v) SELECT id, v FROM m.t WHERE v = 5",
			"SELECT * FROM m.t t JOIN LATERAL (SELECT m.evil(t.v)) x ON true WHERE t.v = 1",
		} {
			_, err := e.Inspect(ctx, ExplainRequest{Query: q}, InspectOptions{})
			if !errors.Is(err, ErrRunsUserCode) {
				t.Errorf("Inspect(%q): %v, want ErrRunsUserCode", q, err)
			}
		}
		env.unharmed(t)
		// Built-in, volatile and unrelated functions do not count.
		for _, q := range []string{
			"SELECT * FROM m.t WHERE v = 1",
			"SELECT lower(id::text) FROM m.t WHERE v = abs(-1) AND id BETWEEN 1 AND 10",
			"SELECT * FROM m.t WHERE v = m.harmless()",
		} {
			if _, err := e.Inspect(ctx, ExplainRequest{Query: q}, InspectOptions{NoAdvice: true}); err != nil {
				t.Errorf("Inspect(%q): %v", q, err)
			}
		}
		if c := e.Counters(); c.UserCode != 7 || c.Run != 3 {
			t.Errorf("counters %+v, want 7 refused for user code and 3 run", c)
		}
	})

	t.Run("Sampler", func(t *testing.T) {
		mallory := env.explainer(t, ExplainConfig{DSN: env.malloryDSN(), Role: "mallory"})
		now := time.Now()
		fp := analyzer.NewFingerprinter(analyzer.FingerprintConfig{})
		st := analyzer.NewStats(analyzer.StatsConfig{})
		var found []*rules.Finding
		var asked []string
		s, err := NewSampler(SamplerConfig{
			Stats: st,
			ExplainerFor: func(db, user string) *Explainer {
				asked = append(asked, db+"/"+user)
				if user != "mallory" {
					return nil
				}
				return mallory
			},
			Emit: func(f *rules.Finding) { found = append(found, f) },
			Now:  func() time.Time { return now },
		})
		if err != nil {
			t.Fatal(err)
		}
		feed := func(q, sqlstate string) {
			ev := &event.Event{Kind: event.KindStatement, Protocol: event.ProtocolSimple, Text: q, Database: "postgres", User: "mallory",
				Start: now, Duration: 50 * time.Millisecond, SQLState: sqlstate, Rows: 1}
			sh, _ := fp.Lookup(q, ev.Protocol)
			st.Record(ev, sh)
			s.Observe(&analyzer.Analyzed{Event: ev, Shape: sh})
		}
		// Denied for its client: never planned, no finding.
		feed("SELECT * FROM secrets WHERE v = 7", "42501")
		// Her function: refused once, never tried again.
		feed(evil, "")
		// Her own table: planned as her.
		feed("SELECT * FROM m.t WHERE v = 7", "")
		s.RunOnce(ctx)
		env.unharmed(t)
		if f := findRule(found, rules.IDSeqScan); f == nil || f.Table != "m.t" {
			t.Errorf("no seq-scan finding for m.t")
		}
		for _, f := range found {
			if f.Table != "m.t" || strings.Contains(f.Query, "evil") {
				t.Errorf("finding %s on %s for %s: only the plain m.t shape may be planned", f.Rule, f.Table, f.Query)
			}
		}
		// The index advisor's validation plans in the same session, as
		// mallory; HypoPG works for her.
		if mi := findRule(found, rules.IDMissingIndex); env.hypo && (mi == nil || mi.Evidence["validated"] != true) {
			t.Errorf("missing-index finding %+v, want one validated with HypoPG as mallory (explainer %+v)", mi, mallory.Counters())
		}
		if c := s.Counters(); c.Checked != 2 || c.UserCode != 1 || c.Failed != 0 {
			t.Errorf("sampler counters %+v", c)
		}
		for _, a := range asked {
			if a != "postgres/mallory" {
				t.Errorf("explainer asked for %q", a)
			}
		}
		// A later round, past the explain interval: the user-code shape
		// stays out, and the denied one too.
		now = now.Add(time.Hour)
		found, asked = nil, nil
		s.RunOnce(ctx)
		if c := s.Counters(); c.Checked != 3 || c.UserCode != 1 {
			t.Errorf("second round: counters %+v, want only m.t re-checked", c)
		}
		if mc := mallory.Counters(); mc.UserCode != 1 {
			t.Errorf("explainer counters %+v: the user-code shape was tried again", mc)
		}
		// Denied after succeeding: the example goes, and so does planning.
		feed("SELECT * FROM m.t WHERE v = 7", "42501")
		now = now.Add(time.Hour)
		s.RunOnce(ctx)
		if c := s.Counters(); c.Checked != 3 {
			t.Errorf("after a 42501 for the example's user: counters %+v, want no new check", c)
		}
	})
}

func TestDSNNamesUser(t *testing.T) {
	t.Parallel()
	for dsn, want := range map[string]bool{
		"postgres://u@h/db":                         true,
		"postgresql://u:pw@h:5432/db?sslmode=off":   true,
		"postgres://h/db?user=u":                    true,
		"postgres://h/db":                           false,
		"postgres:///db?host=/tmp":                  false,
		"host=h dbname=d user=u":                    true,
		"host=h user = 'u x' dbname=d":              true,
		"host=h dbname=d":                           false,
		"host=h password='user=u' dbname=d":         false,
		"host=h options='-c user=x' dbname=d":       false,
		"user='' host=h":                            false,
		"":                                          false,
		"host=h dbname=d application_name=user=bob": false,
	} {
		if got := DSNNamesUser(dsn); got != want {
			t.Errorf("DSNNamesUser(%q) = %v, want %v", dsn, got, want)
		}
	}
	if _, err := NewExplainer(ExplainConfig{DSN: "postgres://127.0.0.1:1/db"}); err == nil {
		t.Error("a DSN without a user was accepted")
	}
	if _, err := NewExplainer(ExplainConfig{Conn: &pgconn.Config{Host: "127.0.0.1", Port: 1}}); err == nil {
		t.Error("a Conn without a user was accepted")
	}
}
