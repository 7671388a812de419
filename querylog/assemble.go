package querylog

import (
	"sort"
	"time"

	"github.com/pgaudit-proxy/pgaudit/internal/event"
)

// maxLiveSessions bounds the sessions the assembler keeps state for; past
// it the least recently active half is closed (their statements are
// emitted). A variable for tests.
var maxLiveSessions = 1 << 15

// assembler turns entries, in log order, into statement events: it pairs a
// log_statement line with its later duration line, attaches stderr DETAIL
// and STATEMENT lines to their entry, marks failed statements, and numbers
// transactions. It runs on one goroutine, the one that calls emit.
type assembler struct {
	opts   *Options
	emit   func(*event.Event)
	sum    *Summary
	format Format
	file   string

	sessions map[uint64]*session
	pidGen   map[int64]uint64 // pid-only sessions: generation per pid
	seen     map[uint64]struct{}
	tick     int64
	lastOpen *session // the session whose open entry came last

	// per file
	good, bad int64
}

// session is the assembly state of one session.
type session struct {
	id                    uint64
	user, db, app, client string // from connection lines
	open                  *entry // stderr: waits for its DETAIL/STATEMENT lines
	pending               *entry // a log_statement statement waiting for its duration
	held                  *event.Event
	txSeq                 uint64
	inBlock               bool
	blockVx               uint64 // vxid of the open block, 0 when unknown
	lastVx                uint64 // vxid of the previous statement, 0 when none
	lastLineNum, lastTick int64
}

func newAssembler(opts *Options, sum *Summary, emit func(*event.Event)) *assembler {
	return &assembler{
		opts: opts, emit: emit, sum: sum,
		sessions: make(map[uint64]*session),
		pidGen:   make(map[int64]uint64),
		seen:     make(map[uint64]struct{}),
	}
}

// startFile begins a new input. Sessions carry over from file to file, so
// that a session that spans a log rotation stays one session.
func (a *assembler) startFile(name string, f Format) {
	a.file, a.format = name, f
	a.good, a.bad = 0, 0
}

func (a *assembler) malformed(line int64, err string) {
	a.bad++
	a.sum.MalformedCount++
	if len(a.sum.Malformed) < MaxMalformed {
		a.sum.Malformed = append(a.sum.Malformed, LineError{File: a.file, Line: line, Err: err})
	}
}

// key returns the session key of an entry, handling pid reuse for logs
// that identify sessions by pid only.
func (a *assembler) key(e *entry) uint64 {
	if e.sess != 0 {
		return e.sess
	}
	// No session id: 1<<63 | generation<<32 | pid. A new backend with the
	// same pid starts a new generation.
	k := func() uint64 { return 1<<63 | (a.pidGen[e.pid]&0x7fffffff)<<32 | uint64(uint32(e.pid)) }
	key := k()
	if s := a.sessions[key]; s != nil {
		if e.kind == kConnReceived || (e.lineNum > 0 && s.lastLineNum > 0 && e.lineNum < s.lastLineNum) {
			a.close(s)
			a.pidGen[e.pid]++
			key = k()
		}
	}
	return key
}

// needsSession reports whether an entry creates session state.
func needsSession(k entryKind) bool {
	switch k {
	case kLogStmt, kDurStmt, kDurBare, kError, kConnAuth, kConnReceived:
		return true
	}
	return false
}

// entry handles one entry.
func (a *assembler) entry(e *entry) {
	switch e.kind {
	case kBlank:
		return
	case kMalformed:
		a.malformed(e.line, e.err)
		return
	}
	a.good++
	a.tick++
	key := a.key(e)
	s := a.sessions[key]
	if o := a.lastOpen; o != nil && o != s {
		// Another session logged: the entry waiting for its DETAIL and
		// STATEMENT lines is complete, as Postgres writes an entry with
		// them at once (the logging collector always does, a plain
		// stderr pipe for entries under PIPE_BUF).
		a.lastOpen = nil
		if o.open != nil && len(o.open.text)+len(o.open.stmt) < 3500 && a.sessions[o.id] == o {
			e := o.open
			o.open = nil
			a.process(o, e)
		}
	}
	switch e.kind {
	case kDetail, kStatementLine, kSecondary:
		if s == nil || s.open == nil {
			return // belongs to an entry that carries no statement
		}
		s.lastTick = a.tick
		o := s.open
		switch e.kind {
		case kDetail:
			if (o.kind == kLogStmt || o.kind == kDurStmt) && e.nParams > 0 {
				o.nParams, o.pHash, o.params = e.nParams, e.pHash, e.params
			}
		case kStatementLine:
			if o.kind == kError && o.stmt == "" {
				o.stmt, o.txw, o.verb = e.stmt, e.txw, e.verb
			}
		}
		return
	}
	if s == nil {
		if !needsSession(e.kind) {
			a.sum.Skipped++
			if e.kind == kDisconnect && e.sess == 0 {
				a.pidGen[e.pid]++
			}
			return
		}
		s = &session{id: key, lastTick: a.tick}
		if len(a.sessions) >= maxLiveSessions {
			a.evict()
		}
		a.sessions[key] = s
	}
	s.lastTick = a.tick
	if e.lineNum > 0 {
		s.lastLineNum = e.lineNum
	}
	if s.open != nil {
		o := s.open
		s.open = nil
		a.process(s, o)
	}
	if a.format == FormatStderr && (e.kind == kLogStmt || e.kind == kDurStmt || e.kind == kError) {
		c := *e
		s.open = &c
		a.lastOpen = s
		return
	}
	a.process(s, e)
}

// process handles a complete entry of a session.
func (a *assembler) process(s *session, e *entry) {
	switch e.kind {
	case kLogStmt:
		a.flushPending(s)
		c := *e
		s.pending = &c
	case kDurStmt:
		a.flushPending(s)
		a.statement(s, e, e.time.Add(-e.dur), e.dur, "")
	case kDurBare:
		if p := s.pending; p != nil {
			s.pending = nil
			if validTag(e.ps) {
				p.ps = e.ps
			}
			a.statement(s, p, p.time, e.dur, "")
		} else {
			a.sum.Skipped++ // log_duration without the statement
		}
	case kError:
		p := s.pending
		switch {
		case e.stmt == "" && p != nil && e.severity == "ERROR":
			// log_min_error_statement hid the statement: it is the one
			// logged last.
			s.pending = nil
			a.failed(s, p, e)
		case e.stmt == "":
			a.sum.Skipped++
		case p != nil && p.text == e.stmt:
			s.pending = nil
			a.failed(s, p, e)
		default:
			a.flushPending(s)
			c := *e
			c.text = e.stmt
			c.nParams, c.pHash, c.params = 0, 0, nil
			a.failed(s, &c, e)
		}
	case kConnAuth:
		s.user, s.db, s.app = e.user, e.db, e.app
		a.sum.Skipped++
	case kConnReceived:
		if e.client != "" {
			s.client = e.client
		}
		a.sum.Skipped++
	case kDisconnect:
		a.sum.Skipped++
		a.close(s)
		if e.sess == 0 {
			a.pidGen[e.pid]++
		}
	default:
		a.sum.Skipped++
	}
}

// failed emits statement st as failed with the SQLSTATE of error entry e.
func (a *assembler) failed(s *session, st, e *entry) {
	if e.state == "" {
		a.sum.ErrorsWithoutSQLState++
	}
	if validTag(e.ps) && !validTag(st.ps) {
		st.ps = e.ps
	}
	a.statement(s, st, st.time, 0, e.state)
}

func (a *assembler) flushPending(s *session) {
	if p := s.pending; p != nil {
		s.pending = nil
		a.statement(s, p, p.time, 0, "")
	}
}

func nonEmpty(v, fallback string) string {
	if v == "" || v == "[unknown]" {
		return fallback
	}
	return v
}

// statement builds the event of a statement and passes it through the
// transaction stage.
func (a *assembler) statement(s *session, e *entry, start time.Time, dur time.Duration, state string) {
	ev := &event.Event{
		Kind:            event.KindStatement,
		Protocol:        event.ProtocolLog,
		Text:            e.text,
		SessionID:       s.id,
		Database:        nonEmpty(e.db, s.db),
		User:            nonEmpty(e.user, s.user),
		ApplicationName: nonEmpty(e.app, s.app),
		ClientAddr:      nonEmpty(e.client, s.client),
		Start:           start,
		Duration:        dur,
		Rows:            -1,
		SQLState:        state,
		ParamHash:       e.pHash,
		NumParams:       e.nParams,
	}
	if a.opts.KeepParams {
		ev.Params = e.params
	}
	if validTag(e.ps) {
		ev.Command = e.ps
	} else {
		ev.Command = e.verb
	}
	a.tx(s, ev, e.txw, e.vx, e.vxOK && uint32(e.vx) != 0)
}

// tx numbers transactions and marks statements inside them, then releases
// the session's previous statement and holds this one: whether a statement
// ran in a transaction can depend on the next one sharing its vxid.
func (a *assembler) tx(s *session, ev *event.Event, word txWord, vx uint64, known bool) {
	same := known && s.lastVx == vx
	if s.inBlock && known && s.blockVx != 0 && vx != s.blockVx && word != txBegin {
		s.inBlock, s.blockVx = false, 0 // the block ended without a logged COMMIT
	}
	switch {
	case word == txBegin:
		if !(s.inBlock && same) {
			s.txSeq++
		}
		s.inBlock = true
		s.blockVx = 0
		if known {
			s.blockVx = vx
		}
		ev.InTransaction = true
	case s.inBlock:
		ev.InTransaction = true
		if s.blockVx == 0 && known {
			s.blockVx = vx
		}
		if word == txEnd {
			s.inBlock, s.blockVx = false, 0
		}
	case same:
		// Statements sharing a vxid share a transaction.
		ev.InTransaction = true
		if s.held != nil {
			s.held.InTransaction = true
		}
	default:
		s.txSeq++
	}
	ev.TxSeq = s.txSeq
	s.lastVx = 0
	if known {
		s.lastVx = vx
	}
	a.release(s)
	s.held = ev
	if !known || ev.InTransaction {
		a.release(s) // nothing the next statement shows can change it
	}
}

// release emits the session's held statement.
func (a *assembler) release(s *session) {
	if ev := s.held; ev != nil {
		s.held = nil
		a.sum.Statements++
		if _, ok := a.seen[ev.SessionID]; !ok {
			a.seen[ev.SessionID] = struct{}{}
			a.sum.Sessions++
		}
		a.emit(ev)
	}
}

// close emits everything a session still holds and forgets it.
func (a *assembler) close(s *session) {
	if o := s.open; o != nil {
		s.open = nil
		a.process(s, o)
	}
	a.flushPending(s)
	a.release(s)
	delete(a.sessions, s.id)
}

// evict closes the least recently active half of the sessions.
func (a *assembler) evict() {
	all := make([]*session, 0, len(a.sessions))
	for _, s := range a.sessions {
		all = append(all, s)
	}
	sort.Slice(all, func(i, j int) bool { return all[i].lastTick < all[j].lastTick })
	for _, s := range all[:len(all)/2] {
		a.close(s)
	}
}

// finish closes every session, in order of last activity.
func (a *assembler) finish() {
	all := make([]*session, 0, len(a.sessions))
	for _, s := range a.sessions {
		all = append(all, s)
	}
	sort.Slice(all, func(i, j int) bool { return all[i].lastTick < all[j].lastTick })
	for _, s := range all {
		a.close(s)
	}
}
