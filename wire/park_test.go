package wire

import (
	"bytes"
	"io"
	"net"
	"sync"
	"testing"
	"time"
)

// clientConnPair is connPair with ClientBufferSize buffers (a proxy's
// client connection).
func clientConnPair(t *testing.T) (*Conn, net.Conn) {
	t.Helper()
	c, peer := connPair(t)
	return NewConnSize(c.Conn, 0, ClientBufferSize), peer
}

// TestReadMessageDeadlineMidFrame: a read deadline that strikes while a
// frame is half-read returns a timeout and loses nothing (InSync is false
// only until the frame is complete); the next ReadMessage returns the
// whole frame. Frames larger and smaller
// than the read buffer, and a deadline within the header.
func TestReadMessageDeadlineMidFrame(t *testing.T) {
	for _, tc := range []struct {
		name  string
		size  int // body size
		first int // bytes sent before the deadline
	}{
		{"header split", 100, 3},
		{"small body split", 100, 40},
		{"large body split", 3 * ClientBufferSize, ClientBufferSize + 17},
		{"assembly buffer split", 40 << 10, 30 << 10},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, peer := clientConnPair(t)
			frame := queryFrame(tc.size)
			next := queryFrame(10)
			if _, err := peer.Write(frame[:tc.first]); err != nil {
				t.Fatal(err)
			}
			for range 2 { // twice: a second timeout on the same frame
				_ = c.SetReadDeadline(time.Now().Add(30 * time.Millisecond))
				_, _, err := c.R.ReadMessage()
				if !IsTimeout(err) {
					t.Fatalf("want a timeout, got %v", err)
				}
				if c.R.Idle() || c.R.InSync() != (tc.first < 5) {
					t.Fatalf("after the timeout: in sync %v, idle %v; want not idle, in sync only between frames", c.R.InSync(), c.R.Idle())
				}
			}
			_ = c.SetReadDeadline(time.Time{})
			if _, err := peer.Write(append(frame[tc.first:], next...)); err != nil {
				t.Fatal(err)
			}
			for _, want := range [][]byte{frame, next} {
				typ, raw, err := c.R.ReadMessage()
				if err != nil || typ != 'Q' || !bytes.Equal(raw, want) {
					t.Fatalf("got %q %d bytes, %v; want the %d-byte frame", typ, len(raw), err, len(want))
				}
			}
			if !c.R.Idle() || !c.R.InSync() {
				t.Fatal("reader not idle and in sync after the frames")
			}
		})
	}
}

// TestDropRestoreBuffers: DropBuffers refuses while anything is unread or
// unflushed, and after RestoreBuffers the Conn reads and writes as before.
func TestDropRestoreBuffers(t *testing.T) {
	c, peer := clientConnPair(t)
	if _, err := peer.Write(append(queryFrame(10), queryFrame(20)...)); err != nil {
		t.Fatal(err)
	}
	if _, _, err := c.R.ReadMessage(); err != nil {
		t.Fatal(err)
	}
	if c.DropBuffers() {
		t.Fatal("dropped buffers holding an unread frame")
	}
	if _, _, err := c.R.ReadMessage(); err != nil {
		t.Fatal(err)
	}
	if err := c.WriteRaw([]byte("Z\x00\x00\x00\x05I")); err != nil {
		t.Fatal(err)
	}
	if c.DropBuffers() {
		t.Fatal("dropped buffers holding unflushed bytes")
	}
	if err := c.Flush(); err != nil {
		t.Fatal(err)
	}
	if !c.DropBuffers() || !c.BuffersDropped() {
		t.Fatal("buffers of an idle Conn not dropped")
	}
	if c.R.Buffered() != 0 || !c.R.Idle() {
		t.Fatal("a parked Reader reports buffered bytes")
	}
	c.RestoreBuffers()
	if c.BuffersDropped() {
		t.Fatal("buffers not restored")
	}
	frame := queryFrame(ClientBufferSize * 2)
	if _, err := peer.Write(frame); err != nil {
		t.Fatal(err)
	}
	if _, raw, err := c.R.ReadMessage(); err != nil || !bytes.Equal(raw, frame) {
		t.Fatalf("after RestoreBuffers: %d bytes, %v", len(raw), err)
	}
	if err := c.WriteRaw([]byte("Z\x00\x00\x00\x05I")); err != nil {
		t.Fatal(err)
	}
	if err := c.Flush(); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 6)
	if _, err := peer.Read(got); err != nil || string(got) != "Z\x00\x00\x00\x05I" {
		t.Fatalf("peer got %q, %v", got, err)
	}
}

// TestDetachAttach: Detach refuses while anything is unread or unflushed;
// a detached Conn keeps only the descriptor (its I/O fails, nothing the
// peer sent meanwhile is lost), and after Attach the Conn reads and writes
// as before, with the same size cap, budget and write timeout.
func TestDetachAttach(t *testing.T) {
	c, peer := clientConnPair(t)
	budget := NewMemoryBudget(1 << 20)
	c.R.SetBudget(budget)
	c.R.SetMaxBody(1 << 16)
	c.SetWriteTimeout(3 * time.Second)
	if _, err := peer.Write(queryFrame(10)); err != nil {
		t.Fatal(err)
	}
	// Wait until the frame is in the Reader's buffer.
	if _, _, err := c.R.ReadMessage(); err != nil {
		t.Fatal(err)
	}
	if err := c.WriteRaw([]byte("Z\x00\x00\x00\x05I")); err != nil {
		t.Fatal(err)
	}
	c.W.Flush()
	got := make([]byte, 6)
	if _, err := peer.Read(got); err != nil {
		t.Fatal(err)
	}
	if _, err := peer.Write(append(queryFrame(10), queryFrame(20)...)); err != nil {
		t.Fatal(err)
	}
	if _, _, err := c.R.ReadMessage(); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Detach(); err == nil {
		t.Fatal("detached a Conn holding an unread frame")
	}
	if _, _, err := c.R.ReadMessage(); err != nil {
		t.Fatal(err)
	}
	fd, err := c.Detach()
	if err != nil || fd < 0 || !c.Detached() || !c.BuffersDropped() {
		t.Fatalf("Detach of an idle Conn: fd %d, %v", fd, err)
	}
	if _, err := c.Detach(); err == nil {
		t.Fatal("detached twice")
	}
	if _, err := c.Read(make([]byte, 1)); err == nil {
		t.Fatal("a detached Conn reads")
	}
	// The peer writes while detached: the bytes wait in the socket.
	frame := queryFrame(ClientBufferSize * 2)
	if _, err := peer.Write(frame); err != nil {
		t.Fatal(err)
	}
	if err := c.Attach(); err != nil {
		t.Fatal(err)
	}
	if c.Detached() || c.BuffersDropped() || !c.Reattached() {
		t.Fatal("not attached after Attach")
	}
	if c.R.budget != budget || c.R.maxBody != 1<<16 || c.tw.d != 3*time.Second {
		t.Fatalf("after Attach: budget %p (want %p), maxBody %d, write timeout %v", c.R.budget, budget, c.R.maxBody, c.tw.d)
	}
	if _, raw, err := c.R.ReadMessage(); err != nil || !bytes.Equal(raw, frame) {
		t.Fatalf("after Attach: %d bytes, %v", len(raw), err)
	}
	if err := c.WriteRaw([]byte("Z\x00\x00\x00\x05I")); err != nil {
		t.Fatal(err)
	}
	if err := c.Flush(); err != nil {
		t.Fatal(err)
	}
	if _, err := peer.Read(got); err != nil || string(got) != "Z\x00\x00\x00\x05I" {
		t.Fatalf("peer got %q, %v", got, err)
	}
	// The peer's close reaches the attached Conn.
	peer.Close()
	if _, _, err := c.R.ReadMessage(); err == nil {
		t.Fatal("no error after the peer closed")
	}
	c.Close()
}

// BenchmarkDetachAttach is the cost of parking and resuming a client
// socket (wire.Conn.Detach, then Attach), system calls included.
func BenchmarkDetachAttach(b *testing.B) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	peer, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		b.Fatal(err)
	}
	defer peer.Close()
	nc, err := ln.Accept()
	if err != nil {
		b.Fatal(err)
	}
	c := NewConnSize(nc, 0, ClientBufferSize)
	defer c.Close()
	for b.Loop() {
		if _, err := c.Detach(); err != nil {
			b.Fatal(err)
		}
		if err := c.Attach(); err != nil {
			b.Fatal(err)
		}
	}
}

// TestWaitReadable: WaitReadable returns when the peer sends (the frame is
// then read whole), when a read deadline strikes (the next read reports
// the timeout) and when the peer closes (the next read reports EOF), with
// the Conn's buffers back each time, and the Conn can be written while it
// waits; with bytes buffered it returns at once.
func TestWaitReadable(t *testing.T) {
	for _, tc := range []struct {
		name string
		act  func(c *Conn, peer net.Conn) error
		want func(err error) bool
	}{
		{"message", func(_ *Conn, peer net.Conn) error { _, err := peer.Write(queryFrame(100)); return err },
			func(err error) bool { return err == nil }},
		{"deadline", func(c *Conn, _ net.Conn) error { return c.SetReadDeadline(time.Now().Add(50 * time.Millisecond)) },
			IsTimeout},
		{"close", func(_ *Conn, peer net.Conn) error { return peer.Close() },
			func(err error) bool { return err != nil && !IsTimeout(err) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, peer := clientConnPair(t)
			defer peer.Close()
			defer c.Close()
			var mu sync.Mutex
			done := make(chan struct{})
			go func() {
				defer close(done)
				c.WaitReadable(&mu)
			}()
			select {
			case <-done:
				t.Fatal("WaitReadable returned before anything happened")
			case <-time.After(100 * time.Millisecond):
			}
			// The Conn can be written meanwhile, under mu (others may
			// write to a client whose owner waits).
			mu.Lock()
			if err := c.WriteRaw([]byte("Z\x00\x00\x00\x05I")); err != nil {
				t.Fatal(err)
			}
			if err := c.Flush(); err != nil {
				t.Fatal(err)
			}
			mu.Unlock()
			got := make([]byte, 6)
			if _, err := io.ReadFull(peer, got); err != nil || string(got) != "Z\x00\x00\x00\x05I" {
				t.Fatalf("peer got %q, %v", got, err)
			}
			if err := tc.act(c, peer); err != nil {
				t.Fatal(err)
			}
			select {
			case <-done:
			case <-time.After(10 * time.Second):
				t.Fatal("WaitReadable still waiting")
			}
			if c.BuffersDropped() {
				t.Fatal("buffers not restored")
			}
			_, raw, err := c.R.ReadMessage()
			if !tc.want(err) {
				t.Fatalf("read after WaitReadable: %d bytes, %v", len(raw), err)
			}
		})
	}
	t.Run("buffered", func(t *testing.T) {
		c, peer := clientConnPair(t)
		defer peer.Close()
		defer c.Close()
		if _, err := peer.Write(append(queryFrame(10), queryFrame(20)...)); err != nil {
			t.Fatal(err)
		}
		if _, _, err := c.R.ReadMessage(); err != nil {
			t.Fatal(err)
		}
		var mu sync.Mutex
		// The second frame is buffered, or waits on the socket:
		// either way WaitReadable must not wait.
		done := make(chan struct{})
		go func() {
			defer close(done)
			c.WaitReadable(&mu)
		}()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Fatal("WaitReadable waits with a frame in hand")
		}
		if _, _, err := c.R.ReadMessage(); err != nil {
			t.Fatal(err)
		}
	})
}

// BenchmarkWaitReadable is what WaitReadable adds to a client's first
// read when its message is already there: the buffers' round trip through
// the free lists and one recv with MSG_PEEK.
func BenchmarkWaitReadable(b *testing.B) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	peer, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		b.Fatal(err)
	}
	defer peer.Close()
	nc, err := ln.Accept()
	if err != nil {
		b.Fatal(err)
	}
	c := NewConnSize(nc, 0, ClientBufferSize)
	defer c.Close()
	if _, err := peer.Write([]byte{'x'}); err != nil {
		b.Fatal(err)
	}
	var mu sync.Mutex
	for b.Loop() {
		c.WaitReadable(&mu)
	}
}
