package admin

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"reflect"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/pgaudit-proxy/pgaudit/analyzer"
	"github.com/pgaudit-proxy/pgaudit/fleet"
	"github.com/pgaudit-proxy/pgaudit/planadvisor"
	"github.com/pgaudit-proxy/pgaudit/pooler"
	"github.com/pgaudit-proxy/pgaudit/rules"
)

// FindingsSource lists the current findings; *analyzer.Engine satisfies it.
// Findings is called from console and HTTP goroutines at request time and
// must be safe for concurrent use. The result is not modified.
type FindingsSource interface {
	Findings() []rules.Finding
}

// ExplainSource reports the EXPLAIN sampler's counters; *planadvisor.Sampler
// satisfies it. Counters is called at scrape time from any goroutine.
type ExplainSource interface {
	Counters() planadvisor.SamplerCounters
}

// Options configure an Admin. Every field is optional: what is missing is
// left out of the console, the metrics and the pages (an empty list, a
// metric not exported, a command answered with an error).
type Options struct {
	// Version is reported by SHOW VERSION, pgaudit_build_info and the
	// pages.
	Version string
	// Pipeline is the analyzer pipeline: shape statistics (SHOW QUERIES,
	// /api/v1/queries) and its counters (drops). It, Findings and Explain
	// may also be set later with SetSources.
	Pipeline *analyzer.Pipeline
	// Findings lists the rules engine's findings; a nil interface or a nil
	// pointer inside it means none.
	Findings FindingsSource
	// Explain reports the EXPLAIN sampler's counters (metrics only); a nil
	// interface or nil pointer leaves those metrics out.
	Explain ExplainSource
	// ProxyConfig returns the proxy's current configuration (SHOW
	// DATABASES, SHOW CONFIG, readiness). It is called at request time;
	// after a reload it must return the new configuration.
	ProxyConfig func() *pooler.Config
	// Settings returns the rows of SHOW CONFIG; when nil they are derived
	// from ProxyConfig with SettingsFromConfig.
	Settings func() []Setting
	// Reload re-reads the configuration and users file and applies them
	// (RELOAD). It runs on the admin client's goroutine; its error is sent
	// to the client.
	Reload func() error
	// Shutdown stops the process (SHUTDOWN; SHUTDOWN WAIT_FOR_CLIENTS
	// passes true). It is called on a new goroutine after the reply was
	// sent, so it may close the proxy and wait for it.
	Shutdown func(waitForClients bool)
	// Pprof serves /debug/pprof/ on the HTTP listener (its cmdline with
	// passwords redacted).
	Pprof bool
	// HTTPAuth holds the HTTP listener's credentials and accepted Host
	// names. ListenAndServe refuses a non-loopback address without
	// credentials.
	HTTPAuth HTTPAuth
	// SampleInterval is the time-series resolution (default 10s) and
	// SampleWindow how much is kept (default one hour).
	SampleInterval time.Duration
	SampleWindow   time.Duration
	// PauseTimeout bounds how long PAUSE waits for the transaction-mode
	// server connections of the paused pools to be released (default 60s).
	PauseTimeout time.Duration
	// MaxDatabaseLabels bounds the distinct database label values of the
	// query metrics; later databases are counted under "other" (default
	// 100).
	MaxDatabaseLabels int
	// FleetPeers are other pgaudit instances' admin URLs
	// ("http://host:9930", fleet_peers): the dashboard and /api/v1/fleet
	// then show this instance and the peers merged. FleetAuth is sent to
	// them; FleetTimeout bounds each fetch (default 2s) and FleetCacheTTL
	// how long a merged view is reused (default 5s).
	FleetPeers    []string
	FleetAuth     fleet.Auth
	FleetTimeout  time.Duration
	FleetCacheTTL time.Duration
	// Log receives operational messages (console commands, HTTP server
	// errors).
	Log zerolog.Logger
	// Now is the clock, for tests; default time.Now.
	Now func() time.Time
}

// Admin holds the state behind the console, the HTTP listener and the
// dashboard. Create it with New; it is safe for concurrent use.
type Admin struct {
	opts    Options
	started time.Time
	proxy   atomic.Pointer[pooler.Proxy]
	src     atomic.Pointer[sources]
	obs     *queryObserver
	series  *timeSeries
	reg     *prometheus.Registry

	shuttingDown atomic.Bool
	fleet        fleetCache

	runMu    sync.Mutex
	stopRun  context.CancelFunc
	runDone  chan struct{}
	httpSrv  *http.Server
	httpDone chan struct{}
	httpAddr net.Addr
}

// New returns an Admin for opts. It registers its Prometheus collectors on
// a registry of its own (served at /metrics).
func New(opts Options) *Admin {
	if opts.SampleInterval <= 0 {
		opts.SampleInterval = 10 * time.Second
	}
	if opts.SampleWindow <= 0 {
		opts.SampleWindow = time.Hour
	}
	if opts.PauseTimeout <= 0 {
		opts.PauseTimeout = 60 * time.Second
	}
	if opts.MaxDatabaseLabels <= 0 {
		opts.MaxDatabaseLabels = 100
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.FleetTimeout <= 0 {
		opts.FleetTimeout = 2 * time.Second
	}
	if opts.FleetCacheTTL <= 0 {
		opts.FleetCacheTTL = 5 * time.Second
	}
	if opts.Version == "" {
		opts.Version = "dev"
	}
	a := &Admin{opts: opts, started: opts.Now()}
	a.src.Store(&sources{pipeline: opts.Pipeline, findings: opts.Findings, explain: opts.Explain})
	a.obs = newQueryObserver(opts.MaxDatabaseLabels)
	n := int(opts.SampleWindow / opts.SampleInterval)
	a.series = newTimeSeries(max(n, 1))
	a.reg = a.newRegistry()
	return a
}

// Attach sets the proxy the console and pages report on. Call it once,
// before the proxy serves clients; until then pool views are empty.
func (a *Admin) Attach(p *pooler.Proxy) { a.proxy.Store(p) }

// sources are what the admin reads besides the proxy.
type sources struct {
	pipeline *analyzer.Pipeline
	findings FindingsSource
	explain  ExplainSource
}

// SetSources replaces Options.Pipeline, Options.Findings and
// Options.Explain, for a caller that creates them after New (the Observer
// must be registered before the pipeline starts, and the rules engine may
// be built with the pipeline). Safe to call at any time.
func (a *Admin) SetSources(pipeline *analyzer.Pipeline, findings FindingsSource, explain ExplainSource) {
	a.src.Store(&sources{pipeline: pipeline, findings: findings, explain: explain})
}

// pipeline returns the current pipeline or nil.
func (a *Admin) pipeline() *analyzer.Pipeline { return a.src.Load().pipeline }

// Observer returns the analyzer observer that feeds the query-latency
// histograms (pgaudit_query_duration_seconds, labeled by database only)
// and the dashboard's latency series. Register it on the pipeline before
// Start.
func (a *Admin) Observer() analyzer.Observer { return analyzer.ObserverFunc(a.obs.observe) }

// Console returns the SQL admin console; set it as pooler.Config.Admin.
func (a *Admin) Console() *Console { return &Console{a: a} }

// Registry returns the Prometheus registry served at /metrics, so the
// caller may register more collectors on it.
func (a *Admin) Registry() *prometheus.Registry { return a.reg }

// SetShuttingDown marks the process as stopping: /readyz then fails, so a
// load balancer stops sending new clients. SHUTDOWN sets it itself; call
// it on SIGTERM.
func (a *Admin) SetShuttingDown() { a.shuttingDown.Store(true) }

// Start begins sampling the time series every SampleInterval until ctx
// ends or Close is called. It may be called once.
func (a *Admin) Start(ctx context.Context) {
	a.runMu.Lock()
	defer a.runMu.Unlock()
	if a.runDone != nil {
		return
	}
	ctx, cancel := context.WithCancel(ctx)
	a.stopRun = cancel
	a.runDone = make(chan struct{})
	go func() {
		defer close(a.runDone)
		t := time.NewTicker(a.opts.SampleInterval)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				a.sample()
			}
		}
	}()
}

// ListenAndServe opens the HTTP admin listener on addr and serves Handler
// on it in the background until Close. It returns the bound address (addr
// may use port 0).
func (a *Admin) ListenAndServe(addr string) (net.Addr, error) {
	if err := a.opts.HTTPAuth.CheckListen(addr); err != nil {
		return nil, err
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("admin listener on %s: %w", addr, err)
	}
	a.Serve(l)
	return l.Addr(), nil
}

// Serve serves Handler on l in the background until Close, which closes l.
func (a *Admin) Serve(l net.Listener) {
	srv := &http.Server{
		Handler:           a.Handler(),
		ReadHeaderTimeout: 10 * time.Second,
		// /debug/pprof/profile streams for its seconds parameter, so no
		// WriteTimeout.
		IdleTimeout: 2 * time.Minute,
		ErrorLog:    nil,
	}
	done := make(chan struct{})
	a.runMu.Lock()
	a.httpSrv, a.httpDone, a.httpAddr = srv, done, l.Addr()
	a.runMu.Unlock()
	a.opts.Log.Info().Str("listen", l.Addr().String()).Msg("admin HTTP listening")
	go func() {
		defer close(done)
		if err := srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
			a.opts.Log.Error().Err(err).Msg("admin HTTP server stopped")
		}
	}()
}

// Close stops the HTTP listener (waiting up to five seconds for requests
// in progress) and the sampler, and closes open console connections: the
// proxy does not close those itself, so call Close before the proxy's
// Close.
func (a *Admin) Close() error {
	a.closeConsoles()
	a.runMu.Lock()
	srv, done, stop, runDone := a.httpSrv, a.httpDone, a.stopRun, a.runDone
	a.httpSrv = nil
	a.runMu.Unlock()
	var err error
	if srv != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		err = srv.Shutdown(ctx)
		cancel()
		if err != nil {
			_ = srv.Close()
		}
		<-done
	}
	if stop != nil {
		stop()
		<-runDone
	}
	return err
}

// now returns the clock's time.
func (a *Admin) now() time.Time { return a.opts.Now() }

// proxyConfig returns the current configuration or nil.
func (a *Admin) proxyConfig() *pooler.Config {
	if a.opts.ProxyConfig == nil {
		return nil
	}
	return a.opts.ProxyConfig()
}

// poolStats returns every pool's statistics sorted by database and user.
func (a *Admin) poolStats() []pooler.PoolStats {
	p := a.proxy.Load()
	if p == nil {
		return nil
	}
	ps := p.PoolStats()
	sort.Slice(ps, func(i, j int) bool {
		if ps[i].Database != ps[j].Database {
			return ps[i].Database < ps[j].Database
		}
		return ps[i].User < ps[j].User
	})
	return ps
}

// Pools returns the rows of SHOW POOLS.
func (a *Admin) Pools() []PoolRow {
	ps := a.poolStats()
	out := make([]PoolRow, len(ps))
	for i, s := range ps {
		out[i] = PoolRowOf(s)
	}
	return out
}

// findings returns the current findings, highest severity first.
func (a *Admin) findings() []rules.Finding {
	src := a.src.Load().findings
	if src == nil {
		return nil
	}
	if v := reflect.ValueOf(src); (v.Kind() == reflect.Pointer || v.Kind() == reflect.Interface || v.Kind() == reflect.Map || v.Kind() == reflect.Func) && v.IsNil() {
		return nil
	}
	fs := append([]rules.Finding(nil), src.Findings()...)
	SortFindings(fs)
	return fs
}

// Findings returns the current findings, highest severity first.
func (a *Admin) Findings() []rules.Finding { return a.findings() }

// explainCounters returns the sampler counters, or false when there is no
// sampler.
func (a *Admin) explainCounters() (planadvisor.SamplerCounters, bool) {
	src := a.src.Load().explain
	if src == nil {
		return planadvisor.SamplerCounters{}, false
	}
	if v := reflect.ValueOf(src); v.Kind() == reflect.Pointer && v.IsNil() {
		return planadvisor.SamplerCounters{}, false
	}
	return src.Counters(), true
}

// Queries returns the top n shapes (all when n <= 0) ranked by key, from
// the live pipeline statistics.
func (a *Admin) Queries(by analyzer.SortKey, n int) []QueryRow {
	pl := a.pipeline()
	if pl == nil {
		return []QueryRow{}
	}
	shapes := pl.Stats().TopShapes(by, n)
	out := make([]QueryRow, len(shapes))
	for i, st := range shapes {
		out[i] = QueryRowOf(st)
	}
	return out
}

// dbTotals are the cumulative counters of one database.
type dbTotals struct {
	assignments, xacts, queries, recv, sent int64
	clientParses, serverParses, binds       int64
	waitTime                                time.Duration
	queryTime                               time.Duration
	xactTime                                time.Duration
	observed                                int64
}

func (t *dbTotals) add(o dbTotals) {
	t.assignments += o.assignments
	t.xacts += o.xacts
	t.queries += o.queries
	t.clientParses += o.clientParses
	t.serverParses += o.serverParses
	t.binds += o.binds
	t.recv += o.recv
	t.sent += o.sent
	t.xactTime += o.xactTime
	t.waitTime += o.waitTime
	t.queryTime += o.queryTime
	t.observed += o.observed
}

// totalsByDB sums pool counters per database and adds the observer's
// statement time.
func (a *Admin) totalsByDB(ps []pooler.PoolStats) map[string]dbTotals {
	out := map[string]dbTotals{}
	for _, s := range ps {
		t := out[s.Database]
		t.add(dbTotals{assignments: s.Waits, xacts: s.Transactions, queries: s.Queries, recv: s.BytesIn, sent: s.BytesOut, waitTime: s.WaitTotal, xactTime: s.XactTime,
			clientParses: s.ClientParses, serverParses: s.ServerParses, binds: s.Binds})
		out[s.Database] = t
	}
	for db, qt := range a.obs.totals() {
		t := out[db]
		t.queryTime += qt.time
		t.observed += qt.count
		out[db] = t
	}
	return out
}

// Stats returns the rows of SHOW STATS.
func (a *Admin) Stats() []StatsRow {
	ps := a.poolStats()
	cur := a.totalsByDB(ps)
	now := a.now()
	prev, prevAt := a.series.statsBase(now.Add(-time.Minute))
	if prevAt.IsZero() {
		prev, prevAt = nil, a.started
	}
	secs := now.Sub(prevAt).Seconds()
	type extra struct {
		p50, p99   time.Duration
		busy, size float64
	}
	ex := map[string]*extra{}
	for _, s := range ps {
		e := ex[s.Database]
		if e == nil {
			e = &extra{}
			ex[s.Database] = e
		}
		e.p50 = max(e.p50, min(s.WaitP50, s.MaxWait))
		e.p99 = max(e.p99, min(s.WaitP99, s.MaxWait))
		e.busy += s.Utilization * float64(s.Size)
		e.size += float64(s.Size)
	}
	names := make([]string, 0, len(cur))
	for db := range cur {
		names = append(names, db)
	}
	sort.Strings(names)
	out := make([]StatsRow, 0, len(names))
	for _, db := range names {
		c := cur[db]
		r := StatsRow{
			Database:                   db,
			TotalServerAssignmentCount: c.assignments, TotalXactCount: c.xacts, TotalQueryCount: c.queries,
			TotalReceived: c.recv, TotalSent: c.sent,
			TotalQueryTime: c.queryTime.Microseconds(), TotalWaitTime: c.waitTime.Microseconds(),
			TotalXactTime:         c.xactTime.Microseconds(),
			TotalClientParseCount: c.clientParses, TotalServerParseCount: c.serverParses, TotalBindCount: c.binds,
		}
		if secs > 0 {
			p := prev[db]
			rate := func(v, pv int64) int64 { return int64(float64(v-pv) / secs) }
			r.AvgServerAssignmentCount = rate(c.assignments, p.assignments)
			r.AvgXactCount = rate(c.xacts, p.xacts)
			r.AvgQueryCount = rate(c.queries, p.queries)
			r.AvgClientParseCount = rate(c.clientParses, p.clientParses)
			r.AvgServerParseCount = rate(c.serverParses, p.serverParses)
			r.AvgBindCount = rate(c.binds, p.binds)
			r.AvgRecv = rate(c.recv, p.recv)
			r.AvgSent = rate(c.sent, p.sent)
			if n := c.xacts - p.xacts; n > 0 {
				r.AvgXactTime = (c.xactTime - p.xactTime).Microseconds() / n
			}
			if n := c.observed - p.observed; n > 0 {
				r.AvgQueryTime = (c.queryTime - p.queryTime).Microseconds() / n
			}
			if n := c.assignments - p.assignments; n > 0 {
				r.AvgWaitTime = (c.waitTime - p.waitTime).Microseconds() / n
			}
		}
		if e := ex[db]; e != nil {
			r.WaitP50US, r.WaitP99US = e.p50.Microseconds(), e.p99.Microseconds()
			if e.size > 0 {
				r.Utilization = round(e.busy/e.size, 4)
			}
		}
		out = append(out, r)
	}
	return out
}

// Clients returns the rows of SHOW CLIENTS.
func (a *Admin) Clients() []ClientRow {
	p := a.proxy.Load()
	if p == nil {
		return []ClientRow{}
	}
	cs := p.Clients()
	out := make([]ClientRow, len(cs))
	for i, c := range cs {
		r := ClientRow{
			Type: "C", User: c.User, Database: c.Database, Replication: "none", State: c.State, Addr: c.Addr,
			ConnectTime: c.ConnectTime, Ptr: "c" + strconv.FormatUint(c.SessionID, 10),
			ApplicationName: c.ApplicationName, ID: int64(c.SessionID),
			CancelPID: int64(c.PID), TxStatus: c.TxStatus, Pinned: c.Pinned,
		}
		if c.ServerID != 0 {
			r.Link = "s" + strconv.FormatUint(c.ServerID, 10)
		}
		out[i] = r
	}
	return out
}

// Servers returns the rows of SHOW SERVERS.
func (a *Admin) Servers() []ServerRow {
	p := a.proxy.Load()
	if p == nil {
		return []ServerRow{}
	}
	ss := p.Servers()
	sort.Slice(ss, func(i, j int) bool { return ss[i].ID < ss[j].ID })
	apps := map[uint64]string{}
	for _, c := range p.Clients() {
		apps[c.SessionID] = c.ApplicationName
	}
	cfg := a.proxyConfig()
	out := make([]ServerRow, len(ss))
	for i, s := range ss {
		r := ServerRow{
			Type: "S", User: s.User, Database: s.Database, Replication: "none", State: s.State,
			ConnectTime: s.ConnectTime, RequestTime: s.LastUsed, Ptr: "s" + strconv.FormatUint(s.ID, 10),
			RemotePID: int64(s.PID), PreparedStatements: s.Prepared, ID: int64(s.ID),
		}
		if s.SessionID != 0 {
			r.Link = "c" + strconv.FormatUint(s.SessionID, 10)
			r.ApplicationName = apps[s.SessionID]
		}
		if up := upstreamOf(cfg, s.Database); up != nil {
			host, port := up.Host, int(up.Port)
			r.Addr, r.Port = &host, &port
		}
		out[i] = r
	}
	return out
}

// upstreamOf returns the upstream config of a client-visible database name
// (the "*" entry for names not listed).
func upstreamOf(cfg *pooler.Config, name string) *pgconn.Config {
	if cfg == nil {
		return nil
	}
	db, ok := cfg.Databases[name]
	if !ok {
		db, ok = cfg.Databases["*"]
	}
	if !ok || db.Upstream == nil {
		return nil
	}
	return db.Upstream
}

// isPaused reports whether PAUSE is in force for db.
func (a *Admin) isPaused(db string) bool {
	p := a.proxy.Load()
	return p != nil && p.Paused(db)
}

// Databases returns the rows of SHOW DATABASES: the configured databases,
// and the databases of pools made through the "*" entry.
func (a *Admin) Databases() []DatabaseRow {
	cfg := a.proxyConfig()
	ps := a.poolStats()
	servers := map[string]int{}
	for _, s := range ps {
		servers[s.Database] += s.ServersActive + s.ServersIdle + s.ServersLogin
	}
	clients := map[string]int{}
	if p := a.proxy.Load(); p != nil {
		for _, c := range p.Clients() {
			clients[c.Database]++
		}
	}
	entries := map[string]*pooler.Database{}
	if cfg != nil {
		for name, db := range cfg.Databases {
			entries[name] = db
		}
		if wild, ok := cfg.Databases["*"]; ok {
			for _, s := range ps {
				if _, ok := entries[s.Database]; !ok {
					cp := *wild
					cp.Name = s.Database
					if wild.Upstream != nil {
						cp.Upstream = wild.Upstream.Copy()
						cp.Upstream.Database = s.Database
					}
					entries[s.Database] = &cp
				}
			}
		}
	}
	names := make([]string, 0, len(entries))
	for n := range entries {
		names = append(names, n)
	}
	sort.Strings(names)
	out := make([]DatabaseRow, 0, len(names))
	for _, name := range names {
		db := entries[name]
		r := DatabaseRow{
			Name: name, PoolSize: db.Pool.Size, MinPoolSize: db.Pool.MinSize, ReservePoolSize: db.Pool.ReserveSize,
			ServerLifetime: int64(db.Pool.ServerLifetime / time.Second), PoolMode: string(db.Pool.Mode),
			MaxConnections: db.Pool.MaxDBConnections, CurrentConnections: servers[name],
			CurrentClientConnections: clients[name],
		}
		if a.isPaused(name) {
			r.Paused = 1
		}
		if up := db.Upstream; up != nil {
			host, port := up.Host, int(up.Port)
			r.Host, r.Port, r.Database = &host, &port, up.Database
			if db.ForceUser {
				u := up.User
				r.ForceUser = &u
			}
		}
		out = append(out, r)
	}
	return out
}

// settings returns the rows of SHOW CONFIG.
func (a *Admin) settings() []Setting {
	if a.opts.Settings != nil {
		return a.opts.Settings()
	}
	return SettingsFromConfig(a.proxyConfig())
}

// lists returns the rows of SHOW LISTS.
func (a *Admin) lists() []ListRow {
	ps := a.poolStats()
	users := map[string]bool{}
	var servers int64
	for _, s := range ps {
		users[s.User] = true
		servers += int64(s.ServersActive + s.ServersIdle + s.ServersLogin)
	}
	var dbs, clients, login int64
	if cfg := a.proxyConfig(); cfg != nil {
		dbs = int64(len(cfg.Databases))
	}
	if p := a.proxy.Load(); p != nil {
		clients = int64(len(p.Clients()))
		// Connections in startup or authentication, which hold
		// max_login_clients slots rather than max_client_conn.
		login = int64(p.LoginCount())
	}
	return []ListRow{
		{"databases", dbs}, {"users", int64(len(users))}, {"pools", int64(len(ps))},
		{"free_clients", 0}, {"used_clients", clients}, {"login_clients", login},
		{"free_servers", 0}, {"used_servers", servers},
		{"dns_names", 0}, {"dns_zones", 0}, {"dns_queries", 0}, {"dns_pending", 0},
	}
}

// ready reports whether the proxy should get traffic: its listener is up,
// it is not shutting down, and some pool can reach its server (or there
// are no pools yet). A pool counts as unreachable when clients wait and it
// has no server connection at all.
func (a *Admin) ready() error {
	if a.shuttingDown.Load() {
		return errors.New("shutting down")
	}
	p := a.proxy.Load()
	if p == nil || p.Addr() == nil {
		return errors.New("proxy listener not up")
	}
	ps := p.PoolStats()
	if len(ps) == 0 {
		return nil
	}
	for _, s := range ps {
		if s.ServersActive+s.ServersIdle > 0 || s.ClientsWaiting == 0 {
			return nil
		}
	}
	return errors.New("no pool has a server connection and clients are waiting")
}
