package admin

import (
	"math"
	"strconv"
	"sync"
	"time"
)

// Num is a float that encodes NaN as JSON null (a gap in a chart).
type Num float64

// MarshalJSON writes null for NaN and infinities, else the number.
func (n Num) MarshalJSON() ([]byte, error) {
	f := float64(n)
	if math.IsNaN(f) || math.IsInf(f, 0) {
		return []byte("null"), nil
	}
	return strconv.AppendFloat(nil, f, 'f', -1, 64), nil
}

// UnmarshalJSON reads a number, or null as NaN.
func (n *Num) UnmarshalJSON(b []byte) error {
	if string(b) == "null" {
		*n = Num(math.NaN())
		return nil
	}
	f, err := strconv.ParseFloat(string(b), 64)
	if err != nil {
		return err
	}
	*n = Num(f)
	return nil
}

// NaN is the chart value of an interval where nothing was measured (JSON
// null).
var NaN = Num(math.NaN())

// Series is the time series the dashboard and the report chart, in
// columns: T[i] is the end of interval i (Unix seconds) and every other
// slice has the value of that interval, null where nothing was measured.
type Series struct {
	// IntervalS is the width of one interval in seconds.
	IntervalS float64 `json:"interval_s"`
	T         []int64 `json:"t"`
	// QPS is statements per second, EPS failed statements per second
	// (both as the analyzer saw them); TPS is transactions per second
	// from the pool counters.
	QPS []Num `json:"qps"`
	EPS []Num `json:"eps"`
	TPS []Num `json:"tps"`
	// P50MS, P99MS and MeanMS are statement latency over the interval,
	// in milliseconds.
	P50MS  []Num `json:"p50_ms"`
	P99MS  []Num `json:"p99_ms"`
	MeanMS []Num `json:"mean_ms"`
	// UtilAvg is the capacity-weighted utilization of all pools (0..1),
	// UtilMax the highest of any pool.
	UtilAvg []Num `json:"util_avg"`
	UtilMax []Num `json:"util_max"`
	// WaitP50MS and WaitP99MS are percentiles of the time statements
	// waited for a server connection, among those that waited, in
	// milliseconds.
	WaitP50MS []Num `json:"wait_p50_ms"`
	WaitP99MS []Num `json:"wait_p99_ms"`
	// Clients and Waiting are connected and waiting clients at the end of
	// the interval.
	Clients []Num `json:"clients"`
	Waiting []Num `json:"waiting"`
}

// sample is one interval of the live series.
type sample struct {
	t                time.Time
	qps, eps, tps    Num
	p50, p99, mean   Num
	utilAvg, utilMax Num
	waitP50, waitP99 Num
	clients, waiting Num
	xacts            int64 // cumulative transactions at t
	totals           map[string]dbTotals
	hadXacts         bool
}

// timeSeries is a ring of samples.
type timeSeries struct {
	mu   sync.Mutex
	buf  []sample
	next int
	n    int
}

func newTimeSeries(size int) *timeSeries { return &timeSeries{buf: make([]sample, size)} }

func (ts *timeSeries) add(s sample) {
	ts.mu.Lock()
	ts.buf[ts.next] = s
	ts.next = (ts.next + 1) % len(ts.buf)
	ts.n = min(ts.n+1, len(ts.buf))
	ts.mu.Unlock()
}

// ordered returns the samples oldest first. Caller holds mu.
func (ts *timeSeries) orderedLocked() []sample {
	out := make([]sample, 0, ts.n)
	start := (ts.next - ts.n + len(ts.buf)) % len(ts.buf)
	for i := 0; i < ts.n; i++ {
		out = append(out, ts.buf[(start+i)%len(ts.buf)])
	}
	return out
}

// last returns the newest sample.
func (ts *timeSeries) last() (sample, bool) {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	if ts.n == 0 {
		return sample{}, false
	}
	return ts.buf[(ts.next-1+len(ts.buf))%len(ts.buf)], true
}

// statsBase returns the per-database totals of the newest sample taken at
// or before at (else the oldest sample), for SHOW STATS averages; a zero
// time when there is none.
func (ts *timeSeries) statsBase(at time.Time) (map[string]dbTotals, time.Time) {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	var best *sample
	s := ts.orderedLocked()
	for i := range s {
		if s[i].totals == nil {
			continue
		}
		if best == nil || !s[i].t.After(at) {
			best = &s[i]
		}
		if s[i].t.After(at) {
			break
		}
	}
	if best == nil {
		return nil, time.Time{}
	}
	return best.totals, best.t
}

// series returns the samples as columns.
func (ts *timeSeries) series(interval time.Duration) Series {
	ts.mu.Lock()
	s := ts.orderedLocked()
	ts.mu.Unlock()
	out := Series{IntervalS: interval.Seconds()}
	for _, x := range s {
		out.T = append(out.T, x.t.Unix())
		out.QPS = append(out.QPS, x.qps)
		out.EPS = append(out.EPS, x.eps)
		out.TPS = append(out.TPS, x.tps)
		out.P50MS = append(out.P50MS, x.p50)
		out.P99MS = append(out.P99MS, x.p99)
		out.MeanMS = append(out.MeanMS, x.mean)
		out.UtilAvg = append(out.UtilAvg, x.utilAvg)
		out.UtilMax = append(out.UtilMax, x.utilMax)
		out.WaitP50MS = append(out.WaitP50MS, x.waitP50)
		out.WaitP99MS = append(out.WaitP99MS, x.waitP99)
		out.Clients = append(out.Clients, x.clients)
		out.Waiting = append(out.Waiting, x.waiting)
	}
	return out
}

// Series returns the live time series (the last SampleWindow).
func (a *Admin) Series() Series { return a.series.series(a.opts.SampleInterval) }

// MillisNum is d in milliseconds, rounded to the microsecond, as a chart
// value.
func MillisNum(d time.Duration) Num { return Num(round(float64(d)/float64(time.Millisecond), 3)) }

// sample takes one time-series sample; the sampler goroutine calls it
// every SampleInterval.
func (a *Admin) sample() {
	now := a.now()
	ps := a.poolStats()
	iv := a.obs.takeInterval()
	prev, havePrev := a.series.last()
	from := a.started
	if havePrev {
		from = prev.t
	}
	secs := now.Sub(from).Seconds()
	if secs <= 0 {
		secs = a.opts.SampleInterval.Seconds()
	}
	s := sample{t: now, qps: Num(round(float64(iv.count)/secs, 3)), eps: Num(round(float64(iv.errors)/secs, 3)),
		p50: NaN, p99: NaN, mean: NaN, utilAvg: NaN, utilMax: NaN, waitP50: NaN, waitP99: NaN, tps: NaN}
	if iv.count > 0 {
		s.p50 = MillisNum(iv.lat.Quantile(0.5))
		s.p99 = MillisNum(iv.lat.Quantile(0.99))
		s.mean = MillisNum(iv.total / time.Duration(iv.count))
	}
	if iv.wait.Count() > 0 {
		s.waitP50 = MillisNum(iv.wait.Quantile(0.5))
		s.waitP99 = MillisNum(iv.wait.Quantile(0.99))
	}
	var busy, size, umax float64
	var waiting int
	for _, p := range ps {
		s.xacts += p.Transactions
		busy += p.Utilization * float64(p.Size)
		size += float64(p.Size)
		umax = max(umax, p.Utilization)
		waiting += p.ClientsWaiting
	}
	s.hadXacts = true
	if len(ps) > 0 && size > 0 {
		s.utilAvg = Num(round(busy/size, 4))
		s.utilMax = Num(round(umax, 4))
	}
	var prevX int64
	if havePrev && prev.hadXacts {
		prevX = prev.xacts
	}
	if d := s.xacts - prevX; d >= 0 {
		s.tps = Num(round(float64(d)/secs, 3))
	}
	if p := a.proxy.Load(); p != nil {
		s.clients = Num(p.ClientCount())
		s.waiting = Num(waiting)
	} else {
		s.clients, s.waiting = NaN, NaN
	}
	s.totals = a.totalsByDB(ps)
	a.series.add(s)
}
