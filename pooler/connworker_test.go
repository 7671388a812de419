package pooler

import (
	"testing"
	"time"

	"github.com/pgaudit-proxy/pgaudit/internal/testutil"
)

// TestConnWorkersReused checks that the goroutines running client
// connections are reused for later connections (see connWorker), that no
// more than maxIdleConnWorkers of them wait, and that all of them exit when
// the proxy closes.
func TestConnWorkersReused(t *testing.T) {
	const fn = "pooler.(*Proxy).connWorker"
	before := goroutinesIn(fn) // other tests' proxies, if any
	p := testProxy(t, withMode(TransactionMode, 2))
	for i := range 30 {
		c := dialWire(t, p.Addr().String(), nil)
		if st := c.query("select 1"); st != 'I' {
			t.Fatalf("login %d: status %q", i, st)
		}
		c.terminate()
		if !testutil.Within(5*time.Second, func() bool { return p.ClientCount() == 0 && p.idleWorkers.Load() >= 1 }) {
			t.Fatalf("login %d: %d clients, %d idle workers", i, p.ClientCount(), p.idleWorkers.Load())
		}
	}
	if n := goroutinesIn(fn) - before; n < 1 || n > 3 {
		t.Errorf("%d connection goroutines after 30 logins one after another, want 1 to 3 (reused)", n)
	}
	// Many at once: at most maxIdleConnWorkers stay.
	var conns []*wireConn
	for range 2 * maxIdleConnWorkers {
		conns = append(conns, dialWire(t, p.Addr().String(), nil))
	}
	for _, c := range conns {
		c.terminate()
	}
	if !testutil.Within(5*time.Second, func() bool { return p.ClientCount() == 0 && goroutinesIn(fn)-before <= maxIdleConnWorkers }) {
		t.Errorf("%d connection goroutines wait after %d clients left, want at most %d", goroutinesIn(fn)-before, len(conns), maxIdleConnWorkers)
	}
	_ = p.Close()
	if !testutil.Within(5*time.Second, func() bool { return goroutinesIn(fn) <= before }) {
		t.Errorf("%d connection goroutines left after Close", goroutinesIn(fn)-before)
	}
}
