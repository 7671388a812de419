package fleet

import (
	"bytes"
	"encoding/json"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/pgaudit-proxy/pgaudit/analyzer"
	"github.com/pgaudit-proxy/pgaudit/internal/testutil"
	"github.com/pgaudit-proxy/pgaudit/pooler"
	"github.com/pgaudit-proxy/pgaudit/rules"
)

var update = testutil.Update

func golden(t *testing.T, name string, got []byte) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("read golden file (run go test ./fleet -update to create it): %v", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s differs (run go test ./fleet -update to accept):\n--- got\n%s\n--- want\n%s", path, got, want)
	}
}

var t0 = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

// statsOf records durations (one shape per entry of byShape) into a Stats.
func statsOf(t *testing.T, byShape map[string][]time.Duration) *analyzer.Snapshot {
	t.Helper()
	st := analyzer.NewStats(analyzer.StatsConfig{Now: func() time.Time { return t0 }})
	keys := make([]string, 0, len(byShape))
	for k := range byShape {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for i, q := range keys {
		sh := &analyzer.Shape{Fingerprint: analyzer.Fingerprint(0x1000 + i), Normalized: q}
		for j, d := range byShape[q] {
			ev := &analyzer.Event{Kind: analyzer.KindStatement, Start: t0.Add(time.Duration(j) * time.Second), Duration: d, Rows: 1, ApplicationName: "app"}
			if j == 0 {
				ev.SQLState = "57014"
			}
			st.Record(ev, sh)
		}
	}
	return st.Snapshot()
}

// TestExportGolden pins the JSON encoding of an export document (the
// example in docs/export.md).
func TestExportGolden(t *testing.T) {
	snap := statsOf(t, map[string][]time.Duration{
		"SELECT pg_sleep($1)":           {0, 1500 * time.Microsecond, 1520 * time.Microsecond, 20 * time.Millisecond},
		"SELECT * FROM t WHERE id = $1": {300 * time.Microsecond, 310 * time.Microsecond},
	})
	findings := []rules.Finding{{
		ID: "seq-scan:00000000000010aa", Rule: "seq-scan", Severity: rules.Warning,
		Fingerprint: "00000000000010aa", Query: "SELECT * FROM t WHERE v = $1", Message: "sequential scan on t",
		Evidence: map[string]any{"calls": 12, "rows_scanned": 100000},
		Count:    3, FirstSeen: t0, LastSeen: t0.Add(time.Minute),
	}}
	pools := []pooler.PoolStats{{Database: "app", User: "app", Mode: "transaction", Size: 20,
		ClientsActive: 5, ServersActive: 2, ServersIdle: 3, Transactions: 100, XactTime: 2 * time.Second,
		Queries: 150, BytesIn: 1000, BytesOut: 5000, Waits: 4, WaitTotal: 3 * time.Millisecond, MaxWait: 2 * time.Millisecond}}
	pools[0].WaitHist[0], pools[0].WaitHist[11] = 1, 3
	inst := Instance{PeerID: 2, Listen: "10.0.0.2:6432", Hostname: "app-2", PgauditVersion: "test", Started: t0.Add(-time.Hour), Exported: t0.Add(time.Hour)}
	d := Export(inst, snap, findings, pools)
	b, err := json.MarshalIndent(d, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	golden(t, "export.golden.json", append(b, '\n'))

	// Decoding gives back the same document.
	var back Document
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	b2, err := json.MarshalIndent(&back, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(b, b2) {
		t.Errorf("re-encoded document differs:\n%s\n---\n%s", b2, b)
	}
}

// TestExportMergeExact: sketch → export → JSON → decode → merge gives
// the same quantiles as one sketch of every value, for several
// distributions split across three instances.
func TestExportMergeExact(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	cases := []struct {
		name string
		gen  func(i int) time.Duration
		n    int
	}{
		{"uniform", func(int) time.Duration { return time.Duration(r.IntN(50_000)) * time.Microsecond }, 3000},
		{"lognormal tail", func(int) time.Duration {
			return time.Duration(math.Exp(r.NormFloat64()*1.5+7) * float64(time.Microsecond))
		}, 5000},
		{"zeros and spikes", func(i int) time.Duration {
			if i%10 == 0 {
				return 0
			}
			if i%97 == 0 {
				return 3 * time.Second
			}
			return time.Duration(100+i%7) * time.Microsecond
		}, 2000},
		{"nanoseconds to hours", func(i int) time.Duration { return time.Duration(1 << (i % 43)) }, 430},
	}
	qs := []float64{0, 0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.999, 1}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			all := make([]time.Duration, tc.n)
			parts := make([][]time.Duration, 3)
			for i := range all {
				all[i] = tc.gen(i)
				// Contiguous thirds of the sorted order would also do;
				// instances get unequal, overlapping distributions.
				k := (i * 7 / 3) % 3
				parts[k] = append(parts[k], all[i])
			}
			whole := analyzer.NewLatencySketch()
			for _, d := range all {
				whole.Add(d)
			}
			var sources []Source
			for k, p := range parts {
				snap := statsOf(t, map[string][]time.Duration{"SELECT 1": p})
				b, err := json.Marshal(Export(Instance{PeerID: k + 1}, snap, nil, nil))
				if err != nil {
					t.Fatal(err)
				}
				var d Document
				if err := json.Unmarshal(b, &d); err != nil {
					t.Fatal(err)
				}
				sources = append(sources, Source{Name: "i" + string(rune('a'+k)), Doc: &d})
			}
			m, err := Merge(sources)
			if err != nil {
				t.Fatal(err)
			}
			if len(m.Stats.Shapes) != 1 {
				t.Fatalf("merged %d shapes, want 1", len(m.Stats.Shapes))
			}
			got := m.Stats.Shapes[0]
			if got.Calls != uint64(tc.n) || got.Sketch.Count() != uint64(tc.n) || m.ShapeInstances[got.Fingerprint] != 3 {
				t.Fatalf("calls %d, sketch count %d, instances %d; want %d, %d, 3", got.Calls, got.Sketch.Count(), m.ShapeInstances[got.Fingerprint], tc.n, tc.n)
			}
			if !slices.Equal(got.Sketch.Bins().Positive, whole.Bins().Positive) || got.Sketch.Bins().Zero != whole.Bins().Zero {
				t.Fatalf("merged bins differ from the bins of one sketch of every value")
			}
			sorted := slices.Clone(all)
			slices.Sort(sorted)
			for _, q := range qs {
				if a, b := got.Sketch.Quantile(q), whole.Quantile(q); a != b {
					t.Errorf("q%v: merged %v, one sketch %v", q, a, b)
				}
				// And within the relative accuracy of the true value.
				truth := sorted[int(q*float64(len(sorted)-1))]
				est := got.Sketch.Quantile(q)
				if diff := math.Abs(float64(est - truth)); diff > analyzer.SketchRelativeAccuracy*float64(truth)+1 {
					t.Errorf("q%v: merged %v, true %v: off by %.3f%%", q, est, truth, 100*diff/float64(truth))
				}
			}
			var sum time.Duration
			for _, d := range all {
				sum += d
			}
			if got.Total != sum || got.Min != sorted[0] || got.Max != sorted[len(sorted)-1] {
				t.Errorf("total/min/max %v/%v/%v, want %v/%v/%v", got.Total, got.Min, got.Max, sum, sorted[0], sorted[len(sorted)-1])
			}
		})
	}
}

// TestMergeFindings: the same finding on two instances is one row with the
// counts added, first/last seen spanning both, instances 2; open on one
// instance means open.
func TestMergeFindings(t *testing.T) {
	f := func(id string, count int64, first, last time.Duration, status string) rules.Finding {
		return rules.Finding{ID: id, Rule: "n-plus-one", Severity: rules.Warning, Message: id + " seen", Count: count,
			FirstSeen: t0.Add(first), LastSeen: t0.Add(last), Status: status, Evidence: map[string]any{"repeats": count}}
	}
	docs := []*Document{
		{Version: Version, Findings: []rules.Finding{f("n-plus-one:a", 3, 10*time.Minute, 20*time.Minute, ""), f("seq-scan:b", 1, 0, 0, "")}},
		{Version: Version, Findings: []rules.Finding{f("n-plus-one:a", 4, 5*time.Minute, 15*time.Minute, rules.StatusResolved)}},
		{Version: Version, Findings: []rules.Finding{}},
	}
	var sources []Source
	for i, d := range docs {
		sources = append(sources, Source{Name: string(rune('a' + i)), Doc: d})
	}
	sources = append(sources, Source{Name: "http://down:9930", Err: os.ErrDeadlineExceeded})
	m, err := Merge(sources)
	if err != nil {
		t.Fatal(err)
	}
	if len(m.Findings) != 2 {
		t.Fatalf("%d findings, want 2: %+v", len(m.Findings), m.Findings)
	}
	byID := map[string]Finding{}
	for _, f := range m.Findings {
		byID[f.ID] = f
	}
	a := byID["n-plus-one:a"]
	if a.Count != 7 || a.Instances != 2 || !a.FirstSeen.Equal(t0.Add(5*time.Minute)) || !a.LastSeen.Equal(t0.Add(20*time.Minute)) || !a.Open() {
		t.Errorf("merged finding: count %d instances %d first %v last %v open %v; want 7, 2, +5m, +20m, open",
			a.Count, a.Instances, a.FirstSeen.Sub(t0), a.LastSeen.Sub(t0), a.Open())
	}
	if a.Evidence["repeats"] != int64(3) {
		t.Errorf("evidence %v: want the latest instance's (repeats 3)", a.Evidence)
	}
	if b := byID["seq-scan:b"]; b.Count != 1 || b.Instances != 1 {
		t.Errorf("single finding: count %d instances %d", b.Count, b.Instances)
	}
	v := m.View(10, t0)
	if v.Instances != 3 || v.Failed != 1 || v.Sources[3].OK || v.Sources[3].Error == "" {
		t.Errorf("view sources: %d ok, %d failed, %+v", v.Instances, v.Failed, v.Sources)
	}
	b, err := json.Marshal(v.Findings[0])
	if err != nil {
		t.Fatal(err)
	}
	var row map[string]any
	_ = json.Unmarshal(b, &row)
	if row["instances"] != float64(2) || row["id"] != "n-plus-one:a" || row["count"] != float64(7) {
		t.Errorf("finding row JSON %s: want id, count 7 and instances 2 at the top level", b)
	}
}

// TestDecodeRejects: documents that cannot be merged exactly are refused
// with a reason.
func TestDecodeRejects(t *testing.T) {
	good := Export(Instance{}, statsOf(t, map[string][]time.Duration{"SELECT 1": {time.Millisecond}}), nil, nil)
	cases := []struct {
		name   string
		mutate func(d *Document)
	}{
		{"version", func(d *Document) { d.Version = 2 }},
		{"gamma", func(d *Document) { d.Shapes[0].Latency.Gamma = 1.05 }},
		{"unit", func(d *Document) { d.Shapes[0].Latency.Unit = "ms" }},
		{"fingerprint", func(d *Document) { d.Shapes[0].Fingerprint = "xyz" }},
		{"count", func(d *Document) { d.Shapes[0].Latency.Count++ }},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			b, _ := json.Marshal(good)
			var d Document
			if err := json.Unmarshal(b, &d); err != nil {
				t.Fatal(err)
			}
			if err := d.Check(); err != nil {
				t.Fatalf("unmodified document: %v", err)
			}
			tc.mutate(&d)
			if err := d.Check(); err == nil {
				t.Fatal("Check accepted the document")
			}
			if _, err := Merge([]Source{{Name: "x", Doc: &d}}); err == nil {
				t.Fatal("Merge accepted the document")
			}
		})
	}
}

// TestExportDocExample: the example in docs/export.md is a valid document
// (every field known, sketches decodable) and matches the golden file.
func TestExportDocExample(t *testing.T) {
	raw, err := os.ReadFile("../docs/export.md")
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := bytes.Cut(raw, []byte("```json\n"))
	block, _, ok2 := bytes.Cut(rest, []byte("```"))
	if !ok || !ok2 {
		t.Fatal("docs/export.md has no ```json example")
	}
	dec := json.NewDecoder(bytes.NewReader(block))
	dec.DisallowUnknownFields()
	var ex Document
	if err := dec.Decode(&ex); err != nil {
		t.Fatalf("docs/export.md example: %v", err)
	}
	if err := ex.Check(); err != nil {
		t.Fatalf("docs/export.md example: %v", err)
	}
	gb, err := os.ReadFile(filepath.Join("testdata", "export.golden.json"))
	if err != nil {
		t.Fatal(err)
	}
	var g Document
	if err := json.Unmarshal(gb, &g); err != nil {
		t.Fatal(err)
	}
	g.Shapes = g.Shapes[:1]
	a, _ := json.Marshal(&ex)
	b, _ := json.Marshal(&g)
	if !bytes.Equal(a, b) {
		t.Errorf("docs/export.md example differs from the golden file's (first shape):\n%s\n%s", a, b)
	}
}

// TestBinsJSON: the bins object decodes in any key order and with any
// whitespace, through the fast path and the fallback alike; a repeated
// index and a non-integer are refused.
func TestBinsJSON(t *testing.T) {
	b := func(pairs ...int) Bins {
		out := Bins{}
		for i := 0; i < len(pairs); i += 2 {
			out = append(out, analyzer.SketchBin{Index: pairs[i], Count: uint64(pairs[i+1])})
		}
		return out
	}
	cases := []struct {
		in   string
		want Bins
		err  bool
	}{
		{in: `{}`, want: b()},
		{in: ` { } `, want: b()},
		{in: `{"-3":1,"10":4,"365":2}`, want: b(-3, 1, 10, 4, 365, 2)},
		{in: "{\n  \"365\": 2,\n  \"-3\" : 1 ,\"10\":4\n}", want: b(-3, 1, 10, 4, 365, 2)},
		{in: `{"\u0031\u0030":4}`, want: b(10, 4)}, // escaped key: fallback
		{in: `{"10":4e0}`, err: true},
		{in: `{"10":4,"10":5}`, err: true},
		{in: `{"1.5":1}`, err: true},
		{in: `{"99999999999":1}`, err: true},
		{in: `{"1":-1}`, err: true},
		{in: `[1,2]`, err: true},
	}
	for _, tc := range cases {
		var got Bins
		err := json.Unmarshal([]byte(tc.in), &got)
		if tc.err {
			if err == nil {
				t.Errorf("%s: decoded %v, want an error", tc.in, got)
			}
			continue
		}
		if err != nil || !slices.Equal(got, tc.want) {
			t.Errorf("%s: %v, %v; want %v", tc.in, got, err, tc.want)
		}
		if out, _ := json.Marshal(got); tc.in == `{"-3":1,"10":4,"365":2}` && string(out) != tc.in {
			t.Errorf("encoded %s, want %s", out, tc.in)
		}
	}
}
