package wire

import (
	"bufio"
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
func NewConnSize(nc net.Conn, maxBody, bufSize int) *Conn {
	c := &Conn{}
	c.setup(nc, maxBody, bufSize)
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
