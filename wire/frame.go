// Package wire owns the Postgres frontend/backend protocol as bytes: message
// framing, startup negotiation, client authentication, server connections
// and error responses. It knows nothing about pools or the meaning of SQL.
package wire

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// DefaultMaxMessageSize is the default cap on one message body (64 MiB).
// Postgres itself accepts Query, Parse, Bind and CopyData up to about 1 GiB
// and most other messages up to 10,000 bytes.
const DefaultMaxMessageSize = 64 << 20

// maxStartupSize mirrors Postgres's MAX_STARTUP_PACKET_LENGTH.
const maxStartupSize = 10000

// MessageTooLargeError reports a length field above the reader's cap. After
// it the stream is out of sync and the connection must be closed.
type MessageTooLargeError struct {
	Type byte
	Size int
	Max  int
}

func (e *MessageTooLargeError) Error() string {
	if e.Type == 0 {
		return fmt.Sprintf("invalid startup packet length %d (max %d)", e.Size, e.Max)
	}
	return fmt.Sprintf("message of type %q is %d bytes, larger than the limit of %d", e.Type, e.Size, e.Max)
}

// ErrInvalidLength reports a length field smaller than the length field
// itself. The stream is out of sync after it.
var ErrInvalidLength = errors.New("invalid message length")

// Reader frames protocol messages from a stream. It reads through its own
// buffer; a message it returns aliases that buffer and stays valid only until
// the next call on the Reader. Copy whatever must outlive that.
//
// A Reader is not safe for concurrent use.
//
// A message that does not fit the read buffer is assembled in a separate
// buffer that grows with the bytes that arrive, never with the length the
// peer declares: it starts at no more than keepBufferSize bytes and doubles
// as it fills, up to the message's size, so it is never more than twice
// what arrived.
// A buffer larger than keepBufferSize is charged to the Reader's
// MemoryBudget (see SetBudget). It is kept for the next large message only
// while the peer keeps sending (the next bytes are already buffered or
// waiting on the socket, as in a COPY stream); a read that would wait for
// the peer drops it first, and its charge with it, so an idle connection
// holds no large buffer.
type Reader struct {
	br *bufio.Reader
	// pending reports, without blocking, whether the source has bytes
	// waiting (nil when the source cannot tell).
	pending func() bool
	// small is the assembly buffer kept between messages (at most
	// keepBufferSize bytes, not charged); big is the large one, charged to
	// budget.
	small, big []byte
	maxBody    int
	budget     *MemoryBudget
	// charged is what big holds of budget.
	charged int
	// desynced is set when an error interrupted a frame part-way.
	desynced bool
	// src and bufSize rebuild br after DropBuffers (see park.go).
	src     io.Reader
	bufSize int
	// part, partGot and partN hold a frame whose read a deadline
	// interrupted part-way (partN > 0): partGot of its partN bytes are in
	// part, and the next ReadMessage goes on from there, so a timeout
	// never desynchronizes the stream.
	part           []byte
	partGot, partN int
}

// pendingReader is a source that can tell whether bytes are waiting
// (rawIO: a non-blocking recv with MSG_PEEK).
type pendingReader interface{ pending() bool }

// keepBufferSize is the largest assembly buffer a Reader keeps between
// messages; it is not charged to the budget, as the read buffer is not.
const keepBufferSize = 16 << 10

// InSync reports whether every error so far struck between frames, so the
// stream can still be read (after a read deadline, say) and a connection
// can be handed to another user. It is false while a frame that a read
// deadline interrupted is half-read (see ReadMessage): reading on
// completes that frame, but the stream is not between frames.
func (r *Reader) InSync() bool { return !r.desynced && r.partN == 0 }

// NewReader returns a Reader over r that rejects message bodies larger than
// maxBody bytes (DefaultMaxMessageSize when maxBody <= 0).
func NewReader(r io.Reader, maxBody int) *Reader {
	return NewReaderSize(r, maxBody, DefaultBufferSize)
}

// NewReaderSize is NewReader with a read buffer of bufSize bytes. Messages
// that fit in it are returned without copying; larger ones are assembled
// in a separate buffer.
func NewReaderSize(r io.Reader, maxBody, bufSize int) *Reader {
	rd := newReaderNoBuffer(r, maxBody, bufSize)
	rd.br = bufio.NewReaderSize(r, bufSize)
	return rd
}

// newReaderNoBuffer is NewReaderSize without the read buffer (br nil: the
// caller adds one).
func newReaderNoBuffer(r io.Reader, maxBody, bufSize int) *Reader {
	if maxBody <= 0 {
		maxBody = DefaultMaxMessageSize
	}
	rd := &Reader{maxBody: maxBody, src: r, bufSize: bufSize}
	if pr, ok := r.(pendingReader); ok {
		rd.pending = pr.pending
	}
	return rd
}

// Buffered reports how many bytes are buffered and not yet returned.
// Bytes of a frame interrupted by a deadline (see Idle) are not counted.
func (r *Reader) Buffered() int {
	if r.br == nil {
		return 0
	}
	return r.br.Buffered()
}

// FrameBuffered reports whether a whole frame is buffered, so that the
// next ReadMessage returns it without reading from the source (and so
// without blocking).
func (r *Reader) FrameBuffered() bool {
	if r.br == nil || r.partN > 0 {
		return false
	}
	n := r.br.Buffered()
	if n < 5 {
		return false
	}
	hdr, _ := r.br.Peek(5)
	size := int(int32(binary.BigEndian.Uint32(hdr[1:5])))
	return size >= 4 && size+1 <= n
}

// Idle reports whether the Reader holds nothing unread: no buffered bytes
// and no frame half-read when a read deadline struck.
func (r *Reader) Idle() bool { return r.Buffered() == 0 && r.partN == 0 }

// SetMaxBody changes the body size cap.
func (r *Reader) SetMaxBody(n int) { r.maxBody = n }

// SetBudget makes the Reader charge the growth of its large-message buffer
// to b, shared with other Readers (nil: no limit). When a message would
// take b past its limit, ReadMessage returns a *BufferBudgetError. Call it
// before the first read, or to move the Reader to another budget: it
// releases the large buffer first, so the last message returned becomes
// invalid.
func (r *Reader) SetBudget(b *MemoryBudget) {
	r.Release()
	r.budget = b
}

// Release drops a large message buffer and returns its bytes to the
// budget. The owner calls it when it stops using the Reader; the last
// message returned becomes invalid. Reading again is allowed.
func (r *Reader) Release() {
	r.part, r.partGot, r.partN = nil, 0, 0
	r.big = nil
	if r.charged > 0 {
		r.budget.Release(int64(r.charged))
		r.charged = 0
	}
}

// ReadStartup reads one untyped startup-phase packet (StartupMessage,
// SSLRequest, GSSENCRequest or CancelRequest) and returns its body, which
// begins with the 4-byte request code.
func (r *Reader) ReadStartup() ([]byte, error) {
	r.Release()
	var hdr [4]byte
	if _, err := io.ReadFull(r.br, hdr[:]); err != nil {
		return nil, err
	}
	n := int(int32(binary.BigEndian.Uint32(hdr[:])))
	if n < 8 || n > maxStartupSize {
		return nil, &MessageTooLargeError{Size: n, Max: maxStartupSize}
	}
	body, err := r.fill(n - 4)
	if err != nil {
		return nil, unexpectedEOF(err)
	}
	return body, nil
}

// ReadMessage reads one typed message and returns its type and the raw
// frame (type byte, length, body), ready to forward unchanged. The body is
// raw[5:]. The frame aliases the Reader's buffer.
//
// A read deadline that strikes part-way through a frame returns the
// timeout error and keeps what arrived: the next call goes on with the same
// frame, so the stream stays in sync (InSync) and a deadline can be used to
// interrupt a read at any moment.
func (r *Reader) ReadMessage() (typ byte, raw []byte, err error) {
	if r.partN > 0 {
		typ, size := r.part[0], r.partN-5
		raw, err = r.fillFrom(r.part, r.partGot, r.partN)
		if err != nil {
			return r.fillFailed(typ, size, err)
		}
		return typ, raw, nil
	}
	// Drop the large buffer before waiting for the peer.
	if r.big != nil && r.br.Buffered() == 0 && (r.pending == nil || !r.pending()) {
		r.Release()
	}
	hdr, err := r.br.Peek(5)
	if err != nil {
		if len(hdr) > 0 {
			// The partial header stays buffered; the stream is intact.
			if errors.Is(err, io.EOF) {
				return 0, nil, io.ErrUnexpectedEOF
			}
			return 0, nil, err
		}
		return 0, nil, err
	}
	typ = hdr[0]
	n := int(int32(binary.BigEndian.Uint32(hdr[1:5])))
	if n < 4 {
		r.desynced = true
		return typ, nil, ErrInvalidLength
	}
	if n-4 > r.maxBody {
		r.desynced = true
		return typ, nil, &MessageTooLargeError{Type: typ, Size: n - 4, Max: r.maxBody}
	}
	// Fast path: the whole frame is already buffered.
	if n+1 <= r.br.Buffered() {
		frame, _ := r.br.Peek(n + 1)
		_, _ = r.br.Discard(n + 1)
		return typ, frame, nil
	}
	raw, err = r.fill(n + 1)
	if err != nil {
		return r.fillFailed(typ, n-4, err)
	}
	return typ, raw, nil
}

// fillFailed is ReadMessage's result when reading a frame's body failed:
// a timeout (the frame is kept, see ReadMessage) or a broken stream.
func (r *Reader) fillFailed(typ byte, size int, err error) (byte, []byte, error) {
	if r.partN > 0 {
		return typ, nil, err
	}
	r.desynced = true
	var be *BufferBudgetError
	if errors.As(err, &be) {
		be.Type, be.Size = typ, size
		return typ, nil, be
	}
	return typ, nil, unexpectedEOF(err)
}

// isTimeout reports whether err is a deadline's timeout.
func isTimeout(err error) bool {
	var te interface{ Timeout() bool }
	return errors.As(err, &te) && te.Timeout()
}

// fill reads the next n bytes into an assembly buffer and returns them.
// The buffer grows as bytes arrive (see Reader). On error the large buffer
// is dropped at once.
func (r *Reader) fill(n int) ([]byte, error) {
	var buf []byte
	switch want := min(n, keepBufferSize); {
	case r.big != nil && n > keepBufferSize:
		buf = r.big
	case cap(r.small) < want:
		r.small = make([]byte, want)
		buf = r.small
	default:
		buf = r.small[:cap(r.small)]
	}
	return r.fillFrom(buf, 0, n)
}

// fillFrom goes on filling buf, which holds got of the n bytes wanted.
func (r *Reader) fillFrom(buf []byte, got, n int) ([]byte, error) {
	r.part, r.partGot, r.partN = nil, 0, 0
	for got < n {
		if got == len(buf) {
			size := min(n, 2*len(buf))
			if err := r.charge(size); err != nil {
				r.Release()
				return nil, err
			}
			grown := make([]byte, size)
			copy(grown, buf[:got])
			buf, r.big = grown, grown
		}
		m, err := r.br.Read(buf[got:min(len(buf), n)])
		got += m
		if err != nil && got < n {
			if isTimeout(err) {
				r.part, r.partGot, r.partN = buf, got, n
				return nil, err
			}
			r.Release()
			return nil, err
		}
	}
	return buf[:n], nil
}

// charge makes the budget cover a large buffer of size bytes, which
// replaces big.
func (r *Reader) charge(size int) error {
	if size > r.charged {
		if !r.budget.Reserve(int64(size - r.charged)) {
			return &BufferBudgetError{Budget: r.budget, Limit: r.budget.Limit()}
		}
		r.charged = size
	}
	return nil
}

func unexpectedEOF(err error) error {
	if errors.Is(err, io.EOF) {
		return io.ErrUnexpectedEOF
	}
	return err
}

// AppendHeader appends a message header for type typ and a body of bodyLen
// bytes.
func AppendHeader(dst []byte, typ byte, bodyLen int) []byte {
	dst = append(dst, typ)
	return binary.BigEndian.AppendUint32(dst, uint32(bodyLen+4))
}
