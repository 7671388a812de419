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
type Reader struct {
	br      *bufio.Reader
	buf     []byte
	maxBody int
	// desynced is set when an error interrupted a frame part-way.
	desynced bool
}

// InSync reports whether every error so far struck between frames, so the
// stream can still be read (after a read deadline, say).
func (r *Reader) InSync() bool { return !r.desynced }

// NewReader returns a Reader over r that rejects message bodies larger than
// maxBody bytes (DefaultMaxMessageSize when maxBody <= 0).
func NewReader(r io.Reader, maxBody int) *Reader {
	return NewReaderSize(r, maxBody, DefaultBufferSize)
}

// NewReaderSize is NewReader with a read buffer of bufSize bytes. Messages
// that fit in it are returned without copying; larger ones are assembled
// in a separate buffer.
func NewReaderSize(r io.Reader, maxBody, bufSize int) *Reader {
	if maxBody <= 0 {
		maxBody = DefaultMaxMessageSize
	}
	return &Reader{br: bufio.NewReaderSize(r, bufSize), maxBody: maxBody}
}

// Buffered reports how many bytes are buffered and not yet returned.
func (r *Reader) Buffered() int { return r.br.Buffered() }

// SetMaxBody changes the body size cap.
func (r *Reader) SetMaxBody(n int) { r.maxBody = n }

// ReadStartup reads one untyped startup-phase packet (StartupMessage,
// SSLRequest, GSSENCRequest or CancelRequest) and returns its body, which
// begins with the 4-byte request code.
func (r *Reader) ReadStartup() ([]byte, error) {
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
func (r *Reader) ReadMessage() (typ byte, raw []byte, err error) {
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
		r.desynced = true
		return typ, nil, unexpectedEOF(err)
	}
	return typ, raw, nil
}

func (r *Reader) fill(n int) ([]byte, error) {
	if cap(r.buf) < n {
		r.buf = make([]byte, n)
	}
	r.buf = r.buf[:n]
	if _, err := io.ReadFull(r.br, r.buf); err != nil {
		return nil, err
	}
	// Don't keep a huge buffer alive after one large message.
	out := r.buf
	if cap(r.buf) > 1<<20 {
		r.buf = nil
	}
	return out, nil
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
