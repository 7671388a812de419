package wire

import (
	"crypto/tls"
	"errors"
	"net"
	"syscall"
)

// peekResult is what a non-blocking MSG_PEEK found on a socket.
type peekResult uint8

const (
	peekEmpty   peekResult = iota // nothing to read, connection open
	peekData                      // bytes are waiting
	peekClosed                    // end of file, reset or other error
	peekUnknown                   // not a socket we can peek at
)

// peek looks at nc's socket with one non-blocking recv(MSG_PEEK). It
// consumes nothing and does not take nc's read lock (it goes through
// syscall.RawConn.Control), so it is safe while another goroutine reads or
// waits to read nc.
func peek(nc net.Conn) peekResult {
	if tc, ok := nc.(*tls.Conn); ok {
		nc = tc.NetConn()
	}
	sc, ok := nc.(syscall.Conn)
	if !ok {
		return peekUnknown
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return peekClosed
	}
	res := peekClosed
	var buf [1]byte
	err = raw.Control(func(fd uintptr) {
		n, _, rerr := syscall.Recvfrom(int(fd), buf[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		switch {
		case errors.Is(rerr, syscall.EAGAIN) || errors.Is(rerr, syscall.EWOULDBLOCK) || errors.Is(rerr, syscall.EINTR):
			res = peekEmpty
		case rerr != nil || n == 0:
			res = peekClosed
		default:
			res = peekData
		}
	})
	if err != nil {
		return peekClosed
	}
	return res
}

// Alive reports whether an idle server connection still looks usable: the
// server has sent nothing (an idle backend is silent unless it is shutting
// down or was terminated) and the socket is not at end of file. It costs one
// non-blocking recv with MSG_PEEK and never consumes data. Only the holder of
// an idle connection may call it.
func (s *ServerConn) Alive() bool {
	if s.R.Buffered() > 0 {
		return false
	}
	switch peek(s.Conn.Conn) {
	case peekEmpty, peekUnknown:
		return true
	default: // EOF, an error, or unexpected data (a FATAL notice)
		return false
	}
}

// PeerClosed reports whether the peer of nc has closed its end (or reset
// the connection), without consuming data and without taking nc's read
// lock: it is safe to call while another goroutine reads or waits to read
// nc. Data waiting to be read means the peer is alive. It costs one
// non-blocking recv with MSG_PEEK.
func PeerClosed(nc net.Conn) bool { return peek(nc) == peekClosed }
