//go:build !linux

package wire

import (
	"io"
	"net"
	"time"
)

type rawIO struct{ io.ReadWriter }

// newRawIO is Linux-only; elsewhere connections use net.Conn I/O.
func newRawIO(net.Conn) *rawIO { return nil }

func (r *rawIO) writeWithin(p []byte, _ time.Duration) (int, error) { return r.Write(p) }

func (r *rawIO) waitReadable() {}
