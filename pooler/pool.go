package pooler

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/rs/zerolog"

	"github.com/pgaudit-proxy/pgaudit/wire"
)

// ErrWaitTimeout is returned by Acquire when query_wait_timeout passes.
var ErrWaitTimeout = errors.New("query_wait_timeout")

// ErrPoolClosed is returned by Acquire after Close.
var ErrPoolClosed = errors.New("pool is closed")

// Server is a pooled server connection. It is owned by exactly one holder at
// a time: the pool (idle), or the session that acquired it.
type Server struct {
	*wire.ServerConn
	pool     *Pool
	id       uint64
	lastUsed time.Time
	// gucs are the session-level settings applied on this connection on
	// top of its startup defaults (name -> value as set_config takes it).
	gucs map[string]string
	// gucsKey is gucsKey(gucs), kept in step with it.
	gucsKey string
	// prepared tracks protocol-level prepared statements on the server
	// (transaction mode).
	prepared *stmtCache
	// unnamed is the client statement last parsed as the unnamed statement
	// on this server (transaction mode).
	unnamed *stmtDef
	// gen is the pool's upstream generation when this server connected.
	gen uint64
}

// waiter is a client queued in Acquire. Whoever removes it from the queue
// (under the pool's lock) sends it exactly one value, so a waiter in the
// queue has an empty channel and a dequeued one can be reused.
type waiter struct {
	// ch receives a server, nil meaning "capacity freed: retry", or one of
	// the sentinels waitTimedOut and waitUseReserve from the watcher.
	ch      chan *Server
	reserve bool
	since   time.Time // when the client started waiting
	// timeoutAt (query_wait_timeout) and reserveAt (reserve_pool_timeout)
	// are enforced by watchWaiters; zero means none.
	timeoutAt, reserveAt time.Time
	// ctx is set when the waiter receives on ch alone, without a select
	// on ctx.Done(): ctx is the pool's doneCtx, whose cancellation sends
	// it waitCanceled (wakeCanceled).
	ctx context.Context
}

// Sentinels sent to a waiter instead of a server.
var (
	waitTimedOut   = &Server{}
	waitUseReserve = &Server{}
	waitCanceled   = &Server{} // the waiter's ctx was canceled
)

// waiterPool recycles waiters and their channels: every acquire that finds
// the pool busy needs one.
var waiterPool = sync.Pool{New: func() any { return &waiter{ch: make(chan *Server, 1)} }}

// watchPeriod bounds how late query_wait_timeout and reserve_pool_timeout
// fire.
const watchPeriod = 25 * time.Millisecond

// Pool holds the server connections for one (database, user). Its methods are
// safe for concurrent use.
type Pool struct {
	// paramsMu guards sharedParams: the ParameterStatus sets sessions of
	// this pool share (shareParams in relay.go).
	paramsMu     sync.Mutex
	sharedParams []map[string]string
	// greetings caches transaction-mode greetings per application_name
	// (see greetingFor in proxy.go); guarded by paramsMu.
	greetings []*greeting
	Database  string
	User      string

	db  *Database
	cfg *pgconn.Config
	// login is what cfg logs in with when the database does not force a
	// server user (see setLogin); guarded by mu.
	login *wire.ServerLogin
	// settings may be replaced by Reconfigure; read them with set().
	settings atomic.Pointer[PoolSettings]
	// upstreamGen changes when the upstream changes; servers of an older
	// generation are closed when released.
	upstreamGen atomic.Uint64
	dbLimit     *dbCounter
	log         zerolog.Logger
	maxBody     int

	mu       sync.Mutex
	idle     []*Server // LIFO: the most recently used is reused first
	total    int       // open plus connecting
	active   int       // held by sessions
	waiters  []*waiter
	closed   bool
	lastErr  error
	failures int
	retryAt  time.Time
	paused   bool
	// watching says a watchWaiters goroutine runs.
	watching bool
	// doneCtx is the context (the proxy's, in practice: every session
	// acquires with it) whose cancellation wakes its waiters through
	// wakeCanceled, registered once with context.AfterFunc. Waiters with
	// it receive on their channel alone: a select on a Done channel
	// shared by every waiting session locked and queued on it at each
	// wait (selectgo, sellock: 3-4 % of the proxy's user time with 100
	// clients on 20 servers). Other contexts wait with a select.
	doneCtx context.Context
	// baseParams are the ParameterStatus values of a fresh server
	// connection, used to greet transaction-mode clients without waiting
	// for a server.
	baseParams map[string]string

	stats poolStats
}

type dbCounter struct {
	max int
	n   atomic.Int64
}

func (d *dbCounter) tryAdd() bool {
	if d == nil || d.max <= 0 {
		return true
	}
	if d.n.Add(1) > int64(d.max) {
		d.n.Add(-1)
		return false
	}
	return true
}

func (d *dbCounter) done() {
	if d != nil && d.max > 0 {
		d.n.Add(-1)
	}
}

func newPool(db *Database, user string, cfg *pgconn.Config, limit *dbCounter, maxBody int, log zerolog.Logger) *Pool {
	p := &Pool{
		Database: db.Name,
		User:     user,
		db:       db,
		cfg:      cfg,
		dbLimit:  limit,
		maxBody:  maxBody,
		log:      log.With().Str("database", db.Name).Str("user", user).Logger(),
	}
	st := db.Pool
	p.settings.Store(&st)
	p.stats.init()
	return p
}

// Settings returns the pool's current settings.
func (p *Pool) Settings() PoolSettings { return *p.set() }

func (p *Pool) set() *PoolSettings { return p.settings.Load() }

// Reconfigure applies new settings and, when cfg is not nil, a new
// upstream: servers of the old upstream are closed as they are released
// (clients are not dropped). Waiters are woken to use any new room.
func (p *Pool) Reconfigure(settings PoolSettings, cfg *pgconn.Config) {
	p.settings.Store(&settings)
	p.mu.Lock()
	if cfg != nil {
		p.cfg = cfg
		p.upstreamGen.Add(1)
		idle := p.idle
		p.idle = nil
		p.total -= len(idle)
		p.mu.Unlock()
		for _, s := range idle {
			p.dbLimit.done()
			p.closeServer(s)
		}
		p.mu.Lock()
	}
	ws := p.waiters
	p.waiters = nil
	p.mu.Unlock()
	for _, w := range ws {
		w.ch <- nil
	}
}

// Acquire returns a server connection for exclusive use, waiting in FIFO
// order when the pool is full. It returns the time spent waiting. Errors are
// *wire.Error values ready for the client: 08006 when the server cannot be
// reached, 53300 (with query_wait_timeout in the message) on timeout, and
// 57P01 when the pool is closed.
func (p *Pool) Acquire(ctx context.Context) (*Server, time.Duration, error) {
	s, wait, _, err := p.acquireFrom(ctx, time.Time{})
	return s, wait, err
}

// acquireFrom is Acquire for a request that arrived at start, a clock
// reading the caller already took (zero: Acquire reads it): the wait
// counts from there, and the relay reads the clock once less. end is the
// clock reading that ended the acquisition, for the caller to reuse.
func (p *Pool) acquireFrom(ctx context.Context, start time.Time) (_ *Server, _ time.Duration, end time.Time, _ error) {
	if start.IsZero() {
		start = time.Now()
	}
	s, queued, now, err := p.acquire(ctx, start)
	if now.IsZero() {
		now = time.Now()
	}
	wait := now.Sub(start)
	p.stats.recordAcquire(now, wait, queued)
	if err != nil {
		return nil, wait, now, err
	}
	return s, wait, now, nil
}

// acquire returns a server and the time spent queued (waiting for a
// release, a back-off or RESUME), which excludes time spent connecting.
// end is the clock reading taken when the wait ended, which Acquire uses
// as the end of the acquisition; it is zero when acquire read no clock
// since (the caller reads it then). The clock is read once per wait, not
// per step: a busy pool's every acquire waits, and each reading costs.
func (p *Pool) acquire(ctx context.Context, start time.Time) (s *Server, queued time.Duration, end time.Time, err error) {
	// Waits are timed by watchWaiters, not by a timer per acquire: most
	// acquires on a busy pool wait briefly, and timers cost more than the
	// relay itself. The deadlines count from start.
	var timeoutAt, reserveAt time.Time
	if d := p.set().QueryWaitTimeout; d > 0 {
		timeoutAt = start.Add(d)
	}
	if p.set().ReserveSize > 0 && p.set().ReserveTimeout > 0 {
		reserveAt = start.Add(p.set().ReserveTimeout)
	}
	useReserve := false
	woken := false // a woken waiter keeps its place ahead of the queue
	// last is the latest clock reading, zero once something that may
	// take time (a health check, a failed checkout) ran after it.
	last := start
	for {
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			return nil, queued, time.Time{}, wire.Fatal(wire.CodeAdminShutdown, "pool is shutting down")
		}
		// Serve in FIFO order: a newcomer does not overtake waiters.
		dbFull := false
		if !p.paused && (len(p.waiters) == 0 || useReserve || woken) {
			if n := len(p.idle); n > 0 {
				s := p.idle[n-1]
				p.idle = p.idle[:n-1]
				p.active++
				p.mu.Unlock()
				if last.IsZero() {
					last = time.Now()
				}
				if s2, ok := p.checkOut(ctx, s, last); ok {
					return s2, queued, time.Time{}, nil
				}
				last = time.Time{}
				continue
			}
			limit := p.set().Size
			if useReserve {
				limit += p.set().ReserveSize
			}
			canOpen := p.total < limit && time.Now().After(p.retryAt)
			if canOpen && !p.dbLimit.tryAdd() {
				canOpen, dbFull = false, true
			}
			if canOpen {
				p.total++
				p.active++
				p.mu.Unlock()
				s, err := p.connect(ctx)
				if err != nil {
					return nil, queued, time.Time{}, err
				}
				return s, queued, time.Time{}, nil
			}
			// During a connect back-off the client waits for the next
			// attempt (below, via the re-check timer) instead of failing
			// at once: a server that just came back serves it.
		}
		w := waiterPool.Get().(*waiter)
		w.reserve, w.since, w.timeoutAt, w.reserveAt = useReserve, start, timeoutAt, reserveAt
		if useReserve {
			w.reserveAt = time.Time{}
		}
		p.waiters = append(p.waiters, w)
		if !p.watching && (!w.timeoutAt.IsZero() || !w.reserveAt.IsZero()) {
			p.watching = true
			go p.watchWaiters()
		}
		// Waiting although the pool has room means a connect back-off is
		// running (or max_db_connections, shared across pools that do not
		// wake each other, is reached): re-check when it ends rather than
		// wait for a wake-up that no release will send.
		recheckAfter := time.Duration(0)
		if dbFull {
			recheckAfter = 50 * time.Millisecond
		} else if p.total < p.set().Size+p.set().ReserveSize && !p.paused {
			recheckAfter = max(time.Until(p.retryAt), 10*time.Millisecond)
		}
		plain := recheckAfter == 0 && (ctx.Done() == nil || p.watchCtxLocked(ctx))
		if plain && ctx.Done() != nil {
			if err := ctx.Err(); err != nil {
				// Canceled before it queued: wakeCanceled has run or
				// will not see it.
				p.waiters = p.waiters[:len(p.waiters)-1]
				p.mu.Unlock()
				waiterPool.Put(w)
				return nil, queued, time.Time{}, err
			}
			w.ctx = ctx
		}
		p.mu.Unlock()

		var recheck <-chan time.Time
		var recheckTimer *time.Timer
		if recheckAfter > 0 {
			recheckTimer = time.NewTimer(recheckAfter)
			recheck = recheckTimer.C
		}
		var got *Server
		queuedAt := last
		if queuedAt.IsZero() {
			queuedAt = time.Now()
		}
		if plain {
			got = <-w.ch
		} else {
			select {
			case got = <-w.ch:
			case <-recheck:
				got = p.dropWaiter(w)
			case <-ctx.Done():
				if s := p.dropWaiter(w); s != nil && s != waitTimedOut && s != waitUseReserve {
					p.Release(s, true)
				}
				waiterPool.Put(w)
				return nil, queued + time.Since(queuedAt), time.Time{}, ctx.Err()
			}
		}
		last = time.Now()
		queued += last.Sub(queuedAt)
		if recheckTimer != nil {
			recheckTimer.Stop()
		}
		w.ctx = nil
		waiterPool.Put(w)
		switch got {
		case waitCanceled:
			return nil, queued, last, ctx.Err()
		case waitTimedOut:
			e := wire.Fatal(wire.CodeTooManyConnections, "query_wait_timeout")
			e.Severity = "ERROR"
			e.Detail = fmt.Sprintf("no server connection became free within %s (pool size %d)", p.set().QueryWaitTimeout, p.set().Size)
			return nil, queued, last, e
		case waitUseReserve:
			useReserve = true
		case nil:
			woken = true
		default:
			woken = true
			if s2, ok := p.checkOut(ctx, got, last); ok {
				return s2, queued, last, nil
			}
			last = time.Time{}
		}
	}
}

// watchCtxLocked reports whether ctx is (now) the pool's doneCtx, whose
// cancellation wakes its waiters: the first cancelable context an
// acquire waits with becomes it, and a canceled one is replaced. p.mu
// held.
func (p *Pool) watchCtxLocked(ctx context.Context) bool {
	if p.doneCtx == ctx {
		return true
	}
	if p.doneCtx != nil && p.doneCtx.Err() == nil {
		return false
	}
	p.doneCtx = ctx
	context.AfterFunc(ctx, func() { p.wakeCanceled(ctx) })
	return true
}

// wakeCanceled sends waitCanceled to the waiters that wait with ctx,
// which was just canceled, and takes them off the queue.
func (p *Pool) wakeCanceled(ctx context.Context) {
	p.mu.Lock()
	defer p.mu.Unlock()
	kept := p.waiters[:0]
	for _, w := range p.waiters {
		if w.ctx == ctx {
			w.ch <- waitCanceled // (buffered, and w is off the queue: no other sender)
			continue
		}
		kept = append(kept, w)
	}
	clear(p.waiters[len(kept):])
	p.waiters = kept
}

// watchWaiters enforces the waiters' deadlines while any has one: it runs
// every watchPeriod (or sooner, at the earliest deadline) and exits when
// the queue has no deadlines left.
func (p *Pool) watchWaiters() {
	for {
		now := time.Now()
		next := now.Add(watchPeriod)
		p.mu.Lock()
		kept := p.waiters[:0]
		pending := false
		for _, w := range p.waiters {
			switch {
			case !w.timeoutAt.IsZero() && !now.Before(w.timeoutAt):
				w.ch <- waitTimedOut
				continue
			case !w.reserveAt.IsZero() && !now.Before(w.reserveAt):
				w.ch <- waitUseReserve
				continue
			}
			for _, t := range []time.Time{w.timeoutAt, w.reserveAt} {
				if !t.IsZero() {
					pending = true
					if t.Before(next) {
						next = t
					}
				}
			}
			kept = append(kept, w)
		}
		clear(p.waiters[len(kept):])
		p.waiters = kept
		if !pending {
			p.watching = false
			p.mu.Unlock()
			return
		}
		p.mu.Unlock()
		time.Sleep(max(time.Until(next), time.Millisecond))
	}
}

// dropWaiter removes w from the queue. When w was already dequeued it
// returns what was sent to it (a server the caller must give back, nil, or
// a sentinel); a server is returned to the pool here unless the caller
// takes it.
func (p *Pool) dropWaiter(w *waiter) *Server {
	p.mu.Lock()
	for i, x := range p.waiters {
		if x == w {
			p.waiters = append(p.waiters[:i], p.waiters[i+1:]...)
			p.mu.Unlock()
			return nil
		}
	}
	p.mu.Unlock()
	// Not in the queue: someone already sent it something.
	return <-w.ch
}

// checkOut runs the health check on a server idle longer than
// server_check_delay; a failed server is destroyed and ok is false. now
// is a clock reading taken just before.
func (p *Pool) checkOut(ctx context.Context, s *Server, now time.Time) (*Server, bool) {
	p.stats.acquiredAt(now) // balanced by Release or destroy
	// A closed or terminated backend (Postgres restarted, or
	// pg_terminate_backend) is noticed without a round trip.
	idleFor := now.Sub(s.lastUsed)
	if idleFor > 50*time.Millisecond && !s.Alive() {
		p.log.Info().Uint64("server_id", s.id).Msg("idle server connection was closed by the server; dropping it")
		p.destroy(s)
		return nil, false
	}
	if p.set().ServerCheckDelay > 0 && idleFor > p.set().ServerCheckDelay && p.set().ServerCheckQuery != "" {
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		res, err := s.Exec(cctx, p.set().ServerCheckQuery)
		cancel()
		if err != nil || res.Err != nil || s.TxStatus != wire.TxIdle {
			p.log.Info().Uint64("server_id", s.id).Msg("server failed health check; closing it")
			p.destroy(s)
			return nil, false
		}
	}
	return s, true
}

func (p *Pool) connect(ctx context.Context) (*Server, error) {
	p.mu.Lock()
	cfg := p.cfg.Copy()
	gen := p.upstreamGen.Load()
	p.mu.Unlock()
	timeout := p.set().ServerConnectTimeout
	if timeout <= 0 {
		timeout = 15 * time.Second
	}
	cctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	p.stats.login.Add(1)
	connStart := time.Now()
	sc, err := wire.ConnectServer(cctx, cfg, p.maxBody)
	connEnd := time.Now()
	p.stats.login.Add(-1)
	p.stats.recordConnect(connEnd, connEnd.Sub(connStart), err != nil)
	p.mu.Lock()
	if err != nil {
		p.total--
		p.active--
		p.dbLimit.done()
		p.failures++
		backoff := p.set().ServerLoginRetry << min(p.failures-1, 2)
		p.retryAt = time.Now().Add(backoff)
		we := wire.FromUpstream(err, "FATAL")
		if we.Code == wire.CodeConnectionFailure {
			we.Message = fmt.Sprintf("could not connect to server for database %q", p.Database)
		}
		p.lastErr = we
		failures := p.failures
		p.wakeOneLocked()
		p.mu.Unlock()
		p.log.Warn().Err(err).Int("failures", failures).Msg("server connect failed")
		return nil, we
	}
	if p.baseParams == nil {
		p.baseParams = make(map[string]string, len(sc.Params))
		for k, v := range sc.Params {
			p.baseParams[k] = v
		}
	}
	p.failures = 0
	p.lastErr = nil
	p.retryAt = time.Time{}
	s := &Server{ServerConn: sc, pool: p, id: serverIDs.Add(1), lastUsed: time.Now(), gucs: map[string]string{}, gen: gen}
	// Every server gets a statement cache: a reload may switch the pool
	// to transaction mode.
	s.prepared = newStmtCache(p.set().MaxPreparedStatements)
	p.mu.Unlock()
	p.stats.acquired()
	p.log.Debug().Uint64("server_id", s.id).Uint32("pid", sc.PID).Msg("server connection opened")
	return s, nil
}

// BaseParams returns a copy of the parameters a fresh server connection
// reports, or nil before the first connection.
func (p *Pool) BaseParams() map[string]string {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.baseParams == nil {
		return nil
	}
	m := make(map[string]string, len(p.baseParams))
	for k, v := range p.baseParams {
		m[k] = v
	}
	return m
}

// Release gives s back. reusable says the holder left it idle and clean
// (ReadyForQuery 'I', nothing in flight, no COPY); otherwise it is closed.
// Session-mode callers must have run the reset query first (see Reset).
func (p *Pool) Release(s *Server, reusable bool) { p.releaseAt(s, reusable, time.Time{}) }

// releaseAt is Release at now, a clock reading the caller took just
// before (zero: it reads the clock): one reading for the lifetime check,
// lastUsed and the stats.
func (p *Pool) releaseAt(s *Server, reusable bool, now time.Time) {
	if now.IsZero() {
		now = time.Now()
	}
	if !reusable || s.TxStatus != wire.TxIdle || s.gen != p.upstreamGen.Load() ||
		(p.set().ServerLifetime > 0 && now.Sub(s.Created) > p.set().ServerLifetime) {
		p.destroy(s)
		return
	}
	s.lastUsed = now
	p.stats.releasedAt(now)
	p.mu.Lock()
	p.active--
	if p.closed {
		p.mu.Unlock()
		p.closeServer(s)
		return
	}
	if !p.paused && len(p.waiters) > 0 {
		w := p.waiters[0]
		p.waiters = p.waiters[1:]
		p.active++
		p.mu.Unlock()
		p.stats.releasedToWaiter()
		w.ch <- s
		return
	}
	p.idle = append(p.idle, s)
	p.mu.Unlock()
}

// Reset runs server_reset_query on s (session mode, before Release). It
// reports whether s is still usable.
func (p *Pool) Reset(ctx context.Context, s *Server) bool {
	if p.set().ServerResetQuery == "" {
		return true
	}
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	res, err := s.Exec(cctx, p.set().ServerResetQuery)
	if err != nil || res.Err != nil || s.TxStatus != wire.TxIdle {
		return false
	}
	clear(s.gucs)
	s.gucsKey = ""
	if s.prepared != nil {
		s.prepared.clear()
	}
	return true
}

// serverIDs numbers server connections across pools (SHOW SERVERS ptr,
// SHOW CLIENTS link).
var serverIDs atomic.Uint64

// destroy closes a held server and frees its slot.
func (p *Pool) destroy(s *Server) {
	p.closeServer(s)
	p.stats.released()
	p.mu.Lock()
	p.active--
	p.total--
	p.dbLimit.done()
	p.wakeOneLocked()
	p.mu.Unlock()
}

// destroyBroken frees the slot of a held server whose connection failed.
// It only closes the socket: the holder's other goroutine may still be
// writing to it, so no Terminate is sent.
func (p *Pool) destroyBroken(s *Server) {
	_ = s.Close()
	p.stats.released()
	p.mu.Lock()
	p.active--
	p.total--
	p.dbLimit.done()
	p.wakeOneLocked()
	p.mu.Unlock()
}

func (p *Pool) closeServer(s *Server) {
	_ = s.WriteRaw(wire.Terminate())
	_ = s.Flush()
	_ = s.Close()
}

// wakeOneLocked tells the first waiter that capacity was freed.
func (p *Pool) wakeOneLocked() {
	if len(p.waiters) > 0 {
		w := p.waiters[0]
		p.waiters = p.waiters[1:]
		w.ch <- nil
	}
}

// Pause stops handing out servers (PAUSE); Resume undoes it.
func (p *Pool) Pause() { p.mu.Lock(); p.paused = true; p.mu.Unlock() }

// Resume lets waiting clients proceed.
func (p *Pool) Resume() {
	p.mu.Lock()
	p.paused = false
	ws := p.waiters
	p.waiters = nil
	p.mu.Unlock()
	for _, w := range ws {
		w.ch <- nil
	}
}

// maintain closes servers idle too long or past their lifetime and opens
// servers up to min_pool_size. The proxy calls it about once a second.
func (p *Pool) maintain(ctx context.Context) {
	now := time.Now()
	var drop []*Server
	p.mu.Lock()
	keep := p.idle[:0]
	for i, s := range p.idle {
		idleTooLong := p.set().ServerIdleTimeout > 0 && now.Sub(s.lastUsed) > p.set().ServerIdleTimeout && p.total-len(drop) > p.set().MinSize
		tooOld := p.set().ServerLifetime > 0 && now.Sub(s.Created) > p.set().ServerLifetime
		if idleTooLong || tooOld {
			drop = append(drop, s)
			continue
		}
		keep = append(keep, p.idle[i])
	}
	p.idle = keep
	p.total -= len(drop)
	need := 0
	if p.set().MinSize > 0 && !p.closed && now.After(p.retryAt) {
		need = min(p.set().MinSize, p.set().Size) - p.total
	}
	p.mu.Unlock()
	for _, s := range drop {
		p.dbLimit.done()
		p.closeServer(s)
	}
	for i := 0; i < need; i++ {
		p.mu.Lock()
		if !p.dbLimit.tryAdd() {
			p.mu.Unlock()
			break
		}
		p.total++
		p.active++
		p.mu.Unlock()
		s, err := p.connect(ctx)
		if err != nil {
			break
		}
		p.Release(s, true)
	}
	p.stats.tick(now, p.set().Size)
}

// Close closes idle servers and makes later Acquires fail. Servers still
// held are closed when released.
func (p *Pool) Close() {
	p.mu.Lock()
	p.closed = true
	idle := p.idle
	p.idle = nil
	p.total -= len(idle)
	ws := p.waiters
	p.waiters = nil
	p.mu.Unlock()
	for _, s := range idle {
		p.dbLimit.done()
		p.closeServer(s)
	}
	for _, w := range ws {
		w.ch <- nil
	}
}

// DropIdle closes all idle servers (after the upstream restarted, for
// example); held ones are checked when released.
func (p *Pool) DropIdle() {
	p.mu.Lock()
	idle := p.idle
	p.idle = nil
	p.total -= len(idle)
	p.mu.Unlock()
	for _, s := range idle {
		p.dbLimit.done()
		p.closeServer(s)
	}
}
