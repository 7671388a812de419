package planadvisor

import (
	"encoding/binary"
	"math"
	"slices"
	"testing"

	"github.com/jackc/pgx/v5/pgtype"

	"github.com/pgaudit-proxy/pgaudit/wire"
)

func TestBinaryParamPrefixMatchesWire(t *testing.T) {
	if BinaryParamPrefix != wire.BinaryParamPrefix {
		t.Fatalf("analyzer %q, wire %q", BinaryParamPrefix, wire.BinaryParamPrefix)
	}
}

// TestDecodeParams (issue 14, item 7): binary-format values are decoded by
// their type OIDs before EXPLAIN uses them as text.
func TestDecodeParams(t *testing.T) {
	be := func(n int, v uint64) string {
		b := make([]byte, 8)
		binary.BigEndian.PutUint64(b, v)
		return BinaryParamPrefix + string(b[8-n:])
	}
	f8 := make([]byte, 8)
	binary.BigEndian.PutUint64(f8, math.Float64bits(2.5))
	params := []string{
		be(4, 42),                         // int4
		be(8, 1<<40),                      // int8
		be(8, 7),                          // int8 sent for an int4 column
		be(4, uint64(uint32(0xFFFFFFFE))), // int4 -2
		"hello",                           // text format
		BinaryParamPrefix + "\x01",        // bool
		BinaryParamPrefix + string(f8),    // float8
		BinaryParamPrefix + "ab\x00c",     // bytea
		BinaryParamPrefix + "x y",         // text in binary format
	}
	oids := []uint32{pgtype.Int4OID, pgtype.Int8OID, pgtype.Int4OID, pgtype.Int4OID, pgtype.TextOID,
		pgtype.BoolOID, pgtype.Float8OID, pgtype.ByteaOID, pgtype.TextOID}
	got, err := DecodeParams(params, oids)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"42", "1099511627776", "7", "-2", "hello", "t", "2.5", `\x61620063`, "x y"}
	if !slices.Equal(got, want) {
		t.Errorf("got %q\nwant %q", got, want)
	}
	if _, err := DecodeParams([]string{be(3, 1)}, []uint32{pgtype.Int4OID}); err == nil {
		t.Error("a 3-byte integer decoded")
	}
}
