package analyzer

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"math/rand/v2"
	"reflect"
	"slices"
	"sync"
	"testing"
	"time"
)

var t0 = time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)

func fixedClock() time.Time { return t0.Add(time.Hour) }

func shapeN(i int) *Shape {
	return &Shape{Fingerprint: Fingerprint(0x1000 + i), Normalized: fmt.Sprintf("SELECT * FROM t%d WHERE id = $1", i)}
}

// randomEvents returns n events over nShapes shapes with log-normal
// latencies from a fixed seed.
func randomEvents(n, nShapes int, seed uint64) ([]*Event, []*Shape) {
	r := rand.New(rand.NewPCG(seed, 7))
	shapes := make([]*Shape, nShapes)
	for i := range shapes {
		shapes[i] = shapeN(i)
	}
	apps := []string{"web", "web", "web", "worker", "worker", "cron", "psql"}
	evs := make([]*Event, n)
	for i := range evs {
		d := time.Duration(math.Exp(r.NormFloat64()*1.2+math.Log(800)) * float64(time.Microsecond))
		ev := &Event{
			Kind:            KindStatement,
			Text:            shapes[i%nShapes].Normalized,
			SessionID:       uint64(i % 13),
			Start:           t0.Add(time.Duration(i) * time.Millisecond),
			Duration:        d,
			ApplicationName: apps[r.IntN(len(apps))],
			Rows:            int64(r.IntN(10)) - 1,
			Command:         "SELECT",
		}
		if r.IntN(20) == 0 {
			ev.SQLState = "57014"
		}
		if r.IntN(4) == 0 {
			ev.Wait = time.Duration(r.IntN(5000)) * time.Microsecond
		}
		evs[i] = ev
	}
	return evs, shapes
}

func record(s *Stats, evs []*Event, shapes []*Shape) {
	for i, ev := range evs {
		s.Record(ev, shapes[i%len(shapes)])
	}
}

func exactQuantile(sorted []time.Duration, q float64) time.Duration {
	return sorted[int(math.Floor(q*float64(len(sorted)-1)))]
}

func TestStatsPercentiles(t *testing.T) {
	t.Parallel()
	evs, shapes := randomEvents(20000, 1, 1)
	s := NewStats(StatsConfig{Now: fixedClock})
	record(s, evs, shapes)
	var ds []time.Duration
	var total time.Duration
	for _, ev := range evs {
		ds = append(ds, ev.Duration)
		total += ev.Duration
	}
	slices.Sort(ds)
	top := s.TopShapes(ByTotalTime, 1)
	if len(top) != 1 {
		t.Fatalf("TopShapes returned %d shapes", len(top))
	}
	st := top[0]
	if st.Calls != uint64(len(evs)) || st.Total != total || st.Min != ds[0] || st.Max != ds[len(ds)-1] {
		t.Errorf("calls %d total %v min %v max %v, want %d %v %v %v", st.Calls, st.Total, st.Min, st.Max, len(evs), total, ds[0], ds[len(ds)-1])
	}
	for _, c := range []struct {
		q   float64
		got time.Duration
	}{{0.5, st.P50}, {0.9, st.P90}, {0.99, st.P99}, {0.999, st.P999}} {
		want := exactQuantile(ds, c.q)
		relErr := math.Abs(float64(c.got-want)) / float64(want)
		// The sketch's guarantee plus rounding to whole nanoseconds.
		if relErr > SketchRelativeAccuracy+1e-6 {
			t.Errorf("p%v = %v, exact %v: relative error %.4f > %v", c.q*100, c.got, want, relErr, SketchRelativeAccuracy)
		}
	}
}

func TestStatsFields(t *testing.T) {
	t.Parallel()
	s := NewStats(StatsConfig{TopApps: 2, Now: fixedClock})
	sh := shapeN(1)
	add := func(d, wait time.Duration, app, state string, rows int64, at time.Time) {
		s.Record(&Event{Kind: KindStatement, Duration: d, Wait: wait, ApplicationName: app, SQLState: state, Rows: rows, Start: at}, sh)
	}
	add(3*time.Millisecond, 0, "web", "", 5, t0.Add(2*time.Second))
	add(1*time.Millisecond, 2*time.Millisecond, "web", "", -1, t0)
	add(2*time.Millisecond, 4*time.Millisecond, "cron", "23505", 0, t0.Add(time.Second))
	add(2*time.Millisecond, 0, "psql", "", 1, t0.Add(time.Second))
	add(2*time.Millisecond, 0, "cron", "", 1, time.Time{})
	s.Record(&Event{Kind: KindSessionState, Detail: "listen", Duration: time.Hour}, sh) // ignored

	st := s.TopShapes(ByCalls, 0)[0]
	want := ShapeStats{
		Fingerprint: sh.Fingerprint, Query: sh.Normalized,
		Calls: 5, Errors: 1, Rows: 7,
		Total: 10 * time.Millisecond, Min: time.Millisecond, Max: 3 * time.Millisecond, Mean: 2 * time.Millisecond,
		WaitTotal: 6 * time.Millisecond, WaitMax: 4 * time.Millisecond, Waited: 2,
		Share:     1,
		FirstSeen: t0, LastSeen: t0.Add(2 * time.Second),
		Apps: []AppCount{{"cron", 2}, {"web", 2}},
		// The recent window counts the executions with a start time.
		RecentCalls: 4, RecentTotal: 8 * time.Millisecond, RecentMax: 3 * time.Millisecond,
		RecentSince: t0.Truncate(RecentHalf), RecentUntil: t0.Add(2 * time.Second),
	}
	// Percentiles are checked elsewhere.
	st.P50, st.P90, st.P99, st.P999 = 0, 0, 0, 0
	st.RecentP50, st.RecentP90, st.RecentP99 = 0, 0, 0
	if !reflect.DeepEqual(st, want) {
		t.Errorf("got  %+v\nwant %+v", st, want)
	}
}

func TestStatsCapAndOther(t *testing.T) {
	t.Parallel()
	s := NewStats(StatsConfig{MaxShapes: 3, Now: fixedClock})
	for i := range 5 {
		for range i + 1 {
			s.Record(&Event{Kind: KindStatement, Duration: time.Millisecond}, shapeN(i))
		}
	}
	snap := s.Snapshot()
	if len(snap.Shapes) != 3 || s.Len() != 3 {
		t.Fatalf("tracked %d shapes, want 3", len(snap.Shapes))
	}
	if snap.Other == nil || snap.Other.Calls != 4+5 || snap.Overflow != 9 {
		t.Fatalf("other %+v overflow %d, want 9 calls and overflow 9", snap.Other, snap.Overflow)
	}
	if snap.Calls != 15 || snap.Total != 15*time.Millisecond {
		t.Errorf("totals %d %v", snap.Calls, snap.Total)
	}
	var share float64
	for _, st := range snap.Shapes {
		share += st.Share
	}
	share += snap.Other.Share
	if math.Abs(share-1) > 1e-9 {
		t.Errorf("shares sum to %v", share)
	}
	// Truncation keeps totals and folds the rest into other.
	tr, err := snap.Truncate(ByCalls, 1)
	if err != nil {
		t.Fatal(err)
	}
	if len(tr.Shapes) != 1 || tr.Shapes[0].Calls != 3 || tr.Other.Calls != 12 || tr.Calls != 15 || tr.Omitted != 2 {
		t.Errorf("truncated: %d shapes, first %d calls, other %d, total %d, omitted %d", len(tr.Shapes), tr.Shapes[0].Calls, tr.Other.Calls, tr.Calls, tr.Omitted)
	}
	if len(snap.Shapes) != 3 {
		t.Error("Truncate modified its receiver")
	}
}

// comparable strips what may legitimately differ between equal snapshots
// (sketch pointers are compared by their encoding).
func comparableSnap(t *testing.T, s *Snapshot) *Snapshot {
	t.Helper()
	c := s.clone()
	c.Taken = time.Time{}
	fix := func(st *ShapeStats) {
		if st.Sketch != nil {
			b, _ := st.Sketch.MarshalBinary()
			st.Query += fmt.Sprintf(" sketch=%x", b)
			st.Sketch = nil
		}
		st.Share = math.Round(st.Share*1e9) / 1e9
		st.FirstSeen, st.LastSeen = st.FirstSeen.UTC(), st.LastSeen.UTC()
	}
	for i := range c.Shapes {
		fix(&c.Shapes[i])
	}
	if c.Other != nil {
		fix(c.Other)
	}
	return c
}

func TestStatsMergeHalves(t *testing.T) {
	t.Parallel()
	evs, shapes := randomEvents(6000, 7, 2)
	whole := NewStats(StatsConfig{MaxShapes: 5, Now: fixedClock})
	a := NewStats(StatsConfig{MaxShapes: 5, Now: fixedClock})
	b := NewStats(StatsConfig{MaxShapes: 5, Now: fixedClock})
	record(whole, evs, shapes)
	// Split at a multiple of the shape count, so each half meets the shapes
	// in the same order and the same two overflow into "other".
	const split = 7 * 428
	record(a, evs[:split], shapes)
	record(b, evs[split:], shapes)
	merged, err := MergeSnapshots(a.Snapshot(), b.Snapshot())
	if err != nil {
		t.Fatal(err)
	}
	want := comparableSnap(t, whole.Snapshot())
	if got := comparableSnap(t, merged); !reflect.DeepEqual(got, want) {
		t.Errorf("merge of halves differs from whole:\n got %+v\nwant %+v", got, want)
	}

	// Stats.Merge: folding both halves into an empty Stats gives the same.
	c := NewStats(StatsConfig{MaxShapes: 5, Now: fixedClock})
	if err := c.Merge(a.Snapshot()); err != nil {
		t.Fatal(err)
	}
	if err := c.Merge(b.Snapshot()); err != nil {
		t.Fatal(err)
	}
	if got := comparableSnap(t, c.Snapshot()); !reflect.DeepEqual(got, want) {
		t.Errorf("Stats.Merge of halves differs from whole:\n got %+v\nwant %+v", got, want)
	}
}

func TestSnapshotJSONRoundTrip(t *testing.T) {
	t.Parallel()
	evs, shapes := randomEvents(2000, 4, 3)
	s := NewStats(StatsConfig{MaxShapes: 3, Now: fixedClock})
	record(s, evs, shapes)
	snap := s.Snapshot()
	b, err := json.Marshal(snap)
	if err != nil {
		t.Fatal(err)
	}
	var back Snapshot
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	if got, want := comparableSnap(t, &back), comparableSnap(t, snap); !reflect.DeepEqual(got, want) {
		t.Errorf("JSON round trip differs:\n got %+v\nwant %+v", got, want)
	}
	// The decoded sketches are mergeable with live ones.
	if err := back.Merge(snap); err != nil {
		t.Fatal(err)
	}
	if back.Calls != 2*snap.Calls {
		t.Errorf("merged calls %d, want %d", back.Calls, 2*snap.Calls)
	}
}

func TestSketchRejectsForeignMapping(t *testing.T) {
	t.Parallel()
	var l LatencySketch
	if err := json.Unmarshal([]byte(`"not base64!"`), &l); err == nil {
		t.Error("accepted bad base64")
	}
	if err := json.Unmarshal([]byte(`"AAAA"`), &l); err == nil {
		t.Error("accepted a sketch without the expected mapping")
	}
}

func TestStatsConcurrent(t *testing.T) {
	t.Parallel()
	evs, shapes := randomEvents(4000, 50, 4)
	s := NewStats(StatsConfig{MaxShapes: 40, Now: fixedClock})
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < len(evs); i += 4 {
				s.Record(evs[i], shapes[i%len(shapes)])
				if i%500 == 0 {
					s.TopShapes(ByP99, 5)
				}
			}
		}()
	}
	wg.Wait()
	snap := s.Snapshot()
	if snap.Calls != uint64(len(evs)) {
		t.Errorf("calls %d, want %d", snap.Calls, len(evs))
	}
}

func TestParseSortKey(t *testing.T) {
	t.Parallel()
	for _, k := range []string{"", "total_time", "calls", "p99", "mean", "errors"} {
		if _, err := ParseSortKey(k); err != nil {
			t.Errorf("%q: %v", k, err)
		}
	}
	if _, err := ParseSortKey("bogus"); err == nil {
		t.Error("accepted bogus")
	}
}

// TestSketchAddBin: a duration added through its precomputed bin (addBin,
// and Add, which goes through it) leaves the sketch exactly as
// DDSketch.Add does (addValue; same encoding, so same quantiles).
func TestSketchAddBin(t *testing.T) {
	t.Parallel()
	ds := []time.Duration{0, -time.Second, 1, 999, time.Microsecond, 1500 * time.Nanosecond,
		150 * time.Microsecond, time.Millisecond, 3*time.Second + 7, time.Hour, math.MaxInt64}
	r := rand.New(rand.NewPCG(1, 2))
	for range 5000 {
		ds = append(ds, time.Duration(r.Int64N(int64(10*time.Second))))
	}
	want, got, added := NewLatencySketch(), NewLatencySketch(), NewLatencySketch()
	for _, d := range ds {
		want.addValue(d)
		got.addBin(binOf(d))
		added.Add(d)
	}
	wb, err := want.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	for name, sk := range map[string]*LatencySketch{"addBin": got, "Add": added} {
		gb, err := sk.MarshalBinary()
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(wb, gb) {
			t.Fatalf("sketch through %s differs from DDSketch.Add: %d vs %d bytes", name, len(gb), len(wb))
		}
		for _, q := range []float64{0, 0.5, 0.9, 0.99, 1} {
			if g, w := sk.Quantile(q), want.Quantile(q); g != w {
				t.Errorf("%s q%.2f: %v, want %v", name, q, g, w)
			}
		}
	}
}

// TestAddOneIsAddCounters: recording an event with addOne leaves the
// exact counters as adding its one-call ShapeStats with addCounters does.
func TestAddOneIsAddCounters(t *testing.T) {
	t.Parallel()
	evs := []Event{
		{Start: t0, Duration: 3 * time.Millisecond, Rows: 2},
		{Start: t0.Add(-time.Second), Duration: time.Millisecond, Rows: -1, SQLState: "42P01"},
		{Duration: -time.Second, Wait: time.Millisecond},
		{Start: t0.Add(time.Minute), Duration: 0, Rows: 7, Wait: 3 * time.Millisecond},
		{Start: t0.Add(time.Second), Duration: 5 * time.Millisecond, Wait: -1},
		{Start: t0.Add(-time.Hour), Duration: time.Microsecond, Rows: 0},
	}
	// Every order of a few prefixes: Min, FirstSeen and the rest depend
	// on what came before.
	for start := range evs {
		var got, want ShapeStats
		for i := range evs {
			ev := &evs[(start+i)%len(evs)]
			d := max(ev.Duration, 0)
			got.addOne(ev, d)
			one := ShapeStats{Calls: 1, Total: d, Min: d, Max: d, FirstSeen: ev.Start, LastSeen: ev.Start}
			if ev.SQLState != "" {
				one.Errors = 1
			}
			if ev.Rows > 0 {
				one.Rows = ev.Rows
			}
			if ev.Wait > 0 {
				one.Waited, one.WaitTotal, one.WaitMax = 1, ev.Wait, ev.Wait
			}
			want.addCounters(&one)
			if !reflect.DeepEqual(got, want) {
				t.Fatalf("start %d, event %d: addOne gave %+v, addCounters %+v", start, i, got, want)
			}
		}
	}
}

// TestStatsResetForgetsMemo: a shape recorded before Reset is counted in
// the new period only (its memoized accumulator belongs to the old one),
// and a shape recorded into two Stats counts in each.
func TestStatsResetForgetsMemo(t *testing.T) {
	t.Parallel()
	s1, s2 := NewStats(StatsConfig{Now: fixedClock}), NewStats(StatsConfig{Now: fixedClock})
	sh := shapeN(1)
	ev := &Event{Kind: KindStatement, Start: t0, Duration: time.Millisecond}
	s1.Record(ev, sh)
	s1.Record(ev, sh)
	s2.Record(ev, sh)
	s1.Reset()
	s1.Record(ev, sh)
	s2.Record(ev, sh)
	for _, c := range []struct {
		name string
		s    *Stats
		want uint64
	}{{"reset", s1, 1}, {"other", s2, 2}} {
		snap := c.s.Snapshot()
		if len(snap.Shapes) != 1 || snap.Shapes[0].Calls != c.want {
			t.Errorf("%s: shapes %+v, want one with %d calls", c.name, snap.Shapes, c.want)
		}
	}
}
