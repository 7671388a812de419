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

// NewConn frames nc, capping incoming message bodies at maxBody bytes.
// Plain TCP and Unix sockets are read and written with raw system calls
// (see rawIO); other connections (TLS) through nc.
func NewConn(nc net.Conn, maxBody int) *Conn {
	var rw io.ReadWriter = nc
	if r := newRawIO(nc); r != nil {
		rw = r
	}
	return &Conn{Conn: nc, R: NewReader(rw, maxBody), W: bufio.NewWriterSize(rw, 32*1024)}
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
