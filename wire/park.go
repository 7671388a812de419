package wire

import (
	"bufio"
	"sync"
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
// nothing when it has them. The same callers as DropBuffers.
func (c *Conn) RestoreBuffers() {
	if c.R.br != nil {
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
func (c *Conn) BuffersDropped() bool { return c.R.br == nil }

// IsTimeout reports whether err is a deadline's timeout (a read or write
// that a deadline interrupted).
func IsTimeout(err error) bool { return isTimeout(err) }
