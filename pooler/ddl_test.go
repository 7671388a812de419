package pooler

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// TestPreparedStatementsAcrossDDL (issue 13 item 3): in transaction mode,
// server statements are shared between clients; after a schema change a
// client's Parse must not bind to one prepared before it. A client that
// prepares after the change gets the new shape with no error for DDL
// through the proxy, and after at most one error for DDL run directly
// against Postgres (the proxy learns of it from that error). pgx's caches
// keep working for clients that prepared before: at most one error (what
// Postgres gives too: "cached plan must not change result type" for
// CacheStatement, a result format count mismatch for CacheDescribe), and
// after an error, the new shape every time.
//
// A statement prepared before the change that runs on a server connection
// that never had it fails too, as on Postgres (see shapegate.go), never
// returns rows in the new shape without an error.
func TestPreparedStatementsAcrossDDL(t *testing.T) {
	for _, mode := range []pgx.QueryExecMode{pgx.QueryExecModeCacheStatement, pgx.QueryExecModeCacheDescribe} {
		t.Run(mode.String(), func(t *testing.T) {
			p := testProxy(t, withMode(TransactionMode, 2))
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			direct := connect(t, ctx, cluster.DSN(""), pgx.QueryExecModeSimpleProtocol)
			ddl := connect(t, ctx, proxyDSN(p, "", ""), pgx.QueryExecModeSimpleProtocol)
			exec := func(c *pgx.Conn, sql string) {
				t.Helper()
				if _, err := c.Exec(ctx, sql); err != nil {
					t.Fatalf("%s: %v", sql, err)
				}
			}
			exec(direct, "drop table if exists ddl_px; create table ddl_px(a int); insert into ddl_px values (1)")
			// shape returns the columns of select * and its error.
			shape := func(c *pgx.Conn) (string, error) {
				rows, err := c.Query(ctx, "select * from ddl_px where $1::int > 0", 1)
				if err != nil {
					return "", err
				}
				defer rows.Close()
				var cols string
				for _, f := range rows.FieldDescriptions() {
					cols += f.Name + " "
				}
				for rows.Next() {
				}
				return cols, rows.Err()
			}
			old := []*pgx.Conn{connect(t, ctx, proxyDSN(p, "", ""), mode), connect(t, ctx, proxyDSN(p, "", ""), mode)}
			for _, c := range old {
				for i := 0; i < 3; i++ {
					if got, err := shape(c); err != nil || got != "a " {
						t.Fatalf("before DDL: %q, %v", got, err)
					}
				}
			}
			// check: fresh clients get the new shape at once; clients
			// that prepared before get at most allowed errors, then the
			// new shape every time.
			check := func(what, want string, allowed int) {
				t.Helper()
				fresh := connect(t, ctx, proxyDSN(p, "", ""), mode)
				for i := 0; i < 3; i++ {
					got, err := shape(fresh)
					if err != nil && allowed > 0 && i == 0 {
						t.Logf("%s: fresh client, first query: %v", what, err)
						continue
					}
					if err != nil || got != want {
						t.Fatalf("%s: a client preparing after the change got %q, %v (want %q)", what, got, err, want)
					}
				}
				for n, c := range old {
					errs := 0
					for i := 0; i < 4; i++ {
						got, err := shape(c)
						if err != nil {
							errs++
							t.Logf("%s: client %d: %v", what, n, err)
							continue
						}
						if got != want && errs > 0 {
							t.Fatalf("%s: client %d got columns %q after its error, want %q", what, n, got, want)
						}
						if got != want {
							t.Errorf("%s: client %d got columns %q without an error, want %q", what, n, got, want)
						}
					}
					if errs > 1 {
						t.Errorf("%s: client %d got %d errors, want at most the first", what, n, errs)
					}
				}
				old = append(old, fresh)
			}
			exec(ddl, "drop table ddl_px; create table ddl_px(a text, b int); insert into ddl_px values ('x', 2)")
			check("re-created through the proxy", "a b ", 0)
			exec(ddl, "alter table ddl_px add column c int")
			check("altered through the proxy", "a b c ", 0)
			exec(direct, "alter table ddl_px drop column a")
			check("altered directly", "b c ", 1)
			exec(direct, "drop table ddl_px; create table ddl_px(z bigint); insert into ddl_px values (3)")
			check("re-created directly", "z ", 1)
			exec(direct, "drop table ddl_px")
		})
	}
}

// TestStatementCachesAcrossDDLPool (issue 13 item 3): pgx clients with
// their statement caches (CacheStatement: named statements described once;
// CacheDescribe: descriptions cached, unnamed statements) through a
// transaction pool smaller than the number of clients, so that statements
// run on server connections that never had them. Across each schema change
// (through the proxy and run directly against Postgres; a table re-created
// with other columns, ALTER COLUMN ... TYPE of a result column and of a
// parameter's column, an enum type re-created; outside and inside a
// transaction) every client gets at most one error per statement, the one
// after which pgx prepares it again, and then the new values: never rows
// decoded against the old description.
func TestStatementCachesAcrossDDLPool(t *testing.T) {
	for _, mode := range []pgx.QueryExecMode{pgx.QueryExecModeCacheStatement, pgx.QueryExecModeCacheDescribe} {
		t.Run(mode.String(), func(t *testing.T) {
			p := testProxy(t, withMode(TransactionMode, 3))
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			direct := connect(t, ctx, cluster.DSN(""), pgx.QueryExecModeSimpleProtocol)
			viaProxy := connect(t, ctx, proxyDSN(p, "", ""), pgx.QueryExecModeSimpleProtocol)
			exec := func(c *pgx.Conn, sql string) {
				t.Helper()
				if _, err := c.Exec(ctx, sql); err != nil {
					t.Fatalf("%s: %v", sql, err)
				}
			}
			exec(direct, "drop table if exists ddl_pool; drop type if exists ddl_pool_mood; create table ddl_pool(id int, a int, b int); insert into ddl_pool values (1, 10, 20)")
			const clients = 6
			conns := make([]*pgx.Conn, clients)
			for i := range conns {
				conns[i] = connect(t, ctx, proxyDSN(p, "", ""), mode)
			}
			const query = "select * from ddl_pool where id = $1"
			// run queries once on conn (inside a transaction when inTx) and
			// returns the row as text.
			run := func(c *pgx.Conn, inTx bool, arg any) (string, error) {
				q := func(tx pgx.Tx) (string, error) {
					var rows pgx.Rows
					var err error
					if tx != nil {
						rows, err = tx.Query(ctx, query, arg)
					} else {
						rows, err = c.Query(ctx, query, arg)
					}
					if err != nil {
						return "", err
					}
					defer rows.Close()
					var out []string
					for rows.Next() {
						vals, err := rows.Values()
						if err != nil {
							return "", err
						}
						cols := make([]string, len(vals))
						for i, v := range vals {
							if b, ok := v.([]byte); ok {
								v = string(b) // a type pgx does not know (the enum)
							}
							cols[i] = fmt.Sprint(v)
						}
						out = append(out, strings.Join(cols, " "))
					}
					return strings.Join(out, ";"), rows.Err()
				}
				if !inTx {
					return q(nil)
				}
				tx, err := c.Begin(ctx)
				if err != nil {
					return "", err
				}
				defer func() { _ = tx.Rollback(ctx) }()
				return q(tx)
			}
			// round: every client runs the query concurrently a few times;
			// each may fail once, then must see want.
			round := func(what, want string, inTx bool, arg any) {
				t.Helper()
				var wg sync.WaitGroup
				errs := make([]string, clients)
				for i, c := range conns {
					wg.Add(1)
					go func() {
						defer wg.Done()
						failed := 0
						for n := 0; n < 4; n++ {
							got, err := run(c, inTx, arg)
							if err != nil {
								failed++
								t.Logf("%s: client %d: %v", what, i, err)
								if failed > 1 {
									errs[i] = fmt.Sprintf("second error: %v", err)
									return
								}
								continue
							}
							if got != want {
								errs[i] = fmt.Sprintf("got %q, want %q", got, want)
								return
							}
						}
					}()
				}
				wg.Wait()
				for i, e := range errs {
					if e != "" {
						t.Errorf("%s: client %d: %s", what, i, e)
					}
				}
			}
			round("before", "1 10 20", false, 1)
			exec(viaProxy, "drop table ddl_pool; create table ddl_pool(id int, a text, c int); insert into ddl_pool values (1, 'x', 30)")
			round("re-created through the proxy", "1 x 30", false, 1)
			exec(direct, "drop table ddl_pool; create table ddl_pool(id int, z bigint); insert into ddl_pool values (1, 40)")
			round("re-created directly", "1 40", false, 1)
			exec(direct, "alter table ddl_pool alter column z type text")
			round("result column's type changed directly", "1 40", false, 1)
			exec(direct, "alter table ddl_pool alter column z type int using z::int")
			round("changed again directly, in a transaction", "1 40", true, 1)
			exec(direct, "alter table ddl_pool alter column id type bigint; insert into ddl_pool values (5000000000, 50)")
			round("parameter's column type changed directly", "5000000000 50", false, int64(5000000000))
			exec(direct, "create type ddl_pool_mood as enum ('a', 'b'); drop table ddl_pool; create table ddl_pool(id int, m ddl_pool_mood); insert into ddl_pool values (1, 'a')")
			round("enum table", "1 a", false, 1)
			exec(viaProxy, "drop table ddl_pool; drop type ddl_pool_mood; create type ddl_pool_mood as enum ('b', 'a'); create table ddl_pool(id int, m ddl_pool_mood); insert into ddl_pool values (1, 'b')")
			round("enum re-created through the proxy, in a transaction", "1 b", true, 1)
			exec(direct, "drop table ddl_pool; drop type ddl_pool_mood; create type ddl_pool_mood as enum ('c'); create table ddl_pool(id int, m ddl_pool_mood); insert into ddl_pool values (1, 'c')")
			round("enum re-created directly", "1 c", false, 1)
			exec(direct, "drop table ddl_pool; drop type ddl_pool_mood")
		})
	}
}
