package pooler

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgaudit-proxy/pgaudit/internal/testutil"
)

// TestFailedParseBindAudited (issue 13 item 6): extended-protocol
// statements that fail at Parse (42P01, 42601) or at Bind (22P02) get a
// statement event with their SQLSTATE, in both pool modes, as
// docs/audit-log.md promises for failed statements. Golden file:
// testdata/events_failed.golden.
func TestFailedParseBindAudited(t *testing.T) {
	var want []byte
	for _, mode := range []PoolMode{SessionMode, TransactionMode} {
		t.Run(string(mode), func(t *testing.T) {
			sink := &captureSink{}
			p := testProxyWithSink(t, withMode(mode, 2), sink)
			c := dialWire(t, p.Addr().String(), map[string]string{"application_name": "failed"})
			c.send(&pgproto3.Parse{Query: "select * from no_such_table_x"}, &pgproto3.Bind{}, &pgproto3.Execute{}, &pgproto3.Sync{})
			c.recvRFQ(1)
			c.send(&pgproto3.Parse{Query: "selec 1"}, &pgproto3.Bind{}, &pgproto3.Execute{}, &pgproto3.Sync{})
			c.recvRFQ(1)
			c.send(&pgproto3.Parse{Query: "select $1::int as n"}, &pgproto3.Bind{Parameters: [][]byte{[]byte("abc")}}, &pgproto3.Execute{}, &pgproto3.Sync{})
			c.recvRFQ(1)
			c.send(&pgproto3.Parse{Name: "fine", Query: "select $1::int as n"}, &pgproto3.Sync{})
			c.recvRFQ(1)
			c.send(&pgproto3.Bind{PreparedStatement: "fine", Parameters: [][]byte{[]byte("1")}}, &pgproto3.Execute{}, &pgproto3.Sync{})
			c.recvRFQ(1)
			c.note("in a transaction")
			c.query("begin")
			c.send(&pgproto3.Bind{PreparedStatement: "fine", Parameters: [][]byte{[]byte("x")}}, &pgproto3.Execute{}, &pgproto3.Sync{})
			c.recvRFQ(1)
			c.query("rollback")
			c.terminate()

			testutil.Within(5*time.Second, func() bool { return len(sink.snapshot()) >= 7 }) // checked below
			var b bytes.Buffer
			for _, ev := range sink.snapshot() {
				line, _ := json.Marshal(eventView{
					Kind: ev.Kind.String(), Protocol: ev.Protocol.String(), Text: ev.Text, TxSeq: ev.TxSeq,
					InTransaction: ev.InTransaction, Command: ev.Command, Rows: ev.Rows, SQLState: ev.SQLState,
					NumParams: ev.NumParams, HasParamHash: ev.ParamHash != 0, App: ev.ApplicationName,
				})
				b.Write(line)
				b.WriteByte('\n')
			}
			golden := filepath.Join("testdata", "events_failed.golden")
			if *update && mode == SessionMode {
				if err := os.WriteFile(golden, b.Bytes(), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			if want == nil {
				var err error
				if want, err = os.ReadFile(golden); err != nil {
					t.Fatalf("%v (run with -update)", err)
				}
			}
			if b.String() != string(want) {
				t.Fatalf("events differ from %s:\n--- got\n%s--- want\n%s", golden, b.String(), want)
			}
		})
	}
}
