package planadvisor

import (
	"context"
	"errors"
	"fmt"
	"math"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// explainPool is the Explainer's own small connection pool, a
// github.com/jackc/pgx/v5/pgxpool Pool (created at the first acquire, so an
// Explainer that never explains holds no pool and no health-check
// goroutine) with the Explainer's rules on top:
//
//   - every connection is opened from the Explainer's ConnConfig and
//     nothing else: the pgxpool.Config from ParseConfig("") is used only
//     for its pool settings, its ConnConfig (which pgconn fills from PG*
//     environment variables, .pgpass and the operating-system user) is
//     replaced wholesale before the pool is built, and connections are
//     never re-parsed afterwards;
//   - check, when set, vets each new connection before first use (the
//     explainer's role check, session_user = current_user = role); a
//     connection that fails it is closed and acquire returns its error;
//   - release closes, synchronously and never to be reused, a connection
//     the caller says may hold session state (discard), and every
//     connection when closeIdle is set.
type explainPool struct {
	cfg      *pgx.ConnConfig
	maxConns int
	// check, when set, vets each new connection before first use.
	check func(context.Context, *pgx.Conn) error
	// closeIdle closes connections on release instead of keeping them.
	closeIdle bool

	mu     sync.Mutex
	pool   *pgxpool.Pool // nil until the first acquire
	closed bool
}

var errPoolClosed = errors.New("explain pool closed")

func newExplainPool(cfg *pgx.ConnConfig, maxConns int) *explainPool {
	return &explainPool{cfg: cfg, maxConns: max(maxConns, 1)}
}

// get returns the pgxpool, building it on first use.
func (p *explainPool) get() (*pgxpool.Pool, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return nil, errPoolClosed
	}
	if p.pool != nil {
		return p.pool, nil
	}
	pc, err := p.poolConfig()
	if err != nil {
		return nil, err
	}
	pool, err := pgxpool.NewWithConfig(context.Background(), pc)
	if err != nil {
		return nil, fmt.Errorf("explain pool: %w", err)
	}
	p.pool = pool
	return pool, nil
}

// poolConfig returns the pgxpool configuration: pgxpool's defaults for the
// pool, MaxConns, the role check, and a copy of the Explainer's ConnConfig.
func (p *explainPool) poolConfig() (*pgxpool.Config, error) {
	pc, err := pgxpool.ParseConfig("")
	if err != nil {
		return nil, fmt.Errorf("explain pool config: %w", err)
	}
	// Only the pool settings of pc are used: its ConnConfig came from the
	// environment and is replaced by the Explainer's own.
	pc.ConnConfig = p.cfg.Copy()
	pc.MaxConns = int32(min(p.maxConns, math.MaxInt32))
	pc.MinConns, pc.MinIdleConns = 0, 0
	if p.check != nil {
		pc.AfterConnect = p.check
	}
	return pc, nil
}

// acquire returns an idle connection or opens a new one, waiting while max
// connections are in use.
func (p *explainPool) acquire(ctx context.Context) (*pgxpool.Conn, error) {
	pool, err := p.get()
	if err != nil {
		return nil, err
	}
	return pool.Acquire(ctx)
}

// release returns c to the pool, or closes it when discard is set, when
// closeIdle is set, or when it is closed or busy (pgxpool's own rule).
func (p *explainPool) release(c *pgxpool.Conn, discard bool) {
	if discard || p.closeIdle {
		closeConn(c.Hijack())
		return
	}
	c.Release()
}

// close closes the pool: idle connections at once, and it waits for the
// connections in use to be released (each explain is bounded by its
// timeouts). acquire fails afterwards.
func (p *explainPool) close() {
	p.mu.Lock()
	p.closed = true
	pool := p.pool
	p.mu.Unlock()
	if pool != nil {
		pool.Close()
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
