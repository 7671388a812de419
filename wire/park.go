package wire

import (
	"bufio"
	"sync"
)

// Buffers of parked client connections (see DropBuffers) go back to these
// pools, so that thousands of idle clients hold none and a client that
// wakes up takes one that another client left.
var (
	parkedReaders = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, ClientBufferSize) }}
	parkedWriters = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, ClientBufferSize) }}
)

// DropBuffers gives up the connection's read and write buffers (and the
// Reader's message assembly buffers) when they hold nothing: no unread
// byte, no half-read frame, nothing unflushed and no failed write. It
// reports whether it did. After it the Conn must not be read or written
// until RestoreBuffers; only the goroutine that owns the Conn's I/O (or
// someone holding the owner's lock while the owner is gone) may call
// either. Buffers of ClientBufferSize bytes are recycled (sync.Pool).
func (c *Conn) DropBuffers() bool {
	if c.R.br == nil {
		return true
	}
	if !c.R.Idle() || c.W.Buffered() > 0 || c.W.Flush() != nil {
		return false
	}
	c.R.Release()
	c.R.small = nil
	if c.R.bufSize == ClientBufferSize {
		c.R.br.Reset(nil)
		parkedReaders.Put(c.R.br)
	}
	if c.W.Size() == ClientBufferSize {
		c.W.Reset(nil)
		parkedWriters.Put(c.W)
	}
	c.R.br, c.W = nil, nil
	return true
}

// RestoreBuffers gives the Conn buffers again after DropBuffers; it does
// nothing when it has them. The same callers as DropBuffers.
func (c *Conn) RestoreBuffers() {
	if c.R.br != nil {
		return
	}
	if c.R.bufSize == ClientBufferSize {
		c.R.br = parkedReaders.Get().(*bufio.Reader)
		c.R.br.Reset(c.R.src)
	} else {
		c.R.br = bufio.NewReaderSize(c.R.src, c.R.bufSize)
	}
	c.W = parkedWriters.Get().(*bufio.Writer)
	c.W.Reset(c.tw)
}

// BuffersDropped reports whether DropBuffers took the Conn's buffers.
func (c *Conn) BuffersDropped() bool { return c.R.br == nil }

// IsTimeout reports whether err is a deadline's timeout (a read or write
// that a deadline interrupted).
func IsTimeout(err error) bool { return isTimeout(err) }
