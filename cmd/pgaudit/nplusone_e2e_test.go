package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgaudit-proxy/pgaudit/internal/pgtest"
	"github.com/pgaudit-proxy/pgaudit/rules"
)

const ormSchema = `
create table orm_authors(id int primary key, name text);
create table orm_books(id int primary key, author_id int, shelf int);
create table orm_reviews(id serial primary key, book_id int, stars int);
create table orm_products(sku text primary key, name text);
create table orm_customers(email text primary key, name text);
create table orm_categories(id int primary key, name text);
insert into orm_authors select g, 'a' || g from generate_series(1, 200) g;
insert into orm_books select g, 1 + (g * 7) % 200, g % 4 from generate_series(1, 400) g;
insert into orm_reviews (book_id, stars) select 1 + g % 400, g % 5 from generate_series(1, 2800) g;
insert into orm_products select 'P-' || g, 'p' || g from generate_series(1, 500) g;
insert into orm_customers select 'c' || g || '@example.com', 'c' || g from generate_series(1, 500) g;
insert into orm_categories select g, 'cat' || g from generate_series(1, 12) g;
analyze;`

// ormPatterns runs, one connection each, the ORM patterns of issue 14:
// two lazy relations per row (reviews and author per book), an eager
// IN (...) load followed by the same association loaded lazily with
// "= $1", a simple-protocol loop with literal keys, and two independent
// searches taking turns.
func ormPatterns(t *testing.T, ctx context.Context, dsn string) {
	t.Helper()
	connect := func() *pgx.Conn {
		conn, err := pgx.Connect(ctx, dsn)
		if err != nil {
			t.Fatal(err)
		}
		return conn
	}
	ids := func(conn *pgx.Conn, sql string, args ...any) []int32 {
		rows, err := conn.Query(ctx, sql, args...)
		if err != nil {
			t.Fatal(err)
		}
		defer rows.Close()
		var out []int32
		for rows.Next() {
			vals, err := rows.Values()
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, vals[0].(int32))
		}
		if rows.Err() != nil {
			t.Fatal(rows.Err())
		}
		return out
	}
	count := func(conn *pgx.Conn, sql string, args ...any) {
		rows, err := conn.Query(ctx, sql, args...)
		if err != nil {
			t.Fatal(err)
		}
		for rows.Next() {
		}
		rows.Close()
		if rows.Err() != nil {
			t.Fatal(rows.Err())
		}
	}
	// Two lazy relations per book.
	conn := connect()
	books := ids(conn, `SELECT "orm_books"."id", "orm_books"."author_id" FROM "orm_books" ORDER BY "orm_books"."id" LIMIT $1`, 80)
	for _, b := range books {
		count(conn, `SELECT "orm_reviews".* FROM "orm_reviews" WHERE "orm_reviews"."book_id" = $1`, b)
		count(conn, `SELECT "orm_authors".* FROM "orm_authors" WHERE "orm_authors"."id" = $1 LIMIT $2`, 1+(b*7)%200, 1)
	}
	conn.Close(ctx)

	// Eager IN load, then the lazy "= $1" loop of the same association.
	conn = connect()
	books = ids(conn, `SELECT "orm_books"."author_id" FROM "orm_books" WHERE "orm_books"."shelf" = $1 ORDER BY "orm_books"."id" LIMIT 20`, 1)
	args := make([]any, len(books))
	ph := make([]string, len(books))
	for i, a := range books {
		args[i], ph[i] = a, fmt.Sprintf("$%d", i+1)
	}
	count(conn, `SELECT "orm_authors".* FROM "orm_authors" WHERE "orm_authors"."id" IN (`+strings.Join(ph, ", ")+`)`, args...)
	time.Sleep(300 * time.Millisecond) // deliberate: the next request comes later (the detector judges gaps)
	authors := ids(conn, `SELECT "orm_books"."author_id" FROM "orm_books" WHERE "orm_books"."shelf" = $1 ORDER BY "orm_books"."id" LIMIT 20`, 2)
	for _, a := range authors {
		count(conn, `SELECT "orm_authors".* FROM "orm_authors" WHERE "orm_authors"."id" = $1`, a)
	}
	conn.Close(ctx)

	// A simple-protocol loop: the keys are literals in the text.
	conn = connect()
	authors = ids(conn, "SELECT author_id FROM orm_books WHERE shelf = 3 ORDER BY id LIMIT 12", pgx.QueryExecModeSimpleProtocol)
	for _, a := range authors {
		count(conn, fmt.Sprintf("SELECT name FROM orm_authors WHERE id = %d", a), pgx.QueryExecModeSimpleProtocol)
	}
	conn.Close(ctx)

	// Two independent searches taking turns after an unrelated SELECT.
	conn = connect()
	count(conn, "SELECT id, name FROM orm_categories ORDER BY name")
	for i := range 30 {
		count(conn, "SELECT * FROM orm_products WHERE sku = $1", fmt.Sprintf("P-%d", 7*i+1))
		count(conn, "SELECT * FROM orm_customers WHERE email = $1", fmt.Sprintf("c%d@example.com", 3*i+2))
	}
	conn.Close(ctx)
}

// TestNPlusOneORMPatterns (issue 14, items 2, 5, 6) runs ormPatterns
// through the proxy (with an audit log) and directly against Postgres with
// csvlog, stderr and jsonlog on, and checks the N+1 findings of the proxy,
// of lint on the audit log and of lint on each Postgres log.
func TestNPlusOneORMPatterns(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	c := startE2ECluster(t, ctx, pgtest.Options{Conf: []string{
		"logging_collector = on", "log_destination = 'stderr,csvlog,jsonlog'", "log_directory = 'log'",
		"log_filename = 'pg.log'", "log_min_duration_statement = 0",
		"log_line_prefix = '%m [%p] %q%u@%d '",
	}}, ormSchema, false)
	ormPatterns(t, ctx, c.DSN(""))

	dir := t.TempDir()
	auditPath := filepath.Join(dir, "audit.jsonl")
	e := startE2EProxy(t, ctx, c, auditorOptions{AuditLog: auditLogFile(auditPath), Rules: rules.DefaultConfig()}, 4, nil)
	ormPatterns(t, ctx, e.DSN)
	e.stop()

	tables := func(fs []rules.Finding) string {
		var out []string
		for _, f := range fs {
			if f.Rule == rules.IDNPlusOne {
				out = append(out, f.Table)
			}
		}
		return strings.Join(sortedCopy(out), ",")
	}
	lint := func(path string) []rules.Finding {
		var out bytes.Buffer
		fl := lintFlags{format: "auto", output: "json", failOn: "warning", logLevel: "error"}
		if err := runLint(ctx, fl, []string{path}, &out, os.Stderr); exitCode(err) > 1 {
			t.Fatalf("lint %s: %v", path, err)
		}
		var r lintReport
		if err := json.Unmarshal(out.Bytes(), &r); err != nil {
			t.Fatalf("%v\n%s", err, out.String())
		}
		return r.Findings
	}
	proxy := e.findings("")
	// Through the proxy: reviews and authors per book (two loops in one
	// pass), and the lazy authors loop after an eager IN load: the same
	// authors shape "= $1", found once, with its own text; the searches
	// taking turns are no N+1.
	if got := tables(proxy); got != "orm_authors,orm_authors,orm_authors,orm_reviews" {
		for _, f := range proxy {
			t.Logf("%s %s %v", f.Rule, f.Message, f.Evidence)
		}
		t.Fatalf("proxy N+1 tables %q", got)
	}
	proxyIDs := map[string]bool{}
	for _, f := range proxy {
		if f.Rule == rules.IDNPlusOne {
			proxyIDs[f.ID] = true
			if strings.Contains(f.Query, " = $1") == strings.Contains(f.Query, " IN (") {
				t.Errorf("finding query %q", f.Query)
			}
		}
	}
	// lint on the audit log finds every N+1 the proxy found, and no
	// other (issue 14, item 9: the simple-protocol loop too, through the
	// keyed literal_hash of its statement records).
	fromAudit := lint(auditPath)
	auditIDs := map[string]bool{}
	for _, f := range fromAudit {
		if f.Rule == rules.IDNPlusOne {
			auditIDs[f.ID] = true
		}
	}
	if len(auditIDs) != len(proxyIDs) {
		t.Errorf("audit-log lint N+1 %v, proxy %v", auditIDs, proxyIDs)
	}
	for id := range proxyIDs {
		if !auditIDs[id] {
			t.Errorf("proxy finding %s not found by lint on the audit log", id)
		}
	}
	if b, _ := os.ReadFile(auditPath); bytes.Contains(b, []byte("WHERE id = 1")) || !bytes.Contains(b, []byte(`"literal_hash":"`)) {
		t.Errorf("audit log: literals written, or no literal_hash")
	}
	// Postgres's own logs carry no row counts: the lazy loop right after
	// its source is found (medium confidence); two lookups taking turns
	// (searches, or two lazy relations per row) are not judged.
	// A marker sent after everything else: once each log holds it, the
	// logging collector has written every statement before it.
	if out, err := c.Psql(ctx, "", "-q", "-c", "select 'pgaudit-test: logs complete'"); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	for _, name := range []string{"pg.csv", "pg.log", "pg.json"} {
		waitForLog(t, filepath.Join(c.DataDir, "log", name), "pgaudit-test: logs complete")
	}
	for _, name := range []string{"pg.csv", "pg.log", "pg.json"} {
		fs := lint(filepath.Join(c.DataDir, "log", name))
		if got := tables(fs); got != "orm_authors,orm_authors" {
			for _, f := range fs {
				t.Logf("%s: %s %s %v", name, f.Rule, f.Message, f.Evidence)
			}
			t.Errorf("%s: N+1 tables %q, want orm_authors twice", name, got)
		}
	}
}

func sortedCopy(s []string) []string {
	out := append([]string(nil), s...)
	for i := 1; i < len(out); i++ {
		for j := i; j > 0 && out[j] < out[j-1]; j-- {
			out[j], out[j-1] = out[j-1], out[j]
		}
	}
	return out
}
