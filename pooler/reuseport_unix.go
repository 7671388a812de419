//go:build linux || darwin || freebsd || netbsd || openbsd || dragonfly

package pooler

import (
	"syscall"

	"golang.org/x/sys/unix"
)

// reusePortControl sets SO_REUSEPORT on a listening socket before bind, so
// several processes (or Proxy values) can listen on one host:port and the
// kernel spreads new connections across them.
func reusePortControl(_, _ string, rc syscall.RawConn) error {
	var serr error
	if err := rc.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1)
	}); err != nil {
		return err
	}
	return serr
}

const reusePortSupported = true
