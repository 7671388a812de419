package fleet

import (
	"encoding/json"
	"math"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/pgaudit-proxy/pgaudit/analyzer"
)

// benchSnapshot is 1000 shapes with 200 lognormal latencies each.
func benchSnapshot(b *testing.B, seed uint64) *analyzer.Snapshot {
	r := rand.New(rand.NewPCG(seed, 7))
	st := analyzer.NewStats(analyzer.StatsConfig{})
	for i := range 1000 {
		sh := &analyzer.Shape{Fingerprint: analyzer.Fingerprint(i + 1), Normalized: "SELECT * FROM t WHERE id = $1 -- shape"}
		for range 200 {
			d := time.Duration(math.Exp(r.NormFloat64()*1.2+6.5) * float64(time.Microsecond))
			st.Record(&analyzer.Event{Kind: analyzer.KindStatement, Start: time.Now(), Duration: d}, sh)
		}
	}
	return st.Snapshot()
}

// BenchmarkExportEncode: a 1000-shape export to JSON (what
// /api/v1/export does per request, snapshot excluded).
func BenchmarkExportEncode(b *testing.B) {
	snap := benchSnapshot(b, 1)
	var n int
	for b.Loop() {
		out, err := json.Marshal(Export(Instance{}, snap, nil, nil))
		if err != nil {
			b.Fatal(err)
		}
		n = len(out)
	}
	b.ReportMetric(float64(n), "bytes/doc")
}

// BenchmarkDecodeMerge3: decode three 1000-shape exports and merge them
// (what report --from and the fleet view do per refresh).
func BenchmarkDecodeMerge3(b *testing.B) {
	var raw [3][]byte
	for i := range raw {
		var err error
		if raw[i], err = json.Marshal(Export(Instance{}, benchSnapshot(b, uint64(i)), nil, nil)); err != nil {
			b.Fatal(err)
		}
	}
	for b.Loop() {
		var srcs []Source
		for i := range raw {
			var d Document
			if err := json.Unmarshal(raw[i], &d); err != nil {
				b.Fatal(err)
			}
			srcs = append(srcs, Source{Name: "x", Doc: &d})
		}
		if _, err := Merge(srcs); err != nil {
			b.Fatal(err)
		}
	}
}
