package report

import (
	"bytes"
	"compress/gzip"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pgaudit-proxy/pgaudit/internal/testutil"
)

func gzipCopy(t *testing.T, src string) string {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	_, _ = zw.Write(b)
	_ = zw.Close()
	dst := src + ".gz"
	if err := os.WriteFile(dst, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	return dst
}

// TestReport builds a report from the audit logs of two proxy runs (one
// gzipped, one with a bad line), checks the merge, and opens the HTML in
// headless Chromium.
func TestReport(t *testing.T) {
	dir := t.TempDir()
	a, b := filepath.Join(dir, "a.jsonl"), filepath.Join(dir, "b.jsonl")
	writeRun(t, a, "run-a", 6, 10)
	writeRun(t, b, "run-b", 9, 32)
	f, err := os.OpenFile(a, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = f.WriteString("this is not json\n")
	_ = f.Close()
	bz := gzipCopy(t, b)

	rep, err := Build([]Input{FileInput(a), FileInput(bz)}, Options{Version: "test"})
	if err != nil {
		t.Fatal(err)
	}
	s := rep.Summary
	if len(s.Runs) != 2 || s.BadLineCount != 1 || s.Statements == 0 || s.Pools != 6 || s.Findings != 2 {
		t.Errorf("summary %+v", s)
	}
	var probe, other uint64
	for _, sh := range rep.Stats.Shapes {
		if strings.Contains(sh.Query, "dashboard_probe") {
			probe = sh.Calls
			if sh.P99 <= 0 || sh.P50 > sh.P99 {
				t.Errorf("probe percentiles p50 %v p99 %v", sh.P50, sh.P99)
			}
		}
		if strings.Contains(sh.Query, "other_probe") {
			other = sh.Calls
		}
	}
	// 3 rounds of n/3+1 statements per run: 3*3 + 3*4.
	if probe != 21 || other != 21 {
		t.Errorf("merged calls: probe %d other %d, want 21 each", probe, other)
	}
	d := rep.Dashboard
	if len(d.Findings) != 1 || d.Findings[0].Count != 42 {
		t.Errorf("merged findings %+v", d.Findings)
	}
	// The time tile is summed statement time, and says so (issue 14,
	// item 3): concurrent statements add up beyond the wall time.
	tiles := map[string]string{}
	for _, s := range d.Summary {
		tiles[s.Label] = s.Value
	}
	if _, ok := tiles["total time"]; ok || tiles["statement time (summed)"] == "" || tiles["findings open"] != "1" {
		t.Errorf("summary tiles %v", d.Summary)
	}
	if len(d.Pools) != 2 || !strings.Contains(d.Pools[0].Database, "@run-") {
		t.Errorf("pools %+v", d.Pools)
	}
	var qps, util float64
	for i := range d.Series.T {
		qps += float64(d.Series.QPS[i])
		if v := float64(d.Series.UtilAvg[i]); v == v {
			util++
		}
	}
	if qps == 0 || util == 0 {
		t.Errorf("series without data: %+v", d.Series)
	}
	if len(d.Notes) < 3 || !strings.Contains(strings.Join(d.Notes, " "), "unusable lines") {
		t.Errorf("notes %q", d.Notes)
	}

	out := filepath.Join(dir, "report.html")
	var buf bytes.Buffer
	if err := rep.WriteHTML(&buf); err != nil {
		t.Fatal(err)
	}
	html := buf.String()
	for _, bad := range []string{`src="http`, `href="http`, `src="assets`, `href="assets`} {
		if strings.Contains(html, bad) {
			t.Errorf("report is not self-contained: has %s", bad)
		}
	}
	if err := os.WriteFile(out, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	dom := testutil.ChromiumDOM(t, "file://"+out)
	testutil.CheckDashboardDOM(t, dom, []string{"dashboard_probe", "other_probe", "failing_probe"})
}

// TestReportEmptyAndErrors: no inputs is an error, a missing file is an
// I/O error, and a log with only bad lines still renders.
func TestReportEmptyAndErrors(t *testing.T) {
	if _, err := Build(nil, Options{}); err == nil {
		t.Error("no inputs accepted")
	}
	if _, err := Build([]Input{FileInput("/nonexistent/audit.jsonl")}, Options{}); err == nil {
		t.Error("missing file accepted")
	}
	p := filepath.Join(t.TempDir(), "junk.jsonl")
	if err := os.WriteFile(p, []byte("junk\n{\"schema\":99}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	// A file without a single audit-log record (issue 14, item 12) is an
	// error, not an empty report.
	if _, err := Build([]Input{FileInput(p)}, Options{}); !errors.Is(err, ErrNotAuditLog) || !strings.Contains(err.Error(), "junk.jsonl") {
		t.Errorf("junk file: %v", err)
	}
	// Junk lines next to audit records are counted, not fatal.
	good := filepath.Join(t.TempDir(), "audit.jsonl")
	writeRun(t, good, "run-a", 6, 1)
	f, err := os.OpenFile(good, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = f.WriteString("junk\n")
	_ = f.Close()
	rep, err := Build([]Input{FileInput(good)}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Summary.BadLineCount != 1 {
		t.Errorf("bad lines %d", rep.Summary.BadLineCount)
	}
	var buf bytes.Buffer
	if err := rep.WriteHTML(&buf); err != nil || !strings.Contains(buf.String(), "window.PGAUDIT_DATA") {
		t.Errorf("report HTML: %v", err)
	}
}

func TestPickWidth(t *testing.T) {
	for _, c := range []struct {
		span time.Duration
		want time.Duration
	}{
		{0, 10 * time.Second},
		{time.Hour, 10 * time.Second},
		{3 * time.Hour, 30 * time.Second},
		{24 * time.Hour, 5 * time.Minute},
		{365 * 24 * time.Hour, 24 * time.Hour},
		{5 * 365 * 24 * time.Hour, 96 * time.Hour},
	} {
		if got := pickWidth(c.span, 720); got != c.want {
			t.Errorf("pickWidth(%v) = %v, want %v", c.span, got, c.want)
		}
	}
}
