// Package testutil holds what the tests of every package share: the
// -update flag for golden files, the test binary's Postgres cluster
// (started at first use, so tests that never talk to Postgres run without
// one), a TestMain that stops it and checks for leaked goroutines, and
// Eventually for waiting on a condition instead of sleeping.
//
// It is for _test.go files only; programs use internal/pgtest directly.
package testutil

import (
	"bytes"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/pgaudit-proxy/pgaudit/internal/pgtest"
)

// Update is the -update flag: tests rewrite their golden files under
// testdata/ instead of comparing with them (go test ./pkg -run Name -update).
var Update = flag.Bool("update", false, "rewrite golden files under testdata/")

// Golden compares got with the golden file testdata/name (name may hold
// subdirectories) and fails tb if they differ; with -update it writes got
// to the file instead, creating its directory.
func Golden(tb testing.TB, name string, got []byte) {
	tb.Helper()
	path := filepath.Join("testdata", name)
	if *Update {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			tb.Fatalf("update golden file: %v", err)
		}
		if err := os.WriteFile(path, got, 0o644); err != nil {
			tb.Fatalf("update golden file: %v", err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		tb.Fatalf("read golden file (run go test with -update to create it): %v", err)
	}
	if !bytes.Equal(got, want) {
		tb.Errorf("%s differs from the golden file (run go test with -update to accept):\n--- got\n%s\n--- want\n%s", path, got, want)
	}
}

var (
	sharedOnce sync.Once
	shared     *pgtest.Cluster
)

// Cluster returns the test binary's shared Postgres cluster (default
// options). It starts at the first call of a method that needs the server;
// Main stops it, so a package that uses it has TestMain call Main. Tests that share it must not assume they are alone on it:
// use tables, roles and databases named after the test.
func Cluster() *pgtest.Cluster {
	sharedOnce.Do(func() { shared = pgtest.Lazy(pgtest.Options{}) })
	return shared
}

// Shared is Cluster, started now: a start failure fails tb instead of
// panicking in the first method call.
func Shared(tb testing.TB) *pgtest.Cluster {
	tb.Helper()
	c := Cluster()
	if err := c.Ready(); err != nil {
		tb.Fatal(err)
	}
	return c
}

// Main is a TestMain: it runs the tests, stops the shared cluster if one
// started and, when the tests passed, fails the run on goroutines still
// running (goleak).
func Main(m *testing.M) {
	code := m.Run()
	sharedOnce.Do(func() {}) // none from here on
	if shared != nil {
		shared.Stop()
	}
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goroutine leak:", err)
			code = 1
		}
	}
	os.Exit(code)
}

// Eventually polls cond every 10ms until it holds, and fails tb with
// "timed out waiting for " + what when timeout passes first. Use it where a
// test would otherwise sleep and hope: for a server-side effect, a counter,
// a goroutine to reach a state.
func Eventually(tb testing.TB, timeout time.Duration, what string, cond func() bool) {
	tb.Helper()
	if !Within(timeout, cond) {
		tb.Fatalf("timed out after %v waiting for %s", timeout, what)
	}
}

// Within polls cond every 10ms until it holds or timeout passes, and
// returns its last result: for a test that waits for a condition and then
// reports in detail what it found when it did not hold.
func Within(timeout time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			return cond()
		}
		time.Sleep(10 * time.Millisecond)
	}
	return true
}
