package testutil

import (
	"context"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// ChromiumDOM loads url in headless Chromium and returns the DOM after
// scripts ran. It skips the test when Chromium is not installed.
func ChromiumDOM(t *testing.T, url string) string {
	t.Helper()
	bin := ""
	for _, cand := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(cand); err == nil {
			bin = p
			break
		}
	}
	if bin == "" {
		t.Skip("Chromium is not installed (apt-get install -y chromium): skipping the browser rendering check")
	}
	dir, err := os.MkdirTemp("", "pgaudit-chromium-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
		"--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
		"--disable-dev-shm-usage", "--user-data-dir="+dir, "--virtual-time-budget=5000", "--dump-dom", url)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("chromium: %v\n%s", err, Tail(stderr.String(), 3000))
	}
	return string(out)
}

// Tail is the last n bytes of s, for failure messages.
func Tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

// CheckDashboardDOM checks a DOM of the dashboard page (admin's live
// dashboard or a pgaudit report) after scripts ran: the four charts, the
// given shapes in the queries table, the tests' sample missing-index
// finding with its fix, and a transaction-mode pool of database postgres.
func CheckDashboardDOM(t *testing.T, dom string, shapes []string) {
	t.Helper()
	if n := strings.Count(dom, `class="uplot`); n != 4 {
		t.Errorf("%d uPlot charts rendered, want 4", n)
	}
	if n := strings.Count(dom, "<canvas"); n < 4 {
		t.Errorf("%d canvases, want >= 4", n)
	}
	for _, title := range []string{"Throughput (per second)", "Statement latency (ms)", "Pool utilization (%)", "Wait for a server connection (ms)"} {
		if !strings.Contains(dom, title) {
			t.Errorf("chart %q missing", title)
		}
	}
	i := strings.Index(dom, `<table id="queries">`)
	j := strings.Index(dom, `<table id="pools">`)
	if i < 0 || j < 0 {
		t.Fatalf("tables missing from the DOM:\n%s", Tail(dom, 4000))
	}
	queries := dom[i:]
	queries = queries[:strings.Index(queries, "</table>")]
	for _, s := range shapes {
		if !strings.Contains(queries, s) {
			t.Errorf("shape %q not in the queries table", s)
		}
	}
	if !strings.Contains(queries, "<td") || strings.Contains(queries, "No statements seen yet") {
		t.Errorf("queries table empty")
	}
	if !strings.Contains(dom, "CREATE INDEX CONCURRENTLY reviews_book_id_idx") || !strings.Contains(dom, `class="finding warning"`) {
		t.Errorf("finding with its fix not rendered")
	}
	pools := dom[j:]
	pools = pools[:strings.Index(pools, "</table>")]
	if !strings.Contains(pools, ">postgres<") || !strings.Contains(pools, ">transaction<") {
		t.Errorf("pools table lacks the pool: %s", pools)
	}
}
