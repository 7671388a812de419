package pooler

import (
	"context"
	"flag"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/rs/zerolog"

	"github.com/pgaudit-proxy/pgaudit/analyzer"
	"github.com/pgaudit-proxy/pgaudit/internal/testutil"
)

// cluster is the Postgres every test in this package talks to, started at
// first use: tests that need no server (go test -run TestScanStatement) run
// without one.
var cluster = testutil.Cluster()

// update rewrites golden files under testdata/ (go test ./pooler -update).
var update = testutil.Update

// relayParkAfter is the relay_park_after of the test proxies (go test
// ./pooler -relay-park-after=1s runs them at the default): short, so that
// sessions park and resume between nearly every step of a test.
var relayParkAfter = flag.Duration("relay-park-after", 5*time.Millisecond, "relay_park_after of the test proxies")

func TestMain(m *testing.M) { testutil.Main(m) }

// testProxy starts a proxy in front of the test cluster; mutate adjusts the
// config. It is closed when the test ends.
func testProxy(t testing.TB, mutate func(*Config)) *Proxy {
	t.Helper()
	return testProxyWithSink(t, mutate, nil)
}

// testProxyWithSink is testProxy with an event sink.
func testProxyWithSink(t testing.TB, mutate func(*Config), sink analyzer.Sink) *Proxy {
	t.Helper()
	up, err := pgconn.ParseConfig(testutil.Shared(t).DSN("postgres"))
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
	cfg.RelayParkAfter = *relayParkAfter
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

// captureSink records events for assertions: statement and session-state
// events in events, session ends (which every session that ran a statement
// reports last) in ends.
type captureSink struct {
	mu     sync.Mutex
	events []analyzer.Event
	ends   []analyzer.Event
	// endAfter[i] is len(events) when ends[i] was offered.
	endAfter []int
}

func (c *captureSink) Offer(ev *analyzer.Event) {
	c.mu.Lock()
	if ev.Kind == analyzer.KindSessionEnd {
		c.ends = append(c.ends, *ev)
		c.endAfter = append(c.endAfter, len(c.events))
	} else {
		c.events = append(c.events, *ev)
	}
	c.mu.Unlock()
}

// sessionEnds returns the session-end events offered so far and, for
// each, how many other events had been offered before it.
func (c *captureSink) sessionEnds() ([]analyzer.Event, []int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]analyzer.Event(nil), c.ends...), append([]int(nil), c.endAfter...)
}

func (c *captureSink) snapshot() []analyzer.Event {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]analyzer.Event(nil), c.events...)
}
