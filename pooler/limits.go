package pooler

import (
	"container/list"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/pgaudit-proxy/pgaudit/wire"
)

// Client limits. A connection is "logging in" from accept until it has
// authenticated (or sent a CancelRequest, or failed); only then does it
// count toward max_client_conn. Connections logging in have their own
// limit, max_login_clients, and a deadline, client_login_timeout. When the
// login slots are full a new connection does not wait and is not refused:
// the proxy closes the oldest connection that has sent nothing yet (no
// StartupMessage), else the oldest one still logging in, with FATAL 53300.
// A flood of silent sockets therefore only ever displaces other silent
// sockets, and a real client, which sends its StartupMessage at once,
// finishes logging in unless as many other clients are past their
// StartupMessage as there are login slots.

// loginSlot tracks one connection while it logs in. Its fields are
// guarded by Proxy.mu.
type loginSlot struct {
	nc net.Conn
	// elem is the slot's place in Proxy.silent or Proxy.started; nil once
	// the slot was left or taken away.
	elem    *list.Element
	started bool
	// evicted is set when the proxy closed the connection to make room.
	evicted bool
	// authenticated is set when the connection counts toward
	// max_client_conn (Proxy.authed).
	authenticated bool
}

// errLoginEvicted ends a login whose slot was taken by a newer connection.
var errLoginEvicted = errors.New("login slot taken by a newer connection (max_login_clients)")

// enterLogin takes a login slot for nc, making room by evicting when
// max_login_clients are taken.
func (p *Proxy) enterLogin(nc net.Conn) *loginSlot {
	limit := p.config().MaxLoginClients
	if limit <= 0 {
		limit = DefaultMaxLoginClients
	}
	ls := &loginSlot{nc: nc}
	var victims []*loginSlot
	p.mu.Lock()
	for p.silent.Len()+p.started.Len() >= limit {
		from := p.silent
		if from.Len() == 0 {
			from = p.started
		}
		v := from.Remove(from.Front()).(*loginSlot)
		v.elem, v.evicted = nil, true
		victims = append(victims, v)
	}
	ls.elem = p.silent.PushBack(ls)
	p.mu.Unlock()
	for _, v := range victims {
		p.counters.loginEvicted.Add(1)
		// The victim's goroutine fails its next read or write and
		// reports the eviction (see loginFailed).
		_ = v.nc.SetDeadline(time.Now())
	}
	return ls
}

// loginStarted records that the connection sent its StartupMessage: it is
// evicted only after every silent one.
func (p *Proxy) loginStarted(ls *loginSlot) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if ls.elem == nil || ls.started {
		return
	}
	p.silent.Remove(ls.elem)
	ls.elem, ls.started = p.started.PushBack(ls), true
}

// leaveLogin gives the slot back. It reports false when the slot had been
// taken away by enterLogin.
func (p *Proxy) leaveLogin(ls *loginSlot) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if ls.elem != nil {
		if ls.started {
			p.started.Remove(ls.elem)
		} else {
			p.silent.Remove(ls.elem)
		}
		ls.elem = nil
	}
	return !ls.evicted
}

// authenticated moves a client that has just authenticated from its login
// slot to max_client_conn, and lifts the login deadline: what follows
// (waiting for a server) is bounded by the pool's own timeouts. An error
// has been sent to the client.
func (p *Proxy) authenticated(c *wire.Conn, ls *loginSlot) error {
	if !p.leaveLogin(ls) {
		return errLoginEvicted
	}
	ls.authenticated = true
	// The authentication messages have been handled: from now on the
	// client's large messages count toward client_buffer_budget.
	c.R.SetBudget(p.budget)
	n := p.authed.Add(1)
	if limit := p.config().MaxClientConn; limit > 0 && n > int64(limit) {
		p.counters.rejected.Add(1)
		e := wire.Fatal(wire.CodeTooManyConnections, "no more connections allowed (max_client_conn)")
		_ = c.SendError(e)
		return e
	}
	_ = c.SetDeadline(time.Time{})
	return nil
}

// refuseWhenFull refuses a client with 53300 before any authentication
// work when max_client_conn clients are logged in already, as PgBouncer
// refuses at accept: a full proxy must not spend a SCRAM exchange or an
// auth_query on a client it will turn away. Nothing about the user is
// looked at, so the answer reveals nothing. authenticated checks again
// (others may finish logging in meanwhile).
func (p *Proxy) refuseWhenFull(c *wire.Conn) error {
	if limit := p.config().MaxClientConn; limit > 0 && p.authed.Load() >= int64(limit) {
		p.counters.rejected.Add(1)
		e := wire.Fatal(wire.CodeTooManyConnections, "no more connections allowed (max_client_conn)")
		_ = c.SendError(e)
		return e
	}
	return nil
}

// endConn releases what a connection held in the client limits.
func (p *Proxy) endConn(ls *loginSlot) {
	p.leaveLogin(ls)
	if ls.authenticated {
		p.authed.Add(-1)
	}
}

// loginFailed reports a connection that ended before logging in: an
// evicted one gets FATAL 53300, one over client_buffer_budget FATAL 53200;
// anything else is logged.
func (p *Proxy) loginFailed(c *wire.Conn, ls *loginSlot, err error) {
	p.mu.Lock()
	evicted := ls.evicted
	p.mu.Unlock()
	var overBudget *wire.BufferBudgetError
	if !evicted && errors.As(err, &overBudget) {
		_ = c.SendError(p.budgetFatal(overBudget))
	}
	if evicted {
		_ = c.SetDeadline(time.Now().Add(time.Second))
		_ = c.SendError(wire.Fatal(wire.CodeTooManyConnections,
			"too many connections logging in (max_login_clients); closing the oldest unauthenticated connection"))
		p.log.Info().Str("client", c.RemoteAddr().String()).Msg("unauthenticated connection closed to make room for a new one (max_login_clients)")
		return
	}
	p.logStartupError(c.Conn, err)
}

// LoginCount returns the number of connections still logging in.
func (p *Proxy) LoginCount() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.silent.Len() + p.started.Len()
}

// LimitCounts is what the client limits (max_login_clients,
// max_client_conn, client_buffer_budget) hold now and what they did since
// the process started: the numbers an operator watches to see a flood of
// silent sockets or oversized messages being absorbed.
type LimitCounts struct {
	// LoggingIn: connections that have not finished logging in (each
	// holds a max_login_clients slot).
	LoggingIn int
	// LoginEvicted: unauthenticated connections closed to make room for
	// newer ones when the login slots were full.
	LoginEvicted int64
	// Rejected: authenticated clients refused by max_client_conn.
	Rejected int64
	// AuthFailures: logins that failed authentication.
	AuthFailures int64
	// BufferedBytes and BufferBudget: bytes of client messages being
	// received that are charged to client_buffer_budget now, and its limit.
	BufferedBytes, BufferBudget int64
	// LoginBufferedBytes: the same for connections still logging in
	// (their own 16 MiB budget).
	LoginBufferedBytes int64
	// BudgetExceeded: clients ended with 53200 because a message did not
	// fit in client_buffer_budget (or the login budget).
	BudgetExceeded int64
}

// LimitCounts returns the limit gauges and counters; safe from any
// goroutine. It takes p.mu briefly (for LoggingIn), never during I/O.
func (p *Proxy) LimitCounts() LimitCounts {
	return LimitCounts{
		LoggingIn:          p.LoginCount(),
		LoginEvicted:       p.counters.loginEvicted.Load(),
		Rejected:           p.counters.rejected.Load(),
		AuthFailures:       p.counters.authFailures.Load(),
		BufferedBytes:      p.budget.Used(),
		BufferBudget:       p.budget.Limit(),
		LoginBufferedBytes: p.loginBudget.Used(),
		BudgetExceeded:     p.counters.budgetFatal.Load(),
	}
}

// BufferedClientBytes returns the bytes charged to client_buffer_budget
// now: client messages being assembled in buffers beyond each
// connection's own.
func (p *Proxy) BufferedClientBytes() int64 { return p.budget.Used() }

// loginBufferBudget bounds what connections still logging in may hold in
// large-message buffers, together. Real clients never use it: their
// startup and authentication messages fit the 16 KiB every connection has;
// Postgres's own limit for an authentication message is 65535 bytes.
const loginBufferBudget = 16 << 20

// newClientConn frames a client connection, charging its large messages to
// the budget of connections logging in until it has authenticated (see
// authenticated), so they cannot spend client_buffer_budget.
func (p *Proxy) newClientConn(nc net.Conn) *wire.Conn {
	c := wire.NewConnSize(nc, 10000, wire.ClientBufferSize)
	c.R.SetBudget(p.loginBudget)
	return c
}

// budgetFatal is the error for a client whose message does not fit in
// client_buffer_budget (or, while it logs in, in loginBufferBudget).
func (p *Proxy) budgetFatal(be *wire.BufferBudgetError) *wire.Error {
	p.counters.budgetFatal.Add(1)
	if be.Budget == p.loginBudget {
		return &wire.Error{Severity: "FATAL", Code: wire.CodeOutOfMemory,
			Message: fmt.Sprintf("pgaudit: buffered bytes of connections logging in exceed their limit (%s)", wire.FormatBytes(be.Limit)),
			Detail:  fmt.Sprintf("A message of type %q of %d bytes was being received before authentication.", be.Type, be.Size),
			Cause:   be}
	}
	return &wire.Error{Severity: "FATAL", Code: wire.CodeOutOfMemory,
		Message: fmt.Sprintf("pgaudit: buffered client bytes exceed client_buffer_budget (%s)", wire.FormatBytes(be.Limit)),
		Detail:  fmt.Sprintf("A message of type %q of %d bytes was being received; messages being received from all clients may hold at most %s.", be.Type, be.Size, wire.FormatBytes(be.Limit)),
		Cause:   be}
}
