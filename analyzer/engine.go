package analyzer

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"

	"github.com/pgaudit-proxy/pgaudit/internal/auditlog"
	"github.com/pgaudit-proxy/pgaudit/internal/lru"
	"github.com/pgaudit-proxy/pgaudit/rules"
)

// EngineConfig configures an Engine. Only Rules needs thought; the zero
// value of everything else is usable.
type EngineConfig struct {
	// Rules is the rules configuration ([rules] in pgaudit.toml). NewEngine
	// validates it; unset thresholds take their defaults.
	Rules rules.Config
	// Stats are the per-shape statistics the slow-query rule reads
	// (normally Pipeline.Stats()). Nil turns slow-query evaluation off.
	Stats *Stats
	// AuditLog, when set, receives a finding record for every finding that
	// is new or changed significantly (see rules.Store). The engine does
	// not close it.
	AuditLog *auditlog.Log
	// Store bounds the findings kept and sets what counts as a significant
	// change.
	Store rules.StoreConfig
	// Detector bounds the N+1 detector's session state; its Rule field is
	// replaced by Rules.NPlusOne.
	Detector NPlusOneDetectorConfig
	// EvalInterval is how often the goroutine started by Start evaluates
	// the slow-query rule over Stats. Default 10s.
	EvalInterval time.Duration
	// SweepInterval is how often that goroutine closes finished N+1 runs
	// and evicts idle sessions (with the wall clock). Default 1s.
	SweepInterval time.Duration
	// IgnoreCacheSize bounds the fingerprints whose inline pgaudit:ignore
	// directives are remembered. Default 10000.
	IgnoreCacheSize int
	// Logger receives operational messages (audit log write errors). The
	// zero Logger discards.
	Logger zerolog.Logger
	// Now is the clock for sweeps and pool facts without a time, for
	// tests; default time.Now.
	Now func() time.Time
	// ResolveAfter is how long an open finding of an event-driven rule
	// (n-plus-one, txn-pooling-unsafe), or of a shape rule (slow-query,
	// seq-scan, missing-index) whose shape stopped running, stays open
	// without being seen again before it is resolved. Default 15m. Only
	// the goroutine started by Start resolves by age.
	ResolveAfter time.Duration
	// WholeInput (lint) judges the whole input at once: slow-query over
	// every execution instead of the recent window, and no resolution.
	WholeInput bool
}

const (
	defaultEvalInterval  = 10 * time.Second
	defaultSweepInterval = time.Second
	defaultIgnoreCache   = 10000
	defaultResolveAfter  = 15 * time.Minute
)

// EngineCounters are an engine's cumulative counters.
type EngineCounters struct {
	// Findings is the number of findings stored now.
	Findings int `json:"findings"`
	// Raised counts findings the rules produced (before suppression).
	Raised uint64 `json:"raised"`
	// Suppressed counts findings dropped by a disabled rule, a config
	// ignore entry or an inline pgaudit:ignore comment.
	Suppressed uint64 `json:"suppressed"`
	// Reported counts finding records written (new, changed or resolved
	// findings).
	Reported uint64 `json:"reported"`
	// Resolved counts findings resolved (their condition was gone).
	Resolved uint64 `json:"resolved"`
	// Sessions is the number of client sessions the N+1 detector tracks
	// now.
	Sessions int `json:"sessions"`
}

// Engine runs the rules: it is an Observer that feeds every event to the
// N+1 detector and turns session-state events into txn-pooling-unsafe
// findings; it evaluates slow-query over the shape statistics periodically
// and pool-saturation whenever the proxy reports pool facts; and it accepts
// findings built elsewhere (the EXPLAIN sampler) through Report. Every
// finding goes through the configuration (enabled, severity override,
// ignore entries) and inline pgaudit:ignore comments, is deduplicated in a
// rules.Store, and is written to the audit log when new or changed
// significantly.
//
// Lifecycle: NewEngine; register it with Pipeline.AddObserver; optionally
// Start (proxy mode: periodic slow-query evaluation and session sweeps);
// after the pipeline stopped, Flush (closes open N+1 runs, evaluates
// slow-query once more) and Stop. Every method is safe for concurrent
// use.
type Engine struct {
	cfg          rules.Config
	stats        *Stats
	audit        *auditlog.Log
	store        *rules.Store
	detector     *NPlusOneDetector
	cache        *CacheDetector
	ignores      *lru.Cache[Fingerprint, []string]
	log          zerolog.Logger
	now          func() time.Time
	every        time.Duration
	sweep        time.Duration
	resolveAfter time.Duration
	whole        bool

	raised, suppressed, reported, resolved atomic.Uint64

	startOnce sync.Once
	stopOnce  sync.Once
	stop      chan struct{}
	done      chan struct{}
	started   atomic.Bool
}

// NewEngine validates cfg.Rules and returns an engine that is not started.
func NewEngine(cfg EngineConfig) (*Engine, error) {
	if err := cfg.Rules.Validate(); err != nil {
		return nil, fmt.Errorf("rules config: %w", err)
	}
	rc := cfg.Rules.WithDefaults()
	if cfg.EvalInterval <= 0 {
		cfg.EvalInterval = defaultEvalInterval
	}
	if cfg.SweepInterval <= 0 {
		cfg.SweepInterval = defaultSweepInterval
	}
	if cfg.IgnoreCacheSize <= 0 {
		cfg.IgnoreCacheSize = defaultIgnoreCache
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.ResolveAfter <= 0 {
		cfg.ResolveAfter = defaultResolveAfter
	}
	e := &Engine{
		cfg:          rc,
		stats:        cfg.Stats,
		audit:        cfg.AuditLog,
		store:        rules.NewStore(cfg.Store),
		ignores:      lru.New[Fingerprint, []string](cfg.IgnoreCacheSize),
		log:          cfg.Logger,
		now:          cfg.Now,
		every:        cfg.EvalInterval,
		sweep:        cfg.SweepInterval,
		resolveAfter: cfg.ResolveAfter,
		whole:        cfg.WholeInput,
		stop:         make(chan struct{}),
		done:         make(chan struct{}),
	}
	dc := cfg.Detector
	dc.Rule = rc.NPlusOne
	e.detector = NewNPlusOneDetector(dc, e.onNPlusOne)
	e.cache = NewCacheDetector(CacheDetectorConfig{Rule: rc.CacheCandidate, WholeInput: cfg.WholeInput})
	return e, nil
}

// Observe handles one analyzed event (called by pipeline workers): it
// remembers the statement's inline ignores, raises txn-pooling-unsafe for
// a session-state event, and feeds statements to the N+1 detector.
func (e *Engine) Observe(a *Analyzed) {
	if a.Shape != nil && len(a.Annotations.Ignore) > 0 {
		e.ignores.Add(a.Shape.Fingerprint, a.Annotations.Ignore)
	}
	ev := a.Event
	if ev.Kind == KindSessionState {
		f := rules.SessionStateFacts{
			Feature:         ev.Detail,
			SessionID:       ev.SessionID,
			Database:        ev.Database,
			User:            ev.User,
			ApplicationName: ev.ApplicationName,
			ClientAddr:      ev.ClientAddr,
			TraceParent:     a.TraceParent,
			At:              ev.Start,
		}
		if a.Shape != nil {
			f.Fingerprint, f.Query = a.Shape.Fingerprint.String(), a.Shape.Normalized
		}
		if f.At.IsZero() {
			f.At = e.now()
		}
		e.record(rules.EvaluateTxnPoolingUnsafe(f, e.cfg.TxnPoolingUnsafe), false, a.Annotations.Ignore)
		return
	}
	if e.cfg.NPlusOne.IsEnabled() {
		e.detector.Observe(a)
	}
	if e.cfg.CacheCandidate.IsEnabled() {
		e.cache.Observe(a)
	}
}

// EndSession implements SessionObserver: the N+1 detector closes and
// evaluates the session's open runs and forgets it (called by a pipeline
// worker when the proxy reports the session's end).
func (e *Engine) EndSession(sessionID uint64) {
	e.detector.EndSession(sessionID)
}

// DetectorSessions returns the number of client sessions the N+1 detector
// keeps state for (for tests and introspection; safe at any time).
func (e *Engine) DetectorSessions() int { return e.detector.Sessions() }

// EvaluateCacheCandidates runs the cache-candidate rule over the read
// shapes seen in its window, as of now: it records the shapes that meet
// every threshold and resolves the open findings of those that no longer
// do. Start calls it every EvalInterval; Flush once more.
func (e *Engine) EvaluateCacheCandidates(now time.Time) {
	if !e.cfg.CacheCandidate.IsEnabled() {
		return
	}
	for _, v := range e.cache.Evaluate(now) {
		if v.Finding != nil {
			e.record(v.Finding, true, nil)
			continue
		}
		if !e.whole {
			e.resolve(rules.StableID(rules.IDCacheCandidate, v.Fingerprint), now, v.Clear)
		}
	}
}

func (e *Engine) onNPlusOne(f rules.NPlusOneFacts) {
	fin := rules.EvaluateNPlusOne(f, e.cfg.NPlusOne)
	if fin == nil {
		return
	}
	// A pgaudit:ignore on the source statement silences the loop too.
	var extra []string
	if fp, err := ParseFingerprint(f.SourceFingerprint); err == nil {
		extra, _ = e.ignores.Get(fp)
	}
	e.record(fin, false, extra)
}

// ObservePool evaluates pool-saturation over one pool's statistics. The
// proxy calls it from its statistics timer (never from the relay path),
// once per pool per period; a zero At means now.
func (e *Engine) ObservePool(f rules.PoolFacts) {
	if f.At.IsZero() {
		f.At = e.now()
	}
	fin := rules.EvaluatePoolSaturation(f, e.cfg.PoolSaturation)
	if fin == nil {
		e.resolve(rules.StableID(rules.IDPoolSaturation, f.Database+"/"+f.User), f.At,
			fmt.Sprintf("%.0f%% of %d servers busy and %d of %d acquisitions queued over the last %.0fs, below the thresholds",
				f.Utilization*100, f.Size, f.Waits, f.Acquires, f.Window.Seconds()))
		return
	}
	e.record(fin, false, nil)
}

// resolve resolves the open finding id and writes its record.
func (e *Engine) resolve(id string, at time.Time, reason string) {
	if f, ch := e.store.Resolve(id, at, reason); ch == rules.Resolved {
		e.reportResolved(f)
	}
}

func (e *Engine) reportResolved(f rules.Finding) {
	e.resolved.Add(1)
	e.reported.Add(1)
	if e.audit != nil {
		if err := e.audit.WriteFinding(f); err != nil {
			e.log.Error().Err(err).Str("finding", f.ID).Msg("write finding record")
		}
	}
}

// ResolvePlan resolves the open seq-scan and missing-index findings of a
// shape (fingerprint fp) that a new EXPLAIN of the shape, made at at, no
// longer produced; keep holds the ids it did produce.
func (e *Engine) ResolvePlan(fp string, keep []string, at time.Time) {
	for _, f := range e.store.ResolveIf(at, func(f *rules.Finding) string {
		if f.Fingerprint != fp || (f.Rule != rules.IDSeqScan && f.Rule != rules.IDMissingIndex) || slices.Contains(keep, f.ID) {
			return ""
		}
		return "the shape's plan no longer shows it (explained again at " + at.UTC().Format(time.DateTime) + " UTC)"
	}) {
		e.reportResolved(f)
	}
}

// ResolveStale resolves, as of now, the open findings not seen for
// ResolveAfter: n-plus-one and txn-pooling-unsafe by their own last
// occurrence; slow-query, seq-scan, missing-index and cache-candidate by their shape's
// latest execution (lastRun, from the statistics; the finding's LastSeen
// when the shape is unknown); pool-saturation by its last evaluation.
// Start calls it every EvalInterval.
func (e *Engine) ResolveStale(now time.Time, lastRun map[string]time.Time) {
	cutoff := now.Add(-e.resolveAfter)
	for _, f := range e.store.ResolveIf(now, func(f *rules.Finding) string {
		last := f.LastSeen
		switch f.Rule {
		case rules.IDSlowQuery, rules.IDSeqScan, rules.IDMissingIndex, rules.IDCacheCandidate:
			if t, ok := lastRun[f.Fingerprint]; ok && t.After(last) {
				last = t
			}
		}
		if last.IsZero() || !last.Before(cutoff) {
			return ""
		}
		return fmt.Sprintf("not seen for %s (last %s UTC)", e.resolveAfter, last.UTC().Format(time.DateTime))
	}) {
		e.reportResolved(f)
	}
}

// Report stores a finding built outside the engine (the EXPLAIN sampler's
// seq-scan and missing-index findings) after applying the configuration
// and inline ignores, counting it as one more occurrence. It returns what
// the store did; Unchanged as well when the finding was suppressed.
func (e *Engine) Report(f rules.Finding) rules.Change {
	return e.record(&f, false, nil)
}

// EvaluateSlowQueries runs the slow-query rule over the current shape
// statistics. Start calls it every EvalInterval; Flush once more.
func (e *Engine) EvaluateSlowQueries() {
	if e.stats == nil || !e.cfg.SlowQuery.IsEnabled() {
		return
	}
	e.evaluateSlowQueries(e.stats.TopShapes(ByTotalTime, 0))
}

// evaluateSlowQueries runs slow-query over shapes: over their recent
// window (proxy mode), resolving an open finding whose shape's recent p99
// is below the threshold; over every execution with WholeInput (lint).
func (e *Engine) evaluateSlowQueries(shapes []ShapeStats) {
	for _, st := range shapes {
		if st.Fingerprint == 0 {
			continue
		}
		f := rules.ShapeFacts{
			Fingerprint: st.Fingerprint.String(),
			Query:       st.Query,
			Calls:       st.Calls,
			Errors:      st.Errors,
			Rows:        st.Rows,
			Total:       st.Total,
			Mean:        st.Mean,
			P50:         st.P50,
			P90:         st.P90,
			P99:         st.P99,
			Max:         st.Max,
			Share:       st.Share,
			FirstSeen:   st.FirstSeen,
			LastSeen:    st.LastSeen,
		}
		if len(st.Apps) > 0 {
			f.ApplicationName = st.Apps[0].Name
		}
		if !e.whole {
			f.TotalCalls = st.Calls
			f.Calls, f.Total, f.Max = st.RecentCalls, st.RecentTotal, st.RecentMax
			f.P50, f.P90, f.P99 = st.RecentP50, st.RecentP90, st.RecentP99
			f.Mean = 0
			if f.Calls > 0 {
				f.Mean = f.Total / time.Duration(f.Calls)
			}
			f.WindowStart, f.WindowEnd = st.RecentSince, st.RecentUntil
			if reason := rules.SlowQueryCleared(f, e.cfg.SlowQuery); reason != "" {
				e.resolve(rules.StableID(rules.IDSlowQuery, f.Fingerprint), e.now(), reason)
				continue
			}
		}
		if f.Calls < uint64(e.cfg.SlowQuery.MinCalls) {
			continue
		}
		e.record(rules.EvaluateSlowQuery(f, e.cfg.SlowQuery), true, nil)
	}
}

// Sweep closes finished N+1 runs and evicts idle sessions as of now (see
// NPlusOneDetector.Sweep). Start calls it every SweepInterval.
func (e *Engine) Sweep(now time.Time) { e.detector.Sweep(now) }

// Flush ends the input: it closes and evaluates every open N+1 run and
// evaluates slow-query once more. Call it after the pipeline stopped, so no
// event is still on its way.
func (e *Engine) Flush() {
	e.detector.Flush()
	e.EvaluateSlowQueries()
	e.EvaluateCacheCandidates(e.now())
}

// record applies configuration and suppression to f and stores it;
// absolute selects Store.Set (cumulative facts) over Store.Add. extra are
// inline directives beyond those remembered for f's fingerprint.
func (e *Engine) record(f *rules.Finding, absolute bool, extra []string) rules.Change {
	if f == nil {
		return rules.Unchanged
	}
	e.raised.Add(1)
	if !e.cfg.Apply(f) || e.ignoredInline(f, extra) {
		e.suppressed.Add(1)
		return rules.Unchanged
	}
	var stored rules.Finding
	var ch rules.Change
	if absolute {
		stored, ch = e.store.Set(*f)
	} else {
		stored, ch = e.store.Add(*f)
	}
	if ch.Report() {
		e.reported.Add(1)
		if e.audit != nil {
			if err := e.audit.WriteFinding(stored); err != nil {
				e.log.Error().Err(err).Str("finding", stored.ID).Msg("write finding record")
			}
		}
	}
	return ch
}

func (e *Engine) ignoredInline(f *rules.Finding, extra []string) bool {
	if rules.IgnoredInline(extra, f.Rule) {
		return true
	}
	if f.Fingerprint == "" {
		return false
	}
	fp, err := ParseFingerprint(f.Fingerprint)
	if err != nil {
		return false
	}
	dirs, ok := e.ignores.Get(fp)
	return ok && rules.IgnoredInline(dirs, f.Rule)
}

// Findings returns the current findings, most important first (severity,
// then count; see rules.Sort). The slice is the caller's.
func (e *Engine) Findings() []rules.Finding { return e.store.Findings() }

// Store returns the engine's finding store.
func (e *Engine) Store() *rules.Store { return e.store }

// Config returns the rules configuration in force (defaults filled in).
func (e *Engine) Config() rules.Config { return e.cfg }

// Counters returns the engine's counters.
func (e *Engine) Counters() EngineCounters {
	return EngineCounters{
		Findings:   e.store.Len(),
		Raised:     e.raised.Load(),
		Suppressed: e.suppressed.Load(),
		Reported:   e.reported.Load(),
		Resolved:   e.resolved.Load(),
		Sessions:   e.detector.Sessions(),
	}
}

// Start launches the goroutine that evaluates slow-query every
// EvalInterval and sweeps N+1 sessions every SweepInterval with the wall
// clock, until ctx ends or Stop is called. It is for proxy mode; lint mode
// calls Flush instead. Start may be called once.
func (e *Engine) Start(ctx context.Context) error {
	ok := false
	e.startOnce.Do(func() { ok = true; e.started.Store(true) })
	if !ok {
		return errors.New("rules engine: Start called twice")
	}
	go e.run(ctx)
	return nil
}

func (e *Engine) run(ctx context.Context) {
	defer close(e.done)
	eval := time.NewTicker(e.every)
	defer eval.Stop()
	sweep := time.NewTicker(e.sweep)
	defer sweep.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-e.stop:
			return
		case <-sweep.C:
			e.Sweep(e.now())
		case <-eval.C:
			e.evaluate()
		}
	}
}

// evaluate runs slow-query over the recent window and resolves stale
// findings (proxy mode's periodic evaluation).
func (e *Engine) evaluate() {
	var shapes []ShapeStats
	if e.stats != nil {
		shapes = e.stats.TopShapes(ByTotalTime, 0)
	}
	if e.cfg.SlowQuery.IsEnabled() {
		e.evaluateSlowQueries(shapes)
	}
	e.EvaluateCacheCandidates(e.now())
	last := make(map[string]time.Time, len(shapes))
	for _, st := range shapes {
		if st.Fingerprint != 0 {
			last[st.Fingerprint.String()] = st.LastSeen
		}
	}
	e.ResolveStale(e.now(), last)
}

// Stop stops the goroutine started by Start and waits for it. It is
// idempotent and does nothing when Start was not called. It does not flush:
// call Flush for that.
func (e *Engine) Stop() {
	e.stopOnce.Do(func() { close(e.stop) })
	if e.started.Load() {
		<-e.done
	}
}

var _ Observer = (*Engine)(nil)
