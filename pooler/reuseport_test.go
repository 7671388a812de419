package pooler

import (
	"context"
	"errors"
	"net"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/rs/zerolog"
)

// TestListenReusePort: two Proxy values with so_reuseport listen on the
// same 127.0.0.1 port and the kernel gives each some of many clients;
// without the option the second Listen fails with EADDRINUSE.
func TestListenReusePort(t *testing.T) {
	if !reusePortSupported {
		t.Skip("no SO_REUSEPORT on this platform")
	}
	a := testProxy(t, func(c *Config) { withMode(TransactionMode, 5)(c); c.SoReuseport = true })
	addr := a.Addr().String()
	b := testProxy(t, func(c *Config) { withMode(TransactionMode, 5)(c); c.SoReuseport = true; c.Listen = addr })
	if b.Addr().String() != addr {
		t.Fatalf("b listens on %s, want %s", b.Addr(), addr)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	const n = 40
	for i := 0; i < n; i++ {
		conn, err := pgconn.Connect(ctx, proxyDSN(a, "", ""))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = conn.Close(context.Background()) })
		if _, err := conn.Exec(ctx, "select 1").ReadAll(); err != nil {
			t.Fatal(err)
		}
	}
	na, nb := len(a.Clients()), len(b.Clients())
	t.Logf("clients: a %d, b %d", na, nb)
	if na+nb != n || na == 0 || nb == 0 {
		t.Errorf("clients spread a %d, b %d; want both > 0, sum %d", na, nb, n)
	}

	// Without the option the port is taken.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	c := New(&Config{Listen: l.Addr().String()}, nil, zerolog.Nop())
	if err := c.Listen(); !errors.Is(err, syscall.EADDRINUSE) {
		t.Errorf("second Listen without so_reuseport: %v, want EADDRINUSE", err)
	}
	// Nor may a so_reuseport listener join a socket that lacks it.
	c = New(&Config{Listen: l.Addr().String(), SoReuseport: true}, nil, zerolog.Nop())
	if err := c.Listen(); !errors.Is(err, syscall.EADDRINUSE) {
		t.Errorf("so_reuseport Listen on a plain listener's port: %v, want EADDRINUSE", err)
	}
}
