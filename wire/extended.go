package wire

import (
	"bytes"
	"encoding/binary"
	"errors"
	"hash/fnv"
)

// ErrMalformed reports a message whose body does not match its type.
var ErrMalformed = errors.New("malformed message")

// ParseMsg is a decoded Parse ('P') body. Name and Query are copies; Types is
// a view into the body (the int16 count and the OIDs) valid until the next
// read.
type ParseMsg struct {
	Name  string
	Query string
	Types []byte
}

// DecodeParse decodes a Parse body.
func DecodeParse(body []byte) (ParseMsg, error) {
	name, rest, ok := cut(body)
	if !ok {
		return ParseMsg{}, ErrMalformed
	}
	query, rest, ok := cut(rest)
	if !ok || len(rest) < 2 {
		return ParseMsg{}, ErrMalformed
	}
	n := int(binary.BigEndian.Uint16(rest))
	if len(rest) != 2+4*n {
		return ParseMsg{}, ErrMalformed
	}
	return ParseMsg{Name: string(name), Query: string(query), Types: rest}, nil
}

// AppendParse appends a Parse message naming the statement name.
func AppendParse(dst []byte, name, query string, types []byte) []byte {
	if len(types) == 0 {
		types = []byte{0, 0}
	}
	dst = AppendHeader(dst, MsgParse, len(name)+1+len(query)+1+len(types))
	dst = append(dst, name...)
	dst = append(dst, 0)
	dst = append(dst, query...)
	dst = append(dst, 0)
	return append(dst, types...)
}

// BindMsg is a decoded Bind ('B') header. Portal and Statement are views
// into the body; Rest is everything after the statement name.
type BindMsg struct {
	Portal    []byte
	Statement []byte
	Rest      []byte
}

// DecodeBind decodes the names at the start of a Bind body.
func DecodeBind(body []byte) (BindMsg, error) {
	portal, rest, ok := cut(body)
	if !ok {
		return BindMsg{}, ErrMalformed
	}
	stmt, rest, ok := cut(rest)
	if !ok {
		return BindMsg{}, ErrMalformed
	}
	return BindMsg{Portal: portal, Statement: stmt, Rest: rest}, nil
}

// BinaryParamPrefix starts a value BindParams keeps for a parameter sent
// in binary format: the prefix, then the raw bytes. A text-format value
// never contains a NUL byte, so the prefix is unambiguous; the consumer
// (the EXPLAIN sampler) decodes such values by their type OIDs.
const BinaryParamPrefix = "\x00"

// BindParams walks the parameters of a Bind (its Rest) and returns their
// count and an FNV-1a hash over their values and NULL-ness; when keep is
// true it also returns copies of the values (NULL as ""): text-format
// values as they are, binary-format ones as BinaryParamPrefix + bytes.
func BindParams(rest []byte, keep bool) (n int, hash uint64, values []string, err error) {
	if len(rest) < 2 {
		return 0, 0, nil, ErrMalformed
	}
	nf := int(binary.BigEndian.Uint16(rest))
	rest = rest[2:]
	if len(rest) < 2*nf+2 {
		return 0, 0, nil, ErrMalformed
	}
	formats := rest[:2*nf]
	rest = rest[2*nf:]
	n = int(binary.BigEndian.Uint16(rest))
	rest = rest[2:]
	h := fnv.New64a()
	var lenbuf [4]byte
	for i := 0; i < n; i++ {
		if len(rest) < 4 {
			return 0, 0, nil, ErrMalformed
		}
		l := int(int32(binary.BigEndian.Uint32(rest)))
		copy(lenbuf[:], rest[:4])
		rest = rest[4:]
		_, _ = h.Write(lenbuf[:])
		if l < 0 {
			if keep {
				values = append(values, "")
			}
			continue
		}
		if l > len(rest) {
			return 0, 0, nil, ErrMalformed
		}
		_, _ = h.Write(rest[:l])
		if keep {
			// Format codes: none (all text), one for all, or one each.
			binaryFmt := false
			switch {
			case nf == 1:
				binaryFmt = binary.BigEndian.Uint16(formats) == 1
			case nf > 1 && i < nf:
				binaryFmt = binary.BigEndian.Uint16(formats[2*i:]) == 1
			}
			if binaryFmt {
				values = append(values, BinaryParamPrefix+string(rest[:l]))
			} else {
				values = append(values, string(rest[:l]))
			}
		}
		rest = rest[l:]
	}
	if n == 0 {
		return 0, 0, values, nil
	}
	return n, h.Sum64(), values, nil
}

// AppendBind appends a Bind with the given portal and statement names and
// the rest of an original Bind body.
func AppendBind(dst []byte, portal []byte, stmt string, rest []byte) []byte {
	dst = AppendHeader(dst, MsgBind, len(portal)+1+len(stmt)+1+len(rest))
	dst = append(dst, portal...)
	dst = append(dst, 0)
	dst = append(dst, stmt...)
	dst = append(dst, 0)
	return append(dst, rest...)
}

// DecodeTarget decodes a Describe or Close body: 'S' or 'P' and a name.
func DecodeTarget(body []byte) (kind byte, name []byte, err error) {
	if len(body) < 2 || body[len(body)-1] != 0 {
		return 0, nil, ErrMalformed
	}
	kind = body[0]
	if kind != TargetStatement && kind != TargetPortal {
		return 0, nil, ErrMalformed
	}
	name = body[1 : len(body)-1]
	if bytes.IndexByte(name, 0) >= 0 {
		return 0, nil, ErrMalformed
	}
	return kind, name, nil
}

// AppendTarget appends a Describe ('D') or Close ('C') message.
func AppendTarget(dst []byte, typ, kind byte, name string) []byte {
	dst = AppendHeader(dst, typ, 1+len(name)+1)
	dst = append(dst, kind)
	dst = append(dst, name...)
	return append(dst, 0)
}

// DecodeQuery returns the text of a Query body.
func DecodeQuery(body []byte) (string, error) {
	if len(body) == 0 || body[len(body)-1] != 0 {
		return "", ErrMalformed
	}
	return string(body[:len(body)-1]), nil
}

// CommandTag returns the tag of a CommandComplete body (a view).
func CommandTag(body []byte) []byte {
	if i := bytes.IndexByte(body, 0); i >= 0 {
		return body[:i]
	}
	return body
}

// ErrorFields returns the severity, SQLSTATE and message of an
// ErrorResponse or NoticeResponse body.
func ErrorFields(body []byte) (severity, code, message string) {
	for len(body) > 0 && body[0] != 0 {
		f := body[0]
		v, rest, ok := cut(body[1:])
		if !ok {
			break
		}
		switch f {
		case 'V':
			severity = string(v)
		case 'S':
			if severity == "" {
				severity = string(v)
			}
		case 'C':
			code = string(v)
		case 'M':
			message = string(v)
		}
		body = rest
	}
	return severity, code, message
}

func cut(b []byte) ([]byte, []byte, bool) {
	i := bytes.IndexByte(b, 0)
	if i < 0 {
		return nil, nil, false
	}
	return b[:i], b[i+1:], true
}
