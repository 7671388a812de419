package admin

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/rs/zerolog"

	"github.com/pgaudit-proxy/pgaudit/analyzer"
	"github.com/pgaudit-proxy/pgaudit/internal/auditlog"
	"github.com/pgaudit-proxy/pgaudit/internal/testutil"
	"github.com/pgaudit-proxy/pgaudit/planadvisor"
	"github.com/pgaudit-proxy/pgaudit/pooler"
	"github.com/pgaudit-proxy/pgaudit/rules"
)

// update rewrites golden files under testdata/ (go test ./admin -update).
var update = testutil.Update

// cluster is the Postgres every test in this package talks to, started at
// first use.
var cluster = testutil.Cluster()

func TestMain(m *testing.M) { testutil.Main(m) }

// fakeFindings is a FindingsSource for tests.
type fakeFindings struct {
	mu sync.Mutex
	fs []rules.Finding
}

func (f *fakeFindings) Findings() []rules.Finding {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]rules.Finding(nil), f.fs...)
}

// fakeExplain is an ExplainSource for tests.
type fakeExplain struct{}

func (fakeExplain) Counters() planadvisor.SamplerCounters {
	return planadvisor.SamplerCounters{Rounds: 3, Checked: 5, NotExplainable: 1, Failed: 1, Timeouts: 1, Findings: 2}
}

// sampleFinding is the finding tests expect to see rendered.
var sampleFinding = rules.Finding{
	ID: "missing-index:abc:reviews", Rule: rules.IDMissingIndex, Severity: rules.Warning,
	Fingerprint: "abc", Query: "select * from reviews where book_id = $1",
	Message:    "sequential scan on reviews (300000 rows) filtered by book_id",
	Suggestion: "CREATE INDEX CONCURRENTLY reviews_book_id_idx ON reviews (book_id);",
	Table:      "reviews", Count: 42, Database: "postgres",
	FirstSeen: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC), LastSeen: time.Date(2026, 1, 2, 4, 5, 6, 0, time.UTC),
}

// resolvedFinding is a finding whose condition is gone.
var resolvedFinding = rules.Finding{
	ID: "slow-query:def", Rule: rules.IDSlowQuery, Severity: rules.Warning, Fingerprint: "def", Query: "begin",
	Message: "slow query: p99 882.4ms over 1767 calls (threshold 500ms, 3.0% of database time)", Count: 1767,
	FirstSeen: time.Date(2026, 1, 2, 3, 0, 0, 0, time.UTC), LastSeen: time.Date(2026, 1, 2, 3, 10, 0, 0, time.UTC),
	Status: rules.StatusResolved, ResolvedAt: time.Date(2026, 1, 2, 3, 20, 0, 0, time.UTC),
	Resolution: "p99 31.9ms over 900 calls since 2026-01-02 03:15:00 UTC, below the 500ms threshold",
}

// env is a proxy in front of the test cluster with an Admin attached: its
// console on the admin databases, its observer on the pipeline and its
// HTTP listener on a free port.
type env struct {
	t         testing.TB
	cfg       *pooler.Config
	proxy     *pooler.Proxy
	admin     *Admin
	pipeline  *analyzer.Pipeline
	base      string // http://host:port
	findings  *fakeFindings
	reloads   atomic.Int32
	reloadErr atomic.Value // error
	shutdowns chan bool
	stopOnce  sync.Once
	stopFn    func()
}

type envOptions struct {
	mode       pooler.PoolMode
	size       int
	adminUsers []string
	auditLog   *auditlog.Log
	adminOpts  func(*Options)
}

func newEnv(t testing.TB, eo envOptions) *env {
	t.Helper()
	up, err := pgconn.ParseConfig(testutil.Shared(t).DSN("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	settings := pooler.DefaultPoolSettings()
	settings.Size = 5
	if eo.size > 0 {
		settings.Size = eo.size
	}
	if eo.mode != "" {
		settings.Mode = eo.mode
	}
	db := &pooler.Database{Name: "postgres", Upstream: up, Pool: settings}
	cfg := &pooler.Config{
		Listen:     "127.0.0.1:0",
		Databases:  map[string]*pooler.Database{"postgres": db},
		AuthType:   "trust",
		AdminUsers: []string{"postgres"},
	}
	if eo.adminUsers != nil {
		cfg.AdminUsers = eo.adminUsers
	}
	log := zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel)
	e := &env{t: t, cfg: cfg, findings: &fakeFindings{fs: []rules.Finding{sampleFinding}}, shutdowns: make(chan bool, 4)}
	e.pipeline = analyzer.NewPipeline(analyzer.PipelineConfig{Workers: 1, AuditLog: eo.auditLog, Logger: log})
	opts := Options{
		Version:        "test",
		Pipeline:       e.pipeline,
		Findings:       e.findings,
		Explain:        fakeExplain{},
		ProxyConfig:    func() *pooler.Config { return cfg },
		Reload:         e.reload,
		Shutdown:       func(wait bool) { e.shutdowns <- wait },
		SampleInterval: 100 * time.Millisecond,
		PauseTimeout:   10 * time.Second,
		Log:            log,
	}
	if eo.adminOpts != nil {
		eo.adminOpts(&opts)
	}
	e.admin = New(opts)
	if err := e.pipeline.AddObserver(e.admin.Observer()); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	if err := e.pipeline.Start(ctx); err != nil {
		t.Fatal(err)
	}
	cfg.Admin = e.admin.Console()
	e.proxy = pooler.New(cfg, e.pipeline, log)
	if err := e.proxy.Listen(); err != nil {
		t.Fatal(err)
	}
	served := make(chan struct{})
	go func() { defer close(served); _ = e.proxy.Serve(ctx) }()
	e.admin.Attach(e.proxy)
	e.admin.Start(ctx)
	addr, err := e.admin.ListenAndServe("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	e.base = "http://" + addr.String()
	e.stopFn = func() {
		_ = e.admin.Close()
		_ = e.proxy.Close()
		<-served
		sctx, scancel := context.WithTimeout(context.Background(), 10*time.Second)
		_ = e.pipeline.Stop(sctx)
		scancel()
		cancel()
	}
	t.Cleanup(e.stop)
	return e
}

// stop shuts everything down (idempotent; also run at cleanup).
func (e *env) stop() { e.stopOnce.Do(e.stopFn) }

func (e *env) reload() error {
	e.reloads.Add(1)
	if err, ok := e.reloadErr.Load().(error); ok && err != nil {
		return err
	}
	return nil
}

// dsn returns a DSN through the proxy.
func (e *env) dsn(db, user string) string {
	return fmt.Sprintf("postgres://%s@%s/%s?sslmode=disable", user, e.proxy.Addr(), db)
}

// adminConn opens an admin console connection with the simple protocol.
func (e *env) adminConn(ctx context.Context) *pgx.Conn {
	e.t.Helper()
	cfg, err := pgx.ParseConfig(e.dsn("pgaudit", "postgres"))
	if err != nil {
		e.t.Fatal(err)
	}
	cfg.DefaultQueryExecMode = pgx.QueryExecModeSimpleProtocol
	c, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { _ = c.Close(context.Background()) })
	return c
}

// appConn opens an ordinary client connection through the proxy.
func (e *env) appConn(ctx context.Context) *pgx.Conn {
	e.t.Helper()
	c, err := pgx.Connect(ctx, e.dsn("postgres", "postgres"))
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { _ = c.Close(context.Background()) })
	return c
}

// workload runs a few statements of known shapes through the proxy and
// waits until the analyzer has seen them.
func (e *env) workload(ctx context.Context, n int) {
	e.t.Helper()
	c := e.appConn(ctx)
	before := e.pipeline.Counters().Processed
	sent := 0
	for i := 0; i < n; i++ {
		if _, err := c.Exec(ctx, "select $1::int as dashboard_probe, count(*) from generate_series(1, 50)", i); err != nil {
			e.t.Fatal(err)
		}
		var x int
		if err := c.QueryRow(ctx, "select $1::int + 1 as other_probe", i).Scan(&x); err != nil {
			e.t.Fatal(err)
		}
		sent += 2
	}
	// One failing statement.
	if _, err := c.Exec(ctx, "select 1/0 as failing_probe"); err == nil {
		e.t.Fatal("division by zero succeeded")
	}
	sent++
	testutil.Eventually(e.t, 10*time.Second, "analyzer to process the workload", func() bool {
		return e.pipeline.Counters().Processed >= before+uint64(sent)
	})
}

// pgCode returns the SQLSTATE of a Postgres error, or "".
func pgCode(err error) string {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return pe.Code
	}
	return ""
}

// chromiumDOM, tail and checkRenderedPage are shared with the report's
// tests, which render the same page.
var (
	chromiumDOM       = testutil.ChromiumDOM
	tail              = testutil.Tail
	checkRenderedPage = testutil.CheckDashboardDOM
)

// freePort reports whether nothing listens on addr.
func closedPort(addr string) bool {
	c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
	if err != nil {
		return true
	}
	_ = c.Close()
	return false
}
