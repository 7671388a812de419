package wire

import (
	"encoding/binary"
	"slices"
	"testing"
)

// TestBindParamsFormats: binary-format values are kept with
// BinaryParamPrefix, whatever form the format codes take.
func TestBindParamsFormats(t *testing.T) {
	build := func(formats []uint16, vals ...[]byte) []byte {
		var b []byte
		b = binary.BigEndian.AppendUint16(b, uint16(len(formats)))
		for _, f := range formats {
			b = binary.BigEndian.AppendUint16(b, f)
		}
		b = binary.BigEndian.AppendUint16(b, uint16(len(vals)))
		for _, v := range vals {
			if v == nil {
				b = binary.BigEndian.AppendUint32(b, 0xFFFFFFFF)
				continue
			}
			b = binary.BigEndian.AppendUint32(b, uint32(len(v)))
			b = append(b, v...)
		}
		return append(b, 0, 0) // result formats
	}
	i4 := []byte{0, 0, 0, 42}
	for name, tc := range map[string]struct {
		rest []byte
		want []string
	}{
		"all text":    {build(nil, []byte("42"), []byte("x")), []string{"42", "x"}},
		"all binary":  {build([]uint16{1}, i4, []byte("x")), []string{BinaryParamPrefix + "\x00\x00\x00*", BinaryParamPrefix + "x"}},
		"per param":   {build([]uint16{1, 0}, i4, []byte("x")), []string{BinaryParamPrefix + "\x00\x00\x00*", "x"}},
		"null binary": {build([]uint16{1}, nil), []string{""}},
	} {
		n, _, vals, err := BindParams(tc.rest, true)
		if err != nil || n != len(tc.want) || !slices.Equal(vals, tc.want) {
			t.Errorf("%s: n %d vals %q err %v, want %q", name, n, vals, err, tc.want)
		}
		_, h1, _, _ := BindParams(tc.rest, false)
		_, h2, _, _ := BindParams(tc.rest, true)
		if h1 != h2 {
			t.Errorf("%s: hash depends on keep", name)
		}
	}
}
