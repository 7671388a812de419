package pooler

import (
	"context"
	"sync"
	"time"

	"github.com/pgaudit-proxy/pgaudit/wire"
)

// The drain: how a process leaves a fleet (SIGTERM, SHUTDOWN
// WAIT_FOR_CLIENTS) without failing a transaction that a reconnecting
// client would not retry. The rolling restart in docs/deploy.md relies on
// each step:
//
//  1. The listener closes first (Shutdown, proxy.go), so with so_reuseport the kernel hands
//     every new connection to the other processes on the port. The peer
//     listener stays open: cancels for this process's clients, which now
//     reach the other processes, are forwarded here until it exits.
//  2. A session is ended only between transactions (nothing in flight, no
//     transaction or COPY open), with FATAL 57P01: when its client sends
//     the first message of its next transaction, or, while it stays idle,
//     by Shutdown's poll. Nothing of that transaction has run, so the
//     client may retry it on a new connection.
//  3. A session that logged in less than drainNewSessionGrace ago is left
//     alone a little longer: it was accepted just before the listener
//     closed (or from its backlog), and a client that connects for each
//     transaction (pgbench -C, a serverless function) would otherwise see
//     its only transaction refused.
//  4. When shutdown_timeout passes, the sessions still in a transaction
//     get FATAL 57P01 too, as Postgres's fast shutdown sends, and the
//     caller's Close cuts them and rolls their servers back.

// drainNewSessionGrace is how long a newly logged-in session is spared by
// a drain (see above).
const drainNewSessionGrace = time.Second

// endForDrain ends s with 57P01 if it is between transactions and past
// drainNewSessionGrace, and reports whether it did.
func (s *Session) endForDrain() bool {
	if time.Now().UnixNano()-s.connected < int64(drainNewSessionGrace) {
		return false
	}
	return s.closeIfIdle(shutdownError())
}

// drain ends the sessions as the rules above say, once the listener is
// closed (Shutdown), until every client but the admin consoles has left
// or ctx ends; on ctx's end the sessions left get FATAL 57P01 (delivered
// within killGrace where their relays let it) before it returns.
func (p *Proxy) drain(ctx context.Context) {
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	// Admin consoles are not waited for: the one that sent SHUTDOWN
	// WAIT_FOR_CLIENTS, or a pgbouncer_exporter's, stays connected and
	// would hold every drain until shutdown_timeout. Close cuts them.
	for p.clients.Load()-p.admins.Load() > 0 {
		for _, s := range p.sessionList() {
			s.endForDrain()
		}
		select {
		case <-ctx.Done():
			p.terminateSessions(wire.Fatal(wire.CodeAdminShutdown, "terminating connection because pgaudit is shutting down and shutdown_timeout has passed"))
			return
		case <-t.C:
		}
	}
}

// terminateSessions sends e to every session, in parallel, waiting at
// most killGrace for them to be written; then it closes the clients of
// those not yet written (a relay blocked writing to a client that does not
// read holds the session's lock, and closing is what frees it) and waits
// for every send to end.
func (p *Proxy) terminateSessions(e *wire.Error) {
	sessions := p.sessionList()
	if len(sessions) == 0 {
		return
	}
	var wg sync.WaitGroup
	for _, s := range sessions {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_ = s.fatal(e)
		}()
	}
	sent := make(chan struct{})
	go func() { wg.Wait(); close(sent) }()
	select {
	case <-sent:
	case <-time.After(killGrace):
		for _, s := range sessions {
			s.closeClient()
			s.interruptInline()
		}
		<-sent
	}
}
