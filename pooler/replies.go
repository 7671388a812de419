package pooler

import (
	"errors"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgerrcode"

	"github.com/pgaudit-proxy/pgaudit/wire"
)

// Server replies: the background reader (serverLoop), the reading loop
// shared with the inline path (pump), and the relay of each server message
// to the client (relayLocked).

// serverLoop is the background reader: it relays server messages to the
// client while srv is attached and the session needs one (session mode,
// pinned clients, COPY FROM STDIN, pipelined requests, Flush).
func (s *Session) serverLoop(srv *Server, done chan struct{}) {
	defer s.proxy.wg.Done()
	defer close(done)
	holdsMu := false // pump sets it while it holds s.mu
	defer func() {
		if r := recover(); r != nil {
			s.logger().Error().Interface("panic", r).Msg("relay panic; closing session")
			if !holdsMu { // taking mu after a panic under it would deadlock
				s.mu.Lock()
			}
			if s.server == srv {
				s.setServerLocked(nil)
			}
			s.readerActive = false
			s.mu.Unlock()
			s.pool.destroy(srv)
			_ = s.client.Close()
		}
	}()
	_ = s.pump(srv, false, &holdsMu)
}

// testHookReaderReleased, when set by a test, runs in the background
// reader right after it detached a server it is about to release, with
// no lock held: the moment the client goroutine may park the session.
var testHookReaderReleased atomic.Pointer[func(*Session)]

// pump reads srv and relays its messages to the client until srv is
// released to the pool or lost. The background reader runs it with
// inline=false. The client goroutine runs it with inline=true after a
// request (see awaitReplies); then it also returns when the request is
// answered and srv stays attached (an open transaction), or when the
// exchange needs client input (COPY FROM STDIN), after starting the
// background reader, which also takes over when srv stays attached after
// the reply. A non-nil error means the session is over. holdsMu, when not
// nil, is kept true while pump holds s.mu in its relay step (for the
// background reader's panic handler).
func (s *Session) pump(srv *Server, inline bool, holdsMu *bool) error {
	var readAt time.Time // the clock when the last read from srv returned
	// locked: s.mu is still held from the previous message, whose
	// successor was already buffered whole (one hold for the replies of a
	// read, not one per message).
	locked := false
	for {
		buffered := srv.R.Buffered()
		typ, raw, err := srv.R.ReadMessage()
		if err == nil && (buffered < len(raw) || readAt.IsZero()) {
			// Part of the message came with a read in this call: the
			// messages of that read share this reading.
			readAt = time.Now()
		}
		if err != nil {
			if !locked {
				s.mu.Lock()
			}
			locked = false
			if s.stopReader.Load() {
				s.readerErr = err
				if !inline {
					s.readerActive = false
				}
				s.mu.Unlock()
				return errClientGone
			}
			if s.server == srv {
				s.setServerLocked(nil)
			}
			if !inline {
				s.readerActive = false
			}
			// The session ends with its server: messages the client
			// already sent must not run on another connection outside the
			// transaction they belonged to.
			s.closed = true
			s.endProbeLocked("")
			lastFatal := s.lastFatal
			s.mu.Unlock()
			s.serverLost(srv, err, lastFatal)
			return errClientGone
		}
		if !locked {
			s.mu.Lock()
		}
		locked = false
		if holdsMu != nil {
			*holdsMu = true
		}
		s.replyAt = readAt
		release := s.relayLocked(srv, typ, raw)
		s.replyAt = time.Time{}
		var ferr error
		if typ == wire.MsgReadyForQuery || srv.R.Buffered() == 0 {
			ferr = s.client.Flush()
			if ferr != nil {
				s.clientWriteFailedLocked(ferr)
			}
		}
		if release {
			for s.writing {
				if s.writingDone == nil {
					s.writingDone = sync.NewCond(&s.mu)
				}
				s.writingDone.Wait()
			}
			// The client may have sent more meanwhile.
			release = s.releasableLocked()
		}
		stop := false
		switch {
		case release:
			s.setServerLocked(nil)
			s.readerActive = false
			// Now, under this lock: once it is released, the client
			// goroutine may see the session idle (no server, no reader)
			// and park it, which moves the counters to the pool and may
			// drop busyState.
			s.flushStats()
			if s.stopReader.Load() {
				// interruptInline came after the last reply: the server
				// is clean, but carries its read deadline.
				_ = srv.SetReadDeadline(time.Time{})
			}
		case !inline:
		case typ == wire.MsgCopyInResponse || typ == wire.MsgCopyBothResponse:
			// COPY FROM STDIN: the client goroutine must read the data.
			s.startReaderLocked(srv)
			stop = true
		case typ == wire.MsgReadyForQuery && s.inFlight == 0:
			// The server stays attached (an open transaction, a pinned
			// client): what it sends while the client is idle (a FATAL
			// for idle_in_transaction_session_timeout, notifications) must
			// reach the client at once, as it would from Postgres.
			s.startReaderLocked(srv)
			stop = true
		}
		if !release && !stop && ferr == nil && srv.R.FrameBuffered() {
			// The next message is here already: relay it under this
			// hold (reading it cannot block).
			locked = true
			continue
		}
		if holdsMu != nil {
			*holdsMu = false
		}
		s.mu.Unlock()
		if release && !inline {
			if hook := testHookReaderReleased.Load(); hook != nil {
				(*hook)(s)
			}
		}
		if ferr != nil {
			// The client is gone; Run notices and cleans up.
			_ = s.client.Close()
			if release {
				s.pool.destroy(srv)
				return errClientGone
			}
			if inline {
				return errClientGone
			}
		}
		if release {
			if s.gucDirty {
				s.gucDirty = false
				if err := s.snapshotSettings(srv); err != nil {
					s.logger().Warn().Err(err).Msg("could not read session settings; closing server connection")
					s.pool.destroy(srv)
					return nil
				}
			}
			s.pool.releaseAt(srv, true, readAt)
			return nil
		}
		if stop {
			return nil
		}
	}
}

// replyNow is the time of the server message being relayed: the reading
// pump took when it read the message (replyAt), or the clock when there
// is none. s.mu held.
func (s *Session) replyNow() time.Time {
	if !s.replyAt.IsZero() {
		return s.replyAt
	}
	return time.Now()
}

// clientWriteFailedLocked notes a failed write to the client; s.mu held.
// After client_write_timeout the server connection is destroyed, not
// released: it is likely in the middle of a result the client never read.
func (s *Session) clientWriteFailedLocked(err error) {
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() && !s.writeTimedOut {
		s.writeTimedOut = true
		s.logger().Warn().Dur("client_write_timeout", s.pool.set().ClientWriteTimeout).
			Msg("client does not read its results: closing it and its server connection")
	}
}

// serverLost handles a server connection that failed while attached.
func (s *Session) serverLost(srv *Server, err error, alreadyFatal bool) {
	if !isRoutineDisconnect(err) {
		s.logger().Warn().Err(err).Msg("server connection failed")
	} else {
		s.logger().Info().Err(err).Msg("server closed the connection")
	}
	s.pool.destroyBroken(srv)
	// The server is likely restarting: do not hand out its siblings.
	s.pool.DropIdle()
	s.mu.Lock()
	if !alreadyFatal {
		e := wire.Fatal(wire.CodeConnectionFailure, "server connection lost")
		e.Detail = err.Error()
		_ = s.client.SendError(e)
	}
	s.mu.Unlock()
	_ = s.client.Close()
}

// staleStatement says whether an error means the server statement was
// prepared before a schema change: its result type changed, or a type it
// uses was dropped.
func staleStatement(code, msg string) bool {
	return code == pgerrcode.FeatureNotSupported && strings.Contains(msg, "cached plan must not change result type") ||
		code == pgerrcode.InternalError && strings.Contains(msg, "cache lookup failed for type")
}

// staleRevalidation says whether an error at Bind or Describe of a server
// statement that parsed before means the schema changed since: Postgres
// analyzed the statement again, with its parameter types as inferred
// then, and found a type mismatch (a column's type changed under a
// parameter).
func staleRevalidation(code string) bool {
	return code == pgerrcode.DatatypeMismatch || code == pgerrcode.UndefinedFunction
}

// relayLocked forwards one server message, keeps the queue and statuses,
// emits audit events, and says whether the server can be released now.
func (s *Session) relayLocked(srv *Server, typ byte, raw []byte) (release bool) {
	body := raw[5:]
	switch typ {
	case wire.MsgNotificationResponse, wire.MsgNoticeResponse:
		s.sendLocked(raw)
		return false
	case wire.MsgParameterStatus:
		name, value := wire.DecodeParameterStatus(body)
		if name != "" {
			srv.Params[name] = value
		}
		if it := s.queue.front(); it != nil && (it.holdZ || it.kind == pendQuery && it.swallow) {
			s.holdLocked().params = append(s.holdLocked().params, name, value)
			return false
		}
		if s.reported != nil {
			s.ownReportedLocked()
			s.reported[name] = value
		}
		s.sendLocked(raw)
		return false
	}
	it := s.queue.front()
	if it != nil && it.synthetic {
		// (Checked here: a call per server message was 1.3 % of the
		// proxy's user time, and synthetic items are rare.)
		s.emitSyntheticLocked()
		it = s.queue.front()
	}
	forward := true
	if it != nil && it.kind == pendQuery && it.swallow {
		// The proxy's own query (see restoreStartupLocked).
		if typ != wire.MsgReadyForQuery {
			if typ == wire.MsgErrorResponse {
				_, code, msg := wire.ErrorFields(body)
				if code != pgerrcode.InFailedSQLTransaction {
					s.logger().Warn().Str("code", code).Str("error", msg).Msg("could not restore startup settings")
				}
			}
			return false
		}
		s.queue.pop()
		s.infoMu.Lock()
		s.inFlight--
		if len(body) == 1 {
			s.txStatus = body[0]
			srv.TxStatus = body[0]
		}
		s.infoMu.Unlock()
		if s.inFlight == 0 && s.queryTimer != nil {
			s.queryTimer.Stop()
		}
		s.releaseHeldLocked()
		return s.releasableLocked()
	}
	switch typ {
	case wire.MsgParseComplete, wire.MsgCloseComplete:
		if it != nil && (it.kind == pendParse || it.kind == pendClose) {
			if it.stmt != nil {
				it.stmt.verified = true
			}
			forward = !it.swallow
			s.queue.pop()
		}
	case wire.MsgBindComplete:
		if it != nil && it.kind == pendBind {
			forward = !it.swallow
			s.queue.pop()
		}
	case wire.MsgParameterDescription:
		if it != nil && it.kind == pendDescribeStmt && it.probe {
			if s.probe != nil {
				s.probe.params = paramShape(body)
			}
			forward = false
		}
		if it != nil && it.kind == pendDescribeStmt && it.stmt != nil {
			if ps := paramShape(body); ps != "" {
				it.stmt.setShapes("", ps)
				it.stmt.toldTypes = append(it.stmt.toldTypes[:0], body...)
			}
		}
	case wire.MsgRowDescription, wire.MsgNoData:
		if it != nil && it.probe {
			key := ""
			if shape := rowShape(typ, body); shape != "" && s.probe != nil {
				key = shape + "|" + s.probe.params
				if srv.prepared != nil {
					srv.prepared.setShape(it.serverStmt, key)
				}
			}
			s.endProbeLocked(key)
			forward = false
			s.queue.pop()
		} else if it != nil && (it.kind == pendDescribeStmt || it.kind == pendDescribePortal) {
			if it.stmt != nil && it.stmt.noteRowDescription(typ, body) &&
				it.kind == pendDescribeStmt && it.serverStmt != "" && srv.prepared != nil {
				// What this server statement has: a Describe of it.
				srv.prepared.setShape(it.serverStmt, it.stmt.shapeKey())
			}
			s.queue.pop()
		}
		if typ == wire.MsgRowDescription && it != nil && it.kind == pendQuery && it.tag != "" {
			forward = false
		}
	case wire.MsgCommandComplete, wire.MsgEmptyQueryResponse:
		if it != nil {
			switch it.kind {
			case pendExecute:
				it.resultHash = s.endResultLocked()
				if _, ok := s.suspended[it.portal]; ok {
					it.resultHash = 0 // a portal run in parts is not sampled
				}
				s.completeExecute(it, body, typ == wire.MsgEmptyQueryResponse, "")
				s.queue.pop()
			case pendQuery:
				if it.tag != "" && typ == wire.MsgCommandComplete {
					raw = appendCommandComplete(nil, it.tag)
					body = raw[5:]
				}
				r := stmtResult{at: s.replyNow(), resultHash: s.endResultLocked()}
				if typ != wire.MsgEmptyQueryResponse {
					r.command, r.rows = parseTag(wire.CommandTag(body))
				}
				it.addResult(r)
			}
		}
	case wire.MsgDataRow:
		if it != nil && it.kind == pendExecute {
			s.partRows++
		}
		if it != nil && (it.kind == pendExecute || it.kind == pendQuery) {
			s.hashRowLocked(body)
		}
	case wire.MsgPortalSuspended:
		s.endResultLocked()
		if it != nil && it.kind == pendExecute {
			if s.suspended == nil {
				s.suspended = map[string]suspendedPortal{}
			}
			sp, ok := s.suspended[it.portal]
			if !ok {
				sp.txSeq = it.txSeq
			}
			sp.d += s.replyNow().Sub(it.start)
			sp.rows += s.partRows
			s.suspended[it.portal] = sp
			s.partRows = 0
			s.queue.pop()
		}
	case wire.MsgErrorResponse:
		s.endResultLocked()
		sev, code, msg := wire.ErrorFields(body)
		if sev == "FATAL" || sev == "PANIC" {
			s.lastFatal = true
		}
		if it != nil {
			switch it.kind {
			case pendQuery:
				it.addResult(stmtResult{rows: -1, sqlstate: code, at: s.replyNow()})
			case pendExecute:
				s.completeExecute(it, nil, false, code)
				s.queue.pop()
				s.dropUntilSyncLocked()
			case pendSync, pendFunctionCall:
				// An error at commit time or of a function call.
			case pendGate:
				if code == "26000" {
					// In place of a statement that would return another
					// shape than the client was told: what Postgres says
					// on a direct connection. The schema changed, maybe
					// behind the proxy's back.
					forward = false
					if len(it.params) > 0 {
						s.sendLocked([]byte(it.params[0]))
					}
					s.sendLocked(shapeMismatch().AppendErrorResponse(nil))
					s.proxy.ddlEpoch.Add(1)
				}
				s.queue.pop()
				s.dropUntilSyncLocked()
			default:
				if (staleStatement(code, msg) || (it.kind == pendBind || it.kind == pendDescribeStmt) && staleRevalidation(code)) && it.serverStmt != "" && srv.prepared != nil {
					// Re-prepare next time instead of failing forever,
					// and let later Parses use new server statements (the
					// schema changed behind the proxy's back).
					srv.prepared.remove(it.serverStmt, true)
					s.proxy.ddlEpoch.Add(1)
				}
				if it.addedStmt && srv.prepared != nil {
					srv.prepared.remove(it.serverStmt, false)
				}
				if it.kind == pendParse && it.stmt != nil && !it.stmt.verified && strings.HasPrefix(code, "42") {
					it.stmt.failed = true
				}
				if it.kind == pendParse || it.kind == pendBind {
					s.completeFailed(it, code)
				}
				if it.probe {
					s.endProbeLocked("")
				}
				s.queue.pop()
				s.dropUntilSyncLocked()
			}
		}
	case wire.MsgCopyInResponse, wire.MsgCopyOutResponse, wire.MsgCopyBothResponse:
		s.copyActive = true
		if typ == wire.MsgCopyInResponse && it != nil && it.kind == pendExecute {
			// COPY FROM STDIN through the extended protocol: Syncs the
			// client sent after the Execute, before this arrived, are
			// ignored by the server; so are those until CopyDone/CopyFail.
			s.copyInExtended = true
			s.dropQueuedSyncsLocked()
		}
	case wire.MsgCopyDone:
		// CopyDone from the server ends COPY TO STDOUT.
	case wire.MsgReadyForQuery:
		hold := it != nil && it.holdZ && (it.kind == pendQuery || it.kind == pendSync)
		if it != nil && it.kind == pendSync && it.swallow {
			// The end of a group the proxy injected (see
			// mapPreparedRefLocked); the client's request follows.
			s.queue.pop()
			s.infoMu.Lock()
			s.inFlight--
			if len(body) == 1 {
				s.txStatus = body[0]
				srv.TxStatus = body[0]
			}
			s.infoMu.Unlock()
			return false
		}
		// One infoMu section for both info fields ReadyForQuery moves
		// (nothing below reads inFlight before it is decremented).
		if len(body) == 1 || s.inFlight > 0 {
			s.infoMu.Lock()
			if len(body) == 1 {
				s.txStatus = body[0]
			}
			if s.inFlight > 0 {
				s.inFlight--
			}
			s.infoMu.Unlock()
		}
		if len(body) == 1 {
			srv.TxStatus = body[0]
			if s.txStatus == wire.TxIdle {
				if s.ddlSent {
					s.ddlSent = false
					s.proxy.ddlEpoch.Add(1)
				}
				// Explicit and implicit transactions both count.
				s.xacts++
				if !s.xactStart.IsZero() {
					s.xactTime += s.replyNow().Sub(s.xactStart)
					s.xactStart = time.Time{}
				}
			}
		}
		if it != nil && (it.kind == pendSync || it.kind == pendQuery || it.kind == pendFunctionCall) {
			if it.kind == pendQuery {
				s.completeQuery(it)
			}
			s.queue.pop()
		}
		s.copyActive = false
		if s.inFlight == 0 && s.queryTimer != nil {
			s.queryTimer.Stop()
		}
		if hold {
			s.holdLocked().z = append([]byte(nil), raw...)
		} else {
			s.sendLocked(raw)
		}
		if s.pool.set().IdleTransactionTimeout > 0 && s.txStatus != wire.TxIdle && s.inFlight == 0 {
			s.setClientReadDeadline(time.Now().Add(s.pool.set().IdleTransactionTimeout))
		} else if d := s.pool.set().ClientIdleTimeout; d > 0 && s.mode == SessionMode && s.txStatus == wire.TxIdle && s.inFlight == 0 {
			// Session mode: the client goroutine armed nothing, as the
			// reply was still to come when it looked (setIdleDeadline).
			s.setClientReadDeadline(time.Now().Add(d))
		}
		return s.releasableLocked()
	}
	if forward {
		s.sendLocked(raw)
	}
	return false
}

// incInFlightLocked counts one more request awaiting ReadyForQuery and arms
// query_timeout when the session becomes busy; s.mu held.
func (s *Session) incInFlightLocked() {
	s.infoMu.Lock()
	s.inFlight++
	s.infoMu.Unlock()
	if s.inFlight == 1 && s.pool.set().QueryTimeout > 0 {
		if s.queryTimer == nil {
			s.queryTimer = time.AfterFunc(s.pool.set().QueryTimeout, s.queryTimedOut)
		} else {
			s.queryTimer.Reset(s.pool.set().QueryTimeout)
		}
	}
}

// queryTimedOut cancels the request that ran past query_timeout; Postgres
// answers it with 57014.
func (s *Session) queryTimedOut() {
	s.logger().Warn().Dur("query_timeout", s.pool.set().QueryTimeout).Msg("query_timeout: canceling the running statement")
	s.cancel()
}

// releasableLocked says whether the attached server can go back to the pool
// now (transaction mode); s.mu held.
func (s *Session) releasableLocked() bool {
	return s.mode == TransactionMode && s.inFlight == 0 && !s.groupOpen && s.txStatus == wire.TxIdle &&
		!s.pinned && s.queue.len() == 0 && !s.stopReader.Load() && !s.copyActive
}
