package main

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/santhosh-tekuri/jsonschema/v6"

	"github.com/pgaudit-proxy/pgaudit/internal/auditlog"
	"github.com/pgaudit-proxy/pgaudit/internal/pgtest"
	"github.com/pgaudit-proxy/pgaudit/internal/testutil"
	"github.com/pgaudit-proxy/pgaudit/planadvisor"
)

// lintWorkload is an application with an N+1 loop inside a transaction, a
// query that seq-scans a 100k-row table, and well-behaved lookups.
func lintWorkload(t *testing.T, ctx context.Context, dsn string) {
	t.Helper()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	for round := 0; round < 3; round++ {
		tx, err := conn.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		rows, err := tx.Query(ctx, "select id, author_id from lint_books where id > $1 order by id limit 10", round*10)
		if err != nil {
			t.Fatal(err)
		}
		var authors []int32
		for rows.Next() {
			var id, a int32
			if err := rows.Scan(&id, &a); err != nil {
				t.Fatal(err)
			}
			authors = append(authors, a)
		}
		rows.Close()
		for _, a := range authors {
			var name string
			if err := tx.QueryRow(ctx, "select name from lint_authors where id = $1", a).Scan(&name); err != nil {
				t.Fatal(err)
			}
		}
		if err := tx.Commit(ctx); err != nil {
			t.Fatal(err)
		}
	}
	for i := 0; i < 3; i++ {
		var n int64
		if err := conn.QueryRow(ctx, "select count(*) from lint_events where kind = $1", i).Scan(&n); err != nil {
			t.Fatal(err)
		}
	}
	for i := 1; i <= 20; i++ {
		var name string
		if err := conn.QueryRow(ctx, "select name from lint_authors where id = $1", i).Scan(&name); err != nil {
			t.Fatal(err)
		}
	}
}

const lintSchema = `
create table lint_authors(id int primary key, name text);
create table lint_books(id int primary key, author_id int);
create table lint_events(id int primary key, kind int, payload text);
insert into lint_authors select g, 'a' || g from generate_series(1, 100) g;
insert into lint_books select g, 1 + g % 100 from generate_series(1, 1000) g;
insert into lint_events select g, g % 1000, 'x' from generate_series(1, 100000) g;
analyze;`

func ruleIDs(t *testing.T, out []byte) []string {
	t.Helper()
	var r lintReport
	if err := json.Unmarshal(out, &r); err != nil {
		t.Fatalf("lint json: %v\n%s", err, out)
	}
	var ids []string
	for _, f := range r.New {
		ids = append(ids, f.Rule)
	}
	sort.Strings(ids)
	return ids
}

func exitCode(err error) int {
	if err == nil {
		return 0
	}
	var ee *exitError
	if errors.As(err, &ee) {
		return ee.code
	}
	return -1
}

// TestLintPostgresLogsAndAuditLog runs one workload against Postgres with
// csvlog and stderr logging on, and through the proxy with an audit log,
// then lints all three: the same findings, exit codes, baseline round
// trip, suppression and SARIF structure.
func TestLintPostgresLogsAndAuditLog(t *testing.T) {
	t.Parallel() // its own cluster, proxy and log files
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	c := startE2ECluster(t, ctx, pgtest.Options{Conf: []string{
		"logging_collector = on", "log_destination = 'stderr,csvlog'", "log_directory = 'log'",
		"log_filename = 'pg.log'", "log_min_duration_statement = 0",
		"log_line_prefix = '%m [%p] %q%u@%d '",
	}}, lintSchema, false)
	lintWorkload(t, ctx, c.DSN(""))

	// The same workload through the proxy, with an audit log.
	dir := t.TempDir()
	auditPath := filepath.Join(dir, "audit.jsonl")
	e := startE2EProxy(t, ctx, c, auditorOptions{AuditLog: auditLogFile(auditPath)}, 2, nil)
	lintWorkload(t, ctx, e.DSN)
	e.stop()
	proxyFindings := e.findings("")

	// Postgres writes its logs asynchronously: wait until both logs have the
	// last statement of both workloads (three executions each).
	csvPath := filepath.Join(c.DataDir, "log", "pg.csv")
	stderrPath := filepath.Join(c.DataDir, "log", "pg.log")
	testutil.Eventually(t, 10*time.Second, "Postgres to log both workloads", func() bool {
		for _, path := range []string{csvPath, stderrPath} {
			data, _ := os.ReadFile(path)
			n := 0
			for _, line := range strings.Split(string(data), "\n") {
				if strings.Contains(line, "execute ") && strings.Contains(line, "from lint_events where kind") {
					n++
				}
			}
			if n < 6 {
				return false
			}
		}
		return true
	})

	run := func(args ...string) ([]byte, error) {
		var out bytes.Buffer
		fl := lintFlags{format: "auto", output: "json", failOn: "warning", logLevel: cmp.Or(os.Getenv("LINT_LOG"), "error")}
		var files []string
		for i := 0; i < len(args); i++ {
			switch args[i] {
			case "--dsn":
				fl.dsn = args[i+1]
				i++
			case "--baseline":
				fl.baseline = args[i+1]
				i++
			case "--write-baseline":
				fl.writeBaseline = args[i+1]
				i++
			case "--output":
				fl.output = args[i+1]
				i++
			case "--config":
				fl.configPath = args[i+1]
				i++
			case "--fail-on":
				fl.failOn = args[i+1]
				i++
			default:
				files = append(files, args[i])
			}
		}
		err := runLint(ctx, fl, files, &out, os.Stderr)
		return out.Bytes(), err
	}
	for _, input := range []string{csvPath, stderrPath, auditPath} {
		t.Run(filepath.Base(input), func(t *testing.T) {
			out, err := run("--dsn", c.DSN(""), input)
			if code := exitCode(err); code != 1 {
				t.Fatalf("exit code %d (%v), want 1\n%s", code, err, out)
			}
			got := ruleIDs(t, out)
			want := []string{"missing-index", "n-plus-one", "seq-scan"}
			if strings.Join(got, ",") != strings.Join(want, ",") {
				t.Fatalf("rules %v, want %v\n%s", got, want, out)
			}
			// Without --dsn the EXPLAIN rules are skipped and say so.
			out, _ = run(input)
			var r lintReport
			_ = json.Unmarshal(out, &r)
			if r.Skipped["seq-scan"] == "" || strings.Join(ruleIDs(t, out), ",") != "n-plus-one" {
				t.Fatalf("without --dsn: %s", out)
			}
		})
	}
	// Proxy mode found the same N+1 (same stable id) as lint.
	out, _ := run("--dsn", c.DSN(""), auditPath)
	var fromLog lintReport
	_ = json.Unmarshal(out, &fromLog)
	proxyIDs := map[string]bool{}
	for _, f := range proxyFindings {
		proxyIDs[f.ID] = true
	}
	for _, f := range fromLog.New {
		if f.Rule == "n-plus-one" && !proxyIDs[f.ID] {
			t.Errorf("lint's N+1 finding %s is not among the proxy's %v", f.ID, proxyIDs)
		}
	}

	// Baseline round trip: recorded findings no longer fail the build.
	base := filepath.Join(dir, "baseline.json")
	// Writing the baseline accepts the findings: exit 0 (issue 14, item 14).
	if _, err := run("--dsn", c.DSN(""), "--write-baseline", base, csvPath); exitCode(err) != 0 {
		t.Fatalf("write-baseline run: %v", err)
	}
	if out, err := run("--dsn", c.DSN(""), "--baseline", base, csvPath); exitCode(err) != 0 {
		t.Fatalf("with baseline: exit %d\n%s", exitCode(err), out)
	}
	// Suppression by config; --fail-on error lets warnings pass.
	cfg := filepath.Join(dir, "pgaudit.toml")
	_ = os.WriteFile(cfg, []byte("[rules.n-plus-one]\nenabled = false\n[[rules.ignore]]\nrule = \"seq-scan\"\ntable = \"lint_events\"\n"), 0o644)
	out, _ = run("--dsn", c.DSN(""), "--config", cfg, csvPath)
	if got := strings.Join(ruleIDs(t, out), ","); got != "missing-index" {
		t.Fatalf("with suppression: %s", got)
	}
	// An unknown key is an error, as for the proxy (issue 14, item 11):
	// a typo must not leave the default in force silently.
	typo := filepath.Join(dir, "typo.toml")
	_ = os.WriteFile(typo, []byte("[rules.n-plus-one]\nmin_repeat = 3\n"), 0o644)
	if _, err := run("--config", typo, csvPath); exitCode(err) != 2 || !strings.Contains(err.Error(), "rules.n-plus-one.min_repeat") {
		t.Fatalf("unknown config key: %v", err)
	}
	// pgaudit report on a Postgres log fails as lint does on bad input
	// (issue 14, item 12); on the audit log it works.
	if err := runReport(context.Background(), io.Discard, io.Discard, []string{csvPath}, reportFlags{output: filepath.Join(dir, "r.html"), format: "html", top: 10}); exitCode(err) != 2 || !strings.Contains(err.Error(), "not a pgaudit audit log") {
		t.Fatalf("report on a Postgres log: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "r.html")); err == nil {
		t.Fatal("report written for a Postgres log")
	}
	if err := runReport(context.Background(), io.Discard, io.Discard, []string{auditPath}, reportFlags{output: filepath.Join(dir, "r.html"), format: "html", top: 10}); err != nil {
		t.Fatalf("report on the audit log: %v", err)
	}
	if _, err := run("--fail-on", "error", csvPath); exitCode(err) != 0 {
		t.Fatalf("--fail-on error: %v", err)
	}
	// Usage errors and unreadable input exit 2.
	if _, err := run("--fail-on", "bogus", csvPath); exitCode(err) != 2 {
		t.Fatalf("bad --fail-on: %v", err)
	}
	if _, err := run(filepath.Join(dir, "missing.log")); exitCode(err) != 2 {
		t.Fatalf("missing file: %v", err)
	}
	// SARIF 2.1.0 structure.
	out, _ = run("--dsn", c.DSN(""), "--output", "sarif", csvPath)
	var sarif map[string]any
	if err := json.Unmarshal(out, &sarif); err != nil {
		t.Fatal(err)
	}
	checkSARIF(t, sarif)
	validateSARIFSchema(t, out)
}

// validateSARIFSchema validates a SARIF log against the official 2.1.0
// JSON schema (testdata/sarif-2.1.0-rtm.5.json).
func validateSARIFSchema(t *testing.T, out []byte) {
	t.Helper()
	f, err := os.Open(filepath.Join("testdata", "sarif-2.1.0-rtm.5.json"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	doc, err := jsonschema.UnmarshalJSON(f)
	if err != nil {
		t.Fatal(err)
	}
	c := jsonschema.NewCompiler()
	const url = "https://json.schemastore.org/sarif-2.1.0-rtm.5.json"
	if err := c.AddResource(url, doc); err != nil {
		t.Fatal(err)
	}
	schema, err := c.Compile(url)
	if err != nil {
		t.Fatal(err)
	}
	inst, err := jsonschema.UnmarshalJSON(bytes.NewReader(out))
	if err != nil {
		t.Fatal(err)
	}
	if err := schema.Validate(inst); err != nil {
		t.Fatalf("SARIF output does not validate against the 2.1.0 schema: %v", err)
	}
}

func auditLogFile(path string) auditlog.Config {
	return auditlog.Config{Path: path, FlushInterval: -1}
}

// checkSARIF checks the parts of the SARIF 2.1.0 schema that consumers
// (GitHub code scanning) require.
func checkSARIF(t *testing.T, s map[string]any) {
	t.Helper()
	if s["version"] != "2.1.0" || !strings.Contains(fmt.Sprint(s["$schema"]), "sarif-2.1.0") {
		t.Fatalf("version/$schema: %v %v", s["version"], s["$schema"])
	}
	runs, _ := s["runs"].([]any)
	if len(runs) != 1 {
		t.Fatalf("runs: %v", s["runs"])
	}
	run := runs[0].(map[string]any)
	driver := run["tool"].(map[string]any)["driver"].(map[string]any)
	if driver["name"] != "pgaudit" {
		t.Fatal("tool.driver.name")
	}
	ruleIndex := map[string]float64{}
	for i, r := range driver["rules"].([]any) {
		rm := r.(map[string]any)
		id, _ := rm["id"].(string)
		if id == "" || rm["shortDescription"].(map[string]any)["text"] == "" {
			t.Fatalf("rule %d lacks id or shortDescription", i)
		}
		ruleIndex[id] = float64(i)
	}
	results := run["results"].([]any)
	if len(results) == 0 {
		t.Fatal("no results")
	}
	for _, r := range results {
		rm := r.(map[string]any)
		id := rm["ruleId"].(string)
		if idx, ok := ruleIndex[id]; !ok || rm["ruleIndex"].(float64) != idx {
			t.Fatalf("result ruleId %q / ruleIndex %v", id, rm["ruleIndex"])
		}
		switch rm["level"] {
		case "error", "warning", "note", "none":
		default:
			t.Fatalf("level %v", rm["level"])
		}
		if rm["message"].(map[string]any)["text"] == "" {
			t.Fatal("empty message")
		}
		if pf := rm["partialFingerprints"].(map[string]any); !strings.HasPrefix(fmt.Sprint(pf["pgauditFindingId/v1"]), id) {
			t.Fatalf("partialFingerprints %v", pf)
		}
		locs := rm["locations"].([]any)
		if len(locs) == 0 || locs[0].(map[string]any)["physicalLocation"].(map[string]any)["artifactLocation"].(map[string]any)["uri"] == "" {
			t.Fatalf("locations %v", locs)
		}
	}
}

// TestLintDSNQuietAndOwnStatements (issue 14, item 13): lint --dsn writes
// readable lines on stderr, does not try to EXPLAIN a statement whose
// normalization broke it (GROUP BY 1 became GROUP BY $n), and a second run
// over the same Postgres log skips the EXPLAINs the first run left there.
func TestLintDSNQuietAndOwnStatements(t *testing.T) {
	t.Parallel() // its own cluster, proxy and log files
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c, err := pgtest.Start(ctx, pgtest.Options{Conf: []string{
		"logging_collector = on", "log_destination = 'csvlog'", "log_directory = 'log'",
		"log_filename = 'pg.log'", "log_min_duration_statement = 0",
	}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Stop()
	if out, err := c.Psql(ctx, "", "-q", "-c", lintSchema); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	for i := range 3 {
		if out, err := c.Psql(ctx, "", "-q", "-c", fmt.Sprintf("select count(*) from lint_events where kind = %d", i),
			"-c", fmt.Sprintf("select kind, count(*) from lint_events where id < %d group by 1 order by 2", 100+i)); err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
	}
	csvPath := filepath.Join(c.DataDir, "log", "pg.csv")
	waitForLog(t, csvPath, "where id < 102 group by 1") // the last statement above
	run := func() (lintReport, string) {
		var out, errb bytes.Buffer
		fl := lintFlags{format: "auto", output: "json", failOn: "warning", logLevel: "warn", dsn: c.DSN("")}
		if err := runLint(ctx, fl, []string{csvPath}, &out, &errb); exitCode(err) > 1 {
			t.Fatalf("lint: %v\n%s", err, errb.String())
		}
		var r lintReport
		if err := json.Unmarshal(out.Bytes(), &r); err != nil {
			t.Fatal(err)
		}
		return r, errb.String()
	}
	r1, stderr1 := run()
	if strings.Contains(stderr1, `{"level"`) || strings.Contains(stderr1, "explain failed") || strings.Contains(stderr1, "not checked") {
		t.Errorf("stderr:\n%s", stderr1)
	}
	if !slices.Contains(ruleIDs(t, mustJSON(t, r1)), "seq-scan") {
		t.Errorf("first run found no seq scan: %+v", r1.Findings)
	}
	waitForLog(t, csvPath, planadvisor.ExplainApplicationName) // Postgres logs the EXPLAINs
	r2, stderr2 := run()
	if r2.Summary.OwnSkipped == 0 {
		t.Errorf("own EXPLAIN statements not skipped: %+v", r2.Summary)
	}
	ids := func(r lintReport) string {
		var out []string
		for _, f := range r.Findings {
			out = append(out, f.ID)
			if strings.Contains(strings.ToUpper(f.Query), "EXPLAIN") {
				t.Errorf("finding on pgaudit's own EXPLAIN: %s", f.Query)
			}
		}
		sort.Strings(out)
		return strings.Join(out, " ")
	}
	if ids(r1) != ids(r2) || strings.Contains(stderr2, `{"level"`) {
		t.Errorf("second run differs: %q vs %q\n%s", ids(r1), ids(r2), stderr2)
	}
}

func mustJSON(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
