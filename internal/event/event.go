// Package event is the contract between the sources of statements (the
// live proxy in pooler, the log readers in querylog) and the analysis
// (analyzer, rules): Event, Sink, Kind, Protocol and Fingerprint. It is a
// leaf: it imports nothing of pgaudit's and no cgo, so the relay links
// neither pg_query nor the analyzer.
package event

import (
	"fmt"
	"strconv"
	"time"
)

// Kind says what an Event records.
type Kind uint8

const (
	// KindStatement is one executed statement: a statement of a simple Query
	// message, one Execute of the extended protocol (a portal run in several
	// parts counts once), or a COPY.
	KindStatement Kind = iota
	// KindSessionState records a statement that needs a session (LISTEN,
	// session advisory locks, temporary tables, WITH HOLD cursors, SQL
	// PREPARE) seen by a transaction-mode pool. Detail names the feature.
	KindSessionState
	// KindSessionEnd says that client session SessionID ended (the client
	// left or was disconnected); Start is when. It carries no statement.
	// The analyzer hands it only to observers that keep per-session state
	// (analyzer.SessionObserver), so they can close and forget the session
	// at once instead of after an idle timeout; it is never written to the
	// audit log, counted as a processed or dropped event, or fingerprinted.
	// A producer offers it after the session's last statement event.
	KindSessionEnd
)

// String returns the name used in the audit log.
func (k Kind) String() string {
	switch k {
	case KindStatement:
		return "statement"
	case KindSessionState:
		return "session_state"
	case KindSessionEnd:
		return "session_end"
	default:
		return "unknown"
	}
}

// Protocol says how a statement reached the server.
type Protocol uint8

const (
	// ProtocolSimple is a Query ('Q') message; literals are inline.
	ProtocolSimple Protocol = iota
	// ProtocolExtended is Parse/Bind/Execute; values travel as parameters.
	ProtocolExtended
	// ProtocolLog is a statement read back from a log file.
	ProtocolLog
)

// String returns the name used in the audit log.
func (p Protocol) String() string {
	switch p {
	case ProtocolSimple:
		return "simple"
	case ProtocolExtended:
		return "extended"
	case ProtocolLog:
		return "log"
	default:
		return "unknown"
	}
}

// Event is one statement as observed on the wire or read from a log.
//
// Producers fill every field they know and leave the rest zero; an Event is
// immutable once handed to a Sink. All strings and slices must be owned by
// the Event (copied out of any wire buffer) because the consumer keeps them
// after the producer has moved on.
type Event struct {
	Kind     Kind
	Protocol Protocol

	// Text is the statement text exactly as the client sent it (for a
	// multi-statement Query, just this statement). It may contain literals:
	// consumers must normalize it before writing it anywhere.
	Text string
	// Detail is a short machine word for KindSessionState events, such as
	// "listen", "advisory_lock", "temp_table", "with_hold", "prepare".
	Detail string

	// SessionID identifies the client session (not the server connection);
	// unique within one proxy process or one log file.
	SessionID uint64
	// TxSeq numbers the transactions of a session, starting at 1. Statements
	// outside an explicit transaction each get their own number.
	TxSeq uint64
	// InTransaction is true when the statement ran inside an explicit
	// transaction block (BEGIN ... COMMIT).
	InTransaction bool

	Database        string
	User            string
	ApplicationName string
	ClientAddr      string

	// Start is when the client's message arrived at the proxy.
	Start time.Time
	// Duration runs from Start to CommandComplete or ErrorResponse.
	Duration time.Duration
	// Wait is the time spent waiting for a server connection before the
	// statement could be sent (zero when one was already held).
	Wait time.Duration

	// Command is the verb of the command tag ("SELECT", "INSERT", "COPY").
	Command string
	// Rows is the row count from the command tag; -1 when unknown (log
	// formats that do not record it).
	Rows int64
	// SQLState is the error code when the statement failed, else empty.
	SQLState string

	// ParamHash is a hash of the bound parameter values (zero when there
	// are none), so rules can tell "same shape, different values" without
	// seeing the values.
	ParamHash uint64
	// NumParams is the number of bound parameters.
	NumParams int
	// Params holds the parameter values, only when the operator enabled
	// parameter capture: a text-format value as sent, a binary-format one
	// as BinaryParamPrefix followed by its bytes (decoded by type OID
	// before use, see DecodeParams). They must never be logged unless
	// log_parameters is on.
	Params []string

	// ResultHash is a keyed hash (hash/maphash, one random seed per proxy
	// process) of the DataRow messages the statement returned, for the
	// cache-candidate rule. The proxy computes it for a random sample of
	// executions only (see pooler.Config.ResultSampleEvery); zero means not
	// sampled, no rows, or a source that cannot see results (logs). It is
	// comparable only between events of one proxy process, and never
	// reveals the data.
	ResultHash uint64

	// TraceParent is the W3C traceparent of a sqlcommenter comment on the
	// statement, when present.
	TraceParent string

	// Fingerprint is the statement's query shape when the producer already
	// knows it, as a reader of pgaudit's own audit log does; the analyzer
	// then keeps it instead of fingerprinting Text, so shapes keep their
	// identity through a log round trip. Zero (the proxy and the Postgres
	// log readers) means the analyzer computes it from Text.
	Fingerprint Fingerprint
}

// BinaryParamPrefix starts an Event.Params value the client sent in binary
// format (the raw bytes follow). It is wire.BinaryParamPrefix: a text value
// never contains a NUL byte.
const BinaryParamPrefix = "\x00"

// Sink receives events. Offer must never block: an implementation that
// cannot take the event drops it and counts the drop. Offer is called
// concurrently from many client sessions.
type Sink interface {
	Offer(ev *Event)
}

// DiscardSink is a Sink that drops everything; it is used when auditing is
// off.
type DiscardSink struct{}

// Offer drops ev.
func (DiscardSink) Offer(*Event) {}

// Fingerprint identifies a query shape: pg_query's 64-bit fingerprint of the
// statement, which ignores literal values, parameter numbers, comments,
// whitespace and the length of constant lists (IN (1,2) and IN (1,2,3) share
// one). pg_query also gives "col = $1" and "col IN ($1, ...)" one
// fingerprint; pgaudit keeps them apart (a point lookup repeated per row and
// its batched form are different shapes for the rules), so a statement with
// an IN list has pg_query's fingerprint XOR inListMix. A statement pg_query
// cannot parse gets a fallback fingerprint (see analyzer.Shape.Fallback). Its text
// form is 16 lowercase hex digits.
type Fingerprint uint64

// String returns the fingerprint as 16 lowercase hex digits.
func (f Fingerprint) String() string {
	var b [16]byte
	return string(f.AppendHex(b[:0]))
}

// AppendHex appends the 16 lowercase hex digits of f to dst and returns
// the extended slice (no allocation when dst has room).
func (f Fingerprint) AppendHex(dst []byte) []byte {
	const hexDigits = "0123456789abcdef"
	for i := 60; i >= 0; i -= 4 {
		dst = append(dst, hexDigits[(uint64(f)>>uint(i))&0xf])
	}
	return dst
}

// MarshalText implements encoding.TextMarshaler (16 hex digits), so a
// Fingerprint is a JSON string and may be a JSON object key.
func (f Fingerprint) MarshalText() ([]byte, error) {
	return f.AppendHex(make([]byte, 0, 16)), nil
}

// UnmarshalText implements encoding.TextUnmarshaler; see ParseFingerprint.
func (f *Fingerprint) UnmarshalText(b []byte) error {
	v, err := ParseFingerprint(string(b))
	if err != nil {
		return err
	}
	*f = v
	return nil
}

// ParseFingerprint parses the hex form written by Fingerprint.String (1 to
// 16 hex digits).
func ParseFingerprint(s string) (Fingerprint, error) {
	if s == "" || len(s) > 16 {
		return 0, fmt.Errorf("invalid fingerprint %q: want 1 to 16 hex digits", s)
	}
	v, err := strconv.ParseUint(s, 16, 64)
	if err != nil {
		return 0, fmt.Errorf("invalid fingerprint %q: %w", s, err)
	}
	return Fingerprint(v), nil
}
