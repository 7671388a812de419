package pooler

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"hash"
	"hash/fnv"
	"strconv"
	"time"

	"github.com/jackc/pgerrcode"

	"github.com/pgaudit-proxy/pgaudit/wire"
)

// The extended query protocol: Parse, Bind, Describe, Execute, Close,
// Sync and Flush from the client, and its protocol-level statements and
// portals (mapped to shared server-side names in transaction mode).

// stmtDef is a client's protocol-level prepared statement.
type stmtDef struct {
	query string
	types []byte
	// serverName is the name used on server connections: derived from the
	// text and parameter types, so every client preparing the same
	// statement shares it. Unnamed client statements keep "".
	serverName string
	// verified says a server accepted the text once; failed says a
	// server rejected it (class 42: syntax, undefined object) before
	// that, so the client's name does not exist, as after a failed Parse
	// on a direct connection. Both are written under s.mu.
	verified, failed bool
	// resets says the statement may return settings to their reset
	// values (see restoreStartupLocked).
	resets bool
	// flags is scanStatement of query (transaction mode), kept for a
	// Parse of the same text (see reparse).
	flags stmtFlags
	// shape is the result shape (rowShape) the client was last told in a
	// Describe reply, "" before; see shapegate.go. Under s.mu.
	shape string
	// paramShape is the parameter types (paramShape) the client was last
	// told, "" before, and toldTypes the same as a Parse's types: a
	// server connection that never had the statement prepares it with
	// them, so that its parameters keep the types the client encodes
	// for, as the client's statement does on a direct connection after
	// a column's type changed. Under s.mu.
	paramShape string
	toldTypes  []byte
	key        string // shape + "|" + paramShape (setShapes)
	// rowDesc is the body of the last well-formed RowDescription a
	// Describe of the statement got, when shape is its shape (empty
	// otherwise; see noteRowDescription). Under s.mu.
	rowDesc []byte
}

// mayReset is the scan for flagResetGUC where statements are not scanned
// otherwise (session mode).
func mayReset(text string) bool {
	return (containsFold(text, "reset") || containsFold(text, "discard") || containsFold(text, "default")) &&
		scanStatement(text)&flagResetGUC != 0
}

// stmt returns the client's statement called name, nil if none. Client
// goroutine only.
func (s *Session) stmt(name string) *stmtDef {
	if name == "" {
		return s.unnamedStmt
	}
	return s.stmts[name]
}

// stmtBytes is stmt with the name as bytes (no string made of it).
func (s *Session) stmtBytes(name []byte) *stmtDef {
	if len(name) == 0 {
		return s.unnamedStmt
	}
	return s.stmts[string(name)]
}

// setStmt records the client's statement name; the map is made by the
// first named one, so a session that never prepares holds none. Client
// goroutine only.
func (s *Session) setStmt(name string, def *stmtDef) {
	if name == "" {
		s.unnamedStmt = def
		return
	}
	if s.stmts == nil {
		s.stmts = map[string]*stmtDef{}
	}
	s.stmts[name] = def
}

// deleteStmt forgets the client's statement name. Client goroutine only.
func (s *Session) deleteStmt(name string) {
	if name == "" {
		s.unnamedStmt = nil
		return
	}
	delete(s.stmts, name)
}

// portal returns the client's portal called name, nil if none. Client
// goroutine only.
func (s *Session) portal(name []byte) *portal {
	if len(name) == 0 {
		return s.unnamedPortal
	}
	return s.portals[string(name)]
}

// setPortal records the client's portal name; the map is made by the first
// named one. Client goroutine only.
func (s *Session) setPortal(name []byte, p *portal) {
	if len(name) == 0 {
		s.unnamedPortal = p
		return
	}
	if s.portals == nil {
		s.portals = map[string]*portal{}
	}
	s.portals[string(name)] = p
}

// deletePortal forgets the client's portal name. Client goroutine only.
func (s *Session) deletePortal(name []byte) {
	if len(name) == 0 {
		s.unnamedPortal = nil
		return
	}
	delete(s.portals, string(name))
}

// live reports whether def names an existing statement for the client;
// s.mu held.
func (def *stmtDef) live() bool { return def != nil && !def.failed }

// mapPreparedRefLocked rewrites a SQL EXECUTE or DEALLOCATE of one of the
// client's protocol-level statements (transaction mode), which the server
// knows under its shared name: EXECUTE runs the shared statement
// (prepared first when this server lacks it), DEALLOCATE forgets the
// client's name and leaves the shared statement to the others. It returns
// the bytes to send instead of raw; s.mu held, it not queued yet.
func (s *Session) mapPreparedRefLocked(srv *Server, text string, it *pending, raw []byte) []byte {
	if len(s.stmts) == 0 {
		// No protocol-level statement to map (a simple-protocol
		// client): the text need not be scanned.
		return raw
	}
	if s.txStatus == wire.TxFailed || !containsFold(text, "execute") && !containsFold(text, "deallocate") {
		// (In a failed transaction the server answers 25P02 whatever
		// the name, and nothing is deallocated.)
		return raw
	}
	ref, ok := scanPreparedRef(text)
	if !ok {
		return raw
	}
	def := s.stmt(ref.name)
	if !def.live() || def.serverName == "" {
		return raw // SQL PREPAREd (the client is pinned) or unknown: the server answers
	}
	if !ref.execute {
		s.deleteStmt(ref.name)
		// A statement with the same effect on the server (none), the
		// same errors (25P02 in a failed transaction) and a tag to
		// replace.
		it.tag = "DEALLOCATE"
		return appendQuery(nil, "SELECT WHERE false")
	}
	var out []byte
	if !srv.prepared.has(def.serverName) {
		if s.groupOpen {
			return raw
		}
		// Prepare it in a group of its own: an error there must not make
		// the server skip the Query.
		out = s.ensurePreparedLocked(srv, def)
		out = wire.AppendEmpty(out, wire.MsgSync)
		s.incInFlightLocked()
		s.queue.push(pending{kind: pendSync, swallow: true})
	}
	return appendQuery(out, text[:ref.start]+quoteIdent(def.serverName)+text[ref.end:])
}

// dropQueuedSyncsLocked removes the Syncs queued behind the head item (an
// Execute that started COPY FROM STDIN) and their in-flight counts; s.mu
// held.
func (s *Session) dropQueuedSyncsLocked() {
	q := &s.queue
	kept := q.items[:q.head+1]
	for _, it := range q.items[q.head+1:] {
		if it.kind == pendSync {
			if s.inFlight > 0 {
				s.infoMu.Lock()
				s.inFlight--
				s.infoMu.Unlock()
			}
			continue
		}
		kept = append(kept, it)
	}
	clear(q.items[len(kept):])
	q.items = kept
}

// handleExtended relays Parse, Bind, Describe, Execute, Close, Flush and
// Sync. In transaction mode statement names are mapped to shared
// server-side names and prepared on demand.
func (s *Session) handleExtended(ctx context.Context, typ byte, raw []byte) error {
	body := raw[5:]
	// Decode what we need before taking the lock (the decoding has no
	// effect on the session: a message skipped below is dropped unread,
	// decoding error included, as the server skips it).
	var (
		parse      wire.ParseMsg
		bind       wire.BindMsg
		targetKind byte
		targetName []byte
		err        error
		flags      stmtFlags
	)
	txMode := s.mode == TransactionMode
	switch typ {
	case wire.MsgParse:
		if s.reparse(body, &parse) {
			// The same text as the unnamed statement's: so are its flags.
			flags = s.unnamedStmt.flags
		} else {
			parse, err = wire.DecodeParse(body)
			if err == nil && txMode {
				flags = scanStatement(parse.Query)
			}
		}
	case wire.MsgBind:
		bind, err = wire.DecodeBind(body)
	case wire.MsgDescribe, wire.MsgClose:
		targetKind, targetName, err = wire.DecodeTarget(body)
	}
	// One hold of s.mu from here on, in the common case (a server
	// attached): taking it is paid per message.
	s.mu.Lock()
	if s.skipUntilSync {
		if typ != wire.MsgSync {
			s.mu.Unlock()
			return nil
		}
		s.skipUntilSync = false
		if s.server == nil {
			s.sendLocked(wire.AppendReadyForQuery(nil, wire.TxIdle))
			err := s.client.Flush()
			s.mu.Unlock()
			return err
		}
	}
	if err != nil {
		s.mu.Unlock()
		return wire.Fatal(wire.CodeProtocolViolation, fmt.Sprintf("invalid %q message", typ))
	}
	if typ != wire.MsgBind && typ != wire.MsgExecute && typ != wire.MsgDescribe {
		if done, err := s.answerLocallyLocked(typ, &parse, flags, targetKind, targetName); done {
			return err
		}
	}
	srv, err := s.serverForLocked(ctx, typ != wire.MsgSync, time.Time{})
	if err != nil {
		return s.acquireFailed(err, false)
	}
	// s.mu is held from here until the writes are planned.
	if s.skipUntilSync {
		// The reader saw an error of this group meanwhile: the server
		// skips the rest of it.
		if typ != wire.MsgSync {
			s.mu.Unlock()
			return nil
		}
		s.skipUntilSync = false
	}
	out := raw
	switch typ {
	case wire.MsgParse:
		var done bool
		if out, done = s.parseLocked(srv, &parse, flags, out); done {
			return nil
		}
	case wire.MsgBind:
		var done bool
		if out, done, err = s.bindLocked(ctx, srv, &bind, out); done {
			return err
		}
	case wire.MsgDescribe:
		if targetKind == wire.TargetStatement {
			var done bool
			if out, done, err = s.describeStmtLocked(ctx, srv, targetName, out); done {
				return err
			}
		} else {
			it := s.queue.add(pendDescribePortal)
			if p := s.portal(targetName); p != nil && txMode {
				it.stmt, it.serverStmt = p.stmt, serverNameOf(p.stmt)
			}
		}
	case wire.MsgExecute:
		var name []byte
		if i := indexZero(body); i > 0 {
			name = body[:i]
		}
		it := s.queue.add(pendExecute)
		it.start = s.requestNow()
		if len(name) > 0 {
			it.portal = string(name)
		}
		if p := s.portal(name); p != nil {
			it.text, it.paramHash, it.numParams, it.params = p.text, p.paramHash, p.numParams, p.params
			if p.holdZ {
				s.groupResets = true
			}
		}
		s.stampTx(it)
	case wire.MsgClose:
		if txMode && targetKind == wire.TargetStatement {
			// Answered by the proxy: the server-side statement stays for
			// other clients.
			s.queue.add(pendClose).synthetic = true
			out = nil
		} else {
			if targetKind == wire.TargetStatement {
				s.deleteStmt(string(targetName))
			} else {
				s.deletePortal(targetName)
			}
			s.queue.add(pendClose)
		}
	case wire.MsgSync:
		if s.copyInExtended {
			// Postgres ignores a Sync during COPY FROM STDIN started by
			// Execute: it gets no ReadyForQuery of its own.
			break
		}
		if !s.groupOpen {
			s.incInFlightLocked()
		}
		s.groupOpen = false
		s.groupStamped = false
		// As after a simple Query (see handleQuery).
		holdZ := s.groupResets && len(s.startupGUCs) > 0
		s.groupResets = false
		s.queue.add(pendSync).holdZ = holdZ
		if holdZ {
			out = s.restoreStartupLocked(out)
		}
	case wire.MsgFlush:
		// Synthetic answers at the head are due now: the client waits.
		s.emitSyntheticLocked()
		_ = s.client.Flush()
		// Replies without a ReadyForQuery: only a background reader can
		// relay them while the client decides what to send next.
		s.startReaderLocked(srv)
	}
	if typ != wire.MsgSync && typ != wire.MsgFlush && len(out) > srv.W.Available() {
		// The write flushes part of the group: replies may start to flow
		// before the Sync and must be read, or both sides could block.
		s.startReaderLocked(srv)
	}
	if typ == wire.MsgSync {
		return s.sendRequestLocked(srv, out)
	}
	// Never hold back what the client sent: Postgres starts
	// statement_timeout at the first message of a statement, and a client
	// may pause between Parse and Describe. Batch only while more client
	// bytes are already here.
	flush := typ == wire.MsgFlush || s.client.R.Buffered() == 0
	if flush && typ != wire.MsgFlush && (len(out) > 0 || srv.W.Buffered() > 0) {
		// Part of an open group goes out: replies may flow before its
		// Sync (an error, or rows that fill the server's buffer).
		s.startReaderLocked(srv)
	}
	if !flush && srv.W != nil && len(out) <= srv.W.Available() {
		// The bytes only join the server's write buffer: no I/O, so
		// nothing to wait for under s.mu, and no write in progress to
		// mark (writeServer takes s.mu again to clear it).
		var err error
		if len(out) > 0 {
			err = srv.WriteRaw(out)
		}
		s.mu.Unlock()
		if err != nil {
			return s.serverWriteFailed(srv, err)
		}
		return nil
	}
	s.writing = true
	s.mu.Unlock()
	return s.writeServer(srv, out, flush)
}

// answerLocallyLocked answers, without a server, a Close of a client
// statement in transaction mode, a named Parse, or a Flush or Sync with
// nothing pending, when no server is attached (s.mu held); done reports
// that it did (s.mu then released, err for handleExtended to return). Kept
// out of handleExtended, whose stack frame is touched per message.
func (s *Session) answerLocallyLocked(typ byte, parse *wire.ParseMsg, flags stmtFlags, targetKind byte, targetName []byte) (done bool, err error) {
	txMode := s.mode == TransactionMode
	// A Close of a client statement in transaction mode and a Flush with
	// nothing pending are answered locally without a server.
	if txMode && typ == wire.MsgClose && targetKind == wire.TargetStatement {
		if def := s.stmt(string(targetName)); def.live() && def.serverName != "" {
			// A client closes a statement and parses the same text again
			// when it believes the statement went stale: pgx does after
			// any error, including one it raises itself when it cannot
			// encode an argument for the parameter types it was told. That
			// Parse gets a server statement prepared anew (see
			// serverStmtName), where a parameter type inferred before an
			// ALTER COLUMN ... TYPE run directly is inferred again. (A
			// client that closes and prepares again as a habit pays what
			// it pays on a direct connection: a Parse each time.)
			if s.abandoned == nil || len(s.abandoned) > 1000 {
				s.abandoned = map[uint64][2]uint64{}
			}
			base := stmtBase(def.query, def.types)
			s.abandoned[base] = [2]uint64{s.proxy.ddlEpoch.Load(), s.proxy.stmtGen(base)}
		}
		s.deleteStmt(string(targetName))
		if s.server == nil && s.queue.len() == 0 {
			s.sendLocked(wire.CloseComplete())
			s.mu.Unlock()
			return true, nil
		}
	}
	// A named Parse from an idle client is registered without a server, as
	// PgBouncer does: the statement is prepared on whichever server runs
	// its first Bind or Describe. Holding a server here would deadlock
	// clients such as pgbench that prepare synchronously from one thread
	// while their other connections hold every server mid-transaction.
	// The cost: a syntax error surfaces at that Bind instead.
	if txMode && typ == wire.MsgParse && parse.Name != "" {
		if s.server == nil && s.queue.len() == 0 {
			if s.stmt(parse.Name).live() {
				e := &wire.Error{Severity: "ERROR", Code: pgerrcode.DuplicatePreparedStatement, Message: fmt.Sprintf("prepared statement %q already exists", parse.Name)}
				s.sendLocked(e.AppendErrorResponse(nil))
				s.skipUntilSync = true
			} else {
				s.setStmt(parse.Name, &stmtDef{query: parse.Query, types: append([]byte(nil), parse.Types...), serverName: s.serverStmtName(parse.Query, parse.Types),
					resets: flags&flagResetGUC != 0, flags: flags})
				s.clientParses++
				s.noteFlags(flags, parse.Query)
				s.sendLocked(wire.ParseComplete())
			}
			s.mu.Unlock()
			return true, nil
		}
	}
	if typ == wire.MsgFlush || typ == wire.MsgSync {
		if s.server == nil && s.queue.len() == 0 {
			if typ == wire.MsgSync {
				s.sendLocked(wire.AppendReadyForQuery(nil, wire.TxIdle))
			}
			err := s.client.Flush()
			s.mu.Unlock()
			return true, err
		}
	}
	return false, nil
}

// parseLocked plans a Parse for srv (s.mu held): it returns the bytes to
// send instead of out, or done when it answered the message itself (s.mu
// then released). The message cases live in functions of their own so
// that handleExtended's stack frame, touched per message, stays small.
func (s *Session) parseLocked(srv *Server, parse *wire.ParseMsg, flags stmtFlags, out []byte) ([]byte, bool) {
	txMode := s.mode == TransactionMode
	var inject []byte
	s.clientParses++
	// The item is filled in place at the end: nothing is queued
	// before it on the common path, and copying it costs.
	var it struct {
		serverStmt           string
		stmt                 *stmtDef
		synthetic, addedStmt bool
	}
	start := s.requestNow()
	if txMode {
		def := s.unnamedStmt
		if parse.Name != "" || def == nil || def.query != parse.Query || !bytes.Equal(def.types, parse.Types) {
			// (A client re-parsing the same unnamed statement, as
			// pgbench -M extended does, keeps its definition.)
			def = &stmtDef{query: parse.Query, types: append([]byte(nil), parse.Types...), resets: flags&flagResetGUC != 0, flags: flags}
		}
		if parse.Name != "" {
			def.serverName = s.serverStmtName(parse.Query, parse.Types)
			if s.stmt(parse.Name).live() {
				s.localErrorLocked(&wire.Error{Severity: "ERROR", Code: pgerrcode.DuplicatePreparedStatement, Message: fmt.Sprintf("prepared statement %q already exists", parse.Name)})
				s.mu.Unlock()
				return nil, true
			}
			s.setStmt(parse.Name, def)
			it.serverStmt = def.serverName
			it.stmt = def
			if srv.prepared.has(def.serverName) {
				it.synthetic = true
				out = nil
			} else {
				inject = s.closeEvictedLocked(srv, srv.prepared.add(def.serverName), def.serverName)
				it.addedStmt = true
				out = wire.AppendParse(inject, def.serverName, def.query, def.types)
				inject = nil
			}
		} else {
			s.setStmt("", def)
			srv.unnamed = def
		}
		s.noteFlags(flags, parse.Query)
	} else {
		// Session mode forwards names unchanged; the text is kept
		// for the audit events of later Executes.
		s.setStmt(parse.Name, &stmtDef{query: parse.Query, resets: len(s.startupGUCs) > 0 && mayReset(parse.Query)})
	}
	if out != nil {
		s.serverParses++
	}
	q := s.queue.add(pendParse)
	q.text, q.start, q.serverStmt, q.stmt, q.synthetic, q.addedStmt = parse.Query, start, it.serverStmt, it.stmt, it.synthetic, it.addedStmt
	return out, false
}

// bindLocked plans a Bind for srv (s.mu held), as parseLocked; with done
// it returns the error handleExtended returns.
func (s *Session) bindLocked(ctx context.Context, srv *Server, bind *wire.BindMsg, out []byte) ([]byte, bool, error) {
	txMode := s.mode == TransactionMode
	var inject []byte
	s.binds++
	var def *stmtDef
	if txMode {
		def = s.stmtBytes(bind.Statement)
		if !def.live() {
			s.localErrorLocked(noSuchStatement(string(bind.Statement)))
			s.mu.Unlock()
			return nil, true, nil
		}
		if done, err := s.gateShapeLocked(ctx, srv, def, false); done || err != nil {
			return nil, true, err
		}
		inject = s.ensurePreparedLocked(srv, def)
		if inject != nil || def.serverName != string(bind.Statement) {
			out = wire.AppendBind(inject, bind.Portal, def.serverName, bind.Rest)
		}
		inject = nil
	} else {
		def = s.stmtBytes(bind.Statement)
	}
	n, h, params, perr := wire.BindParams(bind.Rest, s.proxy.config().CaptureParams)
	if perr != nil {
		s.mu.Unlock()
		return nil, true, wire.Fatal(wire.CodeProtocolViolation, "invalid Bind message")
	}
	p := s.portal(bind.Portal)
	if p != nil {
		// Rebinding a portal (the unnamed one, usually) reuses its
		// record: nothing keeps a pointer to it.
		*p = portal{paramHash: h, numParams: int32(n), params: params, stmt: def}
	} else {
		p = &portal{paramHash: h, numParams: int32(n), params: params, stmt: def}
		s.setPortal(bind.Portal, p)
	}
	if def != nil {
		p.text, p.holdZ = def.query, def.resets
	}
	it := s.queue.add(pendBind)
	it.serverStmt, it.text, it.start = serverNameOf(def), p.text, s.requestNow()
	it.paramHash, it.numParams, it.params = p.paramHash, p.numParams, p.params
	return out, false, nil
}

// describeStmtLocked plans a Describe of a statement for srv (s.mu held),
// as bindLocked.
func (s *Session) describeStmtLocked(ctx context.Context, srv *Server, targetName []byte, out []byte) ([]byte, bool, error) {
	txMode := s.mode == TransactionMode
	var inject []byte
	it := pending{kind: pendDescribeStmt}
	if txMode {
		def := s.stmt(string(targetName))
		if !def.live() {
			s.localErrorLocked(noSuchStatement(string(targetName)))
			s.mu.Unlock()
			return nil, true, nil
		}
		if done, err := s.gateShapeLocked(ctx, srv, def, true); done || err != nil {
			return nil, true, err
		}
		inject = s.ensurePreparedLocked(srv, def)
		out = wire.AppendTarget(inject, wire.MsgDescribe, wire.TargetStatement, def.serverName)
		inject = nil
		it.serverStmt = def.serverName
		it.stmt = def
	}
	s.queue.push(it)
	return out, false, nil
}

// reparse recognizes a Parse of the unnamed statement with the same text
// and parameter types as the unnamed statement the client has (pgbench -M
// extended and most drivers' unprepared queries send one per
// statement): it fills parse as wire.DecodeParse would, reusing the
// statement's text instead of copying it, and reports whether it did.
// Client goroutine only.
func (s *Session) reparse(body []byte, parse *wire.ParseMsg) bool {
	def := s.unnamedStmt
	if def == nil || len(def.types) < 2 || len(body) < len(def.query)+2 || body[0] != 0 {
		return false
	}
	q := body[1 : 1+len(def.query)]
	rest := body[1+len(def.query):]
	if rest[0] != 0 || string(q) != def.query || !bytes.Equal(rest[1:], def.types) {
		return false
	}
	*parse = wire.ParseMsg{Query: def.query, Types: rest[1:]}
	return true
}

// noSuchStatement is Postgres's error for a Bind or Describe of a
// statement that does not exist.
func noSuchStatement(name string) *wire.Error {
	msg := fmt.Sprintf("prepared statement %q does not exist", name)
	if name == "" {
		msg = "unnamed prepared statement does not exist"
	}
	return &wire.Error{Severity: "ERROR", Code: pgerrcode.InvalidSQLStatementName, Message: msg}
}

func indexZero(b []byte) int {
	for i, c := range b {
		if c == 0 {
			return i
		}
	}
	return -1
}

func serverNameOf(def *stmtDef) string {
	if def == nil {
		return ""
	}
	return def.serverName
}

// serverStmtName derives the shared server-side name of a statement the
// client parses now: from its text, parameter types and the proxy's DDL
// epoch, so that after a schema change a Parse gets a server statement
// prepared after it (a type or column changed or re-created under the
// same name gives "cached plan must not change result type", "cache
// lookup failed for type" or a parameter type frozen at the old type on a
// statement prepared before).
//
// A client that closes its statement and parses the same text again (see
// abandoned) moves the text's generation: the statement is prepared anew
// on every server, as that client's Parse would do on a direct
// connection.
func (s *Session) serverStmtName(query string, types []byte) string {
	h := fnv.New64a()
	_, _ = h.Write([]byte(query))
	_, _ = h.Write([]byte{0})
	_, _ = h.Write(types)
	base := h.Sum64()
	p := s.proxy
	gen := p.stmtGen(base)
	name := stmtNameOf(h, p.ddlEpoch.Load(), gen)
	if at, ok := s.abandoned[base]; ok {
		delete(s.abandoned, base)
		p.stmtGenMu.Lock()
		// Unless the epoch or the generation moved since the close (the
		// name is newer than that), move the generation; generations
		// only grow, so a name never comes back.
		if gen = p.stmtGen(base); gen == at[1] && p.ddlEpoch.Load() == at[0] {
			if p.stmtGenCount.Add(1) > 100000 {
				// Bounded: start over, under a new epoch.
				p.stmtGens.Clear()
				p.stmtGenCount.Store(0)
				p.ddlEpoch.Add(1)
			}
			gen++
			p.stmtGens.Store(base, gen)
		}
		p.stmtGenMu.Unlock()
		h.Reset()
		_, _ = h.Write([]byte(query))
		_, _ = h.Write([]byte{0})
		_, _ = h.Write(types)
		name = stmtNameOf(h, s.proxy.ddlEpoch.Load(), gen)
	}
	return name
}

// stmtBase hashes a statement's text and parameter types, as the start of
// its shared name.
func stmtBase(query string, types []byte) uint64 {
	h := fnv.New64a()
	_, _ = h.Write([]byte(query))
	_, _ = h.Write([]byte{0})
	_, _ = h.Write(types)
	return h.Sum64()
}

// stmtGen returns the generation of the statement text hashed to base.
func (p *Proxy) stmtGen(base uint64) uint64 {
	if v, ok := p.stmtGens.Load(base); ok {
		return v.(uint64)
	}
	return 0
}

// stmtNameOf finishes a shared name from h (text and parameter types
// written), the DDL epoch and the text's generation.
func stmtNameOf(h hash.Hash64, epoch, gen uint64) string {
	var e [8]byte
	binary.BigEndian.PutUint64(e[:], epoch)
	_, _ = h.Write(e[:])
	if gen > 0 {
		binary.BigEndian.PutUint64(e[:], gen)
		_, _ = h.Write(e[:])
	}
	return "pgaudit_" + strconv.FormatUint(h.Sum64(), 36)
}

// noteDDLLocked records a schema change sent by the client: the epoch
// moves now and again when its transaction ends (when the change becomes
// visible to Parses on other connections); s.mu held.
func (s *Session) noteDDLLocked() {
	s.ddlSent = true
	s.proxy.ddlEpoch.Add(1)
}

// ensurePreparedLocked returns the messages to inject before a Bind or
// Describe of def so that the server has it; s.mu held.
func (s *Session) ensurePreparedLocked(srv *Server, def *stmtDef) []byte {
	if def.serverName == "" {
		if srv.unnamed == def {
			return nil
		}
		srv.unnamed = def
		s.serverParses++
		s.queue.push(pending{kind: pendParse, swallow: true, text: def.query, start: time.Now()})
		return wire.AppendParse(nil, "", def.query, def.types)
	}
	if srv.prepared.has(def.serverName) {
		return nil
	}
	s.serverParses++
	out := s.closeEvictedLocked(srv, srv.prepared.add(def.serverName), def.serverName)
	s.queue.push(pending{kind: pendParse, swallow: true, serverStmt: def.serverName, addedStmt: true, stmt: def, text: def.query, start: time.Now()})
	types := def.types
	if def.toldTypes != nil {
		types = def.toldTypes
	}
	return wire.AppendParse(out, def.serverName, def.query, types)
}

// closeEvictedLocked returns Close messages for statements that must go
// from the server before name is prepared: the one the LRU evicted and name
// itself when it was invalidated earlier.
func (s *Session) closeEvictedLocked(srv *Server, evicted, name string) []byte {
	var out []byte
	for _, n := range []string{evicted, name} {
		if n == "" {
			continue
		}
		if n == evicted || srv.prepared.toClose[n] {
			delete(srv.prepared.toClose, n)
			s.queue.push(pending{kind: pendClose, swallow: true})
			out = wire.AppendTarget(out, wire.MsgClose, wire.TargetStatement, n)
		}
	}
	return out
}

// localErrorLocked answers the current extended-protocol group with an
// error raised by the proxy, in order after the responses still due, and
// drops the rest of the group up to Sync.
func (s *Session) localErrorLocked(e *wire.Error) {
	s.emitSyntheticLocked()
	if s.queue.len() == 0 {
		s.sendLocked(e.AppendErrorResponse(nil))
		_ = s.client.Flush()
	} else {
		// Let the server's responses for earlier messages come first: ask
		// for them with a Flush and queue the error behind them.
		s.queue.push(pending{kind: pendClose, synthetic: true, text: "\x00error", params: []string{e.Code, e.Message}})
	}
	s.skipUntilSync = true
	if s.groupOpen {
		// The group's Sync will still be forwarded to close it.
		return
	}
}

// emitSyntheticLocked sends the proxy's own answers at the head of the
// queue; s.mu held.
func (s *Session) emitSyntheticLocked() {
	for {
		it := s.queue.front()
		if it == nil || !it.synthetic {
			return
		}
		switch {
		case it.text == "\x00error":
			e := &wire.Error{Severity: "ERROR", Code: it.params[0], Message: it.params[1]}
			s.sendLocked(e.AppendErrorResponse(nil))
			s.queue.pop()
			s.dropUntilSyncLocked()
			continue
		case it.kind == pendParse:
			s.sendLocked(wire.ParseComplete())
		case it.kind == pendClose:
			s.sendLocked(wire.CloseComplete())
		}
		s.queue.pop()
	}
}

// dropUntilSyncLocked discards expected responses up to the next Sync, as
// the server skips messages after an error.
//
// When the group's Sync is not queued yet (the client's input ran dry
// inside the group, so part of it went out, see handleExtended), the
// server skips whatever the client sends up to that Sync: so does the
// proxy (skipUntilSync), or it would wait for answers that never come.
func (s *Session) dropUntilSyncLocked() {
	for {
		it := s.queue.front()
		if it == nil && s.groupOpen {
			s.skipUntilSync = true
		}
		if it == nil || it.kind == pendSync || it.kind == pendQuery || it.kind == pendFunctionCall {
			return
		}
		if it.addedStmt && s.server != nil && s.server.prepared != nil {
			s.server.prepared.remove(it.serverStmt, false)
		}
		if it.probe {
			s.endProbeLocked("")
		}
		s.queue.pop()
	}
}
