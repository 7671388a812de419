package pooler

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/maphash"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"

	"github.com/pgaudit-proxy/pgaudit/wire"
)

// logger returns the session's logger: the proxy's, with a hook that adds
// the session's fields to each line written. It is made per call (logging
// is rare on a session: errors, login, disconnect) rather than kept, so a
// session does not hold a zerolog.Logger for its life.
func (s *Session) logger() *zerolog.Logger {
	l := s.proxy.log.Hook(sessionLogHook{s})
	return &l
}

// Session relays one authenticated client. The client's goroutine runs run.
// Replies are read from the attached server either by that goroutine
// itself (awaitReplies: transaction mode, a request the client waits for,
// nothing else pending; the common case, with no goroutine started or
// handed off per transaction) or by a background reader (serverLoop:
// session mode, pinned clients, open transactions, COPY FROM STDIN, Flush,
// pipelined requests), never both at once (readerActive). mu guards the
// state in the sub-structs below it (except where a field says otherwise)
// and all writes to the client; a write to a client that does not read can
// hold it until client_write_timeout. Introspection (SHOW CLIENTS, SHOW
// SERVERS) and control (KILL, cancel, the watchdog) therefore never take
// mu: they read the fields marked "info" under infoMu, and act on the
// attached server under ctlMu.
//
// The state is grouped by concept into embedded sub-structs (their fields
// are used as the Session's own). A parked session (relay.go) drops what
// it does not need: its socket's Go state and buffers (it keeps the
// descriptor), the state only a running session uses (busyState, when it
// holds nothing), and the empty maps' storage (see dropIdleStateLocked).
type Session struct {
	proxy  *Proxy
	id     uint64
	client *wire.Conn
	pool   *Pool
	mode   PoolMode

	sessionIdentity

	// infoMu guards reads of the info fields by introspection and
	// control. The info fields are written with both mu and infoMu held
	// (mu first) and read with either. It is never held during I/O.
	infoMu sync.Mutex
	// ctlMu is held by control paths that act on the attached server
	// (cancel, interruptInline) and by everything that detaches it (with
	// mu held, before infoMu), so the server cannot change hands while a
	// cancel is on its way to it. It is never held during client I/O.
	ctlMu sync.Mutex
	mu    sync.Mutex

	serverLink
	// busyState is the state of requests in progress, the result sampler
	// and the counters not yet moved to the pool: what only a running
	// session uses. It is nil while the session is parked (s.mu; see
	// dropIdleStateLocked and reattachClient), so nothing may use it
	// without first waking a parked session (lockRunning).
	*busyState
	statementState
	settingsState
	parkInfo

	// inFlight (info) counts Syncs, Queries and FunctionCalls sent and
	// not yet answered by ReadyForQuery (s.mu).
	inFlight int
	// txSeq numbers the session's transactions (for audit events; s.mu).
	txSeq uint64
	// resRand is the xorshift state picking the statements whose results
	// are sampled (see resultSampler).
	resRand uint64
}

// sessionIdentity is who the client is: set at login and read-only after,
// except appName (info), which follows the client's application_name.
type sessionIdentity struct {
	// The strings are shared with the pool (database, user) or
	// interned (appName, clientAddr; see Proxy.intern) where they can be.
	database, user, appName, clientAddr string
	// cancelKey is the key of the session's byCancel entry (the secret
	// key sent to the client, without its TTL bits when cancelPeered).
	cancelKey    string
	connected    int64 // unix ns
	cancelPID    uint32
	cancelPeered bool // cancel key from newPeerCancelKey
}

// serverLink is the attached server connection and who reads it (s.mu).
type serverLink struct {
	server *Server // info
	// readerDone is closed when the last background reader (serverLoop)
	// started has exited; readerErr is why it stopped.
	readerDone chan struct{}
	readerErr  error
	// inlineSince is when the client goroutine began reading its server
	// inline (monoNow; zero otherwise); the proxy's watchdog checks
	// clients that wait long for a vanished peer (see
	// checkInlineClients). Atomic: set and cleared twice per transaction
	// without taking a lock.
	inlineSince atomic.Int64
	// writingDone (made by the first waiter) is broadcast when writing is
	// cleared.
	writingDone *sync.Cond
	// queryTimer cancels the running request after query_timeout.
	queryTimer *time.Timer
	// stopReader tells whoever reads the server that a read deadline set
	// on it means "stop", not "server lost". Set without mu by
	// interruptInline.
	stopReader atomic.Bool
	// readerActive says a background reader (serverLoop) owns reading
	// the attached server. Without one the client goroutine reads the
	// replies itself (see awaitReplies).
	readerActive bool
	txStatus     byte // info
	pinned       bool // info
	// acquiring (info) says the session waits for a server connection.
	// Only the client goroutine writes it, with infoMu alone held (no
	// reader takes mu for it).
	acquiring bool
	// writing is set while the client goroutine writes to the server
	// outside the lock; the reader does not release the server meanwhile
	// (the reply can arrive before the write call returns).
	writing bool
	// writeTimedOut says a write to the client hit client_write_timeout:
	// the client is dropped and its server connection destroyed.
	writeTimedOut bool
	closed        bool
	lastFatal     bool
}

// requestState is what is in flight on the protocol (s.mu): the queue of
// requests awaiting replies, the extended-protocol group and COPY.
type requestState struct {
	queue pendingQueue
	// probe is the shape probe in flight (see shapegate.go).
	probe *shapeProbe
	// suspended portals: what earlier parts of a portal run in several
	// Executes took, so the whole run becomes one event
	suspended map[string]suspendedPortal
	// pendingWait is how long the running request waited for a server
	// connection (for its audit event).
	pendingWait time.Duration
	// partRows counts DataRows of the Execute at the head of the queue.
	partRows int64
	// msgAt is the clock reading shared by the client messages of one
	// read from the client (see requestNow); zero until a message needs
	// it, and reset by a new read and by whatever may have waited since
	// (an acquire, an inline reply). Client goroutine only.
	msgAt time.Time
	// replyAt is when the server message relayLocked handles now was
	// read from the socket (set by pump around relayLocked, zero
	// otherwise): the messages of one read share one clock reading (a
	// reply's CommandComplete and ReadyForQuery, the release after it),
	// where each took its own (see replyNow).
	replyAt time.Time
	// held is what the server said while a Query with holdZ and its
	// restore query run (nil otherwise; see releaseHeldLocked).
	held      *heldReply
	groupOpen bool // extended-protocol messages sent since the last Sync
	// skipUntilSync drops client messages after an error in
	// an extended-protocol group, as the server does after its own errors.
	skipUntilSync bool
	// groupStamped says an Execute of the current Sync group already
	// opened a transaction number (the group is one implicit transaction).
	groupStamped bool
	// groupResets says an Execute of the current group may have returned
	// settings to their reset values (see restoreStartupLocked).
	groupResets bool
	copyActive  bool
	// copyInExtended is set between an Execute's CopyInResponse and the
	// client's CopyDone/CopyFail.
	copyInExtended bool
	// ddlSent says the transaction running now sent DDL (see noteDDLLocked).
	ddlSent bool
}

// statementState is the client's protocol-level prepared statements and
// portals (client goroutine only). The maps are made by their first entry;
// the unnamed statement and portal, which most extended-protocol clients
// use for every statement, live in fields of their own (see stmt and
// portal): no map lookup per message.
type statementState struct {
	stmts   map[string]*stmtDef
	portals map[string]*portal
	// unnamedStmt and unnamedPortal are the client's "" statement and
	// portal, nil when there is none.
	unnamedStmt   *stmtDef
	unnamedPortal *portal
	// abandoned holds the texts (stmtBase) of statements the client
	// closed, with the DDL epoch and the text's generation then (see
	// serverStmtName).
	abandoned map[uint64][2]uint64
}

// settingsState is the client's settings and what it was told (s.mu).
type settingsState struct {
	// startupGUCs are the settings from the client's startup packet: what
	// RESET and DISCARD ALL return to on a direct connection. Read-only;
	// nil when there are none.
	startupGUCs map[string]string
	// gucs are the client's current settings; the map is replaced, never
	// written, so it is the startupGUCs map itself until they differ.
	gucs    map[string]string
	gucsKey string // gucsKey(gucs), kept in step with it
	// reported holds the ParameterStatus values the client has been
	// sent.
	reported map[string]string
	// reportedShared says reported is the pool's shared copy (see
	// Pool.shareParams): clone it before writing.
	reportedShared bool
	gucDirty       bool
}

// resultSampler is the result hashing for the cache-candidate rule (s.mu;
// see hashRowLocked).
type resultSampler struct {
	// resHash hashes the DataRows of a sampled statement (resState
	// resSampling); see hashRowLocked and endResultLocked. It is
	// allocated for the first sampled statement and dropped when the
	// session parks (a parked session has no result in progress).
	resHash  *maphash.Hash
	resState uint8
}

// sessionStats are the session's counters, moved to the pool by
// flushStats.
type sessionStats struct {
	bytesIn, bytesOut int64
	queries, xacts    int64
	// Parse and Bind messages (s.mu).
	clientParses, serverParses, binds int64
	// xactStart is when the running transaction's first statement went
	// out (zero between transactions); xactTime sums finished ones.
	xactStart time.Time
	xactTime  time.Duration
}

// busyState is the state only a running session uses (Session.busyState).
type busyState struct {
	requestState
	resultSampler
	sessionStats
}

// parkInfo is the event relay's state of the session (relay.go).
// parkable is set at login for plain sockets on the event relay and never
// changes. parkState is one of parkRunning, parkParked, parkResuming.
// parkReq says the sweeper set a past read deadline to make the run loop
// park. active is the coarse time (Proxy.coarseNow) of the last client
// message: the one store per message the event relay costs. readDL is the
// client read deadline the session wants (unix ns, 0 none), kept across
// park requests and parks. resumed tells run it goes on after a park.
// A parked session's loop is eventRelay.loopFor(id); its sockets are the
// client's detached descriptor and its server's (parkedServerFd).
type parkInfo struct {
	parkMu    sync.Mutex // orders parkReq with its deadline
	parkState atomic.Int32
	parkable  atomic.Bool
	parkReq   atomic.Bool
	resumed   bool
	active    atomic.Int64
	readDL    atomic.Int64
}

// errClientGone marks routine client disconnects.
var errClientGone = errors.New("client disconnected")

func isRoutineDisconnect(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, net.ErrClosed) ||
		errors.Is(err, errClientGone) || isConnReset(err)
}

func isConnReset(err error) bool {
	var oe *net.OpError
	if errors.As(err, &oe) {
		var se *os.SyscallError
		if errors.As(oe.Err, &se) {
			return true
		}
	}
	return false
}

// run relays client messages until the client leaves or a fatal error,
// or, on the event relay, until the session parks (errParked; see
// relay.go): then its goroutine ends without finishing the session, and a
// later run on another goroutine goes on where it stopped.
func (s *Session) run(ctx context.Context) error {
	parked := false
	defer func() {
		if !parked {
			s.finish()
		}
	}()
	idleTimeout := s.pool.set().ClientIdleTimeout
	if s.resumed {
		// Back from parked: the read deadline the session had then
		// (client_idle_timeout counts the time parked), and the server's
		// reader in session mode.
		s.resumed = false
		s.restoreReadDeadline()
		s.mu.Lock()
		s.restartReaderLocked()
		s.mu.Unlock()
	} else {
		if idleTimeout > 0 {
			s.setIdleDeadline(idleTimeout)
		}
		if s.parkable.Load() {
			// Just logged in: wait for the first message without
			// buffers, so that a burst of logins does not hold two per
			// client until they park (docs/relay.md). Writes to the
			// client meanwhile (the session-mode reader, KILL) hold mu.
			// What ends the wait (a message, EOF, a deadline: the park
			// request's, client_idle_timeout's) the read below sees.
			s.client.WaitReadable(&s.mu)
		}
	}
	for {
		buffered := s.client.R.Buffered()
		typ, raw, err := s.client.R.ReadMessage()
		if err != nil {
			if wire.IsTimeout(err) && s.takeParkRequest() {
				// The sweeper asked this idle session to park.
				if s.park() {
					parked = true
					if !s.parkable.Load() {
						// KILL or Shutdown came while it parked
						// (see wake).
						s.wake()
					}
					return errParked
				}
				// Not idle after all (a transaction, a message half
				// received): ask again after 8 x park_after more, so
				// that such sessions are not woken every park_after.
				s.active.Store(time.Now().UnixNano() + 7*int64(s.proxy.relay.parkAfter))
				s.parkMu.Lock()
				if !s.parkReq.Load() {
					// (A request made meanwhile keeps its deadline.)
					s.restoreReadDeadline()
				}
				s.parkMu.Unlock()
				continue
			}
			return s.clientReadError(err)
		}
		if now := s.proxy.coarseNow.Load(); s.active.Load() != now {
			// (A store is an XCHG, a full barrier, per message; the
			// coarse clock moves far less often.)
			s.active.Store(now)
		}
		if idleTimeout > 0 || s.pool.set().IdleTransactionTimeout > 0 {
			s.setClientReadDeadline(time.Time{})
		}
		// During Shutdown, a client that sends its next statement while
		// between transactions is ended instead (Shutdown's own poll
		// catches only clients that stay idle, and a busy client is
		// almost never idle when it looks); see drain.go.
		if typ != wire.MsgTerminate && s.proxy.draining.Load() && s.endForDrain() {
			return nil
		}
		if buffered < len(raw) {
			s.msgAt = time.Time{} // (part of) it came with a new read
		}
		s.bytesIn += int64(len(raw))
		if typ == wire.MsgQuery || typ == wire.MsgSync {
			s.pool.stats.bytesIn.Add(s.bytesIn)
			s.bytesIn = 0
		}
		switch typ {
		case wire.MsgTerminate:
			return nil
		case wire.MsgQuery:
			err = s.handleQuery(ctx, raw)
		case wire.MsgParse, wire.MsgBind, wire.MsgDescribe, wire.MsgExecute, wire.MsgClose, wire.MsgFlush, wire.MsgSync:
			err = s.handleExtended(ctx, typ, raw)
		case wire.MsgFunctionCall:
			err = s.handleFunctionCall(ctx, raw)
		case wire.MsgCopyData, wire.MsgCopyDone, wire.MsgCopyFail:
			err = s.handleCopy(typ, raw)
		default:
			return s.fatal(wire.Fatal(wire.CodeProtocolViolation, fmt.Sprintf("invalid frontend message type %d", typ)))
		}
		if err != nil {
			var we *wire.Error
			if errors.As(err, &we) && we.Severity == "FATAL" {
				return s.fatal(we)
			}
			return err
		}
		if idleTimeout > 0 {
			s.setIdleDeadline(idleTimeout)
		}
	}
}

// setIdleDeadline arms client_idle_timeout when the session is idle
// between transactions (no server, or session mode with nothing running).
func (s *Session) setIdleDeadline(idleTimeout time.Duration) {
	s.mu.Lock()
	if s.server == nil || s.mode == SessionMode && s.inFlight == 0 && s.txStatus == wire.TxIdle {
		s.setClientReadDeadline(time.Now().Add(idleTimeout))
	}
	s.mu.Unlock()
}

// setClientReadDeadline sets the client's read deadline and records it
// (readDL), so that it survives a park request's deadline and a park.
func (s *Session) setClientReadDeadline(t time.Time) {
	if t.IsZero() {
		s.readDL.Store(0)
	} else {
		s.readDL.Store(t.UnixNano())
	}
	_ = s.client.SetReadDeadline(t)
}

// restoreReadDeadline sets the client's read deadline back to the one
// recorded by setClientReadDeadline.
func (s *Session) restoreReadDeadline() {
	var t time.Time
	if dl := s.readDL.Load(); dl != 0 {
		t = time.Unix(0, dl)
	}
	_ = s.client.SetReadDeadline(t)
}

func (s *Session) clientReadError(err error) error {
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		s.mu.Lock()
		inTx := s.server != nil && s.txStatus != wire.TxIdle && s.inFlight == 0
		s.mu.Unlock()
		if inTx {
			return s.fatal(wire.Fatal(wire.CodeIdleInTransactionTimeout, "terminating connection due to idle-in-transaction timeout"))
		}
		return s.fatal(wire.Fatal(wire.CodeIdleSessionTimeout, "terminating connection due to idle-session timeout"))
	}
	var tooLarge *wire.MessageTooLargeError
	if errors.As(err, &tooLarge) {
		return s.fatal(wire.Fatal(wire.CodeProtocolViolation, "invalid message length: "+tooLarge.Error()))
	}
	if errors.Is(err, wire.ErrInvalidLength) {
		return s.fatal(wire.Fatal(wire.CodeProtocolViolation, "invalid message length"))
	}
	var overBudget *wire.BufferBudgetError
	if errors.As(err, &overBudget) {
		return s.fatal(s.proxy.budgetFatal(overBudget))
	}
	return err
}

// fatal sends e to the client; the caller returns, which closes everything.
func (s *Session) fatal(e *wire.Error) error {
	s.lockRunning()
	_ = s.client.SendError(e)
	s.mu.Unlock()
	return e
}

// sendLocked writes raw to the client; s.mu must be held.
func (s *Session) sendLocked(raw []byte) {
	s.bytesOut += int64(len(raw))
	_ = s.client.WriteRaw(raw)
}

// attach gets a server connection for the session: it waits for the
// previous reader to finish, acquires and applies the client's settings.
// Session mode and pinned clients get a background reader at once; other
// transaction-mode clients read replies inline until they need one. Called
// by the client goroutine with s.mu not held.
func (s *Session) attach(ctx context.Context) (*Server, error) {
	srv, _, err := s.attachAt(ctx, time.Time{})
	return srv, err
}

// attachAt is attach for a request that arrived at start (a clock reading
// the caller has; zero: none), which the acquisition's wait counts from.
// end is the clock reading that ended the acquisition, zero when more
// than that happened since (the server's settings were changed).
func (s *Session) attachAt(ctx context.Context, start time.Time) (_ *Server, end time.Time, _ error) {
	if s.readerDone != nil {
		select {
		case <-s.readerDone:
		default:
			<-s.readerDone
			start = time.Time{} // the acquisition starts after this wait
		}
	}
	s.infoMu.Lock()
	s.acquiring = true
	s.infoMu.Unlock()
	srv, wait, end, err := s.pool.acquireFrom(ctx, start)
	s.infoMu.Lock()
	s.acquiring = false
	s.infoMu.Unlock()
	if err != nil {
		return nil, time.Time{}, err
	}
	if srv.gucsKey != s.gucsKey {
		end = time.Time{} // applySettings runs a query
	}
	if err := s.applySettings(ctx, srv); err != nil {
		s.pool.destroy(srv)
		return nil, time.Time{}, err
	}
	s.mu.Lock()
	s.setServerLocked(srv)
	s.pendingWait += wait
	s.stopReader.Store(false)
	s.readerErr = nil
	if s.mode == SessionMode || s.pinned {
		s.startReaderLocked(srv)
	}
	s.mu.Unlock()
	return srv, end, nil
}

// setServerLocked attaches srv to the session (nil detaches it); s.mu held.
// It waits for a cancel or interrupt in progress (ctlMu), so that it
// reaches the server it was meant for.
func (s *Session) setServerLocked(srv *Server) {
	s.ctlMu.Lock()
	s.infoMu.Lock()
	s.server = srv
	s.infoMu.Unlock()
	s.ctlMu.Unlock()
}

// startReaderLocked starts the background reader of srv unless one runs;
// s.mu held.
func (s *Session) startReaderLocked(srv *Server) {
	if s.readerActive {
		return
	}
	done := make(chan struct{})
	s.readerActive = true
	s.readerDone = done
	s.readerErr = nil
	s.proxy.wg.Add(1)
	go s.serverLoop(srv, done)
}

// awaitReplies runs on the client goroutine after it flushed a request the
// client waits for (Query, Sync, FunctionCall). In transaction mode, when
// no background reader runs and the client has sent nothing more, it reads
// and relays the replies itself until ReadyForQuery, releasing the server
// when the transaction is over. That saves a goroutine hand-off per
// transaction. Otherwise (session mode, pinned, pipelined requests) the
// background reader does it.
func (s *Session) awaitReplies(srv *Server) error {
	s.mu.Lock()
	if s.server != srv || s.readerActive || s.closed {
		s.mu.Unlock()
		return nil
	}
	if !s.readsInlineLocked(srv) {
		s.startReaderLocked(srv)
		s.mu.Unlock()
		return nil
	}
	s.mu.Unlock()
	s.inlineSince.Store(monoNow())
	err := s.pump(srv, true, nil)
	s.inlineSince.Store(0)
	if s.busyState != nil {
		s.msgAt = time.Time{} // the replies took time
	}
	return err
}

// requestNow is the arrival time of the client message being handled:
// one clock reading for the messages that came with one read (pgbench -M
// extended's Parse, Bind, Describe, Execute and Sync come together, and
// each read the clock), taken when the first of them needs it, after the
// acquire if there was one. Client goroutine, running session.
func (s *Session) requestNow() time.Time {
	if s.msgAt.IsZero() {
		s.msgAt = time.Now()
	}
	return s.msgAt
}

// readsInlineLocked says whether the client goroutine reads the replies to
// the request it is sending to srv itself (see awaitReplies); s.mu held.
func (s *Session) readsInlineLocked(srv *Server) bool {
	return s.server == srv && !s.readerActive && !s.closed && s.mode == TransactionMode &&
		!s.pinned && s.client.R.Buffered() == 0 && !s.copyInExtended
}

// sendRequestLocked writes out, ending with a request the client now waits
// for (Query, Sync, FunctionCall), to srv and relays the replies (see
// awaitReplies). Called with s.mu held; returns with it released.
//
// The reply is read with a plain read right after the flush, not by
// parking until the socket is readable: under load the writer is often
// preempted by the backend it woke, which answers meanwhile, and the read
// then finds the reply at once; a parked goroutine would wait for the next
// netpoll instead, up to 10 ms when every P is busy, holding the server
// connection all that time (measured: fewer reads, but lower throughput at
// 1000 clients; see bench/README.md).
func (s *Session) sendRequestLocked(srv *Server, out []byte) error {
	s.writing = true
	s.mu.Unlock()
	if err := s.writeServer(srv, out, true); err != nil {
		return err
	}
	return s.awaitReplies(srv)
}

// monoBase is the origin of monoNow.
var monoBase = time.Now()

// monoNow is a monotonic clock in nanoseconds, always above zero: half
// the cost of time.Now (one vDSO call, not two), for marks that are only
// compared with each other.
func monoNow() int64 { return int64(time.Since(monoBase)) + 1 }

// clientGoneWhileInline reports whether the client goroutine has been
// reading its server inline for longer than d and the client has closed
// its connection meanwhile: the goroutine cannot notice that itself until
// the statement ends.
func (s *Session) clientGoneWhileInline(d time.Duration) bool {
	since := s.inlineSince.Load()
	if since == 0 || monoNow()-since <= int64(d) {
		return false
	}
	// Under parkMu: a park replaces the client's net.Conn (see park).
	s.parkMu.Lock()
	defer s.parkMu.Unlock()
	return wire.PeerClosed(s.client.Conn)
}

// interruptInline makes whoever reads the attached server (the client
// goroutine inline, or the background reader) stop (KILL, Close, a client
// gone mid-statement): without it a long statement would hold the session
// until it finishes. It does not take mu, which a write to a client that
// does not read may hold; the caller closes the client connection first.
func (s *Session) interruptInline() {
	s.ctlMu.Lock()
	s.infoMu.Lock()
	srv := s.server
	s.infoMu.Unlock()
	if srv != nil {
		s.stopReader.Store(true)
		_ = srv.SetReadDeadline(time.Now())
	}
	s.ctlMu.Unlock()
}

// serverFor returns the attached server, attaching one if needed, and
// accounts for msg opening an extended-protocol group. It returns with s.mu
// held on success. start is when the request arrived, if the caller read
// the clock (zero otherwise): an acquisition counts its wait from it.
func (s *Session) serverFor(ctx context.Context, opensGroup bool, start time.Time) (*Server, error) {
	s.mu.Lock()
	return s.serverForLocked(ctx, opensGroup, start)
}

// serverForLocked is serverFor called with s.mu held; it returns with
// s.mu held on success and released on error.
func (s *Session) serverForLocked(ctx context.Context, opensGroup bool, start time.Time) (*Server, error) {
	if s.closed {
		s.mu.Unlock()
		return nil, errClientGone
	}
	srv := s.server
	if srv == nil {
		s.mu.Unlock()
		var err error
		var end time.Time
		srv, end, err = s.attachAt(ctx, start)
		if err != nil {
			return nil, err
		}
		s.mu.Lock()
		s.msgAt = end // the acquire may have waited: its end is now
		if s.server != srv {
			s.mu.Unlock()
			return nil, wire.Fatal(wire.CodeConnectionFailure, "server connection lost")
		}
	}
	if opensGroup && !s.groupOpen {
		s.groupOpen = true
		s.incInFlightLocked()
	}
	return srv, nil
}

// acquireFailed reports an acquire error to the client as a non-fatal
// error where the protocol allows it.
func (s *Session) acquireFailed(err error, simple bool) error {
	var we *wire.Error
	if !errors.As(err, &we) {
		if isRoutineDisconnect(err) {
			return err
		}
		we = wire.FromUpstream(err, "ERROR")
	}
	e := *we
	if e.Code != wire.CodeAdminShutdown {
		e.Severity = "ERROR"
	}
	s.logger().Warn().Err(err).Msg("could not get a server connection")
	s.mu.Lock()
	s.sendLocked(e.AppendErrorResponse(nil))
	if simple {
		s.sendLocked(wire.AppendReadyForQuery(nil, wire.TxIdle))
	} else {
		s.skipUntilSync = true
	}
	ferr := s.client.Flush()
	s.mu.Unlock()
	if e.Severity == "FATAL" {
		return &e
	}
	return ferr
}

func (s *Session) handleQuery(ctx context.Context, raw []byte) error {
	text, err := wire.DecodeQuery(raw[5:])
	if err != nil {
		return wire.Fatal(wire.CodeProtocolViolation, "invalid Query message")
	}
	var flags stmtFlags
	if s.mode == TransactionMode {
		flags = scanStatement(text)
	}
	start := time.Now()
	srv, err := s.serverFor(ctx, false, start)
	if err != nil {
		return s.acquireFailed(err, true)
	}
	if s.mode == SessionMode && firstWordIsDDL(text) {
		s.noteDDLLocked()
	}
	it := pending{kind: pendQuery, text: text, start: start}
	out := raw
	if s.mode == TransactionMode && flags == 0 {
		out = s.mapPreparedRefLocked(srv, text, &it, raw)
	}
	restore := false
	if len(s.startupGUCs) > 0 && !s.groupOpen {
		if s.mode == TransactionMode {
			restore = flags&flagResetGUC != 0
		} else {
			restore = mayReset(text)
		}
		// (The COPY check last: it scans the text, and restore is rare.)
		restore = restore && !containsFold(text, "copy")
	}
	if s.groupOpen {
		s.groupOpen = false
	} else {
		s.incInFlightLocked()
	}
	s.stampTx(&it)
	it.holdZ = restore
	s.queue.push(it)
	if restore {
		out = s.restoreStartupLocked(out)
	}
	s.noteFlags(flags, text)
	if flags&(flagDiscardAll|flagDeallocateAll) != 0 && srv.prepared != nil {
		srv.prepared.clear()
		clear(s.stmts)
		s.unnamedStmt = nil
	}
	// A simple Query destroys the unnamed statement, on the server and
	// for the client, as Postgres does: a later Bind of "" without a
	// Parse fails with 26000.
	srv.unnamed = nil
	if s.mode == TransactionMode {
		s.unnamedStmt = nil
	}
	return s.sendRequestLocked(srv, out)
}

// appendQuery appends a Query message.
func appendQuery(dst []byte, text string) []byte {
	dst = append(dst, wire.MsgQuery, 0, 0, 0, 0)
	n := len(dst) - 4
	dst = append(dst, text...)
	dst = append(dst, 0)
	binary.BigEndian.PutUint32(dst[n:], uint32(len(dst)-n))
	return dst
}

// appendCommandComplete appends a CommandComplete message.
func appendCommandComplete(dst []byte, tag string) []byte {
	dst = append(dst, wire.MsgCommandComplete, 0, 0, 0, 0)
	n := len(dst) - 4
	dst = append(dst, tag...)
	dst = append(dst, 0)
	binary.BigEndian.PutUint32(dst[n:], uint32(len(dst)-n))
	return dst
}

// writeServer writes out to srv (flushing when asked) and then clears
// s.writing, which the caller set under s.mu.
func (s *Session) writeServer(srv *Server, out []byte, flush bool) error {
	var err error
	if len(out) > 0 {
		err = srv.WriteRaw(out)
	}
	if err == nil && flush {
		err = srv.Flush()
	}
	s.mu.Lock()
	s.writing = false
	if s.writingDone != nil {
		s.writingDone.Broadcast()
	}
	s.mu.Unlock()
	if err != nil {
		return s.serverWriteFailed(srv, err)
	}
	return nil
}

func (s *Session) handleFunctionCall(ctx context.Context, raw []byte) error {
	srv, err := s.serverFor(ctx, false, time.Time{})
	if err != nil {
		return s.acquireFailed(err, true)
	}
	if s.groupOpen {
		s.groupOpen = false
	} else {
		s.incInFlightLocked()
	}
	s.queue.push(pending{kind: pendFunctionCall})
	return s.sendRequestLocked(srv, raw)
}

func (s *Session) handleCopy(typ byte, raw []byte) error {
	s.mu.Lock()
	srv := s.server
	if srv == nil {
		// COPY data after the server went away: Postgres ignores stray
		// CopyData outside COPY too.
		s.mu.Unlock()
		return nil
	}
	if typ != wire.MsgCopyData {
		s.copyInExtended = false
	}
	s.writing = true
	s.mu.Unlock()
	// CopyData is batched only while more client bytes are already here.
	return s.writeServer(srv, raw, typ != wire.MsgCopyData || s.client.R.Buffered() == 0)
}

func (s *Session) serverWriteFailed(srv *Server, err error) error {
	s.logger().Warn().Err(err).Msg("write to server failed")
	// The reader will see the broken connection and end the session.
	s.mu.Lock()
	s.closed = true
	s.endProbeLocked("")
	s.mu.Unlock()
	_ = srv.Close()
	return wire.Fatal(wire.CodeConnectionFailure, "server connection lost")
}

// finish runs when the client goroutine leaves Run: it stops the reader and
// returns or destroys the server connection.
func (s *Session) finish() {
	s.mu.Lock()
	if s.queryTimer != nil {
		s.queryTimer.Stop()
	}
	s.closed = true
	s.endProbeLocked("")
	srv := s.server
	clean := s.inFlight == 0 && !s.groupOpen && s.txStatus == wire.TxIdle && !s.copyActive && !s.writeTimedOut
	done := s.readerDone
	readerRan := s.readerActive
	s.stopReader.Store(true)
	if srv != nil && readerRan {
		_ = srv.SetReadDeadline(time.Now())
	}
	s.mu.Unlock()
	if done != nil {
		<-done
	}
	s.mu.Lock()
	srv = s.server
	s.setServerLocked(nil)
	rerr := s.readerErr
	s.mu.Unlock()
	if srv != nil {
		inSync := srv.R.InSync()
		if readerRan {
			// The reader must have stopped at the deadline, between
			// messages.
			var ne net.Error
			inSync = inSync && errors.As(rerr, &ne) && ne.Timeout()
		}
		_ = srv.SetReadDeadline(time.Time{})
		if clean && inSync && (s.mode == TransactionMode && !s.pinned || s.pool.Reset(context.Background(), srv)) {
			s.pool.Release(srv, true)
		} else {
			s.pool.destroy(srv)
		}
	}
	s.flushStats()
	s.pool.stats.bytesIn.Add(s.bytesIn)
	s.bytesIn = 0
}

// flushStats moves the reader-side counters into the pool; s.mu held or
// the reader stopped.
//
// The pool's counters are shared by all its sessions, so each add is a
// write to a cache line other cores write too: counters that did not move
// (the Parse and Bind counts of a simple-protocol client, say) are
// skipped.
func (s *Session) flushStats() {
	if s.busyState == nil {
		return // parked: dropIdleStateLocked moved them already
	}
	st := &s.pool.stats
	addNonZero(&st.bytesOut, s.bytesOut)
	addNonZero(&st.queries, s.queries)
	addNonZero(&st.xacts, s.xacts)
	addNonZero(&st.xactNs, int64(s.xactTime))
	addNonZero(&st.clientParses, s.clientParses)
	addNonZero(&st.serverParses, s.serverParses)
	addNonZero(&st.binds, s.binds)
	s.bytesOut, s.queries, s.xacts, s.xactTime = 0, 0, 0, 0
	s.clientParses, s.serverParses, s.binds = 0, 0, 0
}

// addNonZero adds v to c unless v is zero.
func addNonZero(c *atomic.Int64, v int64) {
	if v != 0 {
		c.Add(v)
	}
}

// closeIfIdle ends the session with e when it is between transactions:
// nothing in flight, no transaction open, no COPY. It reports whether it
// did. Any message the client sends afterwards is refused.
//
// It waits for the session's lock, which is what catches a busy client
// between two transactions; a relay blocked writing to a client that does
// not read holds it until client_write_timeout. Its own FATAL waits at
// most a second for a full socket.
func (s *Session) closeIfIdle(e *wire.Error) bool {
	s.lockRunning()
	idle := !s.closed && s.inFlight == 0 && !s.groupOpen && !s.copyActive && !s.writing &&
		s.queue.len() == 0 && (s.server == nil || s.txStatus == wire.TxIdle)
	if idle {
		s.closed = true
		s.endProbeLocked("")
		s.client.SetWriteTimeout(time.Second)
		_ = s.client.SendError(e)
	}
	s.mu.Unlock()
	if idle {
		s.closeClient()
	}
	return idle
}

// cancel forwards a cancel to the server serving the session right now.
//
// The cancel is sent while holding s.ctlMu, so the server cannot be
// released to another client between the check and the send (detaching
// takes ctlMu). Sending is a dial to the server and one small write. It
// does not take mu, which a write to a client that does not read may hold.
func (s *Session) cancel() {
	s.ctlMu.Lock()
	defer s.ctlMu.Unlock()
	s.infoMu.Lock()
	srv, busy := s.server, s.inFlight > 0
	s.infoMu.Unlock()
	if srv == nil || !busy {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := srv.Cancel(ctx); err != nil {
		s.logger().Warn().Err(err).Msg("cancel request failed")
	}
}
