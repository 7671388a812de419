package pooler

import (
	"context"
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// freeAddr returns a loopback address that was free a moment ago.
func freeAddr(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	_ = l.Close()
	return addr
}

func TestPeerCancelKeyLayout(t *testing.T) {
	for _, id := range []int{1, 2, 255, 256, MaxPeerID} {
		pid, key := newPeerCancelKey(id)
		if got := cancelPeerOf(pid); got != id {
			t.Errorf("peer %d: decoded %d from pid %#x", id, got, pid)
		}
		if pid>>31 != 0 || len(key) != 4 || key[3]&cancelTTLMask != cancelTTLMask {
			t.Errorf("peer %d: pid %#x key %x: want a positive pid and TTL 3", id, pid, key)
		}
	}
	if err := ValidatePeers(MaxPeerID+1, nil); err == nil {
		t.Error("peer_id 16384 accepted")
	}
	if err := ValidatePeers(0, map[int]string{1: "x:1"}); err == nil {
		t.Error("[peers] without peer_id accepted")
	}
	if err := ValidatePeers(1, map[int]string{2: "127.0.0.1:1", 3: "/tmp/s"}); err != nil {
		t.Error(err)
	}
}

// TestPeerCancel: proxies A (peer 1) and B (peer 2) know each other; a
// CancelRequest for a client of A sent to B reaches A's client's server; a
// wrong key or an unknown peer's key sent to B cancels nothing.
func TestPeerCancel(t *testing.T) {
	for _, mode := range []PoolMode{SessionMode, TransactionMode} {
		t.Run(string(mode), func(t *testing.T) {
			addrA, addrB := freeAddr(t), freeAddr(t)
			a := testProxy(t, func(c *Config) {
				withMode(mode, 2)(c)
				c.Listen, c.PeerID, c.Peers = addrA, 1, map[int]string{2: addrB}
			})
			b := testProxy(t, func(c *Config) {
				withMode(mode, 2)(c)
				c.Listen, c.PeerID, c.Peers = addrB, 2, map[int]string{1: addrA}
			})
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			conn, err := pgconn.Connect(ctx, proxyDSN(a, "", ""))
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close(ctx)
			if got := cancelPeerOf(conn.PID()); got != 1 {
				t.Fatalf("A's client got pid %#x carrying peer %d, want 1", conn.PID(), got)
			}

			// Wrong keys through B: nothing happens.
			marker := fmt.Sprintf("peer_wrong_%d", time.Now().UnixNano())
			done := runAsync(conn, fmt.Sprintf("select pg_sleep(30) /* %s */", marker))
			waitActive(t, marker, done)
			key := append([]byte(nil), conn.SecretKey()...)
			key[0] ^= 0xff
			sendCancel(t, b.Addr().String(), conn.PID(), key)
			sendCancel(t, b.Addr().String(), conn.PID()^3<<16, conn.SecretKey()) // peer 2 (B itself): no such client
			sendCancel(t, b.Addr().String(), conn.PID()^6<<16, conn.SecretKey()) // peer 7: unknown
			stillRunning(t, conn, done, "after wrong CancelRequests through peer B")

			// The right key through B cancels it.
			marker = fmt.Sprintf("peer_cancel_%d", time.Now().UnixNano())
			done = runAsync(conn, fmt.Sprintf("select pg_sleep(30) /* %s */", marker))
			waitActive(t, marker, done)
			sendCancel(t, b.Addr().String(), conn.PID(), conn.SecretKey())
			select {
			case r := <-done:
				wantPgError(t, r.err, "ERROR", "57014", "canceling statement due to user request")
			case <-time.After(5 * time.Second):
				t.Fatal("statement not canceled within 5s of a CancelRequest sent to the peer")
			}
			if _, err := conn.Exec(ctx, "select 1").ReadAll(); err != nil {
				t.Fatalf("after cancel: %v", err)
			}
			// And A still cancels its own clients directly.
			checkCancel(t, proxyDSN(a, "", ""))
		})
	}
}

// TestPeerCancelLoop: a misconfigured [peers] that points back at the
// process itself under another id forwards a cancel at most 3 times.
func TestPeerCancelLoop(t *testing.T) {
	addr := freeAddr(t)
	p := testProxy(t, func(c *Config) { c.Listen, c.PeerID, c.Peers = addr, 1, map[int]string{2: addr} })
	pid, key := newPeerCancelKey(2)
	start := time.Now()
	sendCancel(t, p.Addr().String(), pid, key)
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("looping cancel took %v", d)
	}
}

// TestPeerCancelReusePort: A (peer 1) and B (peer 2) share one port with
// so_reuseport and each has its own peer_listen address in the other's
// [peers]. For a client of each, a cancel sent to the other process's
// peer address, and one sent to the shared address, both land.
func TestPeerCancelReusePort(t *testing.T) {
	if !reusePortSupported {
		t.Skip("no SO_REUSEPORT on this platform")
	}
	peerA, peerB := freeAddr(t), freeAddr(t)
	a := testProxy(t, func(c *Config) {
		withMode(TransactionMode, 2)(c)
		c.SoReuseport, c.PeerID, c.PeerListen, c.Peers = true, 1, peerA, map[int]string{2: peerB}
	})
	shared := a.Addr().String()
	b := testProxy(t, func(c *Config) {
		withMode(TransactionMode, 2)(c)
		c.Listen, c.SoReuseport, c.PeerID, c.PeerListen, c.Peers = shared, true, 2, peerB, map[int]string{1: peerA}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	// One client on each process (the kernel picks; the key tells which).
	on := map[int]*pgconn.PgConn{}
	for i := 0; i < 64 && len(on) < 2; i++ {
		conn, err := pgconn.Connect(ctx, proxyDSN(a, "", ""))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = conn.Close(context.Background()) })
		if peer := cancelPeerOf(conn.PID()); on[peer] == nil {
			on[peer] = conn
		}
	}
	if on[1] == nil || on[2] == nil {
		t.Fatalf("64 clients did not reach both processes: %v", on)
	}
	otherPeerAddr := map[int]string{1: b.PeerAddr().String(), 2: a.PeerAddr().String()}
	for peer, conn := range on {
		for _, via := range []string{otherPeerAddr[peer], shared} {
			marker := fmt.Sprintf("peer_rp_%d_%d", peer, time.Now().UnixNano())
			done := runAsync(conn, fmt.Sprintf("select pg_sleep(30) /* %s */", marker))
			waitActive(t, marker, done)
			sendCancel(t, via, conn.PID(), conn.SecretKey())
			select {
			case r := <-done:
				wantPgError(t, r.err, "ERROR", "57014", "")
			case <-time.After(5 * time.Second):
				t.Fatalf("client of peer %d: cancel via %s did not land within 5s", peer, via)
			}
		}
	}

	// The peer address takes no logins.
	if _, err := pgconn.Connect(ctx, fmt.Sprintf("postgres://postgres@%s/postgres?sslmode=disable&connect_timeout=5", a.PeerAddr())); err == nil {
		t.Error("a login on peer_listen succeeded")
	}
}
