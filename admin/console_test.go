package admin

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgerrcode"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgaudit-proxy/pgaudit/internal/testutil"
	"github.com/pgaudit-proxy/pgaudit/pooler"
)

// showCommands are every SHOW the console answers, in golden-file order.
var showCommands = []string{
	"POOLS", "STATS", "STATS_TOTALS", "STATS_AVERAGES", "TOTALS", "CLIENTS", "SERVERS", "DATABASES",
	"CONFIG", "LISTS", "QUERIES", "FINDINGS", "VERSION", "HELP",
}

// TestShowColumns runs every SHOW through pgx (simple protocol) and checks
// the column names against testdata/show_columns.golden (go test -update
// rewrites it), plus a few values.
func TestShowColumns(t *testing.T) {
	e := newEnv(t, envOptions{mode: pooler.TransactionMode, size: 2})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	e.workload(ctx, 5)
	held := e.appConn(ctx) // a client that stays connected
	if _, err := held.Exec(ctx, "select 1"); err != nil {
		t.Fatal(err)
	}
	c := e.adminConn(ctx)
	var got strings.Builder
	results := map[string][]map[string]any{}
	for _, what := range showCommands {
		rows, err := c.Query(ctx, "show "+strings.ToLower(what)+";")
		if err != nil {
			t.Fatalf("SHOW %s: %v", what, err)
		}
		var names []string
		for _, fd := range rows.FieldDescriptions() {
			names = append(names, fd.Name)
		}
		maps, err := pgx.CollectRows(rows, pgx.RowToMap)
		if err != nil {
			t.Fatalf("SHOW %s rows: %v", what, err)
		}
		results[what] = maps
		fmt.Fprintf(&got, "SHOW %s: %s\n", what, strings.Join(names, ", "))
	}
	golden := filepath.Join("testdata", "show_columns.golden")
	if *update {
		if err := os.WriteFile(golden, []byte(got.String()), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatalf("%v (run go test ./admin -run TestShowColumns -update to create it)", err)
	}
	if got.String() != string(want) {
		t.Errorf("SHOW columns differ from %s:\n got:\n%s\nwant:\n%s", golden, got.String(), want)
	}

	pools := results["POOLS"]
	if len(pools) != 1 || pools[0]["database"] != "postgres" || pools[0]["user"] != "postgres" || pools[0]["pool_mode"] != "transaction" {
		t.Errorf("SHOW POOLS = %v", pools)
	}
	if pools[0]["cl_active"].(int64) < 1 {
		t.Errorf("SHOW POOLS cl_active = %v, want >= 1", pools[0]["cl_active"])
	}
	stats := results["STATS"]
	if len(stats) != 1 || stats[0]["total_query_count"].(int64) < 11 || stats[0]["total_query_time"].(int64) <= 0 {
		t.Errorf("SHOW STATS = %v", stats)
	}
	if v := results["VERSION"]; len(v) != 1 || v[0]["version"] != "pgaudit test" {
		t.Errorf("SHOW VERSION = %v", v)
	}
	foundProbe := false
	for _, q := range results["QUERIES"] {
		if strings.Contains(q["query"].(string), "dashboard_probe") {
			foundProbe = true
			if q["calls"].(int64) != 5 || q["p99_ms"].(float64) <= 0 {
				t.Errorf("SHOW QUERIES row %v", q)
			}
		}
		if strings.Contains(q["query"].(string), "failing_probe") && q["errors"].(int64) != 1 {
			t.Errorf("failing shape: %v", q)
		}
	}
	if !foundProbe {
		t.Errorf("SHOW QUERIES lacks the probe shape: %v", results["QUERIES"])
	}
	if f := results["FINDINGS"]; len(f) != 1 || f[0]["rule"] != "missing-index" || !strings.HasPrefix(f[0]["suggestion"].(string), "CREATE INDEX") ||
		f[0]["status"] != "open" || f[0]["resolved_at"] != "" {
		t.Errorf("SHOW FINDINGS = %v", f)
	}
	if cl := results["CLIENTS"]; len(cl) < 1 || cl[0]["type"] != "C" {
		t.Errorf("SHOW CLIENTS = %v", cl)
	}
	if db := results["DATABASES"]; len(db) != 1 || db[0]["name"] != "postgres" || db[0]["paused"].(int64) != 0 {
		t.Errorf("SHOW DATABASES = %v", db)
	}
	lists := map[string]int64{}
	for _, r := range results["LISTS"] {
		lists[r["list"].(string)] = r["items"].(int64)
	}
	if lists["pools"] != 1 || lists["used_clients"] < 1 {
		t.Errorf("SHOW LISTS = %v", lists)
	}
}

// TestConsoleErrors checks unknown commands, the extended protocol and
// multi-command messages.
func TestConsoleErrors(t *testing.T) {
	e := newEnv(t, envOptions{})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c := e.adminConn(ctx)

	_, err := c.Exec(ctx, "show nonsense")
	var pe *pgconn.PgError
	if !errors.As(err, &pe) || pe.Code != pgerrcode.SyntaxError || !strings.Contains(pe.Hint, "SHOW POOLS") {
		t.Errorf("SHOW nonsense: %v (hint %q)", err, hintOf(err))
	}
	if _, err := c.Exec(ctx, "select 1"); pgCode(err) != pgerrcode.SyntaxError {
		t.Errorf("select 1: %v", err)
	}
	// The connection is still usable; several commands in one message.
	mrr := c.PgConn().Exec(ctx, "SHOW VERSION; show lists;")
	res, err := mrr.ReadAll()
	if err != nil || len(res) != 2 || len(res[1].Rows) != 12 {
		t.Errorf("multi-command: %v, %d results", err, len(res))
	}
	if _, err := c.Exec(ctx, "SET application_name = 'x'"); err != nil {
		t.Errorf("SET: %v", err)
	}
	if _, err := c.Exec(ctx, ";"); err != nil {
		t.Errorf("empty query: %v", err)
	}

	// Extended protocol: refused with 0A000, then the connection works.
	ext, err := pgx.Connect(ctx, e.dsn("pgbouncer", "postgres"))
	if err != nil {
		t.Fatal(err)
	}
	defer ext.Close(ctx)
	_, err = ext.PgConn().Prepare(ctx, "", "SHOW POOLS", nil)
	if !errors.As(err, &pe) || pe.Code != pgerrcode.FeatureNotSupported || !strings.Contains(pe.Message, "simple query protocol only") {
		t.Errorf("extended protocol (Parse/Describe/Sync): %v", err)
	}
	res2 := ext.PgConn().ExecParams(ctx, "SHOW POOLS", nil, nil, nil, nil).Read()
	if pgCode(res2.Err) != pgerrcode.FeatureNotSupported {
		t.Errorf("extended protocol (Parse/Bind/Execute/Sync): %v", res2.Err)
	}
	rows, err := ext.Query(ctx, "SHOW POOLS")
	if err == nil {
		rows.Close()
		err = rows.Err()
	}
	if pgCode(err) != pgerrcode.FeatureNotSupported {
		t.Errorf("pgx default exec mode: %v", err)
	}
	if _, err := ext.Exec(ctx, "SHOW POOLS", pgx.QueryExecModeSimpleProtocol); err != nil {
		t.Errorf("simple after refused extended: %v", err)
	}
}

func hintOf(err error) string {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return pe.Hint
	}
	return ""
}

// TestPsqlShowPools runs psql -c "SHOW POOLS" against the console.
func TestPsqlShowPools(t *testing.T) {
	e := newEnv(t, envOptions{})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	e.workload(ctx, 1)
	out, err := exec.CommandContext(ctx, cluster.Bin("psql"), "-X", "-d", e.dsn("pgaudit", "postgres"), "-c", "SHOW POOLS").CombinedOutput()
	if err != nil {
		t.Fatalf("psql: %v\n%s", err, out)
	}
	for _, want := range []string{"cl_active", "sv_idle", "maxwait_us", "utilization", "postgres", "(1 row)"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("psql output lacks %q:\n%s", want, out)
		}
	}
	out, err = exec.CommandContext(ctx, cluster.Bin("psql"), "-X", "-d", e.dsn("pgbouncer", "postgres"), "-c", "SHOW HELP").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "SHUTDOWN WAIT_FOR_CLIENTS") {
		t.Errorf("psql SHOW HELP: %v\n%s", err, out)
	}
}

// TestAdminDenied: an authenticated user that is not an admin user gets
// 42501 on both admin databases.
func TestAdminDenied(t *testing.T) {
	e := newEnv(t, envOptions{adminUsers: []string{"someone_else"}})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for _, db := range []string{"pgaudit", "pgbouncer"} {
		c, err := pgx.Connect(ctx, e.dsn(db, "postgres"))
		if err == nil {
			c.Close(ctx)
			t.Fatalf("%s: ordinary user got into the admin console", db)
		}
		if pgCode(err) != pgerrcode.InsufficientPrivilege {
			t.Errorf("%s: %v, want SQLSTATE 42501", db, err)
		}
	}
}

// TestPauseResumeUnderLoad: clients keep running transactions through a
// transaction pool while the console pauses and resumes it; no client sees
// an error, nothing runs while paused, and work resumes.
func TestPauseResumeUnderLoad(t *testing.T) {
	e := newEnv(t, envOptions{mode: pooler.TransactionMode, size: 2})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	admin := e.adminConn(ctx)

	var done sync.WaitGroup
	var mu sync.Mutex
	var errs []error
	var ops [4]int64
	stop := make(chan struct{})
	for i := range ops {
		c := e.appConn(ctx)
		done.Add(1)
		go func(i int, c *pgx.Conn) {
			defer done.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				err := pgx.BeginFunc(ctx, c, func(tx pgx.Tx) error {
					var n int
					if err := tx.QueryRow(ctx, "select count(*) from generate_series(1, $1::int)", 10+i).Scan(&n); err != nil {
						return err
					}
					_, err := tx.Exec(ctx, "select pg_sleep(0.001)")
					return err
				})
				if err != nil {
					mu.Lock()
					errs = append(errs, fmt.Errorf("client %d: %w", i, err))
					mu.Unlock()
					return
				}
				mu.Lock()
				ops[i]++
				mu.Unlock()
			}
		}(i, c)
	}
	total := func() int64 {
		mu.Lock()
		defer mu.Unlock()
		var s int64
		for _, n := range ops {
			s += n
		}
		return s
	}
	testutil.Eventually(t, 10*time.Second, "load to run", func() bool { return total() > 20 })

	start := time.Now()
	if _, err := admin.Exec(ctx, "PAUSE postgres"); err != nil {
		t.Fatalf("PAUSE: %v", err)
	}
	t.Logf("PAUSE returned after %v", time.Since(start))
	var paused int64
	if err := admin.QueryRow(ctx, "SHOW DATABASES").Scan(nil, nil, nil, nil, nil, nil, nil, nil, nil, nil, nil, nil, nil, nil, &paused, nil); err != nil {
		t.Fatal(err)
	}
	if paused != 1 {
		t.Errorf("SHOW DATABASES paused = %d after PAUSE", paused)
	}
	// Nothing completes while paused; clients queue up. Once all of them
	// wait for a server, each has counted its last transaction.
	allWaiting := func() bool {
		var waiting int64
		rows, err := admin.Query(ctx, "SHOW POOLS")
		if err != nil {
			t.Fatal(err)
		}
		pools, err := pgx.CollectRows(rows, pgx.RowToMap)
		if err != nil {
			t.Fatal(err)
		}
		for _, pool := range pools {
			waiting += pool["cl_waiting"].(int64)
		}
		return waiting == int64(len(ops))
	}
	testutil.Eventually(t, 10*time.Second, "every client to queue up", allWaiting)
	before := total()
	// Deliberate: the absence of progress cannot be waited for; give a
	// paused pool time in which a transaction would have completed.
	time.Sleep(300 * time.Millisecond)
	if after := total(); after != before {
		t.Errorf("%d transactions completed while paused", after-before)
	}
	rows, err := admin.Query(ctx, "SHOW POOLS")
	if err != nil {
		t.Fatal(err)
	}
	pools, err := pgx.CollectRows(rows, pgx.RowToMap)
	if err != nil {
		t.Fatal(err)
	}
	if len(pools) != 1 || pools[0]["cl_waiting"].(int64) == 0 || pools[0]["sv_active"].(int64) != 0 {
		t.Errorf("SHOW POOLS while paused: %v", pools)
	}
	if _, err := admin.Exec(ctx, "RESUME postgres;"); err != nil {
		t.Fatalf("RESUME: %v", err)
	}
	resumed := total()
	testutil.Eventually(t, 10*time.Second, "load to resume", func() bool { return total() > resumed+20 })

	// PAUSE and RESUME of everything too.
	if _, err := admin.Exec(ctx, "pause"); err != nil {
		t.Fatalf("PAUSE (all): %v", err)
	}
	testutil.Eventually(t, 10*time.Second, "every client to queue up under the global pause", allWaiting)
	if _, err := admin.Exec(ctx, "resume"); err != nil {
		t.Fatalf("RESUME (all): %v", err)
	}
	resumed = total()
	testutil.Eventually(t, 10*time.Second, "load to resume after global pause", func() bool { return total() > resumed+20 })
	close(stop)
	done.Wait()
	for _, err := range errs {
		t.Error(err)
	}
	if _, err := admin.Exec(ctx, "PAUSE nosuchdb"); pgCode(err) != pgerrcode.InvalidCatalogName {
		t.Errorf("PAUSE nosuchdb: %v", err)
	}
	if _, err := admin.Exec(ctx, "PAUSE pgaudit"); pgCode(err) != pgerrcode.ObjectNotInPrerequisiteState {
		t.Errorf("PAUSE pgaudit: %v", err)
	}
}

// TestReloadShutdownKill checks the commands that act on the process.
func TestReloadShutdownKill(t *testing.T) {
	e := newEnv(t, envOptions{})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	admin := e.adminConn(ctx)
	if _, err := admin.Exec(ctx, "RELOAD"); err != nil || e.reloads.Load() != 1 {
		t.Errorf("RELOAD: %v, %d reloads", err, e.reloads.Load())
	}
	e.reloadErr.Store(errors.New("config pgaudit.toml: unknown settings: nope"))
	_, err := admin.Exec(ctx, "reload;")
	var pe *pgconn.PgError
	if !errors.As(err, &pe) || pe.Code != "F0000" || !strings.Contains(pe.Detail, "unknown settings") {
		t.Errorf("failed RELOAD: %v", err)
	}

	victim := e.appConn(ctx)
	if _, err := victim.Exec(ctx, "select 1"); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.Exec(ctx, "KILL postgres"); err != nil {
		t.Fatalf("KILL: %v", err)
	}
	if _, err := victim.Exec(ctx, "select 1"); err == nil {
		t.Error("client survived KILL")
	}
	if _, err := admin.Exec(ctx, "KILL"); pgCode(err) != pgerrcode.SyntaxError {
		t.Errorf("KILL without database: %v", err)
	}

	if _, err := admin.Exec(ctx, "SHUTDOWN WAIT_FOR_CLIENTS"); err != nil {
		t.Fatalf("SHUTDOWN WAIT_FOR_CLIENTS: %v", err)
	}
	select {
	case wait := <-e.shutdowns:
		if !wait {
			t.Error("SHUTDOWN WAIT_FOR_CLIENTS called Shutdown(false)")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Shutdown callback not called")
	}
	resp := httpGet(t, e.base+"/readyz")
	if resp.code != 503 {
		t.Errorf("/readyz after SHUTDOWN = %d", resp.code)
	}
	if _, err := admin.Exec(ctx, "shutdown"); err != nil {
		t.Fatal(err)
	}
	if wait := <-e.shutdowns; wait {
		t.Error("SHUTDOWN called Shutdown(true)")
	}
}
