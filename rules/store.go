package rules

import (
	"maps"
	"math"
	"slices"
	"strings"
	"sync"
	"time"
)

// Change says what Store.Add or Store.Set did to the stored finding, so the
// caller knows whether to write a finding record.
type Change uint8

const (
	// Unchanged: a repeat of a known finding whose numbers did not move
	// enough to be worth another record.
	Unchanged Change = iota
	// New: the first finding with this id (or the first since it was
	// evicted).
	New
	// Changed: a known finding changed significantly since it was last
	// reported: its severity changed, its count at least doubled, or a
	// numeric evidence value moved by at least StoreConfig.ChangeRatio.
	Changed
	// Resolved: Store.Resolve closed an open finding.
	Resolved
)

// String returns "unchanged", "new" or "changed".
func (c Change) String() string {
	switch c {
	case New:
		return "new"
	case Changed:
		return "changed"
	case Resolved:
		return "resolved"
	}
	return "unchanged"
}

// Report reports whether the change deserves a finding record.
func (c Change) Report() bool { return c != Unchanged }

// StoreConfig configures a Store. The zero value is usable.
type StoreConfig struct {
	// MaxFindings bounds the findings kept; when full, adding a new one
	// evicts the least severe finding seen longest ago. Default 10000.
	MaxFindings int
	// ChangeRatio is the factor by which a numeric evidence value must
	// grow or shrink, relative to the last reported finding, to count as a
	// significant change. Keys ending in "_id" are identifiers and never
	// compared. Default 2.
	ChangeRatio float64
}

const (
	defaultMaxFindings = 10000
	defaultChangeRatio = 2
)

// Store keeps the current findings, deduplicated by stable id. It is safe
// for concurrent use.
type Store struct {
	mu      sync.Mutex
	max     int
	ratio   float64
	m       map[string]*entry
	evicted uint64
}

type entry struct {
	f        Finding
	reported Finding // the finding as last returned with New or Changed
}

// NewStore returns an empty Store.
func NewStore(cfg StoreConfig) *Store {
	if cfg.MaxFindings <= 0 {
		cfg.MaxFindings = defaultMaxFindings
	}
	if cfg.ChangeRatio <= 1 {
		cfg.ChangeRatio = defaultChangeRatio
	}
	return &Store{max: cfg.MaxFindings, ratio: cfg.ChangeRatio, m: make(map[string]*entry)}
}

// Add records an occurrence of f: f.Count (at least 1) more occurrences of
// the problem. A new id is stored as it is; a known id gets its Count
// increased, LastSeen advanced, FirstSeen kept, and its message, severity,
// evidence, suggestion and context replaced by f's (the latest numbers).
// It returns the stored finding after the update and what changed. f.ID
// must be set; f is not retained (its maps are copied).
func (s *Store) Add(f Finding) (Finding, Change) {
	return s.put(f, false)
}

// Set is Add for facts that are already cumulative (a shape's statistics):
// the stored Count becomes f.Count instead of growing by it.
func (s *Store) Set(f Finding) (Finding, Change) {
	return s.put(f, true)
}

func (s *Store) put(f Finding, absolute bool) (Finding, Change) {
	if f.Count <= 0 && !absolute {
		f.Count = 1
	}
	if f.LastSeen.IsZero() {
		f.LastSeen = f.FirstSeen
	}
	if f.FirstSeen.IsZero() {
		f.FirstSeen = f.LastSeen
	}
	f = f.Clone()
	f.Status, f.ResolvedAt, f.Resolution = StatusOpen, time.Time{}, ""
	s.mu.Lock()
	defer s.mu.Unlock()
	e, ok := s.m[f.ID]
	if !ok {
		if len(s.m) >= s.max {
			s.evictLocked()
		}
		e = &entry{f: f, reported: f}
		s.m[f.ID] = e
		return f.Clone(), New
	}
	old := e.f
	if !absolute {
		f.Count += old.Count
	}
	if !old.FirstSeen.IsZero() && (f.FirstSeen.IsZero() || old.FirstSeen.Before(f.FirstSeen)) {
		f.FirstSeen = old.FirstSeen
	}
	if old.LastSeen.After(f.LastSeen) {
		f.LastSeen = old.LastSeen
	}
	e.f = f
	if !old.Open() || s.significant(&e.reported, &f) {
		// Reopened, or moved enough.
		e.reported = f
		return f.Clone(), Changed
	}
	return f.Clone(), Unchanged
}

// Resolve marks the open finding id resolved at at, with a reason a person
// reads ("p99 31.9ms over the last 5m, under the 500ms threshold"). It
// returns the stored finding and Resolved, or Unchanged when id is unknown
// or already resolved. A later Add or Set of the same id reopens it.
func (s *Store) Resolve(id string, at time.Time, reason string) (Finding, Change) {
	s.mu.Lock()
	defer s.mu.Unlock()
	e, ok := s.m[id]
	if !ok || !e.f.Open() {
		return Finding{}, Unchanged
	}
	e.f.Status, e.f.ResolvedAt, e.f.Resolution = StatusResolved, at, reason
	e.reported = e.f.Clone()
	return e.f.Clone(), Resolved
}

// ResolveIf resolves every open finding for which cond returns a non-empty
// reason, at at, and returns them.
func (s *Store) ResolveIf(at time.Time, cond func(f *Finding) string) []Finding {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []Finding
	for _, e := range s.m {
		if !e.f.Open() {
			continue
		}
		if reason := cond(&e.f); reason != "" {
			e.f.Status, e.f.ResolvedAt, e.f.Resolution = StatusResolved, at, reason
			e.reported = e.f.Clone()
			out = append(out, e.f.Clone())
		}
	}
	slices.SortFunc(out, func(a, b Finding) int { return strings.Compare(a.ID, b.ID) })
	return out
}

// significant compares the last reported version of a finding with the
// current one.
func (s *Store) significant(last, cur *Finding) bool {
	if last.Severity != cur.Severity {
		return true
	}
	if cur.Count >= 2*max(last.Count, 1) {
		return true
	}
	for k, v := range cur.Evidence {
		if strings.HasSuffix(k, "_id") {
			continue // identifiers, not measurements
		}
		a, ok1 := number(last.Evidence[k])
		b, ok2 := number(v)
		if !ok1 || !ok2 {
			continue
		}
		if moved(a, b, s.ratio) {
			return true
		}
	}
	return false
}

// moved reports whether b differs from a by at least the factor ratio;
// a move from zero counts when b is at least 1 in size.
func moved(a, b, ratio float64) bool {
	a, b = math.Abs(a), math.Abs(b)
	if a == 0 || b == 0 {
		return math.Max(a, b) >= 1
	}
	return b >= a*ratio || a >= b*ratio
}

func number(v any) (float64, bool) {
	switch x := v.(type) {
	case int:
		return float64(x), true
	case int64:
		return float64(x), true
	case uint64:
		return float64(x), true
	case float64:
		return x, true
	}
	return 0, false
}

// evictLocked removes the least severe finding seen longest ago.
func (s *Store) evictLocked() {
	var victim *entry
	for _, e := range s.m {
		if victim == nil || (!e.f.Open() && victim.f.Open()) ||
			(e.f.Open() == victim.f.Open() && (e.f.Severity < victim.f.Severity ||
				(e.f.Severity == victim.f.Severity && e.f.LastSeen.Before(victim.f.LastSeen)))) {
			victim = e
		}
	}
	if victim != nil {
		delete(s.m, victim.f.ID)
		s.evicted++
	}
}

// Get returns a copy of the finding with stable id id.
func (s *Store) Get(id string) (Finding, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	e, ok := s.m[id]
	if !ok {
		return Finding{}, false
	}
	return e.f.Clone(), true
}

// Findings returns a copy of every finding, sorted by Sort.
func (s *Store) Findings() []Finding {
	s.mu.Lock()
	out := make([]Finding, 0, len(s.m))
	for _, e := range s.m {
		out = append(out, e.f.Clone())
	}
	s.mu.Unlock()
	Sort(out)
	return out
}

// Len returns the number of findings stored.
func (s *Store) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.m)
}

// Evicted returns how many findings were pushed out of a full store.
func (s *Store) Evicted() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.evicted
}

// Sort orders findings most important first: open before resolved, then
// by severity (error first), then by Count (highest first), then by ID, so
// the order is stable.
func Sort(fs []Finding) {
	slices.SortFunc(fs, func(a, b Finding) int {
		if a.Open() != b.Open() {
			if a.Open() {
				return -1
			}
			return 1
		}
		if a.Severity != b.Severity {
			return int(b.Severity) - int(a.Severity)
		}
		if a.Count != b.Count {
			if a.Count > b.Count {
				return -1
			}
			return 1
		}
		return strings.Compare(a.ID, b.ID)
	})
}

// Clone returns a copy of f with its own Evidence and Tags maps (evidence
// values themselves are shared: treat them as read-only).
func (f Finding) Clone() Finding {
	f.Evidence = maps.Clone(f.Evidence)
	f.Tags = maps.Clone(f.Tags)
	return f
}
