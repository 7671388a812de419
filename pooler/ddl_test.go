package pooler

import (
	"context"
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
// Not asserted, a documented difference (README): a statement prepared
// before the change that runs on a server connection that never had it
// is prepared there anew and returns the new shape without the error
// Postgres would give, so a client that cached the old description does
// not learn of the change.
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
							t.Logf("%s: client %d still sees %q (its statement was prepared anew on a server that never had it: see the README)", what, n, got)
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
