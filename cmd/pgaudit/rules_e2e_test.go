package main

import (
	"context"
	"os/exec"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgaudit-proxy/pgaudit/internal/pgtest"
	"github.com/pgaudit-proxy/pgaudit/rules"
)

// TestRulesThroughProxy drives real clients through a transaction-mode
// proxy and checks the N+1 rule: positives for an ORM-style loop over named
// statements, a simple-protocol loop with literals and a loop inside a
// transaction; negatives for pgbench -S and -N and a batch with ANY($1).
func TestRulesThroughProxy(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	c := startE2ECluster(t, ctx, pgtest.Options{}, lintSchema, true)

	// startProxy returns a proxy DSN and a function that stops everything
	// and returns the findings.
	startProxy := func(t *testing.T) (string, func() []rules.Finding) {
		e := startE2EProxy(t, ctx, c, auditorOptions{Rules: rules.DefaultConfig()}, 4, nil)
		return e.DSN, func() []rules.Finding {
			e.stop()
			return e.findings("")
		}
	}
	countRule := func(fs []rules.Finding, id string) int {
		n := 0
		for _, f := range fs {
			if f.Rule == id {
				n++
			}
		}
		return n
	}
	loop := func(t *testing.T, conn *pgx.Conn, q pgx.QueryExecMode, inTx bool) {
		t.Helper()
		var tx pgx.Tx
		var err error
		exec := func(sql string, args ...any) pgx.Row { return conn.QueryRow(ctx, sql, append([]any{q}, args...)...) }
		if inTx {
			tx, err = conn.Begin(ctx)
			if err != nil {
				t.Fatal(err)
			}
			exec = func(sql string, args ...any) pgx.Row { return tx.QueryRow(ctx, sql, append([]any{q}, args...)...) }
		}
		var rows pgx.Rows
		if inTx {
			rows, err = tx.Query(ctx, "select author_id from lint_books order by id limit 12", q)
		} else {
			rows, err = conn.Query(ctx, "select author_id from lint_books order by id limit 12", q)
		}
		if err != nil {
			t.Fatal(err)
		}
		var ids []int32
		for rows.Next() {
			var id int32
			_ = rows.Scan(&id)
			ids = append(ids, id)
		}
		rows.Close()
		for _, id := range ids {
			var name string
			if err := exec("select name from lint_authors where id = $1", id).Scan(&name); err != nil {
				t.Fatal(err)
			}
		}
		if inTx {
			if err := tx.Commit(ctx); err != nil {
				t.Fatal(err)
			}
		}
	}
	positives := []struct {
		name string
		mode pgx.QueryExecMode
		inTx bool
	}{
		{"orm-named-statements", pgx.QueryExecModeCacheStatement, false},
		{"simple-protocol-literals", pgx.QueryExecModeSimpleProtocol, false},
		{"inside-transaction", pgx.QueryExecModeCacheStatement, true},
	}
	for _, tc := range positives {
		t.Run(tc.name, func(t *testing.T) {
			dsn, stop := startProxy(t)
			conn, err := pgx.Connect(ctx, dsn)
			if err != nil {
				t.Fatal(err)
			}
			loop(t, conn, tc.mode, tc.inTx)
			conn.Close(ctx)
			fs := stop()
			if countRule(fs, rules.IDNPlusOne) != 1 {
				t.Fatalf("want one n-plus-one finding, got %+v", fs)
			}
			for _, f := range fs {
				if f.Rule == rules.IDNPlusOne && (f.Table == "" && f.Evidence["rewrite"] == nil) {
					t.Fatalf("finding lacks table/rewrite: %+v", f)
				}
			}
		})
	}
	negatives := map[string]func(t *testing.T, dsn string){
		"pgbench-S": func(t *testing.T, dsn string) {
			if out, err := exec.CommandContext(ctx, c.Bin("pgbench"), "-n", "-S", "-c", "4", "-t", "300", "-M", "prepared", dsn).CombinedOutput(); err != nil {
				t.Fatalf("%v\n%s", err, out)
			}
		},
		"pgbench-N": func(t *testing.T, dsn string) {
			if out, err := exec.CommandContext(ctx, c.Bin("pgbench"), "-n", "-N", "-c", "4", "-t", "100", "-M", "extended", dsn).CombinedOutput(); err != nil {
				t.Fatalf("%v\n%s", err, out)
			}
		},
		"any-batch": func(t *testing.T, dsn string) {
			conn, err := pgx.Connect(ctx, dsn)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close(ctx)
			for i := 0; i < 10; i++ {
				rows, err := conn.Query(ctx, "select author_id from lint_books order by id limit 12")
				if err != nil {
					t.Fatal(err)
				}
				var ids []int32
				for rows.Next() {
					var id int32
					_ = rows.Scan(&id)
					ids = append(ids, id)
				}
				rows.Close()
				rows, err = conn.Query(ctx, "select id, name from lint_authors where id = any($1)", ids)
				if err != nil {
					t.Fatal(err)
				}
				rows.Close()
			}
		},
	}
	for name, run := range negatives {
		t.Run(name, func(t *testing.T) {
			dsn, stop := startProxy(t)
			run(t, dsn)
			if fs := stop(); countRule(fs, rules.IDNPlusOne) != 0 {
				t.Fatalf("false N+1 finding: %+v", fs)
			}
		})
	}
}
