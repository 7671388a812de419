package wire

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Buffers of parked client connections (see DropBuffers) go to these
// free lists, so that a client that wakes up takes one that another client
// left instead of allocating. Each keeps at most maxFreeBuffers: with
// thousands of clients parking at once, the rest is garbage, which the
// next collection frees (a sync.Pool would keep them through two).
const maxFreeBuffers = 256

var freeBufs struct {
	sync.Mutex
	readers []*bufio.Reader
	writers []*bufio.Writer
}

// DropBuffers gives up the connection's read and write buffers (and the
// Reader's message assembly buffers) when they hold nothing: no unread
// byte, no half-read frame, nothing unflushed and no failed write. It
// reports whether it did. After it the Conn must not be read or written
// until RestoreBuffers; only the goroutine that owns the Conn's I/O (or
// someone holding the owner's lock while the owner is gone) may call
// either. Buffers of ClientBufferSize bytes are recycled (a bounded free
// list).
func (c *Conn) DropBuffers() bool {
	if c.R.br == nil {
		return true
	}
	if !c.R.Idle() || c.W.Buffered() > 0 || c.W.Flush() != nil {
		return false
	}
	c.R.Release()
	c.R.small = nil
	freeBufs.Lock()
	if c.R.bufSize == ClientBufferSize && len(freeBufs.readers) < maxFreeBuffers {
		c.R.br.Reset(nil)
		freeBufs.readers = append(freeBufs.readers, c.R.br)
	}
	if c.W.Size() == ClientBufferSize && len(freeBufs.writers) < maxFreeBuffers {
		c.W.Reset(nil)
		freeBufs.writers = append(freeBufs.writers, c.W)
	}
	freeBufs.Unlock()
	c.R.br, c.W = nil, nil
	return true
}

// RestoreBuffers gives the Conn buffers again after DropBuffers; it does
// nothing when it has them (or is detached: see Attach). The same callers
// as DropBuffers.
func (c *Conn) RestoreBuffers() {
	if c.det.on || c.R.br != nil {
		return
	}
	var br *bufio.Reader
	var bw *bufio.Writer
	freeBufs.Lock()
	if n := len(freeBufs.readers); n > 0 && c.R.bufSize == ClientBufferSize {
		br = freeBufs.readers[n-1]
		freeBufs.readers[n-1] = nil
		freeBufs.readers = freeBufs.readers[:n-1]
	}
	if n := len(freeBufs.writers); n > 0 {
		bw = freeBufs.writers[n-1]
		freeBufs.writers[n-1] = nil
		freeBufs.writers = freeBufs.writers[:n-1]
	}
	freeBufs.Unlock()
	if br == nil {
		br = bufio.NewReaderSize(nil, c.R.bufSize)
	}
	if bw == nil {
		bw = bufio.NewWriterSize(nil, ClientBufferSize)
	}
	br.Reset(c.R.src)
	bw.Reset(c.tw)
	c.R.br, c.W = br, bw
}

// BuffersDropped reports whether DropBuffers took the Conn's buffers.
func (c *Conn) BuffersDropped() bool { return c.det.on || c.R.br == nil }

// IsTimeout reports whether err is a deadline's timeout (a read or write
// that a deadline interrupted).
func IsTimeout(err error) bool { return isTimeout(err) }

// detached is what a Conn keeps while Detach has taken its socket, to
// rebuild the rest in Attach.
type detached struct {
	budget   *MemoryBudget
	maxBody  int
	wtimeout time.Duration
	bufSize  int32
	fd       int32
	// on: the Conn is detached; reattached: Attach made it a new
	// net.Conn (the one given to NewConn is closed).
	on, reattached bool
}

// ErrNotDetachable is Detach's error for a Conn that cannot give up its
// socket now: not a plain TCP or Unix socket, or bytes are buffered,
// half-read or unflushed.
var ErrNotDetachable = errors.New("connection cannot be detached now")

// Detach reduces an idle Conn to its socket's file descriptor, for a
// connection that waits a long time for its peer: it duplicates the
// descriptor (close-on-exec, same open file, so nothing the peer sends is
// lost), closes the net.Conn (which takes the socket out of the runtime's
// netpoller and frees its poll descriptor, addresses and I/O state), gives
// its buffers to the free lists (see DropBuffers) and drops its Reader and
// writers. The Conn keeps only what Attach needs: the descriptor, the
// Reader's budget and size cap, and the write timeout. It returns the
// descriptor, which stays owned by the Conn (Attach takes it back); it
// fails, changing nothing, with ErrNotDetachable when the Conn is not a
// plain socket or is not idle (see DropBuffers). While detached the Conn
// must not be read or written: its net.Conn is a placeholder whose I/O
// fails with net.ErrClosed and whose other methods do nothing. The
// goroutine that owns the Conn's I/O calls it (or someone holding the
// owner's lock while the owner is gone).
func (c *Conn) Detach() (int, error) {
	if c.det.on || c.R.br == nil || !c.R.InSync() || !c.R.Idle() || c.W.Buffered() > 0 || c.W.Flush() != nil {
		return -1, ErrNotDetachable
	}
	var sc syscall.Conn
	switch t := c.Conn.(type) {
	case *net.TCPConn:
		sc = t
	case *net.UnixConn:
		sc = t
	default:
		return -1, ErrNotDetachable
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return -1, fmt.Errorf("detach: %w", err)
	}
	fd, derr := -1, error(nil)
	if err := rc.Control(func(f uintptr) { fd, derr = unix.FcntlInt(f, unix.F_DUPFD_CLOEXEC, 0) }); err != nil {
		return -1, fmt.Errorf("detach: %w", err)
	}
	if derr != nil {
		return -1, fmt.Errorf("detach: dup: %w", derr)
	}
	if !c.DropBuffers() {
		_ = unix.Close(fd)
		return -1, ErrNotDetachable
	}
	c.det = detached{budget: c.R.budget, maxBody: c.R.maxBody, wtimeout: c.tw.d, bufSize: int32(c.R.bufSize),
		fd: int32(fd), on: true, reattached: c.det.reattached}
	_ = c.Conn.Close()
	c.Conn, c.R, c.W, c.tw = closedConn{}, nil, nil, nil
	return fd, nil
}

// Detached reports whether the Conn is detached (see Detach).
func (c *Conn) Detached() bool { return c.det.on }

// DetachedFd returns the descriptor a detached Conn holds (see Detach), or
// -1 when it is not detached. It stays owned by the Conn.
func (c *Conn) DetachedFd() int {
	if !c.det.on {
		return -1
	}
	return int(c.det.fd)
}

// Reattached reports whether Attach gave the Conn a net.Conn of its own:
// the one it was made with is closed, and the owner must close the Conn
// itself (Close) when it ends.
func (c *Conn) Reattached() bool { return c.det.reattached }

// Attach undoes Detach: it makes a net.Conn of the descriptor again
// (net.FileConn, which registers it with the runtime's netpoller), with
// new I/O state and buffers from the free lists, the same budget, size cap
// and write timeout. The Conn then reads and writes as before. If that
// fails (no descriptor left for the duplicate FileConn makes, say) the
// descriptor is closed, the Conn's I/O fails with net.ErrClosed, and the
// error is returned: the owner ends the connection. It does nothing to a
// Conn that is not detached. The same callers as Detach.
func (c *Conn) Attach() error {
	if !c.det.on {
		return nil
	}
	d := c.det
	c.det = detached{reattached: true}
	f := os.NewFile(uintptr(d.fd), "")
	var nc net.Conn = closedConn{}
	fc, err := net.FileConn(f)
	_ = f.Close()
	if err != nil {
		err = fmt.Errorf("attach: %w", err)
	} else {
		nc = fc
	}
	c.setup(nc, int(d.maxBody), int(d.bufSize))
	c.R.budget = d.budget
	c.tw.d = d.wtimeout
	c.RestoreBuffers()
	return err
}

// closedConn is the net.Conn of a detached Conn (and of one whose Attach
// failed): reads and writes fail with net.ErrClosed, the rest does
// nothing.
type closedConn struct{}

func (closedConn) Read([]byte) (int, error)         { return 0, net.ErrClosed }
func (closedConn) Write([]byte) (int, error)        { return 0, net.ErrClosed }
func (closedConn) Close() error                     { return nil }
func (closedConn) LocalAddr() net.Addr              { return closedAddr{} }
func (closedConn) RemoteAddr() net.Addr             { return closedAddr{} }
func (closedConn) SetDeadline(time.Time) error      { return nil }
func (closedConn) SetReadDeadline(time.Time) error  { return nil }
func (closedConn) SetWriteDeadline(time.Time) error { return nil }

// closedAddr is closedConn's address.
type closedAddr struct{}

func (closedAddr) Network() string { return "closed" }
func (closedAddr) String() string  { return "closed" }

// WaitReadable waits, without buffers, until the peer sends something,
// closes or fails, or a read deadline strikes, for a connection that may
// stay silent a long time (a client that has just logged in): it gives
// its read buffer (and the Reader's assembly buffer) and, when it holds
// nothing, its write buffer to the free lists first, and takes a read
// buffer back before it returns. Other goroutines may write to the Conn
// meanwhile, as they may while its owner waits in a read, provided they
// hold mu, the lock that orders every write to the Conn: WaitReadable
// drops and restores the writer under mu, and a WriteRaw that finds no
// writer takes one (see takeWriter). It consumes nothing: the next
// ReadMessage reads what arrived, or returns the end of file, error or
// timeout. It returns at once when bytes are buffered or the Conn is not
// a plain socket (raw I/O). Only the goroutine that owns the Conn's reads
// calls it, without mu.
func (c *Conn) WaitReadable(mu sync.Locker) {
	r, ok := c.R.src.(*rawIO)
	if !ok || c.det.on || c.R.br == nil || !c.R.Idle() {
		return
	}
	c.R.Release()
	c.R.small = nil
	br := c.R.br
	c.R.br = nil
	mu.Lock()
	bw := c.W
	if bw != nil && bw.Buffered() == 0 {
		c.W = nil
	} else {
		bw = nil
	}
	mu.Unlock()
	freeBufs.Lock()
	if c.R.bufSize == ClientBufferSize && len(freeBufs.readers) < maxFreeBuffers {
		br.Reset(nil)
		freeBufs.readers = append(freeBufs.readers, br)
	}
	if bw != nil && bw.Size() == ClientBufferSize && len(freeBufs.writers) < maxFreeBuffers {
		bw.Reset(nil)
		freeBufs.writers = append(freeBufs.writers, bw)
	}
	freeBufs.Unlock()
	br = nil
	r.waitReadable()
	freeBufs.Lock()
	if n := len(freeBufs.readers); n > 0 && c.R.bufSize == ClientBufferSize {
		br = freeBufs.readers[n-1]
		freeBufs.readers[n-1] = nil
		freeBufs.readers = freeBufs.readers[:n-1]
	}
	freeBufs.Unlock()
	if br == nil {
		br = bufio.NewReaderSize(nil, c.R.bufSize)
	}
	br.Reset(c.R.src)
	c.R.br = br
	mu.Lock()
	if c.W == nil {
		c.takeWriter()
	}
	mu.Unlock()
}

// takeWriter gives the Conn a write buffer from the free list (or a new
// one), after WaitReadable dropped it.
func (c *Conn) takeWriter() {
	var bw *bufio.Writer
	freeBufs.Lock()
	if n := len(freeBufs.writers); n > 0 {
		bw = freeBufs.writers[n-1]
		freeBufs.writers[n-1] = nil
		freeBufs.writers = freeBufs.writers[:n-1]
	}
	freeBufs.Unlock()
	if bw == nil {
		bw = bufio.NewWriterSize(nil, ClientBufferSize)
	}
	bw.Reset(c.tw)
	c.W = bw
}
