package admin

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgaudit-proxy/pgaudit/internal/testutil"
	"github.com/pgaudit-proxy/pgaudit/pooler"
)

// showRows runs a SHOW command on the console and returns its rows as
// column name -> value maps.
func showRows(t *testing.T, ctx context.Context, c *pgx.Conn, sql string) []map[string]string {
	t.Helper()
	rows, err := c.Query(ctx, sql)
	if err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	defer rows.Close()
	var out []map[string]string
	for rows.Next() {
		vals, err := rows.Values()
		if err != nil {
			t.Fatal(err)
		}
		m := map[string]string{}
		for i, f := range rows.FieldDescriptions() {
			m[f.Name] = toString(vals[i])
		}
		out = append(out, m)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// TestStatsParseBindListsPtr (issue 13 item 7): SHOW STATS counts the Parse
// and Bind messages of pgbench -M prepared and -M extended; SHOW LISTS
// does not count the admin console as a client logging in; SHOW SERVERS
// ptr values are unique across pools.
func TestStatsParseBindListsPtr(t *testing.T) {
	e := newEnv(t, envOptions{mode: pooler.TransactionMode, size: 2})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	script := filepath.Join(t.TempDir(), "q.sql")
	if err := os.WriteFile(script, []byte("select 1;\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, proto := range []string{"prepared", "extended"} {
		out, err := exec.CommandContext(ctx, cluster.Bin("pgbench"), "-n", "-c", "2", "-t", "25", "-M", proto, "-f", script,
			e.dsn("postgres", "postgres")).CombinedOutput()
		if err != nil {
			t.Fatalf("pgbench -M %s: %v\n%s", proto, err, out)
		}
	}
	admin := e.adminConn(ctx)
	// -M prepared: 2 client Parses and 50 Binds; -M extended: 50 of each.
	// (A session's counters reach the pool when it releases its server,
	// just after the client got its last reply.)
	want := map[string]int{"total_client_parse_count": 52, "total_server_parse_count": 2, "total_bind_count": 100}
	var st map[string]string
	reached := func() bool {
		stats := showRows(t, ctx, admin, "SHOW STATS")
		if len(stats) != 1 {
			t.Fatalf("SHOW STATS: %v", stats)
		}
		st = stats[0]
		for col, min := range want {
			var n int
			if _, err := fmt.Sscan(st[col], &n); err != nil || n < min {
				return false
			}
		}
		return true
	}
	testutil.Within(5*time.Second, reached) // reports what it found below
	for col, min := range want {
		var n int
		if _, err := fmt.Sscan(st[col], &n); err != nil || n < min {
			t.Errorf("SHOW STATS %s = %q, want at least %d", col, st[col], min)
		}
	}
	for _, col := range []string{"avg_client_parse_count", "avg_server_parse_count", "avg_bind_count"} {
		if _, ok := st[col]; !ok {
			t.Errorf("SHOW STATS lacks %s", col)
		}
	}
	if st["avg_bind_count"] == "0" {
		t.Errorf("avg_bind_count is 0 after 100 Binds: %v", st)
	}

	for _, r := range showRows(t, ctx, admin, "SHOW LISTS") {
		if r["list"] == "login_clients" && r["items"] != "0" {
			t.Errorf("SHOW LISTS login_clients = %s with only the console connected", r["items"])
		}
	}

	// A second pool (another user) next to the first.
	direct, err := pgx.Connect(ctx, cluster.DSN("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	defer direct.Close(ctx)
	if _, err := direct.Exec(ctx, "drop role if exists stats_ptr_u; create role stats_ptr_u login superuser"); err != nil {
		t.Fatal(err)
	}
	for _, user := range []string{"postgres", "stats_ptr_u"} {
		c, err := pgx.Connect(ctx, e.dsn("postgres", user))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.Exec(ctx, "select 1"); err != nil {
			t.Fatal(err)
		}
		c.Close(ctx)
	}
	seen := map[string]bool{}
	servers := showRows(t, ctx, admin, "SHOW SERVERS")
	for _, r := range servers {
		if seen[r["ptr"]] {
			t.Errorf("SHOW SERVERS ptr %s repeats: %v", r["ptr"], servers)
		}
		seen[r["ptr"]] = true
	}
	if len(servers) < 2 {
		t.Errorf("SHOW SERVERS: %v", servers)
	}
}
