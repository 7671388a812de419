package fleet

import (
	"fmt"
	"math"
	"sort"
	"time"

	"github.com/pgaudit-proxy/pgaudit/analyzer"
	"github.com/pgaudit-proxy/pgaudit/rules"
)

// Source is one instance's contribution to a merge: where it came from and
// its document, or the error that kept it out.
type Source struct {
	// Name is the URL fetched (or another label, such as "audit logs").
	Name string
	// Doc is the decoded document; nil when Err is set.
	Doc *Document
	// Err is why the source has no document (unreachable, refused,
	// malformed).
	Err error
}

// Merged is several instances' documents combined: statistics merged
// through their sketches (exact to the sketch's relative accuracy),
// findings merged by stable id, pools summed.
type Merged struct {
	// Stats holds every shape of every instance, merged.
	Stats *analyzer.Snapshot
	// ShapeInstances counts, per fingerprint, the instances that saw the
	// shape.
	ShapeInstances map[analyzer.Fingerprint]int
	// Findings are merged by stable id, highest severity first.
	Findings []Finding
	// Pools are summed by (database, user).
	Pools []Pool
	// PoolInstances counts, per Pools entry, the instances that have the
	// pool.
	PoolInstances []int
	// Sources lists every source in the order given, failed ones
	// included.
	Sources []SourceStatus
}

// Finding is a finding merged across instances: counts added, first seen
// the earliest and last seen the latest of any instance, the text and
// evidence of the instance that saw it last, open when open on any
// instance.
type Finding struct {
	rules.Finding
	// Instances counts the instances that reported the finding.
	Instances int `json:"instances"`
}

// SourceStatus is one source in a merged view: its identity when it
// answered, its error when not.
type SourceStatus struct {
	Name     string    `json:"source"`
	OK       bool      `json:"ok"`
	Error    string    `json:"error,omitempty"`
	Instance *Instance `json:"instance,omitempty"`
	Shapes   int       `json:"shapes"`
	Findings int       `json:"findings"`
}

// Merge combines the documents of the sources that have one; failed
// sources are listed in Merged.Sources with their error. It fails only on
// a document that cannot be decoded exactly (wrong version or sketch
// mapping).
func Merge(sources []Source) (*Merged, error) {
	m := &Merged{ShapeInstances: map[analyzer.Fingerprint]int{}}
	var snaps []*analyzer.Snapshot
	findings := map[string]*Finding{}
	pools := map[[2]string]int{}
	for _, src := range sources {
		st := SourceStatus{Name: src.Name, OK: src.Err == nil && src.Doc != nil}
		if src.Err != nil {
			st.Error = src.Err.Error()
		} else if src.Doc == nil {
			st.Error = "no document"
		}
		if !st.OK {
			m.Sources = append(m.Sources, st)
			continue
		}
		d := src.Doc
		snap, err := d.snapshot()
		if err != nil {
			return nil, fmt.Errorf("%s: %w", src.Name, err)
		}
		inst := d.Instance
		st.Instance, st.Shapes, st.Findings = &inst, len(d.Shapes), len(d.Findings)
		m.Sources = append(m.Sources, st)
		snaps = append(snaps, snap)
		for i := range snap.Shapes {
			if snap.Shapes[i].Calls > 0 {
				m.ShapeInstances[snap.Shapes[i].Fingerprint]++
			}
		}
		for _, f := range d.Findings {
			mergeFinding(findings, f)
		}
		for _, p := range d.Pools {
			k := [2]string{p.Database, p.User}
			i, ok := pools[k]
			if !ok {
				pools[k] = len(m.Pools)
				p.WaitHist = append([]int64(nil), p.WaitHist...)
				m.Pools = append(m.Pools, p)
				m.PoolInstances = append(m.PoolInstances, 1)
				continue
			}
			addPool(&m.Pools[i], &p)
			m.PoolInstances[i]++
		}
	}
	merged, err := analyzer.MergeSnapshots(snaps...)
	if err != nil {
		return nil, err
	}
	m.Stats = merged
	for _, f := range findings {
		m.Findings = append(m.Findings, *f)
	}
	sortFindings(m.Findings)
	return m, nil
}

// mergeFinding adds one instance's finding into byID.
func mergeFinding(byID map[string]*Finding, f rules.Finding) {
	cur, ok := byID[f.ID]
	if !ok {
		byID[f.ID] = &Finding{Finding: f.Clone(), Instances: 1}
		return
	}
	open := cur.Open() || f.Open()
	cur.Finding = rules.MergeSeen(f, cur.Finding).Clone() // on a tie, the record merged first stays
	if open {
		cur.Status, cur.ResolvedAt, cur.Resolution = rules.StatusOpen, time.Time{}, ""
	}
	cur.Instances++
}

func addPool(dst, p *Pool) {
	dst.Size += p.Size
	dst.ClActive += p.ClActive
	dst.ClWaiting += p.ClWaiting
	dst.SvActive += p.SvActive
	dst.SvIdle += p.SvIdle
	dst.SvLogin += p.SvLogin
	dst.XactCount += p.XactCount
	dst.XactTimeUS += p.XactTimeUS
	dst.QueryCount += p.QueryCount
	dst.BytesIn += p.BytesIn
	dst.BytesOut += p.BytesOut
	dst.WaitCount += p.WaitCount
	dst.WaitTotalUS += p.WaitTotalUS
	dst.WaitMaxUS = math.Max(dst.WaitMaxUS, p.WaitMaxUS)
	for i, n := range p.WaitHist {
		if i < len(dst.WaitHist) {
			dst.WaitHist[i] += n
		} else {
			dst.WaitHist = append(dst.WaitHist, n)
		}
	}
	if dst.Mode != p.Mode {
		dst.Mode = "mixed"
	}
}

// sortFindings orders open before resolved, then by severity, count and id.
func sortFindings(fs []Finding) {
	sort.Slice(fs, func(i, j int) bool {
		a, b := &fs[i], &fs[j]
		if a.Open() != b.Open() {
			return a.Open()
		}
		if a.Severity != b.Severity {
			return a.Severity > b.Severity
		}
		if a.Count != b.Count {
			return a.Count > b.Count
		}
		return a.ID < b.ID
	})
}

// View is a merged fleet for people and dashboards (/api/v1/fleet,
// pgaudit report --format json): the top shapes with percentiles from the
// merged sketches, the merged findings and pools, each row with the number
// of instances that contributed, and every source's status.
type View struct {
	Generated time.Time      `json:"generated"`
	Sources   []SourceStatus `json:"sources"`
	// Instances counts the sources that answered.
	Instances int `json:"instances"`
	// Failed counts the sources that did not.
	Failed   int        `json:"failed"`
	Calls    uint64     `json:"calls"`
	TotalUS  float64    `json:"total_us"`
	Shapes   []ShapeRow `json:"shapes"`
	Findings []Finding  `json:"findings"`
	Pools    []PoolRow  `json:"pools"`
}

// ShapeRow is one merged shape. Durations are microseconds; percentiles
// come from the merged sketch.
type ShapeRow struct {
	Fingerprint string  `json:"fingerprint,omitempty"`
	Query       string  `json:"query"`
	Instances   int     `json:"instances"`
	Calls       uint64  `json:"calls"`
	Errors      uint64  `json:"errors"`
	Rows        int64   `json:"rows"`
	TotalUS     float64 `json:"total_us"`
	MeanUS      float64 `json:"mean_us"`
	P50US       float64 `json:"p50_us"`
	P90US       float64 `json:"p90_us"`
	P99US       float64 `json:"p99_us"`
	MaxUS       float64 `json:"max_us"`
	SharePct    float64 `json:"share_pct"`
}

// PoolRow is one pool summed across instances.
type PoolRow struct {
	Pool
	Instances int `json:"instances"`
}

// View returns the merged view with the top shapes by total time (all
// when top <= 0), the other bucket last when it has calls.
func (m *Merged) View(top int, now time.Time) *View {
	v := &View{Generated: now.UTC(), Sources: m.Sources, Shapes: []ShapeRow{}, Findings: m.Findings, Pools: []PoolRow{}}
	if v.Sources == nil {
		v.Sources = []SourceStatus{}
	}
	if v.Findings == nil {
		v.Findings = []Finding{}
	}
	for _, s := range m.Sources {
		if s.OK {
			v.Instances++
		} else {
			v.Failed++
		}
	}
	if m.Stats != nil {
		v.Calls, v.TotalUS = m.Stats.Calls, us(m.Stats.Total)
		for _, st := range m.Stats.Top(analyzer.ByTotalTime, top) {
			v.Shapes = append(v.Shapes, shapeRow(&st, m.ShapeInstances[st.Fingerprint]))
		}
		if o := m.Stats.Other; o != nil && o.Calls > 0 {
			r := shapeRow(o, 0)
			r.Query = "(other shapes)"
			v.Shapes = append(v.Shapes, r)
		}
	}
	for i, p := range m.Pools {
		v.Pools = append(v.Pools, PoolRow{Pool: p, Instances: m.PoolInstances[i]})
	}
	return v
}

func shapeRow(st *analyzer.ShapeStats, instances int) ShapeRow {
	r := ShapeRow{
		Query: st.Query, Instances: instances,
		Calls: st.Calls, Errors: st.Errors, Rows: st.Rows,
		TotalUS: us(st.Total), MeanUS: us(st.Mean),
		P50US: us(st.P50), P90US: us(st.P90), P99US: us(st.P99), MaxUS: us(st.Max),
		SharePct: math.Round(st.Share*1e4) / 100,
	}
	if st.Fingerprint != 0 {
		r.Fingerprint = st.Fingerprint.String()
	}
	return r
}
