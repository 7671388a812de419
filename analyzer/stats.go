package analyzer

import (
	"encoding/json"
	"fmt"
	"math"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// StatsConfig configures a Stats. The zero value is usable.
type StatsConfig struct {
	// MaxShapes caps the number of shapes tracked individually; events of
	// further shapes are added to the "other" bucket and counted in
	// Snapshot.Overflow. Default 5000.
	MaxShapes int
	// TopApps is the number of application_names reported per shape (the
	// most frequent ones, counted approximately with the Space-Saving
	// algorithm over 4×TopApps slots). Default 5.
	TopApps int
	// Now is the clock, for tests; default time.Now.
	Now func() time.Time
}

const (
	defaultMaxShapes = 5000
	defaultTopApps   = 5
)

// Stats aggregates events per query shape. It is safe for concurrent use:
// analyzer workers call Record while admin handlers and timers take
// snapshots. Recording one event takes a read lock on the shape map and the
// shape's own mutex.
type Stats struct {
	maxShapes int
	topApps   int
	now       func() time.Time
	since     time.Time

	mu       sync.RWMutex
	shapes   map[Fingerprint]*shapeAcc
	other    *shapeAcc
	overflow atomic.Uint64
	// gen counts Resets: a Shape's memo of its accumulator (Shape.acc) is
	// valid only for the Stats and generation it names.
	gen atomic.Uint64
}

// accMemo is a Shape's memo of its accumulator in one Stats: Record finds
// it with one pointer load instead of a read lock (an atomic write on a
// cache line every worker writes) and a map lookup.
type accMemo struct {
	stats *Stats
	gen   uint64
	acc   *shapeAcc
}

// NewStats returns an empty Stats.
func NewStats(cfg StatsConfig) *Stats {
	if cfg.MaxShapes <= 0 {
		cfg.MaxShapes = defaultMaxShapes
	}
	if cfg.TopApps <= 0 {
		cfg.TopApps = defaultTopApps
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &Stats{
		maxShapes: cfg.MaxShapes,
		topApps:   cfg.TopApps,
		now:       cfg.Now,
		since:     cfg.Now(),
		shapes:    make(map[Fingerprint]*shapeAcc),
	}
}

// shapeAcc accumulates one shape (or the other bucket).
type shapeAcc struct {
	mu         sync.Mutex
	fp         Fingerprint
	normalized string
	fallback   bool

	// sum holds the exact counters (Calls, Errors, Rows, Total, Min, Max,
	// the Wait* figures, FirstSeen, LastSeen); its other fields stay zero.
	sum    ShapeStats
	sketch *LatencySketch
	apps   appCounter
	recent recentLatency
}

// RecentHalf is half the recent latency window: a shape's Recent* figures
// cover the current half (by Event.Start, RecentHalf-aligned) and the one
// before, so between RecentHalf and 2×RecentHalf of its latest executions;
// older executions age out.
const RecentHalf = 5 * time.Minute

// recentLatency keeps two half-window sketches, by half number (Unix time
// / RecentHalf) modulo 2.
type recentLatency struct {
	epoch int64 // half of the newest execution; 0 before any
	sk    [2]*LatencySketch
	calls [2]uint64
	total [2]time.Duration
	max   [2]time.Duration
}

func (r *recentLatency) add(at time.Time, d time.Duration, bin sketchBin) {
	if at.IsZero() {
		return
	}
	e := at.Unix() / int64(RecentHalf/time.Second)
	switch {
	case e > r.epoch:
		for h := r.epoch + 1; h <= e && h <= r.epoch+2; h++ {
			i := h & 1
			r.calls[i], r.total[i], r.max[i] = 0, 0, 0
			if r.sk[i] != nil {
				r.sk[i] = nil
			}
		}
		r.epoch = e
	case e < r.epoch-1:
		return // older than the window
	}
	i := e & 1
	if r.sk[i] == nil {
		r.sk[i] = NewLatencySketch()
	}
	r.sk[i].addBin(bin)
	r.calls[i]++
	r.total[i] += d
	r.max[i] = max(r.max[i], d)
}

// fill sets st's Recent* figures.
func (r *recentLatency) fill(st *ShapeStats) {
	if r.epoch == 0 {
		return
	}
	var sk *LatencySketch
	for _, h := range []int64{r.epoch - 1, r.epoch} {
		i := h & 1
		if r.calls[i] == 0 {
			continue
		}
		if st.RecentSince.IsZero() {
			st.RecentSince = time.Unix(h*int64(RecentHalf/time.Second), 0).UTC()
		}
		st.RecentCalls += r.calls[i]
		st.RecentTotal += r.total[i]
		st.RecentMax = max(st.RecentMax, r.max[i])
		if sk == nil {
			sk = r.sk[i].Copy()
		} else {
			_ = sk.Merge(r.sk[i])
		}
	}
	if sk == nil {
		return
	}
	clamp := func(d time.Duration) time.Duration { return min(max(d, 0), st.RecentMax) }
	st.RecentP50 = clamp(sk.Quantile(0.50))
	st.RecentP90 = clamp(sk.Quantile(0.90))
	st.RecentP99 = clamp(sk.Quantile(0.99))
}

func newShapeAcc(sh *Shape, appSlots int) *shapeAcc {
	a := &shapeAcc{sketch: NewLatencySketch(), apps: appCounter{slots: appSlots}}
	if sh != nil {
		a.fp, a.normalized, a.fallback = sh.Fingerprint, sh.Normalized, sh.Fallback
	}
	return a
}

// acc returns the accumulator for sh, creating it, or the other bucket
// (overflow true) when the cap on tracked shapes is reached.
func (s *Stats) acc(sh *Shape) (a *shapeAcc, overflow bool) {
	s.mu.RLock()
	a = s.shapes[sh.Fingerprint]
	s.mu.RUnlock()
	if a != nil {
		return a, false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if a = s.shapes[sh.Fingerprint]; a != nil {
		return a, false
	}
	if len(s.shapes) < s.maxShapes {
		a = newShapeAcc(sh, 4*s.topApps)
		s.shapes[sh.Fingerprint] = a
		return a, false
	}
	return s.otherLocked(), true
}

func (s *Stats) otherLocked() *shapeAcc {
	if s.other == nil {
		s.other = newShapeAcc(nil, 4*s.topApps)
	}
	return s.other
}

// Record adds one executed statement of shape sh. Events of kind
// KindSessionState are ignored (the statement itself arrives as its own
// KindStatement event). A failed statement (SQLState set) counts as a call
// and an error and its time counts like any other. Rows below zero mean
// unknown and add nothing.
func (s *Stats) Record(ev *Event, sh *Shape) {
	if ev.Kind != KindStatement || sh == nil {
		return
	}
	gen := s.gen.Load()
	var a *shapeAcc
	if m := sh.acc.Load(); m != nil && m.stats == s && m.gen == gen {
		a = m.acc
	} else {
		var overflow bool
		a, overflow = s.acc(sh)
		if overflow {
			s.overflow.Add(1)
		} else {
			// A Reset after the load of gen leaves a memo that is
			// already stale: the next Record looks the shape up again.
			sh.acc.Store(&accMemo{stats: s, gen: gen, acc: a})
		}
	}
	bin := binOf(max(ev.Duration, 0)) // the logarithm, outside the lock
	a.mu.Lock()
	a.add(ev, bin)
	a.mu.Unlock()
}

// add records ev; bin is binOf(its duration).
func (a *shapeAcc) add(ev *Event, bin sketchBin) {
	d := max(ev.Duration, 0)
	a.sum.addOne(ev, d)
	a.sketch.addBin(bin)
	a.apps.add(ev.ApplicationName, 1)
	a.recent.add(ev.Start, d, bin)
}

// addOne adds one execution of duration d (ev.Duration, not below zero)
// to st's exact counters: the result of addCounters with a one-call
// ShapeStats of ev (TestAddOneIsAddCounters), without building one for
// every event.
func (st *ShapeStats) addOne(ev *Event, d time.Duration) {
	if st.Calls == 0 || d < st.Min {
		st.Min = d
	}
	st.Max = max(st.Max, d)
	st.Calls++
	if ev.SQLState != "" {
		st.Errors++
	}
	if ev.Rows > 0 {
		st.Rows += ev.Rows
	}
	st.Total += d
	if ev.Wait > 0 {
		st.WaitTotal += ev.Wait
		st.WaitMax = max(st.WaitMax, ev.Wait)
		st.Waited++
	}
	if !ev.Start.IsZero() && (st.FirstSeen.IsZero() || ev.Start.Before(st.FirstSeen)) {
		st.FirstSeen = ev.Start
	}
	if ev.Start.After(st.LastSeen) {
		st.LastSeen = ev.Start
	}
}

// snapshot copies a (sketch included when withSketch) into a ShapeStats
// with percentiles computed. The caller holds no lock.
func (a *shapeAcc) snapshot(topApps int, withSketch bool) ShapeStats {
	a.mu.Lock()
	defer a.mu.Unlock()
	st := a.sum
	st.Fingerprint, st.Query, st.Fallback = a.fp, a.normalized, a.fallback
	st.Apps = a.apps.top(topApps)
	st.fillQuantiles(a.sketch)
	if !withSketch {
		a.recent.fill(&st)
		st.RecentUntil = st.LastSeen
	}
	if withSketch {
		st.Sketch = a.sketch.Copy()
	}
	return st
}

// Snapshot returns a deep copy of every tracked shape (sketches included),
// sorted by total time, with shares of total database time computed. The
// snapshot is owned by the caller and does not change afterwards.
func (s *Stats) Snapshot() *Snapshot {
	return s.snapshot(true)
}

func (s *Stats) snapshot(withSketch bool) *Snapshot {
	s.mu.RLock()
	accs := make([]*shapeAcc, 0, len(s.shapes))
	for _, a := range s.shapes {
		accs = append(accs, a)
	}
	other := s.other
	since := s.since
	s.mu.RUnlock()

	snap := &Snapshot{
		Taken:    s.now(),
		Since:    since,
		Shapes:   make([]ShapeStats, 0, len(accs)),
		Overflow: s.overflow.Load(),
		TopApps:  s.topApps,
	}
	for _, a := range accs {
		snap.Shapes = append(snap.Shapes, a.snapshot(s.topApps, withSketch))
	}
	if other != nil {
		o := other.snapshot(s.topApps, withSketch)
		snap.Other = &o
	}
	snap.finish()
	return snap
}

// TopShapes returns copies of the n shapes ranking highest by the given key
// (all shapes when n <= 0). Sketch is nil in the results: use Snapshot for
// mergeable data. Safe to call concurrently with Record.
func (s *Stats) TopShapes(by SortKey, n int) []ShapeStats {
	snap := s.snapshot(false)
	return snap.Top(by, n)
}

// Merge folds a snapshot (from another proxy, a log file, or an audit log)
// into s. Shapes beyond MaxShapes go to the other bucket, as live events
// would. The snapshot is not modified.
func (s *Stats) Merge(snap *Snapshot) error {
	if snap == nil {
		return nil
	}
	for i := range snap.Shapes {
		st := &snap.Shapes[i]
		sh := &Shape{Fingerprint: st.Fingerprint, Normalized: st.Query, Fallback: st.Fallback}
		a, overflow := s.acc(sh)
		if overflow {
			s.overflow.Add(st.Calls)
		}
		a.mu.Lock()
		err := a.merge(st)
		a.mu.Unlock()
		if err != nil {
			return fmt.Errorf("merge shape %s: %w", st.Fingerprint, err)
		}
	}
	if snap.Other != nil {
		s.mu.Lock()
		a := s.otherLocked()
		s.mu.Unlock()
		a.mu.Lock()
		err := a.merge(snap.Other)
		a.mu.Unlock()
		if err != nil {
			return fmt.Errorf("merge other bucket: %w", err)
		}
	}
	s.overflow.Add(snap.Overflow)
	return nil
}

func (a *shapeAcc) merge(st *ShapeStats) error {
	if st.Calls == 0 {
		return nil
	}
	if st.Sketch != nil {
		if err := a.sketch.Merge(st.Sketch); err != nil {
			return err
		}
	}
	a.sum.addCounters(st)
	for _, ac := range st.Apps {
		a.apps.add(ac.Name, ac.Calls)
	}
	if a.normalized == "" {
		a.normalized = st.Query
	}
	return nil
}

// Reset forgets every shape and counter, starting a new period. Safe to call
// concurrently with Record; an event being recorded at that moment may land
// in either period.
func (s *Stats) Reset() {
	s.mu.Lock()
	s.gen.Add(1)
	s.shapes = make(map[Fingerprint]*shapeAcc)
	s.other = nil
	s.overflow.Store(0)
	s.since = s.now()
	s.mu.Unlock()
}

// Len returns the number of shapes tracked individually.
func (s *Stats) Len() int {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return len(s.shapes)
}

// appCounter counts application_names per shape in a bounded number of
// slots with the Space-Saving algorithm: a new name arriving when every slot
// is taken replaces the least counted one and inherits its count, so counts
// may be overestimated by at most the smallest count, and any name with more
// than total/slots calls is guaranteed to be present.
type appCounter struct {
	slots  int
	names  []string
	counts []uint64
}

func (c *appCounter) add(name string, n uint64) {
	for i, nm := range c.names {
		if nm == name {
			c.counts[i] += n
			return
		}
	}
	if len(c.names) < c.slots {
		c.names = append(c.names, name)
		c.counts = append(c.counts, n)
		return
	}
	mi := 0
	for i, v := range c.counts {
		if v < c.counts[mi] {
			mi = i
		}
	}
	c.names[mi] = name
	c.counts[mi] += n
}

func (c *appCounter) top(n int) []AppCount {
	if len(c.names) == 0 {
		return nil
	}
	out := make([]AppCount, len(c.names))
	for i := range c.names {
		out[i] = AppCount{Name: c.names[i], Calls: c.counts[i]}
	}
	sortApps(out)
	if len(out) > n {
		out = out[:n]
	}
	return out
}

func sortApps(a []AppCount) {
	slices.SortFunc(a, func(x, y AppCount) int {
		if x.Calls != y.Calls {
			if x.Calls > y.Calls {
				return -1
			}
			return 1
		}
		return strings.Compare(x.Name, y.Name)
	})
}

// AppCount is one application_name and how many calls of a shape it made.
type AppCount struct {
	Name  string `json:"name"`
	Calls uint64 `json:"calls"`
}

// ShapeStats is a snapshot of one shape's statistics. It is a plain value:
// once returned it is owned by the caller and never changes.
type ShapeStats struct {
	// Fingerprint identifies the shape; zero for the other bucket.
	Fingerprint Fingerprint
	// Query is the normalized text (no literal values); empty for the
	// other bucket.
	Query string
	// Fallback is true when pg_query could not parse the shape.
	Fallback bool
	// Calls counts executions, Errors those that failed.
	Calls, Errors uint64
	// Rows sums the row counts reported by command tags (unknown counts add
	// nothing).
	Rows int64
	// Total, Min, Max and Mean are exact; the percentiles come from Sketch
	// and are within SketchRelativeAccuracy of the true values (clamped to
	// [Min, Max]).
	Total, Min, Max, Mean time.Duration
	P50, P90, P99, P999   time.Duration
	// WaitTotal and WaitMax sum and bound Event.Wait (time spent waiting
	// for a server connection); Waited counts the calls that waited.
	WaitTotal, WaitMax time.Duration
	Waited             uint64
	// Share is Total as a fraction of the total time of every shape in the
	// snapshot (other bucket included), computed when the snapshot is made
	// or merged.
	Share float64
	// FirstSeen and LastSeen are the earliest and latest Event.Start.
	FirstSeen, LastSeen time.Time
	// Apps are the most frequent application_names with their call
	// counts, most frequent first (approximate; see StatsConfig.TopApps).
	Apps []AppCount
	// Sketch holds the latency distribution for merging; nil in
	// TopShapes results. Treat it as read-only.
	Sketch *LatencySketch

	// The Recent* figures cover the shape's latest executions only: those
	// from RecentSince (the start of the half window before the newest
	// execution's, see RecentHalf) to RecentUntil (LastSeen). Only
	// TopShapes fills them (Snapshot, which is serialized and merged,
	// leaves them zero).
	RecentCalls                     uint64
	RecentTotal, RecentMax          time.Duration
	RecentP50, RecentP90, RecentP99 time.Duration
	RecentSince, RecentUntil        time.Time
}

// fillQuantiles computes Mean and the percentiles from sk.
func (st *ShapeStats) fillQuantiles(sk *LatencySketch) {
	if st.Calls > 0 {
		st.Mean = st.Total / time.Duration(st.Calls)
	}
	if sk == nil || sk.Count() == 0 {
		return
	}
	clamp := func(d time.Duration) time.Duration { return min(max(d, st.Min), st.Max) }
	st.P50 = clamp(sk.Quantile(0.50))
	st.P90 = clamp(sk.Quantile(0.90))
	st.P99 = clamp(sk.Quantile(0.99))
	st.P999 = clamp(sk.Quantile(0.999))
}

// merge adds o into st (sketches merged, st's sketch replaced by a merged
// copy so o and any snapshot sharing st's old sketch stay untouched).
func (st *ShapeStats) merge(o *ShapeStats, topApps int) error {
	if o.Calls == 0 {
		return nil
	}
	if st.Calls == 0 {
		*st = o.clone(st)
		return nil
	}
	var sk *LatencySketch
	switch {
	case st.Sketch != nil:
		sk = st.Sketch.Copy()
		if err := sk.Merge(o.Sketch); err != nil {
			return err
		}
	case o.Sketch != nil:
		sk = o.Sketch.Copy()
	}
	st.Sketch = sk
	st.addCounters(o)
	c := appCounter{slots: 4 * max(topApps, 1)}
	for _, a := range st.Apps {
		c.add(a.Name, a.Calls)
	}
	for _, a := range o.Apps {
		c.add(a.Name, a.Calls)
	}
	st.Apps = c.top(max(topApps, 1))
	if st.Query == "" {
		st.Query = o.Query
	}
	return nil
}

// addCounters adds o's exact counters into st: calls, errors, rows and
// times summed, Min, Max and WaitMax bounded, FirstSeen and LastSeen
// widened (a zero time is unknown). It is the one merge of those counters
// for a merged accumulator and a merged snapshot alike (a recorded event
// takes addOne, its one-call form); o with no calls adds nothing.
func (st *ShapeStats) addCounters(o *ShapeStats) {
	if o.Calls == 0 {
		return
	}
	if st.Calls == 0 || o.Min < st.Min {
		st.Min = o.Min
	}
	st.Max = max(st.Max, o.Max)
	st.Calls += o.Calls
	st.Errors += o.Errors
	st.Rows += o.Rows
	st.Total += o.Total
	st.WaitTotal += o.WaitTotal
	st.WaitMax = max(st.WaitMax, o.WaitMax)
	st.Waited += o.Waited
	if !o.FirstSeen.IsZero() && (st.FirstSeen.IsZero() || o.FirstSeen.Before(st.FirstSeen)) {
		st.FirstSeen = o.FirstSeen
	}
	if o.LastSeen.After(st.LastSeen) {
		st.LastSeen = o.LastSeen
	}
}

// clone returns a copy of o with its own sketch and apps, keeping the
// identity fields of into when it has them.
func (o *ShapeStats) clone(into *ShapeStats) ShapeStats {
	c := *o
	if o.Sketch != nil {
		c.Sketch = o.Sketch.Copy()
	}
	c.Apps = slices.Clone(o.Apps)
	if into != nil && into.Query != "" {
		c.Query = into.Query
	}
	return c
}

// SortKey names a ranking for TopShapes and Snapshot.Top.
type SortKey string

const (
	// ByTotalTime ranks by total execution time (the default).
	ByTotalTime SortKey = "total_time"
	// ByCalls ranks by number of executions.
	ByCalls SortKey = "calls"
	// ByP99 ranks by 99th percentile latency.
	ByP99 SortKey = "p99"
	// ByMean ranks by mean latency.
	ByMean SortKey = "mean"
	// ByErrors ranks by number of failed executions.
	ByErrors SortKey = "errors"
)

// ParseSortKey validates a ranking name; "" means ByTotalTime.
func ParseSortKey(s string) (SortKey, error) {
	switch k := SortKey(s); k {
	case "":
		return ByTotalTime, nil
	case ByTotalTime, ByCalls, ByP99, ByMean, ByErrors:
		return k, nil
	}
	return "", fmt.Errorf("invalid sort key %q: want total_time, calls, p99, mean or errors", s)
}

func (k SortKey) value(st *ShapeStats) float64 {
	switch k {
	case ByCalls:
		return float64(st.Calls)
	case ByP99:
		return float64(st.P99)
	case ByMean:
		return float64(st.Mean)
	case ByErrors:
		return float64(st.Errors)
	default:
		return float64(st.Total)
	}
}

func sortShapes(shapes []ShapeStats, by SortKey) {
	slices.SortFunc(shapes, func(a, b ShapeStats) int {
		va, vb := by.value(&a), by.value(&b)
		if va != vb {
			if va > vb {
				return -1
			}
			return 1
		}
		switch {
		case a.Fingerprint < b.Fingerprint:
			return -1
		case a.Fingerprint > b.Fingerprint:
			return 1
		}
		return 0
	})
}

// Snapshot is a point-in-time copy of a Stats, or the merge of several. It
// is a plain value owned by whoever holds it: reading it from several
// goroutines is safe, but Merge modifies it and must not run concurrently
// with anything else on the same Snapshot.
type Snapshot struct {
	// Taken is when the snapshot was made (the latest, after a merge).
	Taken time.Time
	// Since is when counting started (the earliest, after a merge).
	Since time.Time
	// Calls and Total sum every shape and the other bucket.
	Calls uint64
	Total time.Duration
	// Shapes are the individually tracked shapes, sorted by Total
	// descending (ties by fingerprint).
	Shapes []ShapeStats
	// Other aggregates shapes beyond the cap and, in a truncated snapshot,
	// every shape not listed; nil when empty.
	Other *ShapeStats
	// Overflow counts events recorded into Other because the cap on
	// tracked shapes was reached.
	Overflow uint64
	// Omitted counts shapes folded into Other by Truncate.
	Omitted int
	// TopApps is the number of application names kept per shape.
	TopApps int
}

// finish recomputes totals, shares, means and percentiles and sorts shapes.
func (s *Snapshot) finish() {
	s.Calls, s.Total = 0, 0
	for i := range s.Shapes {
		s.Calls += s.Shapes[i].Calls
		s.Total += s.Shapes[i].Total
	}
	if s.Other != nil {
		s.Calls += s.Other.Calls
		s.Total += s.Other.Total
	}
	fix := func(st *ShapeStats) {
		if st.Sketch != nil {
			st.P50, st.P90, st.P99, st.P999 = 0, 0, 0, 0
			st.fillQuantiles(st.Sketch)
		} else if st.Calls > 0 {
			// Keep the percentiles as read; they cannot be recomputed.
			st.Mean = st.Total / time.Duration(st.Calls)
		}
		st.Share = 0
		if s.Total > 0 {
			st.Share = float64(st.Total) / float64(s.Total)
		}
	}
	for i := range s.Shapes {
		fix(&s.Shapes[i])
	}
	if s.Other != nil {
		fix(s.Other)
	}
	sortShapes(s.Shapes, ByTotalTime)
}

// Top returns copies of the n shapes ranking highest by the key (all when
// n <= 0). The copies share Sketch pointers with s; treat them as
// read-only.
func (s *Snapshot) Top(by SortKey, n int) []ShapeStats {
	out := slices.Clone(s.Shapes)
	sortShapes(out, by)
	if n > 0 && len(out) > n {
		out = out[:n]
	}
	return out
}

// Truncate returns a new snapshot holding the n shapes ranking highest by
// the key, every other shape folded into Other, so totals are unchanged.
// s is not modified.
func (s *Snapshot) Truncate(by SortKey, n int) (*Snapshot, error) {
	c := s.clone()
	if n <= 0 || len(c.Shapes) <= n {
		return c, nil
	}
	sortShapes(c.Shapes, by)
	rest := c.Shapes[n:]
	c.Shapes = c.Shapes[:n:n]
	if c.Other == nil && len(rest) > 0 {
		c.Other = &ShapeStats{}
	}
	for i := range rest {
		if err := c.Other.merge(&rest[i], c.TopApps); err != nil {
			return nil, fmt.Errorf("truncate snapshot: %w", err)
		}
	}
	c.Other.Fingerprint, c.Other.Query, c.Other.Fallback = 0, "", false
	c.Omitted += len(rest)
	c.finish()
	return c, nil
}

// clone deep-copies s (sketches included).
func (s *Snapshot) clone() *Snapshot {
	c := *s
	c.Shapes = make([]ShapeStats, len(s.Shapes))
	for i := range s.Shapes {
		c.Shapes[i] = s.Shapes[i].clone(nil)
	}
	if s.Other != nil {
		o := s.Other.clone(nil)
		c.Other = &o
	}
	return &c
}

// Merge adds o into s: shapes with the same fingerprint are combined
// (sketches merged, so percentiles stay within the sketch's accuracy), and
// totals and shares are recomputed. No cap applies. o is not modified.
func (s *Snapshot) Merge(o *Snapshot) error {
	if o == nil {
		return nil
	}
	if s.TopApps == 0 {
		s.TopApps = o.TopApps
	}
	topApps := max(s.TopApps, 1)
	idx := make(map[Fingerprint]int, len(s.Shapes))
	for i := range s.Shapes {
		idx[s.Shapes[i].Fingerprint] = i
	}
	for i := range o.Shapes {
		st := &o.Shapes[i]
		if j, ok := idx[st.Fingerprint]; ok {
			if err := s.Shapes[j].merge(st, topApps); err != nil {
				return fmt.Errorf("merge shape %s: %w", st.Fingerprint, err)
			}
			continue
		}
		idx[st.Fingerprint] = len(s.Shapes)
		s.Shapes = append(s.Shapes, st.clone(nil))
	}
	if o.Other != nil {
		if s.Other == nil {
			c := o.Other.clone(nil)
			s.Other = &c
		} else if err := s.Other.merge(o.Other, topApps); err != nil {
			return fmt.Errorf("merge other bucket: %w", err)
		}
	}
	s.Overflow += o.Overflow
	s.Omitted += o.Omitted
	if o.Taken.After(s.Taken) {
		s.Taken = o.Taken
	}
	if !o.Since.IsZero() && (s.Since.IsZero() || o.Since.Before(s.Since)) {
		s.Since = o.Since
	}
	s.finish()
	return nil
}

// MergeSnapshots returns a new snapshot combining every argument (nil ones
// are skipped); the arguments are not modified.
func MergeSnapshots(snaps ...*Snapshot) (*Snapshot, error) {
	out := &Snapshot{}
	for _, s := range snaps {
		if err := out.Merge(s); err != nil {
			return nil, err
		}
	}
	out.finish()
	return out, nil
}

// JSON forms. Durations are microseconds as JSON numbers (fractional, so
// nanosecond values survive a round trip); fingerprints are hex strings.

type shapeStatsJSON struct {
	Fingerprint *Fingerprint   `json:"fingerprint,omitempty"`
	Query       string         `json:"query,omitempty"`
	Fallback    bool           `json:"fallback,omitempty"`
	Calls       uint64         `json:"calls"`
	Errors      uint64         `json:"errors"`
	Rows        int64          `json:"rows"`
	TotalUS     float64        `json:"total_us"`
	MeanUS      float64        `json:"mean_us"`
	MinUS       float64        `json:"min_us"`
	MaxUS       float64        `json:"max_us"`
	P50US       float64        `json:"p50_us"`
	P90US       float64        `json:"p90_us"`
	P99US       float64        `json:"p99_us"`
	P999US      float64        `json:"p999_us"`
	WaitTotalUS float64        `json:"wait_total_us"`
	WaitMaxUS   float64        `json:"wait_max_us"`
	Waited      uint64         `json:"waited"`
	Share       float64        `json:"share"`
	FirstSeen   *time.Time     `json:"first_seen,omitempty"`
	LastSeen    *time.Time     `json:"last_seen,omitempty"`
	Apps        []AppCount     `json:"apps,omitempty"`
	Sketch      *LatencySketch `json:"sketch,omitempty"`
}

func us(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }

func fromUS(v float64) time.Duration {
	return time.Duration(math.Round(v * float64(time.Microsecond)))
}

func timePtr(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	t = t.UTC()
	return &t
}

// MarshalJSON writes the form documented in docs/audit-log.md.
func (st ShapeStats) MarshalJSON() ([]byte, error) {
	j := shapeStatsJSON{
		Query: st.Query, Fallback: st.Fallback,
		Calls: st.Calls, Errors: st.Errors, Rows: st.Rows,
		TotalUS: us(st.Total), MeanUS: us(st.Mean), MinUS: us(st.Min), MaxUS: us(st.Max),
		P50US: us(st.P50), P90US: us(st.P90), P99US: us(st.P99), P999US: us(st.P999),
		WaitTotalUS: us(st.WaitTotal), WaitMaxUS: us(st.WaitMax), Waited: st.Waited,
		Share:     math.Round(st.Share*1e6) / 1e6,
		FirstSeen: timePtr(st.FirstSeen), LastSeen: timePtr(st.LastSeen),
		Apps: st.Apps, Sketch: st.Sketch,
	}
	if st.Fingerprint != 0 {
		fp := st.Fingerprint
		j.Fingerprint = &fp
	}
	return json.Marshal(j)
}

// UnmarshalJSON reads the form written by MarshalJSON.
func (st *ShapeStats) UnmarshalJSON(b []byte) error {
	var j shapeStatsJSON
	if err := json.Unmarshal(b, &j); err != nil {
		return fmt.Errorf("decode shape stats: %w", err)
	}
	*st = ShapeStats{
		Query: j.Query, Fallback: j.Fallback,
		Calls: j.Calls, Errors: j.Errors, Rows: j.Rows,
		Total: fromUS(j.TotalUS), Mean: fromUS(j.MeanUS), Min: fromUS(j.MinUS), Max: fromUS(j.MaxUS),
		P50: fromUS(j.P50US), P90: fromUS(j.P90US), P99: fromUS(j.P99US), P999: fromUS(j.P999US),
		WaitTotal: fromUS(j.WaitTotalUS), WaitMax: fromUS(j.WaitMaxUS), Waited: j.Waited,
		Share: j.Share, Apps: j.Apps, Sketch: j.Sketch,
	}
	if j.Fingerprint != nil {
		st.Fingerprint = *j.Fingerprint
	}
	if j.FirstSeen != nil {
		st.FirstSeen = *j.FirstSeen
	}
	if j.LastSeen != nil {
		st.LastSeen = *j.LastSeen
	}
	return nil
}

type snapshotJSON struct {
	Taken    *time.Time   `json:"taken,omitempty"`
	Since    *time.Time   `json:"since,omitempty"`
	Calls    uint64       `json:"calls"`
	TotalUS  float64      `json:"total_us"`
	Overflow uint64       `json:"overflow"`
	Omitted  int          `json:"omitted"`
	TopApps  int          `json:"top_apps,omitempty"`
	Shapes   []ShapeStats `json:"shapes"`
	Other    *ShapeStats  `json:"other,omitempty"`
}

// MarshalJSON writes the snapshot as a JSON object (the body of a stats
// record; see docs/audit-log.md).
func (s *Snapshot) MarshalJSON() ([]byte, error) {
	shapes := s.Shapes
	if shapes == nil {
		shapes = []ShapeStats{}
	}
	return json.Marshal(snapshotJSON{
		Taken: timePtr(s.Taken), Since: timePtr(s.Since),
		Calls: s.Calls, TotalUS: us(s.Total), Overflow: s.Overflow, Omitted: s.Omitted,
		TopApps: s.TopApps, Shapes: shapes, Other: s.Other,
	})
}

// UnmarshalJSON reads the form written by MarshalJSON; totals, shares and
// percentiles are recomputed from the shapes and their sketches.
func (s *Snapshot) UnmarshalJSON(b []byte) error {
	var j snapshotJSON
	if err := json.Unmarshal(b, &j); err != nil {
		return fmt.Errorf("decode stats snapshot: %w", err)
	}
	*s = Snapshot{
		Calls: j.Calls, Total: fromUS(j.TotalUS), Overflow: j.Overflow, Omitted: j.Omitted,
		TopApps: j.TopApps, Shapes: j.Shapes, Other: j.Other,
	}
	if j.Taken != nil {
		s.Taken = *j.Taken
	}
	if j.Since != nil {
		s.Since = *j.Since
	}
	s.finish()
	return nil
}
