package planadvisor

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
)

// explainPool is the Explainer's own small connection pool: at most max
// connections, opened on demand, kept idle for reuse, and closed (never
// reused) after anything that might have left session state behind.
//
// It is a few lines rather than pgxpool because pgxpool needs
// github.com/jackc/puddle/v2 in go.mod, which this package may not change;
// the behaviour needed here (a cap, reuse, discard on doubt) is small.
type explainPool struct {
	cfg  *pgx.ConnConfig
	slot chan struct{} // one token per connection that may exist
	// check, when set, vets each new connection before first use (the
	// explainer's role check); a connection that fails it is closed.
	check func(context.Context, *pgx.Conn) error
	// closeIdle closes connections on release instead of keeping them.
	closeIdle bool

	mu     sync.Mutex
	idle   []*pgx.Conn
	closed bool
}

var errPoolClosed = errors.New("explain pool closed")

func newExplainPool(cfg *pgx.ConnConfig, maxConns int) *explainPool {
	return &explainPool{cfg: cfg, slot: make(chan struct{}, max(maxConns, 1))}
}

// acquire returns an idle connection or opens a new one, waiting while max
// connections are in use.
func (p *explainPool) acquire(ctx context.Context) (*pgx.Conn, error) {
	select {
	case p.slot <- struct{}{}:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		<-p.slot
		return nil, errPoolClosed
	}
	if n := len(p.idle); n > 0 {
		c := p.idle[n-1]
		p.idle = p.idle[:n-1]
		p.mu.Unlock()
		if !c.IsClosed() {
			return c, nil
		}
	} else {
		p.mu.Unlock()
	}
	c, err := pgx.ConnectConfig(ctx, p.cfg)
	if err != nil {
		<-p.slot
		return nil, err
	}
	if p.check != nil {
		if err := p.check(ctx, c); err != nil {
			closeConn(c)
			<-p.slot
			return nil, err
		}
	}
	return c, nil
}

// release returns c to the pool, or closes it when discard is set, when it
// is closed or busy, or when the pool is closed.
func (p *explainPool) release(c *pgx.Conn, discard bool) {
	defer func() { <-p.slot }()
	if !discard && !p.closeIdle && !c.IsClosed() && c.PgConn().TxStatus() == 'I' && !c.PgConn().IsBusy() {
		p.mu.Lock()
		if !p.closed {
			p.idle = append(p.idle, c)
			p.mu.Unlock()
			return
		}
		p.mu.Unlock()
	}
	closeConn(c)
}

// close closes the idle connections; connections in use are closed when
// released.
func (p *explainPool) close() {
	p.mu.Lock()
	p.closed = true
	idle := p.idle
	p.idle = nil
	p.mu.Unlock()
	for _, c := range idle {
		closeConn(c)
	}
}

func closeConn(c *pgx.Conn) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_ = c.Close(ctx)
}

// rateLimiter is a token bucket: rate tokens per second, at most burst
// saved up.
type rateLimiter struct {
	mu     sync.Mutex
	rate   float64
	burst  float64
	tokens float64
	last   time.Time
}

func newRateLimiter(rate float64, burst int) *rateLimiter {
	b := float64(max(burst, 1))
	return &rateLimiter{rate: rate, burst: b, tokens: b, last: time.Now()}
}

// wait takes one token, sleeping until one is available or ctx ends.
func (l *rateLimiter) wait(ctx context.Context) error {
	for {
		l.mu.Lock()
		now := time.Now()
		l.tokens = min(l.burst, l.tokens+now.Sub(l.last).Seconds()*l.rate)
		l.last = now
		if l.tokens >= 1 {
			l.tokens--
			l.mu.Unlock()
			return nil
		}
		d := time.Duration((1 - l.tokens) / l.rate * float64(time.Second))
		l.mu.Unlock()
		t := time.NewTimer(max(d, time.Millisecond))
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		}
	}
}
