package wire

import (
	"bytes"
	"errors"
	"io"
	"sync"
	"testing"
	"time"
)

// TestConnRecycle: after Recycle a Conn's writes and flushes fail with
// ErrConnRecycled and reach nobody, also when several goroutines write to
// recycled Conns at once; its buffers serve the next NewConnSize, whose
// peer receives only its own bytes and which reads what its peer sends;
// DropBuffers leaves a recycled Conn alone.
func TestConnRecycle(t *testing.T) {
	old, oldPeer := clientConnPair(t)
	if err := old.WriteRaw([]byte("before")); err != nil {
		t.Fatal(err)
	}
	if err := old.Flush(); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 6)
	if _, err := io.ReadFull(oldPeer, got); err != nil || string(got) != "before" {
		t.Fatalf("peer read %q, %v", got, err)
	}
	if err := old.WriteRaw([]byte("unflushed")); err != nil {
		t.Fatal(err)
	}
	bw := old.W
	old.Recycle()
	old.Recycle() // twice is harmless
	if old.BuffersDropped() || old.DropBuffers() {
		t.Fatalf("recycled conn: BuffersDropped %v; DropBuffers must refuse it", old.BuffersDropped())
	}
	var wg sync.WaitGroup
	for range 4 { // the recycled writer is shared: -race checks it is only read
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := old.WriteRaw([]byte("after")); !errors.Is(err, ErrConnRecycled) {
				t.Errorf("write after Recycle: %v", err)
			}
			if err := old.Flush(); !errors.Is(err, ErrConnRecycled) {
				t.Errorf("flush after Recycle: %v", err)
			}
		}()
	}
	wg.Wait()

	next, nextPeer := clientConnPair(t)
	if next.W != bw {
		t.Errorf("the next client connection did not get the recycled writer")
	}
	if next.W.Buffered() != 0 {
		t.Fatalf("recycled writer holds %d bytes of the previous connection", next.W.Buffered())
	}
	if err := next.WriteRaw([]byte("fresh")); err != nil {
		t.Fatal(err)
	}
	if err := next.Flush(); err != nil {
		t.Fatal(err)
	}
	_ = old.WriteRaw([]byte("late"))
	_ = old.Flush()
	_ = nextPeer.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	all, _ := io.ReadAll(nextPeer)
	if string(all) != "fresh" {
		t.Errorf("the next connection's peer received %q, want only %q", all, "fresh")
	}
	_ = oldPeer.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	if rest, _ := io.ReadAll(oldPeer); len(rest) != 0 {
		t.Errorf("the recycled connection's peer received %q after Recycle", rest)
	}

	// The next connection reads with the recycled reader.
	next2, peer2 := clientConnPair(t)
	frame := queryFrame(100)
	if _, err := peer2.Write(frame); err != nil {
		t.Fatal(err)
	}
	typ, raw, err := next2.R.ReadMessage()
	if err != nil || typ != 'Q' || !bytes.Equal(raw, frame) {
		t.Fatalf("read %q %d bytes, %v", typ, len(raw), err)
	}
}
