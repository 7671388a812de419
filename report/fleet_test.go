package report

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pgaudit-proxy/pgaudit/fleet"
	"github.com/pgaudit-proxy/pgaudit/internal/testutil"
)

// TestReportWithFleet: live instances' exports (Options.Fleet) merge with
// audit logs: calls add up, the finding seen by both is one row with the
// counts added, every row counts its sources, a failed instance is listed,
// and the page renders the fleet section. Without files the report is
// built from the instances alone.
func TestReportWithFleet(t *testing.T) {
	dir := t.TempDir()
	a := filepath.Join(dir, "a.jsonl")
	writeRun(t, a, "run-a", 6, 10)
	alone, err := Build([]Input{FileInput(a)}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	// An instance that saw the same as the log: its export.
	doc := fleet.Export(fleet.Instance{Hostname: "app-2", Exported: time.Now()}, alone.Stats, alone.Dashboard.Findings, nil)
	down := fleet.Source{Name: "http://127.0.0.1:1", Err: errors.New("fetch http://127.0.0.1:1/api/v1/export: connection refused")}

	rep, err := Build([]Input{FileInput(a)}, Options{Fleet: []fleet.Source{{Name: "http://app-2:9930", Doc: doc}, down}})
	if err != nil {
		t.Fatal(err)
	}
	v := rep.Fleet
	if v == nil || v.Instances != 2 || v.Failed != 1 {
		t.Fatalf("fleet view %+v", v)
	}
	var probe fleet.ShapeRow
	for _, r := range v.Shapes {
		if strings.Contains(r.Query, "dashboard_probe") {
			probe = r
		}
	}
	// writeRun with n=6: 3 rounds of 3.
	if probe.Calls != 18 || probe.Instances != 2 || probe.P99US <= 0 {
		t.Errorf("probe row %+v: want 18 calls from 2 sources", probe)
	}
	if len(v.Findings) != 1 || v.Findings[0].Count != 20 || v.Findings[0].Instances != 2 {
		t.Errorf("findings %+v: want one with count 20 from 2 sources", v.Findings)
	}
	if d := rep.Dashboard; len(d.Findings) != 1 || d.Findings[0].Count != 20 || d.Fleet != v {
		t.Errorf("dashboard findings %+v", d.Findings)
	}

	// Instances only.
	only, err := Build(nil, Options{Fleet: []fleet.Source{{Name: "http://app-2:9930", Doc: doc}}})
	if err != nil {
		t.Fatal(err)
	}
	if only.Fleet.Instances != 1 || len(only.Stats.Shapes) != len(alone.Stats.Shapes) || only.Stats.Calls != alone.Stats.Calls {
		t.Errorf("instances-only report: %d instances, %d shapes, %d calls; want 1, %d, %d",
			only.Fleet.Instances, len(only.Stats.Shapes), only.Stats.Calls, len(alone.Stats.Shapes), alone.Stats.Calls)
	}

	var buf bytes.Buffer
	if err := rep.WriteHTML(&buf); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "fleet.html")
	if err := os.WriteFile(out, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	dom := testutil.ChromiumDOM(t, "file://"+out)
	i := strings.Index(dom, `<section id="fleet"`)
	if i < 0 {
		t.Fatalf("no fleet section:\n%s", testutil.Tail(dom, 3000))
	}
	for _, want := range []string{"2 instances, 1 failed", "connection refused", "dashboard_probe", "<th>instances</th>"} {
		if !strings.Contains(dom[i:], want) {
			t.Errorf("fleet section lacks %q", want)
		}
	}
}
