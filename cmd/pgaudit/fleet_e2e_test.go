package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/rs/zerolog"

	"github.com/pgaudit-proxy/pgaudit/admin"
	"github.com/pgaudit-proxy/pgaudit/analyzer"
	"github.com/pgaudit-proxy/pgaudit/fleet"
	"github.com/pgaudit-proxy/pgaudit/internal/pgtest"
	"github.com/pgaudit-proxy/pgaudit/internal/testutil"
	"github.com/pgaudit-proxy/pgaudit/pooler"
)

// fleetSleeps is the workload's known latency distribution, in
// milliseconds, sorted: most statements sleep 1 to 3 ms, one in ten 10
// to 40 ms. Instance k runs the k-th third, so only the last instance sees
// the tail: a p99 averaged over instances would be far off.
func fleetSleeps() []float64 {
	var ms []float64
	for i := range 300 {
		if i%10 == 9 {
			ms = append(ms, 10+float64(i%31))
		} else {
			ms = append(ms, 1+float64(i%21)/10)
		}
	}
	slices.Sort(ms)
	return ms
}

// fleetInstance is a proxy with its auditor and admin HTTP listener.
type fleetInstance struct {
	e   *e2eProxy
	adm *admin.Admin
	url string
	mu  sync.Mutex
	// durations are the pg_sleep statements' durations as the proxy
	// measured them (what its sketch was fed).
	durations []time.Duration
}

// TestFleetMergedP99 (issue 17, section 2): three proxies on loopback
// each run a third of a workload with a known latency distribution; the
// p99 merged by `pgaudit report --from` and by the fleet dashboard API
// matches the p99 over every event within the sketch's relative error
// (and equals the p99 of one sketch fed every event: the merge is exact).
// A peer that is down shows as failed; report without --allow-partial
// fails naming it.
func TestFleetMergedP99(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	c := startE2ECluster(t, ctx, pgtest.Options{}, "", false)
	const token = "fleet-test-token"
	t.Setenv("PGAUDIT_ADMIN_TOKEN", token)
	auth := admin.HTTPAuth{Token: token}

	// A closed port: the peer that is down.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	deadURL := "http://" + l.Addr().String()
	_ = l.Close()

	insts := make([]*fleetInstance, 3)
	// Start instances 1 and 2 first: instance 0 lists them as peers.
	for _, k := range []int{1, 2, 0} {
		fi := &fleetInstance{}
		obs := analyzer.ObserverFunc(func(a *analyzer.Analyzed) {
			if a.Shape != nil && strings.Contains(a.Shape.Normalized, "pg_sleep") && a.Event.Kind == analyzer.KindStatement {
				fi.mu.Lock()
				fi.durations = append(fi.durations, a.Event.Duration)
				fi.mu.Unlock()
			}
		})
		var cur atomic.Pointer[settings]
		fi.e = startE2EProxy(t, ctx, c, auditorOptions{Observers: []analyzer.Observer{obs}}, 4, func(cfg *pooler.Config) {
			cfg.PeerID = k + 1
			cur.Store(&settings{proxy: cfg})
		})
		aopts := adminOptions{HTTPAuth: auth, Settings: &cur, Log: zerolog.Nop()}
		if k == 0 {
			aopts.Fleet = fleetSettings{peers: []string{insts[1].url, insts[2].url, deadURL}, auth: fleet.Auth{Token: token}, timeout: 2 * time.Second}
		}
		fi.adm = newAdmin(aopts)
		stop, err := startAdmin(ctx, fi.adm, fi.e.proxy, fi.e.aud, aopts)
		if err != nil {
			t.Fatal(err)
		}
		addr, err := fi.adm.ListenAndServe("127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		fi.url = "http://" + addr.String()
		t.Cleanup(func() { stop(); fi.e.stop() })
		insts[k] = fi
	}

	// The workload: instance k runs sleeps[100k:100k+100] on two
	// connections, all instances at once.
	sleeps := fleetSleeps()
	var wg sync.WaitGroup
	errs := make(chan error, 6)
	for k, fi := range insts {
		part := sleeps[100*k : 100*k+100]
		for w := range 2 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				conn, err := pgx.Connect(ctx, fi.e.DSN)
				if err != nil {
					errs <- err
					return
				}
				defer conn.Close(context.Background())
				for i := w; i < len(part); i += 2 {
					if _, err := conn.Exec(ctx, "SELECT pg_sleep($1)", part[i]/1000); err != nil {
						errs <- fmt.Errorf("instance %d: %w", k, err)
						return
					}
				}
			}()
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	var all []time.Duration
	instP99 := 0.0
	for k, fi := range insts {
		testutil.Eventually(t, 10*time.Second, fmt.Sprintf("instance %d analyzed 100 pg_sleep statements", k), func() bool {
			fi.mu.Lock()
			defer fi.mu.Unlock()
			return len(fi.durations) >= 100
		})
		fi.mu.Lock()
		all = append(all, fi.durations...)
		fi.mu.Unlock()
		// Statistics are recorded before observers run.
		for _, st := range fi.e.aud.pipeline.Stats().TopShapes(analyzer.ByCalls, 0) {
			if strings.Contains(st.Query, "pg_sleep") {
				instP99 += float64(st.P99) / 3
			}
		}
	}
	if len(all) != 300 {
		t.Fatalf("%d pg_sleep events, want 300", len(all))
	}
	slices.Sort(all)
	truth := all[int(0.99*float64(len(all)-1))]
	whole := analyzer.NewLatencySketch()
	for _, d := range all {
		whole.Add(d)
	}
	exact := min(max(whole.Quantile(0.99), all[0]), all[len(all)-1])
	t.Logf("p99 over all events %v; one sketch of all %v; mean of the instances' p99s %v", truth, exact, time.Duration(instP99))
	if math.Abs(instP99-float64(truth)) <= analyzer.SketchRelativeAccuracy*float64(truth) {
		t.Fatalf("the averaged p99 %v is as good as a merge: the workload does not tell them apart", time.Duration(instP99))
	}

	checkView := func(how string, v *fleet.View, wantInstances, wantFailed int) {
		t.Helper()
		if v.Instances != wantInstances || v.Failed != wantFailed {
			t.Errorf("%s: %d instances, %d failed; want %d, %d (%+v)", how, v.Instances, v.Failed, wantInstances, wantFailed, v.Sources)
		}
		for _, s := range v.Sources {
			if !s.OK && !strings.Contains(s.Error, deadURL) {
				t.Errorf("%s: failed source %q: error %q does not name %s", how, s.Name, s.Error, deadURL)
			}
		}
		for _, row := range v.Shapes {
			if !strings.Contains(row.Query, "pg_sleep") {
				continue
			}
			p99 := time.Duration(math.Round(row.P99US * 1000))
			if row.Calls != 300 || row.Instances != 3 {
				t.Errorf("%s: pg_sleep row: %d calls from %d instances, want 300 from 3", how, row.Calls, row.Instances)
			}
			if p99 != exact {
				t.Errorf("%s: merged p99 %v differs from one sketch of every event %v", how, p99, exact)
			}
			if d := math.Abs(float64(p99 - truth)); d > analyzer.SketchRelativeAccuracy*float64(truth) {
				t.Errorf("%s: merged p99 %v, true p99 %v: off by %.2f%%", how, p99, truth, 100*d/float64(truth))
			}
			return
		}
		t.Errorf("%s: no pg_sleep shape in %+v", how, v.Shapes)
	}

	// pgaudit report --from a --from b --from c --format json.
	urls := []string{insts[0].url, insts[1].url, insts[2].url}
	var out, stderr bytes.Buffer
	rf := reportFlags{output: "-", format: "json", top: 10, from: urls, timeout: 5 * time.Second}
	if err := runReport(ctx, &out, &stderr, nil, rf); err != nil {
		t.Fatalf("report --from: %v\n%s", err, stderr.String())
	}
	var v fleet.View
	if err := json.Unmarshal(out.Bytes(), &v); err != nil {
		t.Fatalf("%v\n%s", err, out.String())
	}
	checkView("report --from", &v, 3, 0)
	for k, s := range v.Sources {
		if s.Instance == nil || s.Instance.PeerID != k+1 || s.Instance.Listen != insts[k].e.proxy.Addr().String() || s.Instance.Hostname == "" || s.Instance.Started.IsZero() {
			t.Errorf("source %d (%s): instance %+v, want peer_id %d, listen %s", k, s.Name, s.Instance, k+1, insts[k].e.proxy.Addr())
		}
	}

	// A dead instance: an error naming it, or with --allow-partial a
	// report that lists it as failed.
	rf.from = append(urls, deadURL)
	out.Reset()
	err = runReport(ctx, &out, &stderr, nil, rf)
	if exitCode(err) != 1 || !strings.Contains(err.Error(), deadURL) {
		t.Errorf("report with a dead instance: %v (exit %d), want exit 1 naming %s", err, exitCode(err), deadURL)
	}
	rf.allowPartial = true
	out.Reset()
	stderr.Reset()
	if err := runReport(ctx, &out, &stderr, nil, rf); err != nil {
		t.Fatalf("report --allow-partial: %v", err)
	}
	if !strings.Contains(stderr.String(), deadURL) {
		t.Errorf("report --allow-partial stderr %q does not name %s", stderr.String(), deadURL)
	}
	v = fleet.View{}
	if err := json.Unmarshal(out.Bytes(), &v); err != nil {
		t.Fatal(err)
	}
	checkView("report --from --allow-partial", &v, 3, 1)

	// Without the token the instances refuse, and the error says so.
	t.Setenv("PGAUDIT_ADMIN_TOKEN", "")
	rf.from, rf.allowPartial = urls[:1], false
	if err := runReport(ctx, &out, &stderr, nil, rf); exitCode(err) != 1 || !strings.Contains(err.Error(), "401") {
		t.Errorf("report without the token: %v, want exit 1 with 401", err)
	}

	// The fleet dashboard API of instance 0 (fleet_peers = 1, 2 and the
	// dead one), over HTTP with the admin token.
	get := func(path string, into any) {
		t.Helper()
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, insts[0].url+path, nil)
		req.Header.Set("Authorization", "Bearer "+token)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("GET %s: %s", path, resp.Status)
		}
		if err := json.NewDecoder(resp.Body).Decode(into); err != nil {
			t.Fatalf("GET %s: %v", path, err)
		}
	}
	v = fleet.View{}
	get("/api/v1/fleet", &v)
	checkView("/api/v1/fleet", &v, 3, 1)
	var d struct {
		Fleet *fleet.View `json:"fleet"`
	}
	get("/api/v1/dashboard", &d)
	if d.Fleet == nil {
		t.Fatal("/api/v1/dashboard has no fleet view")
	}
	checkView("/api/v1/dashboard", d.Fleet, 3, 1)
}
