package planadvisor

import (
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5/pgtype"

	"github.com/pgaudit-proxy/pgaudit/internal/event"
)

// BinaryParamPrefix is event.BinaryParamPrefix.
const BinaryParamPrefix = event.BinaryParamPrefix

// HasBinaryParams reports whether any value is in binary format.
func HasBinaryParams(params []string) bool {
	for _, p := range params {
		if strings.HasPrefix(p, BinaryParamPrefix) {
			return true
		}
	}
	return false
}

// DecodeParams returns params with every binary-format value decoded to
// its text form by the parameter's type OID (oids[i], from the server's
// ParameterDescription), with pgtype. An integer whose byte length does
// not match its declared type (a client that declared int8 for a column
// the server infers as int4) is read by its length. Text values are kept.
// It fails when a binary value cannot be decoded.
func DecodeParams(params []string, oids []uint32) ([]string, error) {
	out := make([]string, len(params))
	m := pgtype.NewMap()
	for i, p := range params {
		raw, ok := strings.CutPrefix(p, BinaryParamPrefix)
		if !ok {
			out[i] = p
			continue
		}
		var oid uint32
		if i < len(oids) {
			oid = oids[i]
		}
		txt, err := decodeBinary(m, oid, []byte(raw))
		if err != nil {
			return nil, fmt.Errorf("parameter $%d (type oid %d, %d bytes in binary format): %w", i+1, oid, len(raw), err)
		}
		out[i] = txt
	}
	return out, nil
}

func decodeBinary(m *pgtype.Map, oid uint32, raw []byte) (string, error) {
	switch oid {
	case pgtype.Int2OID, pgtype.Int4OID, pgtype.Int8OID, pgtype.OIDOID:
		switch len(raw) {
		case 2:
			return strconv.FormatInt(int64(int16(binary.BigEndian.Uint16(raw))), 10), nil
		case 4:
			if oid == pgtype.OIDOID {
				return strconv.FormatUint(uint64(binary.BigEndian.Uint32(raw)), 10), nil
			}
			return strconv.FormatInt(int64(int32(binary.BigEndian.Uint32(raw))), 10), nil
		case 8:
			return strconv.FormatInt(int64(binary.BigEndian.Uint64(raw)), 10), nil
		}
		return "", fmt.Errorf("an integer of %d bytes", len(raw))
	case pgtype.ByteaOID:
		return `\x` + hex.EncodeToString(raw), nil
	}
	t, ok := m.TypeForOID(oid)
	if !ok {
		return "", fmt.Errorf("unknown type")
	}
	v, err := t.Codec.DecodeValue(m, oid, pgtype.BinaryFormatCode, raw)
	if err != nil {
		return "", err
	}
	b, err := m.Encode(oid, pgtype.TextFormatCode, v, nil)
	if err != nil {
		return "", err
	}
	return string(b), nil
}
