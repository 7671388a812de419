package wire

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"testing"
	"time"
)

// queryMsg encodes a Query message.
func queryMsg(sql string) []byte {
	n := 4 + len(sql) + 1
	b := []byte{'Q', byte(n >> 24), byte(n >> 16), byte(n >> 8), byte(n)}
	b = append(b, sql...)
	return append(b, 0)
}

// tcpPair returns the two ends of a loopback TCP connection, the first
// framed with NewConn (raw socket I/O on Linux).
func tcpPair(t *testing.T, bufSize int) (*Conn, net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			close(accepted)
			return
		}
		accepted <- c
	}()
	nc, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	peer, ok := <-accepted
	if !ok {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { nc.Close(); peer.Close() })
	return NewConnSize(nc, 1<<24, bufSize), peer
}

// TestFlushAwaitReadable: the request arrives whole, the call returns only
// once the reply is readable (also when the peer answers at once), a
// request larger than the socket buffers is written in full, and an error
// while waiting is left to the next read.
func TestFlushAwaitReadable(t *testing.T) {
	tests := []struct {
		name      string
		size      int           // request message body bytes
		delay     time.Duration // before the peer answers
		noAnswer  bool          // the peer closes instead
		wantReply bool
	}{
		{name: "immediate reply", size: 10, wantReply: true},
		{name: "late reply", size: 10, delay: 50 * time.Millisecond, wantReply: true},
		{name: "request larger than socket buffers", size: 8 << 20, wantReply: true},
		{name: "peer closes", size: 10, noAnswer: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// The buffer holds the whole request, so that the flush
			// writes it (in parts when it exceeds the socket buffers).
			c, peer := tcpPair(t, max(DefaultBufferSize, tt.size+64))
			req := queryMsg(string(bytes.Repeat([]byte{'x'}, tt.size)))
			got := make(chan []byte, 1)
			go func() {
				buf := make([]byte, len(req))
				if _, err := io.ReadFull(peer, buf); err != nil {
					got <- nil
					return
				}
				got <- buf
				time.Sleep(tt.delay)
				if tt.noAnswer {
					peer.Close()
					return
				}
				_, _ = peer.Write(AppendReadyForQuery(nil, 'I'))
			}()
			if err := c.WriteRaw(req); err != nil {
				t.Fatal(err)
			}
			start := time.Now()
			if err := c.FlushAwaitReadable(); err != nil {
				t.Fatalf("FlushAwaitReadable: %v", err)
			}
			waited := time.Since(start)
			if b := <-got; !bytes.Equal(b, req) {
				t.Fatalf("peer got %d bytes, want the %d-byte request", len(b), len(req))
			}
			if tt.delay > 0 && waited < tt.delay {
				t.Errorf("returned after %v, before the reply (sent after %v)", waited, tt.delay)
			}
			typ, _, err := c.R.ReadMessage()
			if tt.wantReply {
				if err != nil || typ != 'Z' {
					t.Fatalf("read after the wait: %q, %v; want ReadyForQuery", typ, err)
				}
			} else if !errors.Is(err, io.EOF) {
				t.Fatalf("read after the peer closed: %q, %v; want EOF", typ, err)
			}
		})
	}
}

// TestFlushAwaitReadableDeadline: a read deadline that passes while waiting
// does not fail the write; the next read reports the timeout.
func TestFlushAwaitReadableDeadline(t *testing.T) {
	c, peer := tcpPair(t, DefaultBufferSize)
	go func() { _, _ = io.Copy(io.Discard, peer) }()
	if err := c.SetReadDeadline(time.Now().Add(30 * time.Millisecond)); err != nil {
		t.Fatal(err)
	}
	if err := c.WriteRaw(queryMsg("select 1")); err != nil {
		t.Fatal(err)
	}
	if err := c.FlushAwaitReadable(); err != nil {
		t.Fatalf("FlushAwaitReadable with a read deadline: %v", err)
	}
	if _, _, err := c.R.ReadMessage(); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read after the deadline: %v, want a timeout", err)
	}
}
