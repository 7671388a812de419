//go:build !linux

package wire

import (
	"io"
	"net"
)

type rawIO struct{ io.ReadWriter }

// newRawIO is Linux-only; elsewhere connections use net.Conn I/O.
func newRawIO(net.Conn) *rawIO { return nil }
