package admin

import (
	"encoding/json"
	"math"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
)

func TestTableOf(t *testing.T) {
	t.Parallel()
	type row struct {
		Name    string     `json:"name"`
		N       int        `json:"n"`
		F       float64    `json:"f"`
		B       bool       `json:"b"`
		T       time.Time  `json:"t"`
		P       *int       `json:"p"`
		Skipped string     `json:"-"`
		When    *time.Time `json:"when"`
		hidden  int
	}
	seven := 7
	tb := tableOf([]row{{Name: "a", N: -3, F: 0.25, B: true, T: time.Date(2026, 1, 2, 3, 4, 5, 6000, time.UTC), P: &seven}, {}})
	names := tb.columnNames()
	want := []string{"name", "n", "f", "b", "t", "p", "when"}
	if len(names) != len(want) {
		t.Fatalf("columns %v", names)
	}
	for i := range want {
		if names[i] != want[i] {
			t.Fatalf("columns %v, want %v", names, want)
		}
	}
	oids := []uint32{oidText, oidInt8, oidFloat8, oidBool, oidTimestamptz, oidInt8, oidTimestamptz}
	for i, c := range tb.cols {
		if c.oid != oids[i] {
			t.Errorf("column %s oid %d, want %d", c.name, c.oid, oids[i])
		}
	}
	r := tb.rows[0]
	for i, w := range []string{"a", "-3", "0.25", "t", "2026-01-02 03:04:05.000006+00"} {
		if string(r[i]) != w {
			t.Errorf("value %d = %q, want %q", i, r[i], w)
		}
	}
	if string(r[5]) != "7" || r[6] != nil || tb.rows[1][4] != nil || tb.rows[1][5] != nil {
		t.Errorf("NULL handling: %q", tb.rows[1])
	}
	// The encoding decodes as a RowDescription, DataRows, CommandComplete.
	buf := tb.appendTo(nil, "SHOW")
	var rd pgproto3.RowDescription
	if buf[0] != 'T' {
		t.Fatalf("first message %q", buf[0])
	}
	n := int(uint32(buf[1])<<24|uint32(buf[2])<<16|uint32(buf[3])<<8|uint32(buf[4])) + 1
	if err := rd.Decode(buf[5:n]); err != nil || len(rd.Fields) != 7 || rd.Fields[4].DataTypeOID != oidTimestamptz {
		t.Fatalf("RowDescription: %v %+v", err, rd)
	}
}

func TestNumJSON(t *testing.T) {
	t.Parallel()
	b, err := json.Marshal([]Num{1.5, Num(math.NaN()), Num(math.Inf(1)), 0})
	if err != nil || string(b) != "[1.5,null,null,0]" {
		t.Fatalf("%s %v", b, err)
	}
	var back []Num
	if err := json.Unmarshal(b, &back); err != nil || back[0] != 1.5 || !math.IsNaN(float64(back[1])) {
		t.Fatalf("%v %v", back, err)
	}
}
