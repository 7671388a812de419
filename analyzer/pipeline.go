package analyzer

import (
	"context"
	"errors"
	"fmt"
	"hash/maphash"
	"math/bits"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"

	"github.com/pgaudit-proxy/pgaudit/internal/auditlog"
)

// Analyzed is one event after analysis, as observers see it.
//
// The Analyzed value itself is valid only during the Observe call (copy what
// you keep); the Event, Shape and Annotations it points to are immutable and
// may be kept.
type Analyzed struct {
	// Event is the event as offered.
	Event *Event
	// Shape is the event's query shape; nil only when Event.Text is empty.
	Shape *Shape
	// Annotations are the sqlcommenter tags and pgaudit:ignore directives
	// found in the statement's comments.
	Annotations Annotations
	// TraceParent is Event.TraceParent, or else the traceparent of the
	// statement's sqlcommenter comment.
	TraceParent string

	// litKey memoizes execKey's hash of the text's tokens (litKeyOK set),
	// which the N+1 and cache-candidate detectors both need: the text is
	// lexed once per event, not once per detector.
	litKey   uint64
	litKeyOK bool
}

// literalSeed keys literalKey for every detector of the process: the keys
// are compared only with each other, within one process.
var literalSeed = maphash.MakeSeed()

// execKey returns the key that tells this event's executions of its shape
// apart: Event.ParamHash for statements with bind parameters (or a hash
// read back from an audit log); for the rest, a keyed hash of the text's
// tokens without comments and whitespace, so that other literal values
// give another key while a per-statement sqlcommenter comment does not.
// It is computed at most once per Analyzed.
func (a *Analyzed) execKey() uint64 {
	ev := a.Event
	if ev.NumParams != 0 || ev.ParamHash != 0 {
		return ev.ParamHash
	}
	if !a.litKeyOK {
		a.litKey, a.litKeyOK = literalKey(literalSeed, ev.Text), true
	}
	return a.litKey
}

// Observer sees every analyzed event after statistics were updated. Observe
// is called from the pipeline's worker goroutines, concurrently for events
// of different sessions and in no guaranteed order across sessions. Events
// of one session (Event.SessionID) all go to the same worker, so an observer
// sees them one at a time, in the order they were offered. It must not block
// for long: a slow observer fills its worker's queue and events get
// dropped. A panic in Observe is recovered, counted and logged.
type Observer interface {
	Observe(a *Analyzed)
}

// SessionObserver is implemented by observers that keep state per client
// session. EndSession is called on the session's worker, after every event
// of the session offered before its KindSessionEnd event: the observer
// closes what it keeps for sessionID (evaluating it as an idle eviction
// would) and forgets it. Events of the session that arrive later (none
// from the proxy) start a new state.
type SessionObserver interface {
	EndSession(sessionID uint64)
}

// ObserverFunc adapts a function to Observer.
type ObserverFunc func(a *Analyzed)

// Observe calls f(a).
func (f ObserverFunc) Observe(a *Analyzed) { f(a) }

// PipelineConfig configures a Pipeline. The zero value is usable.
type PipelineConfig struct {
	// QueueSize bounds the events waiting for workers. It is split evenly
	// among the workers (each has its own queue, at least one slot); when
	// an event's queue is full Offer drops the event and counts it.
	// Default 8192.
	QueueSize int
	// Workers is the number of worker goroutines that fingerprint events,
	// update statistics and call observers. Events are sharded to workers
	// by SessionID, which keeps each session's events in order. Default 2.
	Workers int
	// Fingerprint configures the fingerprint caches; its Logger is replaced
	// by Logger.
	Fingerprint FingerprintConfig
	// Stats configures the per-shape statistics.
	Stats StatsConfig
	// AuditLog, when set, receives statement records (sampled by its
	// config) for every event after the observers, periodic and final
	// stats records, and drops records. The pipeline does not close it:
	// close it after Stop returns.
	AuditLog *auditlog.Log
	// BatchDelay is how long a worker woken by a new event waits for more
	// before it drains its queue (it goes at once when the queue is half
	// full or the pipeline stops). Batching saves a wake-up per statement
	// on the relay's hot path; it delays analysis, never the relay.
	// Default 5ms; negative means no delay.
	BatchDelay time.Duration
	// DropLogInterval is how often a non-zero number of new drops is
	// logged (and written as a drops record). Default 10s.
	DropLogInterval time.Duration
	// Logger receives operational messages (drops, observer panics,
	// unparsable statements). The zero Logger discards.
	Logger zerolog.Logger
}

const (
	defaultQueueSize       = 8192
	defaultWorkers         = 2
	defaultDropLogInterval = 10 * time.Second
	defaultBatchDelay      = 5 * time.Millisecond
)

// ErrPipelineStopped is returned by Submit once the pipeline is stopping.
var ErrPipelineStopped = errors.New("analyzer pipeline stopped")

const (
	stateNew int32 = iota
	stateRunning
	stateStopping
)

// PipelineCounters are a pipeline's cumulative counters.
type PipelineCounters struct {
	// Queued is the number of events waiting for a worker now.
	Queued int `json:"queued"`
	// Processed counts events fully handled by a worker.
	Processed uint64 `json:"processed"`
	// Dropped counts events Offer could not queue (queue full, or the
	// pipeline stopping).
	Dropped uint64 `json:"dropped"`
	// ObserverPanics counts recovered panics in observers.
	ObserverPanics uint64 `json:"observer_panics"`
}

// Pipeline is the analyzer's Sink: bounded queues feeding worker goroutines
// that fingerprint each event, update per-shape statistics, and pass the
// result to observers (rules, the audit log). Each worker has its own
// queue, and every event of one session goes to the same worker, so a
// session's events are analyzed in the order they were offered.
//
// Lifecycle: NewPipeline, AddObserver (any number), Start, then Offer or
// Submit from any goroutine, then Stop. Events offered before Start wait in
// the queue; events offered after Stop began are dropped.
type Pipeline struct {
	queues     []*eventQueue // one per worker; events sharded by SessionID
	batchDelay time.Duration
	fp         *Fingerprinter
	stats      *Stats
	observers  []Observer
	audit      *auditlog.Log
	log        zerolog.Logger
	dropEvery  time.Duration

	state    atomic.Int32
	stopReq  chan struct{}
	stopOnce sync.Once
	quit     chan struct{} // closed when no more sends can happen
	done     chan struct{} // closed when workers and supervisor have exited
	wg       sync.WaitGroup

	processed, dropped, panics atomic.Uint64
	reportedDrops              uint64 // supervisor goroutine only
}

// NewPipeline returns a pipeline that is not started yet.
func NewPipeline(cfg PipelineConfig) *Pipeline {
	if cfg.QueueSize <= 0 {
		cfg.QueueSize = defaultQueueSize
	}
	if cfg.Workers <= 0 {
		cfg.Workers = defaultWorkers
	}
	if cfg.DropLogInterval <= 0 {
		cfg.DropLogInterval = defaultDropLogInterval
	}
	cfg.Fingerprint.Logger = cfg.Logger
	switch {
	case cfg.BatchDelay == 0:
		cfg.BatchDelay = defaultBatchDelay
	case cfg.BatchDelay < 0:
		cfg.BatchDelay = 0
	}
	per := max(1, (cfg.QueueSize+cfg.Workers-1)/cfg.Workers)
	queues := make([]*eventQueue, cfg.Workers)
	for i := range queues {
		queues[i] = newEventQueue(per)
	}
	return &Pipeline{
		queues:     queues,
		batchDelay: cfg.BatchDelay,
		fp:         NewFingerprinter(cfg.Fingerprint),
		stats:      NewStats(cfg.Stats),
		audit:      cfg.AuditLog,
		log:        cfg.Logger,
		dropEvery:  cfg.DropLogInterval,
		stopReq:    make(chan struct{}),
		quit:       make(chan struct{}),
		done:       make(chan struct{}),
	}
}

// AddObserver registers o. It must be called before Start; afterwards it
// returns an error and o is not registered.
func (p *Pipeline) AddObserver(o Observer) error {
	if p.state.Load() != stateNew {
		return errors.New("analyzer pipeline: AddObserver after Start")
	}
	p.observers = append(p.observers, o)
	return nil
}

// Start launches the workers and the supervisor (drop reports, periodic
// stats records). Cancelling ctx begins a stop, as Stop does, but only Stop
// waits for it. Start may be called once.
func (p *Pipeline) Start(ctx context.Context) error {
	if !p.state.CompareAndSwap(stateNew, stateRunning) {
		return errors.New("analyzer pipeline: Start called twice or after Stop")
	}
	p.wg.Add(len(p.queues))
	for _, q := range p.queues {
		go p.worker(q)
	}
	go p.supervise(ctx)
	return nil
}

// queueFor returns the queue of the worker that handles ev's session.
func (p *Pipeline) queueFor(ev *Event) *eventQueue {
	if len(p.queues) == 1 {
		return p.queues[0]
	}
	// Fibonacci hashing spreads sequential and structured ids alike; the
	// high half of the 128-bit product maps the hash onto [0, workers).
	hi, _ := bits.Mul64(ev.SessionID*0x9e3779b97f4a7c15, uint64(len(p.queues)))
	return p.queues[hi]
}

// Offer queues ev without ever blocking: when the queue of ev's worker is
// full, or the pipeline is stopping, ev is dropped and counted (see
// Dropped). It is safe to call from any number of goroutines; ev must not be
// modified afterwards. Events of one session offered from one goroutine
// reach observers in the order offered.
//
// It is the relay's whole cost per event: a lock of one worker's queue
// (see eventQueue), nothing shared by all sessions unless the event is
// dropped.
func (p *Pipeline) Offer(ev *Event) {
	if ok, _ := p.queueFor(ev).push(ev); !ok && ev.Kind != KindSessionEnd {
		// A lost session end is not a lost audit record: the observers
		// evict the session after their idle timeout instead.
		p.dropped.Add(1)
	}
}

// Submit queues ev, waiting while its worker's queue is full: it is for log readers
// (lint mode), where back-pressure is wanted and dropping is not. It returns
// ctx's error if ctx ends first and ErrPipelineStopped once Stop began.
// Never call it from the proxy's relay path.
func (p *Pipeline) Submit(ctx context.Context, ev *Event) error {
	q := p.queueFor(ev)
	for {
		ok, closed := q.push(ev)
		if ok {
			return nil
		}
		if closed {
			return ErrPipelineStopped
		}
		select {
		case <-q.space:
		case <-p.stopReq:
			// Stop began: the next push sees the queue closed.
		case <-ctx.Done():
			return fmt.Errorf("submit event: %w", ctx.Err())
		}
	}
}

// Stop stops accepting events, lets the workers drain the queue, writes the
// final drops and stats records to the audit log (if any), and waits for
// every goroutine of the pipeline to exit. If ctx ends first Stop returns
// its error; the pipeline still finishes stopping in the background. Stop
// may be called more than once, and without Start (queued events are then
// counted as dropped).
func (p *Pipeline) Stop(ctx context.Context) error {
	if p.state.CompareAndSwap(stateNew, stateStopping) {
		p.closeQueues()
		p.stopOnce.Do(func() { close(p.stopReq) })
		for _, q := range p.queues {
			p.dropped.Add(uint64(len(q.take(nil))))
		}
		close(p.quit)
		close(p.done)
		return nil
	}
	p.beginStop()
	select {
	case <-p.done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("stop analyzer pipeline: %w", ctx.Err())
	}
}

// beginStop closes the queues, so that events offered from now on are
// dropped (and Submit returns ErrPipelineStopped), and asks the
// supervisor to stop.
func (p *Pipeline) beginStop() {
	p.state.Store(stateStopping)
	p.closeQueues()
	p.stopOnce.Do(func() { close(p.stopReq) })
}

// closeQueues closes every worker's queue: when it returns, nothing more
// enters them (see eventQueue.close).
func (p *Pipeline) closeQueues() {
	for _, q := range p.queues {
		q.close()
	}
}

// worker analyzes the events of one queue in batches (see eventQueue).
func (p *Pipeline) worker(q *eventQueue) {
	defer p.wg.Done()
	var timer *time.Timer
	if p.batchDelay > 0 {
		timer = time.NewTimer(time.Hour)
		timer.Stop()
		defer timer.Stop()
	}
	var spare []*Event
	var a Analyzed // reused: an Analyzed is valid only during Observe
	fpc := p.fp.newCounters()
	drain := func() {
		for {
			batch := q.take(spare)
			if len(batch) == 0 {
				spare = batch
				return
			}
			n := uint64(0)
			for i, ev := range batch {
				if p.processCounted(ev, &a, fpc) {
					n++
				}
				batch[i] = nil
			}
			// Counted once per batch, after its events were handled: the
			// counter's cache line is written by every worker.
			p.processed.Add(n)
			spare = batch
		}
	}
	for {
		select {
		case <-q.ready:
		case <-p.quit:
			drain()
			return
		}
		if timer != nil {
			timer.Reset(p.batchDelay)
			select {
			case <-timer.C:
			case <-q.ready: // half full
				timer.Stop()
			case <-p.quit:
				timer.Stop()
			}
		}
		drain()
	}
}

// supervise reports drops, writes periodic stats records, and runs the stop
// sequence.
func (p *Pipeline) supervise(ctx context.Context) {
	defer close(p.done)
	drops := time.NewTicker(p.dropEvery)
	defer drops.Stop()
	var statsC <-chan time.Time
	if p.audit != nil && p.audit.StatsInterval() > 0 {
		t := time.NewTicker(p.audit.StatsInterval())
		defer t.Stop()
		statsC = t.C
	}
	ctxDone := ctx.Done()
	for {
		select {
		case <-ctxDone:
			ctxDone = nil
			p.beginStop()
		case <-p.stopReq:
			// beginStop closed the queues before stopReq: nothing more
			// enters them, and the workers drain what is there.
			close(p.quit)
			p.wg.Wait()
			p.reportDrops()
			p.writeStats(true)
			return
		case <-drops.C:
			p.reportDrops()
		case <-statsC:
			p.writeStats(false)
		}
	}
}

func (p *Pipeline) reportDrops() {
	total := p.dropped.Load()
	delta := total - p.reportedDrops
	if delta == 0 {
		return
	}
	p.reportedDrops = total
	p.log.Warn().Uint64("dropped", delta).Uint64("dropped_total", total).
		Msg("analyzer queue full: events dropped")
	if p.audit != nil {
		p.audit.WriteDrops(delta, total)
	}
}

func (p *Pipeline) writeStats(final bool) {
	if p.audit == nil {
		return
	}
	if err := writeAuditStats(p.audit, p.stats.Snapshot(), final); err != nil {
		p.log.Error().Err(err).Msg("write stats record")
	}
}

// process analyzes one event on a worker goroutine; a is the worker's
// scratch Analyzed (observers may not keep it), overwritten here, so that
// no Analyzed is allocated per event. It reports whether the event counts
// as processed (KindSessionEnd does not); the caller counts it.
func (p *Pipeline) process(ev *Event, a *Analyzed) bool {
	return p.processCounted(ev, a, &p.fp.shared)
}

// processCounted is process with the fingerprint lookup counted in fpc
// (the worker's own counters).
func (p *Pipeline) processCounted(ev *Event, a *Analyzed, fpc *fpCounters) bool {
	if ev.Kind == KindSessionEnd {
		for _, o := range p.observers {
			if so, ok := o.(SessionObserver); ok {
				p.endSession(so, ev.SessionID)
			}
		}
		return false
	}
	*a = Analyzed{Event: ev, TraceParent: ev.TraceParent}
	if ev.Text != "" {
		if ev.Fingerprint != 0 {
			a.Shape, a.Annotations = p.fp.LookupKnown(ev.Text, ev.Fingerprint)
		} else {
			// The detectors key a statement without bind parameters by
			// its tokens: take that hash from the fingerprinter's scan.
			lit := ev.NumParams == 0 && ev.ParamHash == 0
			a.Shape, a.Annotations, a.litKey, a.litKeyOK = p.fp.lookup(ev.Text, ev.Protocol, lit, fpc)
		}
	}
	if a.TraceParent == "" {
		a.TraceParent = a.Annotations.TraceParent
	}
	p.stats.Record(ev, a.Shape)
	for _, o := range p.observers {
		p.observe(o, a)
	}
	if p.audit != nil {
		p.observe(auditObserver{p.audit}, a)
	}
	*a = Analyzed{} // drop the references until the next event
	return true
}

// endSession calls o.EndSession, recovering a panic as observe does.
func (p *Pipeline) endSession(o SessionObserver, id uint64) {
	defer func() {
		if r := recover(); r != nil {
			n := p.panics.Add(1)
			if n <= 10 || n%1000 == 0 {
				p.log.Error().Interface("panic", r).Uint64("panics_total", n).
					Bytes("stack", debug.Stack()).Msg("analyzer observer panicked ending a session")
			}
		}
	}()
	o.EndSession(id)
}

func (p *Pipeline) observe(o Observer, a *Analyzed) {
	defer func() {
		if r := recover(); r != nil {
			n := p.panics.Add(1)
			if n <= 10 || n%1000 == 0 {
				ev := p.log.Error().Interface("panic", r).Uint64("panics_total", n).
					Bytes("stack", debug.Stack())
				if a.Shape != nil {
					ev = ev.Str("fingerprint", a.Shape.Fingerprint.String())
				}
				ev.Msg("analyzer observer panicked")
			}
		}
	}()
	o.Observe(a)
}

// Dropped returns the number of events dropped so far. Safe to call at any
// time from any goroutine.
func (p *Pipeline) Dropped() uint64 { return p.dropped.Load() }

// Counters returns the pipeline's counters. Safe to call at any time.
func (p *Pipeline) Counters() PipelineCounters {
	queued := 0
	for _, q := range p.queues {
		queued += q.len()
	}
	return PipelineCounters{
		Queued:         queued,
		Processed:      p.processed.Load(),
		Dropped:        p.dropped.Load(),
		ObserverPanics: p.panics.Load(),
	}
}

// Stats returns the pipeline's live statistics (safe for concurrent use).
func (p *Pipeline) Stats() *Stats { return p.stats }

// Fingerprinter returns the pipeline's fingerprinter (safe for concurrent
// use), e.g. for its cache counters.
func (p *Pipeline) Fingerprinter() *Fingerprinter { return p.fp }

var _ Sink = (*Pipeline)(nil)
