package analyzer

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/pgaudit-proxy/pgaudit/internal/auditlog"
	"github.com/pgaudit-proxy/pgaudit/internal/testutil"
)

func stmt(text string) *Event {
	return &Event{Kind: KindStatement, Text: text, Duration: time.Millisecond, Start: t0, Command: "SELECT", Rows: 1}
}

func stop(t *testing.T, p *Pipeline) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := p.Stop(ctx); err != nil {
		t.Fatalf("Stop: %v", err)
	}
}

// TestPipelineBackpressure stalls the only worker in an observer, then
// offers far more events than the queue holds: Offer must return at once
// and count every event it could not queue.
func TestPipelineBackpressure(t *testing.T) {
	const queue, offers = 16, 1000
	var logs testutil.Buffer
	var audit testutil.Buffer
	al, err := auditlog.Open(auditlog.Config{Writer: &audit, Sample: auditlog.SampleNone, FlushInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer al.Close()
	p := NewPipeline(PipelineConfig{QueueSize: queue, Workers: 1, AuditLog: al, Logger: zerolog.New(&logs)})
	entered := make(chan struct{})
	release := make(chan struct{})
	var once sync.Once
	var seen atomic.Int64
	if err := p.AddObserver(ObserverFunc(func(*Analyzed) {
		seen.Add(1)
		once.Do(func() { close(entered); <-release })
	})); err != nil {
		t.Fatal(err)
	}
	if err := p.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	p.Offer(stmt("SELECT 1"))
	<-entered // the worker is now stuck in the observer

	done := make(chan struct{})
	go func() {
		defer close(done)
		for range offers {
			p.Offer(stmt("SELECT 2"))
		}
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		close(release)
		t.Fatal("Offer blocked while the queue was full")
	}
	if got, want := p.Dropped(), uint64(offers-queue); got != want {
		t.Errorf("Dropped() = %d, want %d", got, want)
	}
	close(release)
	stop(t, p)
	c := p.Counters()
	if c.Processed != queue+1 || seen.Load() != queue+1 || c.Queued != 0 {
		t.Errorf("counters %+v, observer saw %d; want %d processed", c, seen.Load(), queue+1)
	}
	// Drops are never silent: logged and written as a drops record.
	if !strings.Contains(logs.String(), `"dropped":984`) {
		t.Errorf("drops not logged: %s", logs.String())
	}
	if !strings.Contains(audit.String(), `"record":"drops"`) || !strings.Contains(audit.String(), `"dropped_total":984`) {
		t.Errorf("no drops record: %s", audit.String())
	}
	// Offer after Stop drops too.
	p.Offer(stmt("SELECT 3"))
	if p.Dropped() != offers-queue+1 {
		t.Errorf("Offer after Stop not counted as a drop")
	}
	if err := p.Submit(context.Background(), stmt("SELECT 3")); !errors.Is(err, ErrPipelineStopped) {
		t.Errorf("Submit after Stop = %v", err)
	}
}

func TestPipelineDrainsOnStop(t *testing.T) {
	p := NewPipeline(PipelineConfig{QueueSize: 100, Workers: 2})
	var n atomic.Int64
	if err := p.AddObserver(ObserverFunc(func(a *Analyzed) {
		if a.Shape == nil || a.Shape.Fingerprint == 0 {
			t.Errorf("observer got no shape for %q", a.Event.Text)
		}
		n.Add(1)
	})); err != nil {
		t.Fatal(err)
	}
	for i := range 50 { // queued before Start
		p.Offer(stmt("SELECT " + strings.Repeat("1+", i) + "1"))
	}
	if err := p.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := p.AddObserver(ObserverFunc(func(*Analyzed) {})); err == nil {
		t.Error("AddObserver after Start succeeded")
	}
	if err := p.Start(context.Background()); err == nil {
		t.Error("second Start succeeded")
	}
	for range 50 {
		if err := p.Submit(context.Background(), stmt("SELECT 1")); err != nil {
			t.Fatal(err)
		}
	}
	stop(t, p)
	stop(t, p) // idempotent
	if n.Load() != 100 || p.Counters().Processed != 100 || p.Dropped() != 0 {
		t.Errorf("observed %d, counters %+v", n.Load(), p.Counters())
	}
	if calls := p.Stats().Snapshot().Calls; calls != 100 {
		t.Errorf("stats calls %d, want 100", calls)
	}
}

func TestPipelineContextCancelStops(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithCancel(context.Background())
	p := NewPipeline(PipelineConfig{})
	if err := p.Start(ctx); err != nil {
		t.Fatal(err)
	}
	p.Offer(stmt("SELECT 1"))
	cancel()
	stop(t, p)
	if p.Counters().Processed != 1 {
		t.Errorf("counters %+v", p.Counters())
	}
}

func TestPipelineStopWithoutStart(t *testing.T) {
	p := NewPipeline(PipelineConfig{})
	p.Offer(stmt("SELECT 1"))
	stop(t, p)
	if p.Dropped() != 1 {
		t.Errorf("queued event not counted as dropped: %+v", p.Counters())
	}
	if err := p.Start(context.Background()); err == nil {
		t.Error("Start after Stop succeeded")
	}
}

func TestPipelineObserverPanic(t *testing.T) {
	t.Parallel()
	var logs testutil.Buffer
	p := NewPipeline(PipelineConfig{Workers: 1, Logger: zerolog.New(&logs)})
	var after atomic.Int64
	_ = p.AddObserver(ObserverFunc(func(*Analyzed) { panic("boom") }))
	_ = p.AddObserver(ObserverFunc(func(*Analyzed) { after.Add(1) }))
	if err := p.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	p.Offer(stmt("SELECT 1"))
	p.Offer(stmt("SELECT 2"))
	stop(t, p)
	if c := p.Counters(); c.ObserverPanics != 2 || after.Load() != 2 || c.Processed != 2 {
		t.Errorf("counters %+v, later observer ran %d times", c, after.Load())
	}
	if !strings.Contains(logs.String(), "observer panicked") {
		t.Errorf("panic not logged: %s", logs.String())
	}
}

func TestPipelineSubmitContext(t *testing.T) {
	p := NewPipeline(PipelineConfig{QueueSize: 1})
	p.Offer(stmt("SELECT 1")) // fills the queue; not started
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if err := p.Submit(ctx, stmt("SELECT 2")); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Submit on a full queue = %v, want deadline exceeded", err)
	}
	stop(t, p)
}

// TestPipelineConcurrentOfferStop races many producers against Stop: every
// event is either processed or counted as dropped, none is lost.
func TestPipelineConcurrentOfferStop(t *testing.T) {
	p := NewPipeline(PipelineConfig{QueueSize: 64, Workers: 2})
	if err := p.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	const producers, each = 8, 500
	var wg sync.WaitGroup
	for range producers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range each {
				p.Offer(stmt("SELECT 1"))
			}
		}()
	}
	// Deliberate: let the producers get going, so Stop races with Offers
	// (the thing under test), rather than waiting for any condition.
	time.Sleep(time.Millisecond)
	stop(t, p)
	wg.Wait()
	c := p.Counters()
	if c.Processed+c.Dropped != producers*each {
		t.Errorf("processed %d + dropped %d != offered %d", c.Processed, c.Dropped, producers*each)
	}
}

func TestPipelineTraceParentFromComment(t *testing.T) {
	t.Parallel()
	p := NewPipeline(PipelineConfig{Workers: 1})
	var got []string
	var mu sync.Mutex
	_ = p.AddObserver(ObserverFunc(func(a *Analyzed) {
		mu.Lock()
		got = append(got, a.TraceParent)
		mu.Unlock()
	}))
	if err := p.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	const tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
	p.Offer(stmt("SELECT 1 /*traceparent='" + tp + "'*/"))
	ev := stmt("SELECT 1")
	ev.TraceParent = "from-event"
	p.Offer(ev)
	stop(t, p)
	if len(got) != 2 || got[0] != tp || got[1] != "from-event" {
		t.Errorf("trace parents %q", got)
	}
}

func TestPipelinePeriodicStats(t *testing.T) {
	var out testutil.Buffer
	al := testAuditLog(t, &out, func(c *auditlog.Config) { c.StatsInterval = 5 * time.Millisecond; c.Sample = auditlog.SampleNone })
	p := NewPipeline(PipelineConfig{AuditLog: al})
	if err := p.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	p.Offer(stmt("SELECT 1"))
	testutil.Within(5*time.Second, func() bool { return strings.Contains(out.String(), `"final":false`) }) // checked below
	stop(t, p)
	s := out.String()
	if !strings.Contains(s, `"final":false`) || strings.Count(s, `"final":true`) != 1 {
		t.Errorf("want periodic stats records and one final one:\n%s", s)
	}
}

// BenchmarkPipelineOffer measures the relay path's cost of handing an event
// to the analyzer, from parallel producers: all of one session (one
// worker's queue), each of its own session (spread over the workers, as
// on a proxy), and into a full queue.
func BenchmarkPipelineOffer(b *testing.B) {
	for _, name := range []string{"accepted", "sessions", "dropped"} {
		full := name == "dropped"
		b.Run(name, func(b *testing.B) {
			p := NewPipeline(PipelineConfig{QueueSize: 1 << 16})
			if full {
				for range 1 << 16 {
					p.Offer(stmt("SELECT 1"))
				}
			} else if err := p.Start(context.Background()); err != nil {
				b.Fatal(err)
			}
			var ids atomic.Uint64
			b.ReportAllocs()
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				ev := stmt("SELECT 1")
				if name == "sessions" {
					ev.SessionID = ids.Add(1)
				}
				for pb.Next() {
					p.Offer(ev)
				}
			})
			b.StopTimer()
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			if err := p.Stop(ctx); err != nil {
				b.Fatal(err)
			}
		})
	}
}

// TestPipelinePerSessionOrder offers the events of many sessions
// concurrently through several workers: each session's events must reach
// the observers in the order they were offered, one at a time.
func TestPipelinePerSessionOrder(t *testing.T) {
	const sessions, each = 24, 300
	p := NewPipeline(PipelineConfig{Workers: 4, QueueSize: 64})
	var mu sync.Mutex
	last := make(map[uint64]uint64)
	busy := make(map[uint64]bool)
	var errs []string
	_ = p.AddObserver(ObserverFunc(func(a *Analyzed) {
		id := a.Event.SessionID
		mu.Lock()
		if busy[id] {
			errs = append(errs, "two workers in one session at once")
		}
		busy[id] = true
		if a.Event.TxSeq != last[id]+1 {
			errs = append(errs, fmt.Sprintf("session %d: event %d after %d", id, a.Event.TxSeq, last[id]))
		}
		last[id] = a.Event.TxSeq
		mu.Unlock()
		time.Sleep(time.Microsecond) // widen the window for reordering
		mu.Lock()
		busy[id] = false
		mu.Unlock()
	}))
	if err := p.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for s := range sessions {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				ev := stmt("SELECT 1")
				ev.SessionID = uint64(s*7919 + 1)
				ev.TxSeq = uint64(i + 1)
				if err := p.Submit(context.Background(), ev); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	stop(t, p)
	if len(errs) > 0 {
		t.Fatalf("%d ordering errors, first: %s", len(errs), errs[0])
	}
	if c := p.Counters(); c.Processed != sessions*each || c.Dropped != 0 {
		t.Errorf("counters %+v", c)
	}
	for id, n := range last {
		if n != each {
			t.Errorf("session %d: %d events", id, n)
		}
	}
}

// TestPipelineShardedDrops: a full worker queue drops only the events of
// the sessions it serves; Offer never blocks.
func TestPipelineShardedDrops(t *testing.T) {
	p := NewPipeline(PipelineConfig{Workers: 2, QueueSize: 8}) // 4 per worker, not started
	qa := p.queueFor(&Event{SessionID: 1})
	other := uint64(2)
	for p.queueFor(&Event{SessionID: other}) == qa {
		other++
	}
	for range 10 {
		ev := stmt("SELECT 1")
		ev.SessionID = 1
		p.Offer(ev)
	}
	if p.Dropped() != 6 {
		t.Errorf("dropped %d, want 6", p.Dropped())
	}
	ev := stmt("SELECT 1")
	ev.SessionID = other
	p.Offer(ev) // the other worker's queue has room
	if c := p.Counters(); c.Dropped != 6 || c.Queued != 5 {
		t.Errorf("counters %+v", c)
	}
	stop(t, p)
	if p.Dropped() != 11 {
		t.Errorf("queued events not counted as dropped at Stop: %d", p.Dropped())
	}
}

// TestPipelineCountsFingerprintLookups: the workers count their
// fingerprint lookups in counters of their own; Fingerprinter.Stats adds
// them up with those of direct Lookup calls, so every lookup is counted
// once, whichever goroutine made it.
func TestPipelineCountsFingerprintLookups(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		name     string
		proto    Protocol
		text     func(i int) string
		fallback bool
	}{
		{"simple", ProtocolSimple, func(i int) string { return fmt.Sprintf("SELECT v FROM kv WHERE k = %d", i) }, false},
		{"extended", ProtocolExtended, func(int) string { return "SELECT v FROM kv WHERE k = $1" }, false},
		{"unparsable", ProtocolSimple, func(i int) string { return fmt.Sprintf("SELEC v FROM kv WHERE k = %d", i) }, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			p := NewPipeline(PipelineConfig{Workers: 2})
			if err := p.Start(context.Background()); err != nil {
				t.Fatal(err)
			}
			const events = 400
			for i := range events {
				ev := &Event{Kind: KindStatement, Protocol: c.proto, Text: c.text(i), SessionID: uint64(i % 40), Start: t0, Rows: 1}
				if c.proto == ProtocolExtended {
					ev.NumParams, ev.ParamHash = 1, uint64(i)+1
				}
				if err := p.Submit(context.Background(), ev); err != nil {
					t.Fatal(err)
				}
			}
			stop(t, p)
			p.Fingerprinter().Lookup(c.text(0), c.proto) // a direct lookup counts too
			st := p.Fingerprinter().Stats()
			if n := st.TextHits + st.KeyHits + st.Misses; n != events+1 {
				t.Errorf("hits and misses %d (%+v), want %d", n, st, events+1)
			}
			want := uint64(0)
			if c.fallback {
				want = events + 1
			}
			if st.FallbackLookups != want {
				t.Errorf("fallback lookups %d, want %d", st.FallbackLookups, want)
			}
			if c.fallback != (st.ParseErrors > 0) || st.ParseErrors > st.Misses {
				t.Errorf("parse errors %d with %d misses, fallback %v", st.ParseErrors, st.Misses, c.fallback)
			}
		})
	}
}
