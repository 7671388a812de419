package pooler

import (
	"bytes"
	"strconv"
	"time"

	"github.com/pgaudit-proxy/pgaudit/internal/event"
	"github.com/pgaudit-proxy/pgaudit/wire"
)

// Audit events: transaction numbers and the event of each finished
// statement (Query, Execute, FunctionCall).

type suspendedPortal struct {
	d     time.Duration
	rows  int64
	txSeq uint64
}

// stampTx fills the transaction fields of an auditable item; s.mu held.
func (s *Session) stampTx(it *pending) {
	switch {
	case s.txStatus != wire.TxIdle && s.txStatus != 0:
		it.inTx = true
	case it.kind == pendExecute && s.groupStamped:
		// Same implicit transaction as an earlier Execute before Sync.
	default:
		s.txSeq++
		if s.xactStart.IsZero() {
			s.xactStart = it.start
		}
	}
	if it.kind == pendExecute {
		s.groupStamped = true
	}
	it.txSeq = s.txSeq
}

// noteFlags records session-state effects of a statement; s.mu held.
func (s *Session) noteFlags(flags stmtFlags, text string) {
	if flags == 0 {
		return
	}
	if flags&flagSetGUC != 0 {
		s.gucDirty = true
	}
	if flags&flagDDL != 0 {
		s.noteDDLLocked()
	}
	if flags&sessionStateFlags != 0 {
		if s.pool.set().PinOnSessionState && !s.pinned {
			s.infoMu.Lock()
			s.pinned = true
			s.infoMu.Unlock()
			s.logger().Info().Str("feature", flags.detail()).Msg("client pinned to its server connection: statement needs a session")
		}
		s.proxy.sink.Offer(&event.Event{
			Kind: event.KindSessionState, Detail: flags.detail(), Text: text, SessionID: s.id,
			Database: s.database, User: s.user, ApplicationName: s.appName, ClientAddr: s.clientAddr,
			Start: time.Now(), Rows: -1,
		})
		s.proxy.counters.sessionState.Add(1)
	}
}

// completeExecute emits the event of an Execute.
func (s *Session) completeExecute(it *pending, tagBody []byte, empty bool, sqlstate string) {
	s.queries++
	s.partRows = 0
	d := s.replyNow().Sub(it.start)
	var earlier suspendedPortal
	suspended := false
	if sp, ok := s.suspended[it.portal]; ok {
		earlier, suspended = sp, true
		d += sp.d
		delete(s.suspended, it.portal)
	}
	if it.text == "" || empty {
		return
	}
	ev := s.newEvent(it, event.ProtocolExtended)
	ev.Duration = d
	if tagBody != nil {
		ev.Command, ev.Rows = parseTag(wire.CommandTag(tagBody))
	}
	if suspended {
		ev.TxSeq = earlier.txSeq
		if ev.Rows >= 0 {
			ev.Rows += earlier.rows
		}
	}
	if ev.Command == "BEGIN" || ev.Command == "START TRANSACTION" {
		ev.InTransaction = true
	}
	ev.SQLState = sqlstate
	s.proxy.sink.Offer(ev)
}

// completeFailed emits the event of a statement that failed at Parse or
// Bind (its Execute, if any, is skipped by the server): failed
// statements are always audited.
func (s *Session) completeFailed(it *pending, sqlstate string) {
	if it.text == "" {
		return
	}
	s.queries++
	ev := s.newEvent(it, event.ProtocolExtended)
	ev.Duration = s.replyNow().Sub(it.start)
	ev.SQLState = sqlstate
	// The transaction is the one its group's Execute was stamped with
	// (the server skips that Execute); without one, its own.
	stamped := false
	for _, q := range s.queue.items[s.queue.head:] {
		if q.kind == pendSync || q.kind == pendQuery || q.kind == pendFunctionCall {
			break
		}
		if q.kind == pendExecute {
			ev.TxSeq, ev.InTransaction, stamped = q.txSeq, q.inTx, true
			break
		}
	}
	if !stamped {
		ev.InTransaction = s.txStatus != wire.TxIdle && s.txStatus != 0
		if !ev.InTransaction {
			s.txSeq++
		}
		ev.TxSeq = s.txSeq
	}
	s.proxy.sink.Offer(ev)
}

// completeQuery emits one event per statement of a simple Query.
func (s *Session) completeQuery(it *pending) {
	if it.nresults == 0 {
		return
	}
	multi := it.nresults > 1
	var texts []string
	if multi {
		texts = splitStatements(it.text)
	}
	prev := it.start
	inTx := it.inTx
	for i := range it.nresults {
		r := it.result(i)
		s.queries++
		d := r.at.Sub(prev)
		prev = r.at
		if multi && int(i) >= len(texts) || (r.command == "" && r.sqlstate == "") {
			continue
		}
		ev := s.newEvent(it, event.ProtocolSimple)
		if multi {
			ev.Text = texts[i]
		}
		ev.Start = r.at.Add(-d)
		ev.Duration = d
		ev.Command, ev.Rows = r.command, r.rows
		// A transaction block opened or closed inside one Query.
		switch ev.Command {
		case "BEGIN", "START TRANSACTION":
			inTx = true
		}
		ev.InTransaction = inTx
		switch ev.Command {
		case "COMMIT", "ROLLBACK":
			inTx = false
		}
		ev.SQLState = r.sqlstate
		ev.ResultHash = r.resultHash
		if i > 0 {
			ev.Wait = 0
		}
		s.proxy.sink.Offer(ev)
	}
}

func (s *Session) newEvent(it *pending, proto event.Protocol) *event.Event {
	ev := &event.Event{
		Kind: event.KindStatement, Protocol: proto, Text: it.text, SessionID: s.id,
		TxSeq: it.txSeq, InTransaction: it.inTx, Database: s.database, User: s.user,
		ApplicationName: s.appName, ClientAddr: s.clientAddr, Start: it.start,
		ParamHash: it.paramHash, NumParams: int(it.numParams), Params: it.params, Rows: -1,
		Wait: s.pendingWait, ResultHash: it.resultHash,
	}
	s.pendingWait = 0
	return ev
}

// parseTag splits a command tag into its verb and row count (-1 when
// the tag has none). The verbs of common tags come from a table, so that
// a tag read from a server's reply costs no allocation.
func parseTag(tag []byte) (string, int64) {
	i := bytes.LastIndexByte(tag, ' ')
	if i < 0 {
		return commandName(tag), -1
	}
	n, ok := parseCount(tag[i+1:])
	if !ok {
		return commandName(tag), -1
	}
	verb := tag[:i]
	if bytes.HasPrefix(verb, []byte("INSERT ")) {
		return "INSERT", n
	}
	return commandName(verb), n
}

// parseCount parses a command tag's row count: decimal digits that fit
// an int64, as strconv.ParseInt(s, 10, 64) accepts them (with an
// optional sign).
func parseCount(b []byte) (int64, bool) {
	if len(b) == 0 || len(b) > 18 {
		// (Longer needs strconv's overflow check; no tag has one.)
		n, err := strconv.ParseInt(string(b), 10, 64)
		return n, err == nil
	}
	neg := false
	digits := b
	switch b[0] {
	case '-', '+':
		neg, digits = b[0] == '-', b[1:]
	}
	if len(digits) == 0 {
		return 0, false
	}
	var n int64
	for _, c := range digits {
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int64(c-'0')
	}
	if neg {
		n = -n
	}
	return n, true
}

// commandName returns b as a string, without allocating for the verbs
// and tags Postgres sends most.
func commandName(b []byte) string {
	switch string(b) {
	case "SELECT":
		return "SELECT"
	case "INSERT":
		return "INSERT"
	case "UPDATE":
		return "UPDATE"
	case "DELETE":
		return "DELETE"
	case "MERGE":
		return "MERGE"
	case "FETCH":
		return "FETCH"
	case "MOVE":
		return "MOVE"
	case "COPY":
		return "COPY"
	case "BEGIN":
		return "BEGIN"
	case "COMMIT":
		return "COMMIT"
	case "ROLLBACK":
		return "ROLLBACK"
	case "SET":
		return "SET"
	case "SHOW":
		return "SHOW"
	case "START TRANSACTION":
		return "START TRANSACTION"
	case "SAVEPOINT":
		return "SAVEPOINT"
	case "RELEASE":
		return "RELEASE"
	case "DISCARD ALL":
		return "DISCARD ALL"
	case "RESET":
		return "RESET"
	}
	return string(b)
}
