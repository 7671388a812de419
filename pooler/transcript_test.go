package pooler

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgaudit-proxy/pgaudit/internal/testutil"
)

// wireTimeout bounds every wait for a backend message in raw wire tests: a
// proxy that forgets to flush fails the test instead of hanging it.
const wireTimeout = 10 * time.Second

// wireConn is a raw protocol client (pgproto3.Frontend over a net.Conn) that
// records every message it sends and receives as one JSON line each, with
// the normalizations of transcriptLine.
type wireConn struct {
	t  testing.TB
	nc net.Conn
	fe *pgproto3.Frontend

	lines []string
	// addr is where the connection goes (the proxy or Postgres), for
	// scenarios that open a second client.
	addr string
	// startup results
	pid    uint32
	key    []byte
	params map[string]string
}

// directAddr is the test cluster's address.
func directAddr() string { return net.JoinHostPort(cluster.Host(), strconv.Itoa(cluster.Port)) }

// dialRaw opens a TCP connection to addr that is closed when the test ends.
func dialRaw(t testing.TB, addr string) net.Conn {
	t.Helper()
	nc, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	t.Cleanup(func() { _ = nc.Close() })
	return nc
}

// newWireConn wraps an open connection without doing the startup.
func newWireConn(t testing.TB, nc net.Conn) *wireConn {
	return &wireConn{t: t, nc: nc, fe: pgproto3.NewFrontend(nc, nc), params: map[string]string{}}
}

// dialWire connects to addr and logs in as user postgres with trust,
// reading up to the first ReadyForQuery. Startup messages are not recorded.
func dialWire(t testing.TB, addr string, params map[string]string) *wireConn {
	t.Helper()
	c := newWireConn(t, dialRaw(t, addr))
	c.addr = addr
	all := map[string]string{"user": "postgres", "database": "postgres"}
	for k, v := range params {
		all[k] = v
	}
	c.fe.Send(&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersion30, Parameters: all})
	if err := c.fe.Flush(); err != nil {
		t.Fatalf("send startup: %v", err)
	}
	if err := c.readStartup(); err != nil {
		t.Fatalf("startup on %s: %v", addr, err)
	}
	return c
}

// readStartup reads authentication results, ParameterStatus and
// BackendKeyData up to ReadyForQuery (trust only).
func (c *wireConn) readStartup() error {
	for {
		m, err := c.receive()
		if err != nil {
			return err
		}
		switch m := m.(type) {
		case *pgproto3.AuthenticationOk, *pgproto3.NegotiateProtocolVersion:
		case *pgproto3.ParameterStatus:
			c.params[m.Name] = m.Value
		case *pgproto3.BackendKeyData:
			c.pid, c.key = m.ProcessID, append([]byte(nil), m.SecretKey...)
		case *pgproto3.ReadyForQuery:
			return nil
		case *pgproto3.ErrorResponse:
			return pgconn.ErrorResponseToPgError(m)
		default:
			return fmt.Errorf("unexpected startup message %T", m)
		}
	}
}

func (c *wireConn) receive() (pgproto3.BackendMessage, error) {
	_ = c.nc.SetReadDeadline(time.Now().Add(wireTimeout))
	return c.fe.Receive()
}

// send records and sends msgs and flushes them.
func (c *wireConn) send(msgs ...pgproto3.FrontendMessage) {
	c.t.Helper()
	for _, m := range msgs {
		c.lines = append(c.lines, "F "+transcriptLine(m))
		c.fe.Send(m)
	}
	_ = c.nc.SetWriteDeadline(time.Now().Add(wireTimeout))
	if err := c.fe.Flush(); err != nil {
		c.t.Fatalf("send: %v", err)
	}
}

// recv reads and records one message.
func (c *wireConn) recv() pgproto3.BackendMessage {
	c.t.Helper()
	m, err := c.receive()
	if err != nil {
		c.t.Fatalf("receive (after %d recorded lines; last: %s): %v", len(c.lines), c.last(), err)
	}
	c.lines = append(c.lines, "B "+transcriptLine(m))
	return m
}

func (c *wireConn) last() string {
	if len(c.lines) == 0 {
		return "<nothing>"
	}
	return c.lines[len(c.lines)-1]
}

// recvUntil reads and records messages until stop returns true for one.
func (c *wireConn) recvUntil(stop func(pgproto3.BackendMessage) bool) pgproto3.BackendMessage {
	c.t.Helper()
	for {
		m := c.recv()
		if stop(m) {
			return m
		}
	}
}

// recvRFQ reads up to and including the n-th ReadyForQuery and returns the
// last transaction status.
func (c *wireConn) recvRFQ(n int) byte {
	c.t.Helper()
	var st byte
	for i := 0; i < n; i++ {
		m := c.recvUntil(isType[*pgproto3.ReadyForQuery])
		st = m.(*pgproto3.ReadyForQuery).TxStatus
	}
	return st
}

// query sends a simple Query and reads to its ReadyForQuery.
func (c *wireConn) query(sql string) byte {
	c.t.Helper()
	c.send(&pgproto3.Query{String: sql})
	return c.recvRFQ(1)
}

// expectEOF reads once more and requires the connection closed.
func (c *wireConn) expectEOF() {
	c.t.Helper()
	m, err := c.receive()
	if err == nil {
		c.t.Fatalf("want the connection closed, got %s", transcriptLine(m))
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		c.t.Fatalf("connection not closed within %v", wireTimeout)
	}
	c.lines = append(c.lines, "# closed")
}

// note records a comment line.
func (c *wireConn) note(s string) { c.lines = append(c.lines, "# "+s) }

// terminate sends Terminate and closes.
func (c *wireConn) terminate() {
	c.fe.Send(&pgproto3.Terminate{})
	_ = c.fe.Flush()
	_ = c.nc.Close()
}

func isType[T pgproto3.BackendMessage](m pgproto3.BackendMessage) bool {
	_, ok := m.(T)
	return ok
}

// bigValue is the length above which values are replaced by a digest in
// transcripts.
const bigValue = 256

func digest(b []byte) []byte {
	if len(b) > bigValue {
		sum := sha256.Sum256(b)
		return fmt.Appendf(nil, "<%d bytes sha256:%x>", len(b), sum[:8])
	}
	if !utf8.Valid(b) {
		// JSON would replace the bytes that matter.
		return fmt.Appendf(nil, "<hex %x>", b)
	}
	return b
}

// transcriptLine renders m as JSON after the normalizations that make a
// transcript comparable between direct Postgres, the proxy and a golden
// file: long values become digests, a notification's sender PID is zeroed,
// a column's table OID becomes 1 (tables created by the scenario get a new
// OID every run),
// and the source location of errors and notices (File, Line, Routine,
// which vary between Postgres builds and which the proxy cannot know for
// errors it raises itself) is dropped.
func transcriptLine(m any) string {
	name := reflect.TypeOf(m).Elem().Name()
	var v any = m
	switch m := m.(type) {
	case *pgproto3.DataRow:
		cp := pgproto3.DataRow{Values: make([][]byte, len(m.Values))}
		for i, x := range m.Values {
			if x != nil {
				cp.Values[i] = digest(x)
			}
		}
		v = cp
	case *pgproto3.CopyData:
		v = pgproto3.CopyData{Data: digest(m.Data)}
	case *pgproto3.Query:
		v = pgproto3.Query{String: string(digest([]byte(m.String)))}
	case *pgproto3.Bind:
		cp := *m
		cp.Parameters = make([][]byte, len(m.Parameters))
		for i, x := range m.Parameters {
			if x != nil {
				cp.Parameters[i] = digest(x)
			}
		}
		v = cp
	case *pgproto3.RowDescription:
		// Table OIDs differ between runs that create the same table, so
		// do the OIDs of types a scenario creates.
		cp := pgproto3.RowDescription{Fields: append([]pgproto3.FieldDescription(nil), m.Fields...)}
		for i := range cp.Fields {
			if cp.Fields[i].TableOID != 0 {
				cp.Fields[i].TableOID = 1
			}
			cp.Fields[i].DataTypeOID = userOID(cp.Fields[i].DataTypeOID)
		}
		v = cp
	case *pgproto3.ParameterDescription:
		cp := pgproto3.ParameterDescription{ParameterOIDs: make([]uint32, len(m.ParameterOIDs))}
		for i, oid := range m.ParameterOIDs {
			cp.ParameterOIDs[i] = userOID(oid)
		}
		v = cp
	case *pgproto3.NotificationResponse:
		cp := *m
		cp.PID = 0
		v = cp
	case *pgproto3.ErrorResponse:
		cp := *m
		cp.File, cp.Line, cp.Routine = "", 0, ""
		v = cp
	case *pgproto3.NoticeResponse:
		cp := pgproto3.ErrorResponse(*m)
		cp.File, cp.Line, cp.Routine = "", 0, ""
		v = cp
	}
	var buf strings.Builder
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return name + " <json: " + err.Error() + ">"
	}
	// pgproto3's MarshalJSON methods escape <, > and & (equivalent JSON).
	s := htmlUnescaper.Replace(strings.TrimSuffix(buf.String(), "\n"))
	if name == "NoticeResponse" {
		s = strings.Replace(s, `"Type":"ErrorResponse"`, `"Type":"NoticeResponse"`, 1)
	}
	if !strings.HasPrefix(s, `{"Type":`) {
		s = name + " " + s
	}
	return s
}

// userOID maps the OIDs of objects created after initdb (types a scenario
// creates) to the first such OID.
func userOID(oid uint32) uint32 {
	const firstNormalObjectID = 16384
	return min(oid, firstNormalObjectID)
}

var htmlUnescaper = strings.NewReplacer(`\u003c`, "<", `\u003e`, ">", `\u0026`, "&")

// scenario is one wire conversation run against Postgres and the proxy.
type scenario struct {
	name string
	// pins says the scenario leaves a transaction-mode client pinned to its
	// server (LISTEN), so the release check does not apply.
	pins bool
	// txDiffers, when set, says why transaction mode differs from a
	// direct connection in this scenario (a documented difference, see
	// the README): its proxy transcript is compared with its own golden
	// file, NAME.transaction.txt, instead of the direct run.
	txDiffers string
	// ends says the server ends the session: no pool checks.
	ends bool
	// params are extra startup parameters; bare drops the default ones.
	params map[string]string
	bare   bool
	run    func(c *wireConn)
}

func be32(v int32) []byte { return binary.BigEndian.AppendUint32(nil, uint32(v)) }

var transcriptScenarios = []scenario{
	{name: "simple_query", run: func(c *wireConn) {
		c.query("select 1 as one, 'two'::text as two, null::int as three")
		c.query("")
		c.query("select generate_series(1, 3) as g")
		c.query("do $$ begin raise notice 'hello %', 42; end $$")
		c.query("set application_name = 'changed'")
		c.query("show application_name")
		c.query("select current_setting('DateStyle'), current_setting('extra_float_digits')")
		c.query("begin; set local application_name = 'local'; set local DateStyle = 'SQL, YMD'")
		c.query("select now()::date = current_date")
		c.query("rollback")
		c.query("show application_name")
	}},
	{name: "client_encoding", params: map[string]string{"client_encoding": "LATIN1"}, run: func(c *wireConn) {
		// Text goes both ways in LATIN1: 0xe9 is é.
		c.query("select '\xe9t\xe9' as latin1, convert_from('\\xc3a9'::bytea, 'UTF8') as e_acute")
		c.query("select U&'\\20AC' as euro")
		c.query("set client_encoding = 'UTF8'")
		c.query("select 'caf\xc3\xa9'")
	}},
	{name: "reset_startup_params", run: func(c *wireConn) {
		c.query("set application_name = 'changed'")
		c.query("reset application_name")
		c.query("show application_name")
		c.query("set extra_float_digits = 3; reset all")
		c.query("select current_setting('application_name'), current_setting('DateStyle'), current_setting('extra_float_digits')")
		c.query("discard all")
		c.query("select current_setting('application_name'), current_setting('DateStyle'), current_setting('extra_float_digits')")
		c.note("inside a transaction, which a rollback undoes")
		c.query("begin")
		c.query("set application_name = 'in_tx'")
		c.query("reset application_name")
		c.query("show application_name")
		c.query("set DateStyle = 'German'")
		c.query("rollback")
		c.query("show DateStyle")
		c.query("set DateStyle = 'SQL, YMD'")
		c.query("set DateStyle to default")
		c.query("show DateStyle")
		c.note("in a failed transaction")
		c.query("begin")
		c.query("set application_name = 'doomed'")
		c.query("select 1/0")
		c.query("reset all")
		c.query("rollback")
		c.query("show application_name")
		c.note("through the extended protocol")
		c.send(&pgproto3.Parse{Query: "set application_name = 'ext'"}, &pgproto3.Bind{}, &pgproto3.Execute{}, &pgproto3.Sync{})
		c.recvRFQ(1)
		c.send(&pgproto3.Parse{Query: "reset application_name"}, &pgproto3.Bind{}, &pgproto3.Execute{}, &pgproto3.Sync{})
		c.recvRFQ(1)
		c.send(&pgproto3.Parse{Name: "rs", Query: "set DateStyle to default"}, &pgproto3.Sync{})
		c.recvRFQ(1)
		c.query("set DateStyle = 'German'")
		c.send(&pgproto3.Bind{PreparedStatement: "rs"}, &pgproto3.Execute{}, &pgproto3.Sync{})
		c.recvRFQ(1)
		c.query("select current_setting('application_name'), current_setting('DateStyle')")
	}},
	{name: "multi_statement_error", run: func(c *wireConn) {
		c.query("select 1; select 1/0; select 3")
		c.query("begin; select 1; select nope_col; commit")
		c.query("select 1")
		c.query("rollback")
		c.query("select 'after'")
	}},
	{name: "extended_unnamed", run: func(c *wireConn) {
		c.send(
			&pgproto3.Parse{Query: "select $1::int + 1 as n, $2::text as t", ParameterOIDs: []uint32{23, 25}},
			&pgproto3.Describe{ObjectType: 'S'},
			&pgproto3.Bind{Parameters: [][]byte{[]byte("41"), []byte("x")}},
			&pgproto3.Describe{ObjectType: 'P'},
			&pgproto3.Execute{},
			&pgproto3.Sync{},
		)
		c.recvRFQ(1)
		c.note("the unnamed statement survives the Sync")
		c.send(
			&pgproto3.Bind{Parameters: [][]byte{be32(7), []byte("y")}, ParameterFormatCodes: []int16{1, 0}, ResultFormatCodes: []int16{1, 0}},
			&pgproto3.Execute{},
			&pgproto3.Sync{},
		)
		c.recvRFQ(1)
		c.send(&pgproto3.Bind{DestinationPortal: "nope", PreparedStatement: "", Parameters: [][]byte{[]byte("1")}}, &pgproto3.Sync{})
		c.recvRFQ(1)
		c.send(&pgproto3.Execute{Portal: "nope"}, &pgproto3.Sync{})
		c.recvRFQ(1)
		c.note("a simple Query destroys the unnamed statement: Bind without Parse fails")
		c.query("select 'simple'")
		c.send(&pgproto3.Bind{Parameters: [][]byte{[]byte("1"), []byte("z")}}, &pgproto3.Execute{}, &pgproto3.Sync{})
		c.recvRFQ(1)
	}},
	{name: "extended_named", run: func(c *wireConn) {
		c.send(
			&pgproto3.Parse{Name: "s1", Query: "select $1::int * 2 as doubled"},
			&pgproto3.Describe{ObjectType: 'S', Name: "s1"},
			&pgproto3.Sync{},
		)
		c.recvRFQ(1)
		for _, v := range []string{"1", "21"} {
			c.send(
				&pgproto3.Bind{DestinationPortal: "p1", PreparedStatement: "s1", Parameters: [][]byte{[]byte(v)}},
				&pgproto3.Describe{ObjectType: 'P', Name: "p1"},
				&pgproto3.Execute{Portal: "p1"},
				&pgproto3.Sync{},
			)
			c.recvRFQ(1)
		}
		c.note("errors: duplicate name, unknown statement, unknown portal")
		c.send(&pgproto3.Parse{Name: "s1", Query: "select 2"}, &pgproto3.Sync{})
		c.recvRFQ(1)
		c.send(&pgproto3.Bind{PreparedStatement: "nope"}, &pgproto3.Execute{}, &pgproto3.Sync{})
		c.recvRFQ(1)
		c.send(&pgproto3.Describe{ObjectType: 'S', Name: "nope"}, &pgproto3.Sync{})
		c.recvRFQ(1)
		c.send(&pgproto3.Describe{ObjectType: 'P', Name: "nope"}, &pgproto3.Sync{})
		c.recvRFQ(1)
		c.note("close, then the name is free again")
		c.send(&pgproto3.Close{ObjectType: 'S', Name: "s1"}, &pgproto3.Sync{})
		c.recvRFQ(1)
		c.send(&pgproto3.Bind{PreparedStatement: "s1", Parameters: [][]byte{[]byte("1")}}, &pgproto3.Execute{}, &pgproto3.Sync{})
		c.recvRFQ(1)
		c.send(&pgproto3.Close{ObjectType: 'S', Name: "never-existed"}, &pgproto3.Close{ObjectType: 'P', Name: "never-existed"}, &pgproto3.Sync{})
		c.recvRFQ(1)
		c.send(
			&pgproto3.Parse{Name: "s1", Query: "select 'again'::text"},
			&pgproto3.Bind{PreparedStatement: "s1"},
			&pgproto3.Execute{},
			&pgproto3.Close{ObjectType: 'S', Name: "s1"},
			&pgproto3.Sync{},
		)
		c.recvRFQ(1)
	}},
	// Bare startup: DISCARD ALL also resets startup parameters, covered by
	// reset_startup_params.
	{name: "discard_all", bare: true, run: func(c *wireConn) {
		c.send(&pgproto3.Parse{Name: "d1", Query: "select 1"}, &pgproto3.Sync{})
		c.recvRFQ(1)
		c.query("discard all")
		c.send(&pgproto3.Bind{PreparedStatement: "d1"}, &pgproto3.Execute{}, &pgproto3.Sync{})
		c.recvRFQ(1)
		c.send(&pgproto3.Parse{Name: "d1", Query: "select 2"}, &pgproto3.Bind{PreparedStatement: "d1"}, &pgproto3.Execute{}, &pgproto3.Sync{})
		c.recvRFQ(1)
		c.query("deallocate all")
		c.send(&pgproto3.Describe{ObjectType: 'S', Name: "d1"}, &pgproto3.Sync{})
		c.recvRFQ(1)
		c.query("show application_name")
	}},
	{name: "sql_deallocate", run: func(c *wireConn) {
		c.send(&pgproto3.Parse{Name: "a1", Query: "select $1::int as v"}, &pgproto3.Sync{})
		c.recvRFQ(1)
		c.query("deallocate a1")
		c.send(&pgproto3.Bind{PreparedStatement: "a1", Parameters: [][]byte{[]byte("1")}}, &pgproto3.Execute{}, &pgproto3.Sync{})
		c.recvRFQ(1)
		c.send(&pgproto3.Parse{Name: "a1", Query: "select $1::int + 1 as v"}, &pgproto3.Sync{})
		c.recvRFQ(1)
		c.query("execute a1(1)")
		c.query("execute a1 (2);")
		c.query("begin")
		c.query("execute a1(3)")
		c.query("select 1/0")
		c.query("deallocate a1")
		c.query("rollback")
		c.query("deallocate prepare a1")
		c.query("deallocate a1")
		c.query("execute a1(1)")
		c.note("a quoted name, and a statement the client never prepared")
		c.send(&pgproto3.Parse{Name: "Mixed Case", Query: "select 'mixed'::text as m"}, &pgproto3.Sync{})
		c.recvRFQ(1)
		c.query(`execute "Mixed Case"`)
		c.query("execute mixed")
		c.query(`deallocate "Mixed Case"`)
		c.query("execute nope(1)")
	}},
	{name: "parse_error_named", txDiffers: "a named Parse from an idle transaction-mode client is answered before a server sees it (holding a server there deadlocks clients that prepare on one connection while others hold every server): a syntax error surfaces at the first Bind or Describe", run: func(c *wireConn) {
		c.send(&pgproto3.Parse{Name: "bad", Query: "selec 1"}, &pgproto3.Sync{})
		c.recvRFQ(1)
		c.send(&pgproto3.Bind{PreparedStatement: "bad"}, &pgproto3.Execute{}, &pgproto3.Sync{})
		c.recvRFQ(1)
		c.send(&pgproto3.Parse{Name: "bad", Query: "select 'fixed'"}, &pgproto3.Bind{PreparedStatement: "bad"}, &pgproto3.Execute{}, &pgproto3.Sync{})
		c.recvRFQ(1)
		c.note("a client holding a server (in a transaction) gets the error at the Parse")
		c.query("begin")
		c.send(&pgproto3.Parse{Name: "bad2", Query: "selec 2"}, &pgproto3.Sync{})
		c.recvRFQ(1)
		c.query("rollback")
		c.send(&pgproto3.Bind{PreparedStatement: "bad2"}, &pgproto3.Execute{}, &pgproto3.Sync{})
		c.recvRFQ(1)
	}},
	{name: "timeout_between_parse_and_describe", run: func(c *wireConn) {
		c.note("statement_timeout starts at a statement's first message: a pause after Parse times out")
		c.query("set statement_timeout = '100ms'")
		c.send(&pgproto3.Parse{Query: "select 1 as one"})
		time.Sleep(300 * time.Millisecond) // deliberate: a pause longer than statement_timeout
		c.send(&pgproto3.Describe{ObjectType: 'S'}, &pgproto3.Sync{})
		c.recvRFQ(1)
		c.note("the same pause after Bind")
		c.send(&pgproto3.Parse{Query: "select 2 as two"}, &pgproto3.Sync{})
		c.recvRFQ(1)
		c.send(&pgproto3.Bind{})
		time.Sleep(300 * time.Millisecond) // deliberate: a pause longer than statement_timeout
		c.send(&pgproto3.Execute{}, &pgproto3.Sync{})
		c.recvRFQ(1)
		c.note("no pause: no timeout")
		c.send(&pgproto3.Parse{Query: "select 3 as three"}, &pgproto3.Bind{}, &pgproto3.Execute{}, &pgproto3.Sync{})
		c.recvRFQ(1)
		c.query("reset statement_timeout")
	}},
	{name: "error_before_sync", run: func(c *wireConn) {
		c.note("the server fails a group before its Sync is sent: it skips the rest of the group")
		c.send(&pgproto3.Parse{Query: "select 1/0"}, &pgproto3.Bind{}, &pgproto3.Execute{})
		time.Sleep(200 * time.Millisecond) // deliberate: let the server fail the group before the rest is sent
		c.send(&pgproto3.Parse{Name: "skipped", Query: "select 'skipped'"}, &pgproto3.Bind{PreparedStatement: "skipped"}, &pgproto3.Execute{}, &pgproto3.Sync{})
		c.recvRFQ(1)
		c.send(&pgproto3.Describe{ObjectType: 'S', Name: "skipped"}, &pgproto3.Sync{})
		c.recvRFQ(1)
		c.query("select 'next'")
	}},
	{name: "ddl_invalidation", run: func(c *wireConn) {
		c.note("a statement parsed after a schema change sees the new schema")
		c.query("drop table if exists ddl_tr; create table ddl_tr(a int); insert into ddl_tr values (1)")
		c.send(&pgproto3.Parse{Name: "s1", Query: "select * from ddl_tr"}, &pgproto3.Sync{})
		c.recvRFQ(1)
		c.send(&pgproto3.Bind{PreparedStatement: "s1"}, &pgproto3.Describe{ObjectType: 'P'}, &pgproto3.Execute{}, &pgproto3.Sync{})
		c.recvRFQ(1)
		c.query("drop table ddl_tr; create table ddl_tr(a text, b int); insert into ddl_tr values ('x', 2)")
		c.send(&pgproto3.Parse{Name: "s2", Query: "select * from ddl_tr"}, &pgproto3.Sync{})
		c.recvRFQ(1)
		c.send(&pgproto3.Bind{PreparedStatement: "s2"}, &pgproto3.Describe{ObjectType: 'P'}, &pgproto3.Execute{}, &pgproto3.Sync{})
		c.recvRFQ(1)
		c.note("ALTER COLUMN ... TYPE: a new Parse infers the new parameter type")
		c.query("drop table if exists ddl_tr2; create table ddl_tr2(c int)")
		c.send(&pgproto3.Parse{Name: "i1", Query: "insert into ddl_tr2 values ($1)"}, &pgproto3.Sync{})
		c.recvRFQ(1)
		c.send(&pgproto3.Bind{PreparedStatement: "i1", Parameters: [][]byte{[]byte("1")}}, &pgproto3.Execute{}, &pgproto3.Sync{})
		c.recvRFQ(1)
		c.query("alter table ddl_tr2 alter column c type text")
		c.send(&pgproto3.Parse{Name: "i2", Query: "insert into ddl_tr2 values ($1)"}, &pgproto3.Describe{ObjectType: 'S', Name: "i2"}, &pgproto3.Sync{})
		c.recvRFQ(1)
		c.send(&pgproto3.Bind{PreparedStatement: "i2", Parameters: [][]byte{[]byte("abc")}}, &pgproto3.Execute{}, &pgproto3.Sync{})
		c.recvRFQ(1)
		c.note("DROP TYPE and create it again")
		c.query("drop type if exists ddl_mood; create type ddl_mood as enum ('a', 'b')")
		c.send(&pgproto3.Parse{Name: "m1", Query: "select $1::ddl_mood as m"}, &pgproto3.Bind{PreparedStatement: "m1", Parameters: [][]byte{[]byte("a")}}, &pgproto3.Execute{}, &pgproto3.Sync{})
		c.recvRFQ(1)
		c.query("drop type ddl_mood; create type ddl_mood as enum ('a', 'b', 'c')")
		c.send(&pgproto3.Parse{Name: "m2", Query: "select $1::ddl_mood as m"}, &pgproto3.Bind{PreparedStatement: "m2", Parameters: [][]byte{[]byte("c")}}, &pgproto3.Execute{}, &pgproto3.Sync{})
		c.recvRFQ(1)
		c.query("drop table ddl_tr, ddl_tr2; drop type ddl_mood")
	}},
	{name: "ddl_stale_statement", run: func(c *wireConn) {
		ddlStaleScenario(c, "table re-created through the client's connection", func(string) *wireConn { return c },
			"drop table if exists ddl_st; create table ddl_st(a int); insert into ddl_st values (1)",
			"select * from ddl_st where $1::int > 0", []byte("1"),
			"drop table ddl_st; create table ddl_st(a text, b int); insert into ddl_st values ('x', 2)")
		direct := func(string) *wireConn { return dialWire(c.t, directAddr(), nil) }
		ddlStaleScenario(c, "table re-created directly", direct,
			"drop table if exists ddl_st; create table ddl_st(a int); insert into ddl_st values (1)",
			"select * from ddl_st where $1::int > 0", []byte("1"),
			"drop table ddl_st; create table ddl_st(a text, b int); insert into ddl_st values ('x', 2)")
		ddlStaleScenario(c, "ALTER COLUMN ... TYPE through the client's connection", func(string) *wireConn { return c },
			"drop table if exists ddl_st; create table ddl_st(a int, b int); insert into ddl_st values (1, 2)",
			"select a, b from ddl_st where b = $1", []byte("2"),
			"alter table ddl_st alter column a type text")
		ddlStaleScenario(c, "ALTER COLUMN ... TYPE directly", direct,
			"drop table if exists ddl_st; create table ddl_st(a int, b int); insert into ddl_st values (1, 2)",
			"select a, b from ddl_st where b = $1", []byte("2"),
			"alter table ddl_st alter column a type bigint")
		ddlStaleScenario(c, "enum type re-created directly", direct,
			"drop table if exists ddl_st; drop type if exists ddl_st_mood; create type ddl_st_mood as enum ('a', 'b'); create table ddl_st(m ddl_st_mood); insert into ddl_st values ('a')",
			"select m from ddl_st where $1::int > 0", []byte("1"),
			"drop table ddl_st; drop type ddl_st_mood; create type ddl_st_mood as enum ('b', 'a'); create table ddl_st(m ddl_st_mood); insert into ddl_st values ('b')")
		ddlStaleScenario(c, "composite type re-created through the client's connection", func(string) *wireConn { return c },
			"drop table if exists ddl_st; drop type if exists ddl_st_pair; create type ddl_st_pair as (x int, y int); create table ddl_st(p ddl_st_pair); insert into ddl_st values (row(1, 2))",
			"select (p).* from ddl_st where $1::int > 0", []byte("1"),
			"drop table ddl_st; drop type ddl_st_pair; create type ddl_st_pair as (x text, y int); create table ddl_st(p ddl_st_pair); insert into ddl_st values (row('z', 3))")
		c.query("drop table ddl_st; drop type if exists ddl_st_mood; drop type if exists ddl_st_pair")
	}},
	{name: "ddl_frozen_parameter", txDiffers: "a client's first Parse after ALTER COLUMN ... TYPE run directly can get the parameter type of a server statement prepared before it, until an error",
		run: func(c *wireConn) {
			c.note("a parameter type inferred before ALTER COLUMN ... TYPE run directly")
			c.query("drop table if exists ddl_fp; create table ddl_fp(a int, b int); insert into ddl_fp values (1, 2)")
			c.send(&pgproto3.Parse{Name: "fp", Query: "select a from ddl_fp where b = $1"}, &pgproto3.Describe{ObjectType: 'S', Name: "fp"}, &pgproto3.Sync{})
			c.recvRFQ(1)
			c.send(&pgproto3.Bind{PreparedStatement: "fp", Parameters: [][]byte{[]byte("2")}}, &pgproto3.Execute{}, &pgproto3.Sync{})
			c.recvRFQ(1)
			d := dialWire(c.t, directAddr(), nil)
			d.query("alter table ddl_fp alter column b type text")
			d.terminate()
			prepare := func(c *wireConn, close bool) {
				var msgs []pgproto3.FrontendMessage
				if close {
					msgs = append(msgs, &pgproto3.Close{ObjectType: 'S', Name: "fp"})
				}
				msgs = append(msgs, &pgproto3.Parse{Name: "fp", Query: "select a from ddl_fp where b = $1"}, &pgproto3.Describe{ObjectType: 'S', Name: "fp"},
					&pgproto3.Bind{PreparedStatement: "fp", Parameters: [][]byte{[]byte("x")}}, &pgproto3.Execute{}, &pgproto3.Sync{})
				c.send(msgs...)
				c.recvRFQ(1)
			}
			c.note("another client prepares it for the first time (through the proxy: on the server connection that has it from before)")
			other := dialWire(c.t, c.addr, nil)
			prepare(other, false)
			other.note("and again, after that error")
			prepare(other, true)
			other.terminate()
			c.lines = append(c.lines, other.lines...)
			c.note("the first client prepares it again: the new parameter type")
			prepare(c, true)
			c.send(&pgproto3.Close{ObjectType: 'S', Name: "fp"}, &pgproto3.Sync{})
			c.recvRFQ(1)
			c.query("drop table ddl_fp")
		}},
	{name: "server_fatal", ends: true, run: func(c *wireConn) {
		c.query("set idle_in_transaction_session_timeout = '100ms'")
		c.query("begin")
		c.note("the server ends the idle transaction: FATAL while the client waits")
		c.recvUntil(isType[*pgproto3.ErrorResponse])
		c.expectEOF()
	}},
	{name: "pipeline", run: func(c *wireConn) {
		for i := 1; i <= 3; i++ {
			c.send(
				&pgproto3.Parse{Query: fmt.Sprintf("select %d as n, pg_sleep(0.01)::text", i)},
				&pgproto3.Bind{},
				&pgproto3.Describe{ObjectType: 'P'},
				&pgproto3.Execute{},
				&pgproto3.Sync{},
			)
		}
		c.recvRFQ(3)
		c.note("named statements pipelined with a transaction")
		c.send(
			&pgproto3.Parse{Name: "ps", Query: "select $1::int as v"},
			&pgproto3.Bind{PreparedStatement: "ps", Parameters: [][]byte{[]byte("1")}},
			&pgproto3.Execute{},
			&pgproto3.Sync{},
			&pgproto3.Query{String: "begin"},
			&pgproto3.Bind{PreparedStatement: "ps", Parameters: [][]byte{[]byte("2")}},
			&pgproto3.Execute{},
			&pgproto3.Sync{},
			&pgproto3.Query{String: "commit"},
			&pgproto3.Close{ObjectType: 'S', Name: "ps"},
			&pgproto3.Sync{},
		)
		c.recvRFQ(5)
	}},
	{name: "pipeline_named_errors", run: func(c *wireConn) {
		c.note("everything sent before reading: errors raised for names must come in order")
		c.send(
			&pgproto3.Parse{Name: "n1", Query: "select 'n1'"}, &pgproto3.Bind{PreparedStatement: "n1"}, &pgproto3.Execute{}, &pgproto3.Sync{},
			&pgproto3.Parse{Name: "n1", Query: "select 'dup'"}, &pgproto3.Bind{PreparedStatement: "n1"}, &pgproto3.Execute{}, &pgproto3.Sync{},
			&pgproto3.Parse{Query: "select 'ok'"}, &pgproto3.Bind{}, &pgproto3.Execute{},
			&pgproto3.Bind{PreparedStatement: "nope"}, &pgproto3.Execute{}, &pgproto3.Sync{},
			&pgproto3.Describe{ObjectType: 'S', Name: "n1"}, &pgproto3.Describe{ObjectType: 'S', Name: "nope"}, &pgproto3.Sync{},
			&pgproto3.Close{ObjectType: 'S', Name: "n1"}, &pgproto3.Parse{Name: "n1", Query: "select 'n1 again'"},
			&pgproto3.Bind{PreparedStatement: "n1"}, &pgproto3.Execute{}, &pgproto3.Sync{},
			&pgproto3.Parse{Name: "n2", Query: "select 1/0"}, &pgproto3.Parse{Name: "n3", Query: "select 'n3'"}, &pgproto3.Bind{PreparedStatement: "n2"}, &pgproto3.Execute{}, &pgproto3.Sync{},
			&pgproto3.Bind{PreparedStatement: "n3"}, &pgproto3.Execute{}, &pgproto3.Sync{},
		)
		c.recvRFQ(7)
		c.send(&pgproto3.Close{ObjectType: 'S', Name: "n1"}, &pgproto3.Close{ObjectType: 'S', Name: "n2"}, &pgproto3.Close{ObjectType: 'S', Name: "n3"}, &pgproto3.Sync{})
		c.recvRFQ(1)
	}},
	{name: "pipeline_error", run: func(c *wireConn) {
		for _, q := range []string{"select 1", "select 1/0", "select 3"} {
			c.send(
				&pgproto3.Parse{Query: q},
				&pgproto3.Bind{},
				&pgproto3.Execute{},
				&pgproto3.Sync{},
			)
		}
		c.recvRFQ(3)
		c.note("without Syncs between: everything after the error is skipped")
		for _, q := range []string{"select 1", "select 1/0", "select 3"} {
			c.send(&pgproto3.Parse{Query: q}, &pgproto3.Bind{}, &pgproto3.Execute{})
		}
		c.send(&pgproto3.Sync{})
		c.recvRFQ(1)
		c.note("an error at Parse")
		c.send(
			&pgproto3.Parse{Query: "selec 1"}, &pgproto3.Bind{}, &pgproto3.Execute{}, &pgproto3.Sync{},
			&pgproto3.Parse{Query: "select 'next'"}, &pgproto3.Bind{}, &pgproto3.Execute{}, &pgproto3.Sync{},
		)
		c.recvRFQ(2)
		c.note("an error inside an explicit transaction pipeline")
		c.send(
			&pgproto3.Query{String: "begin"},
			&pgproto3.Parse{Query: "select 1/0"}, &pgproto3.Bind{}, &pgproto3.Execute{}, &pgproto3.Sync{},
			&pgproto3.Parse{Query: "select 2"}, &pgproto3.Bind{}, &pgproto3.Execute{}, &pgproto3.Sync{},
			&pgproto3.Query{String: "rollback"},
		)
		c.recvRFQ(4)
	}},
	{name: "portal_suspended", run: func(c *wireConn) {
		c.send(
			&pgproto3.Parse{Query: "select g from generate_series(1, 5) g"},
			&pgproto3.Bind{},
			&pgproto3.Execute{MaxRows: 2},
			&pgproto3.Flush{},
		)
		c.recvUntil(isType[*pgproto3.PortalSuspended])
		c.send(&pgproto3.Execute{MaxRows: 2}, &pgproto3.Flush{})
		c.recvUntil(isType[*pgproto3.PortalSuspended])
		c.send(&pgproto3.Execute{}, &pgproto3.Sync{})
		c.recvRFQ(1)
		c.note("a named portal across Syncs inside a transaction")
		c.query("begin")
		c.send(
			&pgproto3.Parse{Query: "select g from generate_series(1, 4) g"},
			&pgproto3.Bind{DestinationPortal: "cur"},
			&pgproto3.Execute{Portal: "cur", MaxRows: 3},
			&pgproto3.Sync{},
		)
		c.recvRFQ(1)
		c.send(&pgproto3.Execute{Portal: "cur", MaxRows: 3}, &pgproto3.Sync{})
		c.recvRFQ(1)
		c.send(&pgproto3.Close{ObjectType: 'P', Name: "cur"}, &pgproto3.Sync{})
		c.recvRFQ(1)
		c.query("commit")
	}},
	{name: "flush", run: func(c *wireConn) {
		c.send(
			&pgproto3.Parse{Query: "select 42 as answer"},
			&pgproto3.Bind{},
			&pgproto3.Describe{ObjectType: 'P'},
			&pgproto3.Execute{},
			&pgproto3.Flush{},
		)
		c.recvUntil(isType[*pgproto3.CommandComplete])
		c.send(&pgproto3.Sync{})
		c.recvRFQ(1)
		c.note("a named Parse and Describe answered on Flush")
		c.send(&pgproto3.Parse{Name: "fs", Query: "select $1::text as t"}, &pgproto3.Flush{})
		c.recvUntil(isType[*pgproto3.ParseComplete])
		c.send(&pgproto3.Describe{ObjectType: 'S', Name: "fs"}, &pgproto3.Flush{})
		c.recvUntil(isType[*pgproto3.RowDescription])
		c.send(&pgproto3.Bind{PreparedStatement: "fs", Parameters: [][]byte{[]byte("x")}}, &pgproto3.Flush{})
		c.recvUntil(isType[*pgproto3.BindComplete])
		c.send(&pgproto3.Execute{}, &pgproto3.Flush{})
		c.recvUntil(isType[*pgproto3.CommandComplete])
		c.send(&pgproto3.Close{ObjectType: 'S', Name: "fs"}, &pgproto3.Flush{})
		c.recvUntil(isType[*pgproto3.CloseComplete])
		c.send(&pgproto3.Sync{})
		c.recvRFQ(1)
		c.note("Close of a statement parsed in an earlier transaction, answered on Flush")
		c.send(&pgproto3.Parse{Name: "fs2", Query: "select 2"}, &pgproto3.Sync{})
		c.recvRFQ(1)
		c.send(&pgproto3.Close{ObjectType: 'S', Name: "fs2"}, &pgproto3.Flush{})
		c.recvUntil(isType[*pgproto3.CloseComplete])
		c.send(&pgproto3.Sync{})
		c.recvRFQ(1)
		c.note("Sync alone, idle and in a transaction")
		c.send(&pgproto3.Sync{})
		c.recvRFQ(1)
		c.query("begin")
		c.send(&pgproto3.Sync{}, &pgproto3.Sync{})
		c.recvRFQ(2)
		c.query("commit")
		c.note("an error answered on Flush")
		c.send(&pgproto3.Parse{Query: "select 1/0"}, &pgproto3.Bind{}, &pgproto3.Execute{}, &pgproto3.Flush{})
		c.recvUntil(isType[*pgproto3.ErrorResponse])
		c.send(&pgproto3.Sync{})
		c.recvRFQ(1)
	}},
	{name: "copy_out", run: func(c *wireConn) {
		c.send(&pgproto3.Query{String: "copy (select 10 / (3 - g) from generate_series(1, 5) g) to stdout"})
		c.recvRFQ(1)
		c.send(&pgproto3.Query{String: "copy (select g, 'v' || g from generate_series(1, 3) g) to stdout"})
		c.recvRFQ(1)
		c.send(&pgproto3.Query{String: "copy (select g from generate_series(1, 2) g) to stdout with (format csv, header)"})
		c.recvRFQ(1)
		c.note("COPY TO STDOUT through the extended protocol")
		c.send(
			&pgproto3.Parse{Query: "copy (select 'ext' as x) to stdout"},
			&pgproto3.Bind{},
			&pgproto3.Describe{ObjectType: 'P'},
			&pgproto3.Execute{},
			&pgproto3.Sync{},
		)
		c.recvRFQ(1)
	}},
	{name: "copy_in", run: func(c *wireConn) {
		c.query("begin; create table transcript_copy(a int, b text)")
		c.send(&pgproto3.Query{String: "copy transcript_copy from stdin"})
		c.recvUntil(isType[*pgproto3.CopyInResponse])
		c.send(&pgproto3.CopyData{Data: []byte("1\tone\n")}, &pgproto3.CopyData{Data: []byte("2\ttwo\n3\t\\N\n")}, &pgproto3.CopyDone{})
		c.recvRFQ(1)
		c.query("select * from transcript_copy order by a")
		c.note("CopyFail")
		c.query("savepoint sp")
		c.send(&pgproto3.Query{String: "copy transcript_copy from stdin"})
		c.recvUntil(isType[*pgproto3.CopyInResponse])
		c.send(&pgproto3.CopyData{Data: []byte("4\tfour\n")}, &pgproto3.CopyFail{Message: "client gave up"})
		c.recvRFQ(1)
		c.query("rollback to sp")
		c.note("bad data: the server errors while the client still sends")
		c.send(&pgproto3.Query{String: "copy transcript_copy from stdin"})
		c.recvUntil(isType[*pgproto3.CopyInResponse])
		c.send(&pgproto3.CopyData{Data: []byte("x\ty\n")}, &pgproto3.CopyData{Data: []byte("5\tfive\n")}, &pgproto3.CopyDone{})
		c.recvRFQ(1)
		c.query("rollback")
		c.query("select 'still usable'")
	}},
	{name: "copy_in_extended", run: func(c *wireConn) {
		c.query("begin; create table transcript_copy_ext(a int)")
		c.note("libpq's PQexecParams(COPY FROM STDIN): Sync is sent with the Execute and once more after CopyDone; the server ignores the first")
		c.send(
			&pgproto3.Parse{Query: "copy transcript_copy_ext from stdin"},
			&pgproto3.Bind{},
			&pgproto3.Describe{ObjectType: 'P'},
			&pgproto3.Execute{},
			&pgproto3.Sync{},
		)
		c.recvUntil(isType[*pgproto3.CopyInResponse])
		c.send(&pgproto3.CopyData{Data: []byte("1\n2\n")}, &pgproto3.CopyDone{}, &pgproto3.Sync{})
		c.recvRFQ(1)
		c.query("select count(*) from transcript_copy_ext")
		c.note("pgx style: Flush instead of the first Sync")
		c.send(
			&pgproto3.Parse{Query: "copy transcript_copy_ext from stdin"},
			&pgproto3.Bind{},
			&pgproto3.Execute{},
			&pgproto3.Flush{},
		)
		c.recvUntil(isType[*pgproto3.CopyInResponse])
		c.send(&pgproto3.CopyData{Data: []byte("3\n")}, &pgproto3.CopyDone{}, &pgproto3.Sync{})
		c.recvRFQ(1)
		c.query("select count(*) from transcript_copy_ext")
		c.query("rollback")
		c.query("select 'idle again'")
	}},
	{name: "listen_notify", pins: true, run: func(c *wireConn) {
		c.query("listen transcript_chan")
		ctx, cancel := context.WithTimeout(context.Background(), wireTimeout)
		defer cancel()
		other, err := pgconn.Connect(ctx, cluster.DSN(""))
		if err != nil {
			c.t.Fatal(err)
		}
		defer other.Close(ctx)
		if _, err := other.Exec(ctx, "notify transcript_chan, 'hello'").ReadAll(); err != nil {
			c.t.Fatal(err)
		}
		c.note("delivered while the client is idle")
		c.recvUntil(isType[*pgproto3.NotificationResponse])
		c.query("notify transcript_chan, 'self'")
		c.query("unlisten *")
	}},
	{name: "large_values", run: func(c *wireConn) {
		const n = 5 << 20
		c.query(fmt.Sprintf("select repeat('x', %d) as big, 'small' as s", n))
		big := strings.Repeat("y", n)
		c.send(
			&pgproto3.Parse{Query: "select length($1::text), md5($1::text)"},
			&pgproto3.Bind{Parameters: [][]byte{[]byte(big)}},
			&pgproto3.Execute{},
			&pgproto3.Sync{},
		)
		c.recvRFQ(1)
		c.query("select length('" + big[:1<<20] + "')")
	}},
	{name: "function_call", run: func(c *wireConn) {
		// 177 is int4pl (pg_proc.dat), stable across versions.
		c.send(&pgproto3.FunctionCall{Function: 177, ArgFormatCodes: []uint16{1}, Arguments: [][]byte{be32(2), be32(3)}, ResultFormatCode: 1})
		c.recvRFQ(1)
		c.send(&pgproto3.FunctionCall{Function: 177, ArgFormatCodes: []uint16{0}, Arguments: [][]byte{[]byte("40"), []byte("2")}, ResultFormatCode: 0})
		c.recvRFQ(1)
		c.note("an error in a function call")
		c.send(&pgproto3.FunctionCall{Function: 177, ArgFormatCodes: []uint16{0}, Arguments: [][]byte{[]byte("2147483647"), []byte("1")}, ResultFormatCode: 0})
		c.recvRFQ(1)
	}},
}

// runScenario runs sc on a new connection to addr and returns the
// transcript. check, when set, runs while the client is still connected and
// idle.
func runScenario(t *testing.T, addr string, sc scenario, check func()) []string {
	t.Helper()
	params := map[string]string{"application_name": "transcript", "DateStyle": "ISO, DMY", "options": "-c extra_float_digits=1"}
	if sc.bare {
		params = map[string]string{}
	}
	for k, v := range sc.params {
		params[k] = v
	}
	c := dialWire(t, addr, params)
	sc.run(c)
	if check != nil {
		check()
	}
	c.terminate()
	return c.lines
}

// waitPool polls until cond holds for the proxy's pool statistics summed
// over pools, or fails after timeout.
func waitPool(t testing.TB, p *Proxy, timeout time.Duration, what string, cond func(active, idle int) bool) {
	t.Helper()
	var active, idle int
	if !testutil.Within(timeout, func() bool {
		active, idle = 0, 0
		for _, st := range p.PoolStats() {
			active += st.ServersActive
			idle += st.ServersIdle
		}
		return cond(active, idle)
	}) {
		t.Fatalf("%s: pool has %d active and %d idle servers", what, active, idle)
	}
}

// TestWireTranscripts runs each scenario directly against Postgres and
// through the proxy in both pool modes and requires the same messages, equal
// to the golden transcript in testdata/transcripts.
func TestWireTranscripts(t *testing.T) {
	direct := map[string][]string{}
	t.Run("direct", func(t *testing.T) {
		for _, sc := range transcriptScenarios {
			t.Run(sc.name, func(t *testing.T) {
				lines := runScenario(t, directAddr(), sc, nil)
				direct[sc.name] = lines
				compareGolden(t, filepath.Join("testdata", "transcripts", sc.name+".txt"), lines)
			})
		}
	})
	for _, mode := range []PoolMode{SessionMode, TransactionMode} {
		t.Run(string(mode), func(t *testing.T) {
			p := testProxy(t, withMode(mode, 2))
			for _, sc := range transcriptScenarios {
				t.Run(sc.name, func(t *testing.T) {
					want, ok := direct[sc.name]
					if !ok {
						t.Skip("direct run failed")
					}
					if sc.txDiffers != "" && mode == TransactionMode {
						// The documented difference, asserted as such.
						got := runScenario(t, p.Addr().String(), sc, nil)
						compareGolden(t, filepath.Join("testdata", "transcripts", sc.name+".transaction.txt"), got)
						if reflect.DeepEqual(got, want) {
							t.Fatalf("transaction mode now behaves as Postgres: drop txDiffers (%s) and its golden file", sc.txDiffers)
						}
						waitPool(t, p, 2*time.Second, "after the client left", func(active, _ int) bool { return active == 0 })
						return
					}
					if sc.ends {
						compareTranscripts(t, "direct", want, "proxy", runScenario(t, p.Addr().String(), sc, nil))
						waitPool(t, p, 2*time.Second, "after the server ended the session", func(active, _ int) bool { return active == 0 })
						return
					}
					servers := 0
					check := func() {
						if mode == TransactionMode && !sc.pins {
							waitPool(t, p, 2*time.Second, "idle transaction-mode client still holds its server", func(active, _ int) bool { return active == 0 })
						}
						for _, st := range p.PoolStats() {
							servers += st.ServersActive + st.ServersIdle
						}
					}
					got := runScenario(t, p.Addr().String(), sc, check)
					compareTranscripts(t, "direct", want, "proxy", got)
					// Every server goes back to the pool clean, none is
					// destroyed.
					waitPool(t, p, 2*time.Second, "after the client left", func(active, idle int) bool { return active == 0 && idle == servers })
				})
			}
		})
	}
}

// compareTranscripts reports the first difference with some context.
func compareTranscripts(t testing.TB, aName string, a []string, bName string, b []string) {
	t.Helper()
	n := max(len(a), len(b))
	for i := 0; i < n; i++ {
		var x, y string
		if i < len(a) {
			x = a[i]
		}
		if i < len(b) {
			y = b[i]
		}
		if x != y {
			from := max(0, i-3)
			var ctx strings.Builder
			for j := from; j < i && j < len(a); j++ {
				fmt.Fprintf(&ctx, "   %s\n", a[j])
			}
			t.Fatalf("transcripts differ at line %d:\n%s%s: %s\n%s: %s\n(%s has %d lines, %s has %d)",
				i+1, ctx.String(), aName, x, bName, y, aName, len(a), bName, len(b))
		}
	}
}

func compareGolden(t testing.TB, path string, lines []string) {
	t.Helper()
	text := strings.Join(lines, "\n") + "\n"
	if *update {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		t.Fatalf("%s missing: run go test ./pooler -run TestWireTranscripts -update", path)
	}
	if err != nil {
		t.Fatal(err)
	}
	compareTranscripts(t, "golden", strings.Split(strings.TrimSuffix(string(want), "\n"), "\n"), "direct", lines)
}

// TestStartupParameters compares the ParameterStatus values at startup
// directly and through the proxy (order and the set may differ; values of
// parameters reported by both must agree, and the ones clients rely on must
// be there).
func TestStartupParameters(t *testing.T) {
	canonical := map[string]string{"application_name": "startup-test", "DateStyle": "ISO, DMY", "TimeZone": "Europe/Paris", "options": "-c extra_float_digits=1 -c search_path=pg_catalog"}
	// Postgres reports the values it settled on, not the client's spelling.
	spelled := map[string]string{"application_name": "startup-test", "datestyle": "iso,dmy", "timezone": "europe/paris", "client_encoding": "utf8", "options": "-c extra_float_digits=1 -c search_path=pg_catalog"}
	for name, params := range map[string]map[string]string{"canonical": canonical, "client-spelling": spelled} {
		t.Run(name, func(t *testing.T) {
			if name == "client-spelling" {
			}
			testStartupParameters(t, params)
		})
	}
}

func testStartupParameters(t *testing.T, params map[string]string) {
	d := dialWire(t, directAddr(), params)
	for _, mode := range []PoolMode{SessionMode, TransactionMode} {
		t.Run(string(mode), func(t *testing.T) {
			p := testProxy(t, withMode(mode, 2))
			// Several times: later logins may reuse a server or, in
			// transaction mode, the pool's cached parameters.
			for i := 0; i < 3; i++ {
				c := dialWire(t, p.Addr().String(), params)
				for _, name := range []string{"application_name", "DateStyle", "TimeZone", "client_encoding", "server_encoding",
					"server_version", "integer_datetimes", "standard_conforming_strings", "IntervalStyle", "is_superuser", "session_authorization"} {
					if c.params[name] != d.params[name] {
						t.Errorf("login %d: ParameterStatus %s = %q through the proxy, %q directly", i, name, c.params[name], d.params[name])
					}
				}
				for name, v := range c.params {
					if dv, ok := d.params[name]; ok && dv != v {
						t.Errorf("login %d: ParameterStatus %s = %q through the proxy, %q directly", i, name, v, dv)
					}
				}
				if c.pid == 0 || len(c.key) == 0 {
					t.Errorf("no BackendKeyData through the proxy")
				}
				// The settings took effect, not only the reports.
				c.send(&pgproto3.Query{String: "select current_setting('extra_float_digits'), current_setting('search_path'), current_setting('TimeZone')"})
				var row []string
				c.recvUntil(func(m pgproto3.BackendMessage) bool {
					if dr, ok := m.(*pgproto3.DataRow); ok {
						for _, v := range dr.Values {
							row = append(row, string(v))
						}
					}
					return isType[*pgproto3.ReadyForQuery](m)
				})
				if strings.Join(row, "|") != "1|pg_catalog|Europe/Paris" {
					t.Errorf("login %d: settings through the proxy: %q", i, row)
				}
				c.terminate()
			}
		})
	}
}

// ddlStaleScenario: a statement prepared and described before a schema
// change (ddl, sent on the connection ddlConn returns) and run after it,
// outside and inside a transaction, then prepared again. Postgres fails
// the stale statement with 0A000 ("cached plan must not change result
// type"), inside a transaction aborting it. Through a transaction pool
// the statement must fail the same way on a server connection that never
// had it: a second client holds the server connection that prepared it
// (the pool hands out the most recently used first), so the client runs
// it on the other one.
func ddlStaleScenario(c *wireConn, what string, ddlConn func(string) *wireConn, setup, query string, param []byte, ddl string) {
	c.note(what)
	c.query(setup)
	c.send(&pgproto3.Parse{Name: "st", Query: query}, &pgproto3.Describe{ObjectType: 'S', Name: "st"}, &pgproto3.Sync{})
	c.recvRFQ(1)
	c.send(&pgproto3.Bind{PreparedStatement: "st", Parameters: [][]byte{param}}, &pgproto3.Execute{}, &pgproto3.Sync{})
	c.recvRFQ(1)
	other := dialWire(c.t, c.addr, nil)
	other.query("begin; select 1")
	d := ddlConn(ddl)
	d.query(ddl)
	if d != c {
		d.terminate()
	}
	c.send(&pgproto3.Bind{PreparedStatement: "st", Parameters: [][]byte{param}}, &pgproto3.Execute{}, &pgproto3.Sync{})
	c.recvRFQ(1)
	c.send(&pgproto3.Describe{ObjectType: 'S', Name: "st"}, &pgproto3.Sync{})
	c.recvRFQ(1)
	c.query("begin")
	c.send(&pgproto3.Bind{PreparedStatement: "st", Parameters: [][]byte{param}}, &pgproto3.Execute{}, &pgproto3.Sync{})
	c.recvRFQ(1)
	c.query("rollback")
	c.note("prepared again: the new shape")
	c.send(&pgproto3.Close{ObjectType: 'S', Name: "st"}, &pgproto3.Parse{Name: "st", Query: query}, &pgproto3.Describe{ObjectType: 'S', Name: "st"},
		&pgproto3.Bind{PreparedStatement: "st", Parameters: [][]byte{param}}, &pgproto3.Execute{}, &pgproto3.Sync{})
	c.recvRFQ(1)
	c.send(&pgproto3.Close{ObjectType: 'S', Name: "st"}, &pgproto3.Sync{})
	c.recvRFQ(1)
	other.query("commit")
	other.terminate()
}
