package admin

import (
	"context"
	"encoding/json"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/pgaudit-proxy/pgaudit/pooler"
)

// dashboardPath is the example Grafana dashboard of the README.
const dashboardPath = "../docs/grafana-dashboard.json"

// metricRef finds pgaudit metric names in PromQL.
var metricRef = regexp.MustCompile(`\bpgaudit_[a-z_]+`)

// dashboardQueries returns every PromQL string of a Grafana dashboard: the
// panels' target exprs and the template variables' queries.
func dashboardQueries(t *testing.T, v any, key string, out *[]string) {
	t.Helper()
	switch x := v.(type) {
	case map[string]any:
		for k, c := range x {
			dashboardQueries(t, c, k, out)
		}
	case []any:
		for _, c := range x {
			dashboardQueries(t, c, key, out)
		}
	case string:
		if key == "expr" || key == "query" || key == "definition" {
			*out = append(*out, x)
		}
	}
}

// TestGrafanaDashboard parses docs/grafana-dashboard.json and checks it is
// a usable dashboard whose every queried metric is in a real /metrics
// scrape of a running proxy.
func TestGrafanaDashboard(t *testing.T) {
	raw, err := os.ReadFile(dashboardPath)
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Title  string `json:"title"`
		UID    string `json:"uid"`
		Panels []struct {
			ID      int    `json:"id"`
			Type    string `json:"type"`
			Title   string `json:"title"`
			GridPos struct {
				W, H int
			} `json:"gridPos"`
			Targets []struct {
				RefID string `json:"refId"`
				Expr  string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(raw, &dash); err != nil {
		t.Fatalf("%s: %v", dashboardPath, err)
	}
	if dash.Title == "" || dash.UID == "" || len(dash.Panels) < 6 {
		t.Fatalf("dashboard title %q uid %q with %d panels", dash.Title, dash.UID, len(dash.Panels))
	}
	ids := map[int]bool{}
	for _, p := range dash.Panels {
		if ids[p.ID] || p.ID == 0 {
			t.Errorf("panel %q: id %d missing or reused", p.Title, p.ID)
		}
		ids[p.ID] = true
		if p.Type == "" || p.Title == "" || p.GridPos.W == 0 || p.GridPos.H == 0 || len(p.Targets) == 0 {
			t.Errorf("panel %d %q: type, title, size or targets missing", p.ID, p.Title)
		}
		for _, tg := range p.Targets {
			if tg.RefID == "" || !metricRef.MatchString(tg.Expr) || strings.Count(tg.Expr, "(") != strings.Count(tg.Expr, ")") {
				t.Errorf("panel %q: target %q %q", p.Title, tg.RefID, tg.Expr)
			}
		}
	}
	var doc any
	if err := json.Unmarshal(raw, &doc); err != nil {
		t.Fatal(err)
	}
	var queries []string
	dashboardQueries(t, doc, "", &queries)

	e := newEnv(t, envOptions{mode: pooler.TransactionMode, size: 2})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	e.workload(ctx, 3)
	resp := httpGet(t, e.base+"/metrics")
	if resp.code != 200 {
		t.Fatalf("/metrics: %d %s", resp.code, resp.body)
	}
	parser := expfmt.NewTextParser(model.LegacyValidation)
	fams, err := parser.TextToMetricFamilies(strings.NewReader(string(resp.body)))
	if err != nil {
		t.Fatal(err)
	}
	var used []string
	for _, q := range queries {
		for _, name := range metricRef.FindAllString(q, -1) {
			family := name
			for _, suffix := range []string{"_bucket", "_sum", "_count"} {
				base := strings.TrimSuffix(name, suffix)
				if f := fams[base]; base != name && f != nil && f.GetType() == dto.MetricType_HISTOGRAM {
					family = base
				}
			}
			f := fams[family]
			switch {
			case f == nil:
				t.Errorf("dashboard queries %s, not in /metrics: %s", name, q)
			case family != name && !strings.HasSuffix(name, "_bucket") && !strings.HasSuffix(name, "_sum") && !strings.HasSuffix(name, "_count"):
				t.Errorf("%s: unexpected suffix", name)
			case len(f.GetMetric()) == 0:
				t.Errorf("%s has no series after a workload", family)
			}
			if !slices.Contains(used, family) {
				used = append(used, family)
			}
		}
	}
	// The panels the README promises.
	for _, want := range []string{
		"pgaudit_pool_wait_seconds", "pgaudit_query_duration_seconds", "pgaudit_pool_utilization_ratio",
		"pgaudit_pool_size", "pgaudit_pool_transactions_total", "pgaudit_audit_events_dropped_total", "pgaudit_findings",
	} {
		if !slices.Contains(used, want) {
			t.Errorf("dashboard does not query %s", want)
		}
	}
	t.Logf("%d queries, metrics %v", len(queries), used)
}
