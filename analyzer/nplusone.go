package analyzer

import (
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/pgaudit-proxy/pgaudit/internal/lru"
	"github.com/pgaudit-proxy/pgaudit/rules"
)

// NPlusOneDetectorConfig configures an NPlusOneDetector. The zero value is
// usable.
type NPlusOneDetectorConfig struct {
	// Rule holds the n-plus-one thresholds (min_repeats, max_gap); unset
	// thresholds take their defaults. Enabled and Severity are not
	// consulted here (the engine applies them).
	Rule rules.NPlusOneConfig
	// MaxSessions bounds the sessions tracked at once; when it is reached
	// the session idle longest is evicted (its runs are evaluated first).
	// Default 10000.
	MaxSessions int
	// RingSize is the number of recent statements kept per session, which
	// bounds how far back a source statement is looked for. Default 32.
	RingSize int
	// MaxRuns bounds the runs (one per repeated shape) tracked at once per
	// session; the run extended longest ago is closed to make room.
	// Default 16.
	MaxRuns int
	// IdleTimeout evicts a session (after evaluating its runs) when it had
	// no statement for this long. Default one minute.
	IdleTimeout time.Duration
	// RunTimeout closes a run that was not extended for this long, whatever
	// held it together (a transaction or trace may stay open). Default 2s.
	RunTimeout time.Duration
	// LookupCacheSize bounds the cache of parsed repeated shapes (see
	// AnalyzeLookup). Default 1024.
	LookupCacheSize int
}

const (
	defaultDetectorSessions = 10000
	defaultRingSize         = 32
	defaultMaxRuns          = 16
	defaultIdleTimeout      = time.Minute
	defaultRunTimeout       = 2 * time.Second
	defaultLookupCache      = 1024
	detectorShards          = 16
	sweepEveryEvents        = 512
)

// NPlusOneDetector finds N+1 loops in the statements of each client
// session (never across sessions) and hands the facts of every run that
// qualifies to a callback; rules.EvaluateNPlusOne turns them into findings.
//
// A run is a sequence of executions of one shape in one session. It is held
// together by one transaction (same TxSeq, InTransaction), one trace (same
// traceparent trace-id), or gaps below max_gap between its statements, and
// it follows a source statement of a different shape in the same session:
// the nearest earlier statement, tied to the run the same way, that
// returned at least min_repeats rows, with up to maxAltSources older such
// statements as fallbacks (other statements, such as other lookups of the
// same loop, and BEGIN are stepped over; COMMIT and ROLLBACK end the
// search). When the source's shape runs again before the run reached
// min_repeats, the source was a sibling lookup of the same outer loop and
// the next fallback replaces it. Without row counts (Rows -1, some log
// formats) the source must be a SELECT directly before the run (and not one
// that returns one row by its form, such as SELECT count(*)), and no other
// shape may repeat inside the run (two searches taking turns): the weaker,
// medium-confidence form. A run ends when it can no longer be extended,
// when its source shape runs again (the next iteration of an outer loop),
// at BEGIN, COMMIT or ROLLBACK (a run never spans transactions), at
// RunTimeout, or when its session is evicted; it is then evaluated: it
// qualifies with at least min_repeats executions, as many distinct
// parameter sets (ParamHash, or the statement text when there are no bind
// parameters), a source row count at least its length, and a repeated
// statement that is a single SELECT not already batched with IN or ANY.
//
// Per-session state is bounded (a ring of recent statements, a few runs,
// capped parameter sets) and idle sessions are evicted. Observe must see
// each session's events in order (the Pipeline guarantees it); it is safe
// for concurrent use across sessions.
type NPlusOneDetector struct {
	minRepeats int
	maxGap     time.Duration
	ringSize   int
	maxRuns    int
	perShard   int
	idle       time.Duration
	runTimeout time.Duration
	lookups    *lru.Cache[Fingerprint, *Lookup]
	emit       func(rules.NPlusOneFacts)
	shards     [detectorShards]detShard
}

type detShard struct {
	mu sync.Mutex
	// sessions are kept from least to most recently observed, so that
	// evicting one for a new session is O(1): with a new connection per
	// transaction (pgbench -C, serverless clients) every event is a new
	// session, and a scan of the map per event cost more than the relay.
	sessions *lru.List[uint64, *nSession]
	maxSeen  time.Time
	events   uint64
	// free holds closed runs' structs for new runs (at most maxFreeRuns):
	// a run starts for every statement that does not extend one, so this
	// saves an allocation per unit of work (per session with pgbench -C).
	free []*nRun
	// freeSessions holds ended sessions' structs, rings included, for new
	// sessions (at most maxFreeSessions): with a connection per
	// transaction every transaction starts a session.
	freeSessions []*nSession
}

// maxFreeSessions bounds detShard.freeSessions.
const maxFreeSessions = 32

// newSessionLocked returns a session for id, recycled when one is free;
// sh.mu held.
func (sh *detShard) newSessionLocked(id uint64, ringSize int) *nSession {
	if n := len(sh.freeSessions); n > 0 {
		s := sh.freeSessions[n-1]
		sh.freeSessions[n-1] = nil
		sh.freeSessions = sh.freeSessions[:n-1]
		s.id = id
		return s
	}
	return &nSession{id: id, size: ringSize, shard: sh}
}

// recycleSessionLocked keeps a session that was forgotten (taken out of
// sh.sessions, its runs closed) for newSessionLocked: emptied, with its
// ring's and runs' arrays kept; sh.mu held.
func (sh *detShard) recycleSessionLocked(s *nSession) {
	if len(sh.freeSessions) >= maxFreeSessions {
		return
	}
	clear(s.ring) // drop the shapes and trace ids it points to
	clear(s.runs[:cap(s.runs)])
	*s = nSession{ring: s.ring[:0], runs: s.runs[:0], size: s.size, shard: sh}
	sh.freeSessions = append(sh.freeSessions, s)
}

// maxFreeRuns bounds detShard.free.
const maxFreeRuns = 32

// newRunLocked returns a zeroed run, recycled when one is free; sh.mu held.
func (sh *detShard) newRunLocked() *nRun {
	if n := len(sh.free); n > 0 {
		run := sh.free[n-1]
		sh.free[n-1] = nil
		sh.free = sh.free[:n-1]
		return run
	}
	return new(nRun)
}

// recycleLocked zeroes a run that was closed (copied into a closedRun and
// taken out of its session) and keeps it for newRunLocked; sh.mu held.
func (sh *detShard) recycleLocked(run *nRun) {
	if len(sh.free) < maxFreeRuns {
		*run = nRun{}
		sh.free = append(sh.free, run)
	}
}

// recent is what a session remembers of one statement. It is kept
// small (80 bytes; the end is start+dur, see end): a session's ring holds
// 32 of them, and with many sessions each push lands on a cold line.
type recent struct {
	shape    *Shape
	start    time.Time
	dur      time.Duration // Event.Duration, not below zero
	rows     int64
	txSeq    uint64
	inTx     bool
	txCtl    bool // BEGIN, COMMIT, ROLLBACK...
	txEnd    bool // COMMIT, ROLLBACK, END, ABORT
	isSelect bool
	failed   bool
	trace    string // trace-id of the traceparent
}

type nRun struct {
	shape       *Shape
	count       int
	distinct    distinctSet
	total       time.Duration
	first       time.Time
	lastEnd     time.Time
	txSeq       uint64
	trace       string
	traceParent string
	sameTx      bool
	sameTrace   bool
	gapsOK      bool
	hasSource   bool
	source      recent
	immediate   bool // the source directly preceded the run
	// alt are older source candidates (nearest first) behind source, each
	// returning at least min_repeats rows: when source's shape runs again
	// before the run reached min_repeats, source was a sibling lookup of
	// the same outer loop (reviews and author per book) and the next
	// candidate takes its place.
	alt []recent
	// others are shapes of other statements seen while the run was open;
	// interleaved is set when one of them ran twice: another lookup
	// repeats inside this loop.
	others      [4]Fingerprint
	nothers     int
	interleaved bool
}

// maxAltSources bounds nRun.alt.
const maxAltSources = 3

type nSession struct {
	// ring holds the recent statements: it grows by append up to its
	// size (most sessions, one per transaction with pgbench -C or a
	// serverless client, never fill it), then wraps at next.
	ring                  []recent
	size                  int // the ring's full length (RingSize)
	shard                 *detShard
	next, n               int
	runs                  []*nRun
	last                  time.Time
	db, user, app, client string
	id                    uint64
}

// closedRun is a run taken out of its session, evaluated outside the lock.
type closedRun struct {
	run                   nRun
	distinct              int
	sessionID             uint64
	db, user, app, client string
}

// NewNPlusOneDetector returns a detector that calls emit with the facts of
// every qualifying run. emit is called from the goroutine calling Observe,
// Sweep or Flush, with no detector lock held; it must be safe for
// concurrent use.
func NewNPlusOneDetector(cfg NPlusOneDetectorConfig, emit func(rules.NPlusOneFacts)) *NPlusOneDetector {
	r := cfg.Rule
	d := &NPlusOneDetector{
		minRepeats: r.MinRepeats,
		maxGap:     time.Duration(r.MaxGap),
		ringSize:   cfg.RingSize,
		maxRuns:    cfg.MaxRuns,
		idle:       cfg.IdleTimeout,
		runTimeout: cfg.RunTimeout,
		emit:       emit,
	}
	if d.minRepeats < 2 {
		d.minRepeats = rules.DefaultNPlusOneMinRepeats
	}
	if d.maxGap <= 0 {
		d.maxGap = rules.DefaultNPlusOneMaxGap
	}
	if d.ringSize <= 0 {
		d.ringSize = defaultRingSize
	}
	if d.maxRuns <= 0 {
		d.maxRuns = defaultMaxRuns
	}
	if d.idle <= 0 {
		d.idle = defaultIdleTimeout
	}
	if d.runTimeout <= 0 {
		d.runTimeout = defaultRunTimeout
	}
	maxSessions := cfg.MaxSessions
	if maxSessions <= 0 {
		maxSessions = defaultDetectorSessions
	}
	d.perShard = max(1, (maxSessions+detectorShards-1)/detectorShards)
	lc := cfg.LookupCacheSize
	if lc <= 0 {
		lc = defaultLookupCache
	}
	d.lookups = lru.New[Fingerprint, *Lookup](lc)
	for i := range d.shards {
		d.shards[i].sessions = lru.NewList[uint64, *nSession](0)
	}
	if d.emit == nil {
		d.emit = func(rules.NPlusOneFacts) {}
	}
	return d
}

func (d *NPlusOneDetector) shard(id uint64) *detShard {
	return &d.shards[(id*0x9e3779b97f4a7c15)>>60]
}

// Observe feeds one analyzed event. Session-state events and events without
// a shape are ignored.
func (d *NPlusOneDetector) Observe(a *Analyzed) {
	ev := a.Event
	if ev.Kind != KindStatement || a.Shape == nil {
		return
	}
	r := d.recentOf(a)
	// Simple protocol: the literals tell executions apart (a statement
	// read back from an audit log carries their keyed hash in ParamHash
	// instead).
	key := a.execKey()
	sh := d.shard(ev.SessionID)
	var buf [2]closedRun // runs closed by one event, usually none: no allocation
	closed := buf[:0]
	sh.mu.Lock()
	s, ok := sh.sessions.Get(ev.SessionID) // now the most recently observed
	if !ok {
		if sh.sessions.Len() >= d.perShard {
			closed = d.evictOldestLocked(sh, closed)
		}
		s = sh.newSessionLocked(ev.SessionID, d.ringSize)
		sh.sessions.Add(ev.SessionID, s)
	}
	s.db, s.user, s.app, s.client = ev.Database, ev.User, ev.ApplicationName, ev.ClientAddr
	if r.start.After(s.last) {
		s.last = r.start
	}
	closed = d.observeLocked(s, &r, key, a.TraceParent, closed)
	if r.start.After(sh.maxSeen) {
		sh.maxSeen = r.start
	}
	sh.events++
	if sh.events%sweepEveryEvents == 0 && !sh.maxSeen.IsZero() {
		closed = d.sweepLocked(sh, sh.maxSeen, closed)
	}
	sh.mu.Unlock()
	d.finish(closed)
}

func (d *NPlusOneDetector) recentOf(a *Analyzed) recent {
	ev := a.Event
	r := recent{
		shape:  a.Shape,
		start:  ev.Start,
		rows:   ev.Rows,
		txSeq:  ev.TxSeq,
		inTx:   ev.InTransaction,
		failed: ev.SQLState != "",
		trace:  traceID(a.TraceParent),
	}
	if !ev.Start.IsZero() {
		r.dur = max(ev.Duration, 0)
	}
	cmd := strings.ToUpper(ev.Command)
	if cmd == "" {
		cmd = strings.ToUpper(firstKeyword(ev.Text))
	}
	switch cmd {
	case "BEGIN", "START", "START TRANSACTION":
		r.txCtl = true
	case "COMMIT", "ROLLBACK", "END", "ABORT":
		r.txCtl, r.txEnd = true, true
	case "SELECT", "WITH", "TABLE", "VALUES":
		r.isSelect = true
	}
	return r
}

// end is when the statement ended: its start plus its duration, zero
// when the start is unknown.
func (r *recent) end() time.Time {
	if r.start.IsZero() {
		return time.Time{}
	}
	return r.start.Add(r.dur)
}

// traceID returns the trace-id field of a W3C traceparent, or the whole
// value when it is not in that form.
func traceID(tp string) string {
	if len(tp) >= 36 && tp[2] == '-' && tp[35] == '-' {
		return tp[3:35]
	}
	return tp
}

// firstKeyword returns the first word of a statement, skipping comments,
// whitespace and opening parentheses.
func firstKeyword(text string) string {
	l := newLexer(text)
	for {
		kind, s, e, ok := l.next()
		if !ok {
			return ""
		}
		switch kind {
		case tokSpace, tokComment:
			continue
		case tokOther:
			if text[s:e] == "(" {
				continue
			}
			return ""
		case tokIdent:
			return text[s:e]
		default:
			return ""
		}
	}
}

// observeLocked applies one statement to its session; sh.mu held.
func (d *NPlusOneDetector) observeLocked(s *nSession, r *recent, key uint64, traceParent string, closed []closedRun) []closedRun {
	fp := r.shape.Fingerprint
	// Runs of other shapes that this statement shows are over.
	kept := s.runs[:0]
	var own *nRun
	for _, run := range s.runs {
		switch {
		case run.shape.Fingerprint == fp:
			own = run
			kept = append(kept, run)
		case d.endedBy(run, r):
			closed = append(closed, s.closed(run))
		default:
			if !r.txCtl {
				run.noteOther(fp)
			}
			kept = append(kept, run)
		}
	}
	clear(s.runs[len(kept):])
	s.runs = kept

	if !r.failed && !r.txCtl {
		if own != nil && !d.extend(own, r) {
			closed = append(closed, s.closed(own))
			s.removeRun(own)
			own = nil
		}
		if own == nil {
			if len(s.runs) >= d.maxRuns {
				oldest := s.runs[0]
				for _, run := range s.runs[1:] {
					if run.lastEnd.Before(oldest.lastEnd) {
						oldest = run
					}
				}
				closed = append(closed, s.closed(oldest))
				s.removeRun(oldest)
			}
			own = d.startRun(s, r, traceParent)
			s.runs = append(s.runs, own)
		}
		own.count++
		own.distinct.add(key)
		if end := r.end(); !r.start.IsZero() && !end.IsZero() {
			own.total += end.Sub(r.start)
		}
		if end := r.end(); end.After(own.lastEnd) {
			own.lastEnd = end
		}
	}
	s.push(*r)
	return closed
}

// noteOther records a statement of shape fp run while the run is open.
func (run *nRun) noteOther(fp Fingerprint) {
	for _, o := range run.others[:run.nothers] {
		if o == fp {
			run.interleaved = true
			return
		}
	}
	if run.nothers < len(run.others) {
		run.others[run.nothers] = fp
		run.nothers++
	}
}

// tied reports whether b, which came after a, belongs with it: same
// transaction, same trace, or a gap below max_gap.
func (d *NPlusOneDetector) tied(a, b *recent) bool {
	if a.inTx && b.inTx && a.txSeq == b.txSeq {
		return true
	}
	if a.trace != "" && a.trace == b.trace {
		return true
	}
	return d.gapOK(a.end(), b.start)
}

func (d *NPlusOneDetector) gapOK(end, start time.Time) bool {
	return !end.IsZero() && !start.IsZero() && start.Sub(end) < d.maxGap
}

// endedBy reports whether statement e (of another shape) ends run: e is
// the run's source shape again (the outer loop moved on), e could be a
// source for a run that has none, e begins or ends a transaction (a run
// never spans transactions: a loop of transactions is a loop of
// independent units of work, as in pgbench or sysbench), or no later
// statement could extend the run any more.
func (d *NPlusOneDetector) endedBy(run *nRun, e *recent) bool {
	if e.txCtl {
		return true
	}
	if run.hasSource && e.shape.Fingerprint == run.source.shape.Fingerprint {
		if run.source.rows >= 0 && run.count < d.minRepeats && len(run.alt) > 0 {
			// The source was a sibling lookup of the loop (it runs once
			// per outer row, as this shape does): fall back to the older
			// candidate.
			run.source, run.alt, run.immediate = run.alt[0], run.alt[1:], false
		} else {
			return true
		}
	}
	for i := range run.alt {
		if e.shape.Fingerprint == run.alt[i].shape.Fingerprint {
			return true // the outer loop moved on
		}
	}
	if !run.hasSource && !e.failed && (e.rows >= int64(d.minRepeats) || (e.rows < 0 && e.isSelect)) {
		return true
	}
	tx := run.sameTx && e.inTx && e.txSeq == run.txSeq && !e.txEnd
	trace := run.sameTrace && (e.trace == "" || e.trace == run.trace)
	gap := run.gapsOK && (e.start.IsZero() || e.start.Sub(run.lastEnd) < d.maxGap)
	return !tx && !trace && !gap
}

// extend checks that x (of the run's shape) continues run and narrows the
// run's ties to those x keeps.
func (d *NPlusOneDetector) extend(run *nRun, x *recent) bool {
	tx := run.sameTx && x.inTx && x.txSeq == run.txSeq
	trace := run.sameTrace && x.trace == run.trace
	gap := run.gapsOK && d.gapOK(run.lastEnd, x.start)
	if !tx && !trace && !gap {
		return false
	}
	run.sameTx, run.sameTrace, run.gapsOK = tx, trace, gap
	return true
}

// startRun begins a run with x, looking for its source in the ring (before
// x is pushed).
func (d *NPlusOneDetector) startRun(s *nSession, x *recent, traceParent string) *nRun {
	run := s.shard.newRunLocked()
	*run = nRun{
		shape:       x.shape,
		first:       x.start,
		txSeq:       x.txSeq,
		trace:       x.trace,
		traceParent: traceParent,
		sameTx:      x.inTx,
		sameTrace:   x.trace != "",
		gapsOK:      !x.start.IsZero(),
	}
	// Walk back from the newest statement. BEGIN is stepped over (a loop
	// may run in a transaction opened after its source); COMMIT and
	// ROLLBACK end the search, as does a statement not tied to the one
	// after it or an earlier execution of the same shape.
	next := x
	between := 0 // statements stepped over, BEGIN aside
	for i := 0; i < s.n; i++ {
		c := s.back(i)
		if c.shape.Fingerprint == x.shape.Fingerprint || c.txEnd || !d.tied(c, next) {
			break
		}
		next = c
		if c.txCtl {
			continue
		}
		if c.failed {
			between++
			continue
		}
		if c.rows >= 0 {
			if c.rows >= int64(d.minRepeats) {
				if !run.hasSource {
					run.hasSource, run.source, run.immediate = true, *c, between == 0
				} else {
					run.alt = append(run.alt, *c)
				}
				if len(run.alt) >= maxAltSources {
					break
				}
			}
			// A sibling lookup of the same loop (or a candidate source
			// that may turn out to be one): step over it.
			between++
			continue
		}
		if run.hasSource {
			break
		}
		if between == 0 && c.isSelect {
			run.hasSource, run.source, run.immediate = true, *c, true
		}
		break
	}
	return run
}

// ringStart is the capacity a session's ring starts with.
const ringStart = 2

// push adds r to the ring.
func (s *nSession) push(r recent) {
	if len(s.ring) < s.size {
		if s.ring == nil {
			s.ring = make([]recent, 0, min(ringStart, s.size))
		}
		s.ring = append(s.ring, r)
		s.n = len(s.ring)
		s.next = s.n % s.size
		return
	}
	s.ring[s.next] = r
	s.next = (s.next + 1) % len(s.ring)
}

// back returns the i-th most recent statement (0 = the latest).
func (s *nSession) back(i int) *recent {
	j := (s.next - 1 - i + 2*len(s.ring)) % len(s.ring)
	return &s.ring[j]
}

func (s *nSession) removeRun(run *nRun) {
	s.runs = slices.DeleteFunc(s.runs, func(r *nRun) bool { return r == run })
}

// closed copies run out for evaluation and recycles its struct: the caller
// has taken run out of s.runs, or does so before the next run starts, and
// uses the pointer for nothing but that; s.shard.mu held.
func (s *nSession) closed(run *nRun) closedRun {
	c := closedRun{run: *run, distinct: run.distinct.count(), sessionID: s.id,
		db: s.db, user: s.user, app: s.app, client: s.client}
	c.run.distinct = distinctSet{}
	s.shard.recycleLocked(run)
	return c
}

// evictOldestLocked forgets the least recently observed session of sh.
func (d *NPlusOneDetector) evictOldestLocked(sh *detShard, closed []closedRun) []closedRun {
	if id, oldest, ok := sh.sessions.Oldest(); ok {
		closed = closeAll(oldest, closed)
		sh.sessions.Remove(id)
		sh.recycleSessionLocked(oldest)
	}
	return closed
}

func closeAll(s *nSession, closed []closedRun) []closedRun {
	for _, run := range s.runs {
		closed = append(closed, s.closed(run))
	}
	clear(s.runs)
	s.runs = s.runs[:0]
	return closed
}

// sweepLocked closes runs not extended for RunTimeout and evicts sessions
// idle for IdleTimeout, as of now; sh.mu held.
func (d *NPlusOneDetector) sweepLocked(sh *detShard, now time.Time, closed []closedRun) []closedRun {
	for id, s := range sh.sessions.All() {
		if now.Sub(s.last) >= d.idle {
			closed = closeAll(s, closed)
			sh.sessions.Remove(id)
			sh.recycleSessionLocked(s)
			continue
		}
		kept := s.runs[:0]
		for _, run := range s.runs {
			if now.Sub(run.lastEnd) >= d.runTimeout {
				closed = append(closed, s.closed(run))
			} else {
				kept = append(kept, run)
			}
		}
		clear(s.runs[len(kept):])
		s.runs = kept
	}
	return closed
}

// EndSession closes and evaluates every open run of session id and forgets
// the session, as an idle eviction would but at once: the proxy reports
// the end of each client session (event.KindSessionEnd), so a workload of
// short connections does not keep up to MaxSessions dead sessions (and
// sweep them) until IdleTimeout. Safe for concurrent use; a session the
// detector does not know is ignored.
func (d *NPlusOneDetector) EndSession(id uint64) {
	sh := d.shard(id)
	var buf [2]closedRun // a session's open runs, usually one: no allocation
	closed := buf[:0]
	sh.mu.Lock()
	if s, ok := sh.sessions.Get(id); ok {
		closed = closeAll(s, closed)
		sh.sessions.Remove(id)
		sh.recycleSessionLocked(s)
	}
	sh.mu.Unlock()
	d.finish(closed)
}

// Sweep closes and evaluates runs not extended for RunTimeout before now,
// and evicts sessions idle for IdleTimeout. The proxy calls it
// periodically with the wall clock; a log reader need not (Observe sweeps
// by event time as it goes, and Flush ends the input).
func (d *NPlusOneDetector) Sweep(now time.Time) {
	for i := range d.shards {
		sh := &d.shards[i]
		sh.mu.Lock()
		closed := d.sweepLocked(sh, now, nil)
		sh.mu.Unlock()
		d.finish(closed)
	}
}

// Flush closes and evaluates every open run and forgets every session:
// call it at the end of the input (a log file), after the pipeline
// stopped.
func (d *NPlusOneDetector) Flush() {
	for i := range d.shards {
		sh := &d.shards[i]
		sh.mu.Lock()
		var closed []closedRun
		for id, s := range sh.sessions.All() {
			closed = closeAll(s, closed)
			sh.sessions.Remove(id)
		}
		sh.mu.Unlock()
		d.finish(closed)
	}
}

// Sessions returns the number of sessions tracked now.
func (d *NPlusOneDetector) Sessions() int {
	n := 0
	for i := range d.shards {
		sh := &d.shards[i]
		sh.mu.Lock()
		n += sh.sessions.Len()
		sh.mu.Unlock()
	}
	return n
}

// lookup returns the parse-tree description of a shape, cached.
func (d *NPlusOneDetector) lookup(sh *Shape) *Lookup {
	if lk, ok := d.lookups.Get(sh.Fingerprint); ok {
		return lk
	}
	lk := AnalyzeLookup(sh.Normalized)
	d.lookups.Add(sh.Fingerprint, &lk)
	return &lk
}

// finish evaluates closed runs and emits the facts of those that qualify.
func (d *NPlusOneDetector) finish(closed []closedRun) {
	for i := range closed {
		if f, ok := d.facts(&closed[i]); ok {
			d.emit(f)
		}
	}
}

// facts checks a closed run against the thresholds and builds its facts.
func (d *NPlusOneDetector) facts(c *closedRun) (rules.NPlusOneFacts, bool) {
	run := &c.run
	if run.count < d.minRepeats || c.distinct < d.minRepeats || !run.hasSource {
		return rules.NPlusOneFacts{}, false
	}
	src := &run.source
	var form string
	switch {
	case src.rows >= 0:
		if src.rows < int64(run.count) {
			return rules.NPlusOneFacts{}, false
		}
		form = rules.FormRowCount
	case run.interleaved:
		// Without row counts, a loop that alternates with another
		// repeated statement (two searches taking turns) cannot be told
		// from lazy loads whose keys come from a source: no finding.
		return rules.NPlusOneFacts{}, false
	case run.sameTx && src.inTx && src.txSeq == run.txSeq:
		form = rules.FormInTransaction
	case run.immediate && src.isSelect:
		form = rules.FormAfterSelect
	default:
		return rules.NPlusOneFacts{}, false
	}
	if src.shape.Fallback || run.shape.Fallback {
		return rules.NPlusOneFacts{}, false
	}
	if src.rows < 0 && d.lookup(src.shape).SingleRow {
		// Without a row count, a source that returns one row by its very
		// form (SELECT count(*) FROM t, SELECT now()) drives no loop.
		return rules.NPlusOneFacts{}, false
	}
	lk := d.lookup(run.shape)
	if !lk.Select || lk.Batch {
		return rules.NPlusOneFacts{}, false
	}
	tie := rules.TieGap
	switch {
	case run.sameTx:
		tie = rules.TieTransaction
	case run.sameTrace:
		tie = rules.TieTrace
	}
	f := rules.NPlusOneFacts{
		Fingerprint:       run.shape.Fingerprint.String(),
		Query:             run.shape.Normalized,
		Repeats:           run.count,
		DistinctParams:    c.distinct,
		Total:             run.total,
		SourceFingerprint: src.shape.Fingerprint.String(),
		SourceQuery:       src.shape.Normalized,
		SourceRows:        src.rows,
		Table:             lk.Table,
		Column:            lk.Column,
		Rewrite:           lk.Rewrite,
		Batch:             lk.Batch,
		Form:              form,
		Tie:               tie,
		SessionID:         c.sessionID,
		Database:          c.db,
		User:              c.user,
		ApplicationName:   c.app,
		ClientAddr:        c.client,
		TraceParent:       run.traceParent,
		First:             run.first,
		Last:              run.lastEnd,
	}
	if !run.first.IsZero() && !run.lastEnd.IsZero() {
		f.Span = run.lastEnd.Sub(run.first)
	}
	return f, true
}
