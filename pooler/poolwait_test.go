package pooler

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/rs/zerolog"

	"github.com/pgaudit-proxy/pgaudit/internal/testutil"
)

// TestPoolWaitCanceled: waiters on a full pool (one server, real
// Postgres) get a released server in FIFO order, whether they wait with
// the pool's watched context (no select) or with another one (select);
// canceling a context ends exactly its waiters with its error, the
// other waiters keep their place, and an acquire with a canceled
// context fails at once.
func TestPoolWaitCanceled(t *testing.T) {
	cfg, err := pgconn.ParseConfig(testutil.Shared(t).DSN("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	set := DefaultPoolSettings()
	set.Mode, set.Size, set.ReserveSize = TransactionMode, 1, 0
	p := newPool(&Database{Name: "postgres", Pool: set}, "postgres", cfg, nil, 0, zerolog.Nop())
	defer p.Close()

	watched, cancelWatched := context.WithCancel(context.Background())
	defer cancelWatched()
	other, cancelOther := context.WithCancel(context.Background())
	defer cancelOther()

	held, _, err := p.Acquire(watched) // registers watched as the pool's doneCtx
	if err != nil {
		t.Fatal(err)
	}
	type result struct {
		name string
		srv  *Server
		err  error
	}
	results := make(chan result, 4)
	queue := func(name string, ctx context.Context, want int) {
		go func() {
			s, _, err := p.Acquire(ctx)
			results <- result{name, s, err}
		}()
		deadline := time.Now().Add(5 * time.Second)
		for {
			p.mu.Lock()
			n := len(p.waiters)
			p.mu.Unlock()
			if n == want {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: %d waiters, want %d", name, n, want)
			}
			time.Sleep(time.Millisecond)
		}
	}
	queue("watched-1", watched, 1)
	queue("other-1", other, 2)
	queue("watched-2", watched, 3)

	p.mu.Lock()
	if p.waiters[0].ctx != watched || p.waiters[1].ctx != nil || p.waiters[2].ctx != watched {
		t.Errorf("waiters' contexts: want watched (no select), other (select), watched")
	}
	p.mu.Unlock()

	// The other context's waiter leaves; the watched ones stay.
	cancelOther()
	r := <-results
	if r.name != "other-1" || !errors.Is(r.err, context.Canceled) {
		t.Fatalf("after canceling other: %s got %v, want other-1 with context.Canceled", r.name, r.err)
	}
	// A release serves the first watched waiter.
	p.Release(held, true)
	r = <-results
	if r.name != "watched-1" || r.err != nil || r.srv == nil {
		t.Fatalf("after a release: %s got %v, %v; want watched-1 with a server", r.name, r.srv, r.err)
	}
	held = r.srv
	// Canceling the watched context ends its remaining waiter.
	cancelWatched()
	select {
	case r = <-results:
		if r.name != "watched-2" || !errors.Is(r.err, context.Canceled) {
			t.Fatalf("after canceling watched: %s got %v, want watched-2 with context.Canceled", r.name, r.err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a waiter with the watched context was not woken by its cancellation")
	}
	// An acquire with a canceled context on a full pool fails at once.
	if _, _, err := p.Acquire(watched); !errors.Is(err, context.Canceled) {
		t.Fatalf("Acquire with a canceled context: %v, want context.Canceled", err)
	}
	p.mu.Lock()
	n := len(p.waiters)
	p.mu.Unlock()
	if n != 0 {
		t.Errorf("%d waiters left, want 0", n)
	}
	p.Release(held, true)
}
