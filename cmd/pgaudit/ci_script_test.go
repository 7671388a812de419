package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pgaudit-proxy/pgaudit/internal/pgtest"
	"github.com/pgaudit-proxy/pgaudit/internal/testutil"
)

// TestMain lets the test binary stand in for the pgaudit command (for the
// CI script test): with PGAUDIT_TEST_MAIN=1 it runs main. Otherwise it runs
// the tests as every package does (testutil.Main: the shared cluster is
// stopped at the end, and leaked goroutines fail the run).
func TestMain(m *testing.M) {
	if os.Getenv("PGAUDIT_TEST_MAIN") == "1" {
		main()
		os.Exit(0)
	}
	testutil.Main(m)
}

// TestCIScript (issue 14, item 14) runs examples/ci/pgaudit-ci.sh, the
// script the README's GitHub Actions job calls, as a new user's CI would:
// the first run has no baseline and fails on the N+1 its test suite has;
// writing the baseline succeeds; the next run with the baseline passes;
// a failing test suite fails the job with its own status.
func TestCIScript(t *testing.T) {
	t.Parallel() // own cluster and work dir
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	c, err := pgtest.Start(ctx, pgtest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Stop()
	if out, err := c.Psql(ctx, "", "-q", "-c", lintSchema); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	dir := t.TempDir()
	// "pgaudit" on PATH is this test binary running main.
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "bin")
	_ = os.Mkdir(bin, 0o755)
	wrapper := "#!/bin/sh\nPGAUDIT_TEST_MAIN=1 exec " + self + " \"$@\"\n"
	if err := os.WriteFile(filepath.Join(bin, "pgaudit"), []byte(wrapper), 0o755); err != nil {
		t.Fatal(err)
	}
	script, _ := filepath.Abs(filepath.Join("..", "..", "examples", "ci", "pgaudit-ci.sh"))
	port, err := pgtest.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	// The "test suite": a page of books, then one author lookup per book
	// (simple protocol, one psql session).
	suite := filepath.Join(dir, "suite.sh")
	var cmds []string
	cmds = append(cmds, `-c "select author_id from lint_books order by id limit 10"`)
	for i := 1; i <= 10; i++ {
		cmds = append(cmds, fmt.Sprintf(`-c "select name from lint_authors where id = %d"`, i*3))
	}
	_ = os.WriteFile(suite, []byte("#!/bin/sh\nset -e\npsql -X -q \"$DATABASE_URL\" "+strings.Join(cmds, " ")+" >/dev/null\n"), 0o755)
	fail := filepath.Join(dir, "fail.sh")
	_ = os.WriteFile(fail, []byte("#!/bin/sh\npsql -X -q \"$DATABASE_URL\" -c 'select 1' >/dev/null\nexit 3\n"), 0o755)

	run := func(args ...string) (int, string) {
		cmd := exec.CommandContext(ctx, script, append([]string{c.DSN("")}, args...)...)
		cmd.Dir = dir
		cmd.Env = append(os.Environ(),
			"PATH="+bin+":"+filepath.Dir(c.Bin("psql"))+":"+os.Getenv("PATH"),
			fmt.Sprintf("PGAUDIT_LISTEN=127.0.0.1:%d", port),
			"PGAUDIT_OUTPUT=text")
		out, err := cmd.CombinedOutput()
		code := 0
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		return code, string(out)
	}
	// First run: no baseline yet; the N+1 is a new finding.
	code, out := run(suite)
	if code != 1 || !strings.Contains(out, "n-plus-one") {
		t.Fatalf("first run: exit %d\n%s", code, out)
	}
	// Accept the current findings.
	w := exec.CommandContext(ctx, filepath.Join(bin, "pgaudit"), "lint", "--write-baseline", ".pgaudit-baseline.json", "pgaudit-audit.jsonl")
	w.Dir = dir
	if out, err := w.CombinedOutput(); err != nil {
		t.Fatalf("write baseline: %v\n%s", err, out)
	}
	// Next run: same suite, nothing new.
	_ = os.Remove(filepath.Join(dir, "pgaudit-audit.jsonl"))
	if code, out := run(suite); code != 0 {
		t.Fatalf("run with baseline: exit %d\n%s", code, out)
	}
	// A failing suite fails the job with its status.
	if code, out := run(fail); code != 3 {
		t.Fatalf("failing suite: exit %d\n%s", code, out)
	}
	// The README's job calls this script.
	readme, err := os.ReadFile(filepath.Join("..", "..", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(readme), "examples/ci/pgaudit-ci.sh") || strings.Contains(string(readme), "Log every statement") {
		t.Error("README's GitHub Actions job does not use examples/ci/pgaudit-ci.sh")
	}
}
