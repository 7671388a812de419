//go:build linux

package pooler

import (
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Keep-alive settings of client connections: Go's defaults for accepted
// TCP connections (net.ListenConfig with KeepAlive 0), which pgaudit has
// always used.
const (
	clientKeepAliveIdle     = 15 * time.Second
	clientKeepAliveInterval = 15 * time.Second
	clientKeepAliveCount    = 9
)

// inheritSockopts sets TCP_NODELAY and the client keep-alive settings on
// the listening socket, before bind. Linux copies them to every socket
// accept returns (tcp_create_openreq_child also arms the keep-alive timer
// of the copy), so the accepted connection needs no setsockopt of its own
// for them: Go's net package otherwise makes five per accepted connection
// (TCP_NODELAY, SO_KEEPALIVE, TCP_KEEPIDLE, TCP_KEEPINTVL, TCP_KEEPCNT),
// and with a new connection per transaction (pgbench -C) those were a
// fifth of the proxy's system calls. It reports whether all were set; the
// caller then turns off Go's per-connection keep-alive setup
// (ListenConfig.KeepAlive < 0), and otherwise keeps it.
func inheritSockopts(rc syscall.RawConn) bool {
	ok := true
	err := rc.Control(func(fd uintptr) {
		for _, o := range [...]struct{ level, opt, v int }{
			{unix.SOL_SOCKET, unix.SO_KEEPALIVE, 1},
			{unix.IPPROTO_TCP, unix.TCP_KEEPIDLE, int(clientKeepAliveIdle / time.Second)},
			{unix.IPPROTO_TCP, unix.TCP_KEEPINTVL, int(clientKeepAliveInterval / time.Second)},
			{unix.IPPROTO_TCP, unix.TCP_KEEPCNT, clientKeepAliveCount},
			{unix.IPPROTO_TCP, unix.TCP_NODELAY, 1},
		} {
			if unix.SetsockoptInt(int(fd), o.level, o.opt, o.v) != nil {
				ok = false
				return
			}
		}
	})
	return err == nil && ok
}

// inheritSockoptsSupported says whether Listen tries inheritSockopts.
const inheritSockoptsSupported = true
