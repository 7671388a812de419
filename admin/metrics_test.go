package admin

import (
	"bufio"
	"context"
	"io"
	"math"
	"net/http"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"

	"github.com/pgaudit-proxy/pgaudit/pooler"
)

// fleetHistograms are the histograms a fleet aggregates with sum by (le),
// with their labels and their documented, constant bucket bounds.
var fleetHistograms = map[string]struct {
	labels []string
	bounds []string
}{
	"pgaudit_query_duration_seconds": {
		labels: []string{"database"},
		bounds: []string{"0.0001", "0.00025", "0.0005", "0.001", "0.0025", "0.005", "0.01", "0.025", "0.05",
			"0.1", "0.25", "0.5", "1", "2.5", "5", "10", "30", "+Inf"},
	},
	"pgaudit_pool_wait_seconds": {
		labels: []string{"database", "user"},
		// 4^k µs, k = 0..12.
		bounds: []string{"1e-06", "4e-06", "1.6e-05", "6.4e-05", "0.000256", "0.001024", "0.004096",
			"0.016384", "0.065536", "0.262144", "1.048576", "4.194304", "16.777216", "+Inf"},
	},
}

// sampleLine is one line of the text exposition.
var sampleLine = regexp.MustCompile(`^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$`)
var labelPair = regexp.MustCompile(`([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"`)

// histSeries is one labelled series of a classic histogram as exposed.
type histSeries struct {
	les     []string
	buckets []float64
	count   float64
	hasCnt  bool
	labels  []string // label names, le excluded
}

// scrapeHistograms reads the text exposition and groups the _bucket and
// _count samples of the named histograms by series (labels without le).
func scrapeHistograms(t *testing.T, body string, names map[string]bool) map[string]map[string]*histSeries {
	t.Helper()
	out := map[string]map[string]*histSeries{}
	sc := bufio.NewScanner(strings.NewReader(body))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "#") || line == "" {
			continue
		}
		m := sampleLine.FindStringSubmatch(line)
		if m == nil {
			t.Fatalf("unparsable /metrics line %q", line)
		}
		metric, suffix := m[1], ""
		for _, s := range []string{"_bucket", "_count"} {
			if strings.HasSuffix(metric, s) && names[strings.TrimSuffix(metric, s)] {
				metric, suffix = strings.TrimSuffix(metric, s), s
			}
		}
		if suffix == "" {
			continue
		}
		v, err := strconv.ParseFloat(m[3], 64)
		if err != nil {
			t.Fatalf("value in %q: %v", line, err)
		}
		var key, le []string
		var lnames []string
		for _, p := range labelPair.FindAllStringSubmatch(m[2], -1) {
			if p[1] == "le" {
				le = append(le, p[2])
				continue
			}
			key = append(key, p[1]+"="+p[2])
			lnames = append(lnames, p[1])
		}
		k := strings.Join(key, ",")
		if out[metric] == nil {
			out[metric] = map[string]*histSeries{}
		}
		s := out[metric][k]
		if s == nil {
			s = &histSeries{labels: lnames}
			out[metric][k] = s
		}
		if suffix == "_count" {
			s.count, s.hasCnt = v, true
			continue
		}
		if len(le) != 1 {
			t.Fatalf("bucket without one le: %q", line)
		}
		s.les = append(s.les, le[0])
		s.buckets = append(s.buckets, v)
	}
	return out
}

// TestMetricsFleetHistograms scrapes /metrics of a running proxy and checks
// that the wait and latency histograms aggregate across instances: classic
// cumulative buckets at the documented constant bounds, ending in +Inf
// equal to _count, labelled by database (and pool user) only.
func TestMetricsFleetHistograms(t *testing.T) {
	e := newEnv(t, envOptions{mode: pooler.TransactionMode, size: 2})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	e.workload(ctx, 5)
	resp := httpGet(t, e.base+"/metrics")
	if resp.code != 200 {
		t.Fatalf("/metrics: %d %s", resp.code, resp.body)
	}
	names := map[string]bool{}
	for n := range fleetHistograms {
		names[n] = true
	}
	got := scrapeHistograms(t, string(resp.body), names)
	for name, want := range fleetHistograms {
		series := got[name]
		if len(series) == 0 {
			t.Errorf("%s: no series", name)
			continue
		}
		for key, s := range series {
			if !slices.Equal(s.labels, want.labels) {
				t.Errorf("%s{%s}: labels %v, want %v", name, key, s.labels, want.labels)
			}
			if !slices.Equal(s.les, want.bounds) {
				t.Errorf("%s{%s}: bounds %v, want %v", name, key, s.les, want.bounds)
			}
			for i := 1; i < len(s.buckets); i++ {
				if s.buckets[i] < s.buckets[i-1] {
					t.Errorf("%s{%s}: bucket le=%s = %v below le=%s = %v (not cumulative)",
						name, key, s.les[i], s.buckets[i], s.les[i-1], s.buckets[i-1])
				}
			}
			if !s.hasCnt || len(s.buckets) == 0 || s.buckets[len(s.buckets)-1] != s.count {
				t.Errorf("%s{%s}: +Inf bucket %v != _count %v", name, key, s.buckets, s.count)
			}
			if s.count == 0 {
				t.Errorf("%s{%s}: no observations after the workload", name, key)
			}
		}
	}
}

// TestPoolWaitHistogram checks the mapping of the pool's power-of-two
// microsecond buckets onto the exported bounds.
func TestPoolWaitHistogram(t *testing.T) {
	var h [40]int64
	h[0] = 3  // < 1 µs
	h[1] = 2  // [1, 2) µs
	h[3] = 5  // [4, 8) µs
	h[11] = 7 // [1024, 2048) µs
	h[39] = 1 // saturated
	got := poolWaitHistogram(h[:])
	want := map[float64]uint64{}
	for i, b := range poolWaitBuckets {
		switch {
		case i == 0:
			want[b] = 3 // < 1 µs
		case i == 1:
			want[b] = 5 // < 4 µs
		case i <= 5:
			want[b] = 10 // < 1024 µs
		default:
			want[b] = 17
		}
	}
	for b, n := range want {
		if got[b] != n {
			t.Errorf("le=%g: %d, want %d", b, got[b], n)
		}
	}
	if len(got) != len(poolWaitBuckets) || len(poolWaitBuckets) != 13 {
		t.Errorf("%d buckets, want 13", len(got))
	}
}

// nativeBuckets decodes a native histogram's positive spans and deltas to
// counts by bucket index.
func nativeBuckets(h *dto.Histogram) map[int]int64 {
	out := map[int]int64{}
	idx, d := 0, 0
	var cur int64
	for i, sp := range h.GetPositiveSpan() {
		if i == 0 {
			idx = int(sp.GetOffset())
		} else {
			idx += int(sp.GetOffset())
		}
		for range sp.GetLength() {
			cur += h.GetPositiveDelta()[d]
			d++
			out[idx] = cur
			idx++
		}
	}
	return out
}

// TestMetricsNativeHistogram scrapes /metrics as Prometheus does when
// native histograms are on (delimited protobuf) and checks both histograms
// carry a native schema with spans holding every observation, and the
// classic buckets alongside.
func TestMetricsNativeHistogram(t *testing.T) {
	e := newEnv(t, envOptions{mode: pooler.TransactionMode, size: 2})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	e.workload(ctx, 5)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, e.base+"/metrics", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Accept", "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	format := expfmt.ResponseFormat(resp.Header)
	if format.FormatType() != expfmt.TypeProtoDelim {
		t.Fatalf("Content-Type %q, want delimited protobuf", resp.Header.Get("Content-Type"))
	}
	want := map[string]struct {
		schema  int32
		classic int
	}{
		"pgaudit_query_duration_seconds": {3, len(queryDurationBuckets)},
		"pgaudit_pool_wait_seconds":      {pooler.NativeWaitSchema, len(poolWaitBuckets)},
	}
	found := map[string]bool{}
	dec := expfmt.NewDecoder(resp.Body, format)
	for {
		var mf dto.MetricFamily
		if err := dec.Decode(&mf); err == io.EOF {
			break
		} else if err != nil {
			t.Fatal(err)
		}
		w, ok := want[mf.GetName()]
		if !ok {
			continue
		}
		if mf.GetType() != dto.MetricType_HISTOGRAM {
			t.Errorf("%s is %v", mf.GetName(), mf.GetType())
		}
		for _, m := range mf.GetMetric() {
			h := m.GetHistogram()
			found[mf.GetName()] = true
			if h.Schema == nil || h.GetSchema() != w.schema {
				t.Errorf("%s: schema %v, want %d", mf.GetName(), h.Schema, w.schema)
			}
			if len(h.GetPositiveSpan()) == 0 || len(h.GetPositiveDelta()) == 0 {
				t.Errorf("%s: no native spans or deltas: %v", mf.GetName(), h)
			}
			native := h.GetZeroCount()
			for _, c := range nativeBuckets(h) {
				if c < 0 {
					t.Errorf("%s: negative bucket in %v", mf.GetName(), h)
				}
				native += uint64(c)
			}
			if native != h.GetSampleCount() || native == 0 {
				t.Errorf("%s: native buckets hold %d observations, count %d", mf.GetName(), native, h.GetSampleCount())
			}
			if len(h.GetBucket()) != w.classic {
				t.Errorf("%s: %d classic buckets alongside, want %d", mf.GetName(), len(h.GetBucket()), w.classic)
			}
		}
	}
	for name := range want {
		if !found[name] {
			t.Errorf("%s not in the protobuf scrape", name)
		}
	}
}

// TestPoolWaitNative checks the native buckets of the pool wait histogram
// against the waits recorded: each lands in the bucket whose bounds hold
// it, spans with gaps decode back.
func TestPoolWaitNative(t *testing.T) {
	waits := []time.Duration{0, 500 * time.Nanosecond, 3 * time.Microsecond, 3 * time.Microsecond,
		200 * time.Microsecond, 2 * time.Millisecond, time.Second, 2 * time.Second, 3 * time.Hour}
	var s pooler.PoolStats
	s.Database, s.User = "db", "u"
	wantNative := map[int]int64{}
	var wantZero uint64
	for _, w := range waits {
		s.Waits++
		s.WaitTotal += w
		v := w.Seconds()
		if v <= pooler.NativeWaitZeroThreshold {
			s.WaitZero++
			wantZero++
			continue
		}
		// Bucket i holds (2^((i-1)/4), 2^(i/4)].
		i := int(math.Ceil(4 * math.Log2(v)))
		i = min(i, 48)
		if lo, hi := math.Pow(2, float64(i-1)/4), math.Pow(2, float64(i)/4); i < 48 && !(v > lo && v <= hi) {
			t.Fatalf("%v: bucket %d (%g, %g]", w, i, lo, hi)
		}
		wantNative[i]++
		s.WaitNative[i-pooler.NativeWaitFirst]++
	}
	var m dto.Metric
	if err := newPoolWaitMetric(&s).Write(&m); err != nil {
		t.Fatal(err)
	}
	h := m.GetHistogram()
	if h.GetZeroCount() != wantZero || h.GetZeroThreshold() != pooler.NativeWaitZeroThreshold {
		t.Errorf("zero bucket %d (threshold %g), want %d", h.GetZeroCount(), h.GetZeroThreshold(), wantZero)
	}
	got := nativeBuckets(h)
	for i, c := range got {
		if c != wantNative[i] {
			t.Errorf("bucket %d: %d, want %d", i, c, wantNative[i])
		}
	}
	if len(got) != len(wantNative) || len(h.GetPositiveSpan()) < 3 {
		t.Errorf("buckets %v (spans %v), want %v", got, h.GetPositiveSpan(), wantNative)
	}
	if len(m.GetLabel()) != 2 || m.GetLabel()[0].GetValue() != "db" || m.GetLabel()[1].GetValue() != "u" {
		t.Errorf("labels %v", m.GetLabel())
	}
}
