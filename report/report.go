// Package report builds pgaudit's offline HTML report (pgaudit report) from
// audit logs written by one or several proxy runs: shape statistics merged
// through their latency sketches, throughput, latency, pool utilization and
// clients over time, and the findings. The page is admin's dashboard page
// with the data and every asset inline, so it opens without a network.
//
// It reads files only; the live interfaces (SQL console, HTTP API,
// dashboard) are package admin.
package report

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/pgaudit-proxy/pgaudit/admin"
	"github.com/pgaudit-proxy/pgaudit/analyzer"
	"github.com/pgaudit-proxy/pgaudit/fleet"
	"github.com/pgaudit-proxy/pgaudit/internal/auditlog"
	"github.com/pgaudit-proxy/pgaudit/pooler"
	"github.com/pgaudit-proxy/pgaudit/rules"
)

// Input is one audit log for Build. Open is called twice (the
// report reads each log in two passes) and must return the same content
// each time; the caller's reader is closed after each pass.
type Input struct {
	// Name labels the input in bad-line reports and the page.
	Name string
	// Open returns the log's content.
	Open func() (io.ReadCloser, error)
}

// FileInput returns the Input of a file; a name ending in ".gz" is
// decompressed.
func FileInput(path string) Input {
	return Input{Name: path, Open: func() (io.ReadCloser, error) {
		f, err := os.Open(path)
		if err != nil {
			return nil, err
		}
		if !strings.HasSuffix(path, ".gz") {
			return f, nil
		}
		zr, err := gzip.NewReader(f)
		if err != nil {
			_ = f.Close()
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		return gzipFile{zr, f}, nil
	}}
}

type gzipFile struct {
	*gzip.Reader
	f *os.File
}

// Close closes the decompressor and the file.
func (g gzipFile) Close() error {
	_ = g.Reader.Close()
	return g.f.Close()
}

// Options configure Build. The zero value is usable.
type Options struct {
	// Title heads the page; default "pgaudit report".
	Title string
	// Version is printed in the page footer.
	Version string
	// MaxPoints bounds the points per chart (default 720); the interval
	// is the smallest of 10s, 15s, 30s, 1m, 2m, 5m, 10m, 15m, 30m, 1h, 2h,
	// 6h, 12h, 1d that stays within it.
	MaxPoints int
	// TopShapes is how many shapes the table lists (default 50).
	TopShapes int
	// Now is the clock for the "generated" time, for tests.
	Now func() time.Time
	// Fleet are live instances' exports (pgaudit report --from), failed
	// fetches included (they are listed as failed). Their shapes and
	// findings are merged with the audit logs' (the logs count as one
	// source) and the page gets a fleet section with the number of
	// sources behind each row.
	Fleet []fleet.Source
}

// Report is what Build computed; WriteHTML renders it.
type Report struct {
	// Dashboard is the page's data (the same shape the live dashboard
	// uses).
	Dashboard *admin.Dashboard
	// Summary is the audit log reader's summary: record counts, runs, bad
	// lines and the statistics merged across runs.
	Summary *auditlog.Summary
	// Stats are the shape statistics the table is drawn from: the latest
	// stats record of each run merged through the latency sketches, plus,
	// for runs without a stats record, statistics rebuilt from their
	// statement records.
	Stats *analyzer.Snapshot
	// Fleet is the merged view of the live instances and the logs, when
	// Options.Fleet was given; nil otherwise.
	Fleet   *fleet.View
	version string
}

// ErrNotAuditLog is returned by Build for an input that holds no
// audit-log record.
var ErrNotAuditLog = errors.New("not a pgaudit audit log")

// Build reads audit logs written by one or several proxies (any
// order, rotated files included) and computes the report: shape
// statistics merged across runs through their mergeable latency sketches,
// throughput and latency over time from statement records, pool
// utilization, transactions and clients over time from pool records, and
// the findings (the latest record of each finding per run, merged across
// runs). It fails on an I/O error and on an input that holds no audit-log
// record at all (a Postgres log given by mistake); other unusable lines
// are counted in Summary.
func Build(inputs []Input, opts Options) (*Report, error) {
	if opts.Title == "" {
		opts.Title = "pgaudit report"
	}
	if opts.MaxPoints <= 0 {
		opts.MaxPoints = 720
	}
	if opts.TopShapes <= 0 {
		opts.TopShapes = 50
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if len(inputs) == 0 && len(opts.Fleet) == 0 {
		return nil, errors.New("report: no audit logs or instances given")
	}
	// Pass 1: time range, pool and finding records, runs with stats.
	sc := &sideScan{findings: map[string]map[string]rules.Finding{}, statsRuns: map[string]bool{}}
	for _, in := range inputs {
		lines, records := sc.lines, sc.records
		if err := readInput(in, sc.scan); err != nil {
			return nil, err
		}
		if sc.lines > lines && sc.records == records {
			// A Postgres log, or any other file: an empty report would
			// look like a quiet proxy.
			return nil, fmt.Errorf("report: %s is %w (%d lines, no audit-log record); Postgres logs go to pgaudit lint", in.Name, ErrNotAuditLog, sc.lines-lines)
		}
	}
	if sc.records == 0 && len(inputs) > 0 {
		return nil, fmt.Errorf("report: the inputs hold no audit-log records: %w", ErrNotAuditLog)
	}
	width := pickWidth(sc.maxTS.Sub(sc.minTS), opts.MaxPoints)
	b := newBuckets(sc.minTS, sc.maxTS, width)

	// Pass 2: statements through the audit log reader.
	fp := analyzer.NewFingerprinter(analyzer.FingerprintConfig{})
	runStats := map[uint64]*analyzer.Stats{}
	rd := &auditlog.Reader{OnEvent: func(ev *analyzer.Event) error {
		if ev.Kind != analyzer.KindStatement {
			return nil
		}
		b.addEvent(ev)
		run := ev.SessionID >> 48
		st := runStats[run]
		if st == nil {
			st = analyzer.NewStats(analyzer.StatsConfig{})
			runStats[run] = st
		}
		var sh *analyzer.Shape
		if ev.Fingerprint != 0 {
			sh, _ = fp.LookupKnown(ev.Text, ev.Fingerprint)
		} else if ev.Text != "" {
			sh, _ = fp.Lookup(ev.Text, ev.Protocol)
		}
		st.Record(ev, sh)
		return nil
	}}
	for _, in := range inputs {
		err := readInput(in, func(r io.Reader) error { return rd.Read(in.Name, r) })
		if err != nil {
			return nil, err
		}
	}
	sum := rd.Summary()
	recorded, err := analyzer.MergeAuditStats(sum.RunStats)
	if err != nil {
		return nil, fmt.Errorf("report: %w", err)
	}
	snaps := []*analyzer.Snapshot{recorded}
	for idx, id := range sum.Runs {
		if sc.statsRuns[id] {
			continue
		}
		if st := runStats[uint64(idx)]; st != nil {
			snaps = append(snaps, st.Snapshot())
		}
	}
	merged, err := analyzer.MergeSnapshots(snaps...)
	if err != nil {
		return nil, fmt.Errorf("report: %w", err)
	}
	b.addPools(sc.pools)
	findings := sc.mergedFindings()
	var fleetView *fleet.View
	if len(opts.Fleet) > 0 {
		srcs := make([]fleet.Source, 0, len(opts.Fleet)+1)
		if len(inputs) > 0 {
			inst := fleet.Instance{Hostname: "audit logs", PgauditVersion: opts.Version, Exported: opts.Now().UTC()}
			srcs = append(srcs, fleet.Source{Name: "audit logs", Doc: fleet.Export(inst, merged, findings, nil)})
		}
		srcs = append(srcs, opts.Fleet...)
		m, err := fleet.Merge(srcs)
		if err != nil {
			return nil, fmt.Errorf("report: %w", err)
		}
		merged = m.Stats
		findings = make([]rules.Finding, len(m.Findings))
		for i, f := range m.Findings {
			findings[i] = f.Finding
		}
		fleetView = m.View(opts.TopShapes, opts.Now())
	}

	r := &Report{Summary: sum, Stats: merged, Fleet: fleetView, version: opts.Version}
	d := &admin.Dashboard{Title: opts.Title, Generated: opts.Now().UTC(), Series: b.series()}
	for _, st := range merged.Top(analyzer.ByTotalTime, opts.TopShapes) {
		d.Queries = append(d.Queries, admin.QueryRowOf(st))
	}
	if merged.Other != nil && merged.Other.Calls > 0 {
		d.Queries = append(d.Queries, admin.QueryRowOf(*merged.Other))
	}
	d.Findings = findings
	d.Fleet = fleetView
	d.Pools = sc.lastPools(len(sum.Runs) > 1)
	names := make([]string, len(inputs))
	for i, in := range inputs {
		names[i] = in.Name
	}
	if !sc.minTS.IsZero() {
		d.Subtitle = fmt.Sprintf("%s to %s UTC", sc.minTS.UTC().Format("2006-01-02 15:04:05"), sc.maxTS.UTC().Format("2006-01-02 15:04:05"))
	}
	d.Summary = []admin.SummaryItem{}
	if fleetView != nil {
		d.Summary = append(d.Summary, admin.SummaryItem{Label: "instances", Value: strconv.Itoa(fleetView.Instances)})
		if fleetView.Failed > 0 {
			d.Summary = append(d.Summary, admin.SummaryItem{Label: "instances failed", Value: strconv.Itoa(fleetView.Failed)})
		}
	}
	d.Summary = append(d.Summary, []admin.SummaryItem{
		{Label: "audit logs", Value: strconv.Itoa(len(inputs))},
		{Label: "proxy runs", Value: strconv.Itoa(len(sum.Runs))},
		{Label: "statements (stats)", Value: strconv.FormatUint(merged.Calls, 10)},
		{Label: "statement records", Value: strconv.Itoa(sum.Statements)},
		{Label: "query shapes", Value: strconv.Itoa(len(merged.Shapes))},
		// Statement time summed over statements: concurrent statements
		// add up, so it exceeds the wall time covered.
		{Label: "statement time (summed)", Value: (merged.Total).Round(time.Millisecond).String()},
	}...)
	d.Summary = append(d.Summary, admin.FindingsSummary(d.Findings)...)
	d.Summary = append(d.Summary, admin.SummaryItem{Label: "events dropped", Value: strconv.FormatUint(sum.Dropped, 10)})
	if len(names) > 0 {
		d.Notes = append(d.Notes, "Files: "+strings.Join(names, ", ")+".")
	}
	if fleetView != nil {
		d.Notes = append(d.Notes, fmt.Sprintf("Live instances: %d answered, %d failed. Shapes and findings merge them with the audit logs (which count as one source); the charts come from the audit logs only.", fleetView.Instances, fleetView.Failed))
	}
	d.Notes = append(d.Notes, fmt.Sprintf("Charts: %s intervals. Throughput, latency and wait come from statement records; transactions, utilization and clients from pool records.", width))
	if uint64(sum.Statements) < merged.Calls {
		d.Notes = append(d.Notes, fmt.Sprintf("The logs hold %d statement records for %d statements counted in stats records: statement records were sampled (audit_sample), so the throughput chart shows sampled statements while the shape table counts all.", sum.Statements, merged.Calls))
	}
	if sum.Dropped > 0 {
		d.Notes = append(d.Notes, fmt.Sprintf("%d events were dropped by the proxies' analyzer queues and are in no number here.", sum.Dropped))
	}
	if sum.BadLineCount > 0 {
		msg := fmt.Sprintf("%d unusable lines were skipped", sum.BadLineCount)
		if len(sum.BadLines) > 0 {
			bl := sum.BadLines[0]
			msg += fmt.Sprintf(" (first: %s:%d: %s)", bl.File, bl.Line, bl.Err)
		}
		d.Notes = append(d.Notes, msg+".")
	}
	if d.Queries == nil {
		d.Queries = []admin.QueryRow{}
	}
	if d.Findings == nil {
		d.Findings = []rules.Finding{}
	}
	if d.Pools == nil {
		d.Pools = []admin.PoolRow{}
	}
	r.Dashboard = d
	return r, nil
}

// WriteHTML writes the report as one self-contained HTML file: the data,
// the styles, the dashboard script and uPlot are inline, so it opens
// without a network.
func (r *Report) WriteHTML(w io.Writer) error {
	return admin.WriteSelfContained(w, r.version, r.Dashboard)
}

func readInput(in Input, f func(io.Reader) error) error {
	rc, err := in.Open()
	if err != nil {
		return fmt.Errorf("report: %w", err)
	}
	defer rc.Close()
	return f(rc)
}

// sideScan is the first pass over the logs: it reads only what the audit
// log reader does not hand out (record times, run ids of pool and finding
// records, which runs wrote stats records).
type sideScan struct {
	minTS, maxTS time.Time
	pools        []poolPoint
	// findings maps run id to finding id to the finding's latest record.
	findings  map[string]map[string]rules.Finding
	statsRuns map[string]bool
	// lines and records count the lines read and the audit-log records
	// among them.
	lines, records int
}

type poolPoint struct {
	t   time.Time
	run string
	ps  pooler.PoolStats
}

var (
	tsKey     = []byte(`"ts":"`)
	recordKey = []byte(`"record":"`)
	runKey    = []byte(`"run_id":"`)
)

// stringField returns the value of a simple "key":"value" field (no
// escapes) in a JSON line written by zerolog.
func stringField(line, key []byte) string {
	i := bytes.Index(line, key)
	if i < 0 {
		return ""
	}
	rest := line[i+len(key):]
	j := bytes.IndexByte(rest, '"')
	if j < 0 {
		return ""
	}
	return string(rest[:j])
}

func (sc *sideScan) scan(r io.Reader) error {
	br := bufio.NewReaderSize(r, 256<<10)
	for {
		line, err := br.ReadSlice('\n')
		if errors.Is(err, bufio.ErrBufferFull) {
			// A long line (a big stats record): read the rest.
			long := append([]byte(nil), line...)
			for errors.Is(err, bufio.ErrBufferFull) {
				line, err = br.ReadSlice('\n')
				long = append(long, line...)
			}
			line = long
		}
		if len(line) > 0 {
			sc.line(line)
		}
		if err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return fmt.Errorf("report: %w", err)
		}
	}
}

func (sc *sideScan) line(line []byte) {
	if len(bytes.TrimSpace(line)) > 0 {
		sc.lines++
	}
	if t, err := time.Parse(time.RFC3339Nano, stringField(line, tsKey)); err == nil {
		if stringField(line, recordKey) != "" && stringField(line, runKey) != "" {
			sc.records++
		}
		if sc.minTS.IsZero() || t.Before(sc.minTS) {
			sc.minTS = t
		}
		if t.After(sc.maxTS) {
			sc.maxTS = t
		}
		switch stringField(line, recordKey) {
		case auditlog.RecordPool:
			var rec struct {
				RunID string           `json:"run_id"`
				Pool  pooler.PoolStats `json:"pool"`
			}
			if json.Unmarshal(line, &rec) == nil {
				sc.pools = append(sc.pools, poolPoint{t: t, run: rec.RunID, ps: rec.Pool})
			}
		case auditlog.RecordFinding:
			var rec struct {
				RunID   string        `json:"run_id"`
				Finding rules.Finding `json:"finding"`
			}
			if json.Unmarshal(line, &rec) == nil && rec.Finding.ID != "" {
				m := sc.findings[rec.RunID]
				if m == nil {
					m = map[string]rules.Finding{}
					sc.findings[rec.RunID] = m
				}
				if old, ok := m[rec.Finding.ID]; !ok || !rec.Finding.LastSeen.Before(old.LastSeen) {
					m[rec.Finding.ID] = rec.Finding
				}
			}
		case auditlog.RecordStats:
			sc.statsRuns[stringField(line, runKey)] = true
		}
	}
}

// mergedFindings combines each finding's latest record per run: counts
// add up, first and last seen widen, the text is the newest run's.
func (sc *sideScan) mergedFindings() []rules.Finding {
	byID := map[string]rules.Finding{}
	for _, m := range sc.findings {
		for id, f := range m {
			if cur, ok := byID[id]; ok {
				f = rules.MergeSeen(cur, f)
			}
			byID[id] = f
		}
	}
	out := make([]rules.Finding, 0, len(byID))
	for _, f := range byID {
		out = append(out, f)
	}
	admin.SortFindings(out)
	return out
}

// lastPools returns the latest pool record of each (run, database, user);
// with several runs the run id is appended to the database name.
func (sc *sideScan) lastPools(manyRuns bool) []admin.PoolRow {
	type key struct{ run, db, user string }
	last := map[key]poolPoint{}
	for _, p := range sc.pools {
		k := key{p.run, p.ps.Database, p.ps.User}
		if cur, ok := last[k]; !ok || !p.t.Before(cur.t) {
			last[k] = p
		}
	}
	out := make([]admin.PoolRow, 0, len(last))
	for k, p := range last {
		r := admin.PoolRowOf(p.ps)
		if manyRuns {
			run := k.run
			if len(run) > 8 {
				run = run[:8]
			}
			r.Database += " @" + run
		}
		out = append(out, r)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Database != out[j].Database {
			return out[i].Database < out[j].Database
		}
		return out[i].User < out[j].User
	})
	return out
}

// niceWidths are the chart intervals a report may use.
var niceWidths = []time.Duration{
	10 * time.Second, 15 * time.Second, 30 * time.Second, time.Minute, 2 * time.Minute, 5 * time.Minute,
	10 * time.Minute, 15 * time.Minute, 30 * time.Minute, time.Hour, 2 * time.Hour, 6 * time.Hour, 12 * time.Hour, 24 * time.Hour,
}

func pickWidth(span time.Duration, maxPoints int) time.Duration {
	for _, w := range niceWidths {
		if span/w < time.Duration(maxPoints) {
			return w
		}
	}
	w := niceWidths[len(niceWidths)-1]
	for span/w >= time.Duration(maxPoints) {
		w *= 2
	}
	return w
}

// buckets accumulate the report's time series.
type buckets struct {
	t0    time.Time
	width time.Duration
	b     []bucket
}

type bucket struct {
	count, errors int64
	total         time.Duration
	lat, wait     *analyzer.LatencySketch
	xacts         float64
	xactsCovered  bool
	busy, size    float64
	utilMax       float64
	utilSeen      bool
	clients       map[string][2]int // pool key -> (clients, waiting), last seen
}

func newBuckets(minTS, maxTS time.Time, width time.Duration) *buckets {
	if minTS.IsZero() {
		return &buckets{width: width}
	}
	t0 := minTS.Truncate(width)
	n := int(maxTS.Sub(t0)/width) + 1
	return &buckets{t0: t0, width: width, b: make([]bucket, n)}
}

func (b *buckets) index(t time.Time) int {
	if len(b.b) == 0 {
		return -1
	}
	i := int(t.Sub(b.t0) / b.width)
	return min(max(i, 0), len(b.b)-1)
}

func (b *buckets) addEvent(ev *analyzer.Event) {
	if ev.Start.IsZero() {
		return
	}
	i := b.index(ev.Start.Add(ev.Duration))
	if i < 0 {
		return
	}
	k := &b.b[i]
	if k.lat == nil {
		k.lat, k.wait = analyzer.NewLatencySketch(), analyzer.NewLatencySketch()
	}
	k.count++
	k.total += ev.Duration
	k.lat.Add(ev.Duration)
	if ev.Wait > 0 {
		k.wait.Add(ev.Wait)
	}
	if ev.SQLState != "" {
		k.errors++
	}
}

// addPools spreads each pool's transaction deltas over the buckets its
// record interval covers and adds utilization and client counts at each
// record's time.
func (b *buckets) addPools(points []poolPoint) {
	if len(b.b) == 0 {
		return
	}
	type key struct{ run, db, user string }
	byKey := map[key][]poolPoint{}
	for _, p := range points {
		k := key{p.run, p.ps.Database, p.ps.User}
		byKey[k] = append(byKey[k], p)
	}
	for k, ps := range byKey {
		sort.Slice(ps, func(i, j int) bool { return ps[i].t.Before(ps[j].t) })
		name := k.run + "\x00" + k.db + "\x00" + k.user
		for i, p := range ps {
			kb := &b.b[b.index(p.t)]
			kb.busy += p.ps.Utilization * float64(p.ps.Size)
			kb.size += float64(p.ps.Size)
			kb.utilMax = max(kb.utilMax, p.ps.Utilization)
			kb.utilSeen = true
			if kb.clients == nil {
				kb.clients = map[string][2]int{}
			}
			kb.clients[name] = [2]int{p.ps.ClientsActive + p.ps.ClientsWaiting, p.ps.ClientsWaiting}
			if i == 0 {
				continue
			}
			prev := ps[i-1]
			d := float64(p.ps.Transactions - prev.ps.Transactions)
			if d < 0 || !p.t.After(prev.t) {
				continue // counter reset or duplicate
			}
			b.spread(prev.t, p.t, d)
		}
	}
}

// spread adds v, accumulated evenly over [from, to], to the buckets.
func (b *buckets) spread(from, to time.Time, v float64) {
	span := to.Sub(from).Seconds()
	for t := from; t.Before(to); {
		i := b.index(t)
		end := b.t0.Add(time.Duration(i+1) * b.width)
		if !end.After(t) || i == len(b.b)-1 {
			end = to
		}
		if end.After(to) {
			end = to
		}
		k := &b.b[i]
		k.xacts += v * end.Sub(t).Seconds() / span
		k.xactsCovered = true
		t = end
	}
}

func (b *buckets) series() admin.Series {
	s := admin.Series{IntervalS: b.width.Seconds()}
	secs := b.width.Seconds()
	for i := range b.b {
		k := &b.b[i]
		s.T = append(s.T, b.t0.Add(time.Duration(i+1)*b.width).Unix())
		s.QPS = append(s.QPS, admin.Num(round(float64(k.count)/secs, 3)))
		s.EPS = append(s.EPS, admin.Num(round(float64(k.errors)/secs, 3)))
		tps := admin.NaN
		if k.xactsCovered {
			tps = admin.Num(round(k.xacts/secs, 3))
		}
		s.TPS = append(s.TPS, tps)
		p50, p99, mean, w50, w99 := admin.NaN, admin.NaN, admin.NaN, admin.NaN, admin.NaN
		if k.count > 0 {
			p50, p99 = admin.MillisNum(k.lat.Quantile(0.5)), admin.MillisNum(k.lat.Quantile(0.99))
			mean = admin.MillisNum(k.total / time.Duration(k.count))
		}
		if k.wait != nil && k.wait.Count() > 0 {
			w50, w99 = admin.MillisNum(k.wait.Quantile(0.5)), admin.MillisNum(k.wait.Quantile(0.99))
		}
		s.P50MS = append(s.P50MS, p50)
		s.P99MS = append(s.P99MS, p99)
		s.MeanMS = append(s.MeanMS, mean)
		s.WaitP50MS = append(s.WaitP50MS, w50)
		s.WaitP99MS = append(s.WaitP99MS, w99)
		ua, um := admin.NaN, admin.NaN
		if k.utilSeen && k.size > 0 {
			ua, um = admin.Num(round(k.busy/k.size, 4)), admin.Num(round(k.utilMax, 4))
		}
		s.UtilAvg = append(s.UtilAvg, ua)
		s.UtilMax = append(s.UtilMax, um)
		cl, wt := admin.NaN, admin.NaN
		if k.clients != nil {
			var c, w int
			for _, v := range k.clients {
				c += v[0]
				w += v[1]
			}
			cl, wt = admin.Num(c), admin.Num(w)
		}
		s.Clients = append(s.Clients, cl)
		s.Waiting = append(s.Waiting, wt)
	}
	return s
}

// round rounds f to digits decimal places, as the dashboard's values are.
func round(f float64, digits int) float64 {
	p := math.Pow(10, float64(digits))
	return math.Round(f*p) / p
}
