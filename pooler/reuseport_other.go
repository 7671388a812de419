//go:build !(linux || darwin || freebsd || netbsd || openbsd || dragonfly)

package pooler

import (
	"errors"
	"syscall"
)

func reusePortControl(_, _ string, _ syscall.RawConn) error {
	return errors.New("so_reuseport is not supported on this platform")
}

const reusePortSupported = false
