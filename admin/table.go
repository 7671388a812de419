package admin

import (
	"fmt"
	"math"
	"reflect"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
)

// Postgres type OIDs and sizes used in RowDescription.
const (
	oidBool        = 16
	oidInt8        = 20
	oidText        = 25
	oidFloat8      = 701
	oidTimestamptz = 1184
)

// column is one result column.
type column struct {
	name string
	oid  uint32
	size int16
}

// table is a result set for the console: columns and rows of values in
// Postgres text format (nil is NULL).
type table struct {
	cols []column
	rows [][][]byte
}

// timestampLayout is the text form of timestamptz, as Postgres sends it
// with DateStyle ISO.
const timestampLayout = "2006-01-02 15:04:05.999999-07"

// tableOf builds a table from a slice of structs: one column per exported
// field with a json tag (the tag's name is the column name), typed by the
// field's Go type: string is text, integers int8, floats float8, bool bool,
// time.Time timestamptz; a pointer is NULL when nil. A zero time.Time is
// NULL too. The same structs serve the JSON API, so both show the same
// names.
func tableOf[T any](rows []T) *table {
	var zero T
	rt := reflect.TypeOf(zero)
	t := &table{}
	var fields []int
	for i := 0; i < rt.NumField(); i++ {
		f := rt.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if !f.IsExported() || name == "" || name == "-" {
			continue
		}
		oid, size := typeOID(f.Type)
		t.cols = append(t.cols, column{name: name, oid: oid, size: size})
		fields = append(fields, i)
	}
	for _, r := range rows {
		rv := reflect.ValueOf(r)
		vals := make([][]byte, len(fields))
		for j, i := range fields {
			vals[j] = textValue(rv.Field(i))
		}
		t.rows = append(t.rows, vals)
	}
	return t
}

var timeType = reflect.TypeOf(time.Time{})

func typeOID(rt reflect.Type) (uint32, int16) {
	if rt.Kind() == reflect.Pointer {
		rt = rt.Elem()
	}
	if rt == timeType {
		return oidTimestamptz, 8
	}
	switch rt.Kind() {
	case reflect.Bool:
		return oidBool, 1
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return oidInt8, 8
	case reflect.Float32, reflect.Float64:
		return oidFloat8, 8
	default:
		return oidText, -1
	}
}

func textValue(v reflect.Value) []byte {
	if v.Kind() == reflect.Pointer {
		if v.IsNil() {
			return nil
		}
		v = v.Elem()
	}
	if v.Type() == timeType {
		tm := v.Interface().(time.Time)
		if tm.IsZero() {
			return nil
		}
		return []byte(tm.UTC().Format(timestampLayout))
	}
	switch v.Kind() {
	case reflect.Bool:
		if v.Bool() {
			return []byte("t")
		}
		return []byte("f")
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		return strconv.AppendInt(nil, v.Int(), 10)
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		u := v.Uint()
		if u > math.MaxInt64 {
			u = math.MaxInt64
		}
		return strconv.AppendUint(nil, u, 10)
	case reflect.Float32, reflect.Float64:
		return formatFloat(v.Float())
	case reflect.String:
		return []byte(v.String())
	default:
		return []byte(fmt.Sprint(v.Interface()))
	}
}

func formatFloat(f float64) []byte {
	switch {
	case math.IsNaN(f):
		return []byte("NaN")
	case math.IsInf(f, 1):
		return []byte("Infinity")
	case math.IsInf(f, -1):
		return []byte("-Infinity")
	}
	return strconv.AppendFloat(nil, f, 'f', -1, 64)
}

// textTable builds a table of text columns.
func textTable(names ...string) *table {
	t := &table{}
	for _, n := range names {
		t.cols = append(t.cols, column{name: n, oid: oidText, size: -1})
	}
	return t
}

// addText appends a row of text values.
func (t *table) addText(vals ...string) {
	row := make([][]byte, len(vals))
	for i, v := range vals {
		row[i] = []byte(v)
	}
	t.rows = append(t.rows, row)
}

// columnNames returns the column names in order.
func (t *table) columnNames() []string {
	out := make([]string, len(t.cols))
	for i, c := range t.cols {
		out[i] = c.name
	}
	return out
}

// appendTo appends RowDescription, the DataRows and CommandComplete with
// tag to dst.
func (t *table) appendTo(dst []byte, tag string) []byte {
	rd := pgproto3.RowDescription{Fields: make([]pgproto3.FieldDescription, len(t.cols))}
	for i, c := range t.cols {
		rd.Fields[i] = pgproto3.FieldDescription{Name: []byte(c.name), DataTypeOID: c.oid, DataTypeSize: c.size, TypeModifier: -1}
	}
	dst, _ = rd.Encode(dst)
	for _, r := range t.rows {
		dst, _ = (&pgproto3.DataRow{Values: r}).Encode(dst)
	}
	dst, _ = (&pgproto3.CommandComplete{CommandTag: []byte(tag)}).Encode(dst)
	return dst
}
