package analyzer

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pgaudit-proxy/pgaudit/internal/auditlog"
	"github.com/pgaudit-proxy/pgaudit/internal/testutil"
	"github.com/pgaudit-proxy/pgaudit/rules"
)

// session builds the Event sequence of one client session with a moving
// clock, the way the proxy stamps events.
type session struct {
	id     uint64
	now    time.Time
	txSeq  uint64
	inTx   bool
	proto  Protocol
	rowsOK bool // false: Rows -1, as a log without row counts
	trace  string
	events []*Event
}

func newSession(id uint64, proto Protocol) *session {
	return &session{id: id, now: t0.Add(time.Duration(id) * time.Minute), proto: proto, rowsOK: true}
}

// exec appends one statement that took d and returned rows rows, then
// advances the clock by d plus gap.
func (s *session) exec(text string, rows int64, d, gap time.Duration, params ...uint64) *Event {
	cmd := strings.ToUpper(firstKeyword(text))
	switch cmd {
	case "BEGIN", "START":
		s.txSeq++
		s.inTx = false // BEGIN itself runs outside the block
	case "":
	default:
		if !s.inTx {
			s.txSeq++
		}
	}
	ev := &Event{
		Kind: KindStatement, Protocol: s.proto, Text: text,
		SessionID: s.id, TxSeq: s.txSeq, InTransaction: s.inTx,
		Database: "app", User: "app", ApplicationName: "shop",
		Start: s.now, Duration: d, Command: cmd, Rows: rows,
		TraceParent: s.trace,
	}
	switch cmd {
	case "BEGIN", "START":
		s.inTx = true
		ev.Command = "BEGIN"
	case "COMMIT", "END", "ROLLBACK":
		ev.InTransaction = true
		s.inTx = false
		ev.Command = "COMMIT"
	}
	if !s.rowsOK {
		ev.Rows = -1
		ev.Command = ""
	}
	if len(params) > 0 {
		ev.NumParams = len(params)
		h := uint64(1469598103934665603)
		for _, p := range params {
			h = (h ^ p) * 1099511628211
		}
		ev.ParamHash = h
	}
	s.events = append(s.events, ev)
	s.now = s.now.Add(d + gap)
	return ev
}

const (
	fast  = 300 * time.Microsecond
	small = 200 * time.Microsecond
)

func traceParent(trace, span int) string {
	return fmt.Sprintf("00-%032x-%016x-01", trace, span)
}

// Scenarios. Each returns the events of one or more sessions, in the order
// a single worker would see them for each session.
type scenario struct {
	name   string
	events func() []*Event
	// want is the number of N+1 findings expected.
	want int
}

func ormExtended() []*Event {
	s := newSession(1, ProtocolExtended)
	s.exec("SELECT id, title, author_id FROM books WHERE published > $1 ORDER BY id LIMIT $2", 20, 2*time.Millisecond, small, 1, 20)
	for i := range 20 {
		s.exec(`SELECT "authors".* FROM "authors" WHERE "authors"."id" = $1 LIMIT $2`, 1, fast, small, uint64(100+i), 1)
	}
	return s.events
}

func simpleLiterals() []*Event {
	s := newSession(2, ProtocolSimple)
	s.exec("SELECT id, author_id FROM books ORDER BY id LIMIT 10", 10, time.Millisecond, small)
	for i := range 10 {
		s.exec(fmt.Sprintf("SELECT name FROM authors WHERE id = %d", 7*i+3), 1, fast, small)
	}
	s.exec("SELECT 1", 1, fast, time.Second) // the request moves on
	return s.events
}

func inTransaction() []*Event {
	s := newSession(3, ProtocolExtended)
	s.exec("BEGIN", 0, 50*time.Microsecond, small)
	s.exec("SELECT id FROM orders WHERE customer_id = $1", 8, time.Millisecond, small, 42)
	for i := range 8 {
		// Slow application code between lookups: gaps above max_gap, but
		// one transaction holds the run together.
		s.exec("SELECT * FROM order_items WHERE order_id = $1", 3, fast, 150*time.Millisecond, uint64(i))
	}
	s.exec("COMMIT", 0, 50*time.Microsecond, small)
	return s.events
}

func traced() []*Event {
	s := newSession(4, ProtocolSimple)
	s.exec(fmt.Sprintf("SELECT id FROM posts WHERE blog_id = 5 /*traceparent='%s'*/", traceParent(0xabc, 1)), 6, time.Millisecond, 300*time.Millisecond)
	for i := range 6 {
		s.exec(fmt.Sprintf("SELECT count(*) FROM comments WHERE post_id = %d /*traceparent='%s'*/", i+1, traceParent(0xabc, i+2)), 1, fast, 300*time.Millisecond)
	}
	// The next request has another trace.
	s.exec(fmt.Sprintf("SELECT 1 /*traceparent='%s'*/", traceParent(0xdef, 1)), 1, fast, small)
	return s.events
}

func sourceThenTransaction() []*Event {
	s := newSession(9, ProtocolExtended)
	s.exec("SELECT id FROM invoices WHERE due < $1", 6, time.Millisecond, small, 1)
	s.exec("BEGIN", 0, 50*time.Microsecond, small)
	for i := range 6 {
		s.exec("SELECT * FROM payments WHERE invoice_id = $1 FOR UPDATE", 1, fast, small, uint64(i))
	}
	s.exec("COMMIT", 0, 50*time.Microsecond, small)
	return s.events
}

func logInTransaction() []*Event {
	s := newSession(5, ProtocolLog)
	s.rowsOK = false
	s.exec("BEGIN", 0, 0, small)
	s.exec("SELECT id FROM books WHERE author_id = 3", 0, time.Millisecond, small)
	for i := range 5 {
		s.exec(fmt.Sprintf("SELECT * FROM reviews WHERE book_id = %d", i), 0, fast, 200*time.Millisecond)
	}
	s.exec("COMMIT", 0, 0, small)
	return s.events
}

func logAfterSelect() []*Event {
	s := newSession(6, ProtocolLog)
	s.rowsOK = false
	s.exec("SELECT id FROM books WHERE author_id = 3", 0, time.Millisecond, small)
	for i := range 7 {
		s.exec(fmt.Sprintf("SELECT * FROM reviews WHERE book_id = %d", i), 0, fast, small)
	}
	return s.events
}

func interleaved() []*Event {
	s := newSession(7, ProtocolExtended)
	s.exec("SELECT * FROM books WHERE shelf_id = $1", 12, time.Millisecond, small, 1)
	for i := range 12 {
		s.exec("SELECT * FROM authors WHERE id = $1", 1, fast, small, uint64(i))
		s.exec("SELECT * FROM publishers WHERE id = $1", 1, fast, small, uint64(i%6))
		s.exec("SELECT tag FROM book_tags WHERE book_id = $1", 3, fast, small, uint64(i))
	}
	return s.events
}

func nested() []*Event {
	s := newSession(8, ProtocolExtended)
	s.exec("SELECT * FROM authors WHERE country = $1", 5, time.Millisecond, small, 1)
	for a := range 5 {
		s.exec("SELECT * FROM books WHERE author_id = $1", 6, fast, small, uint64(a))
		for b := range 6 {
			s.exec("SELECT * FROM reviews WHERE book_id = $1", 2, fast, small, uint64(a*10+b))
		}
	}
	return s.events
}

// twoLazyRelations (issue 14, item 5): 80 books, then per book its
// reviews (5 to 8 rows each) and its author, lazily: both loops are N+1s,
// although the reviews lookup returns enough rows to look like a source.
func twoLazyRelations() []*Event {
	s := newSession(9, ProtocolExtended)
	s.exec(`SELECT "books".* FROM "books" ORDER BY "books"."id" LIMIT $1`, 80, 2*time.Millisecond, small, 80)
	for i := range 80 {
		s.exec(`SELECT "reviews".* FROM "reviews" WHERE "reviews"."book_id" = $1`, int64(5+i%4), fast, small, uint64(i))
		s.exec(`SELECT "authors".* FROM "authors" WHERE "authors"."id" = $1 LIMIT $2`, 1, fast, small, uint64(1000+i%37), 1)
	}
	return s.events
}

// eagerThenLazy (issue 14, item 6): an eager IN (...) load, then the same
// association loaded lazily with "= $1" per row: the lazy loop is an N+1,
// not a batch, and its query text is its own.
func eagerThenLazy() []*Event {
	s := newSession(10, ProtocolExtended)
	s.exec(`SELECT "books".* FROM "books" WHERE "books"."shelf_id" = $1`, 20, time.Millisecond, small, 1)
	s.exec(`SELECT "authors".* FROM "authors" WHERE "authors"."id" IN ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)`, 10, fast, time.Second,
		1, 2, 3, 4, 5, 6, 7, 8, 9, 10)
	s.exec(`SELECT "books".* FROM "books" WHERE "books"."shelf_id" = $1`, 20, time.Millisecond, small, 2)
	for i := range 20 {
		s.exec(`SELECT "authors".* FROM "authors" WHERE "authors"."id" = $1`, 1, fast, small, uint64(100+i))
	}
	return s.events
}

// alternatingSearches (issue 14, item 2): a loop that alternates two
// independent lookups whose keys come from no preceding result, in a log
// without row counts, after an unrelated SELECT. Not an N+1.
func alternatingSearches(rowsOK bool) func() []*Event {
	return func() []*Event {
		s := newSession(11, ProtocolLog)
		s.rowsOK = rowsOK
		s.exec("SELECT id, name FROM categories ORDER BY name", 12, time.Millisecond, small)
		for i := range 30 {
			s.exec(fmt.Sprintf("SELECT * FROM products WHERE sku = 'P-%d'", 7*i+1), 1, fast, small)
			s.exec(fmt.Sprintf("SELECT * FROM customers WHERE email = 'c%d@example.com'", 3*i+2), 1, fast, small)
		}
		return s.events
	}
}

func pgbenchS(proto Protocol, rowsOK bool) func() []*Event {
	return func() []*Event {
		s := newSession(20, proto)
		s.rowsOK = rowsOK
		s.exec("SELECT count(*) FROM pgbench_branches", 1, fast, small)
		for i := range 300 {
			if proto == ProtocolSimple || proto == ProtocolLog {
				s.exec(fmt.Sprintf("SELECT abalance FROM pgbench_accounts WHERE aid = %d;", 1+(i*7919)%100000), 1, 50*time.Microsecond, 30*time.Microsecond)
			} else {
				s.exec("SELECT abalance FROM pgbench_accounts WHERE aid = $1;", 1, 50*time.Microsecond, 30*time.Microsecond, uint64(1+(i*7919)%100000))
			}
		}
		return s.events
	}
}

func pgbenchN() []*Event {
	s := newSession(21, ProtocolExtended)
	for i := range 60 {
		aid := uint64(1 + (i*7919)%100000)
		s.exec("BEGIN;", 0, 20*time.Microsecond, 10*time.Microsecond)
		s.exec("UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2;", 1, 80*time.Microsecond, 10*time.Microsecond, uint64(i), aid)
		s.exec("SELECT abalance FROM pgbench_accounts WHERE aid = $1;", 1, 40*time.Microsecond, 10*time.Microsecond, aid)
		s.exec("INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES ($1, $2, $3, $4, CURRENT_TIMESTAMP);", 0, 60*time.Microsecond, 10*time.Microsecond, 1, 1, aid, uint64(i))
		s.exec("END;", 0, 30*time.Microsecond, 10*time.Microsecond)
	}
	return s.events
}

func sysbench(rowsOK bool) func() []*Event {
	return func() []*Event {
		s := newSession(22, ProtocolExtended)
		s.rowsOK = rowsOK
		for tx := range 20 {
			s.exec("BEGIN", 0, 20*time.Microsecond, 10*time.Microsecond)
			for i := range 10 {
				s.exec("SELECT c FROM sbtest1 WHERE id=$1", 1, 40*time.Microsecond, 10*time.Microsecond, uint64(tx*100+i*37))
			}
			lo := uint64(tx * 1000)
			s.exec("SELECT c FROM sbtest1 WHERE id BETWEEN $1 AND $2", 100, 200*time.Microsecond, 10*time.Microsecond, lo, lo+99)
			s.exec("SELECT SUM(k) FROM sbtest1 WHERE id BETWEEN $1 AND $2", 1, 200*time.Microsecond, 10*time.Microsecond, lo, lo+99)
			s.exec("SELECT c FROM sbtest1 WHERE id BETWEEN $1 AND $2 ORDER BY c", 100, 250*time.Microsecond, 10*time.Microsecond, lo, lo+99)
			s.exec("SELECT DISTINCT c FROM sbtest1 WHERE id BETWEEN $1 AND $2 ORDER BY c", 100, 300*time.Microsecond, 10*time.Microsecond, lo, lo+99)
			s.exec("COMMIT", 0, 30*time.Microsecond, 10*time.Microsecond)
		}
		return s.events
	}
}

func batchAny() []*Event {
	s := newSession(23, ProtocolExtended)
	s.exec("SELECT id, author_id FROM books ORDER BY id LIMIT $1", 100, time.Millisecond, small, 100)
	// Chunks of 20 keys: one execution per chunk, distinct arrays.
	for i := range 5 {
		s.exec("SELECT * FROM authors WHERE id = ANY($1)", 20, fast, small, uint64(i))
	}
	s.exec("SELECT * FROM publishers WHERE id IN ($1, $2, $3)", 3, fast, small, 1, 2, 3)
	return s.events
}

func identicalParams() []*Event {
	s := newSession(24, ProtocolExtended)
	s.exec("SELECT id, author_id FROM books WHERE shelf_id = $1", 20, time.Millisecond, small, 1)
	for range 20 {
		s.exec("SELECT * FROM authors WHERE id = $1", 1, fast, small, 7)
	}
	return s.events
}

func acrossSessions() []*Event {
	src := newSession(25, ProtocolExtended)
	src.exec("SELECT id, author_id FROM books WHERE shelf_id = $1", 20, time.Millisecond, small, 1)
	evs := src.events
	for i := range 20 {
		s := newSession(uint64(100+i), ProtocolExtended)
		s.now = src.now.Add(time.Duration(i) * 500 * time.Microsecond)
		s.exec("SELECT * FROM authors WHERE id = $1", 1, fast, small, uint64(i))
		evs = append(evs, s.events...)
	}
	return evs
}

func smallSource() []*Event {
	s := newSession(26, ProtocolExtended)
	s.exec("SELECT id FROM books WHERE shelf_id = $1", 3, time.Millisecond, small, 1)
	for i := range 10 {
		s.exec("SELECT * FROM authors WHERE id = $1", 1, fast, small, uint64(i))
	}
	return s.events
}

func wideGaps() []*Event {
	s := newSession(27, ProtocolExtended)
	s.exec("SELECT id FROM books WHERE shelf_id = $1", 10, time.Millisecond, small, 1)
	for i := range 10 {
		s.exec("SELECT * FROM authors WHERE id = $1", 1, fast, 200*time.Millisecond, uint64(i))
	}
	return s.events
}

var nPlusOneScenarios = []scenario{
	{"orm-extended", ormExtended, 1},
	{"simple-literals", simpleLiterals, 1},
	{"in-transaction", inTransaction, 1},
	{"traceparent", traced, 1},
	{"log-in-transaction", logInTransaction, 1},
	{"log-after-select", logAfterSelect, 1},
	{"interleaved", interleaved, 3},
	{"nested", nested, 2},
	{"source-then-transaction", sourceThenTransaction, 1},
	{"two-lazy-relations", twoLazyRelations, 2},
	{"eager-then-lazy", eagerThenLazy, 1},

	{"pgbench-S-extended", pgbenchS(ProtocolExtended, true), 0},
	{"pgbench-S-simple", pgbenchS(ProtocolSimple, true), 0},
	{"pgbench-S-log", pgbenchS(ProtocolLog, false), 0},
	{"pgbench-N", pgbenchN, 0},
	{"sysbench", sysbench(true), 0},
	{"sysbench-log", sysbench(false), 0},
	{"batch-any", batchAny, 0},
	{"identical-params", identicalParams, 0},
	{"across-sessions", acrossSessions, 0},
	{"source-too-small", smallSource, 0},
	{"wide-gaps", wideGaps, 0},
	{"alternating-searches-log", alternatingSearches(false), 0},
	{"alternating-searches", alternatingSearches(true), 0},
}

// analyze does what a pipeline worker does before the observers.
func analyze(fp *Fingerprinter, ev *Event) *Analyzed {
	a := &Analyzed{Event: ev, TraceParent: ev.TraceParent}
	a.Shape, a.Annotations = fp.Lookup(ev.Text, ev.Protocol)
	if a.TraceParent == "" {
		a.TraceParent = a.Annotations.TraceParent
	}
	return a
}

// runEngine feeds events to a fresh engine, flushes it and returns its
// findings.
func runEngine(t *testing.T, cfg EngineConfig, evs []*Event) []rules.Finding {
	t.Helper()
	e, err := NewEngine(cfg)
	if err != nil {
		t.Fatal(err)
	}
	fp := NewFingerprinter(FingerprintConfig{})
	for _, ev := range evs {
		e.Observe(analyze(fp, ev))
	}
	e.Flush()
	return e.Findings()
}

func TestNPlusOneScenarios(t *testing.T) {
	t.Parallel()
	var out strings.Builder
	for _, sc := range nPlusOneScenarios {
		t.Run(sc.name, func(t *testing.T) {
			fs := runEngine(t, EngineConfig{}, sc.events())
			var got []rules.Finding
			for _, f := range fs {
				if f.Rule == rules.IDNPlusOne {
					got = append(got, f)
				}
			}
			if len(got) != sc.want {
				for _, f := range got {
					t.Logf("finding: %s %v", f.Message, f.Evidence)
				}
				t.Fatalf("%d n-plus-one findings, want %d", len(got), sc.want)
			}
			if sc.want == 0 {
				return
			}
			fmt.Fprintf(&out, "== %s\n%s", sc.name, indentJSON(t, got))
		})
	}
	if !t.Failed() {
		testutil.Golden(t, "nplusone.golden", []byte(out.String()))
	}
}

// indentJSON renders v as indented JSON without HTML escaping, for golden
// files.
func indentJSON(t *testing.T, v any) []byte {
	t.Helper()
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	enc.SetIndent("", "  ")
	if err := enc.Encode(v); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// TestNPlusOneEvidence checks the numbers of the ORM loop, beyond the
// golden file.
func TestNPlusOneEvidence(t *testing.T) {
	t.Parallel()
	fs := runEngine(t, EngineConfig{}, ormExtended())
	if len(fs) != 1 {
		t.Fatalf("findings %+v", fs)
	}
	f := fs[0]
	ev := f.Evidence
	checks := map[string]any{
		"repeats": int64(20), "distinct_params": int64(20), "source_rows": int64(20),
		"form": rules.FormRowCount, "tie": rules.TieGap, "column": "id",
		"rewrite":  "SELECT authors.* FROM authors WHERE authors.id = ANY($1)",
		"total_ms": 6.0,
	}
	for k, want := range checks {
		if ev[k] != want {
			t.Errorf("evidence %s = %#v, want %#v", k, ev[k], want)
		}
	}
	if f.Table != "authors" || f.Confidence != rules.ConfidenceHigh || f.Severity != rules.Warning || f.Count != 1 {
		t.Errorf("finding %+v", f)
	}
	if !strings.HasPrefix(f.ID, "n-plus-one:") || f.Query != `SELECT "authors".* FROM "authors" WHERE "authors"."id" = $1 LIMIT $2` {
		t.Errorf("id %q query %q", f.ID, f.Query)
	}
	if !strings.Contains(ev["source_query"].(string), "FROM books") {
		t.Errorf("source %v", ev["source_query"])
	}
}

// TestNPlusOneThresholds: min_repeats and max_gap come from the config.
func TestNPlusOneThresholds(t *testing.T) {
	t.Parallel()
	cfg := EngineConfig{Rules: rules.Config{NPlusOne: rules.NPlusOneConfig{MinRepeats: 25}}}
	if fs := runEngine(t, cfg, ormExtended()); len(fs) != 0 {
		t.Errorf("min_repeats 25 on a loop of 20: %v", fs)
	}
	cfg = EngineConfig{Rules: rules.Config{NPlusOne: rules.NPlusOneConfig{MaxGap: rules.Duration(300 * time.Millisecond)}}}
	if fs := runEngine(t, cfg, wideGaps()); len(fs) != 1 {
		t.Errorf("max_gap 300ms over 200ms gaps: %d findings", len(fs))
	}
}

// TestNPlusOneRepeatDedupes: the same loop twice is one finding counted
// twice.
func TestNPlusOneRepeatDedupes(t *testing.T) {
	t.Parallel()
	evs := ormExtended()
	more := ormExtended()
	for _, ev := range more {
		ev.Start = ev.Start.Add(10 * time.Second)
	}
	fs := runEngine(t, EngineConfig{}, append(evs, more...))
	if len(fs) != 1 || fs[0].Count != 2 || !fs[0].LastSeen.After(fs[0].FirstSeen.Add(9*time.Second)) {
		t.Fatalf("findings %+v", fs)
	}
}

func TestNPlusOneInlineIgnore(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ name, comment string }{
		{"rule", "/* pgaudit:ignore n-plus-one */ "},
		{"all", "-- pgaudit:ignore\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			evs := ormExtended()
			for _, ev := range evs[1:] {
				ev.Text = tc.comment + ev.Text
			}
			if fs := runEngine(t, EngineConfig{}, evs); len(fs) != 0 {
				t.Errorf("ignored loop reported: %v", fs)
			}
		})
	}
	// A directive on the source statement silences the loop as well.
	evs := ormExtended()
	evs[0].Text += " /* pgaudit:ignore n-plus-one */"
	if fs := runEngine(t, EngineConfig{}, evs); len(fs) != 0 {
		t.Errorf("loop under an ignored source reported: %v", fs)
	}
	// Another rule's directive does not.
	evs = ormExtended()
	for _, ev := range evs[1:] {
		ev.Text = "/* pgaudit:ignore slow-query */ " + ev.Text
	}
	if fs := runEngine(t, EngineConfig{}, evs); len(fs) != 1 {
		t.Errorf("slow-query directive suppressed n-plus-one: %v", fs)
	}
}

// TestNPlusOneSweep: in proxy mode a loop is reported once its session
// falls quiet, without Flush.
func TestNPlusOneSweep(t *testing.T) {
	var got []rules.NPlusOneFacts
	var mu sync.Mutex
	d := NewNPlusOneDetector(NPlusOneDetectorConfig{}, func(f rules.NPlusOneFacts) {
		mu.Lock()
		got = append(got, f)
		mu.Unlock()
	})
	fp := NewFingerprinter(FingerprintConfig{})
	evs := ormExtended()
	for _, ev := range evs {
		d.Observe(analyze(fp, ev))
	}
	last := evs[len(evs)-1].Start
	d.Sweep(last.Add(time.Second))
	if len(got) != 0 {
		t.Fatalf("run closed before RunTimeout: %v", got)
	}
	d.Sweep(last.Add(3 * time.Second))
	if len(got) != 1 || got[0].Repeats != 20 {
		t.Fatalf("after RunTimeout: %+v", got)
	}
	if d.Sessions() != 1 {
		t.Errorf("sessions %d, want 1 until idle", d.Sessions())
	}
	d.Sweep(last.Add(2 * time.Minute))
	if d.Sessions() != 0 {
		t.Errorf("idle session not evicted")
	}
}

// TestNPlusOneBoundedState: many sessions and long runs stay within the
// configured bounds, and evicted sessions still report their loops.
func TestNPlusOneBoundedState(t *testing.T) {
	t.Parallel()
	var n int
	var mu sync.Mutex
	d := NewNPlusOneDetector(NPlusOneDetectorConfig{MaxSessions: 32, RingSize: 8, MaxRuns: 2}, func(rules.NPlusOneFacts) {
		mu.Lock()
		n++
		mu.Unlock()
	})
	fp := NewFingerprinter(FingerprintConfig{})
	for i := range 200 {
		s := newSession(uint64(1000+i), ProtocolExtended)
		s.exec("SELECT id FROM books WHERE shelf_id = $1", 6, time.Millisecond, small, 1)
		for j := range 6 {
			s.exec("SELECT * FROM authors WHERE id = $1", 1, fast, small, uint64(j))
		}
		for _, ev := range s.events {
			d.Observe(analyze(fp, ev))
		}
	}
	if s := d.Sessions(); s > 32+detectorShards {
		t.Errorf("%d sessions tracked, bound 32 (+ rounding per shard)", s)
	}
	d.Flush()
	if n != 200 || d.Sessions() != 0 {
		t.Errorf("%d loops reported, want 200; %d sessions left", n, d.Sessions())
	}
}

// TestNPlusOneEvictsLeastRecent: when a shard is full, a new session evicts
// the session observed least recently, not the one created first.
func TestNPlusOneEvictsLeastRecent(t *testing.T) {
	t.Parallel()
	d := NewNPlusOneDetector(NPlusOneDetectorConfig{MaxSessions: 2 * detectorShards, RingSize: 8}, nil)
	fp := NewFingerprinter(FingerprintConfig{})
	// Three session ids that share a shard (two sessions per shard).
	var ids []uint64
	for id := uint64(1); len(ids) < 3; id++ {
		if len(ids) == 0 || d.shard(id) == d.shard(ids[0]) {
			ids = append(ids, id)
		}
	}
	a, b, c := ids[0], ids[1], ids[2]
	for _, id := range []uint64{a, b, a, c} {
		s := newSession(id, ProtocolExtended)
		s.exec("SELECT * FROM authors WHERE id = $1", 1, fast, small, id)
		for _, ev := range s.events {
			d.Observe(analyze(fp, ev))
		}
	}
	sh := d.shard(a)
	hasA := sh.sessions.Contains(a)
	hasB := sh.sessions.Contains(b)
	hasC := sh.sessions.Contains(c)
	if !hasA || hasB || !hasC {
		t.Fatalf("after a, b, a, c: tracked a=%v b=%v c=%v; want a and c (b least recent)", hasA, hasB, hasC)
	}
}

// TestSessionEndClosesRuns: a KindSessionEnd event reaches the N+1
// detector through the pipeline after the session's statements, closes
// its open run at once (the finding appears without a sweep or Flush) and
// forgets the session, while it is neither counted, fingerprinted nor
// written to the audit log as a statement. A session that did not end
// keeps its state.
func TestSessionEndClosesRuns(t *testing.T) {
	var audit testutil.Buffer
	al, err := auditlog.Open(auditlog.Config{Writer: &audit, Sample: auditlog.SampleAll, FlushInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer al.Close()
	e, err := NewEngine(EngineConfig{})
	if err != nil {
		t.Fatal(err)
	}
	p := NewPipeline(PipelineConfig{Workers: 2, AuditLog: al})
	if err := p.AddObserver(e); err != nil {
		t.Fatal(err)
	}
	if err := p.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	ended, open := ormExtended(), simpleLiterals() // sessions 1 and 2
	for _, ev := range append(append([]*Event(nil), ended...), open...) {
		if err := p.Submit(context.Background(), ev); err != nil {
			t.Fatal(err)
		}
	}
	endAt := ended[len(ended)-1].Start.Add(time.Millisecond)
	p.Offer(&Event{Kind: KindSessionEnd, SessionID: ended[0].SessionID, Start: endAt})
	p.Offer(&Event{Kind: KindSessionEnd, SessionID: 999, Start: endAt}) // unknown: ignored
	statements := uint64(len(ended) + len(open))
	testutil.Eventually(t, 5*time.Second, "the session end processed", func() bool {
		// Both sessions' statements first: one session tracked could
		// also be session 1 before session 2's worker started.
		return p.Counters().Processed == statements && e.DetectorSessions() == 1
	})
	var nplus1 []rules.Finding
	for _, f := range e.Findings() {
		if f.Rule == rules.IDNPlusOne {
			nplus1 = append(nplus1, f)
		}
	}
	if len(nplus1) != 1 || fmt.Sprint(nplus1[0].Evidence["session_id"]) != "1" {
		t.Fatalf("N+1 findings after session 1 ended, before any sweep: %+v", nplus1)
	}
	stop(t, p)
	if c := p.Counters(); c.Processed != statements || c.Dropped != 0 {
		t.Errorf("counters %+v, want %d processed (session ends are not events to count) and none dropped", c, statements)
	}
	if calls := p.Stats().Snapshot().Calls; calls != statements {
		t.Errorf("stats calls %d, want %d", calls, statements)
	}
	if got := strings.Count(audit.String(), `"record":"statement"`); uint64(got) != statements {
		t.Errorf("%d statement records in the audit log, want %d", got, statements)
	}
	if strings.Contains(audit.String(), "session_end") {
		t.Errorf("a session end reached the audit log:\n%s", audit.String())
	}
}

// TestSessionRecycledStartsClean: a session that ended (or was evicted)
// leaves its struct to the next new session of its shard; that session
// starts with nothing of the old one. Session b's lookups right after
// session a's 20-row SELECT would be an N+1 loop if b saw a's statements
// (the per-session case shows the same statements in one session do
// qualify).
func TestSessionRecycledStartsClean(t *testing.T) {
	t.Parallel()
	d := NewNPlusOneDetector(NPlusOneDetectorConfig{}, nil)
	a := uint64(1)
	b := a + 1
	for d.shard(b) != d.shard(a) {
		b++
	}
	fp := NewFingerprinter(FingerprintConfig{})
	const source = "SELECT id, title, author_id FROM books WHERE published > $1 ORDER BY id LIMIT $2"
	const lookup = `SELECT "authors".* FROM "authors" WHERE "authors"."id" = $1 LIMIT $2`
	for _, c := range []struct {
		name  string
		end   func(d *NPlusOneDetector, id uint64)
		split bool // the source and the loop in two sessions
		want  int
	}{
		{"one session", nil, false, 1},
		{"ended", func(d *NPlusOneDetector, id uint64) { d.EndSession(id) }, true, 0},
		{"evicted", func(d *NPlusOneDetector, id uint64) {
			sh := d.shard(id)
			sh.mu.Lock()
			closed := d.evictOldestLocked(sh, nil)
			sh.mu.Unlock()
			d.finish(closed)
		}, true, 0},
	} {
		t.Run(c.name, func(t *testing.T) {
			var found []rules.NPlusOneFacts
			d := NewNPlusOneDetector(NPlusOneDetectorConfig{}, func(f rules.NPlusOneFacts) { found = append(found, f) })
			sa := newSession(a, ProtocolExtended)
			sa.exec(source, 20, 2*time.Millisecond, small, 1, 20)
			loop := sa
			if c.split {
				d.Observe(analyze(fp, sa.events[0]))
				c.end(d, a)
				loop = newSession(b, ProtocolExtended)
				loop.now, loop.txSeq = sa.now, sa.txSeq
				loop.events = nil
			}
			for i := range 20 {
				loop.exec(lookup, 1, fast, small, uint64(100+i), 1)
			}
			for _, ev := range loop.events {
				d.Observe(analyze(fp, ev))
			}
			d.Flush()
			if len(found) != c.want {
				t.Errorf("%d N+1 runs found, want %d: %+v", len(found), c.want, found)
			}
		})
	}
}
