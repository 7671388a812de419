//go:build linux

package pooler

import (
	"net"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"
)

// TestListenSockoptsInherited checks that a client socket accepted by the
// proxy's listener has TCP_NODELAY and the keep-alive settings, which the
// listener sets once for all of them (see inheritSockopts), also with
// SO_REUSEPORT.
func TestListenSockoptsInherited(t *testing.T) {
	for _, reuse := range []bool{false, true} {
		p := New(&Config{Listen: "127.0.0.1:0", SoReuseport: reuse}, nil, zerolog.Nop())
		if err := p.Listen(); err != nil {
			t.Fatal(err)
		}
		p.mu.Lock()
		l := p.listener
		p.mu.Unlock()
		c, err := net.Dial("tcp", l.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		sc, err := l.Accept()
		if err != nil {
			t.Fatal(err)
		}
		rc, err := sc.(*net.TCPConn).SyscallConn()
		if err != nil {
			t.Fatal(err)
		}
		want := []struct {
			name       string
			level, opt int
			v          int
		}{
			{"SO_KEEPALIVE", unix.SOL_SOCKET, unix.SO_KEEPALIVE, 1},
			{"TCP_KEEPIDLE", unix.IPPROTO_TCP, unix.TCP_KEEPIDLE, int(clientKeepAliveIdle / time.Second)},
			{"TCP_KEEPINTVL", unix.IPPROTO_TCP, unix.TCP_KEEPINTVL, int(clientKeepAliveInterval / time.Second)},
			{"TCP_KEEPCNT", unix.IPPROTO_TCP, unix.TCP_KEEPCNT, clientKeepAliveCount},
			{"TCP_NODELAY", unix.IPPROTO_TCP, unix.TCP_NODELAY, 1},
		}
		for _, w := range want {
			var got int
			var gerr error
			if err := rc.Control(func(fd uintptr) { got, gerr = unix.GetsockoptInt(int(fd), w.level, w.opt) }); err != nil {
				t.Fatal(err)
			}
			if gerr != nil || got != w.v {
				t.Errorf("reuseport=%v: accepted socket %s = %d (%v), want %d", reuse, w.name, got, gerr, w.v)
			}
		}
		_ = c.Close()
		_ = sc.Close()
		_ = p.Close()
	}
}
