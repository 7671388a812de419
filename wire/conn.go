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
	if r := newRawIO(nc); r != nil {
		rw = r
	}
	return &Conn{Conn: nc, R: NewReaderSize(rw, maxBody, bufSize), W: bufio.NewWriterSize(rw, bufSize)}
}

// WriteRaw buffers b, a complete encoded message.
func (c *Conn) WriteRaw(b []byte) error {
	_, err := c.W.Write(b)
	return err
}

// Flush sends everything buffered.
func (c *Conn) Flush() error { return c.W.Flush() }

// SendError writes e as an ErrorResponse and flushes. It is used for errors
// that end the exchange; the caller closes the connection after a FATAL.
func (c *Conn) SendError(e *Error) error {
	if err := c.WriteRaw(e.AppendErrorResponse(nil)); err != nil {
		return err
	}
	return c.Flush()
}
