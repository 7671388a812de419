package wire

import (
	"crypto/tls"
	"errors"
	"net"
	"syscall"
)

// Alive reports whether an idle server connection still looks usable: the
// server has sent nothing (an idle backend is silent unless it is shutting
// down or was terminated) and the socket is not at end of file. It costs one
// non-blocking recv with MSG_PEEK and never consumes data. Only the holder of
// an idle connection may call it.
func (s *ServerConn) Alive() bool {
	if s.R.Buffered() > 0 {
		return false
	}
	nc := s.Conn.Conn
	if tc, ok := nc.(*tls.Conn); ok {
		nc = tc.NetConn()
	}
	sc, ok := nc.(syscall.Conn)
	if !ok {
		return true
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return false
	}
	alive := true
	var buf [1]byte
	err = raw.Read(func(fd uintptr) bool {
		n, _, rerr := syscall.Recvfrom(int(fd), buf[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		switch {
		case errors.Is(rerr, syscall.EAGAIN) || errors.Is(rerr, syscall.EWOULDBLOCK):
			alive = true
		case rerr != nil:
			alive = false
		default:
			// n == 0 is EOF; n > 0 is unexpected data (a FATAL notice).
			_ = n
			alive = false
		}
		return true
	})
	if err != nil {
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			return true
		}
		return false
	}
	return alive
}

// PeerClosed reports whether the peer of nc has closed its end (or reset
// the connection), without consuming data and without taking nc's read
// lock: it is safe to call while another goroutine reads or waits to read
// nc. Data waiting to be read means the peer is alive. It costs one
// non-blocking recv with MSG_PEEK.
func PeerClosed(nc net.Conn) bool {
	if tc, ok := nc.(*tls.Conn); ok {
		nc = tc.NetConn()
	}
	sc, ok := nc.(syscall.Conn)
	if !ok {
		return false
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return true
	}
	closed := false
	var buf [1]byte
	err = raw.Control(func(fd uintptr) {
		n, _, rerr := syscall.Recvfrom(int(fd), buf[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		switch {
		case errors.Is(rerr, syscall.EAGAIN) || errors.Is(rerr, syscall.EWOULDBLOCK) || errors.Is(rerr, syscall.EINTR):
		case rerr != nil:
			closed = true
		case n == 0:
			closed = true
		}
	})
	return err != nil || closed
}
