package analyzer

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"math"
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
func (l *LatencySketch) Add(d time.Duration) {
	if d <= 0 {
		_ = l.s.Add(0)
		return
	}
	_ = l.s.Add(float64(d) / float64(time.Microsecond))
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
