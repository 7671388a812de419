package analyzer_test

import (
	"context"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/pgaudit-proxy/pgaudit/admin"
	"github.com/pgaudit-proxy/pgaudit/analyzer"
	"github.com/pgaudit-proxy/pgaudit/planadvisor"
	"github.com/pgaudit-proxy/pgaudit/rules"
)

// workerStream builds the events of a pgbench -S run as the relay offers
// them: the same SELECT with a new aid each transaction, from 100
// interleaved sessions (or, with conn, a new session per transaction
// followed by its KindSessionEnd, as pgbench -C gives). A transaction is
// one Query (simple) or one Parse/Bind/Execute/Sync group (extended, with
// the parameter captured as the proxy captures it for EXPLAIN). Durations
// vary over a few hundred microseconds, about one statement in 16 carries
// a result hash, and some waited for a server connection, as in a
// transaction pool of 20 under 100 clients.
func workerStream(proto analyzer.Protocol, conn bool, n int) []*analyzer.Event {
	const sessions = 100
	base := time.Date(2026, 12, 3, 3, 0, 0, 0, time.UTC)
	evs := make([]*analyzer.Event, 0, n)
	for i := 0; len(evs) < n; i++ {
		aid := (i*7919 + 13) % 100000
		sid := uint64(i%sessions) + 1
		if conn {
			sid = uint64(i) + 1
		}
		ev := &analyzer.Event{
			Kind: analyzer.KindStatement, Protocol: proto,
			SessionID: sid, TxSeq: uint64(i/sessions) + 1,
			Database: "postgres", User: "postgres", ApplicationName: "pgbench", ClientAddr: "127.0.0.1",
			Start:    base.Add(time.Duration(i) * 100 * time.Microsecond),
			Duration: time.Duration(120+(i*37)%400) * time.Microsecond,
			Command:  "SELECT", Rows: 1,
		}
		if i%3 == 0 {
			ev.Wait = time.Duration(5+i%50) * time.Microsecond
		}
		if i%16 == 5 {
			ev.ResultHash = uint64(aid)*0xff51afd7ed558ccd + 7
		}
		if proto == analyzer.ProtocolSimple {
			ev.Text = "SELECT abalance FROM pgbench_accounts WHERE aid = " + strconv.Itoa(aid) + ";"
		} else {
			ev.Text = "SELECT abalance FROM pgbench_accounts WHERE aid = $1;"
			ev.NumParams, ev.ParamHash = 1, uint64(aid)*0x9e3779b97f4a7c15+1
			ev.Params = []string{strconv.Itoa(aid)}
		}
		evs = append(evs, ev)
		if conn && len(evs) < n {
			evs = append(evs, &analyzer.Event{Kind: analyzer.KindSessionEnd, SessionID: sid, Start: ev.Start.Add(ev.Duration)})
		}
	}
	return evs
}

// cpuTime returns the process's user plus system CPU time.
func cpuTime(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkWorkerEvent feeds a pgbench -S stream through a started
// Pipeline with the observers the proxy registers by default (see
// cmd/pgaudit startAuditor and runProxy): the rules engine (N+1,
// cache-candidate, ignores), the EXPLAIN sampler (its rounds not run: only
// its Observe, which the workers pay) and the admin's query-latency
// observer; no audit log. It runs with one worker (the work per event,
// steadier) and with the default two (which adds what the workers cost
// each other on shared state). One producer submits the events in order, as a
// relay loop offers them. ns/op is wall time per event; cpu-ns/event is
// the process's CPU time (workers, producer, GC) per event, the figure the
// relay and Postgres lose on a busy machine; allocs/op are per event.
//
// The events are built before the timer starts.
func BenchmarkWorkerEvent(b *testing.B) {
	for _, c := range []struct {
		name    string
		proto   analyzer.Protocol
		conn    bool
		workers int
	}{
		{"simple/workers=1", analyzer.ProtocolSimple, false, 1},
		{"extended/workers=1", analyzer.ProtocolExtended, false, 1},
		{"simple-C/workers=1", analyzer.ProtocolSimple, true, 1},
		{"simple/workers=2", analyzer.ProtocolSimple, false, 2},
		{"extended/workers=2", analyzer.ProtocolExtended, false, 2},
		{"simple-C/workers=2", analyzer.ProtocolSimple, true, 2},
	} {
		b.Run(c.name, func(b *testing.B) {
			// Every event is new and later than the one before (no cycle,
			// which would move the session clocks back): the warm-up
			// events, then b.N more.
			const warm = 1 << 14
			evs := workerStream(c.proto, c.conn, warm+b.N)
			p := analyzer.NewPipeline(analyzer.PipelineConfig{Workers: c.workers})
			eng, err := analyzer.NewEngine(analyzer.EngineConfig{Rules: rules.DefaultConfig(), Stats: p.Stats()})
			if err != nil {
				b.Fatal(err)
			}
			s, err := planadvisor.NewSampler(planadvisor.SamplerConfig{
				Stats:        p.Stats(),
				ExplainerFor: func(string, string) *planadvisor.Explainer { return nil },
				Emit:         func(f *rules.Finding) { eng.Report(*f) },
				Rules:        rules.DefaultConfig(),
			})
			if err != nil {
				b.Fatal(err)
			}
			adm := admin.New(admin.Options{})
			for _, o := range []analyzer.Observer{eng, s, adm.Observer()} {
				if err := p.AddObserver(o); err != nil {
					b.Fatal(err)
				}
			}
			ctx := context.Background()
			if err := p.Start(ctx); err != nil {
				b.Fatal(err)
			}
			defer func() {
				if err := p.Stop(ctx); err != nil {
					b.Error(err)
				}
			}()
			statements := func(i int) uint64 { // statement events among evs[:i]
				if c.conn {
					return uint64(i+1) / 2
				}
				return uint64(i)
			}
			// Warm up: shapes parsed, sessions known, buffers grown.
			for _, ev := range evs[:warm] {
				if err := p.Submit(ctx, ev); err != nil {
					b.Fatal(err)
				}
			}
			want := statements(warm)
			wait := func() {
				for p.Counters().Processed < want {
					time.Sleep(200 * time.Microsecond)
				}
			}
			wait()
			b.ReportAllocs()
			b.ResetTimer()
			cpu0 := cpuTime(b)
			for _, ev := range evs[warm:] {
				if err := p.Submit(ctx, ev); err != nil {
					b.Fatal(err)
				}
			}
			want = statements(len(evs))
			wait()
			cpu := cpuTime(b) - cpu0
			b.StopTimer()
			b.ReportMetric(float64(cpu.Nanoseconds())/float64(b.N), "cpu-ns/event")
			if d := p.Counters().Dropped; d != 0 {
				b.Fatalf("dropped %d events", d)
			}
		})
	}
}
