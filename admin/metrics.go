package admin

import (
	"fmt"
	"regexp"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	dto "github.com/prometheus/client_model/go"
	"google.golang.org/protobuf/proto"

	"github.com/pgaudit-proxy/pgaudit/analyzer"
	"github.com/pgaudit-proxy/pgaudit/pooler"
	"github.com/pgaudit-proxy/pgaudit/rules"
)

// queryDurationBuckets are the bucket bounds of pgaudit_query_duration_seconds:
// 100µs to 30s, roughly 2.5x apart.
var queryDurationBuckets = []float64{
	0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30,
}

// nativeBucketFactor is the growth factor of native histogram buckets:
// 1.1 picks schema 3.
const nativeBucketFactor = 1.1

// poolWaitBuckets are the bucket bounds of pgaudit_pool_wait_seconds:
// 4^k µs for k = 0..12 (1 µs to 16.8 s), every other bound of the pool's
// power-of-two microsecond histogram. They are constants, the same in every
// instance, so the buckets of a fleet add up with sum by (le).
var poolWaitBuckets = func() []float64 {
	b := make([]float64, 0, 13)
	for k := 0; k <= 24; k += 2 {
		b = append(b, float64(uint64(1)<<k)*1e-6)
	}
	return b
}()

// poolWaitHistogram returns the cumulative counts of wait (the pool's
// power-of-two microsecond buckets, see pooler.PoolStats.WaitHist) at
// poolWaitBuckets. A wait that took exactly a bound counts in the next
// bucket up.
func poolWaitHistogram(wait []int64) map[float64]uint64 {
	out := make(map[float64]uint64, len(poolWaitBuckets))
	var cum int64
	next := 0
	for i, c := range wait {
		cum += max(c, 0)
		// Bucket i holds waits under 2^i µs.
		for next < len(poolWaitBuckets) && 2*next == i {
			out[poolWaitBuckets[next]] = uint64(cum)
			next++
		}
	}
	for ; next < len(poolWaitBuckets); next++ {
		out[poolWaitBuckets[next]] = uint64(cum)
	}
	return out
}

// poolWaitMetric is one pool's pgaudit_pool_wait_seconds: classic buckets
// at poolWaitBuckets and, for a protobuf scrape, the native buckets the
// pool keeps (pooler.NativeWaitSchema), both from the same acquisitions.
type poolWaitMetric struct {
	desc   *prometheus.Desc
	labels []*dto.LabelPair
	h      *dto.Histogram
}

func (m *poolWaitMetric) Desc() *prometheus.Desc { return m.desc }

func (m *poolWaitMetric) Write(out *dto.Metric) error {
	out.Label = m.labels
	out.Histogram = m.h
	return nil
}

// newPoolWaitMetric builds the wait histogram of one pool.
func newPoolWaitMetric(s *pooler.PoolStats) prometheus.Metric {
	h := &dto.Histogram{
		SampleCount:   proto.Uint64(uint64(max(s.Waits, 0))),
		SampleSum:     proto.Float64(s.WaitTotal.Seconds()),
		Schema:        proto.Int32(pooler.NativeWaitSchema),
		ZeroThreshold: proto.Float64(pooler.NativeWaitZeroThreshold),
		ZeroCount:     proto.Uint64(uint64(max(s.WaitZero, 0))),
	}
	classic := poolWaitHistogram(s.WaitHist[:])
	for _, b := range poolWaitBuckets {
		h.Bucket = append(h.Bucket, &dto.Bucket{UpperBound: proto.Float64(b), CumulativeCount: proto.Uint64(classic[b])})
	}
	// Spans of consecutive non-empty buckets, counts as deltas.
	var prev int64
	end := 0 // index after the last span
	for i := 0; i < len(s.WaitNative); {
		if s.WaitNative[i] == 0 {
			i++
			continue
		}
		j := i
		for j < len(s.WaitNative) && s.WaitNative[j] != 0 {
			h.PositiveDelta = append(h.PositiveDelta, s.WaitNative[j]-prev)
			prev = s.WaitNative[j]
			j++
		}
		off := i - end
		if len(h.PositiveSpan) == 0 {
			off = i + pooler.NativeWaitFirst
		}
		h.PositiveSpan = append(h.PositiveSpan, &dto.BucketSpan{Offset: proto.Int32(int32(off)), Length: proto.Uint32(uint32(j - i))})
		end = j
		i = j
	}
	if len(h.PositiveSpan) == 0 {
		// An empty span marks the histogram native even with no
		// observations (as client_golang does).
		h.PositiveSpan = []*dto.BucketSpan{{Offset: proto.Int32(0), Length: proto.Uint32(0)}}
	}
	return &poolWaitMetric{desc: descPoolWait, labels: prometheus.MakeLabelPairs(descPoolWait, []string{s.Database, s.User}), h: h}
}

// otherLabel is the database label of databases beyond the label cap.
const otherLabel = "other"

// queryObserver sees every analyzed statement: it feeds the per-database
// histogram and error counter, the per-database statement time for SHOW
// STATS, and the current interval of the time series.
type queryObserver struct {
	maxDB int
	hist  *prometheus.HistogramVec
	errs  *prometheus.CounterVec

	mu  sync.Mutex
	dbs map[string]*dbQuery
	iv  interval
}

type dbQuery struct {
	label string
	count int64
	time  time.Duration
	hist  prometheus.Observer
	errs  prometheus.Counter
}

// interval accumulates statements between two time-series samples.
type interval struct {
	count, errors int64
	total         time.Duration
	lat, wait     *analyzer.LatencySketch
}

func newInterval() interval {
	return interval{lat: analyzer.NewLatencySketch(), wait: analyzer.NewLatencySketch()}
}

func newQueryObserver(maxDB int) *queryObserver {
	return &queryObserver{
		maxDB: maxDB,
		hist: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "pgaudit_query_duration_seconds",
			Help:    "Duration of statements relayed by the proxy, from the client's message to CommandComplete or ErrorResponse, by client-visible database.",
			Buckets: queryDurationBuckets,
			// Also a native histogram for a Prometheus scraping protobuf:
			// factor 1.1 is schema 3 (2^(1/8) apart, within 4.4%). Past
			// 160 buckets the histogram halves its resolution (to schema 2,
			// 1...) rather than grow; Prometheus sums native histograms of
			// different schemas at the coarsest, so a fleet still adds up.
			NativeHistogramBucketFactor:     nativeBucketFactor,
			NativeHistogramMaxBucketNumber:  160,
			NativeHistogramMinResetDuration: time.Hour,
		}, []string{"database"}),
		errs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pgaudit_query_errors_total",
			Help: "Statements that ended in an ErrorResponse, by client-visible database.",
		}, []string{"database"}),
		dbs: map[string]*dbQuery{},
		iv:  newInterval(),
	}
}

// observe is the analyzer.Observer: called from pipeline workers for every
// event, concurrently.
func (o *queryObserver) observe(an *analyzer.Analyzed) {
	ev := an.Event
	if ev == nil || ev.Kind != analyzer.KindStatement {
		return
	}
	o.mu.Lock()
	d := o.dbs[ev.Database]
	if d == nil {
		label := ev.Database
		if len(o.dbs) >= o.maxDB {
			label = otherLabel
		}
		if label == otherLabel {
			d = o.dbs[otherLabel]
		}
		if d == nil {
			d = &dbQuery{label: label, hist: o.hist.WithLabelValues(label), errs: o.errs.WithLabelValues(label)}
			o.dbs[label] = d
		}
	}
	d.count++
	d.time += ev.Duration
	o.iv.count++
	o.iv.total += ev.Duration
	o.iv.lat.Add(ev.Duration)
	if ev.Wait > 0 {
		o.iv.wait.Add(ev.Wait)
	}
	failed := ev.SQLState != ""
	if failed {
		o.iv.errors++
	}
	o.mu.Unlock()
	d.hist.Observe(ev.Duration.Seconds())
	if failed {
		d.errs.Inc()
	}
}

// queryTotals is one database's statement count and time.
type queryTotals struct {
	count int64
	time  time.Duration
}

// totals returns the cumulative statement count and time per database
// label.
func (o *queryObserver) totals() map[string]queryTotals {
	o.mu.Lock()
	defer o.mu.Unlock()
	out := make(map[string]queryTotals, len(o.dbs))
	for _, d := range o.dbs {
		out[d.label] = queryTotals{d.count, d.time}
	}
	return out
}

// takeInterval returns the current interval and starts a new one.
func (o *queryObserver) takeInterval() interval {
	fresh := newInterval()
	o.mu.Lock()
	iv := o.iv
	o.iv = fresh
	o.mu.Unlock()
	return iv
}

// newRegistry builds the registry served at /metrics.
func (a *Admin) newRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(
		// The default Go metrics plus the scheduler's latency histogram:
		// how long goroutines (the sessions' relays among them) wait to
		// run once runnable, the proxy's own queue in front of its CPU.
		collectors.NewGoCollector(collectors.WithGoCollectorRuntimeMetrics(
			collectors.GoRuntimeMetricsRule{Matcher: regexp.MustCompile(`^/sched/latencies:seconds$`)})),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		a.obs.hist, a.obs.errs,
		&stateCollector{a: a},
	)
	return reg
}

// RegisterCollector adds c to the registry served at /metrics (the OTLP
// log exporter's counters). Its metric names must not clash with the
// admin's own.
func (a *Admin) RegisterCollector(c prometheus.Collector) error {
	if err := a.reg.Register(c); err != nil {
		return fmt.Errorf("register metrics collector: %w", err)
	}
	return nil
}

var (
	poolLabels = []string{"database", "user"}

	descBuildInfo = prometheus.NewDesc("pgaudit_build_info",
		"Always 1; the version label says which pgaudit runs.", []string{"version"}, nil)
	descClients = prometheus.NewDesc("pgaudit_client_connections",
		"Client connections open now, including ones logging in and admin consoles.", nil, nil)
	descPoolClients = prometheus.NewDesc("pgaudit_pool_clients",
		"Clients of a pool by state: active (connected, not waiting) or waiting (for a server connection).",
		[]string{"database", "user", "state"}, nil)
	descPoolServers = prometheus.NewDesc("pgaudit_pool_servers",
		"Server connections of a pool by state: active (held by a client), idle, or login (being opened).",
		[]string{"database", "user", "state"}, nil)
	descPoolSize = prometheus.NewDesc("pgaudit_pool_size",
		"Configured pool_size: server connections a pool opens before clients wait.", poolLabels, nil)
	descPoolUtil = prometheus.NewDesc("pgaudit_pool_utilization_ratio",
		"Share of pool_size held by clients over the last minute (0 to 1; above 1 while the reserve pool is used).", poolLabels, nil)
	descPoolXacts = prometheus.NewDesc("pgaudit_pool_transactions_total",
		"Transactions run through a pool.", poolLabels, nil)
	descPoolQueries = prometheus.NewDesc("pgaudit_pool_queries_total",
		"Statements run through a pool.", poolLabels, nil)
	descPoolRecv = prometheus.NewDesc("pgaudit_pool_bytes_received_total",
		"Bytes received from a pool's clients.", poolLabels, nil)
	descPoolSent = prometheus.NewDesc("pgaudit_pool_bytes_sent_total",
		"Bytes sent to a pool's clients.", poolLabels, nil)
	descPoolWait = prometheus.NewDesc("pgaudit_pool_wait_seconds",
		"Time clients waited for a server connection (connect included), per acquire, since the pool started; fixed buckets 4^k µs, k = 0..12, the same in every instance (native: schema 2).", poolLabels, nil)
	descPoolWaitMax = prometheus.NewDesc("pgaudit_pool_wait_max_seconds",
		"Longest time a client waited for a server connection since the pool started.", poolLabels, nil)
	descDatabasePaused = prometheus.NewDesc("pgaudit_database_paused",
		"1 while PAUSE is in force for a configured database, else 0.", []string{"database"}, nil)
	descDropped = prometheus.NewDesc("pgaudit_audit_events_dropped_total",
		"Statement events the analyzer never saw because its queue was full (clients are never blocked).", nil, nil)
	descProcessed = prometheus.NewDesc("pgaudit_audit_events_processed_total",
		"Statement events the analyzer processed.", nil, nil)
	descQueued = prometheus.NewDesc("pgaudit_audit_queue_events",
		"Events waiting in the analyzer queue now.", nil, nil)
	descPanics = prometheus.NewDesc("pgaudit_audit_observer_panics_total",
		"Recovered panics in analyzer observers.", nil, nil)
	descShapes = prometheus.NewDesc("pgaudit_query_shapes",
		"Query shapes tracked individually by the analyzer.", nil, nil)
	descFindings = prometheus.NewDesc("pgaudit_findings",
		"Current findings by rule, severity and status (open, or resolved: the condition is gone).", []string{"rule", "severity", "status"}, nil)
	descExplainRounds = prometheus.NewDesc("pgaudit_explain_rounds_total",
		"Completed rounds of the EXPLAIN sampler.", nil, nil)
	descExplainChecked = prometheus.NewDesc("pgaudit_explain_shapes_checked_total",
		"Query shapes the EXPLAIN sampler sent to EXPLAIN.", nil, nil)
	descExplainRefused = prometheus.NewDesc("pgaudit_explain_not_explainable_total",
		"Query shapes the EXPLAIN sampler refused (not a single plain SELECT, INSERT, UPDATE or DELETE).", nil, nil)
	descExplainFailed = prometheus.NewDesc("pgaudit_explain_failures_total",
		"EXPLAINs that failed, timeouts included.", nil, nil)
	descExplainTimeouts = prometheus.NewDesc("pgaudit_explain_timeouts_total",
		"EXPLAINs that hit statement_timeout or lock_timeout.", nil, nil)
	descExplainFindings = prometheus.NewDesc("pgaudit_explain_findings_total",
		"Findings the EXPLAIN sampler emitted.", nil, nil)
	descCancels = prometheus.NewDesc("pgaudit_cancel_requests_total",
		"CancelRequests received, by what became of them: local (the key matched a client of this process), forwarded (to the peer whose id the key carries), forward_failed (that peer is unknown or did not answer) or unknown (the key matched nothing).",
		[]string{"result"}, nil)
	descPeerCancels = prometheus.NewDesc("pgaudit_peer_cancel_requests_received_total",
		"CancelRequests forwarded to this process by its peers (peer_listen); also counted in pgaudit_cancel_requests_total.", nil, nil)
	descLoggingIn = prometheus.NewDesc("pgaudit_login_connections",
		"Connections that have not finished logging in; each holds one of max_login_clients slots.", nil, nil)
	descLoginEvicted = prometheus.NewDesc("pgaudit_login_evictions_total",
		"Unauthenticated connections closed to make room for newer ones because max_login_clients slots were full (a flood of silent sockets).", nil, nil)
	descClientsRejected = prometheus.NewDesc("pgaudit_clients_rejected_total",
		"Authenticated clients refused with 53300 because max_client_conn was reached.", nil, nil)
	descAuthFailures = prometheus.NewDesc("pgaudit_auth_failures_total",
		"Client logins that failed authentication.", nil, nil)
	descBufferBytes = prometheus.NewDesc("pgaudit_client_buffer_bytes",
		"Bytes of client messages being received that are charged to a buffer budget now: budget=client (client_buffer_budget) or login (connections logging in).",
		[]string{"budget"}, nil)
	descBufferBudget = prometheus.NewDesc("pgaudit_client_buffer_budget_bytes",
		"client_buffer_budget: what all clients' messages being received may hold together.", nil, nil)
	descBudgetExceeded = prometheus.NewDesc("pgaudit_client_buffer_budget_exceeded_total",
		"Clients ended with FATAL 53200 because a message did not fit in client_buffer_budget or the login budget.", nil, nil)
	descExplainUserCode = prometheus.NewDesc("pgaudit_explain_user_code_total",
		"Query shapes the EXPLAIN sampler refused because planning them would run user-defined functions.", nil, nil)
)

// stateCollector reads the proxy, pipeline, findings and sampler state at
// scrape time.
type stateCollector struct{ a *Admin }

// Describe sends every descriptor the collector may emit.
func (c *stateCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{
		descBuildInfo, descClients, descPoolClients, descPoolServers, descPoolSize, descPoolUtil,
		descPoolXacts, descPoolQueries, descPoolRecv, descPoolSent, descPoolWait, descPoolWaitMax,
		descDatabasePaused, descDropped, descProcessed, descQueued, descPanics, descShapes, descFindings,
		descExplainRounds, descExplainChecked, descExplainRefused, descExplainFailed, descExplainTimeouts,
		descExplainFindings, descExplainUserCode, descCancels, descPeerCancels,
		descLoggingIn, descLoginEvicted, descClientsRejected, descAuthFailures, descBufferBytes,
		descBufferBudget, descBudgetExceeded,
	} {
		ch <- d
	}
}

// Collect emits the current values.
func (c *stateCollector) Collect(ch chan<- prometheus.Metric) {
	a := c.a
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	counter := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, v, labels...)
	}
	gauge(descBuildInfo, 1, a.opts.Version)
	if p := a.proxy.Load(); p != nil {
		gauge(descClients, float64(p.ClientCount()))
		cc := p.CancelCounts()
		counter(descCancels, float64(cc.Local), "local")
		counter(descCancels, float64(cc.Forwarded), "forwarded")
		counter(descCancels, float64(cc.ForwardFailed), "forward_failed")
		counter(descCancels, float64(cc.Unknown), "unknown")
		counter(descPeerCancels, float64(cc.FromPeers))
		lc := p.LimitCounts()
		gauge(descLoggingIn, float64(lc.LoggingIn))
		counter(descLoginEvicted, float64(lc.LoginEvicted))
		counter(descClientsRejected, float64(lc.Rejected))
		counter(descAuthFailures, float64(lc.AuthFailures))
		gauge(descBufferBytes, float64(lc.BufferedBytes), "client")
		gauge(descBufferBytes, float64(lc.LoginBufferedBytes), "login")
		gauge(descBufferBudget, float64(lc.BufferBudget))
		counter(descBudgetExceeded, float64(lc.BudgetExceeded))
	}
	for _, s := range a.poolStats() {
		db, user := s.Database, s.User
		gauge(descPoolClients, float64(s.ClientsActive), db, user, "active")
		gauge(descPoolClients, float64(s.ClientsWaiting), db, user, "waiting")
		gauge(descPoolServers, float64(s.ServersActive), db, user, "active")
		gauge(descPoolServers, float64(s.ServersIdle), db, user, "idle")
		gauge(descPoolServers, float64(s.ServersLogin), db, user, "login")
		gauge(descPoolSize, float64(s.Size), db, user)
		gauge(descPoolUtil, s.Utilization, db, user)
		counter(descPoolXacts, float64(s.Transactions), db, user)
		counter(descPoolQueries, float64(s.Queries), db, user)
		counter(descPoolRecv, float64(s.BytesIn), db, user)
		counter(descPoolSent, float64(s.BytesOut), db, user)
		ch <- newPoolWaitMetric(&s)
		gauge(descPoolWaitMax, s.MaxWait.Seconds(), db, user)
	}
	if cfg := a.proxyConfig(); cfg != nil {
		for name := range cfg.Databases {
			if name == "*" {
				continue
			}
			v := 0.0
			if a.isPaused(name) {
				v = 1
			}
			gauge(descDatabasePaused, v, name)
		}
	}
	if pl := a.pipeline(); pl != nil {
		pc := pl.Counters()
		counter(descDropped, float64(pc.Dropped))
		counter(descProcessed, float64(pc.Processed))
		gauge(descQueued, float64(pc.Queued))
		counter(descPanics, float64(pc.ObserverPanics))
		gauge(descShapes, float64(pl.Stats().Len()))
	}
	type rs struct{ rule, sev, status string }
	counts := map[rs]int{}
	for _, f := range a.findings() {
		st := rules.StatusOpen
		if !f.Open() {
			st = rules.StatusResolved
		}
		counts[rs{f.Rule, f.Severity.String(), st}]++
	}
	for k, n := range counts {
		gauge(descFindings, float64(n), k.rule, k.sev, k.status)
	}
	if sc, ok := a.explainCounters(); ok {
		counter(descExplainRounds, float64(sc.Rounds))
		counter(descExplainChecked, float64(sc.Checked))
		counter(descExplainRefused, float64(sc.NotExplainable))
		counter(descExplainFailed, float64(sc.Failed))
		counter(descExplainTimeouts, float64(sc.Timeouts))
		counter(descExplainFindings, float64(sc.Findings))
		counter(descExplainUserCode, float64(sc.UserCode))
	}
}
