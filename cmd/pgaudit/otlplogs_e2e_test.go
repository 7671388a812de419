package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/rs/zerolog"

	"github.com/pgaudit-proxy/pgaudit/admin"
	"github.com/pgaudit-proxy/pgaudit/analyzer"
	"github.com/pgaudit-proxy/pgaudit/internal/auditlog"
	"github.com/pgaudit-proxy/pgaudit/internal/otlplog"
	"github.com/pgaudit-proxy/pgaudit/internal/pgtest"
	"github.com/pgaudit-proxy/pgaudit/internal/testutil"
	"github.com/pgaudit-proxy/pgaudit/rules"
)

// TestOTLPLogsThroughProxy (issue 17, section 3) runs real clients through
// the proxy with otlp_logs_endpoint pointing at a real OpenTelemetry
// Collector (otlp receiver, file exporter): every statement record arrives
// with the database semantic-convention attributes, normalized text only,
// the SQLSTATE of a failing statement and the trace context of a
// sqlcommenter traceparent; pool and stats records arrive too. Then the
// collector is killed while traffic runs: every query still succeeds
// without waiting on the exporter, the drop counter in /metrics rises,
// and the audit file still has every statement.
func TestOTLPLogsThroughProxy(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	c := startE2ECluster(t, ctx, pgtest.Options{}, "", false)
	col := testutil.StartCollector(t)
	auditPath := filepath.Join(t.TempDir(), "audit.jsonl")
	const otlpQueue = 64
	e := startE2EProxy(t, ctx, c, auditorOptions{
		Rules:    rules.DefaultConfig(),
		AuditLog: auditlog.Config{Path: auditPath, StatsInterval: -1},
		OTLPLogs: &otlplog.Config{Endpoint: col.Endpoint, QueueSize: otlpQueue, ExportInterval: 50 * time.Millisecond,
			ExportTimeout: 10 * time.Second, ServiceVersion: "test",
			Server: func(string) (string, int, bool) { return c.Host(), c.Port, true }},
	}, 4, nil)
	stopped := false
	defer func() {
		if !stopped {
			e.stop()
		}
	}()
	if e.aud.otlp == nil {
		t.Fatal("auditor has no OTLP exporter")
	}
	adm := admin.New(admin.Options{Log: zerolog.Nop()})
	if err := adm.RegisterCollector(e.aud.otlp); err != nil {
		t.Fatal(err)
	}
	addr, err := adm.ListenAndServe("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = adm.Close() }()

	conn, err := pgx.Connect(ctx, e.DSN)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	table := "otlp_" + strconv.FormatInt(time.Now().UnixNano(), 36)
	const traceID, spanID = "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"
	steps := []string{
		"CREATE TABLE " + table + " (id int PRIMARY KEY, email text)",
		"INSERT INTO " + table + " VALUES (1, 'alice@secret.example')",
		"SELECT email FROM " + table + " WHERE email = 'alice@secret.example'",
		"SELECT 1/0",
		"SELECT id FROM " + table + " WHERE id = 7 /*traceparent='00-" + traceID + "-" + spanID + "-01'*/",
		"DROP TABLE " + table,
	}
	for _, s := range steps {
		_, err := conn.Exec(ctx, s, pgx.QueryExecModeSimpleProtocol)
		if (err != nil) != (s == "SELECT 1/0") {
			t.Fatalf("%s: %v", s, err)
		}
	}
	writePoolSnapshot(e.proxy, e.aud.log, zerolog.Nop())
	// A stats record, as the pipeline writes it every stats_interval.
	testutil.Eventually(t, 10*time.Second, "the pipeline to count the statements", func() bool {
		return e.aud.pipeline.Counters().Processed >= uint64(len(steps))
	})
	snap, err := e.aud.pipeline.Stats().Snapshot().Truncate(analyzer.ByTotalTime, 50)
	if err != nil {
		t.Fatal(err)
	}
	if err := e.aud.log.WriteStats(snap, false); err != nil {
		t.Fatal(err)
	}

	type want struct {
		query, summary, status, trace string
	}
	wants := []want{
		{"CREATE TABLE " + table + " (id int PRIMARY KEY, email text)", "CREATE TABLE " + table, "", ""},
		{"INSERT INTO " + table + " VALUES ($1, $2)", "INSERT " + table, "", ""},
		{"SELECT email FROM " + table + " WHERE email = $1", "SELECT " + table, "", ""},
		{"SELECT $1/$2", "SELECT", "22012", ""},
		{"SELECT id FROM " + table + " WHERE id = $1", "SELECT " + table, "", traceID},
		{"DROP TABLE " + table, "DROP TABLE " + table, "", ""},
	}
	var recs []testutil.LogRecord
	find := func(event, query string) *testutil.LogRecord {
		for i := range recs {
			if recs[i].EventName == event && (query == "" || recs[i].Attributes["db.query.text"] == query) {
				return &recs[i]
			}
		}
		return nil
	}
	testutil.Eventually(t, 20*time.Second, "the statement and pool records at the collector", func() bool {
		recs = col.Records(t)
		for _, w := range wants {
			if find(otlplog.EventStatement, w.query) == nil {
				return false
			}
		}
		return find(otlplog.EventPool, "") != nil && find(otlplog.EventStats, wants[2].query) != nil
	})
	for _, w := range wants {
		r := find(otlplog.EventStatement, w.query)
		checks := map[string]any{
			"db.system.name":   "postgresql",
			"db.namespace":     "postgres",
			"db.query.summary": w.summary,
			"server.address":   c.Host(),
			"server.port":      int64(c.Port),
			"user.name":        "postgres",
		}
		if w.status != "" {
			checks["db.response.status_code"] = w.status
		}
		for k, v := range checks {
			if got := r.Attributes[k]; got != v {
				t.Errorf("%q: %s = %#v, want %#v", w.query, k, got, v)
			}
		}
		if _, has := r.Attributes["db.response.status_code"]; has != (w.status != "") {
			t.Errorf("%q: status code %v present %v", w.query, r.Attributes["db.response.status_code"], has)
		}
		if r.TraceID != w.trace || (w.trace != "" && r.SpanID != spanID) {
			t.Errorf("%q: trace context %q/%q, want %q", w.query, r.TraceID, r.SpanID, w.trace)
		}
		if _, ok := r.Attributes["pgaudit.fingerprint"].(string); !ok {
			t.Errorf("%q: no fingerprint", w.query)
		}
	}
	for _, r := range recs {
		b, _ := json.Marshal(r)
		if strings.Contains(string(b), "alice@secret") {
			t.Errorf("a literal reached the collector: %s", b)
		}
	}
	if p := find(otlplog.EventPool, ""); p.Attributes["db.namespace"] != "postgres" || p.Attributes["pgaudit.pool.pool_mode"] != "transaction" {
		t.Errorf("pool record attributes: %v", p.Attributes)
	}
	// The collector writes a batch before it answers the export request.
	testutil.Eventually(t, 10*time.Second, "the exported counter to catch up", func() bool {
		return e.aud.otlp.Counters().Exported >= uint64(len(recs))
	})
	if st := find(otlplog.EventStats, wants[2].query); st.Attributes["pgaudit.stats.calls"] != int64(1) ||
		st.Attributes["db.query.summary"] != wants[2].summary || st.Attributes["pgaudit.stats.p99_us"] == nil ||
		st.Attributes["pgaudit.fingerprint"] == nil {
		t.Errorf("stats record attributes: %v", st.Attributes)
	}
	before := e.aud.otlp.Counters()
	if before.Dropped != 0 || before.Failed != 0 {
		t.Errorf("counters with the collector up: %+v", before)
	}

	// The collector dies; traffic goes on from several clients.
	col.Kill()
	const clients, perClient = 4, 400
	var wg sync.WaitGroup
	errs := make(chan error, clients)
	lat := make([][]time.Duration, clients)
	for i := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cc, err := pgx.Connect(ctx, e.DSN)
			if err != nil {
				errs <- err
				return
			}
			defer cc.Close(context.Background())
			for j := range perClient {
				var n int
				t0 := time.Now()
				if err := cc.QueryRow(ctx, "SELECT $1::int + $2", i, j).Scan(&n); err != nil || n != i+j {
					errs <- fmt.Errorf("client %d query %d: %d, %v", i, j, n, err)
					return
				}
				lat[i] = append(lat[i], time.Since(t0))
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	var all []time.Duration
	for _, l := range lat {
		all = append(all, l...)
	}
	slices.Sort(all)
	p50, p99, worst := all[len(all)/2], all[len(all)*99/100], all[len(all)-1]
	t.Logf("%d queries with the collector dead: p50 %v, p99 %v, max %v (loaded machine)", len(all), p50, p99, worst)
	// A relay waiting on the exporter would wait out its 10s export
	// timeout; the bound is far above the scheduling noise of a loaded
	// machine.
	if worst >= 5*time.Second {
		t.Errorf("a query took %v with the collector dead: the relay waited on the exporter", worst)
	}
	testutil.Eventually(t, 20*time.Second, "the OTLP drop counter to rise in /metrics", func() bool {
		return scrapeCounter(t, "http://"+addr.String()+"/metrics", "pgaudit_otlp_log_records_dropped_total") > 0
	})
	if got := scrapeCounter(t, "http://"+addr.String()+"/metrics", "pgaudit_otlp_log_records_exported_total"); got != float64(e.aud.otlp.Counters().Exported) {
		t.Errorf("exported_total %v in /metrics, counters %+v", got, e.aud.otlp.Counters())
	}

	e.stop()
	stopped = true
	after := e.aud.otlp.Counters()
	t.Logf("OTLP counters: before the kill %+v, at the end %+v", before, after)
	if after.Dropped == 0 || after.Queued != 0 {
		t.Errorf("counters at the end: %+v", after)
	}
	// The audit file has every statement of the loop.
	loop := countStatements(t, auditPath, "SELECT $1::int + $2")
	if loop != clients*perClient {
		t.Errorf("audit file has %d records of the loop's statement, want %d", loop, clients*perClient)
	}
}

// scrapeCounter fetches url (Prometheus text) and returns the value of an
// unlabelled metric, or -1 when absent.
func scrapeCounter(t *testing.T, url, name string) float64 {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(name) + ` (\S+)$`).FindSubmatch(b)
	if m == nil {
		return -1
	}
	v, err := strconv.ParseFloat(string(m[1]), 64)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// countStatements counts the statement records of an audit log file whose
// normalized query is query.
func countStatements(t *testing.T, path, query string) int {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	n := 0
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 16<<20)
	for sc.Scan() {
		var rec struct {
			Record string `json:"record"`
			Query  string `json:"query"`
		}
		if err := json.Unmarshal(sc.Bytes(), &rec); err != nil {
			t.Fatalf("audit log line: %v", err)
		}
		if rec.Record == auditlog.RecordStatement && rec.Query == query {
			n++
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return n
}
