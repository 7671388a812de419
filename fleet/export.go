// Package fleet is the exchange format between pgaudit instances and the
// merge of several instances into one view: each instance serves its
// per-shape statistics (with the latency sketches' bins), findings and
// summable pool counters as a versioned JSON Document at /api/v1/export;
// `pgaudit report --from` and the dashboard's fleet view fetch those
// documents and merge them. Sketches merge bin by bin, so fleet
// percentiles are as accurate as one instance's (within
// analyzer.SketchRelativeAccuracy of the true value over all events), never
// averages of percentiles.
//
// docs/export.md documents the format.
package fleet

import (
	"encoding/json"
	"fmt"
	"math"
	"slices"
	"sort"
	"strconv"
	"time"

	"github.com/pgaudit-proxy/pgaudit/analyzer"
	"github.com/pgaudit-proxy/pgaudit/pooler"
	"github.com/pgaudit-proxy/pgaudit/rules"
)

// Version is the export format version this build writes and reads. A
// change that an older reader would misread gets a new version; fields may
// be added within a version (readers ignore fields they do not know).
const Version = 1

// Document is one instance's export (/api/v1/export).
type Document struct {
	// Version is the format version (Version).
	Version int `json:"version"`
	// Instance identifies who exported the document, and when.
	Instance Instance `json:"instance"`
	// Shapes are the individually tracked query shapes, by total time
	// descending.
	Shapes []Shape `json:"shapes"`
	// Other aggregates shapes beyond max_shapes; nil when empty.
	Other *Shape `json:"other,omitempty"`
	// Overflow counts statements recorded into Other because the cap on
	// tracked shapes was reached.
	Overflow uint64 `json:"overflow"`
	// Findings are the instance's findings (open and resolved), with
	// their stable ids.
	Findings []rules.Finding `json:"findings"`
	// Pools are the pools' counters that add up across instances.
	Pools []Pool `json:"pools"`
}

// Instance identifies the pgaudit process that wrote a Document.
type Instance struct {
	// PeerID is the proxy's peer_id (0 when not set).
	PeerID int `json:"peer_id"`
	// Listen is the proxy's client listen address.
	Listen string `json:"listen"`
	// Hostname is the machine's host name.
	Hostname string `json:"hostname"`
	// PgauditVersion is the build's version.
	PgauditVersion string `json:"pgaudit_version"`
	// Started is when the process (its admin state) started; StatsSince
	// when the statistics began counting.
	Started    time.Time `json:"started"`
	StatsSince time.Time `json:"stats_since"`
	// Exported is when the document was made.
	Exported time.Time `json:"exported"`
}

// Shape is one query shape's statistics. Durations are microseconds.
type Shape struct {
	// Fingerprint is the pg_query fingerprint as 16 hex digits; empty for
	// the other bucket.
	Fingerprint string `json:"fingerprint,omitempty"`
	// Query is the normalized statement (no literal values).
	Query    string  `json:"query,omitempty"`
	Fallback bool    `json:"fallback,omitempty"`
	Calls    uint64  `json:"calls"`
	Errors   uint64  `json:"errors"`
	Rows     int64   `json:"rows"`
	TotalUS  float64 `json:"total_us"`
	// WaitTotalUS, WaitMaxUS and Waited describe the time spent waiting
	// for a server connection.
	WaitTotalUS float64    `json:"wait_total_us"`
	WaitMaxUS   float64    `json:"wait_max_us"`
	Waited      uint64     `json:"waited"`
	FirstSeen   *time.Time `json:"first_seen,omitempty"`
	LastSeen    *time.Time `json:"last_seen,omitempty"`
	// Apps are the most frequent application_names (approximate counts).
	Apps []analyzer.AppCount `json:"apps,omitempty"`
	// Latency is the DDSketch of the shape's durations.
	Latency Sketch `json:"latency"`
}

// Sketch is a DDSketch written out: its index mapping's parameters, its
// bins, and exact summary numbers. Rebuilding it from these numbers gives
// the same sketch, so merging exported sketches is exact.
type Sketch struct {
	// Mapping is "logarithmic": bin i holds values in
	// [gamma^(i-index_offset), gamma^(i+1-index_offset)).
	Mapping string `json:"mapping"`
	// Unit of every value: "us" (microseconds).
	Unit             string  `json:"unit"`
	RelativeAccuracy float64 `json:"relative_accuracy"`
	Gamma            float64 `json:"gamma"`
	IndexOffset      float64 `json:"index_offset"`
	// MinIndexableValue is the smallest value with a bin; smaller values
	// (zero durations) count in ZeroCount.
	MinIndexableValue float64 `json:"min_indexable_value"`
	// Count is ZeroCount plus every bin's count.
	Count     uint64 `json:"count"`
	ZeroCount uint64 `json:"zero_count"`
	// PositiveBins maps bin index to count (only non-empty bins).
	PositiveBins Bins `json:"positive_bins"`
	// Min, Max and Sum are exact (not estimated from bins).
	Min float64 `json:"min"`
	Max float64 `json:"max"`
	Sum float64 `json:"sum"`
}

// Bins is a sketch's non-empty bins in ascending index order. It encodes
// as a JSON object from index (a decimal string) to count, keys in numeric
// order.
type Bins []analyzer.SketchBin

// MarshalJSON writes {"index": count, ...} in ascending index order.
func (b Bins) MarshalJSON() ([]byte, error) {
	out := []byte{'{'}
	for i, x := range b {
		if i > 0 {
			out = append(out, ',')
		}
		out = append(out, '"')
		out = strconv.AppendInt(out, int64(x.Index), 10)
		out = append(out, '"', ':')
		out = strconv.AppendUint(out, x.Count, 10)
	}
	return append(out, '}'), nil
}

// UnmarshalJSON reads the object written by MarshalJSON (any key order;
// a repeated index is an error).
func (b *Bins) UnmarshalJSON(data []byte) error {
	out, ok := parseBins(data)
	if !ok {
		// Escapes, exponents or anything else unusual: the slow way.
		var m map[string]uint64
		if err := json.Unmarshal(data, &m); err != nil {
			return fmt.Errorf("decode sketch bins: %w", err)
		}
		out = make(Bins, 0, len(m))
		for k, v := range m {
			i, err := strconv.ParseInt(k, 10, 32)
			if err != nil {
				return fmt.Errorf("decode sketch bins: bin index %q: %w", k, err)
			}
			out = append(out, analyzer.SketchBin{Index: int(i), Count: v})
		}
	}
	if !sort.SliceIsSorted(out, func(i, j int) bool { return out[i].Index < out[j].Index }) {
		sort.Slice(out, func(i, j int) bool { return out[i].Index < out[j].Index })
	}
	for i := 1; i < len(out); i++ {
		if out[i].Index == out[i-1].Index {
			return fmt.Errorf("decode sketch bins: bin index %d repeated", out[i].Index)
		}
	}
	*b = out
	return nil
}

// parseBins reads {"int": uint, ...} as MarshalJSON writes it (whitespace
// allowed), without a map; ok is false on anything else.
func parseBins(data []byte) (out Bins, ok bool) {
	i := 0
	ws := func() {
		for i < len(data) && (data[i] == ' ' || data[i] == '\n' || data[i] == '\t' || data[i] == '\r') {
			i++
		}
	}
	until := func(stop func(c byte) bool) []byte {
		j := i
		for i < len(data) && !stop(data[i]) {
			i++
		}
		return data[j:i]
	}
	ws()
	if i >= len(data) || data[i] != '{' {
		return nil, false
	}
	i++
	ws()
	if i < len(data) && data[i] == '}' {
		return Bins{}, true
	}
	for {
		if i >= len(data) || data[i] != '"' {
			return nil, false
		}
		i++
		key := until(func(c byte) bool { return c == '"' || c == '\\' })
		if i >= len(data) || data[i] != '"' {
			return nil, false
		}
		i++
		idx, err := strconv.ParseInt(string(key), 10, 32)
		if err != nil {
			return nil, false
		}
		ws()
		if i >= len(data) || data[i] != ':' {
			return nil, false
		}
		i++
		ws()
		num := until(func(c byte) bool { return c == ',' || c == '}' || c == ' ' || c == '\n' || c == '\t' || c == '\r' })
		n, err := strconv.ParseUint(string(num), 10, 64)
		if err != nil {
			return nil, false
		}
		out = append(out, analyzer.SketchBin{Index: int(idx), Count: n})
		ws()
		if i >= len(data) {
			return nil, false
		}
		switch data[i] {
		case ',':
			i++
			ws()
		case '}':
			i++
			ws()
			return out, i == len(data)
		default:
			return nil, false
		}
	}
}

// Pool is one pool's counters that add up across instances (gauges of the
// moment and cumulative counters since each pool started).
type Pool struct {
	Database string `json:"database"`
	User     string `json:"user"`
	Mode     string `json:"pool_mode"`
	Size     int    `json:"pool_size"`

	ClActive  int `json:"cl_active"`
	ClWaiting int `json:"cl_waiting"`
	SvActive  int `json:"sv_active"`
	SvIdle    int `json:"sv_idle"`
	SvLogin   int `json:"sv_login"`

	XactCount   int64   `json:"xact_count"`
	XactTimeUS  float64 `json:"xact_time_us"`
	QueryCount  int64   `json:"query_count"`
	BytesIn     int64   `json:"bytes_received"`
	BytesOut    int64   `json:"bytes_sent"`
	WaitCount   int64   `json:"wait_count"`
	WaitTotalUS float64 `json:"wait_total_us"`
	// WaitMaxUS is a maximum: it merges by max, not sum.
	WaitMaxUS float64 `json:"wait_max_us"`
	// WaitHist counts waits for a server connection: bucket 0 waits under
	// 1 µs, bucket i waits in [2^(i-1), 2^i) µs, the last one everything
	// longer.
	WaitHist []int64 `json:"wait_hist"`
}

func us(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }

func fromUS(v float64) time.Duration { return time.Duration(math.Round(v * float64(time.Microsecond))) }

func timePtr(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	t = t.UTC()
	return &t
}

// Export builds a Document from a statistics snapshot (with sketches, as
// analyzer.Stats.Snapshot returns it), the findings and the pools'
// statistics. inst.Exported is set by the caller. The arguments are not
// modified.
func Export(inst Instance, snap *analyzer.Snapshot, findings []rules.Finding, pools []pooler.PoolStats) *Document {
	d := &Document{Version: Version, Instance: inst, Shapes: []Shape{}, Findings: []rules.Finding{}, Pools: []Pool{}}
	if snap != nil {
		d.Instance.StatsSince = snap.Since
		for i := range snap.Shapes {
			d.Shapes = append(d.Shapes, shapeOf(&snap.Shapes[i]))
		}
		if snap.Other != nil && snap.Other.Calls > 0 {
			o := shapeOf(snap.Other)
			o.Fingerprint, o.Query = "", ""
			d.Other = &o
		}
		d.Overflow = snap.Overflow
	}
	for _, f := range findings {
		d.Findings = append(d.Findings, f.Clone())
	}
	for _, p := range pools {
		d.Pools = append(d.Pools, poolOf(p))
	}
	return d
}

func shapeOf(st *analyzer.ShapeStats) Shape {
	s := Shape{
		Query: st.Query, Fallback: st.Fallback,
		Calls: st.Calls, Errors: st.Errors, Rows: st.Rows, TotalUS: us(st.Total),
		WaitTotalUS: us(st.WaitTotal), WaitMaxUS: us(st.WaitMax), Waited: st.Waited,
		FirstSeen: timePtr(st.FirstSeen), LastSeen: timePtr(st.LastSeen),
		Apps: slices.Clone(st.Apps),
	}
	if st.Fingerprint != 0 {
		s.Fingerprint = st.Fingerprint.String()
	}
	sk := st.Sketch
	if sk == nil {
		sk = analyzer.NewLatencySketch()
	}
	b := sk.Bins()
	s.Latency = Sketch{
		Mapping: "logarithmic", Unit: "us",
		RelativeAccuracy: b.RelativeAccuracy, Gamma: b.Gamma, IndexOffset: b.IndexOffset,
		MinIndexableValue: b.MinIndexableValue,
		Count:             b.Count(), ZeroCount: b.Zero, PositiveBins: Bins(b.Positive),
		Min: us(st.Min), Max: us(st.Max), Sum: us(st.Total),
	}
	if s.Latency.PositiveBins == nil {
		s.Latency.PositiveBins = Bins{}
	}
	return s
}

func poolOf(p pooler.PoolStats) Pool {
	return Pool{
		Database: p.Database, User: p.User, Mode: p.Mode, Size: p.Size,
		ClActive: p.ClientsActive, ClWaiting: p.ClientsWaiting,
		SvActive: p.ServersActive, SvIdle: p.ServersIdle, SvLogin: p.ServersLogin,
		XactCount: p.Transactions, XactTimeUS: us(p.XactTime), QueryCount: p.Queries,
		BytesIn: p.BytesIn, BytesOut: p.BytesOut,
		WaitCount: p.Waits, WaitTotalUS: us(p.WaitTotal), WaitMaxUS: us(p.MaxWait),
		WaitHist: slices.Clone(p.WaitHist[:]),
	}
}

// Check validates a decoded document: its version and every sketch's
// mapping (which must be this build's, so that bins merge exactly).
func (d *Document) Check() error {
	_, err := d.snapshot()
	return err
}

// Stats converts the shape back to analyzer statistics, the latency
// sketch rebuilt from its bins (exactly: same bins, same quantiles).
func (s *Shape) Stats() (analyzer.ShapeStats, error) {
	st := analyzer.ShapeStats{
		Query: s.Query, Fallback: s.Fallback,
		Calls: s.Calls, Errors: s.Errors, Rows: s.Rows, Total: fromUS(s.TotalUS),
		Min: fromUS(s.Latency.Min), Max: fromUS(s.Latency.Max),
		WaitTotal: fromUS(s.WaitTotalUS), WaitMax: fromUS(s.WaitMaxUS), Waited: s.Waited,
		Apps: slices.Clone(s.Apps),
	}
	if s.Fingerprint != "" {
		v, err := strconv.ParseUint(s.Fingerprint, 16, 64)
		if err != nil {
			return st, fmt.Errorf("shape fingerprint %q: %w", s.Fingerprint, err)
		}
		st.Fingerprint = analyzer.Fingerprint(v)
	}
	if s.FirstSeen != nil {
		st.FirstSeen = *s.FirstSeen
	}
	if s.LastSeen != nil {
		st.LastSeen = *s.LastSeen
	}
	if s.Latency.Mapping != "logarithmic" || s.Latency.Unit != "us" {
		return st, fmt.Errorf("shape %s: sketch mapping %q unit %q: want logarithmic, us", s.Fingerprint, s.Latency.Mapping, s.Latency.Unit)
	}
	bins := analyzer.SketchBins{
		RelativeAccuracy: s.Latency.RelativeAccuracy, Gamma: s.Latency.Gamma, IndexOffset: s.Latency.IndexOffset,
		MinIndexableValue: s.Latency.MinIndexableValue, Zero: s.Latency.ZeroCount, Positive: s.Latency.PositiveBins,
	}
	if n := bins.Count(); n != s.Latency.Count {
		return st, fmt.Errorf("shape %s: sketch count %d, but its bins hold %d", s.Fingerprint, s.Latency.Count, n)
	}
	sk, err := analyzer.LatencySketchFromBins(bins)
	if err != nil {
		return st, fmt.Errorf("shape %s: %w", s.Fingerprint, err)
	}
	st.Sketch = sk
	return st, nil
}

// Snapshot converts the document's statistics back to an analyzer
// snapshot (sketches rebuilt exactly), ready to merge with
// analyzer.MergeSnapshots.
func (d *Document) Snapshot() (*analyzer.Snapshot, error) {
	snap, err := d.snapshot()
	if err != nil {
		return nil, err
	}
	// MergeSnapshots recomputes totals, shares and percentiles.
	return analyzer.MergeSnapshots(snap)
}

// snapshot is Snapshot without totals and percentiles (for a merge, which
// computes them once).
func (d *Document) snapshot() (*analyzer.Snapshot, error) {
	if d.Version != Version {
		return nil, fmt.Errorf("export version %d is not supported (this build reads version %d)", d.Version, Version)
	}
	snap := &analyzer.Snapshot{Since: d.Instance.StatsSince, Taken: d.Instance.Exported, Overflow: d.Overflow}
	for i := range d.Shapes {
		st, err := d.Shapes[i].Stats()
		if err != nil {
			return nil, err
		}
		snap.Shapes = append(snap.Shapes, st)
	}
	if d.Other != nil {
		st, err := d.Other.Stats()
		if err != nil {
			return nil, err
		}
		st.Fingerprint, st.Query = 0, ""
		snap.Other = &st
	}
	return snap, nil
}
