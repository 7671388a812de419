package analyzer

import (
	"cmp"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"math"
	"slices"
	"time"

	"github.com/DataDog/sketches-go/ddsketch"
	"github.com/DataDog/sketches-go/ddsketch/mapping"
	"github.com/DataDog/sketches-go/ddsketch/store"
)

// SketchRelativeAccuracy is the relative accuracy of every LatencySketch: a
// quantile estimate q̂ of a true quantile value q (the value of rank
// floor(p·(n-1)) in sorted order) satisfies |q̂ - q| <= 0.01·q. It is a
// constant so that sketches from different proxies and log files always
// share one index mapping and can be merged.
const SketchRelativeAccuracy = 0.01

// sketchMaxBins bounds a sketch's memory (8 bytes per bin). With 1 %
// accuracy 2048 bins span a ratio of about 1e17 between the smallest and
// largest value, far beyond any latency range; beyond it the lowest bins
// collapse, losing accuracy only on the lowest quantiles.
const sketchMaxBins = 2048

var sketchMapping mapping.IndexMapping

func init() {
	m, err := mapping.NewLogarithmicMapping(SketchRelativeAccuracy)
	if err != nil {
		panic(fmt.Sprintf("analyzer: sketch mapping: %v", err))
	}
	sketchMapping = m
}

func newSketchStore() store.Store { return store.NewCollapsingLowestDenseStore(sketchMaxBins) }

// LatencySketch is a mergeable quantile sketch of durations (a DDSketch from
// github.com/DataDog/sketches-go with relative accuracy
// SketchRelativeAccuracy). Values are kept in microseconds; zero and
// negative durations count as zero.
//
// A LatencySketch is not safe for concurrent use; the zero value is not
// usable (use NewLatencySketch). It marshals to JSON as a base64 string of
// the DDSketch binary encoding, index mapping included.
type LatencySketch struct {
	s *ddsketch.DDSketch
}

// NewLatencySketch returns an empty sketch.
func NewLatencySketch() *LatencySketch {
	return &LatencySketch{s: ddsketch.NewDDSketch(sketchMapping, newSketchStore(), newSketchStore())}
}

// Add records one duration.
func (l *LatencySketch) Add(d time.Duration) { l.addBin(binOf(d)) }

// addValue is Add through DDSketch.Add, for durations binOf does not
// index.
func (l *LatencySketch) addValue(d time.Duration) {
	if d <= 0 {
		_ = l.s.Add(0)
		return
	}
	_ = l.s.Add(float64(d) / float64(time.Microsecond))
}

// sketchBin is a duration's bin in sketchMapping, computed once per event
// and outside any lock (the mapping is a logarithm), then added to the
// shape's sketches; ok is false for durations the sketch does not index
// (zero, negative, beyond the mapping's range), which addBin hands to
// DDSketch.Add.
type sketchBin struct {
	d     time.Duration
	index int
	ok    bool
}

// binOf returns d's bin: what DDSketch.Add would compute for the value Add
// passes it.
func binOf(d time.Duration) sketchBin {
	b := sketchBin{d: d}
	if d <= 0 {
		return b
	}
	v := float64(d) / float64(time.Microsecond)
	if v > sketchMapping.MinIndexableValue() && v <= sketchMapping.MaxIndexableValue() {
		b.index, b.ok = sketchMapping.Index(v), true
	}
	return b
}

// addBin records one duration whose bin came from binOf; the result is
// that of Add(b.d).
func (l *LatencySketch) addBin(b sketchBin) {
	if !b.ok {
		l.addValue(b.d)
		return
	}
	l.s.GetPositiveValueStore().Add(b.index)
}

// Count returns the number of durations recorded.
func (l *LatencySketch) Count() uint64 {
	return uint64(math.Round(l.s.GetCount()))
}

// Quantile returns the estimated duration at quantile q in [0,1], or 0 when
// the sketch is empty or q is out of range.
func (l *LatencySketch) Quantile(q float64) time.Duration {
	v, err := l.s.GetValueAtQuantile(q)
	if err != nil || math.IsNaN(v) {
		return 0
	}
	return time.Duration(math.Round(v * float64(time.Microsecond)))
}

// Merge adds every value of o into l. o is not modified.
func (l *LatencySketch) Merge(o *LatencySketch) error {
	if o == nil || o.s == nil {
		return nil
	}
	if err := l.s.MergeWith(o.s); err != nil {
		return fmt.Errorf("merge latency sketch: %w", err)
	}
	return nil
}

// Copy returns an independent copy of l.
func (l *LatencySketch) Copy() *LatencySketch {
	return &LatencySketch{s: l.s.Copy()}
}

// MarshalBinary returns the DDSketch binary encoding (index mapping
// included).
func (l *LatencySketch) MarshalBinary() ([]byte, error) {
	var b []byte
	l.s.Encode(&b, false)
	return b, nil
}

// UnmarshalBinary replaces l's content with a decoded sketch. The encoding
// must use the same index mapping (SketchRelativeAccuracy).
func (l *LatencySketch) UnmarshalBinary(b []byte) error {
	s, err := ddsketch.DecodeDDSketch(b, newSketchStore, nil)
	if err != nil {
		return fmt.Errorf("decode latency sketch: %w", err)
	}
	if s.IndexMapping == nil || !s.IndexMapping.Equals(sketchMapping) {
		return fmt.Errorf("decode latency sketch: index mapping differs from relative accuracy %v", SketchRelativeAccuracy)
	}
	l.s = s
	return nil
}

// MarshalJSON encodes the sketch as a base64 string of MarshalBinary.
func (l *LatencySketch) MarshalJSON() ([]byte, error) {
	b, _ := l.MarshalBinary()
	return json.Marshal(base64.StdEncoding.EncodeToString(b))
}

// UnmarshalJSON decodes the form written by MarshalJSON.
func (l *LatencySketch) UnmarshalJSON(data []byte) error {
	var s string
	if err := json.Unmarshal(data, &s); err != nil {
		return fmt.Errorf("decode latency sketch: %w", err)
	}
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		return fmt.Errorf("decode latency sketch: %w", err)
	}
	return l.UnmarshalBinary(b)
}

// SketchBins is a LatencySketch's content as plain numbers: the index
// mapping's parameters and the bin counts, so that another program (or
// another pgaudit) can rebuild the sketch exactly (see
// LatencySketchFromBins) and merge it bin by bin. Values are microseconds.
// A value v lands in bin floor(log(v)/log(Gamma) + IndexOffset), as the
// DDSketch logarithmic mapping defines it: bin i covers
// [Gamma^(i-IndexOffset), Gamma^(i+1-IndexOffset)) and reads back as its
// lower bound times 1+RelativeAccuracy; values below
// MinIndexableValue (and zero durations) are counted in Zero.
type SketchBins struct {
	// RelativeAccuracy is the sketch's relative accuracy α;
	// Gamma = (1+α)/(1-α).
	RelativeAccuracy float64
	Gamma            float64
	IndexOffset      float64
	// MinIndexableValue is the smallest value that gets a bin.
	MinIndexableValue float64
	// Zero counts zero (and too small) values.
	Zero uint64
	// Positive lists the non-empty bins in ascending index order.
	Positive []SketchBin
}

// SketchBin is one bin of a sketch: its index and count.
type SketchBin struct {
	Index int
	Count uint64
}

// Count returns the number of values the bins hold.
func (b *SketchBins) Count() uint64 {
	n := b.Zero
	for _, x := range b.Positive {
		n += x.Count
	}
	return n
}

// Bins returns the sketch's mapping parameters and bins. The result is a
// copy owned by the caller.
func (l *LatencySketch) Bins() SketchBins {
	pb := sketchMapping.ToProto()
	out := SketchBins{
		RelativeAccuracy:  SketchRelativeAccuracy,
		Gamma:             pb.Gamma,
		IndexOffset:       pb.IndexOffset,
		MinIndexableValue: sketchMapping.MinIndexableValue(),
		Zero:              uint64(math.Round(l.s.GetZeroCount())),
	}
	l.s.GetPositiveValueStore().ForEach(func(index int, count float64) bool {
		if count > 0 {
			out.Positive = append(out.Positive, SketchBin{Index: index, Count: uint64(math.Round(count))})
		}
		return false
	})
	slices.SortFunc(out.Positive, func(a, b SketchBin) int { return cmp.Compare(a.Index, b.Index) })
	return out
}

// LatencySketchFromBins rebuilds a sketch from Bins' output. The mapping
// must be this build's (Gamma and IndexOffset within 1e-12 of
// SketchRelativeAccuracy's mapping); otherwise bins of the two could not
// be merged exactly and an error is returned. Rebuilding is exact: the
// result has the same bins, so the same quantiles, as the sketch that was
// exported.
func LatencySketchFromBins(b SketchBins) (*LatencySketch, error) {
	m, err := mapping.NewLogarithmicMappingWithGamma(b.Gamma, b.IndexOffset)
	if err != nil {
		return nil, fmt.Errorf("latency sketch: %w", err)
	}
	if !m.Equals(sketchMapping) {
		return nil, fmt.Errorf("latency sketch: mapping gamma %v, index offset %v differs from this build's (relative accuracy %v)", b.Gamma, b.IndexOffset, SketchRelativeAccuracy)
	}
	l := NewLatencySketch()
	if b.Zero > 0 {
		if err := l.s.AddWithCount(0, float64(b.Zero)); err != nil {
			return nil, fmt.Errorf("latency sketch: %w", err)
		}
	}
	st := l.s.GetPositiveValueStore()
	for _, x := range b.Positive {
		if x.Count > 0 {
			st.AddWithCount(x.Index, float64(x.Count))
		}
	}
	return l, nil
}
