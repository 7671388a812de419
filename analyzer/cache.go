package analyzer

import (
	"hash/maphash"
	"slices"
	"sync"
	"time"

	pg_query "github.com/pganalyze/pg_query_go/v6"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/pgaudit-proxy/pgaudit/internal/pgtree"

	"github.com/pgaudit-proxy/pgaudit/rules"
)

// Bounds of the cache detector's state: shapes tracked per window,
// parameter sets per shape, tables with write counters, parse results.
const (
	cacheMaxShapes = 2000
	cacheMaxKeys   = 4096
	cacheMaxAll    = 100000 // parameter sets over all shapes (~12 MB)
	cacheMaxTables = 10000
)

// tableUse is what a statement does to tables, from its parse tree.
type tableUse struct {
	// read is true for a plain read: a SELECT without FOR UPDATE/SHARE,
	// INTO or data-modifying WITH.
	read bool
	// reads are the tables a read reads; writes the tables a statement
	// writes (INSERT, UPDATE, DELETE, MERGE, TRUNCATE, COPY FROM), schema
	// qualified only when the statement qualifies them.
	reads, writes []string
}

// analyzeTableUse parses sql (a shape's normalized text) and says which
// tables it reads and writes. It calls pg_query (cgo): analyzer workers
// only, once per shape.
func analyzeTableUse(sql string) tableUse {
	var u tableUse
	tree, err := pg_query.Parse(sql)
	if err != nil || len(tree.GetStmts()) != 1 {
		return u
	}
	top := tree.GetStmts()[0].GetStmt()
	ctes := map[string]bool{}
	var rels []string
	locking := false
	pgtree.Walk(top.ProtoReflect(), func(m protoreflect.Message) bool {
		switch x := m.Interface().(type) {
		case *pg_query.CommonTableExpr:
			ctes[x.GetCtename()] = true
		case *pg_query.SelectStmt:
			if len(x.GetLockingClause()) > 0 || x.GetIntoClause() != nil {
				locking = true
			}
		case *pg_query.InsertStmt:
			u.writes = append(u.writes, relName(x.GetRelation()))
		case *pg_query.UpdateStmt:
			u.writes = append(u.writes, relName(x.GetRelation()))
		case *pg_query.DeleteStmt:
			u.writes = append(u.writes, relName(x.GetRelation()))
		case *pg_query.MergeStmt:
			u.writes = append(u.writes, relName(x.GetRelation()))
		case *pg_query.TruncateStmt:
			for _, n := range x.GetRelations() {
				u.writes = append(u.writes, relName(n.GetRangeVar()))
			}
		case *pg_query.CopyStmt:
			if x.GetIsFrom() && x.GetRelation() != nil {
				u.writes = append(u.writes, relName(x.GetRelation()))
			}
			return false
		case *pg_query.RangeVar:
			rels = append(rels, relName(x))
		}
		return true
	})
	u.writes = compactNames(u.writes)
	if top.GetSelectStmt() != nil && !locking && len(u.writes) == 0 {
		u.read = true
		for _, r := range rels {
			if !ctes[r] {
				u.reads = append(u.reads, r)
			}
		}
		u.reads = compactNames(u.reads)
	}
	return u
}

func relName(rv *pg_query.RangeVar) string {
	if rv == nil {
		return ""
	}
	if s := rv.GetSchemaname(); s != "" && s != "public" {
		return s + "." + rv.GetRelname()
	}
	return rv.GetRelname()
}

func compactNames(s []string) []string {
	s = slices.DeleteFunc(s, func(x string) bool { return x == "" })
	slices.Sort(s)
	return slices.Compact(s)
}

// CacheDetectorConfig configures a CacheDetector.
type CacheDetectorConfig struct {
	// Rule holds the cache-candidate thresholds (defaults for unset ones).
	Rule rules.CacheCandidateConfig
	// WholeInput (lint) never starts a new window.
	WholeInput bool
}

// CacheDetector gathers the cache-candidate rule's facts from analyzed
// events: per read shape and parameter set (keyed hash), the repeats, their
// row counts and sampled result hashes, and a cache-aside simulation for
// each of rules.CacheTTLs; per table, the statements that wrote rows to
// it. It runs in analyzer workers (Observe) and on the engine's evaluation
// tick (Evaluate); the relay only hashes sampled results. Safe for
// concurrent use.
type CacheDetector struct {
	cfg   rules.CacheCandidateConfig
	whole bool

	mu     sync.Mutex
	start  time.Time // window start
	nkeys  int       // parameter sets tracked in the window
	shapes map[Fingerprint]*cacheShape
	tables map[string]*cacheTable
	// window counts the windows started (shapes replaced): a Shape's memo
	// of its cacheShape (Shape.cc) is valid for this detector and window
	// only.
	window uint64
}

// ccMemo is a Shape's memo of its cacheShape in one detector's window:
// Observe finds it without a map lookup while it holds the detector's
// lock. Read and written under that lock.
type ccMemo struct {
	d      *CacheDetector
	window uint64
	s      *cacheShape
}

type cacheShape struct {
	fp       Fingerprint
	query    string
	tables   []*cacheTable
	names    []string
	writes0  []int64 // tables' write counters when the shape entered the window
	keys     map[uint64]*ccEntry
	calls    int64
	repeats  int64
	rowsCmp  int64
	rowsSame int64
	resCmp   int64
	resSame  int64
	hits     [len(rules.CacheTTLs)]int64
	total    time.Duration
	first    time.Time // in the window
	last     time.Time
	db, app  string
}

type ccEntry struct {
	rows int64
	hash uint64
	fill [len(rules.CacheTTLs)]time.Time // zero: nothing cached
}

type cacheTable struct {
	writes    int64
	lastWrite time.Time
}

// NewCacheDetector returns a detector with cfg's thresholds.
func NewCacheDetector(cfg CacheDetectorConfig) *CacheDetector {
	return &CacheDetector{
		cfg:    cfg.Rule,
		whole:  cfg.WholeInput,
		shapes: map[Fingerprint]*cacheShape{},
		tables: map[string]*cacheTable{},
	}
}

func (d *CacheDetector) useOf(sh *Shape) *tableUse {
	if u := sh.use.Load(); u != nil {
		return u
	}
	u := &tableUse{}
	if !sh.Fallback {
		*u = analyzeTableUse(sh.Normalized)
	}
	sh.use.Store(u) // two workers may both compute it: same value
	return u
}

// tableLocked returns the write counter of table name, nil when the table
// map is full.
func (d *CacheDetector) tableLocked(name string) *cacheTable {
	t := d.tables[name]
	if t == nil && len(d.tables) < cacheMaxTables {
		t = &cacheTable{}
		d.tables[name] = t
	}
	return t
}

// Observe feeds one analyzed event.
func (d *CacheDetector) Observe(a *Analyzed) {
	ev := a.Event
	if ev.Kind != KindStatement || a.Shape == nil || ev.SQLState != "" {
		return
	}
	u := d.useOf(a.Shape)
	at := ev.Start
	if len(u.writes) > 0 {
		if ev.Rows == 0 {
			return // wrote nothing: a cache would stay valid
		}
		end := at.Add(ev.Duration)
		d.mu.Lock()
		for _, name := range u.writes {
			if t := d.tableLocked(name); t != nil {
				t.writes++
				if end.After(t.lastWrite) {
					t.lastWrite = end
				}
			}
		}
		d.mu.Unlock()
		return
	}
	if !u.read || len(u.reads) == 0 {
		return
	}
	key := a.execKey()
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.start.IsZero() || at.Before(d.start) {
		d.start = at
	}
	var s *cacheShape
	if m := a.Shape.cc.Load(); m != nil && m.d == d && m.window == d.window {
		s = m.s
	} else if s = d.shapes[a.Shape.Fingerprint]; s != nil {
		a.Shape.cc.Store(&ccMemo{d: d, window: d.window, s: s})
	}
	if s == nil {
		if len(d.shapes) >= cacheMaxShapes {
			return
		}
		s = &cacheShape{fp: a.Shape.Fingerprint, query: a.Shape.Normalized, names: u.reads,
			keys: map[uint64]*ccEntry{}, first: at, db: ev.Database, app: ev.ApplicationName}
		for _, name := range u.reads {
			t := d.tableLocked(name)
			if t == nil {
				return
			}
			s.tables = append(s.tables, t)
			s.writes0 = append(s.writes0, t.writes)
		}
		d.shapes[s.fp] = s
		a.Shape.cc.Store(&ccMemo{d: d, window: d.window, s: s})
	}
	s.calls++
	s.total += ev.Duration
	if at.After(s.last) {
		s.last = at
	}
	k := s.keys[key]
	if k == nil {
		if len(s.keys) >= cacheMaxKeys || d.nkeys >= cacheMaxAll {
			return // counted as a miss of every TTL
		}
		d.nkeys++
		k = &ccEntry{rows: ev.Rows, hash: ev.ResultHash}
		for i := range k.fill {
			k.fill[i] = at
		}
		s.keys[key] = k
		return
	}
	s.repeats++
	if ev.Rows >= 0 && k.rows >= 0 {
		s.rowsCmp++
		if ev.Rows == k.rows {
			s.rowsSame++
		}
	}
	if ev.ResultHash != 0 && k.hash != 0 {
		s.resCmp++
		if ev.ResultHash == k.hash {
			s.resSame++
		}
	}
	k.rows = ev.Rows
	if ev.ResultHash != 0 {
		k.hash = ev.ResultHash
	}
	// Cache-aside: a hit when the entry filled at k.fill[i] is younger
	// than the TTL and no write to a table read came after the fill.
	for i, ttl := range rules.CacheTTLs {
		if at.Sub(k.fill[i]) <= ttl && !s.writtenSince(k.fill[i]) {
			s.hits[i]++
		} else {
			k.fill[i] = at
		}
	}
}

func (s *cacheShape) writtenSince(t time.Time) bool {
	for _, tb := range s.tables {
		if tb.lastWrite.After(t) {
			return true
		}
	}
	return false
}

// literalKey is a keyed hash of a simple-protocol statement's tokens: the
// literals tell its executions apart.
func literalKey(seed maphash.Seed, text string) uint64 {
	var h maphash.Hash
	h.SetSeed(seed)
	l := newLexer(text)
	for {
		kind, s, e, ok := l.next()
		if !ok {
			return h.Sum64()
		}
		if kind == tokSpace || kind == tokComment {
			continue
		}
		h.WriteString(text[s:e])
		h.WriteByte(0)
	}
}

// CacheVerdict is the evaluation of one shape: a finding, or the reason an
// open finding is resolved (empty when nothing can be said).
type CacheVerdict struct {
	Fingerprint string
	Finding     *rules.Finding
	Clear       string
}

// Evaluate judges every shape of the window as of now and, outside lint
// mode, starts a new window when the current one is older than the rule's
// window.
func (d *CacheDetector) Evaluate(now time.Time) []CacheVerdict {
	d.mu.Lock()
	defer d.mu.Unlock()
	var out []CacheVerdict
	for _, s := range d.shapes {
		f := rules.CacheFacts{
			Fingerprint: s.fp.String(), Query: s.query, Tables: s.names,
			Calls: s.calls, Repeats: s.repeats, Keys: int64(len(s.keys)),
			RowsCompared: s.rowsCmp, RowsSame: s.rowsSame,
			ResultsCompared: s.resCmp, ResultsSame: s.resSame,
			Hits: s.hits, Total: s.total,
			WindowStart: s.first, WindowEnd: now, FirstSeen: s.first, LastSeen: s.last,
			Database: s.db, ApplicationName: s.app,
		}
		if d.whole || now.Before(s.last) {
			f.WindowEnd = s.last
		}
		for i, t := range s.tables {
			f.Writes += t.writes - s.writes0[i]
		}
		fin, why := rules.EvaluateCacheCandidate(f, d.cfg)
		if fin != nil || why != "" {
			out = append(out, CacheVerdict{Fingerprint: f.Fingerprint, Finding: fin, Clear: why})
		}
	}
	window := time.Duration(d.cfg.Window)
	if window <= 0 {
		window = rules.DefaultCacheWindow
	}
	if !d.whole && !d.start.IsZero() && now.Sub(d.start) >= window {
		d.shapes = map[Fingerprint]*cacheShape{}
		d.window++
		d.start = time.Time{}
		d.nkeys = 0
	}
	return out
}
