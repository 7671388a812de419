package wire

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
)

// Request codes of the untyped startup-phase packets.
const (
	ProtocolVersion30  uint32 = 3<<16 | 0
	ProtocolVersion32  uint32 = 3<<16 | 2
	sslRequestCode     uint32 = 1234<<16 | 5679
	gssEncRequestCode  uint32 = 1234<<16 | 5680
	cancelRequestCode  uint32 = 1234<<16 | 5678
	minProtocolVersion uint32 = 3 << 16
)

// StartupKind says which startup-phase packet was received.
type StartupKind uint8

const (
	// StartupMessageKind is a StartupMessage with protocol 3.x.
	StartupMessageKind StartupKind = iota + 1
	// SSLRequestKind asks for TLS; answer with one byte, 'S' or 'N'.
	SSLRequestKind
	// GSSENCRequestKind asks for GSSAPI encryption; answer 'N'.
	GSSENCRequestKind
	// CancelRequestKind carries a (pid, key) and gets no reply.
	CancelRequestKind
)

// Startup is a decoded startup-phase packet. Only the fields of its Kind are
// set. It owns all of its memory.
type Startup struct {
	Kind StartupKind
	// ProtocolVersion is the requested version (major<<16 | minor).
	ProtocolVersion uint32
	// Params are the StartupMessage parameters in arrival order.
	Params []Param
	// UnsupportedOptions lists "_pq_." protocol options the client asked
	// for; they are refused through NegotiateProtocolVersion.
	UnsupportedOptions []string
	// PID and Key identify the session a CancelRequest targets.
	PID uint32
	Key []byte
}

// Param is one startup parameter.
type Param struct{ Name, Value string }

// Get returns the value of the named startup parameter, or "".
func (s *Startup) Get(name string) string {
	for _, p := range s.Params {
		if p.Name == name {
			return p.Value
		}
	}
	return ""
}

// ErrProtocolVersion reports a StartupMessage with a protocol other than 3.x.
var ErrProtocolVersion = errors.New("unsupported frontend protocol")

// ParseStartup decodes the body returned by Reader.ReadStartup. It never
// panics on malformed input and returns an error that can be sent to the
// client as a 08P01 protocol violation.
func ParseStartup(body []byte) (*Startup, error) {
	if len(body) < 4 {
		return nil, fmt.Errorf("startup packet too short (%d bytes)", len(body))
	}
	code := binary.BigEndian.Uint32(body)
	rest := body[4:]
	switch code {
	case sslRequestCode:
		return &Startup{Kind: SSLRequestKind}, nil
	case gssEncRequestCode:
		return &Startup{Kind: GSSENCRequestKind}, nil
	case cancelRequestCode:
		// Protocol 3.0 keys are 4 bytes; 3.2 allows up to 256.
		if len(rest) < 8 || len(rest) > 4+256 {
			return nil, fmt.Errorf("invalid cancel request length %d", len(body))
		}
		return &Startup{Kind: CancelRequestKind, PID: binary.BigEndian.Uint32(rest), Key: bytes.Clone(rest[4:])}, nil
	}
	if code>>16 != 3 {
		return nil, fmt.Errorf("%w %d.%d: server supports 3.0 to 3.2", ErrProtocolVersion, code>>16, code&0xffff)
	}
	st := &Startup{Kind: StartupMessageKind, ProtocolVersion: code}
	for len(rest) > 0 {
		if rest[0] == 0 {
			if len(rest) != 1 {
				return nil, errors.New("invalid startup packet layout: expected terminator as last byte")
			}
			break
		}
		name, r1, ok := cutString(rest)
		if !ok {
			return nil, errors.New("invalid startup packet layout: unterminated parameter name")
		}
		value, r2, ok := cutString(r1)
		if !ok {
			return nil, errors.New("invalid startup packet layout: missing value for parameter " + quoteIdent(name))
		}
		rest = r2
		if len(rest) == 0 {
			return nil, errors.New("invalid startup packet layout: expected terminator as last byte")
		}
		if len(name) >= 5 && name[:5] == "_pq_." {
			st.UnsupportedOptions = append(st.UnsupportedOptions, name)
			continue
		}
		st.Params = append(st.Params, Param{Name: name, Value: value})
	}
	if st.Get("user") == "" {
		return nil, errors.New("no PostgreSQL user name specified in startup packet")
	}
	return st, nil
}

func cutString(b []byte) (string, []byte, bool) {
	i := bytes.IndexByte(b, 0)
	if i < 0 {
		return "", nil, false
	}
	return string(b[:i]), b[i+1:], true
}

func quoteIdent(s string) string { return "\"" + s + "\"" }

// AppendNegotiateProtocolVersion appends a NegotiateProtocolVersion message
// offering protocol 3.0 (or newest, when it is 3.x) and listing options the
// proxy does not support.
func AppendNegotiateProtocolVersion(dst []byte, newest uint32, unsupported []string) []byte {
	start := len(dst)
	dst = append(dst, MsgNegotiateProtocolVersion, 0, 0, 0, 0)
	dst = binary.BigEndian.AppendUint32(dst, newest)
	dst = binary.BigEndian.AppendUint32(dst, uint32(len(unsupported)))
	for _, o := range unsupported {
		dst = append(dst, o...)
		dst = append(dst, 0)
	}
	binary.BigEndian.PutUint32(dst[start+1:], uint32(len(dst)-start-1))
	return dst
}

// AppendCancelRequest appends the 16-byte-or-longer CancelRequest packet.
func AppendCancelRequest(dst []byte, pid uint32, key []byte) []byte {
	dst = binary.BigEndian.AppendUint32(dst, uint32(12+len(key)))
	dst = binary.BigEndian.AppendUint32(dst, cancelRequestCode)
	dst = binary.BigEndian.AppendUint32(dst, pid)
	return append(dst, key...)
}
