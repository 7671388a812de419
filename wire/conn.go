package wire

import (
	"bufio"
	"errors"
	"io"
	"net"
	"time"
)

// Conn is a framed protocol connection: a net.Conn with a message Reader and
// a buffered writer. Nothing written is sent until Flush. A Conn is used by
// one goroutine for reading and at most one for writing at a time.
type Conn struct {
	net.Conn
	R  *Reader
	W  *bufio.Writer
	tw *timedWriter
	// det is the state of a detached Conn (see Detach).
	det detached
}

// DefaultBufferSize is the read and write buffer size of NewConn, for
// server connections, which carry every client's traffic.
const DefaultBufferSize = 32 * 1024

// ClientBufferSize is the buffer size for client connections: a proxy may
// hold thousands, and PgBouncer's pkt_buf is 4 KiB.
const ClientBufferSize = 8 * 1024

// NewConn frames nc, capping incoming message bodies at maxBody bytes, with
// DefaultBufferSize buffers.
// Plain TCP and Unix sockets are read and written with raw system calls
// (see rawIO); other connections (TLS) through nc.
func NewConn(nc net.Conn, maxBody int) *Conn {
	return NewConnSize(nc, maxBody, DefaultBufferSize)
}

// NewConnSize is NewConn with read and write buffers of bufSize bytes.
// Buffers of ClientBufferSize bytes come from the free lists that Recycle
// and DropBuffers fill, when they hold some.
func NewConnSize(nc net.Conn, maxBody, bufSize int) *Conn {
	c := &Conn{}
	c.setup(nc, maxBody, bufSize)
	if bufSize == ClientBufferSize {
		if br, bw := takeFreeBuffers(); br != nil {
			br.Reset(c.R.src)
			bw.Reset(c.tw)
			c.R.br, c.W = br, bw
			return c
		}
	}
	c.R.br, c.W = bufio.NewReaderSize(c.R.src, bufSize), bufio.NewWriterSize(c.tw, bufSize)
	return c
}

// setup makes c's I/O state over nc: its Reader and timed writer, without
// buffers (NewConnSize and Attach add them).
func (c *Conn) setup(nc net.Conn, maxBody, bufSize int) {
	var rw io.ReadWriter = nc
	tw := &timedWriter{nc: nc, w: nc}
	if r := newRawIO(nc); r != nil {
		rw, tw.w, tw.raw = r, r, r
	}
	c.Conn, c.tw = nc, tw
	c.R = newReaderNoBuffer(rw, maxBody, bufSize)
}

// takeFreeBuffers returns a reader and a writer of ClientBufferSize bytes
// from the free lists, or nil, nil when either list is empty.
func takeFreeBuffers() (*bufio.Reader, *bufio.Writer) {
	freeBufs.Lock()
	defer freeBufs.Unlock()
	nr, nw := len(freeBufs.readers), len(freeBufs.writers)
	if nr == 0 || nw == 0 {
		return nil, nil
	}
	br, bw := freeBufs.readers[nr-1], freeBufs.writers[nw-1]
	freeBufs.readers[nr-1], freeBufs.writers[nw-1] = nil, nil
	freeBufs.readers, freeBufs.writers = freeBufs.readers[:nr-1], freeBufs.writers[:nw-1]
	return br, bw
}

// ErrConnRecycled is what a write to a Conn returns after Recycle.
var ErrConnRecycled = errors.New("pgaudit: write to a finished client connection")

// recycledWriter and recycledReader take the place of a recycled Conn's
// buffers. The writer has failed already (with ErrConnRecycled), so Write
// and Flush return that error without changing it: one value serves every
// recycled Conn, read-only, from any goroutine. Nothing reads the reader
// (see Recycle); it is never nil, so BuffersDropped stays false.
var (
	recycledWriter = func() *bufio.Writer {
		w := bufio.NewWriterSize(failingWriter{}, 16)
		_, _ = w.Write(make([]byte, 17)) // larger than the buffer: fails at once
		return w
	}()
	recycledReader = bufio.NewReaderSize(failingWriter{}, 16)
)

type failingWriter struct{}

func (failingWriter) Write([]byte) (int, error) { return 0, ErrConnRecycled }
func (failingWriter) Read([]byte) (int, error)  { return 0, ErrConnRecycled }

// Recycle ends the Conn's use of its buffers and gives buffers of
// ClientBufferSize bytes to the free lists, for the next NewConnSize:
// with a new connection per transaction, the two 8 KiB buffers of every
// client were most of what a login allocated. Unread and unflushed bytes
// are dropped. Afterwards every write fails with ErrConnRecycled, Flush
// too; the Conn must not be read again, and DropBuffers and
// RestoreBuffers do nothing to it. Only the goroutine that owns the Conn's
// I/O may call it, when the connection is finished, holding whatever lock
// other goroutines take to write to it (so that none is inside a write).
// It also releases what Release does.
func (c *Conn) Recycle() {
	c.R.Release()
	br, bw := c.R.br, c.W
	if br == nil || br == recycledReader {
		return // parked (DropBuffers) or recycled already
	}
	c.R.small = nil
	c.R.br, c.W = recycledReader, recycledWriter
	freeBufs.Lock()
	defer freeBufs.Unlock()
	if c.R.bufSize == ClientBufferSize && br.Size() == ClientBufferSize && bw.Size() == ClientBufferSize &&
		len(freeBufs.readers) < maxFreeBuffers && len(freeBufs.writers) < maxFreeBuffers {
		br.Reset(nil)
		bw.Reset(nil)
		freeBufs.readers = append(freeBufs.readers, br)
		freeBufs.writers = append(freeBufs.writers, bw)
	}
}

// SetWriteTimeout bounds every later write (WriteRaw that fills the
// buffer, Flush): a write that cannot hand its bytes to the kernel within
// d, because the peer does not read, fails with a timeout error
// (os.ErrDeadlineExceeded), and the writer stays failed. Zero turns the
// bound off. On plain sockets the clock starts only when the socket buffer
// is full, so writes that do not block cost nothing extra. It must be
// called by the goroutine that writes (or with writes excluded otherwise).
func (c *Conn) SetWriteTimeout(d time.Duration) { c.tw.d = d }

// timedWriter is the writer under W: it applies SetWriteTimeout.
type timedWriter struct {
	nc  net.Conn
	w   io.Writer
	raw *rawIO // nil unless w is raw socket I/O
	d   time.Duration
}

func (t *timedWriter) Write(p []byte) (int, error) {
	if t.d <= 0 {
		return t.w.Write(p)
	}
	if t.raw != nil {
		return t.raw.writeWithin(p, t.d)
	}
	_ = t.nc.SetWriteDeadline(time.Now().Add(t.d))
	n, err := t.w.Write(p)
	_ = t.nc.SetWriteDeadline(time.Time{})
	return n, err
}

// WriteRaw buffers b, a complete encoded message.
// A Conn whose owner waits in WaitReadable may have no writer: it takes
// one (the caller holds the lock WaitReadable was given).
func (c *Conn) WriteRaw(b []byte) error {
	if c.W == nil {
		if c.det.on {
			return net.ErrClosed
		}
		c.takeWriter()
	}
	_, err := c.W.Write(b)
	return err
}

// Flush sends everything buffered (nothing is, without a writer: see
// WaitReadable).
func (c *Conn) Flush() error {
	if c.W == nil {
		return nil
	}
	return c.W.Flush()
}

// SendError writes e as an ErrorResponse and flushes. It is used for errors
// that end the exchange; the caller closes the connection after a FATAL.
func (c *Conn) SendError(e *Error) error {
	if err := c.WriteRaw(e.AppendErrorResponse(nil)); err != nil {
		return err
	}
	return c.Flush()
}
