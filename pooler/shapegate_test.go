package pooler

import (
	"testing"

	"github.com/pgaudit-proxy/pgaudit/wire"
)

// rowDescBody encodes a RowDescription body with one column per type OID.
func rowDescBody(oids ...uint32) []byte {
	b := []byte{0, byte(len(oids))}
	for i, oid := range oids {
		b = append(b, 'c', byte('0'+i), 0)
		b = append(b, 0, 0, 0x40, 0, 0, byte(i+1))
		b = append(b, byte(oid>>24), byte(oid>>16), byte(oid>>8), byte(oid))
		b = append(b, 0, 4, 0xff, 0xff, 0xff, 0xff, 0, 0)
	}
	return b
}

// TestNoteRowDescription replays sequences of Describe replies on one
// statement and checks, after each, that its shape is what rendering
// that reply alone gives (appendRowShape), whether noteRowDescription
// recognized the reply as the last one or rendered it.
func TestNoteRowDescription(t *testing.T) {
	type reply struct {
		typ  byte
		body []byte
	}
	a := reply{wire.MsgRowDescription, rowDescBody(23)}
	b := reply{wire.MsgRowDescription, rowDescBody(23, 25)}
	noData := reply{wire.MsgNoData, nil}
	bad := reply{wire.MsgRowDescription, []byte{0, 2, 'x'}}
	wide := reply{wire.MsgRowDescription, rowDescBody(make([]uint32, 60)...)}
	for _, tc := range []struct {
		name    string
		replies []reply
	}{
		{"same twice", []reply{a, a, a}},
		{"changed", []reply{a, b, a}},
		{"no data between", []reply{a, noData, a}},
		{"malformed keeps the last", []reply{a, bad, a, b}},
		{"wide not kept", []reply{wide, wide, a, wide}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			def := &stmtDef{}
			want := ""
			for i, r := range tc.replies {
				shape := string(appendRowShape(nil, r.typ, r.body))
				ok := def.noteRowDescription(r.typ, r.body)
				if ok != (shape != "") {
					t.Fatalf("reply %d: well-formed %v, want %v", i, ok, shape != "")
				}
				if shape != "" {
					want = shape
				}
				if def.shape != want {
					t.Fatalf("reply %d: shape %q, want %q", i, def.shape, want)
				}
			}
		})
	}
}
