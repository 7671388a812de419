package pooler

import (
	"context"
	"flag"
	"fmt"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/rs/zerolog"
	"go.uber.org/goleak"

	"github.com/pgaudit/pgaudit/analyzer"
	"github.com/pgaudit/pgaudit/internal/pgtest"
)

// cluster is the Postgres every test in this package talks to.
var cluster *pgtest.Cluster

func TestMain(m *testing.M) {
	flag.Parse()
	if f := flag.Lookup("test.fuzzworker"); f != nil && f.Value.String() == "true" {
		// A fuzz worker runs only the fuzz target (FuzzStartupAuth), which
		// needs no server; the coordinating process has the cluster.
		os.Exit(m.Run())
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	c, err := pgtest.Start(ctx, pgtest.Options{})
	cancel()
	if err != nil {
		fmt.Fprintln(os.Stderr, "pooler tests need PostgreSQL:", err)
		os.Exit(1)
	}
	cluster = c
	code := m.Run()
	c.Stop()
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goroutine leak:", err)
			code = 1
		}
	}
	os.Exit(code)
}

// testProxy starts a proxy in front of the test cluster; mutate adjusts the
// config. It is closed when the test ends.
func testProxy(t testing.TB, mutate func(*Config)) *Proxy {
	t.Helper()
	return testProxyWithSink(t, mutate, nil)
}

// testProxyWithSink is testProxy with an event sink.
func testProxyWithSink(t testing.TB, mutate func(*Config), sink analyzer.Sink) *Proxy {
	t.Helper()
	up, err := pgconn.ParseConfig(cluster.DSN("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	settings := DefaultPoolSettings()
	settings.Size = 5
	db := &Database{Name: "postgres", Upstream: up, Pool: settings}
	cfg := &Config{
		Listen:    "127.0.0.1:0",
		Databases: map[string]*Database{"postgres": db},
		AuthType:  "trust",
	}
	wild := *db
	wild.Name = "*"
	cfg.Databases["*"] = &wild
	if mutate != nil {
		mutate(cfg)
	}
	log := zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel)
	if testing.Verbose() {
		log = log.Level(zerolog.DebugLevel)
	}
	p := New(cfg, sink, log)
	if err := p.Listen(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { defer close(done); _ = p.Serve(context.Background()) }()
	t.Cleanup(func() { _ = p.Close(); <-done })
	return p
}

// proxyDSN returns a DSN through p for user postgres.
func proxyDSN(p *Proxy, db string, extra string) string {
	if db == "" {
		db = "postgres"
	}
	return fmt.Sprintf("postgres://postgres@%s/%s?sslmode=disable%s", p.Addr(), db, extra)
}

// withMode sets the pool mode and size of every database.
func withMode(mode PoolMode, size int) func(*Config) {
	return func(c *Config) {
		for _, db := range c.Databases {
			db.Pool.Mode = mode
			db.Pool.Size = size
		}
	}
}

// captureSink records events for assertions.
type captureSink struct {
	mu     sync.Mutex
	events []analyzer.Event
}

func (c *captureSink) Offer(ev *analyzer.Event) {
	c.mu.Lock()
	c.events = append(c.events, *ev)
	c.mu.Unlock()
}

func (c *captureSink) snapshot() []analyzer.Event {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]analyzer.Event(nil), c.events...)
}
