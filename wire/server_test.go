package wire

import (
	"context"
	"net"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgaudit-proxy/pgaudit/internal/testutil"
)

func TestMain(m *testing.M) { testutil.Main(m) }

// slowLoginConn returns from its first Write only after a pause: the
// write of the StartupMessage then takes longer than pgconn's 15 ms
// slow-write timer, as it does on a loaded machine, and pgconn starts its
// background reader during login.
type slowLoginConn struct {
	net.Conn
	pause time.Duration
	wrote bool
}

func (c *slowLoginConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	if !c.wrote {
		c.wrote = true
		time.Sleep(c.pause)
	}
	return n, err
}

// TestConnectServerAfterSlowLoginWrite: a server connection whose login
// started pgconn's background reader still answers the proxy's first
// statement. Without SyncConn before Hijack, the reader's goroutine stays
// blocked in a Read of the socket and takes that answer: Exec then waits
// until its deadline (the "exec: read: i/o timeout" on a fresh pooled
// server, and the event relay's session that never got its reply).
func TestConnectServerAfterSlowLoginWrite(t *testing.T) {
	cfg, err := pgconn.ParseConfig(testutil.Shared(t).DSN("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	var d net.Dialer
	cfg.DialFunc = func(ctx context.Context, network, addr string) (net.Conn, error) {
		nc, err := d.DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		return &slowLoginConn{Conn: nc, pause: 100 * time.Millisecond}, nil
	}
	for i := range 3 {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		sc, err := ConnectServer(ctx, cfg, 0)
		if err != nil {
			cancel()
			t.Fatal(err)
		}
		ectx, ecancel := context.WithTimeout(ctx, 3*time.Second)
		res, err := sc.Exec(ectx, "select 41 + 1")
		ecancel()
		if err != nil {
			t.Fatalf("connection %d: first statement after login: %v", i, err)
		}
		if len(res.Rows) != 1 || res.Rows[0][0] != "42" || sc.TxStatus != TxIdle {
			t.Fatalf("connection %d: got rows %v, status %c", i, res.Rows, sc.TxStatus)
		}
		_ = sc.Close()
		cancel()
	}
	// No pgconn reader goroutine is left behind.
	testutil.Eventually(t, 5*time.Second, "pgconn background readers to exit", func() bool {
		buf := make([]byte, 1<<20)
		return !strings.Contains(string(buf[:runtime.Stack(buf, true)]), "bgreader.(*BGReader).bgRead")
	})
}
