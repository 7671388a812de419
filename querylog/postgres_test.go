package querylog

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgaudit-proxy/pgaudit/internal/event"
	"github.com/pgaudit-proxy/pgaudit/internal/pgtest"
	"github.com/pgaudit-proxy/pgaudit/internal/testutil"
)

// scenario is one server logging configuration. Each runs the same
// workload against a fresh cluster that writes stderr, csvlog and jsonlog at
// once, and each log is read back.
type scenario struct {
	name   string
	prefix string   // log_line_prefix
	give   bool     // pass the prefix to Read (not one of KnownPrefixes)
	conf   []string // further settings
	opts   Options
}

var scenarios = []scenario{
	{
		// The default prefix; log_min_duration_statement only; user,
		// database and application come from the connection lines.
		name:   "default",
		prefix: "%m [%p] ",
		conf:   []string{"log_min_duration_statement = 0", "log_connections = on", "log_disconnections = on"},
	},
	{
		// pgBadger's prefix with log_statement = all as well: every
		// statement is logged twice and must be paired.
		name:   "pgbadger_both",
		prefix: "%t [%p]: [%l-1] user=%u,db=%d,app=%a,client=%h ",
		conf:   []string{"log_min_duration_statement = 0", "log_statement = 'all'"},
	},
	{
		// Debian's prefix with log_statement = all alone (no durations).
		name:   "debian_statement",
		prefix: "%m [%p] %q%u@%d ",
		conf:   []string{"log_statement = 'all'", "log_connections = on"},
	},
	{
		// A custom prefix with the session id, vxid and SQLSTATE, given
		// explicitly; log_statement = mod plus durations; verbose errors
		// (LOCATION lines); parameter values kept.
		name:   "custom_verbose",
		prefix: "%m %c %v %e [%a] ",
		give:   true,
		conf:   []string{"log_min_duration_statement = 0", "log_statement = 'mod'", "log_error_verbosity = verbose"},
		opts:   Options{KeepParams: true},
	},
}

// workload runs the statements every scenario logs: simple and extended
// protocol, a multi-line statement, transactions (one failing), errors,
// parameters, and a second session interleaved with the first.
func workload(ctx context.Context, t *testing.T, c *pgtest.Cluster) {
	t.Helper()
	connect := func(app string) *pgx.Conn {
		conn, err := pgx.Connect(ctx, c.DSN("")+"&application_name="+app)
		if err != nil {
			t.Fatal(err)
		}
		return conn
	}
	a := connect("qltest")
	b := connect("other")
	simple, cached, unnamed := pgx.QueryExecModeSimpleProtocol, pgx.QueryExecModeCacheStatement, pgx.QueryExecModeExec
	must := func(conn *pgx.Conn, sql string, args ...any) {
		t.Helper()
		if _, err := conn.Exec(ctx, sql, args...); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
	fails := func(conn *pgx.Conn, sql string, args ...any) {
		t.Helper()
		if _, err := conn.Exec(ctx, sql, args...); err == nil {
			t.Fatalf("%s: no error", sql)
		}
	}
	must(a, "create table t (id int primary key, name text)", simple)
	must(a, "insert into t values ($1, $2)", cached, 1, "a'b")
	must(a, "insert into t values ($1, $2)", unnamed, 2, nil)
	must(a, "select *\n  from t\n where id = 1", simple)
	must(a, "begin", simple)
	must(a, "update t set name = $1 where id = $2", cached, "x", 1)
	must(b, "select 42", simple)
	must(a, "select count(*) from t", simple)
	must(a, "commit", simple)
	fails(a, "select * from missing", simple)
	fails(a, "select * from missing2 where id = $1", cached, 1)
	must(a, "select 1; select 2", simple)
	must(a, "begin", simple)
	fails(a, "select 1/0", simple)
	must(a, "rollback", simple)
	must(a, "select $1::text", simple, "it's")
	must(b, "select $1::int + $2::int", unnamed, 1, 2)
	must(b, "delete from t where id = $1", unnamed, 2)
	if err := b.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if err := a.Close(ctx); err != nil {
		t.Fatal(err)
	}
}

// startCluster starts a cluster logging to DataDir/log in all three
// formats, or skips the test when Postgres is not installed.
func startCluster(ctx context.Context, t *testing.T, prefix string, conf ...string) *pgtest.Cluster {
	t.Helper()
	all := append([]string{
		"logging_collector = on",
		"log_destination = 'stderr,csvlog,jsonlog'",
		"log_directory = 'log'",
		"log_line_prefix = '" + prefix + "'",
	}, conf...)
	c, err := pgtest.Start(ctx, pgtest.Options{Conf: all})
	if errors.Is(err, pgtest.ErrNoBinaries) {
		t.Skip(err)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Stop)
	if c.Version < 15 {
		t.Skipf("jsonlog needs PostgreSQL 15, have %d", c.Version)
	}
	return c
}

// logFiles stops the server (which flushes the logs) and returns the log
// files by extension: .log (stderr), .csv and .json.
func logFiles(ctx context.Context, t *testing.T, c *pgtest.Cluster) map[string]string {
	t.Helper()
	if err := c.StopServer(ctx); err != nil {
		t.Fatal(err)
	}
	files, err := filepath.Glob(filepath.Join(c.DataDir, "log", "*"))
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, f := range files {
		ext := filepath.Ext(f)
		if out[ext] != "" {
			t.Fatalf("two %s files: %s and %s", ext, out[ext], f)
		}
		out[ext] = f
	}
	for _, ext := range []string{".log", ".csv", ".json"} {
		if out[ext] == "" {
			t.Fatalf("no %s log in %v", ext, files)
		}
	}
	return out
}

// skeleton renders what every format must agree on: per session, the
// transaction numbers, texts and parameters of its statements in order.
// Sessions are sorted by content, as the interleaving of sessions may
// differ (stderr entries wait for their DETAIL and STATEMENT lines), and
// whether a statement failed is left out (a stderr log without %e in its
// prefix does not say).
func skeleton(evs []*event.Event) string {
	per := map[uint64]*strings.Builder{}
	for _, ev := range evs {
		b := per[ev.SessionID]
		if b == nil {
			b = &strings.Builder{}
			per[ev.SessionID] = b
		}
		fmt.Fprintf(b, "  tx=%d intx=%v params=%d/%x %q\n", ev.TxSeq, ev.InTransaction, ev.NumParams, ev.ParamHash, ev.Text)
	}
	var groups []string
	for _, b := range per {
		groups = append(groups, b.String())
	}
	sort.Strings(groups)
	var out strings.Builder
	for i, g := range groups {
		fmt.Fprintf(&out, "session %d:\n%s", i+1, g)
	}
	return out.String()
}

func TestPostgresLogs(t *testing.T) {
	for _, sc := range scenarios {
		t.Run(sc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
			defer cancel()
			began := time.Now()
			c := startCluster(ctx, t, sc.prefix, sc.conf...)
			workload(ctx, t, c)
			files := logFiles(ctx, t, c)
			var skel []string
			for _, f := range []struct{ ext, name string }{{".log", "stderr"}, {".csv", "csvlog"}, {".json", "jsonlog"}} {
				opts := sc.opts
				if sc.give && f.ext == ".log" {
					opts.Prefix = sc.prefix
				}
				evs, sum := readAll(t, Files(files[f.ext]), opts)
				checkEvents(t, evs, began)
				if f.ext == ".log" && sum.Prefix != sc.prefix {
					t.Errorf("stderr prefix read as %q, want %q", sum.Prefix, sc.prefix)
				}
				if sum.MalformedCount != 0 {
					t.Errorf("%s: malformed lines: %v", f.name, sum.Malformed)
				}
				if int(sum.Statements) != len(evs) {
					t.Errorf("%s: summary says %d statements, emitted %d", f.name, sum.Statements, len(evs))
				}
				var g strings.Builder
				fmt.Fprintf(&g, "# %s, %s\n", sc.name, strings.Join(sc.conf, ", "))
				fmt.Fprintf(&g, "format=%s prefix=%q statements=%d sessions=%d malformed=%d errors_without_sqlstate=%d\n\n",
					sum.Format, sum.Prefix, sum.Statements, sum.Sessions, sum.MalformedCount, sum.ErrorsWithoutSQLState)
				g.WriteString(render(evs))
				testutil.Golden(t, sc.name+"."+f.name+".golden", []byte(g.String()))
				skel = append(skel, skeleton(evs))

				// The same log read in tiny chunks on several workers, and
				// gzipped, gives the same events.
				small := opts
				small.ChunkSize, small.Workers = 61, 3
				evs2, _ := readAll(t, Files(files[f.ext]), small)
				if got, want := render(evs2), render(evs); got != want {
					t.Errorf("%s: reading in small chunks differs:\n--- chunks\n%s\n--- whole\n%s", f.name, got, want)
				}
			}
			if skel[0] != skel[1] || skel[1] != skel[2] {
				t.Errorf("formats disagree:\n--- stderr\n%s\n--- csvlog\n%s\n--- jsonlog\n%s", skel[0], skel[1], skel[2])
			}
		})
	}
}

// checkEvents checks what golden files do not show: times, protocol, rows.
func checkEvents(t *testing.T, evs []*event.Event, began time.Time) {
	t.Helper()
	if len(evs) == 0 {
		t.Fatal("no events")
	}
	for _, ev := range evs {
		if ev.Start.Before(began.Add(-2*time.Second)) || ev.Start.After(time.Now().Add(time.Second)) {
			t.Errorf("%q: start %v outside the test (began %v)", ev.Text, ev.Start, began)
		}
		if ev.Protocol != event.ProtocolLog || ev.Rows != -1 || ev.Kind != event.KindStatement {
			t.Errorf("%q: protocol %v rows %d kind %v", ev.Text, ev.Protocol, ev.Rows, ev.Kind)
		}
		if ev.SessionID == 0 || ev.TxSeq == 0 {
			t.Errorf("%q: session %d tx %d", ev.Text, ev.SessionID, ev.TxSeq)
		}
	}
}

// TestPostgresRotationAndGzip reads a log rotated in the middle of a
// session: the session continues in the second file (gzipped here, as
// logrotate leaves it) with its transaction numbers.
func TestPostgresRotationAndGzip(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	c := startCluster(ctx, t, "%m [%p] %q%u@%d ", "log_min_duration_statement = 0", "log_filename = 'pg-%H%M%S.log'")
	conn, err := pgx.Connect(ctx, c.DSN("")+"&application_name=rot")
	if err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		if _, err := conn.Exec(ctx, fmt.Sprintf("select %d", i)); err != nil {
			t.Fatal(err)
		}
	}
	// pg_rotate_logfile switches files at once, but file names have
	// seconds: wait for a new second first.
	time.Sleep(1100 * time.Millisecond)
	if _, err := conn.Exec(ctx, "select pg_rotate_logfile()"); err != nil {
		t.Fatal(err)
	}
	// The logging collector rotates when it gets the signal: statements
	// sent once the new file exists go to it.
	testutil.Eventually(t, 10*time.Second, "the rotated csv file", func() bool {
		csvs, _ := filepath.Glob(filepath.Join(c.DataDir, "log", "*.csv"))
		return len(csvs) == 2
	})
	for i := 3; i < 6; i++ {
		if _, err := conn.Exec(ctx, fmt.Sprintf("select %d", i)); err != nil {
			t.Fatal(err)
		}
	}
	conn.Close(ctx)
	if err := c.StopServer(ctx); err != nil {
		t.Fatal(err)
	}
	csvs, _ := filepath.Glob(filepath.Join(c.DataDir, "log", "*.csv"))
	if len(csvs) != 2 {
		t.Fatalf("want 2 csv files after rotation, have %v", csvs)
	}
	second := gzipFile(t, csvs[1])
	evs, sum := readAll(t, []Input{{Name: csvs[0]}, {Name: second}}, Options{})
	if len(sum.Files) != 2 || !sum.Files[1].Gzip || sum.Files[1].Format != FormatCSV {
		t.Fatalf("files: %+v", sum.Files)
	}
	var got []string
	for _, ev := range evs {
		if ev.ApplicationName != "rot" {
			continue
		}
		got = append(got, fmt.Sprintf("%d/%d %s", ev.SessionID&0xffffffff, ev.TxSeq, ev.Text))
	}
	if len(got) != 7 || sum.Sessions != 1 {
		t.Fatalf("sessions %d, events:\n%s", sum.Sessions, strings.Join(got, "\n"))
	}
	for i, g := range got {
		if !strings.Contains(g, fmt.Sprintf("/%d ", i+1)) {
			t.Errorf("event %d: %s: transaction numbers do not continue across files", i, g)
		}
	}
	// Both files through one stdin stream (cat a b | pgaudit lint -).
	both := append(readFile(t, csvs[0]), readFile(t, csvs[1])...)
	evs2, _ := readAll(t, Files("-"), Options{Stdin: strings.NewReader(string(both))})
	if skeleton(evs2) != skeleton(evs) {
		t.Errorf("stdin differs:\n%s\nfiles:\n%s", skeleton(evs2), skeleton(evs))
	}
}

func readFile(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
