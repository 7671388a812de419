package pooler

import (
	"errors"
	"fmt"
	"maps"
	"net"
	"reflect"
	"runtime"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"

	"github.com/pgaudit-proxy/pgaudit/wire"
)

// DefaultRelayParkAfter is the default of Config.RelayParkAfter.
const DefaultRelayParkAfter = time.Second

// The park states of a Session (Session.parkState). Every session starts
// running; plain TCP and Unix-socket sessions move out of it when idle
// (TLS sessions never do).
//
//	running --(idle >= park_after, nothing in flight; run loop)--> parked
//	parked  --(socket readable/closed: epoll loop; or wake: KILL,
//	           Close, Shutdown, client_idle_timeout due)--> resuming
//	resuming --(buffers restored, goroutine started)--> running
const (
	// parkRunning: a goroutine runs the session's run loop (reading the
	// client, or blocked waiting for it).
	parkRunning int32 = iota
	// parkParked: no goroutine runs the session. The client's buffers
	// are dropped, its socket (and, in session mode, its server's) is
	// registered with an epoll loop, and the session stays in
	// Proxy.sessions (SHOW CLIENTS lists it) and in Proxy.wg (Close and
	// Shutdown wait for it).
	parkParked
	// parkResuming: whoever won the transition out of parkParked (the
	// epoll loop, or wake) is removing the sockets from epoll and
	// restoring the buffers; then it starts the goroutine and stores
	// parkRunning.
	parkResuming
)

// errParked is run's result when the session parked: its goroutine ends
// without cleaning up; the session goes on on another goroutine later.
var errParked = errors.New("session parked")

// aLongTimeAgo is a read deadline in the past: it makes a blocked read
// return a timeout at once.
var aLongTimeAgo = time.Unix(1, 0)

// eventRelay is the Proxy's set of epoll loops and its park sweeper:
// the one relay of established plain-socket sessions (docs/relay.md).
type eventRelay struct {
	p *Proxy
	// parks counts sessions parked since the sweeper last returned memory
	// to the OS (releaseMemory), at lastRelease.
	parks       atomic.Int64
	lastRelease time.Time
	loops       []*eventLoop
	parkAfter   time.Duration
	stopSweep   chan struct{}
	stopOnce    sync.Once
	sweepTimer  *time.Ticker
}

// eventLoop is one epoll instance and the goroutine waiting on it. It owns
// the parked sessions registered with it (parked, by token).
type eventLoop struct {
	r    *eventRelay
	epfd int
	// evfd is an eventfd registered with epfd: writing it stops the loop.
	evfd int

	mu     sync.Mutex
	parked map[uint64]*Session
	// stopped: no more parking (eventRelay.stop); closed: epfd and evfd
	// are closed (the loop has exited).
	stopped, closed bool
}

// Epoll tokens: the session id shifted left by one, the low bit saying
// which socket (client or server) became ready.
const (
	tokenClient = 0
	tokenServer = 1
	tokenStop   = ^uint64(0)
)

// newEventRelay creates n epoll loops (not started).
func newEventRelay(p *Proxy, n int, parkAfter time.Duration) (*eventRelay, error) {
	if parkAfter <= 0 {
		parkAfter = DefaultRelayParkAfter
	}
	r := &eventRelay{p: p, parkAfter: parkAfter, stopSweep: make(chan struct{})}
	for range n {
		epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
		if err != nil {
			r.closeFds()
			return nil, fmt.Errorf("epoll_create1: %w", err)
		}
		evfd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
		if err != nil {
			_ = unix.Close(epfd)
			r.closeFds()
			return nil, fmt.Errorf("eventfd: %w", err)
		}
		ev := unix.EpollEvent{Events: unix.EPOLLIN}
		setToken(&ev, tokenStop)
		if err := unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, evfd, &ev); err != nil {
			_ = unix.Close(epfd)
			_ = unix.Close(evfd)
			r.closeFds()
			return nil, fmt.Errorf("epoll_ctl: %w", err)
		}
		r.loops = append(r.loops, &eventLoop{r: r, epfd: epfd, evfd: evfd, parked: map[uint64]*Session{}})
	}
	return r, nil
}

func (r *eventRelay) closeFds() {
	for _, l := range r.loops {
		_ = unix.Close(l.epfd)
		_ = unix.Close(l.evfd)
	}
}

func setToken(ev *unix.EpollEvent, t uint64) {
	ev.Fd, ev.Pad = int32(uint32(t)), int32(uint32(t>>32))
}

func tokenOf(ev *unix.EpollEvent) uint64 {
	return uint64(uint32(ev.Fd)) | uint64(uint32(ev.Pad))<<32
}

// start runs the loops and the sweeper, each counted in the Proxy's wg.
func (r *eventRelay) start() {
	for _, l := range r.loops {
		r.p.wg.Add(1)
		go l.run()
	}
	tick := max(r.parkAfter/2, time.Millisecond)
	r.sweepTimer = time.NewTicker(tick)
	r.p.wg.Add(1)
	go r.sweep()
}

// stop ends parking for good: loops refuse new sessions, every parked
// session is resumed (Close and Shutdown then end them as they end
// running ones), and the loops and the sweeper exit. Idempotent.
func (r *eventRelay) stop() {
	r.stopOnce.Do(func() {
		close(r.stopSweep)
		for _, l := range r.loops {
			l.mu.Lock()
			l.stopped = true
			victims := make([]*Session, 0, len(l.parked))
			for _, s := range l.parked {
				victims = append(victims, s)
			}
			l.mu.Unlock()
			for _, s := range victims {
				s.wake()
			}
			var one = [8]byte{1}
			_, _ = unix.Write(l.evfd, one[:])
		}
	})
}

// loopFor picks the loop of session id.
func (r *eventRelay) loopFor(id uint64) *eventLoop { return r.loops[id%uint64(len(r.loops))] }

// run waits for readiness of parked sessions' sockets and resumes them.
// It owns epfd and evfd and closes them when it stops.
func (l *eventLoop) run() {
	defer l.r.p.wg.Done()
	defer func() {
		// Under mu, so that a wake in progress never uses a closed
		// (or reused) descriptor.
		l.mu.Lock()
		l.closed = true
		_ = unix.Close(l.epfd)
		_ = unix.Close(l.evfd)
		l.mu.Unlock()
	}()
	defer func() {
		if rec := recover(); rec != nil {
			l.r.p.log.Error().Interface("panic", rec).Msg("event loop panic")
		}
	}()
	events := make([]unix.EpollEvent, 128)
	for {
		n, err := unix.EpollWait(l.epfd, events, -1)
		if err != nil {
			if errors.Is(err, unix.EINTR) {
				continue
			}
			l.r.p.log.Error().Err(err).Msg("epoll_wait failed; resuming parked sessions")
			l.r.stop()
			return
		}
		for i := range events[:n] {
			t := tokenOf(&events[i])
			if t == tokenStop {
				return
			}
			l.mu.Lock()
			s := l.parked[t>>1]
			l.mu.Unlock()
			if s != nil {
				s.wake()
			}
		}
	}
}

// sweep is the park sweeper: every park_after/2 it advances the coarse
// clock that the run loop stamps on each message (Session.active), asks
// sessions idle for park_after to park (a read deadline in the past, with
// parkReq set so the run loop can tell it from a timeout), and wakes
// parked sessions whose client_idle_timeout is due.
func (r *eventRelay) sweep() {
	defer r.p.wg.Done()
	defer r.sweepTimer.Stop()
	defer func() {
		if rec := recover(); rec != nil {
			r.p.log.Error().Interface("panic", rec).Msg("park sweeper panic")
		}
	}()
	for {
		select {
		case <-r.stopSweep:
			return
		case now := <-r.sweepTimer.C:
			ns := now.UnixNano()
			r.p.coarseNow.Store(ns)
			r.releaseMemory(now)
			for _, s := range r.p.sessionList() {
				switch s.parkState.Load() {
				case parkParked:
					if dl := s.readDL.Load(); dl != 0 && ns >= dl {
						s.wake()
					}
				case parkRunning:
					if dl := s.readDL.Load(); dl != 0 && ns >= dl {
						continue // its own timeout fires now
					}
					if s.parkable.Load() && ns-s.active.Load() >= int64(r.parkAfter) {
						s.requestPark()
					}
				}
			}
		}
	}
}

// sockFd returns the file descriptor of a plain TCP or Unix socket, or
// false (TLS, anything else). The descriptor stays owned by c.
func sockFd(c net.Conn) (int, bool) {
	var sc syscall.Conn
	switch t := c.(type) {
	case *net.TCPConn:
		sc = t
	case *net.UnixConn:
		sc = t
	default:
		return 0, false
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return 0, false
	}
	fd := -1
	if err := rc.Control(func(f uintptr) { fd = int(f) }); err != nil || fd < 0 {
		return 0, false
	}
	return fd, true
}

// park moves an idle session from running to parked; the run loop calls
// it on its own goroutine when the sweeper asked (parkReq). It reports
// false, changing nothing the run loop can see, when the session is not
// idle: something is in flight, buffered or half-read, a transaction or
// COPY is open, a transaction-mode server is attached, or parking is
// closed (Close, Shutdown). In session mode the server's background
// reader is stopped first (between messages, by a read deadline) and
// the server's socket is watched too.
func (s *Session) park() bool {
	r := s.proxy.relay
	if r == nil || !s.parkable.Load() || s.proxy.draining.Load() {
		return false
	}
	if dl := s.readDL.Load(); dl != 0 && time.Now().UnixNano() >= dl {
		return false // a timeout is due: let the run loop report it
	}
	s.mu.Lock()
	if !s.idleForParkLocked() {
		s.mu.Unlock()
		return false
	}
	srv := s.server
	if srv != nil && s.readerActive {
		// Session mode: stop the server's reader, as detachIdle does.
		done := s.readerDone
		s.stopReader.Store(true)
		_ = srv.SetReadDeadline(time.Now())
		s.mu.Unlock()
		<-done
		s.mu.Lock()
		var ne net.Error
		stopped := errors.As(s.readerErr, &ne) && ne.Timeout() && srv.R.InSync() && srv.R.Idle() && s.server == srv
		if !stopped || !s.idleForParkLocked() {
			s.restartReaderLocked()
			s.mu.Unlock()
			return false
		}
	}
	serverFd := -1
	if srv != nil {
		fd, ok := sockFd(srv.Conn.Conn)
		if !ok {
			s.restartReaderLocked()
			s.mu.Unlock()
			return false
		}
		serverFd = fd
	}
	l := r.loopFor(s.id)
	l.mu.Lock()
	if l.stopped {
		l.mu.Unlock()
		s.restartReaderLocked()
		s.mu.Unlock()
		return false
	}
	// The client's socket leaves Go's netpoller: the session keeps its
	// descriptor only (wire.Conn.Detach), under parkMu, which orders it
	// with the sweeper's requestPark.
	s.parkMu.Lock()
	clientFd, err := s.client.Detach()
	s.parkMu.Unlock()
	if err != nil {
		l.mu.Unlock()
		if !errors.Is(err, wire.ErrNotDetachable) {
			s.logger().Warn().Err(err).Msg("could not park idle session; it keeps its goroutine")
		}
		s.restartReaderLocked()
		s.mu.Unlock()
		return false
	}
	s.dropIdleStateLocked()
	// parkParked before the sockets are registered: an event may come at
	// once, and the loop must find the session parked.
	s.parkState.Store(parkParked)
	l.parked[s.id] = s
	err = l.add(clientFd, s.id<<1|tokenClient)
	if err == nil && serverFd >= 0 {
		if err = l.add(serverFd, s.id<<1|tokenServer); err != nil {
			_ = unix.EpollCtl(l.epfd, unix.EPOLL_CTL_DEL, clientFd, nil)
		}
	}
	if err != nil {
		delete(l.parked, s.id)
		if !s.parkState.CompareAndSwap(parkParked, parkRunning) {
			// A wake came meanwhile (it waits for l.mu, then s.mu):
			// it resumes the session, so this goroutine must end.
			l.mu.Unlock()
			s.resumed = true
			s.mu.Unlock()
			return true
		}
		l.mu.Unlock()
		s.logger().Warn().Err(err).Msg("could not park idle session; it keeps its goroutine")
		if aerr := s.reattachClient(); aerr != nil {
			s.mu.Unlock()
			return false // the next read fails: the session ends
		}
		s.restartReaderLocked()
		s.mu.Unlock()
		return false
	}
	l.mu.Unlock()
	s.resumed = true
	s.mu.Unlock()
	r.parks.Add(1)
	return true
}

// add registers fd with the loop for one readiness event (EPOLLONESHOT).
func (l *eventLoop) add(fd int, token uint64) error {
	ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLRDHUP | unix.EPOLLONESHOT}
	setToken(&ev, token)
	if err := unix.EpollCtl(l.epfd, unix.EPOLL_CTL_ADD, fd, &ev); err != nil {
		return fmt.Errorf("epoll_ctl add: %w", err)
	}
	return nil
}

// idleForParkLocked says whether the session is between transactions with
// nothing pending on either side; s.mu held.
func (s *Session) idleForParkLocked() bool {
	if s.closed || s.inFlight != 0 || s.groupOpen || s.copyActive || s.copyInExtended || s.writing ||
		s.queue.len() != 0 || s.probe != nil || s.skipUntilSync || s.held != nil && s.held.z != nil || !s.client.R.Idle() {
		return false
	}
	if s.server == nil {
		return true
	}
	return s.mode == SessionMode && s.txStatus == wire.TxIdle
}

// restartReaderLocked restarts the background reader of the attached
// server in session mode after park stopped it (or gave up); s.mu held.
func (s *Session) restartReaderLocked() {
	srv := s.server
	if srv == nil || s.readerActive || s.closed || s.mode != SessionMode && !s.pinned {
		return
	}
	s.stopReader.Store(false)
	s.readerErr = nil
	_ = srv.SetReadDeadline(time.Time{})
	s.startReaderLocked(srv)
}

// wake moves a parked session to resuming and then running on a new
// goroutine; it does nothing to a session that is not parked (or that
// someone else is waking). The epoll loops call it when a socket becomes
// readable or hangs up; control paths (KILL, Shutdown, Close, a due
// client_idle_timeout) call it before they act on the session, so that
// they find it running with its buffers, and so that its sockets leave epoll before anyone closes them.
func (s *Session) wake() {
	if !s.parkState.CompareAndSwap(parkParked, parkResuming) {
		return
	}
	l := s.proxy.relay.loopFor(s.id)
	l.mu.Lock()
	if !l.closed {
		if fd := s.client.DetachedFd(); fd >= 0 {
			_ = unix.EpollCtl(l.epfd, unix.EPOLL_CTL_DEL, fd, nil)
		}
		if fd := s.parkedServerFd(); fd >= 0 {
			_ = unix.EpollCtl(l.epfd, unix.EPOLL_CTL_DEL, fd, nil)
		}
	}
	delete(l.parked, s.id)
	l.mu.Unlock()
	s.mu.Lock()
	// A failure leaves a client whose reads fail: the session ends
	// on its goroutine, as when the client leaves.
	_ = s.reattachClient()
	s.mu.Unlock()
	s.parkState.Store(parkRunning)
	go s.proxy.serveSession(s)
}

// reattachClient makes the session whole again after a park (or a park
// that failed late): a busyState if it was dropped, and the client's
// descriptor given back to Go's netpoller with new I/O state and buffers
// (wire.Conn.Attach, under parkMu: see park); s.mu held. On an error, logged here, the client's I/O fails
// with net.ErrClosed, so the session ends at its next read.
func (s *Session) reattachClient() error {
	if s.busyState == nil {
		s.busyState = &busyState{}
	}
	s.parkMu.Lock()
	err := s.client.Attach()
	s.parkMu.Unlock()
	if err != nil {
		s.logger().Warn().Err(err).Msg("could not resume parked session; closing it")
	}
	return err
}

// parkedServerFd is the descriptor of the server socket park registered
// (session mode), or -1: the attached server's, which does not change
// while the session is parked.
func (s *Session) parkedServerFd() int {
	s.infoMu.Lock()
	srv := s.server
	s.infoMu.Unlock()
	if srv == nil {
		return -1
	}
	fd, ok := sockFd(srv.Conn.Conn)
	if !ok {
		return -1
	}
	return fd
}

// lockRunning locks s.mu for a control path that is about to end the
// session (fatal, closeIfIdle): it stops the session from parking again
// and returns once the session runs with its buffers (a no-op beyond the
// lock for a session that never parks: TLS).
func (s *Session) lockRunning() {
	s.parkable.Store(false)
	for {
		s.wake()
		s.mu.Lock()
		if s.parkState.Load() == parkRunning && !s.client.Detached() {
			return
		}
		// Parking or resuming right now: park, seeing parkable false,
		// wakes the session itself once it has parked.
		s.mu.Unlock()
		runtime.Gosched()
	}
}

// unparkForClose is lockRunning without the lock, for Close, which closes
// the session's connection next: the sockets must leave epoll first.
func (s *Session) unparkForClose() {
	s.parkable.Store(false)
	s.wake()
	for s.parkState.Load() != parkRunning {
		runtime.Gosched()
		s.wake()
	}
}

// ParkedClients returns how many client sessions are parked right now (0
// before Serve starts the relay).
func (p *Proxy) ParkedClients() int {
	p.mu.Lock()
	r := p.relay
	p.mu.Unlock()
	if r == nil {
		return 0
	}
	n := 0
	for _, l := range r.loops {
		l.mu.Lock()
		n += len(l.parked)
		l.mu.Unlock()
	}
	return n
}

// closeClient closes the client's connection from a control path (KILL,
// Shutdown's deadline, Close): under parkMu, so that it never runs at the
// same time as a park's Detach or a resume's Attach replacing the
// connection. parkMu is never held across blocking I/O.
func (s *Session) closeClient() {
	s.parkMu.Lock()
	_ = s.client.Close()
	s.parkMu.Unlock()
}

// requestPark asks a running session to park: parkReq and a read deadline
// in the past, together under parkMu, so that the run loop never takes
// this deadline's timeout for client_idle_timeout (see takeParkRequest).
func (s *Session) requestPark() {
	s.parkMu.Lock()
	// (It may have parked since the sweeper looked: then its socket is
	// detached, and there is nothing to ask.)
	if s.parkState.Load() == parkRunning && !s.client.Detached() {
		s.parkReq.Store(true)
		_ = s.client.SetReadDeadline(aLongTimeAgo)
	}
	s.parkMu.Unlock()
}

// takeParkRequest is the run loop's check, after a read timed out, that
// the sweeper asked it to park; it clears the request.
func (s *Session) takeParkRequest() bool {
	s.parkMu.Lock()
	defer s.parkMu.Unlock()
	return s.parkReq.Swap(false)
}

// Returning the memory of parked sessions to the OS: after at least
// releaseAfterParks sessions parked, at most once per releaseEvery.
const (
	releaseAfterParks = 256
	releaseEvery      = time.Second
)

// releaseMemory returns the stacks and buffers that parked sessions gave
// up to the OS, when many parked recently. An idle proxy allocates
// nothing, so without it no collection would run (the runtime forces one
// every two minutes) and the freed memory would stay in the process's RSS.
// It costs one full collection (measured: see docs/relay.md); the sweeper
// runs it, never a relay path.
func (r *eventRelay) releaseMemory(now time.Time) {
	if r.parks.Load() < releaseAfterParks || now.Sub(r.lastRelease) < releaseEvery {
		return
	}
	r.parks.Store(0)
	r.lastRelease = now
	debug.FreeOSMemory()
}

// dropIdleStateLocked lets go of what a session that parks does not need
// and makes again when it is busy: the result hash (no result is in
// progress; the next sampled statement allocates one), the request queue's
// storage (it is empty), and empty maps (their storage does not shrink);
// then it moves the session's counters to the pool and drops the whole
// busyState when nothing is left in it (reattachClient makes a new one).
// s.mu held.
func (s *Session) dropIdleStateLocked() {
	s.resHash = nil
	if s.queue.len() == 0 {
		s.queue = pendingQueue{}
	}
	if len(s.suspended) == 0 {
		s.suspended = nil
	}
	if s.bytesIn != 0 {
		s.pool.stats.bytesIn.Add(s.bytesIn)
		s.bytesIn = 0
	}
	s.flushStats()
	// Nothing is in flight: no request waits for a server (a login's
	// attach leaves its wait here, no audit event having taken it).
	s.pendingWait = 0
	// Whatever field busyState gains, it is dropped only when zero.
	if reflect.ValueOf(s.busyState).Elem().IsZero() {
		s.busyState = nil
	}
	if len(s.portals) == 0 {
		s.portals = nil
	}
	if len(s.stmts) == 0 {
		s.stmts = nil
	}
}

// sessionLogHook adds a session's identity to each line its logger writes
// (see login).
type sessionLogHook struct{ s *Session }

// Run implements zerolog.Hook.
func (h sessionLogHook) Run(e *zerolog.Event, _ zerolog.Level, _ string) {
	e.Uint64("session", h.s.id).Str("user", h.s.user).Str("database", h.s.database)
}

// ownReportedLocked gives the session its own copy of reported before it
// changes it; s.mu held.
func (s *Session) ownReportedLocked() {
	if s.reportedShared {
		s.reported = maps.Clone(s.reported)
		s.reportedShared = false
	}
}

// maxSharedParams bounds the distinct parameter sets a pool shares.
const maxSharedParams = 8

// shareParams returns a map equal to params that sessions of the pool
// share (read-only: see Session.ownReportedLocked), so that thousands of
// clients told the same ParameterStatus values hold one map, not one
// each. params itself is kept when no equal map is known.
func (pl *Pool) shareParams(params map[string]string) map[string]string {
	pl.paramsMu.Lock()
	defer pl.paramsMu.Unlock()
	for _, m := range pl.sharedParams {
		if maps.Equal(m, params) {
			return m
		}
	}
	if len(pl.sharedParams) < maxSharedParams {
		pl.sharedParams = append(pl.sharedParams, params)
	}
	return params
}

// maxInterned and maxInternedLen bound Proxy.interned (256 KiB of
// string bytes at most, whatever clients send).
const (
	maxInterned    = 4096
	maxInternedLen = 64
)

// intern returns a string equal to v that other sessions share (client
// addresses and application names repeat across thousands of clients),
// or v itself when it is longer than maxInternedLen or maxInterned strings
// are interned already. Login calls it, never a relay path.
func (p *Proxy) intern(v string) string {
	if v == "" || len(v) > maxInternedLen {
		return v
	}
	p.internMu.Lock()
	defer p.internMu.Unlock()
	if w, ok := p.interned[v]; ok {
		return w
	}
	if p.interned == nil {
		p.interned = map[string]string{}
	}
	if len(p.interned) < maxInterned {
		p.interned[v] = v
	}
	return v
}

// shareName returns the pool's own database or user name when v equals
// it (sessions of the pool then share one string), or v.
func (pl *Pool) shareName(v string) string {
	switch v {
	case pl.Database:
		return pl.Database
	case pl.User:
		return pl.User
	}
	return v
}
