package pooler

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"hash/fnv"
	"hash/maphash"
	"io"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgerrcode"
	"github.com/rs/zerolog"

	"github.com/pgaudit-proxy/pgaudit/internal/event"
	"github.com/pgaudit-proxy/pgaudit/wire"
)

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
}

// mayReset is the scan for flagResetGUC where statements are not scanned
// otherwise (session mode).
func mayReset(text string) bool {
	return (containsFold(text, "reset") || containsFold(text, "discard") || containsFold(text, "default")) &&
		scanStatement(text)&flagResetGUC != 0
}

// live reports whether def names an existing statement for the client;
// s.mu held.
func (def *stmtDef) live() bool { return def != nil && !def.failed }

// Session relays one authenticated client. The client's goroutine runs run.
// Replies are read from the attached server either by that goroutine
// itself (awaitReplies: transaction mode, a request the client waits for,
// nothing else pending; the common case, with no goroutine started or
// handed off per transaction) or by a background reader (serverLoop:
// session mode, pinned clients, open transactions, COPY FROM STDIN, Flush,
// pipelined requests), never both at once (readerActive). mu guards the
// fields below it and all writes to the client; a write to a client that
// does not read can hold it until client_write_timeout. Introspection
// (SHOW CLIENTS, SHOW SERVERS) and control (KILL, cancel, the watchdog)
// therefore never take mu: they read the fields marked "info" under
// infoMu, and act on the attached server under ctlMu.
type Session struct {
	proxy  *Proxy
	id     uint64
	client *wire.Conn
	pool   *Pool
	mode   PoolMode
	log    zerolog.Logger

	database, user, appName, clientAddr string
	cancelPID                           uint32
	cancelKey                           []byte
	cancelPeered                        bool // cancel key from newPeerCancelKey
	connected                           time.Time

	// infoMu guards reads of the info fields by introspection and
	// control. The info fields are written with both mu and infoMu held
	// (mu first) and read with either. It is never held during I/O.
	infoMu sync.Mutex
	// ctlMu is held by control paths that act on the attached server
	// (cancel, interruptInline) and by everything that detaches it (with
	// mu held, before infoMu), so the server cannot change hands while a
	// cancel is on its way to it. It is never held during client I/O.
	ctlMu sync.Mutex

	mu         sync.Mutex
	server     *Server // info
	inFlight   int     // info: Syncs, Queries and FunctionCalls sent and not yet answered by ReadyForQuery
	groupOpen  bool    // extended-protocol messages sent since the last Sync
	txStatus   byte    // info
	copyActive bool
	pinned     bool // info
	// skipUntilSync drops client messages after an error in
	// an extended-protocol group, as the server does after its own errors.
	skipUntilSync bool
	queue         pendingQueue
	// readerActive says a background reader (serverLoop) owns reading
	// the attached server; readerDone is closed when the last one started
	// has exited. Without one the client goroutine reads the replies
	// itself (see awaitReplies).
	readerActive bool
	// inlineSince (info) is when the client goroutine began reading its
	// server inline (zero otherwise); the proxy's watchdog checks clients
	// that wait long for a vanished peer (see checkInlineClients).
	inlineSince time.Time
	readerDone  chan struct{}
	// stopReader tells whoever reads the server that a read deadline set
	// on it means "stop", not "server lost". Set without mu by
	// interruptInline.
	stopReader atomic.Bool
	readerErr  error
	// writeTimedOut says a write to the client hit client_write_timeout:
	// the client is dropped and its server connection destroyed.
	writeTimedOut bool
	gucDirty      bool
	// ddlSent says the transaction running now sent DDL (see noteDDLLocked).
	ddlSent bool
	// probe is the shape probe in flight (see shapegate.go).
	probe *shapeProbe
	// startupGUCs are the settings from the client's startup packet: what
	// RESET and DISCARD ALL return to on a direct connection. Read-only.
	startupGUCs map[string]string
	gucs        map[string]string
	gucsKey     string // gucsKey(gucs), kept in step with it
	// reported holds the ParameterStatus values the client has been
	// sent; heldParams (name, value pairs) and heldZ are what the server
	// said while a Query with holdZ and its restore query run.
	reported map[string]string
	// reportedShared says reported is the pool's shared copy (see
	// Pool.shareParams): clone it before writing.
	reportedShared bool
	heldParams     []string
	heldZ          []byte
	pendingWait    time.Duration
	txSeq          uint64
	closed         bool
	lastFatal      bool
	acquiring      bool // info: waiting for a server connection
	// copyInExtended is set between an Execute's CopyInResponse and the
	// client's CopyDone/CopyFail.
	copyInExtended bool
	// writing is set while the client goroutine writes to the server
	// outside the lock; the reader does not release the server meanwhile
	// (the reply can arrive before the write call returns).
	writing     bool
	writingDone *sync.Cond
	// queryTimer cancels the running request after query_timeout.
	queryTimer *time.Timer
	// suspended portals: what earlier parts of a portal run in several
	// Executes took, so the whole run becomes one event
	suspended map[string]suspendedPortal
	// partRows counts DataRows of the Execute at the head of the queue.
	partRows int64
	// resHash hashes the DataRows of a sampled statement (resState
	// resSampling); see hashRowLocked and endResultLocked.
	resHash   maphash.Hash
	resState  uint8
	resSeeded bool
	resRand   uint64 // xorshift state picking the sampled statements
	// groupStamped says an Execute of the current Sync group already
	// opened a transaction number (the group is one implicit transaction).
	groupStamped bool
	// groupResets says an Execute of the current group may have returned
	// settings to their reset values (see restoreStartupLocked).
	groupResets bool

	// client goroutine only
	stmts   map[string]*stmtDef
	portals map[string]*pending
	// abandoned holds the texts (stmtBase) of statements the client
	// closed, with the DDL epoch and the text's generation then (see
	// serverStmtName).
	abandoned map[uint64][2]uint64

	bytesIn, bytesOut int64
	queries, xacts    int64
	// Parse and Bind messages (s.mu), moved to the pool by flushStats.
	clientParses, serverParses, binds int64
	// xactStart is when the running transaction's first statement went
	// out (zero between transactions); xactTime sums finished ones.
	xactStart time.Time
	xactTime  time.Duration

	// The event relay (relay.go). parkable is set at login for plain
	// sockets on the event relay and never changes. parkState is one of
	// parkRunning, parkParked, parkResuming. parkReq says the sweeper set
	// a past read deadline to make the run loop park. active is the
	// coarse time (Proxy.coarseNow) of the last client message: the one
	// store per message the event relay costs. readDL is the client read
	// deadline the session wants (unix ns, 0 none), kept across park
	// requests and parks. resumed tells run it goes on after a park.
	// parkLoop, clientFd and serverFd (-1: none) are set while parked
	// (s.mu).
	parkable           atomic.Bool
	resumed            bool
	parkMu             sync.Mutex // orders parkReq with its deadline
	parkState          atomic.Int32
	parkReq            atomic.Bool
	active             atomic.Int64
	readDL             atomic.Int64
	parkLoop           *eventLoop
	clientFd, serverFd int
	// ctx is the context the session's goroutines run under, and end
	// the rest of handleConn's cleanup (see serveSession).
	ctx context.Context
	end func()
}

type suspendedPortal struct {
	d     time.Duration
	rows  int64
	txSeq uint64
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
	} else if idleTimeout > 0 {
		s.setIdleDeadline(idleTimeout)
	}
	for {
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
		s.active.Store(s.proxy.coarseNow.Load())
		if idleTimeout > 0 || s.pool.set().IdleTransactionTimeout > 0 {
			s.setClientReadDeadline(time.Time{})
		}
		// During Shutdown, a client that sends its next statement while
		// between transactions is ended instead (Shutdown's own poll
		// catches only clients that stay idle, and a busy client is
		// almost never idle when it looks); see drain.go.
		if typ != 'X' && s.proxy.draining.Load() && s.endForDrain() {
			return nil
		}
		s.bytesIn += int64(len(raw))
		if typ == 'Q' || typ == 'S' {
			s.pool.stats.bytesIn.Add(s.bytesIn)
			s.bytesIn = 0
		}
		switch typ {
		case 'X':
			return nil
		case 'Q':
			err = s.handleQuery(ctx, raw)
		case 'P', 'B', 'D', 'E', 'C', 'H', 'S':
			err = s.handleExtended(ctx, typ, raw)
		case 'F':
			err = s.handleFunctionCall(ctx, raw)
		case 'd', 'c', 'f':
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
	if s.server == nil || s.mode == SessionMode && s.inFlight == 0 && s.txStatus == 'I' {
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
		inTx := s.server != nil && s.txStatus != 'I' && s.inFlight == 0
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
	if s.readerDone != nil {
		<-s.readerDone
	}
	s.mu.Lock()
	s.infoMu.Lock()
	s.acquiring = true
	s.infoMu.Unlock()
	s.mu.Unlock()
	srv, wait, err := s.pool.Acquire(ctx)
	s.mu.Lock()
	s.infoMu.Lock()
	s.acquiring = false
	s.infoMu.Unlock()
	s.mu.Unlock()
	if err != nil {
		return nil, err
	}
	if err := s.applySettings(ctx, srv); err != nil {
		s.pool.destroy(srv)
		return nil, err
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
	return srv, nil
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
	s.infoMu.Lock()
	s.inlineSince = time.Now()
	s.infoMu.Unlock()
	s.mu.Unlock()
	err := s.pump(srv, true)
	s.mu.Lock()
	s.infoMu.Lock()
	s.inlineSince = time.Time{}
	s.infoMu.Unlock()
	s.mu.Unlock()
	return err
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

// clientGoneWhileInline reports whether the client goroutine has been
// reading its server inline for longer than d and the client has closed
// its connection meanwhile: the goroutine cannot notice that itself until
// the statement ends.
func (s *Session) clientGoneWhileInline(d time.Duration) bool {
	s.infoMu.Lock()
	since := s.inlineSince
	s.infoMu.Unlock()
	return !since.IsZero() && time.Since(since) > d && wire.PeerClosed(s.client.Conn)
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

// gucsKey serializes settings canonically, so that equal settings (most
// clients of a pool have the same, often none) are recognized with one
// string comparison per acquire.
func gucsKey(m map[string]string) string {
	if len(m) == 0 {
		return ""
	}
	names := make([]string, 0, len(m))
	for k := range m {
		names = append(names, k)
	}
	slices.Sort(names)
	var b strings.Builder
	for _, k := range names {
		b.WriteString(k)
		b.WriteByte(0)
		b.WriteString(m[k])
		b.WriteByte(0)
	}
	return b.String()
}

// applySettings makes srv's session settings equal to the client's.
func (s *Session) applySettings(ctx context.Context, srv *Server) error {
	if srv.gucsKey == s.gucsKey {
		return nil
	}
	var sql strings.Builder
	var sets []string
	for name := range srv.gucs {
		if _, ok := s.gucs[name]; !ok {
			fmt.Fprintf(&sql, "RESET %s;", quoteIdent(name))
		}
	}
	for name, v := range s.gucs {
		if cur, ok := srv.gucs[name]; !ok || cur != v {
			sets = append(sets, setConfigCall(name, v))
		}
	}
	if len(sets) > 0 {
		sql.WriteString("SELECT " + strings.Join(sets, ", "))
	}
	if sql.Len() == 0 {
		return nil
	}
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	res, err := srv.Exec(cctx, sql.String())
	if err != nil {
		return wire.FromUpstream(err, "ERROR")
	}
	if res.Err != nil {
		return &wire.Error{Severity: "ERROR", Code: res.Err.Code, Message: res.Err.Message, Detail: res.Err.Detail, Hint: res.Err.Hint}
	}
	clear(srv.gucs)
	for k, v := range s.gucs {
		srv.gucs[k] = v
	}
	srv.gucsKey = s.gucsKey
	return nil
}

// snapshotSettings reads the session-level settings of srv after the
// client changed some, and makes them the client's. Called by the reader
// after detaching srv.
func (s *Session) snapshotSettings(srv *Server) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	res, err := srv.Exec(ctx, "SELECT name, pg_catalog.current_setting(name) FROM pg_catalog.pg_settings WHERE source = 'session'")
	if err != nil {
		return err
	}
	if res.Err != nil {
		return res.Err
	}
	m := make(map[string]string, len(res.Rows))
	for _, r := range res.Rows {
		if len(r) == 2 {
			m[strings.ToLower(r[0])] = r[1]
		}
	}
	// RESET, RESET ALL and DISCARD ALL return a setting to the value the
	// server connection started with, which is the pool's, not this
	// client's: on a direct connection they return to the client's
	// startup value. Put those back.
	var sets []string
	for name, v := range s.startupGUCs {
		if _, ok := m[name]; !ok {
			sets = append(sets, setConfigCall(name, v))
		}
	}
	if len(sets) > 0 {
		slices.Sort(sets)
		res, err := srv.Exec(ctx, "SELECT "+strings.Join(sets, ", "))
		if err != nil {
			return err
		}
		if res.Err != nil {
			return res.Err
		}
		for name, v := range s.startupGUCs {
			if _, ok := m[name]; !ok {
				m[name] = v
			}
		}
	}
	key := gucsKey(m)
	s.mu.Lock()
	s.gucs, s.gucsKey = m, key
	s.mu.Unlock()
	srv.gucs = make(map[string]string, len(m))
	for k, v := range m {
		srv.gucs[k] = v
	}
	srv.gucsKey = key
	return nil
}

// serverFor returns the attached server, attaching one if needed, and
// accounts for msg opening an extended-protocol group. It returns with s.mu
// held on success.
func (s *Session) serverFor(ctx context.Context, opensGroup bool) (*Server, error) {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil, errClientGone
	}
	srv := s.server
	if srv == nil {
		s.mu.Unlock()
		var err error
		srv, err = s.attach(ctx)
		if err != nil {
			return nil, err
		}
		s.mu.Lock()
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
	s.log.Warn().Err(err).Msg("could not get a server connection")
	s.mu.Lock()
	s.sendLocked(e.AppendErrorResponse(nil))
	if simple {
		s.sendLocked(wire.AppendReadyForQuery(nil, 'I'))
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
	srv, err := s.serverFor(ctx, false)
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
	if len(s.startupGUCs) > 0 && !s.groupOpen && !containsFold(text, "copy") {
		if s.mode == TransactionMode {
			restore = flags&flagResetGUC != 0
		} else {
			restore = mayReset(text)
		}
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
	}
	// A simple Query destroys the unnamed statement, on the server and
	// for the client, as Postgres does: a later Bind of "" without a
	// Parse fails with 26000.
	srv.unnamed = nil
	if s.mode == TransactionMode {
		delete(s.stmts, "")
	}
	return s.sendRequestLocked(srv, out)
}

// mapPreparedRefLocked rewrites a SQL EXECUTE or DEALLOCATE of one of the
// client's protocol-level statements (transaction mode), which the server
// knows under its shared name: EXECUTE runs the shared statement
// (prepared first when this server lacks it), DEALLOCATE forgets the
// client's name and leaves the shared statement to the others. It returns
// the bytes to send instead of raw; s.mu held, it not queued yet.
func (s *Session) mapPreparedRefLocked(srv *Server, text string, it *pending, raw []byte) []byte {
	if s.txStatus == 'E' || !containsFold(text, "execute") && !containsFold(text, "deallocate") {
		// (In a failed transaction the server answers 25P02 whatever
		// the name, and nothing is deallocated.)
		return raw
	}
	ref, ok := scanPreparedRef(text)
	if !ok {
		return raw
	}
	def := s.stmts[ref.name]
	if !def.live() || def.serverName == "" {
		return raw // SQL PREPAREd (the client is pinned) or unknown: the server answers
	}
	if !ref.execute {
		delete(s.stmts, ref.name)
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
		out = append(out, 'S', 0, 0, 0, 4)
		s.incInFlightLocked()
		s.queue.push(pending{kind: pendSync, swallow: true})
	}
	return appendQuery(out, text[:ref.start]+quoteIdent(def.serverName)+text[ref.end:])
}

// restoreStartupLocked appends to out, after a Query that may have
// returned settings to their reset values (RESET, DISCARD ALL, SET ...
// DEFAULT), a query that puts the client's startup values back where a
// setting is at its reset value: on a server connection that is the
// pool's value, while on a direct connection it is the client's startup
// value. It runs in the same transaction state as the client's Query, so
// a rollback undoes both. Its answers are swallowed, and the
// ParameterStatus messages of both are merged, as Postgres reports only
// the values that changed by the time it sends ReadyForQuery; s.mu held.
func (s *Session) restoreStartupLocked(out []byte) []byte {
	var sql strings.Builder
	sql.WriteString("SELECT pg_catalog.set_config(s.name, v.setting, false) FROM pg_catalog.pg_settings s JOIN (VALUES ")
	for i, name := range sortedKeys(s.startupGUCs) {
		if i > 0 {
			sql.WriteString(", ")
		}
		sql.WriteString("(" + quoteLiteral(name) + ", " + quoteLiteral(s.startupGUCs[name]) + ")")
	}
	sql.WriteString(") AS v(name, setting) ON pg_catalog.lower(s.name) = v.name WHERE s.source <> 'session'")
	s.incInFlightLocked()
	s.queue.push(pending{kind: pendQuery, swallow: true})
	return appendQuery(out, sql.String())
}

// releaseHeldLocked sends what was held for a Query with holdZ: the
// settings that changed since the client last heard of them, then its
// ReadyForQuery; s.mu held.
func (s *Session) releaseHeldLocked() {
	final := map[string]string{}
	var order []string
	for i := 0; i+1 < len(s.heldParams); i += 2 {
		name := s.heldParams[i]
		if _, seen := final[name]; !seen {
			order = append(order, name)
		}
		final[name] = s.heldParams[i+1]
	}
	for _, name := range order {
		if v, ok := s.reported[name]; ok && v == final[name] {
			continue
		}
		s.ownReportedLocked()
		s.reported[name] = final[name]
		s.sendLocked(wire.AppendParameterStatus(nil, name, final[name]))
	}
	s.heldParams = s.heldParams[:0]
	if s.heldZ != nil {
		s.sendLocked(s.heldZ)
		s.heldZ = nil
	}
}

// appendQuery appends a Query message.
func appendQuery(dst []byte, text string) []byte {
	dst = append(dst, 'Q', 0, 0, 0, 0)
	n := len(dst) - 4
	dst = append(dst, text...)
	dst = append(dst, 0)
	binary.BigEndian.PutUint32(dst[n:], uint32(len(dst)-n))
	return dst
}

// appendCommandComplete appends a CommandComplete message.
func appendCommandComplete(dst []byte, tag string) []byte {
	dst = append(dst, 'C', 0, 0, 0, 0)
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
	s.writingDone.Broadcast()
	s.mu.Unlock()
	if err != nil {
		return s.serverWriteFailed(srv, err)
	}
	return nil
}

// stampTx fills the transaction fields of an auditable item; s.mu held.
func (s *Session) stampTx(it *pending) {
	switch {
	case s.txStatus != 'I' && s.txStatus != 0:
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
			s.log.Info().Str("feature", flags.detail()).Msg("client pinned to its server connection: statement needs a session")
		}
		s.proxy.sink.Offer(&event.Event{
			Kind: event.KindSessionState, Detail: flags.detail(), Text: text, SessionID: s.id,
			Database: s.database, User: s.user, ApplicationName: s.appName, ClientAddr: s.clientAddr,
			Start: time.Now(), Rows: -1,
		})
		s.proxy.counters.sessionState.Add(1)
	}
}

func (s *Session) handleFunctionCall(ctx context.Context, raw []byte) error {
	srv, err := s.serverFor(ctx, false)
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
	if typ != 'd' {
		s.copyInExtended = false
	}
	s.writing = true
	s.mu.Unlock()
	// CopyData is batched only while more client bytes are already here.
	return s.writeServer(srv, raw, typ != 'd' || s.client.R.Buffered() == 0)
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
	s.mu.Lock()
	skip := s.skipUntilSync
	s.mu.Unlock()
	if skip {
		if typ != 'S' {
			return nil
		}
		s.mu.Lock()
		s.skipUntilSync = false
		if s.server == nil {
			s.sendLocked(wire.AppendReadyForQuery(nil, 'I'))
			err := s.client.Flush()
			s.mu.Unlock()
			return err
		}
		s.mu.Unlock()
	}
	// Decode what we need before taking the lock.
	var (
		parse      wire.ParseMsg
		bind       wire.BindMsg
		targetKind byte
		targetName []byte
		err        error
	)
	switch typ {
	case 'P':
		parse, err = wire.DecodeParse(body)
	case 'B':
		bind, err = wire.DecodeBind(body)
	case 'D', 'C':
		targetKind, targetName, err = wire.DecodeTarget(body)
	}
	if err != nil {
		return wire.Fatal(wire.CodeProtocolViolation, fmt.Sprintf("invalid %q message", typ))
	}
	txMode := s.mode == TransactionMode
	var flags stmtFlags
	if typ == 'P' && txMode {
		flags = scanStatement(parse.Query)
	}
	// A Close of a client statement in transaction mode and a Flush with
	// nothing pending are answered locally without a server.
	if txMode && typ == 'C' && targetKind == 'S' {
		s.mu.Lock()
		if def := s.stmts[string(targetName)]; def.live() && def.serverName != "" {
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
		delete(s.stmts, string(targetName))
		if s.server == nil && s.queue.len() == 0 {
			s.sendLocked([]byte{'3', 0, 0, 0, 4})
			s.mu.Unlock()
			return nil
		}
		s.mu.Unlock()
	}
	// A named Parse from an idle client is registered without a server, as
	// PgBouncer does: the statement is prepared on whichever server runs
	// its first Bind or Describe. Holding a server here would deadlock
	// clients such as pgbench that prepare synchronously from one thread
	// while their other connections hold every server mid-transaction.
	// The cost: a syntax error surfaces at that Bind instead.
	if txMode && typ == 'P' && parse.Name != "" {
		s.mu.Lock()
		if s.server == nil && s.queue.len() == 0 {
			if s.stmts[parse.Name].live() {
				e := &wire.Error{Severity: "ERROR", Code: pgerrcode.DuplicatePreparedStatement, Message: fmt.Sprintf("prepared statement %q already exists", parse.Name)}
				s.sendLocked(e.AppendErrorResponse(nil))
				s.skipUntilSync = true
			} else {
				s.stmts[parse.Name] = &stmtDef{query: parse.Query, types: append([]byte(nil), parse.Types...), serverName: s.serverStmtName(parse.Query, parse.Types),
					resets: flags&flagResetGUC != 0}
				s.clientParses++
				s.noteFlags(flags, parse.Query)
				s.sendLocked([]byte{'1', 0, 0, 0, 4})
			}
			s.mu.Unlock()
			return nil
		}
		s.mu.Unlock()
	}
	if typ == 'H' || typ == 'S' {
		s.mu.Lock()
		if s.server == nil && s.queue.len() == 0 {
			if typ == 'S' {
				s.sendLocked(wire.AppendReadyForQuery(nil, 'I'))
			}
			err := s.client.Flush()
			s.mu.Unlock()
			return err
		}
		s.mu.Unlock()
	}
	srv, err := s.serverFor(ctx, typ != 'S')
	if err != nil {
		return s.acquireFailed(err, false)
	}
	// s.mu is held from here until the writes are planned.
	if s.skipUntilSync {
		// The reader saw an error of this group meanwhile: the server
		// skips the rest of it.
		if typ != 'S' {
			s.mu.Unlock()
			return nil
		}
		s.skipUntilSync = false
	}
	out := raw
	var inject []byte
	switch typ {
	case 'P':
		s.clientParses++
		it := pending{kind: pendParse, text: parse.Query, start: time.Now()}
		if txMode {
			def := s.stmts[""]
			if parse.Name != "" || def == nil || def.query != parse.Query || !bytes.Equal(def.types, parse.Types) {
				// (A client re-parsing the same unnamed statement, as
				// pgbench -M extended does, keeps its definition.)
				def = &stmtDef{query: parse.Query, types: append([]byte(nil), parse.Types...), resets: flags&flagResetGUC != 0}
			}
			if parse.Name != "" {
				def.serverName = s.serverStmtName(parse.Query, parse.Types)
				if s.stmts[parse.Name].live() {
					s.localErrorLocked(&wire.Error{Severity: "ERROR", Code: pgerrcode.DuplicatePreparedStatement, Message: fmt.Sprintf("prepared statement %q already exists", parse.Name)})
					s.mu.Unlock()
					return nil
				}
				s.stmts[parse.Name] = def
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
				s.stmts[""] = def
				srv.unnamed = def
			}
			s.noteFlags(flags, parse.Query)
		} else {
			// Session mode forwards names unchanged; the text is kept
			// for the audit events of later Executes.
			s.stmts[parse.Name] = &stmtDef{query: parse.Query, resets: len(s.startupGUCs) > 0 && mayReset(parse.Query)}
		}
		if out != nil {
			s.serverParses++
		}
		s.queue.push(it)
	case 'B':
		s.binds++
		stmtName := string(bind.Statement)
		var def *stmtDef
		if txMode {
			def = s.stmts[stmtName]
			if !def.live() {
				s.localErrorLocked(noSuchStatement(stmtName))
				s.mu.Unlock()
				return nil
			}
			if done, err := s.gateShapeLocked(ctx, srv, def, false); done || err != nil {
				return err
			}
			inject = s.ensurePreparedLocked(srv, def)
			if inject != nil || def.serverName != string(bind.Statement) {
				out = wire.AppendBind(inject, bind.Portal, def.serverName, bind.Rest)
			}
			inject = nil
		} else {
			def = s.stmts[stmtName]
		}
		n, h, params, perr := wire.BindParams(bind.Rest, s.proxy.config().CaptureParams)
		if perr != nil {
			s.mu.Unlock()
			return wire.Fatal(wire.CodeProtocolViolation, "invalid Bind message")
		}
		p := &pending{paramHash: h, numParams: n, params: params, stmt: def}
		if def != nil {
			p.text, p.holdZ = def.query, def.resets
		}
		s.portals[string(bind.Portal)] = p
		s.queue.push(pending{kind: pendBind, serverStmt: serverNameOf(def), text: p.text, start: time.Now(),
			paramHash: p.paramHash, numParams: p.numParams, params: p.params})
	case 'D':
		if targetKind == 'S' {
			it := pending{kind: pendDescribeStmt}
			if txMode {
				def := s.stmts[string(targetName)]
				if !def.live() {
					s.localErrorLocked(noSuchStatement(string(targetName)))
					s.mu.Unlock()
					return nil
				}
				if done, err := s.gateShapeLocked(ctx, srv, def, true); done || err != nil {
					return err
				}
				inject = s.ensurePreparedLocked(srv, def)
				out = wire.AppendTarget(inject, 'D', 'S', def.serverName)
				inject = nil
				it.serverStmt = def.serverName
				it.stmt = def
			}
			s.queue.push(it)
		} else {
			it := pending{kind: pendDescribePortal}
			if p := s.portals[string(targetName)]; p != nil && txMode {
				it.stmt, it.serverStmt = p.stmt, serverNameOf(p.stmt)
			}
			s.queue.push(it)
		}
	case 'E':
		portal := ""
		if len(body) > 0 {
			if i := indexZero(body); i >= 0 {
				portal = string(body[:i])
			}
		}
		it := pending{kind: pendExecute, start: time.Now(), portal: portal}
		if p := s.portals[portal]; p != nil {
			it.text, it.paramHash, it.numParams, it.params = p.text, p.paramHash, p.numParams, p.params
			if p.holdZ {
				s.groupResets = true
			}
		}
		s.stampTx(&it)
		s.queue.push(it)
	case 'C':
		if txMode && targetKind == 'S' {
			// Answered by the proxy: the server-side statement stays for
			// other clients.
			s.queue.push(pending{kind: pendClose, synthetic: true})
			out = nil
		} else {
			if targetKind == 'S' {
				delete(s.stmts, string(targetName))
			} else {
				delete(s.portals, string(targetName))
			}
			s.queue.push(pending{kind: pendClose})
		}
	case 'S':
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
		sync := pending{kind: pendSync}
		if s.groupResets && len(s.startupGUCs) > 0 {
			// As after a simple Query (see handleQuery).
			sync.holdZ = true
		}
		s.groupResets = false
		s.queue.push(sync)
		if sync.holdZ {
			out = s.restoreStartupLocked(out)
		}
	case 'H':
		// Synthetic answers at the head are due now: the client waits.
		s.emitSyntheticLocked()
		_ = s.client.Flush()
		// Replies without a ReadyForQuery: only a background reader can
		// relay them while the client decides what to send next.
		s.startReaderLocked(srv)
	}
	if typ != 'S' && typ != 'H' && len(out) > srv.W.Available() {
		// The write flushes part of the group: replies may start to flow
		// before the Sync and must be read, or both sides could block.
		s.startReaderLocked(srv)
	}
	if typ == 'S' {
		return s.sendRequestLocked(srv, out)
	}
	// Never hold back what the client sent: Postgres starts
	// statement_timeout at the first message of a statement, and a client
	// may pause between Parse and Describe. Batch only while more client
	// bytes are already here.
	flush := typ == 'H' || s.client.R.Buffered() == 0
	if flush && typ != 'H' && (len(out) > 0 || srv.W.Buffered() > 0) {
		// Part of an open group goes out: replies may flow before its
		// Sync (an error, or rows that fill the server's buffer).
		s.startReaderLocked(srv)
	}
	s.writing = true
	s.mu.Unlock()
	return s.writeServer(srv, out, flush)
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
			out = wire.AppendTarget(out, 'C', 'S', n)
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
			s.sendLocked([]byte{'1', 0, 0, 0, 4})
		case it.kind == pendClose:
			s.sendLocked([]byte{'3', 0, 0, 0, 4})
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

func (s *Session) serverWriteFailed(srv *Server, err error) error {
	s.log.Warn().Err(err).Msg("write to server failed")
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
	clean := s.inFlight == 0 && !s.groupOpen && s.txStatus == 'I' && !s.copyActive && !s.writeTimedOut
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
func (s *Session) flushStats() {
	st := &s.pool.stats
	st.bytesOut.Add(s.bytesOut)
	st.queries.Add(s.queries)
	st.xacts.Add(s.xacts)
	st.xactNs.Add(int64(s.xactTime))
	st.clientParses.Add(s.clientParses)
	st.serverParses.Add(s.serverParses)
	st.binds.Add(s.binds)
	s.bytesOut, s.queries, s.xacts, s.xactTime = 0, 0, 0, 0
	s.clientParses, s.serverParses, s.binds = 0, 0, 0
}

// serverLoop is the background reader: it relays server messages to the
// client while srv is attached and the session needs one (session mode,
// pinned clients, COPY FROM STDIN, pipelined requests, Flush).
func (s *Session) serverLoop(srv *Server, done chan struct{}) {
	defer s.proxy.wg.Done()
	defer close(done)
	defer func() {
		if r := recover(); r != nil {
			s.log.Error().Interface("panic", r).Msg("relay panic; closing session")
			s.mu.Lock()
			if s.server == srv {
				s.setServerLocked(nil)
			}
			s.readerActive = false
			s.mu.Unlock()
			s.pool.destroy(srv)
			_ = s.client.Close()
		}
	}()
	_ = s.pump(srv, false)
}

// pump reads srv and relays its messages to the client until srv is
// released to the pool or lost. The background reader runs it with
// inline=false. The client goroutine runs it with inline=true after a
// request (see awaitReplies); then it also returns when the request is
// answered and srv stays attached (an open transaction), or when the
// exchange needs client input (COPY FROM STDIN), after starting the
// background reader, which also takes over when srv stays attached after
// the reply. A non-nil error means the session is over.
func (s *Session) pump(srv *Server, inline bool) error {
	for {
		typ, raw, err := srv.R.ReadMessage()
		if err != nil {
			s.mu.Lock()
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
		s.mu.Lock()
		release := s.relayLocked(srv, typ, raw)
		var ferr error
		if typ == 'Z' || srv.R.Buffered() == 0 {
			ferr = s.client.Flush()
			if ferr != nil {
				s.clientWriteFailedLocked(ferr)
			}
		}
		if release {
			for s.writing {
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
			if s.stopReader.Load() {
				// interruptInline came after the last reply: the server
				// is clean, but carries its read deadline.
				_ = srv.SetReadDeadline(time.Time{})
			}
		case !inline:
		case typ == 'G' || typ == 'W':
			// COPY FROM STDIN: the client goroutine must read the data.
			s.startReaderLocked(srv)
			stop = true
		case typ == 'Z' && s.inFlight == 0:
			// The server stays attached (an open transaction, a pinned
			// client): what it sends while the client is idle (a FATAL
			// for idle_in_transaction_session_timeout, notifications) must
			// reach the client at once, as it would from Postgres.
			s.startReaderLocked(srv)
			stop = true
		}
		s.mu.Unlock()
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
					s.log.Warn().Err(err).Msg("could not read session settings; closing server connection")
					s.pool.destroy(srv)
					return nil
				}
			}
			s.mu.Lock()
			s.flushStats()
			s.mu.Unlock()
			s.pool.Release(srv, true)
			return nil
		}
		if stop {
			return nil
		}
	}
}

// clientWriteFailedLocked notes a failed write to the client; s.mu held.
// After client_write_timeout the server connection is destroyed, not
// released: it is likely in the middle of a result the client never read.
func (s *Session) clientWriteFailedLocked(err error) {
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() && !s.writeTimedOut {
		s.writeTimedOut = true
		s.log.Warn().Dur("client_write_timeout", s.pool.set().ClientWriteTimeout).
			Msg("client does not read its results: closing it and its server connection")
	}
}

// serverLost handles a server connection that failed while attached.
func (s *Session) serverLost(srv *Server, err error, alreadyFatal bool) {
	if !isRoutineDisconnect(err) {
		s.log.Warn().Err(err).Msg("server connection failed")
	} else {
		s.log.Info().Err(err).Msg("server closed the connection")
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
	case 'A', 'N':
		s.sendLocked(raw)
		return false
	case 'S':
		name, value := wire.DecodeParameterStatus(body)
		if name != "" {
			srv.Params[name] = value
		}
		if it := s.queue.front(); it != nil && (it.holdZ || it.kind == pendQuery && it.swallow) {
			s.heldParams = append(s.heldParams, name, value)
			return false
		}
		if s.reported != nil {
			s.ownReportedLocked()
			s.reported[name] = value
		}
		s.sendLocked(raw)
		return false
	}
	s.emitSyntheticLocked()
	it := s.queue.front()
	forward := true
	if it != nil && it.kind == pendQuery && it.swallow {
		// The proxy's own query (see restoreStartupLocked).
		if typ != 'Z' {
			if typ == 'E' {
				_, code, msg := wire.ErrorFields(body)
				if code != pgerrcode.InFailedSQLTransaction {
					s.log.Warn().Str("code", code).Str("error", msg).Msg("could not restore startup settings")
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
	case '1', '3':
		if it != nil && (it.kind == pendParse || it.kind == pendClose) {
			if it.stmt != nil {
				it.stmt.verified = true
			}
			forward = !it.swallow
			s.queue.pop()
		}
	case '2':
		if it != nil && it.kind == pendBind {
			forward = !it.swallow
			s.queue.pop()
		}
	case 't':
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
	case 'T', 'n':
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
			if shape := rowShape(typ, body); shape != "" && it.stmt != nil {
				it.stmt.setShapes(shape, "")
				if it.kind == pendDescribeStmt && it.serverStmt != "" && srv.prepared != nil {
					// What this server statement has: a Describe of it.
					srv.prepared.setShape(it.serverStmt, it.stmt.shapeKey())
				}
			}
			s.queue.pop()
		}
		if typ == 'T' && it != nil && it.kind == pendQuery && it.tag != "" {
			forward = false
		}
	case 'C', 'I':
		if it != nil {
			switch it.kind {
			case pendExecute:
				it.resultHash = s.endResultLocked()
				if _, ok := s.suspended[it.portal]; ok {
					it.resultHash = 0 // a portal run in parts is not sampled
				}
				s.completeExecute(it, body, typ == 'I', "")
				s.queue.pop()
			case pendQuery:
				if it.tag != "" && typ == 'C' {
					raw = appendCommandComplete(nil, it.tag)
					body = raw[5:]
				}
				it.results = append(it.results, stmtResult{tag: string(wire.CommandTag(body)), at: time.Now(), resultHash: s.endResultLocked()})
				if typ == 'I' {
					it.results[len(it.results)-1].tag = ""
				}
			}
		}
	case 'D':
		if it != nil && it.kind == pendExecute {
			s.partRows++
		}
		if it != nil && (it.kind == pendExecute || it.kind == pendQuery) {
			s.hashRowLocked(body)
		}
	case 's':
		s.endResultLocked()
		if it != nil && it.kind == pendExecute {
			if s.suspended == nil {
				s.suspended = map[string]suspendedPortal{}
			}
			sp, ok := s.suspended[it.portal]
			if !ok {
				sp.txSeq = it.txSeq
			}
			sp.d += time.Since(it.start)
			sp.rows += s.partRows
			s.suspended[it.portal] = sp
			s.partRows = 0
			s.queue.pop()
		}
	case 'E':
		s.endResultLocked()
		sev, code, msg := wire.ErrorFields(body)
		if sev == "FATAL" || sev == "PANIC" {
			s.lastFatal = true
		}
		if it != nil {
			switch it.kind {
			case pendQuery:
				it.results = append(it.results, stmtResult{sqlstate: code, at: time.Now()})
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
	case 'G', 'H', 'W':
		s.copyActive = true
		if typ == 'G' && it != nil && it.kind == pendExecute {
			// COPY FROM STDIN through the extended protocol: Syncs the
			// client sent after the Execute, before this arrived, are
			// ignored by the server; so are those until CopyDone/CopyFail.
			s.copyInExtended = true
			s.dropQueuedSyncsLocked()
		}
	case 'c':
		// CopyDone from the server ends COPY TO STDOUT.
	case 'Z':
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
		if len(body) == 1 {
			s.infoMu.Lock()
			s.txStatus = body[0]
			s.infoMu.Unlock()
			srv.TxStatus = body[0]
			if s.txStatus == 'I' {
				if s.ddlSent {
					s.ddlSent = false
					s.proxy.ddlEpoch.Add(1)
				}
				// Explicit and implicit transactions both count.
				s.xacts++
				if !s.xactStart.IsZero() {
					s.xactTime += time.Since(s.xactStart)
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
		if s.inFlight > 0 {
			s.infoMu.Lock()
			s.inFlight--
			s.infoMu.Unlock()
		}
		if s.inFlight == 0 && s.queryTimer != nil {
			s.queryTimer.Stop()
		}
		if hold {
			s.heldZ = append([]byte(nil), raw...)
		} else {
			s.sendLocked(raw)
		}
		if s.pool.set().IdleTransactionTimeout > 0 && s.txStatus != 'I' && s.inFlight == 0 {
			s.setClientReadDeadline(time.Now().Add(s.pool.set().IdleTransactionTimeout))
		} else if d := s.pool.set().ClientIdleTimeout; d > 0 && s.mode == SessionMode && s.txStatus == 'I' && s.inFlight == 0 {
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
	s.log.Warn().Dur("query_timeout", s.pool.set().QueryTimeout).Msg("query_timeout: canceling the running statement")
	s.cancel()
}

// releasableLocked says whether the attached server can go back to the pool
// now (transaction mode); s.mu held.
func (s *Session) releasableLocked() bool {
	return s.mode == TransactionMode && s.inFlight == 0 && !s.groupOpen && s.txStatus == 'I' &&
		!s.pinned && s.queue.len() == 0 && !s.stopReader.Load() && !s.copyActive
}

// completeExecute emits the event of an Execute.
func (s *Session) completeExecute(it *pending, tagBody []byte, empty bool, sqlstate string) {
	s.queries++
	s.partRows = 0
	d := time.Since(it.start)
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
	ev.Duration = time.Since(it.start)
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
		ev.InTransaction = s.txStatus != 'I' && s.txStatus != 0
		if !ev.InTransaction {
			s.txSeq++
		}
		ev.TxSeq = s.txSeq
	}
	s.proxy.sink.Offer(ev)
}

// completeQuery emits one event per statement of a simple Query.
func (s *Session) completeQuery(it *pending) {
	if len(it.results) == 0 {
		return
	}
	texts := []string{it.text}
	if len(it.results) > 1 {
		texts = splitStatements(it.text)
	}
	prev := it.start
	inTx := it.inTx
	for i, r := range it.results {
		s.queries++
		d := r.at.Sub(prev)
		prev = r.at
		if i >= len(texts) || (r.tag == "" && r.sqlstate == "") {
			continue
		}
		ev := s.newEvent(it, event.ProtocolSimple)
		ev.Text = texts[i]
		ev.Start = r.at.Add(-d)
		ev.Duration = d
		ev.Command, ev.Rows = parseTag([]byte(r.tag))
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
		ParamHash: it.paramHash, NumParams: it.numParams, Params: it.params, Rows: -1,
		Wait: s.pendingWait, ResultHash: it.resultHash,
	}
	s.pendingWait = 0
	return ev
}

// Result hashing for the cache-candidate rule. A statement's first DataRow
// decides, at random, whether its result is hashed (about one statement in
// Config.ResultSampleEvery); the rows of a sampled one go through maphash
// keyed with the proxy's seed. Statements not sampled cost one branch per
// row and one xorshift step per statement.
const (
	resUndecided uint8 = iota
	resSampling
	resSkipping
)

// hashRowLocked feeds one DataRow body to the result hash, deciding first
// whether the statement is sampled.
// The skipping case is small enough to inline into the relay.
func (s *Session) hashRowLocked(body []byte) {
	if s.resState != resSkipping {
		s.hashRowSlowLocked(body)
	}
}

func (s *Session) hashRowSlowLocked(body []byte) {
	switch s.resState {
	case resUndecided:
		every := s.proxy.config().ResultSampleEvery
		if every == 0 {
			every = DefaultResultSampleEvery
		}
		if every < 0 {
			s.resState = resSkipping
			return
		}
		if s.resRand == 0 {
			s.resRand = s.id*0x9e3779b97f4a7c15 | 1
		}
		s.resRand ^= s.resRand << 13
		s.resRand ^= s.resRand >> 7
		s.resRand ^= s.resRand << 17
		if every > 1 && s.resRand%uint64(every) != 0 {
			s.resState = resSkipping
			return
		}
		s.resState = resSampling
		if !s.resSeeded {
			s.resHash.SetSeed(s.proxy.resultSeed)
			s.resSeeded = true
		} else {
			s.resHash.Reset()
		}
	}
	s.resHash.Write(body)
}

// endResultLocked ends the current statement's result: it returns its
// hash when it was sampled (never zero), else zero, and resets the state
// for the next statement.
func (s *Session) endResultLocked() uint64 {
	var h uint64
	if s.resState == resSampling {
		h = s.resHash.Sum64() | 1
	}
	s.resState = resUndecided
	return h
}

// parseTag splits a command tag into its verb and row count.
func parseTag(tag []byte) (string, int64) {
	t := string(tag)
	i := strings.LastIndexByte(t, ' ')
	if i < 0 {
		return t, -1
	}
	n, err := strconv.ParseInt(t[i+1:], 10, 64)
	if err != nil {
		return t, -1
	}
	verb := t[:i]
	if strings.HasPrefix(verb, "INSERT ") {
		verb = "INSERT"
	}
	return verb, n
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
		s.queue.len() == 0 && (s.server == nil || s.txStatus == 'I')
	if idle {
		s.closed = true
		s.endProbeLocked("")
		s.client.SetWriteTimeout(time.Second)
		_ = s.client.SendError(e)
	}
	s.mu.Unlock()
	if idle {
		_ = s.client.Close()
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
		s.log.Warn().Err(err).Msg("cancel request failed")
	}
}

// setConfigCall is the SQL expression that sets name to v for the session.
func setConfigCall(name, v string) string {
	return "pg_catalog.set_config(" + quoteLiteral(name) + ", " + quoteLiteral(v) + ", false)"
}

func quoteIdent(s string) string { return `"` + strings.ReplaceAll(s, `"`, `""`) + `"` }

func quoteLiteral(s string) string {
	q := "'" + strings.ReplaceAll(s, "'", "''") + "'"
	if strings.Contains(s, `\`) {
		q = " E" + strings.ReplaceAll(q, `\`, `\\`)
	}
	return q
}
