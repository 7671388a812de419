//go:build linux

package wire

import (
	"io"
	"net"
	"os"
	"syscall"
	"time"
	"unsafe"
)

// rawIO reads and writes a non-blocking socket with raw read(2)/write(2)
// calls made through syscall.RawConn, so the runtime's netpoller still
// parks the goroutine on EAGAIN and still honours deadlines and Close.
//
// Why: the net package enters every read and write through
// entersyscall/exitsyscall. On a busy proxy a write to loopback often wakes
// the peer and gets the thread preempted inside the kernel; the runtime's
// sysmon then sees a P "blocked in a syscall" for more than 20 µs, hands it
// to another thread, and the original thread sleeps on a futex when the
// write returns. That is two extra context switches for a call that can
// never block (the socket is non-blocking). Measured with pgbench -S at 100
// clients through a transaction pool: 0.93 context switches per
// transaction with net.Conn I/O against 0.33 for PgBouncer (see
// bench/README.md). Raw calls keep the P on its thread.
//
// One goroutine may read while another writes: each direction has its own
// state. Concurrent reads (or concurrent writes) are not allowed, which the
// framing above already guarantees.
type rawIO struct {
	nc net.Conn
	rc syscall.RawConn

	rbuf    []byte
	rn      int
	rerrno  syscall.Errno
	readFn  func(fd uintptr) bool
	wbuf    []byte
	werrno  syscall.Errno
	writeFn func(fd uintptr) bool
	// noWait makes writeFn give up at EAGAIN instead of letting the
	// netpoller wait (see writeWithin).
	noWait bool
}

// newRawIO returns raw I/O over nc when nc is a plain TCP or Unix socket,
// or nil (use nc itself) otherwise.
func newRawIO(nc net.Conn) *rawIO {
	var sc syscall.Conn
	switch c := nc.(type) {
	case *net.TCPConn:
		sc = c
	case *net.UnixConn:
		sc = c
	default:
		return nil
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return nil
	}
	r := &rawIO{nc: nc, rc: rc}
	r.readFn = func(fd uintptr) bool {
		for {
			n, _, errno := syscall.RawSyscall(syscall.SYS_READ, fd, uintptr(unsafe.Pointer(unsafe.SliceData(r.rbuf))), uintptr(len(r.rbuf)))
			switch errno {
			case 0:
				r.rn, r.rerrno = int(n), 0
				return true
			case syscall.EINTR:
				continue
			case syscall.EAGAIN:
				return false
			default:
				r.rn, r.rerrno = 0, errno
				return true
			}
		}
	}
	r.writeFn = func(fd uintptr) bool {
		for len(r.wbuf) > 0 {
			n, _, errno := syscall.RawSyscall(syscall.SYS_WRITE, fd, uintptr(unsafe.Pointer(unsafe.SliceData(r.wbuf))), uintptr(len(r.wbuf)))
			switch errno {
			case 0:
				r.wbuf = r.wbuf[n:]
			case syscall.EINTR:
				continue
			case syscall.EAGAIN:
				return r.noWait
			default:
				r.werrno = errno
				return true
			}
		}
		return true
	}
	return r
}

// Read implements io.Reader with the errors net.Conn would return: io.EOF
// at end of stream, *net.OpError otherwise (deadlines included).
func (r *rawIO) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	r.rbuf = p
	err := r.rc.Read(r.readFn)
	r.rbuf = nil
	if err != nil {
		return 0, r.opError("read", err)
	}
	if r.rerrno != 0 {
		return 0, r.opError("read", os.NewSyscallError("read", r.rerrno))
	}
	if r.rn == 0 {
		return 0, io.EOF
	}
	return r.rn, nil
}

// pending reports whether bytes are waiting on the socket, without
// blocking or consuming them.
func (r *rawIO) pending() bool { return peek(r.nc) == peekData }

// Write implements io.Writer: it writes all of p or returns an error.
func (r *rawIO) Write(p []byte) (int, error) {
	r.wbuf, r.werrno = p, 0
	err := r.rc.Write(r.writeFn)
	written := len(p) - len(r.wbuf)
	r.wbuf = nil
	if err != nil {
		return written, r.opError("write", err)
	}
	if r.werrno != 0 {
		return written, r.opError("write", os.NewSyscallError("write", r.werrno))
	}
	return written, nil
}

// writeWithin is Write bounded by d, counted from the moment the socket
// buffer is full: it tries without waiting first, and only a write that
// would block arms a write deadline (a runtime timer) for the rest.
func (r *rawIO) writeWithin(p []byte, d time.Duration) (int, error) {
	r.wbuf, r.werrno = p, 0
	r.noWait = true
	err := r.rc.Write(r.writeFn)
	r.noWait = false
	if err == nil && r.werrno == 0 && len(r.wbuf) > 0 {
		_ = r.nc.SetWriteDeadline(time.Now().Add(d))
		err = r.rc.Write(r.writeFn)
		_ = r.nc.SetWriteDeadline(time.Time{})
	}
	written := len(p) - len(r.wbuf)
	r.wbuf = nil
	if err != nil {
		return written, r.opError("write", err)
	}
	if r.werrno != 0 {
		return written, r.opError("write", os.NewSyscallError("write", r.werrno))
	}
	return written, nil
}

func (r *rawIO) opError(op string, err error) error {
	return &net.OpError{Op: op, Net: r.nc.LocalAddr().Network(), Source: r.nc.LocalAddr(), Addr: r.nc.RemoteAddr(), Err: err}
}

// waitReadable blocks in the runtime's netpoller until the socket has
// bytes to read, is at end of file or failed, or a read deadline strikes;
// it consumes nothing (a recv with MSG_PEEK) and reports nothing: the
// next Read does (see Conn.WaitReadable).
func (r *rawIO) waitReadable() {
	var b [1]byte
	_ = r.rc.Read(func(fd uintptr) bool {
		for {
			_, _, errno := syscall.Syscall6(syscall.SYS_RECVFROM, fd, uintptr(unsafe.Pointer(&b[0])), 1,
				syscall.MSG_PEEK|syscall.MSG_DONTWAIT, 0, 0)
			switch errno {
			case syscall.EINTR:
				continue
			case syscall.EAGAIN:
				return false // the netpoller waits
			}
			return true // data, end of file or an error
		}
	})
}
