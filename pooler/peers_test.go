package pooler

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgaudit-proxy/pgaudit/internal/testutil"
	"github.com/pgaudit-proxy/pgaudit/wire"
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
			// What became of each request, as /metrics shows it: B forwarded
			// the wrong-key and the right-key request to A, dropped the one
			// for unknown peer 7 and found nothing for its own id; A (no
			// peer_listen here, so the forwards came in on its listen
			// address) matched one to nothing and two to its client (the
			// forward and stillRunning's own cancel).
			if got, want := b.CancelCounts(), (CancelCounts{Forwarded: 2, ForwardFailed: 1, Unknown: 1}); got != want {
				t.Errorf("B's cancel counts %+v, want %+v", got, want)
			}
			if got, want := a.CancelCounts(), (CancelCounts{Local: 2, Unknown: 1}); got != want {
				t.Errorf("A's cancel counts %+v, want %+v", got, want)
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

// TestPeerCancelReusePort: three proxies (peers 1..3) share one port with
// so_reuseport, each with its own peer_listen address (peer 3's a unix
// socket) in the others' [peers]. For a client of every process, a cancel
// sent to each other process's peer address, and cancels sent to the
// shared address (landing on whichever process the kernel picks), all
// end its statement with 57014.
func TestPeerCancelReusePort(t *testing.T) {
	if !reusePortSupported {
		t.Skip("no SO_REUSEPORT on this platform")
	}
	const n = 3
	peerAddrs := map[int]string{1: freeAddr(t), 2: freeAddr(t), 3: filepath.Join(t.TempDir(), "peer3.sock")}
	proxies := map[int]*Proxy{}
	shared := "127.0.0.1:0"
	for id := 1; id <= n; id++ {
		peers := map[int]string{}
		for other, addr := range peerAddrs {
			if other != id {
				peers[other] = addr
			}
		}
		p := testProxy(t, func(c *Config) {
			withMode(TransactionMode, 2)(c)
			c.Listen, c.SoReuseport, c.PeerID, c.PeerListen, c.Peers = shared, true, id, peerAddrs[id], peers
		})
		shared = p.Addr().String()
		proxies[id] = p
	}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	// One client on each process (the kernel picks; the key tells which).
	on := map[int]*pgconn.PgConn{}
	for i := 0; i < 128 && len(on) < n; i++ {
		conn, err := pgconn.Connect(ctx, proxyDSN(proxies[1], "", ""))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = conn.Close(context.Background()) })
		if peer := cancelPeerOf(conn.PID()); on[peer] == nil {
			on[peer] = conn
		}
	}
	if len(on) != n {
		t.Fatalf("128 clients reached only peers %v", on)
	}
	for peer, conn := range on {
		via := []string{shared, shared, shared}
		for other, p := range proxies {
			if other != peer {
				via = append(via, p.PeerAddr().String())
			}
		}
		for _, addr := range via {
			marker := fmt.Sprintf("peer_rp_%d_%d", peer, time.Now().UnixNano())
			done := runAsync(conn, fmt.Sprintf("select pg_sleep(30) /* %s */", marker))
			waitActive(t, marker, done)
			if peerNetwork(addr) == "unix" {
				sendCancelUnix(t, addr, conn.PID(), conn.SecretKey())
			} else {
				sendCancel(t, addr, conn.PID(), conn.SecretKey())
			}
			select {
			case r := <-done:
				wantPgError(t, r.err, "ERROR", "57014", "")
			case <-time.After(5 * time.Second):
				t.Fatalf("client of peer %d: cancel via %s did not land within 5s", peer, addr)
			}
		}
	}

	// A peer address takes no logins.
	if _, err := pgconn.Connect(ctx, fmt.Sprintf("postgres://postgres@%s/postgres?sslmode=disable&connect_timeout=5", proxies[1].PeerAddr())); err == nil {
		t.Error("a login on peer_listen succeeded")
	}
}

// sendCancelUnix sends a CancelRequest over a unix socket and expects the
// connection closed without a reply.
func sendCancelUnix(t testing.TB, path string, pid uint32, key []byte) {
	t.Helper()
	nc, err := net.DialTimeout("unix", path, wireTimeout)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	_ = nc.SetDeadline(time.Now().Add(wireTimeout))
	if _, err := nc.Write(wire.AppendCancelRequest(nil, pid, key)); err != nil {
		t.Fatal(err)
	}
	if b, err := io.ReadAll(nc); len(b) != 0 || err != nil {
		t.Errorf("CancelRequest answered with %q, %v", b, err)
	}
}

// TestPeerListenStaleSocket: a peer_listen socket file left by a process
// that was killed (its listener never closed) does not stop the next
// process from listening there; a socket a live process serves is never
// taken over.
func TestPeerListenStaleSocket(t *testing.T) {
	path := filepath.Join(t.TempDir(), "peer.sock")
	dead, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	dead.(*net.UnixListener).SetUnlinkOnClose(false) // as after SIGKILL
	_ = dead.Close()
	if _, err := os.Stat(path); err != nil {
		t.Fatalf("the stale socket file should remain: %v", err)
	}
	p := testProxy(t, func(c *Config) { c.PeerID, c.PeerListen = 1, path })
	if p.PeerAddr() == nil || p.PeerAddr().String() != path {
		t.Fatalf("peer listener on %v, want %s", p.PeerAddr(), path)
	}
	// A second process configured with the same path fails, and the first
	// keeps its socket.
	if l, err := listenPeer(path); err == nil {
		_ = l.Close()
		t.Fatal("listenPeer took over a socket a live process serves")
	}
	c, err := net.DialTimeout("unix", path, time.Second)
	if err != nil {
		t.Fatalf("the live process's peer socket is gone: %v", err)
	}
	_ = c.Close()
}

// TestPeerCancelForwardsCapped: a flood of CancelRequests whose keys name a
// peer that accepts and then never answers holds at most
// maxCancelForwardsInFlight dials to it at a time; the rest are dropped
// and counted as forward_failed at once, and when the peer lets go, the
// forwards in flight end and are counted as forwarded.
func TestPeerCancelForwardsCapped(t *testing.T) {
	silent, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	held := make(chan net.Conn, 4*maxCancelForwardsInFlight)
	go func() {
		for {
			c, err := silent.Accept()
			if err != nil {
				return
			}
			held <- c
		}
	}()
	p := testProxy(t, func(c *Config) { c.PeerID, c.Peers = 1, map[int]string{2: silent.Addr().String()} })
	const flood = maxCancelForwardsInFlight + 36
	for range flood {
		pid, key := newPeerCancelKey(2)
		nc := dialRaw(t, p.Addr().String())
		if _, err := nc.Write(wire.AppendCancelRequest(nil, pid, key)); err != nil {
			t.Fatal(err)
		}
		defer nc.Close()
	}
	testutil.Eventually(t, 10*time.Second, "the flood to be sorted", func() bool {
		return p.CancelCounts().ForwardFailed == flood-maxCancelForwardsInFlight && len(held) == maxCancelForwardsInFlight
	})
	if got := p.counters.cancels.forwarding.Load(); got != maxCancelForwardsInFlight {
		t.Fatalf("%d forwards in flight, want the cap %d", got, maxCancelForwardsInFlight)
	}
	for range maxCancelForwardsInFlight {
		(<-held).Close()
	}
	testutil.Eventually(t, 10*time.Second, "the held forwards to end", func() bool {
		return p.CancelCounts().Forwarded == maxCancelForwardsInFlight && p.counters.cancels.forwarding.Load() == 0
	})
	if n := len(held); n != 0 {
		t.Errorf("%d more dials reached the silent peer after the cap", n)
	}
}
