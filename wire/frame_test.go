package wire

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"testing"
	"time"

	"github.com/pgaudit-proxy/pgaudit/internal/testutil"
)

// queryFrame returns a Query frame whose body is size bytes.
func queryFrame(size int) []byte {
	f := binary.BigEndian.AppendUint32([]byte{'Q'}, uint32(size+4))
	body := bytes.Repeat([]byte{'x'}, size)
	body[size-1] = 0
	return append(f, body...)
}

type readResult struct {
	typ byte
	raw []byte
	err error
}

// readAsync runs one ReadMessage in a goroutine.
func readAsync(r *Reader) <-chan readResult {
	ch := make(chan readResult, 1)
	go func() {
		typ, raw, err := r.ReadMessage()
		ch <- readResult{typ, bytes.Clone(raw), err}
	}()
	return ch
}

// waitUsed waits until b has at least n bytes reserved.
func waitUsed(t *testing.T, b *MemoryBudget, n int64) {
	t.Helper()
	if !testutil.Within(10*time.Second, func() bool { return b.Used() >= n }) {
		t.Fatalf("budget used %d, want at least %d", b.Used(), n)
	}
}

// TestReaderGrowsWithBytes: a message's buffer follows the bytes that
// arrived, not the length claimed, and is given back once the message has
// been consumed.
func TestReaderGrowsWithBytes(t *testing.T) {
	pr, pw := io.Pipe()
	defer pr.Close()
	budget := NewMemoryBudget(256 << 20)
	r := NewReaderSize(pr, 0, ClientBufferSize)
	r.SetBudget(budget)
	frame := queryFrame(DefaultMaxMessageSize)
	done := readAsync(r)
	if _, err := pw.Write(frame[:100]); err != nil {
		t.Fatal(err)
	}
	// io.Pipe returns from Write once the reader took the bytes. Nothing
	// is charged: the buffer is at most keepBufferSize.
	if budget.Used() != 0 {
		t.Fatalf("after 100 bytes of a 64 MiB message: %d bytes charged", budget.Used())
	}
	if _, err := pw.Write(frame[100 : 1<<20]); err != nil {
		t.Fatal(err)
	}
	if used := budget.Used(); used < 1<<20 || used > 2<<20 {
		t.Fatalf("after 1 MiB: %d bytes charged", used)
	}
	go func() { _, _ = pw.Write(frame[1<<20:]) }()
	res := <-done
	if res.err != nil || res.typ != 'Q' || !bytes.Equal(res.raw, frame) {
		t.Fatalf("ReadMessage: %q, %d bytes, %v", res.typ, len(res.raw), res.err)
	}
	if used := budget.Used(); used != int64(len(frame)) {
		t.Fatalf("with the message in hand: %d bytes charged, want %d", used, len(frame))
	}
	// The next read drops the buffer before it waits.
	done = readAsync(r)
	if _, err := pw.Write([]byte{'S', 0, 0, 0}); err != nil {
		t.Fatal(err)
	}
	if budget.Used() != 0 {
		t.Fatalf("while waiting for the next message: %d bytes charged", budget.Used())
	}
	if _, err := pw.Write([]byte{4}); err != nil {
		t.Fatal(err)
	}
	if res := <-done; res.err != nil || res.typ != 'S' {
		t.Fatalf("Sync: %q %v", res.typ, res.err)
	}
}

// TestReaderBudgetExceeded: the Reader whose growth would pass the shared
// limit fails with *BufferBudgetError; the one holding bytes is unaffected;
// everything is given back.
func TestReaderBudgetExceeded(t *testing.T) {
	budget := NewMemoryBudget(1 << 20)
	holderIn, holderOut := io.Pipe()
	holder := NewReaderSize(holderIn, 0, ClientBufferSize)
	holder.SetBudget(budget)
	held := queryFrame(700 << 10)
	holderDone := readAsync(holder)
	if _, err := holderOut.Write(held[:600<<10]); err != nil {
		t.Fatal(err)
	}
	waitUsed(t, budget, 600<<10)

	big := queryFrame(8 << 20)
	offender := NewReaderSize(bytes.NewReader(big), 0, ClientBufferSize)
	offender.SetBudget(budget)
	_, _, err := offender.ReadMessage()
	var be *BufferBudgetError
	if !errors.As(err, &be) || be.Type != 'Q' || be.Size != 8<<20 || be.Limit != 1<<20 {
		t.Fatalf("want a BufferBudgetError for Q of 8 MiB with limit 1 MiB, got %v", err)
	}
	if offender.InSync() {
		t.Error("a Reader stopped mid-message reports InSync")
	}
	if want := `message of type 'Q' (8388608 bytes): buffered client bytes exceed the budget of 1 MiB`; err.Error() != want {
		t.Errorf("error %q, want %q", err, want)
	}
	// The offender's charge was given back at once; the holder's is there.
	if used := budget.Used(); used < 600<<10 || used > 1<<20 {
		t.Fatalf("after the failure: %d bytes charged", used)
	}

	go func() { _, _ = holderOut.Write(held[600<<10:]) }()
	res := <-holderDone
	if res.err != nil || !bytes.Equal(res.raw, held) {
		t.Fatalf("holder: %d bytes, %v", len(res.raw), res.err)
	}
	holder.Release()
	if used := budget.Used(); used != 0 {
		t.Fatalf("after Release: %d bytes charged", used)
	}
	// A nil budget has no limit.
	free := NewReaderSize(bytes.NewReader(big), 0, ClientBufferSize)
	if _, raw, err := free.ReadMessage(); err != nil || len(raw) != len(big) {
		t.Fatalf("without a budget: %d bytes, %v", len(raw), err)
	}
}

func TestFormatBytes(t *testing.T) {
	for n, want := range map[int64]string{256 << 20: "256 MiB", 1 << 30: "1 GiB", 64 << 10: "64 KiB", 1000: "1000 bytes", 0: "0 bytes", 3<<20 + 1: "3145729 bytes"} {
		if got := FormatBytes(n); got != want {
			t.Errorf("FormatBytes(%d) = %q, want %q", n, got, want)
		}
	}
}

// loopReader serves the same bytes forever, like a socket with a client
// streaming messages (more is always pending).
type loopReader struct {
	data []byte
	off  int
}

func (l *loopReader) pending() bool { return true }

func (l *loopReader) Read(p []byte) (int, error) {
	n := copy(p, l.data[l.off:])
	l.off = (l.off + n) % len(l.data)
	return n, nil
}

// BenchmarkReaderLargeMessages reads CopyData-sized messages (pgx's
// CopyFrom sends about 64 KiB per message) through a client Reader with a
// budget.
func BenchmarkReaderLargeMessages(b *testing.B) {
	for _, size := range []int{12 << 10, 64 << 10, 1 << 20} {
		b.Run(FormatBytes(int64(size)), func(b *testing.B) {
			frame := queryFrame(size)
			r := NewReaderSize(&loopReader{data: frame}, 0, ClientBufferSize)
			r.SetBudget(NewMemoryBudget(0))
			b.SetBytes(int64(len(frame)))
			b.ReportAllocs()
			for b.Loop() {
				if _, _, err := r.ReadMessage(); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// streamReader is a bytes.Reader that reports pending bytes, as rawIO does
// for a socket with data waiting.
type streamReader struct{ *bytes.Reader }

func (s streamReader) pending() bool { return s.Len() > 0 }

// TestReaderKeepsBufferWhileStreaming: between large messages that keep
// coming the buffer (and its charge) is kept and reused; when the peer has
// nothing more to send, it is dropped before the Reader waits.
func TestReaderKeepsBufferWhileStreaming(t *testing.T) {
	one := queryFrame(64 << 10)
	stream := bytes.Repeat(one, 3)
	budget := NewMemoryBudget(0)
	r := NewReaderSize(streamReader{bytes.NewReader(stream)}, 0, ClientBufferSize)
	r.SetBudget(budget)
	var first []byte
	for i := 0; i < 3; i++ {
		_, raw, err := r.ReadMessage()
		if err != nil || !bytes.Equal(raw, one) {
			t.Fatalf("message %d: %d bytes, %v", i, len(raw), err)
		}
		if used := budget.Used(); used != int64(len(one)) {
			t.Fatalf("message %d: %d bytes charged, want %d", i, used, len(one))
		}
		if i == 0 {
			first = raw
		} else if &raw[0] != &first[0] {
			t.Fatalf("message %d was assembled in a new buffer", i)
		}
	}
	if _, _, err := r.ReadMessage(); !errors.Is(err, io.EOF) {
		t.Fatalf("at the end: %v", err)
	}
	if used := budget.Used(); used != 0 {
		t.Fatalf("after the stream ended: %d bytes charged", used)
	}
}

// TestReaderSmallBuffersStaySmall: a connection that sends only small
// messages keeps no more than it needed (a client proxy may hold
// thousands).
func TestReaderSmallBuffersStaySmall(t *testing.T) {
	st := startupBody(ProtocolVersion30, "user", "alice", "database", "db")
	in := binary.BigEndian.AppendUint32(nil, uint32(len(st)+4))
	in = append(in, st...)
	in = append(in, queryFrame(9000)...)
	r := NewReaderSize(&chunkReader{r: bytes.NewReader(in), n: 4096}, 0, ClientBufferSize)
	if _, err := r.ReadStartup(); err != nil {
		t.Fatal(err)
	}
	if c := cap(r.small); c > len(st) {
		t.Fatalf("after a %d-byte startup packet the Reader keeps %d bytes", len(st), c)
	}
	if _, raw, err := r.ReadMessage(); err != nil || len(raw) != 9005 {
		t.Fatalf("9000-byte Query: %d bytes, %v", len(raw), err)
	}
	if c := cap(r.small); c != 9005 || r.big != nil {
		t.Fatalf("after a 9005-byte frame the Reader keeps %d bytes (big %d)", c, cap(r.big))
	}
}

// onceReader returns its bytes in one Read, then blocks the test: a
// Reader that reads again fails it.
type onceReader struct {
	t    *testing.T
	data []byte
}

// Read returns the bytes once; a second call is a test failure.
func (o *onceReader) Read(p []byte) (int, error) {
	if o.data == nil {
		o.t.Fatal("read from the source again: FrameBuffered said a frame was buffered")
	}
	n := copy(p, o.data)
	o.data = nil
	return n, nil
}

// TestFrameBuffered reads one burst of bytes (whole frames then a
// partial one) and checks after each frame that FrameBuffered says
// whether the next is whole, and that a frame it calls whole is read
// without reading the source again.
func TestFrameBuffered(t *testing.T) {
	a, b := queryFrame(10), queryFrame(300)
	for _, tc := range []struct {
		name string
		data []byte
		want []bool // FrameBuffered after each ReadMessage
	}{
		{"two whole", append(bytes.Clone(a), b...), []bool{true, false}},
		{"partial header", append(bytes.Clone(a), b[:3]...), []bool{false}},
		{"header only", append(bytes.Clone(a), b[:5]...), []bool{false}},
		{"partial body", append(bytes.Clone(a), b[:len(b)-1]...), []bool{false}},
		{"empty body", append(bytes.Clone(a), 'S', 0, 0, 0, 4), []bool{true, false}},
		{"invalid length", append(bytes.Clone(a), 'S', 0, 0, 0, 3), []bool{false}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := NewReader(&onceReader{t: t, data: tc.data}, 0)
			if r.FrameBuffered() {
				t.Fatal("FrameBuffered before any read")
			}
			for i, want := range tc.want {
				if _, _, err := r.ReadMessage(); err != nil {
					t.Fatalf("frame %d: %v", i, err)
				}
				if got := r.FrameBuffered(); got != want {
					t.Fatalf("after frame %d: FrameBuffered %v, want %v", i, got, want)
				}
			}
		})
	}
}
