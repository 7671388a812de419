package admin

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgerrcode"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgaudit-proxy/pgaudit/analyzer"
	"github.com/pgaudit-proxy/pgaudit/pooler"
	"github.com/pgaudit-proxy/pgaudit/wire"
)

// SQLSTATE codes the console sends besides wire's.
const (
	codeSyntaxError     = pgerrcode.SyntaxError
	codeConfigFileError = pgerrcode.ConfigFileError
)

// serverVersion is the server_version the console reports; psql reads its
// leading number to pick the queries it may send.
const serverVersion = "15.0 (pgaudit)"

// Console is the SQL admin console: a pooler.AdminHandler that answers
// PgBouncer's admin commands, plus SHOW QUERIES and SHOW FINDINGS, over the
// simple query protocol. Get it from Admin.Console. Each client session is
// served on the proxy's goroutine for that client, one command at a time.
type Console struct {
	a *Admin
}

var _ pooler.AdminHandler = (*Console)(nil)

// consoleConns tracks open console connections so Admin.Close can end
// them (the proxy does not close admin connections itself).
var consoleConns sync.Map // *wire.Conn -> *Admin

// ServeAdmin serves one authenticated admin client until it sends
// Terminate, disconnects, or ctx ends (the connection is then closed). It
// sends the welcome messages itself. The error is the one that ended the
// session (nil after Terminate).
func (c *Console) ServeAdmin(ctx context.Context, conn *wire.Conn, user string) error {
	a := c.a
	consoleConns.Store(conn, a)
	defer consoleConns.Delete(conn)
	stop := context.AfterFunc(ctx, func() { _ = conn.Close() })
	defer stop()

	out := wire.AppendAuthOK(nil)
	for _, p := range [][2]string{
		{"server_version", serverVersion},
		{"server_encoding", "UTF8"},
		{"client_encoding", "UTF8"},
		{"DateStyle", "ISO"},
		{"TimeZone", "UTC"},
		{"integer_datetimes", "on"},
		{"standard_conforming_strings", "on"},
		{"application_name", ""},
	} {
		out = wire.AppendParameterStatus(out, p[0], p[1])
	}
	var key [4]byte
	_, _ = rand.Read(key[:])
	var pidb [4]byte
	_, _ = rand.Read(pidb[:])
	out = wire.AppendBackendKeyData(out, binary.BigEndian.Uint32(pidb[:])&0x3fffffff, key[:])
	out = wire.AppendReadyForQuery(out, wire.TxIdle)
	if err := conn.WriteRaw(out); err != nil {
		return err
	}
	if err := conn.Flush(); err != nil {
		return err
	}
	s := &consoleSession{a: a, conn: conn, user: user, ctx: ctx}
	return s.run()
}

// consoleSession is one admin client.
type consoleSession struct {
	a    *Admin
	conn *wire.Conn
	user string
	ctx  context.Context
	// extFailed is set after an extended-protocol message was refused,
	// until the client's Sync.
	extFailed bool
	// afterReply runs once the reply to the current Query was sent.
	afterReply func()
}

func (s *consoleSession) run() error {
	for {
		typ, raw, err := s.conn.R.ReadMessage()
		if err != nil {
			var tl *wire.MessageTooLargeError
			var overBudget *wire.BufferBudgetError
			switch {
			case errors.As(err, &tl) || errors.Is(err, wire.ErrInvalidLength):
				_ = s.conn.SendError(wire.Fatal(wire.CodeProtocolViolation, err.Error()))
			case errors.As(err, &overBudget):
				_ = s.conn.SendError(wire.Fatal(wire.CodeOutOfMemory, err.Error()))
			}
			return err
		}
		body := raw[5:]
		switch typ {
		case wire.MsgQuery:
			q, err := wire.DecodeQuery(body)
			if err != nil {
				_ = s.conn.SendError(wire.Fatal(wire.CodeProtocolViolation, "malformed Query message"))
				return err
			}
			out := s.query(q)
			out = wire.AppendReadyForQuery(out, wire.TxIdle)
			err = s.write(out)
			if f := s.afterReply; f != nil {
				s.afterReply = nil
				go f()
			}
			if err != nil {
				return err
			}
		case wire.MsgParse, wire.MsgBind, wire.MsgDescribe, wire.MsgExecute, wire.MsgClose:
			if !s.extFailed {
				s.extFailed = true
				e := wire.Errorf(wire.CodeFeatureNotSupported, "the admin console supports the simple query protocol only")
				e.Hint = "Send commands as simple Query messages (psql does; with pgx use QueryExecModeSimpleProtocol)."
				if err := s.conn.WriteRaw(e.AppendErrorResponse(nil)); err != nil {
					return err
				}
			}
		case wire.MsgFunctionCall:
			e := wire.Errorf(wire.CodeFeatureNotSupported, "the admin console supports the simple query protocol only")
			if err := s.write(wire.AppendReadyForQuery(e.AppendErrorResponse(nil), wire.TxIdle)); err != nil {
				return err
			}
		case wire.MsgSync:
			s.extFailed = false
			if err := s.write(wire.AppendReadyForQuery(nil, wire.TxIdle)); err != nil {
				return err
			}
		case wire.MsgFlush:
			if err := s.conn.Flush(); err != nil {
				return err
			}
		case wire.MsgTerminate:
			return nil
		case wire.MsgCopyData, wire.MsgCopyDone, wire.MsgCopyFail, wire.MsgPassword:
			// Stray COPY data or password messages: nothing to do.
		default:
			_ = s.conn.SendError(wire.Fatal(wire.CodeProtocolViolation, fmt.Sprintf("unexpected message type %q", typ)))
			return fmt.Errorf("admin console: unexpected message type %q", typ)
		}
	}
}

func (s *consoleSession) write(b []byte) error {
	if err := s.conn.WriteRaw(b); err != nil {
		return err
	}
	return s.conn.Flush()
}

// query runs every command of a Query message and returns the replies
// (without ReadyForQuery). As in Postgres, the first failing command ends
// the message.
func (s *consoleSession) query(q string) []byte {
	var out []byte
	ran := false
	for _, part := range strings.Split(q, ";") {
		cmd := strings.TrimSpace(part)
		if cmd == "" {
			continue
		}
		ran = true
		res, err := s.exec(cmd)
		out = append(out, res...)
		if err != nil {
			var we *wire.Error
			if !errors.As(err, &we) {
				we = wire.Errorf(wire.CodeInternalError, err.Error())
			}
			return we.AppendErrorResponse(out)
		}
	}
	if !ran {
		out, _ = (&pgproto3.EmptyQueryResponse{}).Encode(out)
	}
	return out
}

// commandList is the hint sent with a syntax error, and SHOW HELP.
var helpRows = []HelpRow{
	{"SHOW POOLS", "pools: clients and server connections per database and user, wait percentiles, utilization"},
	{"SHOW STATS", "traffic per database: totals since start and averages over the last minute"},
	{"SHOW STATS_TOTALS", "the totals of SHOW STATS"},
	{"SHOW STATS_AVERAGES", "the averages of SHOW STATS"},
	{"SHOW TOTALS", "SHOW STATS summed over all databases"},
	{"SHOW CLIENTS", "client connections"},
	{"SHOW SERVERS", "server connections"},
	{"SHOW DATABASES", "configured databases"},
	{"SHOW CONFIG", "configuration settings"},
	{"SHOW LISTS", "counts of databases, users, pools, clients and servers"},
	{"SHOW QUERIES [n]", "top query shapes by total time with calls, rows, errors and p50/p90/p99"},
	{"SHOW FINDINGS", "findings of the rules (N+1, sequential scans, missing indexes, ...) with fixes"},
	{"SHOW VERSION", "pgaudit version"},
	{"SHOW HELP", "this list"},
	{"PAUSE [db]", "stop handing out server connections (all databases, or db); waits for running transactions"},
	{"RESUME [db]", "undo PAUSE"},
	{"KILL db", "disconnect every client of db and close its idle server connections"},
	{"RELOAD", "re-read the configuration and users file without dropping clients"},
	{"SHUTDOWN", "stop the proxy now"},
	{"SHUTDOWN WAIT_FOR_CLIENTS", "stop accepting clients and exit when the connected ones have left"},
}

func commandHint() string {
	names := make([]string, len(helpRows))
	for i, h := range helpRows {
		names[i] = h.Command
	}
	return "Commands: " + strings.Join(names, ", ") + "."
}

func syntaxError(msg string) *wire.Error {
	e := wire.Errorf(codeSyntaxError, msg)
	e.Hint = commandHint()
	return e
}

// unquote strips SQL identifier quotes from a database name.
func unquote(s string) string {
	if len(s) >= 2 && s[0] == '"' && s[len(s)-1] == '"' {
		return strings.ReplaceAll(s[1:len(s)-1], `""`, `"`)
	}
	return s
}

// exec runs one command and returns its reply messages.
func (s *consoleSession) exec(cmd string) ([]byte, error) {
	words := strings.Fields(cmd)
	verb := strings.ToUpper(words[0])
	args := words[1:]
	a := s.a
	switch verb {
	case "SHOW":
		if len(args) == 0 {
			return nil, syntaxError("SHOW needs an argument")
		}
		return s.show(strings.ToUpper(args[0]), args[1:])
	case "SET":
		// Drivers and tools set session parameters at connect; the
		// console has none to change, as PgBouncer's ignores them.
		out, _ := (&pgproto3.CommandComplete{CommandTag: []byte("SET")}).Encode(nil)
		return out, nil
	case "PAUSE", "RESUME":
		if len(args) > 1 {
			return nil, syntaxError(verb + " takes at most one database name")
		}
		db := ""
		if len(args) == 1 {
			db = unquote(args[0])
			if err := s.checkDatabase(db); err != nil {
				return nil, err
			}
		}
		var notice []byte
		if verb == "PAUSE" {
			notice = s.pause(db)
		} else {
			s.resume(db)
		}
		return append(notice, complete(verb)...), nil
	case "KILL":
		if len(args) != 1 {
			return nil, syntaxError("KILL needs a database name")
		}
		db := unquote(args[0])
		if err := s.checkDatabase(db); err != nil {
			return nil, err
		}
		n := 0
		if p := a.proxy.Load(); p != nil {
			n = p.Kill(db)
		}
		a.opts.Log.Info().Str("admin", s.user).Str("database", db).Int("clients", n).Msg("KILL")
		return complete("KILL"), nil
	case "RELOAD":
		if len(args) != 0 {
			return nil, syntaxError("RELOAD takes no arguments")
		}
		if a.opts.Reload == nil {
			return nil, wire.Errorf(wire.CodeFeatureNotSupported, "RELOAD is not available in this process")
		}
		a.opts.Log.Info().Str("admin", s.user).Msg("RELOAD")
		if err := a.opts.Reload(); err != nil {
			e := wire.Errorf(codeConfigFileError, "configuration not reloaded")
			e.Detail = err.Error()
			return nil, e
		}
		return complete("RELOAD"), nil
	case "SHUTDOWN":
		wait := false
		switch {
		case len(args) == 0:
		case len(args) == 1 && strings.EqualFold(args[0], "WAIT_FOR_CLIENTS"):
			wait = true
		default:
			return nil, syntaxError("SHUTDOWN takes no argument or WAIT_FOR_CLIENTS")
		}
		if a.opts.Shutdown == nil {
			return nil, wire.Errorf(wire.CodeFeatureNotSupported, "SHUTDOWN is not available in this process")
		}
		a.SetShuttingDown()
		a.opts.Log.Info().Str("admin", s.user).Bool("wait_for_clients", wait).Msg("SHUTDOWN")
		// After the reply is sent, on another goroutine: the callback may
		// close the proxy, which waits for this very goroutine.
		s.afterReply = func() { a.opts.Shutdown(wait) }
		return complete("SHUTDOWN"), nil
	}
	return nil, syntaxError(fmt.Sprintf("unrecognized admin command %q", words[0]))
}

func complete(tag string) []byte {
	out, _ := (&pgproto3.CommandComplete{CommandTag: []byte(tag)}).Encode(nil)
	return out
}

func notice(msg, detail string) []byte {
	out, _ := (&pgproto3.NoticeResponse{Severity: "NOTICE", SeverityUnlocalized: "NOTICE", Code: pgerrcode.SuccessfulCompletion, Message: msg, Detail: detail}).Encode(nil)
	return out
}

// checkDatabase refuses names that are neither configured nor pooled (any
// name is valid when a "*" entry exists) and the admin databases.
func (s *consoleSession) checkDatabase(db string) error {
	a := s.a
	cfg := a.proxyConfig()
	admins := []string{"pgaudit", "pgbouncer"}
	if cfg != nil && cfg.AdminDatabases != nil {
		admins = cfg.AdminDatabases
	}
	for _, n := range admins {
		if n == db {
			return wire.Errorf(wire.CodeObjectNotInPrerequisite, fmt.Sprintf("%q is the admin database", db))
		}
	}
	if cfg != nil {
		if _, ok := cfg.Databases[db]; ok {
			return nil
		}
		if _, ok := cfg.Databases["*"]; ok {
			return nil
		}
	}
	for _, p := range a.poolStats() {
		if p.Database == db {
			return nil
		}
	}
	return wire.Errorf(wire.CodeInvalidCatalogName, fmt.Sprintf("no such database: %s", db))
}

// pause pauses db (every database when empty) and waits until the
// transaction-mode pools concerned have no server connection held, up to
// PauseTimeout. Session-mode pools keep their clients' connections, so it
// does not wait for those. It returns a notice when it gave up waiting.
func (s *consoleSession) pause(db string) []byte {
	a := s.a
	p := a.proxy.Load()
	if p == nil {
		return nil
	}
	n := p.Pause(db)
	a.opts.Log.Info().Str("admin", s.user).Str("database", db).Int("pools", n).Msg("PAUSE")
	deadline := time.Now().Add(a.opts.PauseTimeout)
	for {
		held := 0
		for _, ps := range p.PoolStats() {
			if (db == "" || ps.Database == db) && ps.Mode == string(pooler.TransactionMode) {
				held += ps.ServersActive
			}
		}
		if held == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return notice("PAUSE: server connections still in use", strconv.Itoa(held)+" server connections are still held by clients (pinned, or in a long transaction); new transactions wait")
		}
		select {
		case <-s.ctx.Done():
			return nil
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// resume undoes PAUSE for db (every database when empty).
func (s *consoleSession) resume(db string) {
	a := s.a
	// The proxy keeps the pause state (RESUME db under a global PAUSE
	// keeps the global pause, as PgBouncer does).
	if p := a.proxy.Load(); p != nil {
		n := p.Resume(db)
		a.opts.Log.Info().Str("admin", s.user).Str("database", db).Int("pools", n).Msg("RESUME")
	}
}

// show runs SHOW what.
func (s *consoleSession) show(what string, args []string) ([]byte, error) {
	a := s.a
	noArgs := func() error {
		if len(args) > 0 {
			return syntaxError("SHOW " + what + " takes no arguments")
		}
		return nil
	}
	var t *table
	switch what {
	case "POOLS":
		t = tableOf(a.Pools())
	case "STATS":
		t = tableOf(a.Stats())
	case "STATS_TOTALS":
		t = tableOf(statsTotals(a.Stats()))
	case "STATS_AVERAGES":
		t = tableOf(statsAverages(a.Stats()))
	case "TOTALS":
		t = totalsTable(a.Stats())
	case "CLIENTS":
		t = tableOf(a.Clients())
	case "SERVERS":
		t = tableOf(a.Servers())
	case "DATABASES":
		t = tableOf(a.Databases())
	case "CONFIG":
		t = tableOf(a.settings())
	case "LISTS":
		t = tableOf(a.lists())
	case "VERSION":
		t = tableOf([]VersionRow{{"pgaudit " + a.opts.Version}})
	case "HELP":
		t = tableOf(helpRows)
	case "QUERIES":
		n := 20
		if len(args) == 1 {
			v, err := strconv.Atoi(args[0])
			if err != nil || v <= 0 {
				return nil, syntaxError("SHOW QUERIES takes a positive number of shapes")
			}
			n = v
		} else if len(args) > 1 {
			return nil, syntaxError("SHOW QUERIES takes at most one number")
		}
		t = tableOf(a.Queries(analyzer.ByTotalTime, n))
	case "FINDINGS":
		fs := a.findings()
		rows := make([]FindingRow, len(fs))
		for i, f := range fs {
			rows[i] = findingRow(f)
		}
		t = tableOf(rows)
	default:
		return nil, syntaxError(fmt.Sprintf("unrecognized SHOW argument %q", what))
	}
	if what != "QUERIES" {
		if err := noArgs(); err != nil {
			return nil, err
		}
	}
	return t.appendTo(nil, "SHOW"), nil
}

func statsTotals(rows []StatsRow) []StatsTotalsRow {
	out := make([]StatsTotalsRow, len(rows))
	for i, r := range rows {
		out[i] = StatsTotalsRow{
			Database: r.Database, ServerAssignmentCount: r.TotalServerAssignmentCount, XactCount: r.TotalXactCount,
			QueryCount: r.TotalQueryCount, BytesReceived: r.TotalReceived, BytesSent: r.TotalSent,
			XactTime: r.TotalXactTime, QueryTime: r.TotalQueryTime, WaitTime: r.TotalWaitTime,
			ClientParseCount: r.TotalClientParseCount, ServerParseCount: r.TotalServerParseCount, BindCount: r.TotalBindCount,
		}
	}
	return out
}

func statsAverages(rows []StatsRow) []StatsAveragesRow {
	out := make([]StatsAveragesRow, len(rows))
	for i, r := range rows {
		out[i] = StatsAveragesRow{
			Database: r.Database, ServerAssignmentCount: r.AvgServerAssignmentCount, XactCount: r.AvgXactCount,
			QueryCount: r.AvgQueryCount, BytesReceived: r.AvgRecv, BytesSent: r.AvgSent,
			XactTime: r.AvgXactTime, QueryTime: r.AvgQueryTime, WaitTime: r.AvgWaitTime,
			ClientParseCount: r.AvgClientParseCount, ServerParseCount: r.AvgServerParseCount, BindCount: r.AvgBindCount,
		}
	}
	return out
}

// totalsTable is SHOW TOTALS: name/value rows summed over databases.
func totalsTable(rows []StatsRow) *table {
	var sum StatsRow
	for _, r := range rows {
		sum.TotalServerAssignmentCount += r.TotalServerAssignmentCount
		sum.TotalXactCount += r.TotalXactCount
		sum.TotalQueryCount += r.TotalQueryCount
		sum.TotalReceived += r.TotalReceived
		sum.TotalSent += r.TotalSent
		sum.TotalXactTime += r.TotalXactTime
		sum.TotalQueryTime += r.TotalQueryTime
		sum.TotalWaitTime += r.TotalWaitTime
		sum.AvgServerAssignmentCount += r.AvgServerAssignmentCount
		sum.AvgXactCount += r.AvgXactCount
		sum.AvgQueryCount += r.AvgQueryCount
		sum.AvgRecv += r.AvgRecv
		sum.AvgSent += r.AvgSent
	}
	return tableOf([]nameValue{
		{"total_server_assignment_count", sum.TotalServerAssignmentCount},
		{"total_xact_count", sum.TotalXactCount},
		{"total_query_count", sum.TotalQueryCount},
		{"total_received", sum.TotalReceived},
		{"total_sent", sum.TotalSent},
		{"total_xact_time", sum.TotalXactTime},
		{"total_query_time", sum.TotalQueryTime},
		{"total_wait_time", sum.TotalWaitTime},
		{"avg_server_assignment_count", sum.AvgServerAssignmentCount},
		{"avg_xact_count", sum.AvgXactCount},
		{"avg_query_count", sum.AvgQueryCount},
		{"avg_recv", sum.AvgRecv},
		{"avg_sent", sum.AvgSent},
	})
}

// nameValue is a row of SHOW TOTALS.
type nameValue struct {
	Name  string `json:"name"`
	Value int64  `json:"value"`
}

// closeConsoles closes the console connections of a.
func (a *Admin) closeConsoles() {
	consoleConns.Range(func(k, v any) bool {
		if v.(*Admin) == a {
			_ = k.(*wire.Conn).Close()
		}
		return true
	})
}
