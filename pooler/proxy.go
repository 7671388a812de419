package pooler

import (
	"cmp"
	"container/list"
	"context"
	"crypto/rand"
	"crypto/tls"
	"errors"
	"fmt"
	"hash/maphash"
	"maps"
	"net"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/rs/zerolog"

	"github.com/pgaudit-proxy/pgaudit/internal/event"
	"github.com/pgaudit-proxy/pgaudit/wire"
)

// Proxy accepts client connections, authenticates them and relays them to
// pooled server connections. Create it with New, run Serve, stop with
// Shutdown or Close.
type Proxy struct {
	cfgPtr atomic.Pointer[Config]
	sink   event.Sink
	log    zerolog.Logger

	mu       sync.Mutex
	pools    map[poolKey]*Pool
	dbLimits map[string]*dbCounter
	// pausedAll and pausedDBs record PAUSE, so that pools created while
	// paused start paused (see Pause).
	pausedAll bool
	pausedDBs map[string]bool
	sessions  map[uint64]*Session
	byCancel  map[cancelKey]*Session
	// conns holds every client connection, logged in or not, so Close
	// can end those still in startup.
	conns    map[net.Conn]struct{}
	listener net.Listener
	// peerListener accepts cancels forwarded by peers (peer_listen).
	peerListener net.Listener
	closing      bool
	// silent and started hold the login slots (see limits.go) of
	// connections that have not sent a StartupMessage yet and of those
	// that have, oldest first.
	silent, started *list.List

	nextSession atomic.Uint64
	nextPID     atomic.Uint32
	// ddlEpoch counts schema changes seen (DDL sent through the proxy,
	// stale-plan errors from servers); it is part of the shared names of
	// protocol-level statements, so a Parse after a schema change never
	// binds to a server statement prepared before it.
	ddlEpoch atomic.Uint64
	// stmtGens (base name hash -> generation) moves the shared name of
	// one statement text when a client abandons its statement after a
	// stale-type error (see Session.serverStmtName); stmtGenCount bounds
	// it. Generations move under stmtGenMu.
	stmtGens     sync.Map
	stmtGenMu    sync.Mutex
	stmtGenCount atomic.Int64
	// resultSeed keys the result hashes of every session (see
	// Config.ResultSampleEvery), so they compare across sessions.
	resultSeed maphash.Seed

	// admins counts admin-console connections (in ClientCount, not
	// sessions).
	admins atomic.Int64
	// draining is set by Shutdown: a session that reads a message while
	// between transactions ends instead of starting another.
	draining    atomic.Bool
	clients     atomic.Int64       // every connection, logging in or logged in
	authed      atomic.Int64       // authenticated connections, for max_client_conn
	budget      *wire.MemoryBudget // client_buffer_budget
	loginBudget *wire.MemoryBudget // connections logging in
	wg          sync.WaitGroup
	stopMaint   chan struct{}
	// handoff passes an accepted connection to an idle connection
	// goroutine (connWorker); idleWorkers counts those waiting.
	handoff     chan net.Conn
	idleWorkers atomic.Int32
	// relay is the event relay's loops and sweeper, set by Serve before
	// it accepts (nil before); coarseNow is the sweeper's clock (unix ns),
	// stamped on sessions per client message (Session.active).
	relay     *eventRelay
	coarseNow atomic.Int64
	// serveCtx is Serve's context, which sessions run under (set by
	// Serve before it accepts).
	serveCtx context.Context
	// interned holds the strings sessions share (see intern), at most
	// maxInterned.
	internMu sync.Mutex
	interned map[string]string

	counters struct {
		sessionState atomic.Int64
		authFailures atomic.Int64
		rejected     atomic.Int64
		loginEvicted atomic.Int64
		budgetFatal  atomic.Int64   // clients ended with 53200 by a buffer budget
		cancels      cancelCounters // see peers.go
	}
}

type poolKey struct{ db, user string }

// maxServerMessage caps one message from a server: Postgres's own limit
// for a field is 1 GiB.
const maxServerMessage = 1 << 30

type cancelKey struct {
	pid uint32
	key string
}

// New returns a Proxy for cfg that sends statement events to sink (nil
// disables auditing).
func New(cfg *Config, sink event.Sink, log zerolog.Logger) *Proxy {
	if sink == nil {
		sink = event.DiscardSink{}
	}
	if cfg.MaxMessageSize <= 0 {
		cfg.MaxMessageSize = wire.DefaultMaxMessageSize
	}
	if cfg.ClientLoginTimeout <= 0 {
		cfg.ClientLoginTimeout = DefaultClientLoginTimeout
	}
	if cfg.MaxLoginClients <= 0 {
		cfg.MaxLoginClients = DefaultMaxLoginClients
	}
	if cfg.ClientBufferBudget <= 0 {
		cfg.ClientBufferBudget = wire.DefaultClientBufferBudget
	}
	if cfg.AuthType == "" {
		cfg.AuthType = "trust"
	}
	p := &Proxy{
		sink: sink, log: log,
		pools: map[poolKey]*Pool{}, dbLimits: map[string]*dbCounter{}, pausedDBs: map[string]bool{},
		sessions: map[uint64]*Session{}, byCancel: map[cancelKey]*Session{}, conns: map[net.Conn]struct{}{},
		stopMaint: make(chan struct{}), handoff: make(chan net.Conn),
		silent: list.New(), started: list.New(),
		budget: wire.NewMemoryBudget(cfg.ClientBufferBudget), loginBudget: wire.NewMemoryBudget(loginBufferBudget),
	}
	p.resultSeed = maphash.MakeSeed()
	p.cfgPtr.Store(cfg)
	// Proxy-issued PIDs for transaction mode start high to stay clear of
	// real backend PIDs.
	p.nextPID.Store(1 << 30)
	return p
}

// Listen opens the listening socket. Addr returns it afterwards.
// With SoReuseport the socket gets SO_REUSEPORT, so other processes with
// the option may listen on the same address.
//
// Client sockets get TCP_NODELAY and keep-alive probes (15 s idle, 15 s
// apart, 9 of them). On Linux these are set once on the listening socket
// and inherited by every accepted one (see inheritSockopts); elsewhere, or
// when that fails, Go sets them on each accepted connection.
func (p *Proxy) Listen() error {
	l, err := p.listenConfig(inheritSockoptsSupported).Listen(context.Background(), "tcp", p.config().Listen)
	if errors.Is(err, errNoInheritedSockopts) {
		l, err = p.listenConfig(false).Listen(context.Background(), "tcp", p.config().Listen)
	}
	if err != nil {
		return fmt.Errorf("listen on %s: %w", p.config().Listen, err)
	}
	var pl net.Listener
	if addr := p.config().PeerListen; addr != "" {
		if pl, err = listenPeer(addr); err != nil {
			_ = l.Close()
			return err
		}
	}
	p.mu.Lock()
	p.listener, p.peerListener = l, pl
	p.mu.Unlock()
	return nil
}

// errNoInheritedSockopts: the listening socket did not take the options
// accepted sockets should inherit; Listen then listens again without.
var errNoInheritedSockopts = errors.New("listening socket refused the client socket options")

// listenConfig is the client listener's configuration: SO_REUSEPORT when
// configured and, with inherit, the client socket options set on the
// listening socket instead of on each accepted one.
func (p *Proxy) listenConfig(inherit bool) *net.ListenConfig {
	reuse := p.config().SoReuseport
	lc := &net.ListenConfig{}
	if inherit {
		lc.KeepAlive = -1 // accepted sockets inherit the listener's settings
	}
	lc.Control = func(network, address string, rc syscall.RawConn) error {
		if reuse {
			if err := reusePortControl(network, address, rc); err != nil {
				return err
			}
		}
		if inherit && !inheritSockopts(rc) {
			return errNoInheritedSockopts
		}
		return nil
	}
	return lc
}

// Addr returns the listening address (after Listen).
func (p *Proxy) Addr() net.Addr {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.listener == nil {
		return nil
	}
	return p.listener.Addr()
}

// Serve accepts clients until Close or Shutdown. It returns nil after a
// requested stop.
func (p *Proxy) Serve(ctx context.Context) error {
	p.mu.Lock()
	l := p.listener
	p.mu.Unlock()
	if l == nil {
		if err := p.Listen(); err != nil {
			return err
		}
		l = p.listener
	}
	// wg.Add under mu, after checking closing: Close sets closing under
	// mu before it waits, so an Add never races its Wait.
	p.mu.Lock()
	if p.closing {
		p.mu.Unlock()
		return nil
	}
	if p.relay == nil {
		// The relay's epoll loops and park sweeper, before the first
		// client: every plain-socket session parks when idle.
		r, err := newEventRelay(p, runtime.GOMAXPROCS(0), p.config().RelayParkAfter)
		if err != nil {
			p.mu.Unlock()
			return fmt.Errorf("start the event relay: %w", err)
		}
		p.coarseNow.Store(time.Now().UnixNano())
		p.relay = r
		r.start()
	}
	p.wg.Add(1)
	p.serveCtx = ctx
	pl := p.peerListener
	if pl != nil {
		p.wg.Add(1)
	}
	p.mu.Unlock()
	go p.maintainLoop(ctx)
	if pl != nil {
		go p.servePeers(pl)
	}
	p.log.Info().Str("listen", l.Addr().String()).Msg("proxy listening")
	var delay time.Duration
	for {
		nc, err := l.Accept()
		if err != nil {
			p.mu.Lock()
			closing := p.closing
			p.mu.Unlock()
			if closing || errors.Is(err, net.ErrClosed) {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				delay = min(max(2*delay, 5*time.Millisecond), time.Second)
				time.Sleep(delay)
				continue
			}
			return fmt.Errorf("accept: %w", err)
		}
		delay = 0
		p.wg.Add(1) // for the connection; its end (or handleConn) says Done
		select {
		case p.handoff <- nc: // an idle connection goroutine takes it
		default:
			p.wg.Add(1) // for the goroutine
			go p.connWorker(ctx, nc)
		}
	}
}

// maxIdleConnWorkers bounds the connection goroutines that wait for the
// next accepted connection after theirs ended (see connWorker).
const maxIdleConnWorkers = 16

// connWorker runs handleConn for nc and then, while fewer than
// maxIdleConnWorkers others wait, waits for the next connection Serve
// accepts instead of exiting. A new goroutine starts with a small stack
// that a session's relay grows three times (copied each time); one that
// is reused has grown already (the collector shrinks idle stacks by half
// at a time), and no goroutine is created per connection. With a new
// connection per transaction (pgbench -C) stack growth alone was 3% of
// the proxy's CPU. Idle goroutines exit when the proxy stops.
func (p *Proxy) connWorker(ctx context.Context, nc net.Conn) {
	defer p.wg.Done()
	for {
		p.handleConn(ctx, nc)
		if p.idleWorkers.Add(1) > maxIdleConnWorkers {
			p.idleWorkers.Add(-1)
			return
		}
		select {
		case nc = <-p.handoff:
			p.idleWorkers.Add(-1)
		case <-p.stopMaint:
			p.idleWorkers.Add(-1)
			return
		case <-ctx.Done():
			p.idleWorkers.Add(-1)
			return
		}
	}
}

func (p *Proxy) maintainLoop(ctx context.Context) {
	defer p.wg.Done()
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-t.C:
			for _, pool := range p.Pools() {
				pool.maintain(ctx)
			}
			p.checkInlineClients()
		case <-p.stopMaint:
			return
		case <-ctx.Done():
			return
		}
	}
}

// sessionList returns the registered sessions at this moment.
func (p *Proxy) sessionList() []*Session {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.sessionListLocked()
}

// sessionListLocked is sessionList with p.mu held.
func (p *Proxy) sessionListLocked() []*Session {
	sessions := make([]*Session, 0, len(p.sessions))
	for _, s := range p.sessions {
		sessions = append(sessions, s)
	}
	return sessions
}

// checkInlineClients frees the server of a client that disconnected while
// its statement runs: the client goroutine reads the server inline and
// would otherwise hold the server (and its pool slot) until the statement
// ends. The statement is canceled and the server closed, as PgBouncer
// does for a client that leaves mid-query.
func (p *Proxy) checkInlineClients() {
	sessions := p.sessionList()
	for _, s := range sessions {
		if s.clientGoneWhileInline(time.Second) {
			s.logger().Info().Msg("client disconnected while its statement runs; canceling it and closing its server connection")
			s.cancel()
			s.interruptInline()
		}
	}
}

// Pools returns the current pools.
func (p *Proxy) Pools() []*Pool {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]*Pool, 0, len(p.pools))
	for _, pl := range p.pools {
		out = append(out, pl)
	}
	return out
}

// PoolStats returns statistics of every pool.
func (p *Proxy) PoolStats() []PoolStats {
	p.mu.Lock()
	active := map[*Pool]int{}
	for _, s := range p.sessions {
		active[s.pool]++
	}
	pools := make([]*Pool, 0, len(p.pools))
	for _, pl := range p.pools {
		pools = append(pools, pl)
	}
	p.mu.Unlock()
	out := make([]PoolStats, 0, len(pools))
	for _, pl := range pools {
		out = append(out, pl.Stats(active[pl]))
	}
	return out
}

// ClientCount returns the number of client connections, logged in or
// still logging in (see LoginCount).
func (p *Proxy) ClientCount() int { return int(p.clients.Load()) }

// AdminClientCount returns the number of clients using the admin console
// (part of ClientCount).
func (p *Proxy) AdminClientCount() int { return int(p.admins.Load()) }

// SessionStateDetections counts statements seen in transaction mode that
// need a session.
func (p *Proxy) SessionStateDetections() int64 { return p.counters.sessionState.Load() }

// Close stops accepting, closes every client and server connection, and
// waits for all goroutines.
func (p *Proxy) Close() error {
	p.mu.Lock()
	if p.closing {
		p.mu.Unlock()
		p.wg.Wait()
		return nil
	}
	p.closing = true
	l, pl, relay := p.listener, p.peerListener, p.relay
	sessions := p.sessionListLocked()
	conns := make([]net.Conn, 0, len(p.conns))
	for c := range p.conns {
		conns = append(conns, c)
	}
	p.mu.Unlock()
	close(p.stopMaint)
	if l != nil {
		_ = l.Close()
	}
	if pl != nil {
		_ = pl.Close()
	}
	if relay != nil {
		relay.stop() // resumes parked sessions; no more parking
	}
	for _, s := range sessions {
		s.unparkForClose()
		s.closeClient()
		s.interruptInline()
	}
	for _, c := range conns {
		_ = c.Close() // clients still in startup (the TLS conn wraps it)
	}
	p.wg.Wait()
	for _, pl := range p.Pools() {
		pl.Close()
	}
	if aq := p.config().AuthQuery; aq != nil {
		aq.Close()
	}
	return nil
}

// handleConn runs one client connection from startup to the end. A
// logged-in session's end may come on another goroutine on the event relay
// (serveSession): its cleanup is then endSession's.
func (p *Proxy) handleConn(ctx context.Context, nc net.Conn) {
	p.mu.Lock()
	if p.closing {
		p.mu.Unlock()
		_ = nc.Close()
		p.wg.Done()
		return
	}
	p.conns[nc] = struct{}{}
	p.mu.Unlock()
	var (
		ls        *loginSlot
		c         *wire.Conn
		s         *Session
		handedOff bool
	)
	// The end of a connection that did not become a session (a logged-in
	// session ends in endSession, on whichever goroutine it ends).
	defer func() {
		if handedOff {
			return
		}
		if s != nil {
			p.unregister(s)
		}
		if c != nil { // c may have become the TLS conn
			// Its buffers go to the next login (wire.Conn.Recycle).
			// Control paths that write to a session's client (KILL's
			// FATAL) hold s.mu: recycle under it, so none is inside a
			// write; after it their writes fail. Not when s.mu cannot be
			// had (a panic left it held): then only Release.
			switch {
			case s == nil:
				c.Recycle()
			case s.mu.TryLock():
				c.Recycle()
				s.mu.Unlock()
			default:
				c.R.Release()
			}
		}
		if ls != nil {
			p.endConn(ls)
			p.clients.Add(-1)
		}
		p.mu.Lock()
		delete(p.conns, nc)
		p.mu.Unlock()
		_ = nc.Close()
		p.wg.Done()
	}()
	defer func() {
		if r := recover(); r != nil {
			p.log.Error().Interface("panic", r).Str("client", nc.RemoteAddr().String()).Msg("client handler panic")
		}
	}()
	// TCP_NODELAY and keep-alive: see Listen (no setsockopt here).
	p.clients.Add(1)
	// The deadline is set before the login slot is taken: an eviction
	// (enterLogin) sets it to now, which must not be overwritten.
	_ = nc.SetDeadline(time.Now().Add(p.config().ClientLoginTimeout))
	ls = p.enterLogin(nc)
	c = p.newClientConn(nc)
	st, c2, err := p.negotiate(c)
	c = c2
	if err != nil {
		p.loginFailed(c, ls, err)
		return
	}
	if st.Kind == wire.CancelRequestKind {
		p.leaveLogin(ls)
		p.handleCancel(st)
		return
	}
	p.loginStarted(ls)
	s, err = p.login(ctx, c, st, ls)
	if err != nil {
		p.loginFailed(c, ls, err)
		return
	}
	if s == nil {
		return // an admin-console session that has ended
	}
	_ = nc.SetDeadline(time.Time{})
	c.R.SetMaxBody(p.config().MaxMessageSize)
	if s.parkable.Load() {
		// The session owns the plain socket from here on: a park closes
		// the net.Conn and keeps its descriptor (Session.park), so
		// nothing else may hold on to nc (Close finds the session in
		// Proxy.sessions).
		p.mu.Lock()
		delete(p.conns, nc)
		ls.nc = nil
		p.mu.Unlock()
	}
	handedOff = true
	p.serveSession(s)
}

// endSession is the end of a logged-in session's connection, run by
// serveSession on whichever goroutine the session ends: what handleConn's
// deferred cleanup does for a connection that did not log in. The Proxy's
// wg count taken for the connection ends here.
func (p *Proxy) endSession(s *Session) {
	p.unregister(s)
	// The client's buffers go to the next login (wire.Conn.Recycle),
	// under s.mu as in handleConn's cleanup: writers of the client (KILL's
	// FATAL) hold it, and after it their writes fail.
	if s.mu.TryLock() {
		s.client.Recycle()
		ranStatements := s.txSeq > 0
		s.mu.Unlock()
		if ranStatements {
			// After the session's last statement event: the analysis
			// forgets the session now rather than at its idle timeout.
			p.sink.Offer(&event.Event{Kind: event.KindSessionEnd, SessionID: s.id, Start: time.Now()})
		}
	} else {
		s.client.R.Release()
	}
	p.authed.Add(-1) // a session's login slot was authenticated (endConn)
	p.clients.Add(-1)
	if s.parkable.Load() {
		// A parkable session's socket, which a park may have replaced
		// (wire.Conn.Detach, Attach).
		_ = s.client.Close()
	} else {
		// The socket handleConn accepted: under TLS, the one the
		// tls.Conn wraps (closed without a close_notify, as before).
		nc := s.client.Conn
		if tc, ok := nc.(*tls.Conn); ok {
			nc = tc.NetConn()
		}
		p.mu.Lock()
		delete(p.conns, nc)
		p.mu.Unlock()
		_ = nc.Close()
	}
	p.wg.Done()
}

// serveSession runs s until it ends, then logs how and runs endSession; or
// until it parks (event relay), when the goroutine just returns and wake
// calls serveSession again on a new one. The Proxy's wg count taken for the
// connection stays with the session throughout.
func (p *Proxy) serveSession(s *Session) {
	defer func() {
		if r := recover(); r != nil {
			s.logger().Error().Interface("panic", r).Msg("client session panic")
			_ = s.client.Close()
			p.endSession(s)
		}
	}()
	ctx := p.serveCtx
	if ctx == nil {
		ctx = context.Background() // handleConn called without Serve (tests)
	}
	err := s.run(ctx)
	if errors.Is(err, errParked) {
		return
	}
	if err != nil && !isRoutineDisconnect(err) {
		var we *wire.Error
		if errors.As(err, &we) {
			s.logger().Info().Str("code", we.Code).Str("error", we.Message).Msg("session ended")
		} else {
			s.logger().Warn().Err(err).Msg("session ended with error")
		}
	} else {
		s.logger().Debug().Msg("client disconnected")
	}
	p.endSession(s)
}

func (p *Proxy) logStartupError(nc net.Conn, err error) {
	ev := p.log.Info()
	if !isRoutineDisconnect(err) {
		ev = p.log.Warn()
	}
	ev.Err(err).Str("client", nc.RemoteAddr().String()).Msg("client startup failed")
}

// negotiate handles SSLRequest/GSSENCRequest and returns the StartupMessage
// or CancelRequest, with c replaced by a TLS connection where agreed.
func (p *Proxy) negotiate(c *wire.Conn) (*wire.Startup, *wire.Conn, error) {
	tlsDone := false
	for {
		body, err := c.R.ReadStartup()
		if err != nil {
			var tl *wire.MessageTooLargeError
			if errors.As(err, &tl) {
				_ = c.SendError(wire.Fatal(wire.CodeProtocolViolation, tl.Error()))
			}
			return nil, c, err
		}
		st, err := wire.ParseStartup(body)
		if err != nil {
			e := wire.Fatal(wire.CodeProtocolViolation, err.Error())
			if errors.Is(err, wire.ErrProtocolVersion) {
				e.Code = wire.CodeFeatureNotSupported
			}
			_ = c.SendError(e)
			return nil, c, err
		}
		switch st.Kind {
		case wire.SSLRequestKind:
			if tlsDone || c.R.Buffered() > 0 {
				// Bytes after SSLRequest before the answer would let an
				// attacker inject plaintext (CVE-2021-23222).
				_ = c.SendError(wire.Fatal(wire.CodeProtocolViolation, "unexpected data after SSLRequest"))
				return nil, c, errors.New("unexpected data after SSLRequest")
			}
			if p.config().TLS == nil || p.config().ClientTLS == "disable" {
				if err := answerEncryption(c, wire.EncryptionRefuse); err != nil {
					return nil, c, err
				}
				continue
			}
			if err := answerEncryption(c, wire.EncryptionAccept); err != nil {
				return nil, c, err
			}
			tc := tls.Server(c.Conn, p.config().TLS)
			if err := tc.Handshake(); err != nil {
				return nil, c, fmt.Errorf("TLS handshake: %w", err)
			}
			c = p.newClientConn(tc)
			tlsDone = true
		case wire.GSSENCRequestKind:
			if err := answerEncryption(c, wire.EncryptionRefuse); err != nil {
				return nil, c, err
			}
		case wire.CancelRequestKind:
			return st, c, nil
		case wire.StartupMessageKind:
			if p.config().ClientTLS == "require" && !tlsDone {
				_ = c.SendError(wire.Fatal(wire.CodeInvalidAuthorization, "SSL required"))
				return nil, c, errors.New("client refused TLS but it is required")
			}
			if st.ProtocolVersion != wire.ProtocolVersion30 || len(st.UnsupportedOptions) > 0 {
				if err := c.WriteRaw(wire.AppendNegotiateProtocolVersion(nil, wire.ProtocolVersion30, st.UnsupportedOptions)); err != nil {
					return nil, c, err
				}
			}
			return st, c, nil
		}
	}
}

// answerEncryption sends the one-byte answer to SSLRequest or
// GSSENCRequest. It goes through c's writer, which on a plain socket
// writes with a raw write(2) (see wire.rawIO) rather than through the net
// package's entersyscall path; nothing else is buffered at this point.
func answerEncryption(c *wire.Conn, b byte) error {
	if err := c.WriteRaw([]byte{b}); err != nil {
		return err
	}
	return c.Flush()
}

// login authenticates the client, finds its pool, attaches a server to
// learn the session parameters and sends the welcome messages.
func (p *Proxy) login(ctx context.Context, c *wire.Conn, st *wire.Startup, ls *loginSlot) (*Session, error) {
	user := st.Get("user")
	dbName := st.Get("database")
	if dbName == "" {
		dbName = user
	}
	if st.Get("replication") != "" && st.Get("replication") != "false" && st.Get("replication") != "0" {
		e := wire.Fatal(wire.CodeFeatureNotSupported, "replication connections are not supported by pgaudit")
		_ = c.SendError(e)
		return nil, e
	}
	if err := p.refuseWhenFull(c); err != nil {
		return nil, err
	}
	secret, found, err := p.lookupUser(ctx, dbName, user)
	if err != nil {
		// The lookup failed, whoever the user is: nothing about the
		// user is revealed.
		p.log.Error().Err(err).Str("user", user).Str("database", dbName).Msg("auth_query failed")
		e := wire.Fatal(wire.CodeConnectionFailure, "authentication lookup failed")
		_ = c.SendError(e)
		return nil, e
	}
	cfg := p.config()
	if cfg.AuthType == wire.AuthTrust && !found && (cfg.Users != nil || cfg.AuthQuery != nil) {
		// trust admits the listed users only, and says what Postgres
		// says for a missing role.
		p.counters.authFailures.Add(1)
		e := wire.Fatal(wire.CodeInvalidAuthorization, `role "`+user+`" does not exist`)
		_ = c.SendError(e)
		p.log.Warn().Str("user", user).Str("database", dbName).Str("client", c.RemoteAddr().String()).Str("code", e.Code).Msg("trust: unknown user rejected")
		return nil, e
	}
	login, err := wire.AuthenticateLogin(c, cfg.AuthType, user, secret, found)
	if err != nil {
		p.counters.authFailures.Add(1)
		var we *wire.Error
		if errors.As(err, &we) {
			_ = c.SendError(we)
			p.log.Warn().Str("user", user).Str("database", dbName).Str("client", c.RemoteAddr().String()).Str("code", we.Code).Msg("authentication failed")
		}
		return nil, err
	}
	if err := p.authenticated(c, ls); err != nil {
		return nil, err
	}
	if p.isAdminDatabase(dbName) {
		return nil, p.serveAdmin(ctx, c, user, dbName)
	}
	db := p.lookupDatabase(dbName)
	if db == nil {
		e := wire.Fatal(wire.CodeInvalidCatalogName, fmt.Sprintf("database %q does not exist", dbName))
		_ = c.SendError(e)
		return nil, e
	}
	pool, err := p.pool(db, user, login)
	if err != nil {
		e := wire.Fatal(wire.CodeInvalidAuthorization, err.Error())
		_ = c.SendError(e)
		return nil, e
	}
	s := &Session{
		proxy: p, id: p.nextSession.Add(1), client: c, pool: pool, mode: pool.set().Mode,
		sessionIdentity: sessionIdentity{database: pool.shareName(dbName), user: pool.shareName(user),
			appName: p.intern(st.Get("application_name")), clientAddr: p.intern(hostOf(c.RemoteAddr())), connected: time.Now().UnixNano()},
		serverLink: serverLink{txStatus: wire.TxIdle}, busyState: &busyState{},
	}
	// gucs starts as the startup settings; both maps are only ever
	// replaced, never written, so they share one while equal.
	s.startupGUCs = startupGUCs(st)
	s.gucs = s.startupGUCs
	c.SetWriteTimeout(pool.set().ClientWriteTimeout)
	s.gucsKey = gucsKey(s.gucs)
	key := make([]byte, 4)
	_, _ = rand.Read(key)
	var params map[string]string
	var greet *greeting
	if s.mode == TransactionMode {
		// Greet from the pool's cached parameters when it has them, so a
		// login never waits for a busy pool; the client's settings are
		// applied (and checked) with its first statement.
		// Only a client whose startup settings need no checking (none
		// but application_name, which Postgres reports as given) is
		// greeted this way; others are checked on a server, as Postgres
		// checks them at connection time, and get its spelling back.
		onlyAppName := len(s.gucs) == 0 || len(s.gucs) == 1 && s.gucs["application_name"] != ""
		if onlyAppName {
			if greet = pool.greetingFor(s.gucs["application_name"]); greet != nil {
				params = greet.params
			}
		}
	}
	pid := uint32(0)
	if params == nil {
		// Attach a server to validate the settings and learn the
		// parameters.
		srv, err := s.attach(ctx)
		if err != nil {
			e := *wire.FromUpstream(err, "FATAL") // a copy: pool errors are shared
			e.Severity = "FATAL"
			_ = c.SendError(&e)
			return nil, err
		}
		pid = srv.PID
		s.mu.Lock()
		params = make(map[string]string, len(srv.Params))
		for k, v := range srv.Params {
			params[k] = v
		}
		s.mu.Unlock()
	}
	if s.mode == TransactionMode {
		pid = p.nextPID.Add(1)
	}
	if peer := p.config().PeerID; peer != 0 {
		pid, key = newPeerCancelKey(peer)
		s.cancelPeered = true
	}
	s.cancelPID = pid
	if s.cancelPeered {
		s.cancelKey = withoutTTL(key)
	} else {
		s.cancelKey = string(key)
	}
	s.mu.Lock()
	// Most clients of a pool are told the same values: they share one
	// map until one of them changes (see ownReportedLocked).
	var out []byte
	if greet != nil {
		s.reported, s.reportedShared = greet.params, true // shared already
		s.sendLocked(greet.msgs)
	} else {
		s.reported, s.reportedShared = pool.shareParams(params), true
		out = appendGreeting(nil, params)
	}
	out = wire.AppendBackendKeyData(out, pid, key)
	out = wire.AppendReadyForQuery(out, wire.TxIdle)
	s.sendLocked(out)
	err = c.Flush()
	s.mu.Unlock()
	if s.mode == TransactionMode {
		s.detachIdle()
	}
	if err != nil {
		s.finish()
		return nil, err
	}
	s.active.Store(time.Now().UnixNano())
	if p.relay != nil {
		// Only plain sockets park: a TLS conn has state (and buffers)
		// of its own in crypto/tls.
		_, plain := sockFd(c.Conn)
		s.parkable.Store(plain)
	}
	p.register(s)
	s.logger().Debug().Str("client", s.clientAddr).Str("application_name", s.appName).Msg("client logged in")
	return s, nil
}

// detachIdle returns an idle attached server to the pool (transaction mode
// after login).
func (s *Session) detachIdle() {
	s.mu.Lock()
	srv := s.server
	if srv == nil || s.inFlight != 0 || s.txStatus != wire.TxIdle {
		s.mu.Unlock()
		return
	}
	readerRan := s.readerActive
	done := s.readerDone
	if readerRan {
		s.stopReader.Store(true)
		_ = srv.SetReadDeadline(time.Now())
	}
	s.mu.Unlock()
	if readerRan {
		<-done
	}
	s.mu.Lock()
	s.setServerLocked(nil)
	rerr := s.readerErr
	s.stopReader.Store(false)
	s.mu.Unlock()
	inSync := srv.R.InSync()
	if readerRan {
		var ne net.Error
		inSync = inSync && errors.As(rerr, &ne) && ne.Timeout()
	}
	_ = srv.SetReadDeadline(time.Time{})
	if inSync {
		s.pool.Release(srv, true)
	} else {
		s.pool.destroy(srv)
	}
}

func sortedKeys(m map[string]string) []string {
	return slices.Sorted(maps.Keys(m))
}

// appendGreeting appends AuthenticationOk and a ParameterStatus per
// parameter, in name order: what a login sends before BackendKeyData.
func appendGreeting(dst []byte, params map[string]string) []byte {
	dst = wire.AppendAuthOK(dst)
	for _, name := range sortedKeys(params) {
		dst = wire.AppendParameterStatus(dst, name, params[name])
	}
	return dst
}

// greeting is what a transaction-mode login greeted from a pool's cached
// parameters sends before its BackendKeyData, for one application_name:
// built once per pool and name, read-only afterwards.
type greeting struct {
	appName string
	// params are the reported parameters: the pool's base parameters
	// with application_name, the map shareParams returned (sessions share
	// it until one changes it, see ownReportedLocked).
	params map[string]string
	// msgs is AuthenticationOk and params as ParameterStatus messages.
	msgs []byte
}

// maxGreetings bounds the greetings a pool caches (one per distinct
// application_name); logins with other names build theirs each time.
const maxGreetings = 8

// greetingFor returns the greeting of a client whose only startup setting
// is application_name appName ("" when it sent none), or nil before the
// pool's first server connection reported its parameters. Safe for
// concurrent use.
func (pl *Pool) greetingFor(appName string) *greeting {
	pl.paramsMu.Lock()
	for _, g := range pl.greetings {
		if g.appName == appName {
			pl.paramsMu.Unlock()
			return g
		}
	}
	pl.paramsMu.Unlock()
	params := pl.BaseParams() // a copy
	if params == nil {
		return nil
	}
	if appName != "" {
		params["application_name"] = appName
	}
	g := &greeting{appName: appName, params: pl.shareParams(params)}
	g.msgs = appendGreeting(nil, g.params)
	pl.paramsMu.Lock()
	defer pl.paramsMu.Unlock()
	for _, o := range pl.greetings {
		if o.appName == appName {
			return o // another login built it meanwhile
		}
	}
	if len(pl.greetings) < maxGreetings {
		pl.greetings = append(pl.greetings, g)
	}
	return g
}

func hostOf(a net.Addr) string {
	if a == nil {
		return ""
	}
	if h, _, err := net.SplitHostPort(a.String()); err == nil {
		return h
	}
	return a.String()
}

// startupGUCs returns the settings a client asked for in its StartupMessage:
// every parameter but user, database and options, plus the -c settings
// inside options.
func startupGUCs(st *wire.Startup) map[string]string {
	var m map[string]string
	for _, prm := range st.Params {
		switch prm.Name {
		case "user", "database", "replication":
		case "options":
			for name, v := range parseOptions(prm.Value) {
				if m == nil {
					m = map[string]string{}
				}
				m[name] = v
			}
		default:
			if m == nil {
				m = map[string]string{}
			}
			m[strings.ToLower(prm.Name)] = prm.Value
		}
	}
	return m
}

// parseOptions reads "-c name=value" and "--name=value" switches from the
// options startup parameter (backslash escapes spaces, as in libpq).
func parseOptions(s string) map[string]string {
	var words []string
	var cur strings.Builder
	esc := false
	for _, r := range s {
		switch {
		case esc:
			cur.WriteRune(r)
			esc = false
		case r == '\\':
			esc = true
		case r == ' ' || r == '\t' || r == '\n':
			if cur.Len() > 0 {
				words = append(words, cur.String())
				cur.Reset()
			}
		default:
			cur.WriteRune(r)
		}
	}
	if cur.Len() > 0 {
		words = append(words, cur.String())
	}
	m := map[string]string{}
	for i := 0; i < len(words); i++ {
		w := words[i]
		var kv string
		switch {
		case w == "-c" && i+1 < len(words):
			kv = words[i+1]
			i++
		case strings.HasPrefix(w, "-c"):
			kv = w[2:]
		case strings.HasPrefix(w, "--"):
			kv = w[2:]
		default:
			continue
		}
		if k, v, ok := strings.Cut(kv, "="); ok {
			m[strings.ToLower(strings.ReplaceAll(k, "-", "_"))] = v
		}
	}
	return m
}

func (p *Proxy) lookupDatabase(name string) *Database {
	if db, ok := p.config().Databases[name]; ok {
		return db
	}
	if db, ok := p.config().Databases["*"]; ok {
		cp := *db
		cp.Name = name
		cp.Upstream = db.Upstream.Copy()
		cp.Upstream.Database = name
		return &cp
	}
	return nil
}

// pool returns the pool for (db, user), creating it on first use. Unless
// the database forces a server user, the pool logs in as user with login
// (what the client's authentication left: a password, an md5 hash or
// SCRAM keys); a newer login replaces the pool's, as PgBouncer refreshes
// a user's SCRAM keys on each client login.
func (p *Proxy) pool(db *Database, user string, login *wire.ServerLogin) (*Pool, error) {
	key := poolKey{db.Name, user}
	p.mu.Lock()
	defer p.mu.Unlock()
	if pl, ok := p.pools[key]; ok {
		if !db.ForceUser {
			pl.setLogin(login)
		}
		return pl, nil
	}
	cfg := db.Upstream.Copy()
	if !db.ForceUser {
		cfg.User = user
		login.Apply(cfg)
	}
	limit := p.dbLimits[db.Name]
	if limit == nil {
		limit = &dbCounter{max: db.Pool.MaxDBConnections}
		p.dbLimits[db.Name] = limit
	}
	// max_message_size limits what clients send; server messages (a row,
	// a notice) may be as large as Postgres allows.
	pl := newPool(db, user, cfg, limit, maxServerMessage, p.log)
	if !db.ForceUser && !login.Empty() {
		pl.login = login // not shared yet
	}
	if p.pausedAll || p.pausedDBs[pl.Database] {
		pl.paused = true // not shared yet
	}
	p.pools[key] = pl
	return pl, nil
}

// byCancelKey is the byCancel entry of s: a peered session's key without
// its TTL bits, which forwarding changes.
func (s *Session) byCancelKey() cancelKey {
	return cancelKey{s.cancelPID, s.cancelKey}
}

func (p *Proxy) register(s *Session) {
	p.mu.Lock()
	p.sessions[s.id] = s
	p.byCancel[s.byCancelKey()] = s
	p.mu.Unlock()
}

func (p *Proxy) unregister(s *Session) {
	p.mu.Lock()
	delete(p.sessions, s.id)
	if k := s.byCancelKey(); p.byCancel[k] == s {
		delete(p.byCancel, k)
	}
	p.mu.Unlock()
}

// handleCancel forwards a CancelRequest whose (pid, key) matches a live
// session to the server serving it now. With a peer id set, a request
// whose key carries another peer's id goes to that peer (peers.go); an
// unknown peer's is dropped. Nothing is ever sent back.
func (p *Proxy) handleCancel(st *wire.Startup) {
	cfg := p.config()
	peered := cfg.PeerID != 0 && len(st.Key) == 4
	// A local session first: its key may carry an id from before a reload
	// changed peer_id.
	p.mu.Lock()
	s := p.byCancel[cancelKey{st.PID, string(st.Key)}]
	if s == nil && peered {
		s = p.byCancel[cancelKey{st.PID, withoutTTL(st.Key)}]
	}
	p.mu.Unlock()
	if s == nil && peered {
		if peer := cancelPeerOf(st.PID); peer != cfg.PeerID {
			p.forwardToPeer(cfg, peer, st)
			return
		}
	}
	if s == nil {
		p.counters.cancels.unknown.Add(1)
		p.log.Info().Uint32("pid", st.PID).Msg("cancel request with unknown key ignored")
		return
	}
	p.counters.cancels.local.Add(1)
	s.cancel()
}

// Shutdown stops accepting new clients, then ends each client session as
// soon as it is between transactions (FATAL 57P01 "pgaudit is shutting
// down"), so no transaction is cut in the middle. It returns when every
// client but the admin consoles has left, or when ctx ends and the rest
// have been sent 57P01; the caller then calls Close, which cuts whatever
// is left. The drain's rules are in drain.go.
func (p *Proxy) Shutdown(ctx context.Context) {
	p.draining.Store(true)
	p.mu.Lock()
	l, relay := p.listener, p.relay
	p.mu.Unlock()
	if relay != nil {
		// Resume every parked session (and park no more), so that the
		// poll below ends them as it ends idle ones.
		relay.stop()
	}
	if l != nil {
		_ = l.Close()
	}
	p.drain(ctx)
}

// shutdownError is what Shutdown sends a client it ends between
// transactions.
func shutdownError() *wire.Error {
	return wire.Fatal(wire.CodeAdminShutdown, "terminating connection because pgaudit is shutting down")
}

func (p *Proxy) isAdminDatabase(name string) bool {
	dbs := p.config().AdminDatabases
	if dbs == nil {
		dbs = []string{"pgaudit", "pgbouncer"}
	}
	for _, d := range dbs {
		if d == name {
			return true
		}
	}
	return false
}

// serveAdmin hands an authenticated client of an admin database to the
// admin handler, after checking it is an admin user.
func (p *Proxy) serveAdmin(ctx context.Context, c *wire.Conn, user, dbName string) error {
	if p.config().Admin == nil {
		e := wire.Fatal(wire.CodeInvalidCatalogName, fmt.Sprintf("database %q does not exist (the admin console is disabled)", dbName))
		_ = c.SendError(e)
		return e
	}
	allowed := false
	for _, u := range p.config().AdminUsers {
		if u == user {
			allowed = true
		}
	}
	if !allowed {
		e := wire.Fatal(wire.CodeInsufficientPrivilege, fmt.Sprintf("permission denied: user %q is not an admin user of %q", user, dbName))
		_ = c.SendError(e)
		p.log.Warn().Str("user", user).Str("database", dbName).Msg("admin console denied")
		return e
	}
	_ = c.SetDeadline(time.Time{})
	p.admins.Add(1)
	defer p.admins.Add(-1)
	err := p.config().Admin.ServeAdmin(ctx, c, user)
	if err != nil && isRoutineDisconnect(err) {
		return nil
	}
	return err
}

// ClientInfo describes one client session, for SHOW CLIENTS.
type ClientInfo struct {
	SessionID       uint64    `json:"session_id"`
	Database        string    `json:"database"`
	User            string    `json:"user"`
	ApplicationName string    `json:"application_name"`
	Addr            string    `json:"addr"`
	State           string    `json:"state"` // active (holds a server), waiting, idle
	ConnectTime     time.Time `json:"connect_time"`
	PID             uint32    `json:"pid"`
	ServerID        uint64    `json:"server_id,omitempty"`
	TxStatus        string    `json:"tx_status"`
	Pinned          bool      `json:"pinned"`
}

// Clients lists the connected client sessions. It never waits for a
// session's relay (see Session.infoMu).
func (p *Proxy) Clients() []ClientInfo {
	sessions := p.sessionList()
	out := make([]ClientInfo, 0, len(sessions))
	for _, s := range sessions {
		s.infoMu.Lock()
		ci := ClientInfo{SessionID: s.id, Database: s.database, User: s.user, ApplicationName: s.appName,
			Addr: s.clientAddr, ConnectTime: time.Unix(0, s.connected), PID: s.cancelPID, TxStatus: string(s.txStatus), Pinned: s.pinned, State: "idle"}
		if s.server != nil {
			ci.State, ci.ServerID = "active", s.server.id
		} else if s.acquiring {
			ci.State = "waiting"
		}
		s.infoMu.Unlock()
		out = append(out, ci)
	}
	sortClients(out)
	return out
}

func sortClients(cs []ClientInfo) {
	slices.SortFunc(cs, func(a, b ClientInfo) int { return cmp.Compare(a.SessionID, b.SessionID) })
}

// ServerInfo describes one server connection, for SHOW SERVERS.
type ServerInfo struct {
	ID          uint64    `json:"id"`
	Database    string    `json:"database"`
	User        string    `json:"user"`
	State       string    `json:"state"` // active, idle
	PID         uint32    `json:"pid"`
	ConnectTime time.Time `json:"connect_time"`
	LastUsed    time.Time `json:"last_used"`
	SessionID   uint64    `json:"session_id,omitempty"`
	Prepared    int       `json:"prepared_statements"`
}

// Servers lists the server connections: idle ones from the pools, active
// ones from the sessions holding them.
func (p *Proxy) Servers() []ServerInfo {
	var out []ServerInfo
	for _, pl := range p.Pools() {
		pl.mu.Lock()
		for _, s := range pl.idle {
			out = append(out, serverInfo(pl, s, "idle", 0))
		}
		pl.mu.Unlock()
	}
	sessions := p.sessionList()
	for _, s := range sessions {
		s.infoMu.Lock()
		if srv := s.server; srv != nil {
			out = append(out, serverInfo(s.pool, srv, "active", s.id))
		}
		s.infoMu.Unlock()
	}
	return out
}

func serverInfo(pl *Pool, s *Server, state string, session uint64) ServerInfo {
	si := ServerInfo{ID: s.id, Database: pl.Database, User: pl.User, State: state, PID: s.PID,
		ConnectTime: s.Created, LastUsed: s.lastUsed, SessionID: session}
	if s.prepared != nil {
		si.Prepared = s.prepared.len()
	}
	return si
}

// Pause stops handing out server connections for database db (all
// databases when db is empty): new transactions wait, running ones finish.
func (p *Proxy) Pause(db string) int {
	// Pools created later (a database or user seen for the first time)
	// start paused too, as PgBouncer's PAUSE holds them.
	p.mu.Lock()
	if db == "" {
		p.pausedAll = true
	} else {
		p.pausedDBs[db] = true
	}
	p.mu.Unlock()
	n := 0
	for _, pl := range p.Pools() {
		if db == "" || pl.Database == db {
			pl.Pause()
			n++
		}
	}
	return n
}

// Resume undoes Pause for db (every database when empty) and returns the
// number of pools resumed. Resuming one database while all are paused does
// nothing: the global pause stays, as in PgBouncer.
func (p *Proxy) Resume(db string) int {
	p.mu.Lock()
	if db != "" && p.pausedAll {
		p.mu.Unlock()
		return 0
	}
	if db == "" {
		p.pausedAll = false
		clear(p.pausedDBs)
	} else {
		delete(p.pausedDBs, db)
	}
	p.mu.Unlock()
	n := 0
	for _, pl := range p.Pools() {
		if db == "" || pl.Database == db {
			pl.Resume()
			n++
		}
	}
	return n
}

// Paused reports whether PAUSE is in force for database db.
func (p *Proxy) Paused(db string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.pausedAll || p.pausedDBs[db]
}

// Kill disconnects every client of database db and closes its pools'
// server connections.
func (p *Proxy) Kill(db string) int {
	p.mu.Lock()
	var victims []*Session
	for _, s := range p.sessions {
		if s.database == db {
			victims = append(victims, s)
		}
	}
	p.mu.Unlock()
	// Each victim gets its FATAL where its relay lets it within killGrace;
	// a relay blocked writing to a client that does not read holds the
	// session's lock, and closing the connection is what frees it.
	var wg sync.WaitGroup
	sent := make(chan struct{})
	for _, s := range victims {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_ = s.fatal(wire.Fatal(wire.CodeAdminShutdown, "terminating connection due to administrator command (KILL)"))
		}()
	}
	go func() { wg.Wait(); close(sent) }()
	select {
	case <-sent:
	case <-time.After(killGrace):
	}
	for _, s := range victims {
		s.closeClient()
		s.interruptInline()
	}
	<-sent
	for _, pl := range p.Pools() {
		if pl.Database == db {
			pl.DropIdle()
		}
	}
	return len(victims)
}

// killGrace is how long KILL waits to deliver its FATAL before it closes
// the connections anyway.
const killGrace = 250 * time.Millisecond

// config returns the current configuration; Reload replaces it.
func (p *Proxy) config() *Config { return p.cfgPtr.Load() }

// Reload applies a new configuration without dropping clients: users,
// auth and limits apply to new logins; pools of databases that still exist
// take the new pool settings at once, and a changed upstream gets new
// server connections as the old ones are released. The listen address and
// TLS certificate of the running listener are not changed.
func (p *Proxy) Reload(cfg *Config) {
	old := p.config()
	if cfg.MaxMessageSize <= 0 {
		cfg.MaxMessageSize = old.MaxMessageSize
	}
	if cfg.ClientLoginTimeout <= 0 {
		cfg.ClientLoginTimeout = old.ClientLoginTimeout
	}
	if cfg.MaxLoginClients <= 0 {
		cfg.MaxLoginClients = old.MaxLoginClients
	}
	if cfg.ClientBufferBudget <= 0 {
		cfg.ClientBufferBudget = old.ClientBufferBudget
	}
	p.budget.SetLimit(cfg.ClientBufferBudget)
	if cfg.AuthType == "" {
		cfg.AuthType = "trust"
	}
	if cfg.Admin == nil {
		cfg.Admin = old.Admin
	}
	p.cfgPtr.Store(cfg)
	if old.AuthQuery != nil && old.AuthQuery != cfg.AuthQuery {
		old.AuthQuery.Close() // lookups under way fail; new ones use cfg's
	}
	for _, pl := range p.Pools() {
		db := p.lookupDatabase(pl.Database)
		if db == nil {
			continue // removed: existing clients finish, new ones get 3D000
		}
		var up *pgconn.Config
		pl.mu.Lock()
		cur := pl.cfg
		pl.mu.Unlock()
		want := db.Upstream
		if want.Host != cur.Host || want.Port != cur.Port || want.Database != cur.Database ||
			(db.ForceUser && (want.User != cur.User || want.Password != cur.Password)) {
			up = want.Copy()
			if !db.ForceUser {
				up.User, up.Password, up.AfterNetConnect = cur.User, cur.Password, cur.AfterNetConnect
			}
		}
		pl.Reconfigure(db.Pool, up)
	}
	p.log.Info().Int("databases", len(cfg.Databases)).Msg("configuration reloaded")
}
