package admin

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/pgaudit-proxy/pgaudit/internal/testutil"
	"github.com/pgaudit-proxy/pgaudit/pooler"
	"github.com/pgaudit-proxy/pgaudit/rules"
)

type httpResp struct {
	code int
	body []byte
	ct   string
}

func httpGet(t *testing.T, url string) httpResp {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return httpResp{resp.StatusCode, b, resp.Header.Get("Content-Type")}
}

// TestMetrics parses /metrics with the Prometheus text parser and checks
// the metric families, their types and their labels.
func TestMetrics(t *testing.T) {
	e := newEnv(t, envOptions{mode: pooler.TransactionMode, size: 2})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	e.workload(ctx, 5)
	resp := httpGet(t, e.base+"/metrics")
	if resp.code != 200 {
		t.Fatalf("/metrics: %d %s", resp.code, resp.body)
	}
	p := expfmt.NewTextParser(model.LegacyValidation)
	fams, err := p.TextToMetricFamilies(strings.NewReader(string(resp.body)))
	if err != nil {
		t.Fatalf("parse /metrics: %v\n%s", err, resp.body)
	}
	want := map[string]string{
		"pgaudit_build_info":                          "GAUGE",
		"pgaudit_client_connections":                  "GAUGE",
		"pgaudit_pool_clients":                        "GAUGE",
		"pgaudit_pool_servers":                        "GAUGE",
		"pgaudit_pool_size":                           "GAUGE",
		"pgaudit_pool_utilization_ratio":              "GAUGE",
		"pgaudit_pool_transactions_total":             "COUNTER",
		"pgaudit_pool_queries_total":                  "COUNTER",
		"pgaudit_pool_bytes_received_total":           "COUNTER",
		"pgaudit_pool_bytes_sent_total":               "COUNTER",
		"pgaudit_pool_wait_seconds":                   "HISTOGRAM",
		"pgaudit_pool_wait_max_seconds":               "GAUGE",
		"pgaudit_database_paused":                     "GAUGE",
		"pgaudit_query_duration_seconds":              "HISTOGRAM",
		"pgaudit_query_errors_total":                  "COUNTER",
		"pgaudit_audit_events_dropped_total":          "COUNTER",
		"pgaudit_audit_events_processed_total":        "COUNTER",
		"pgaudit_audit_queue_events":                  "GAUGE",
		"pgaudit_audit_observer_panics_total":         "COUNTER",
		"pgaudit_query_shapes":                        "GAUGE",
		"pgaudit_findings":                            "GAUGE",
		"pgaudit_explain_rounds_total":                "COUNTER",
		"pgaudit_explain_shapes_checked_total":        "COUNTER",
		"pgaudit_explain_not_explainable_total":       "COUNTER",
		"pgaudit_explain_failures_total":              "COUNTER",
		"pgaudit_explain_timeouts_total":              "COUNTER",
		"pgaudit_explain_findings_total":              "COUNTER",
		"pgaudit_explain_user_code_total":             "COUNTER",
		"pgaudit_cancel_requests_total":               "COUNTER",
		"pgaudit_peer_cancel_requests_received_total": "COUNTER",
		"pgaudit_login_connections":                   "GAUGE",
		"pgaudit_login_evictions_total":               "COUNTER",
		"pgaudit_clients_rejected_total":              "COUNTER",
		"pgaudit_auth_failures_total":                 "COUNTER",
		"pgaudit_client_buffer_bytes":                 "GAUGE",
		"pgaudit_client_buffer_budget_bytes":          "GAUGE",
		"pgaudit_client_buffer_budget_exceeded_total": "COUNTER",
		"go_goroutines":                               "GAUGE",
		"go_sched_latencies_seconds":                  "HISTOGRAM",
		"process_cpu_seconds_total":                   "COUNTER",
	}
	for name, typ := range want {
		f, ok := fams[name]
		if !ok {
			t.Errorf("metric family %s missing", name)
			continue
		}
		if f.GetType().String() != typ {
			t.Errorf("%s is %s, want %s", name, f.GetType(), typ)
		}
	}
	// Labels stay bounded: the latency histogram is by database only.
	h := fams["pgaudit_query_duration_seconds"]
	if h != nil {
		for _, m := range h.GetMetric() {
			if len(m.GetLabel()) != 1 || m.GetLabel()[0].GetName() != "database" {
				t.Errorf("pgaudit_query_duration_seconds labels %v", m.GetLabel())
			}
			if m.GetLabel()[0].GetValue() == "postgres" && m.GetHistogram().GetSampleCount() < 11 {
				t.Errorf("histogram count %d, want >= 11", m.GetHistogram().GetSampleCount())
			}
		}
	}
	if f := fams["pgaudit_query_errors_total"]; f == nil || f.GetMetric()[0].GetCounter().GetValue() != 1 {
		t.Errorf("pgaudit_query_errors_total = %v", f)
	}
	states := map[string]bool{}
	for _, m := range fams["pgaudit_pool_servers"].GetMetric() {
		for _, l := range m.GetLabel() {
			if l.GetName() == "state" {
				states[l.GetValue()] = true
			}
		}
	}
	if !states["active"] || !states["idle"] || !states["login"] {
		t.Errorf("pgaudit_pool_servers states %v", states)
	}
	if f := fams["pgaudit_findings"]; f != nil {
		m := f.GetMetric()[0]
		labels := map[string]string{}
		for _, l := range m.GetLabel() {
			labels[l.GetName()] = l.GetValue()
		}
		if labels["rule"] != "missing-index" || labels["severity"] != "warning" || labels["status"] != "open" || m.GetGauge().GetValue() != 1 {
			t.Errorf("pgaudit_findings = %v", m)
		}
	}
	if f := fams["pgaudit_pool_wait_seconds"]; f != nil && f.GetMetric()[0].GetHistogram().GetSampleCount() == 0 {
		t.Error("pgaudit_pool_wait_seconds has no acquisitions")
	}
}

// TestAPI decodes every JSON endpoint and checks the health endpoints and
// the pprof guard.
func TestAPI(t *testing.T) {
	e := newEnv(t, envOptions{})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	e.workload(ctx, 3)
	_ = e.appConn(ctx)
	decode := func(path string, v any) {
		t.Helper()
		r := httpGet(t, e.base+path)
		if r.code != 200 || !strings.HasPrefix(r.ct, "application/json") {
			t.Fatalf("%s: %d %s %s", path, r.code, r.ct, r.body)
		}
		dec := json.NewDecoder(strings.NewReader(string(r.body)))
		dec.DisallowUnknownFields()
		if err := dec.Decode(v); err != nil {
			t.Fatalf("%s: %v\n%s", path, err, r.body)
		}
	}
	var pools []PoolRow
	decode("/api/v1/pools", &pools)
	if len(pools) != 1 || pools[0].Database != "postgres" || pools[0].PoolSize != 5 {
		t.Errorf("pools %+v", pools)
	}
	var clients []pooler.ClientInfo
	decode("/api/v1/clients", &clients)
	if len(clients) == 0 {
		t.Error("no clients")
	}
	var servers []pooler.ServerInfo
	decode("/api/v1/servers", &servers)
	if len(servers) == 0 {
		t.Error("no servers")
	}
	var stats []StatsRow
	decode("/api/v1/stats", &stats)
	var dbs []DatabaseRow
	decode("/api/v1/databases", &dbs)
	if len(dbs) != 1 || *dbs[0].Host != "127.0.0.1" {
		t.Errorf("databases %+v", dbs)
	}
	var qs []QueryRow
	decode("/api/v1/queries?by=calls&limit=2", &qs)
	if len(qs) != 2 || qs[0].Calls < qs[1].Calls {
		t.Errorf("queries by calls: %+v", qs)
	}
	decode("/api/v1/queries?by=p99", &qs)
	if len(qs) < 3 || qs[0].P99MS < qs[len(qs)-1].P99MS {
		t.Errorf("queries by p99: %+v", qs)
	}
	var fs []rules.Finding
	decode("/api/v1/findings", &fs)
	if len(fs) != 1 || fs[0].Suggestion != sampleFinding.Suggestion {
		t.Errorf("findings %+v", fs)
	}
	// Lifecycle: a resolved finding is listed after the open one, with
	// its status; ?status= filters.
	e.findings.mu.Lock()
	e.findings.fs = append(e.findings.fs, resolvedFinding)
	e.findings.mu.Unlock()
	decode("/api/v1/findings", &fs)
	if len(fs) != 2 || !fs[0].Open() || fs[1].Status != rules.StatusResolved || fs[1].ResolvedAt.IsZero() || fs[1].Resolution == "" {
		t.Errorf("findings %+v", fs)
	}
	decode("/api/v1/findings?status=open", &fs)
	if len(fs) != 1 || fs[0].ID != sampleFinding.ID {
		t.Errorf("open findings %+v", fs)
	}
	decode("/api/v1/findings?status=resolved", &fs)
	if len(fs) != 1 || fs[0].ID != resolvedFinding.ID {
		t.Errorf("resolved findings %+v", fs)
	}
	if r := httpGet(t, e.base+"/api/v1/findings?status=stale"); r.code != http.StatusBadRequest {
		t.Errorf("status=stale: %d %s", r.code, r.body)
	}
	var dd Dashboard
	decode("/api/v1/dashboard", &dd)
	tiles := map[string]string{}
	for _, s := range dd.Summary {
		tiles[s.Label] = s.Value
	}
	if tiles["findings open"] != "1" || tiles["findings resolved"] != "1" {
		t.Errorf("dashboard tiles %v", dd.Summary)
	}
	e.findings.mu.Lock()
	e.findings.fs = e.findings.fs[:1]
	e.findings.mu.Unlock()
	testutil.Eventually(t, 5*time.Second, "two samples", func() bool { return len(e.admin.Series().T) >= 2 })
	var ts Series
	decode("/api/v1/timeseries", &ts)
	if len(ts.T) < 2 || len(ts.QPS) != len(ts.T) || len(ts.UtilAvg) != len(ts.T) || ts.IntervalS != 0.1 {
		t.Errorf("timeseries %+v", ts)
	}
	var d Dashboard
	decode("/api/v1/dashboard", &d)
	if len(d.Queries) == 0 || len(d.Pools) != 1 || len(d.Summary) == 0 {
		t.Errorf("dashboard %+v", d)
	}

	if r := httpGet(t, e.base+"/api/v1/queries?by=nope"); r.code != 400 {
		t.Errorf("bad by: %d", r.code)
	}
	if r := httpGet(t, e.base+"/api/v1/queries?limit=0"); r.code != 400 {
		t.Errorf("bad limit: %d", r.code)
	}
	if r := httpGet(t, e.base+"/healthz"); r.code != 200 {
		t.Errorf("/healthz %d", r.code)
	}
	if r := httpGet(t, e.base+"/readyz"); r.code != 200 {
		t.Errorf("/readyz %d %s", r.code, r.body)
	}
	if r := httpGet(t, e.base+"/debug/pprof/"); r.code != 404 {
		t.Errorf("/debug/pprof/ without pprof: %d", r.code)
	}
	if r := httpGet(t, e.base+"/assets/vendor/uPlot.iife.min.js"); r.code != 200 || !strings.Contains(string(r.body), "uPlot") {
		t.Errorf("uPlot asset: %d", r.code)
	}
	if r := httpGet(t, e.base+"/nope"); r.code != 404 {
		t.Errorf("/nope: %d", r.code)
	}

	e2 := newEnv(t, envOptions{adminOpts: func(o *Options) { o.Pprof = true; o.Findings = nil }})
	if r := httpGet(t, e2.base+"/debug/pprof/"); r.code != 200 || !strings.Contains(string(r.body), "goroutine") {
		t.Errorf("/debug/pprof/ with pprof: %d", r.code)
	}
	var none []rules.Finding
	r := httpGet(t, e2.base+"/api/v1/findings")
	if err := json.Unmarshal(r.body, &none); err != nil || none == nil || len(none) != 0 {
		t.Errorf("findings without a source: %s", r.body)
	}
	e2.stop()
	if !closedPort(strings.TrimPrefix(e2.base, "http://")) {
		t.Error("admin listener still open after Close")
	}
}

// TestDashboardInChromium opens the live dashboard in headless Chromium and
// checks that the four charts rendered and the tables hold the shapes and
// the finding.
func TestDashboardInChromium(t *testing.T) {
	e := newEnv(t, envOptions{mode: pooler.TransactionMode, size: 2})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	e.workload(ctx, 10)
	testutil.Eventually(t, 5*time.Second, "samples with statements", func() bool {
		for _, q := range e.admin.Series().QPS {
			if q > 0 {
				return true
			}
		}
		return false
	})
	// A resolved finding is listed below the cards, not as one (issue
	// 14, item 4: stale findings must not dominate the page).
	e.findings.mu.Lock()
	e.findings.fs = append(e.findings.fs, resolvedFinding)
	e.findings.mu.Unlock()
	dom := chromiumDOM(t, e.base+"/")
	checkRenderedPage(t, dom, []string{"dashboard_probe", "other_probe"})
	if n := strings.Count(dom, `class="finding `); n != 1 {
		t.Errorf("%d finding cards, want 1 (the open one)", n)
	}
	if !strings.Contains(dom, "Resolved (1)") || !strings.Contains(dom, `class="finding-resolved"`) || !strings.Contains(dom, "below the 500ms threshold") {
		t.Errorf("resolved finding not listed:\n%s", tail(dom, 3000))
	}
}
