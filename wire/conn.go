package wire

import (
	"bufio"
	"io"
	"net"
)

// Conn is a framed protocol connection: a net.Conn with a message Reader and
// a buffered writer. Nothing written is sent until Flush. A Conn is used by
// one goroutine for reading and at most one for writing at a time.
type Conn struct {
	net.Conn
	R *Reader
	W *bufio.Writer
	// raw is the raw socket I/O under R and W, nil for TLS and non-Linux.
	raw *rawIO
	// flush is W.Flush as a func value, made once (FlushAwaitReadable).
	flush func() error
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
	var rw io.ReadWriter = nc
	raw := newRawIO(nc)
	if raw != nil {
		rw = raw
	}
	c := &Conn{Conn: nc, R: NewReaderSize(rw, maxBody, bufSize), W: bufio.NewWriterSize(rw, bufSize), raw: raw}
	c.flush = c.W.Flush
	return c
}

// WriteRaw buffers b, a complete encoded message.
func (c *Conn) WriteRaw(b []byte) error {
	_, err := c.W.Write(b)
	return err
}

// Flush sends everything buffered.
func (c *Conn) Flush() error { return c.W.Flush() }

// FlushAwaitReadable is Flush for a request whose reply the caller reads
// next: after the write it waits, parked in the netpoller, until the
// connection is readable, instead of letting the next read try first and
// fail with EAGAIN (the peer has rarely answered a microsecond after the
// request left). That saves a system call per request. The wait is armed
// before the write, so a reply that comes back at once is not missed.
//
// Readiness signalled before the call is forgotten (the netpoller's state
// is reset when the wait is armed), so the peer must be certain to send
// something, or close, after this write: a Postgres server answering a
// request is; a client, which may have pipelined everything it will ever
// send, is not. Only the connection's sole reader may call it, with no
// read in progress: it holds the read side while it waits. An error while
// waiting (deadline, close) is not returned; the next read reports it.
// Without raw socket I/O (TLS, non-Linux) it is Flush.
func (c *Conn) FlushAwaitReadable() error {
	if c.W.Buffered() == 0 {
		return nil
	}
	if c.raw == nil || c.R.Buffered() > 0 {
		return c.W.Flush()
	}
	return c.raw.awaitReadable(c.flush)
}

// SendError writes e as an ErrorResponse and flushes. It is used for errors
// that end the exchange; the caller closes the connection after a FATAL.
func (c *Conn) SendError(e *Error) error {
	if err := c.WriteRaw(e.AppendErrorResponse(nil)); err != nil {
		return err
	}
	return c.Flush()
}
