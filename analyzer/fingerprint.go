package analyzer

import (
	"encoding/binary"
	"hash/maphash"
	"sync"
	"sync/atomic"

	pg_query "github.com/pganalyze/pg_query_go/v6"
	"github.com/rs/zerolog"

	"github.com/pgaudit-proxy/pgaudit/internal/lru"
	"github.com/pgaudit-proxy/pgaudit/internal/pgtree"
)

// Shape is the identity of a query shape. Shapes are shared between every
// event of that shape and are immutable: callers may keep the pointer but
// must not modify or copy the value (it carries the analyzer's memo of
// what the shape does to tables).
type Shape struct {
	// Fingerprint identifies the shape.
	Fingerprint Fingerprint
	// Normalized is the statement with every literal replaced by $n and
	// comments removed, as first seen for this shape. It never contains a
	// literal value, so it is what the audit log writes.
	Normalized string
	// Fallback is true when pg_query could not parse the statement: the
	// fingerprint is then a hash of the literal-stripped text (statements
	// that differ only in literals, whitespace and comments still share it)
	// and Normalized is the sanitized original text.
	Fallback bool

	// use memoizes analyzeTableUse for the cache-candidate rule, so a
	// worker finds it without a lookup in a cache shared by the workers.
	use atomic.Pointer[tableUse]
	// acc memoizes the shape's statistics accumulator (see Stats.Record).
	acc atomic.Pointer[accMemo]
	// cc memoizes the shape's cache-candidate state (see
	// CacheDetector.Observe).
	cc atomic.Pointer[ccMemo]
}

// FingerprintConfig configures a Fingerprinter. The zero value is usable.
type FingerprintConfig struct {
	// TextCacheSize bounds the cache keyed by exact statement text, used for
	// the extended protocol (the same text is parsed once and executed many
	// times) and for statements whose literals the literal-stripped key
	// cannot stand for. Default 10000 entries.
	TextCacheSize int
	// KeyCacheSize bounds the cache keyed by the literal-stripped text, used
	// for the simple protocol and log files, where statements of one shape
	// differ only in literals. Default 10000 entries.
	KeyCacheSize int
	// Logger receives one warning per unparsable shape (with normalized text
	// only, never literals). The zero Logger discards.
	Logger zerolog.Logger
}

const (
	defaultTextCacheSize = 10000
	defaultKeyCacheSize  = 10000
	loggedFallbacks      = 1024
)

// FingerprintStats are cumulative counters of a Fingerprinter.
type FingerprintStats struct {
	// TextHits counts lookups answered by the exact-text cache.
	TextHits uint64 `json:"text_hits"`
	// KeyHits counts lookups answered by the literal-stripped key cache.
	KeyHits uint64 `json:"key_hits"`
	// Misses counts lookups that ran pg_query (a cgo call).
	Misses uint64 `json:"misses"`
	// ParseErrors counts misses where pg_query could not parse the
	// statement (each one is a distinct fallback shape while it stays
	// cached).
	ParseErrors uint64 `json:"parse_errors"`
	// FallbackLookups counts lookups, hits included, that resolved to a
	// fallback shape.
	FallbackLookups uint64 `json:"fallback_lookups"`
	// TextEntries and KeyEntries are the current cache sizes.
	TextEntries int `json:"text_entries"`
	KeyEntries  int `json:"key_entries"`
	// TextEvictions and KeyEvictions count entries pushed out of a full
	// cache.
	TextEvictions uint64 `json:"text_evictions"`
	KeyEvictions  uint64 `json:"key_evictions"`
}

// cacheKey is a 128-bit hash of the cached text: entries stay small however
// long the statement, and a collision (probability ~2^-128 per pair) is not
// a practical concern.
type cacheKey [16]byte

type cacheEntry struct {
	shape *Shape
	ann   Annotations // exact-text entries only: same text, same comments
}

// Fingerprinter maps statement text to its Shape, calling pg_query (cgo)
// once per shape rather than once per statement. It is safe for concurrent
// use by any number of goroutines, but it is meant for analyzer workers: a
// miss costs a parse (tens of microseconds), so never call it on the relay
// path.
type Fingerprinter struct {
	text   *lru.Cache[cacheKey, *cacheEntry]
	key    *lru.Cache[cacheKey, *cacheEntry]
	shapes *lru.Cache[Fingerprint, *Shape] // one *Shape per fingerprint
	logged *lru.Cache[Fingerprint, struct{}]
	log    zerolog.Logger
	seed1  maphash.Seed
	seed2  maphash.Seed
	bufs   sync.Pool

	// shared counts the lookups of Lookup and LookupKnown; each pipeline
	// worker counts its own in one of locals (see newCounters), so that
	// two workers do not write one cache line per event. Stats sums them.
	shared   fpCounters
	localsMu sync.Mutex
	locals   []*fpCounters
}

// fpCounters are a Fingerprinter's cumulative lookup counters, written by
// one goroutine (a worker's) or by any (shared), read by Stats.
type fpCounters struct {
	textHits, keyHits, misses, parseErrors, fallbacks atomic.Uint64
	_                                                 [24]byte // a cache line of its own, with the allocation's
}

// newCounters returns counters for one goroutine's lookups (lookup's c),
// included in Stats from now on.
func (f *Fingerprinter) newCounters() *fpCounters {
	c := new(fpCounters)
	f.localsMu.Lock()
	f.locals = append(f.locals, c)
	f.localsMu.Unlock()
	return c
}

// NewFingerprinter returns a Fingerprinter with empty caches.
func NewFingerprinter(cfg FingerprintConfig) *Fingerprinter {
	if cfg.TextCacheSize <= 0 {
		cfg.TextCacheSize = defaultTextCacheSize
	}
	if cfg.KeyCacheSize <= 0 {
		cfg.KeyCacheSize = defaultKeyCacheSize
	}
	f := &Fingerprinter{
		text:   lru.New[cacheKey, *cacheEntry](cfg.TextCacheSize),
		key:    lru.New[cacheKey, *cacheEntry](cfg.KeyCacheSize),
		shapes: lru.New[Fingerprint, *Shape](max(cfg.TextCacheSize, cfg.KeyCacheSize)),
		logged: lru.New[Fingerprint, struct{}](loggedFallbacks),
		log:    cfg.Logger,
		seed1:  maphash.MakeSeed(),
		seed2:  maphash.MakeSeed(),
	}
	f.bufs.New = func() any { b := make([]byte, 0, 512); return &b }
	return f
}

func (f *Fingerprinter) hashString(s string) cacheKey {
	var k cacheKey
	binary.LittleEndian.PutUint64(k[:8], maphash.String(f.seed1, s))
	binary.LittleEndian.PutUint64(k[8:], maphash.String(f.seed2, s))
	return k
}

func (f *Fingerprinter) hashBytes(b []byte) cacheKey {
	var k cacheKey
	binary.LittleEndian.PutUint64(k[:8], maphash.Bytes(f.seed1, b))
	binary.LittleEndian.PutUint64(k[8:], maphash.Bytes(f.seed2, b))
	return k
}

// Lookup returns the shape of one statement and the annotations found in
// its comments. It never fails: a statement pg_query cannot parse gets a
// fallback shape. The returned Shape and Annotations are shared and
// read-only.
//
// With ProtocolExtended the exact text is looked up first; otherwise the
// statement is scanned once to build its literal-stripped key, which is
// looked up for statements whose verb makes that key sound (see
// keySafeVerbs); the rest fall back to the exact text.
func (f *Fingerprinter) Lookup(text string, proto Protocol) (*Shape, Annotations) {
	sh, ann, _, _ := f.lookup(text, proto, false, &f.shared)
	return sh, ann
}

// lookup is Lookup, counted in c; with lit it also returns the
// statement's literal key (litOK) when it had to scan the statement
// anyway, which saves the detectors a second pass over it (see
// Analyzed.execKey).
func (f *Fingerprinter) lookup(text string, proto Protocol, lit bool, c *fpCounters) (sh *Shape, ann Annotations, litKey uint64, litOK bool) {
	var tk cacheKey
	if proto == ProtocolExtended {
		tk = f.hashString(text)
		if e, ok := f.text.Get(tk); ok {
			c.textHits.Add(1)
			return c.counted(e.shape), e.ann, 0, false
		}
	}
	bp := f.bufs.Get().(*[]byte)
	r := scanStatementLit(*bp, text, lit)
	defer func() {
		if cap(r.key) <= 64<<10 {
			*bp = r.key[:0]
			f.bufs.Put(bp)
		}
	}()
	ann = annotationsFrom(text, &r)

	var kk cacheKey
	switch {
	case r.keySafe:
		kk = f.hashBytes(r.key)
		if e, ok := f.key.Get(kk); ok {
			c.keyHits.Add(1)
			if proto == ProtocolExtended {
				f.text.Add(tk, &cacheEntry{shape: e.shape, ann: ann})
			}
			return c.counted(e.shape), ann, r.litKey, lit
		}
	case !r.sensitive:
		// Whether a statement parses depends on its tokens, not on its
		// literals' values, so an unparsable shape seen before is found by
		// its key even where the key may not stand for a fingerprint.
		kk = f.hashBytes(r.key)
		if e, ok := f.key.Get(kk); ok && e.shape.Fallback {
			c.keyHits.Add(1)
			return c.counted(e.shape), ann, r.litKey, lit
		}
		fallthrough
	default:
		if proto != ProtocolExtended {
			tk = f.hashString(text)
			if e, ok := f.text.Get(tk); ok {
				c.textHits.Add(1)
				return c.counted(e.shape), e.ann, r.litKey, lit
			}
		}
	}

	c.misses.Add(1)
	shape := f.parse(text, r.key, c)
	keyed := r.keySafe || (!r.sensitive && shape.Fallback)
	if keyed {
		f.key.Add(kk, &cacheEntry{shape: shape})
	}
	if proto == ProtocolExtended || !keyed {
		f.text.Add(tk, &cacheEntry{shape: shape, ann: ann})
	}
	return c.counted(shape), ann, r.litKey, lit
}

// LookupKnown returns the shape of a statement whose fingerprint is already
// known, such as a statement record read back from an audit log: the text
// (normalized, or raw when parameters were logged) is normalized again but
// fp is kept, so shapes keep their identity through a log round trip. No
// parse error is counted or logged. Results are cached by exact text.
func (f *Fingerprinter) LookupKnown(text string, fp Fingerprint) (*Shape, Annotations) {
	k := f.hashString(text)
	binary.LittleEndian.PutUint64(k[:8], binary.LittleEndian.Uint64(k[:8])^uint64(fp)^0x9e3779b97f4a7c15)
	if e, ok := f.text.Get(k); ok && e.shape.Fingerprint == fp {
		f.shared.textHits.Add(1)
		return e.shape, e.ann
	}
	f.shared.misses.Add(1)
	norm, err := pg_query.Normalize(text)
	if err != nil {
		norm = text
	}
	shape := &Shape{Fingerprint: fp, Normalized: sanitize(norm)}
	ann := ParseAnnotations(text)
	f.text.Add(k, &cacheEntry{shape: shape, ann: ann})
	return shape, ann
}

func (c *fpCounters) counted(s *Shape) *Shape {
	if s.Fallback {
		c.fallbacks.Add(1)
	}
	return s
}

// parse runs pg_query on a cache miss. Every lookup of one fingerprint
// returns the same *Shape while it stays in the shapes cache, so variants of
// one shape (other literals, case, whitespace) share its first normalized
// text, and Normalize (a second cgo call) runs once per shape.
func (f *Fingerprinter) parse(text string, key []byte, c *fpCounters) *Shape {
	fp, err := fingerprintOf(text)
	if err != nil {
		c.parseErrors.Add(1)
		ffp := keyHash(key)
		if s, ok := f.shapes.Get(ffp); ok {
			return s
		}
		s := &Shape{Fingerprint: ffp, Normalized: sanitize(text), Fallback: true}
		f.shapes.Add(ffp, s)
		if _, seen := f.logged.Get(s.Fingerprint); !seen {
			f.logged.Add(s.Fingerprint, struct{}{})
			msg, pos := pgtree.ParseErrorSummary(err)
			f.log.Warn().
				Str("fingerprint", s.Fingerprint.String()).
				Str("query", s.Normalized).
				Str("error", msg).
				Int("position", pos).
				Msg("pg_query could not parse statement; using a fallback fingerprint")
		}
		return s
	}
	if s, ok := f.shapes.Get(Fingerprint(fp)); ok {
		return s
	}
	norm, err := pg_query.Normalize(text)
	if err != nil {
		norm = text // sanitize still removes every literal
	}
	s := &Shape{Fingerprint: Fingerprint(fp), Normalized: sanitize(norm)}
	f.shapes.Add(s.Fingerprint, s)
	return s
}

// Stats returns the cumulative counters and current cache sizes.
func (f *Fingerprinter) Stats() FingerprintStats {
	te, tev := f.text.Stats()
	ke, kev := f.key.Stats()
	st := FingerprintStats{
		TextEntries:   te,
		KeyEntries:    ke,
		TextEvictions: tev,
		KeyEvictions:  kev,
	}
	f.localsMu.Lock()
	defer f.localsMu.Unlock()
	for _, c := range append([]*fpCounters{&f.shared}, f.locals...) {
		st.TextHits += c.textHits.Load()
		st.KeyHits += c.keyHits.Load()
		st.Misses += c.misses.Load()
		st.ParseErrors += c.parseErrors.Load()
		st.FallbackLookups += c.fallbacks.Load()
	}
	return st
}

// fingerprintOf returns the fingerprint of a statement pg_query parses:
// pg_query's, with inListMix for an IN list.
func fingerprintOf(text string) (uint64, error) {
	fp, err := pg_query.FingerprintToUInt64(text)
	if err == nil && hasInList(text) {
		fp ^= inListMix
	}
	return fp, err
}

// inListMix marks the fingerprint of a statement with an IN (...) list.
const inListMix = 0x6a09e667f3bcc909

// hasInList reports whether text has the keyword IN followed by "(" (an
// IN list or IN subquery; NOT IN included), outside literals, quoted
// identifiers and comments.
func hasInList(text string) bool {
	l := newLexer(text)
	afterIn := false
	for {
		kind, s, e, ok := l.next()
		if !ok {
			return false
		}
		switch kind {
		case tokSpace, tokComment:
			continue
		case tokIdent:
			afterIn = e-s == 2 && (text[s]|0x20) == 'i' && (text[s+1]|0x20) == 'n'
			continue
		case tokOther:
			if afterIn && text[s] == '(' {
				return true
			}
		}
		afterIn = false
	}
}
