package analyzer

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/pgaudit-proxy/pgaudit/rules"
)

// benchStream generates the i-th event of a synthetic stream into a fresh
// Event (strings owned by it, as the relay hands them over).
type benchStream func(i int) *Event

// pgbenchSelect is pgbench -S: one SELECT per transaction, from 100
// sessions taking turns, with a random aid each time; conn picks a new
// session per transaction (pgbench -C).
func pgbenchSelect(proto Protocol, conn bool) benchStream {
	const sessions = 100
	base := time.Date(2026, 12, 2, 12, 0, 0, 0, time.UTC)
	return func(i int) *Event {
		aid := (i*7919 + 13) % 100000
		sid := uint64(i%sessions) + 1
		if conn {
			sid = uint64(i) + 1
		}
		ev := &Event{
			Kind: KindStatement, Protocol: proto,
			SessionID: sid, TxSeq: uint64(i/sessions) + 1,
			Database: "bench", User: "bench", ApplicationName: "pgbench", ClientAddr: "127.0.0.1",
			Start:    base.Add(time.Duration(i) * 20 * time.Microsecond),
			Duration: 150 * time.Microsecond, Command: "SELECT", Rows: 1,
		}
		if proto == ProtocolSimple {
			ev.Text = "SELECT abalance FROM pgbench_accounts WHERE aid = " + strconv.Itoa(aid) + ";"
		} else {
			ev.Text = "SELECT abalance FROM pgbench_accounts WHERE aid = $1;"
			ev.NumParams, ev.ParamHash = 1, uint64(aid)*0x9e3779b97f4a7c15+1
		}
		return ev
	}
}

// mixedStream is an ORM-like workload from 50 sessions: per unit of work a
// list query (10 rows), an N+1 loop of 10 lookups by key (extended), a
// transaction with an UPDATE and an INSERT (simple), and a dashboard
// query with a sqlcommenter comment.
func mixedStream() benchStream {
	const sessions = 50
	base := time.Date(2026, 12, 2, 12, 0, 0, 0, time.UTC)
	type step struct {
		text    string
		proto   Protocol
		command string
		rows    int64
		param   bool
		inTx    bool
	}
	steps := []step{
		{"SELECT id, name FROM authors WHERE country = $1 ORDER BY name LIMIT 10", ProtocolExtended, "SELECT", 10, true, false},
	}
	for range 10 {
		steps = append(steps, step{"SELECT id, title, price FROM books WHERE author_id = $1", ProtocolExtended, "SELECT", 3, true, false})
	}
	steps = append(steps,
		step{"BEGIN", ProtocolSimple, "BEGIN", 0, false, true},
		step{"UPDATE accounts SET balance = balance - %d WHERE id = %d", ProtocolSimple, "UPDATE", 1, false, true},
		step{"INSERT INTO history (account_id, delta, at) VALUES (%d, %d, now())", ProtocolSimple, "INSERT", 1, false, true},
		step{"COMMIT", ProtocolSimple, "COMMIT", 0, false, true},
		step{"SELECT count(*) FROM orders WHERE status = 'open' AND region = %d /*application='shop',traceparent='00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01'*/", ProtocolSimple, "SELECT", 1, false, false},
	)
	return func(i int) *Event {
		sid := uint64(i%sessions) + 1
		n := i / sessions // this session's n-th statement
		st := steps[n%len(steps)]
		unit := n / len(steps)
		ev := &Event{
			Kind: KindStatement, Protocol: st.proto,
			SessionID: sid, TxSeq: uint64(unit) + 1, InTransaction: st.inTx,
			Database: "shop", User: "app", ApplicationName: "shop", ClientAddr: "10.0.0.7",
			Start:    base.Add(time.Duration(i) * 40 * time.Microsecond),
			Duration: 300 * time.Microsecond, Command: st.command, Rows: st.rows,
			Text: st.text,
		}
		if st.param {
			ev.NumParams, ev.ParamHash = 1, uint64(n*31+int(sid))*0x9e3779b97f4a7c15+1
		} else if st.command != "BEGIN" && st.command != "COMMIT" {
			ev.Text = fmt.Sprintf(st.text, n%97, int(sid)*1000+n)
		}
		return ev
	}
}

// BenchmarkAnalyzeEvent measures the analysis of one event on a worker
// (Pipeline.process: fingerprint cache, statistics, the rules engine with
// the default rules: N+1, cache-candidate), without the queue: ns/op and
// allocs/op are per event. Events are built outside the timer, in chunks,
// as the relay builds them.
func BenchmarkAnalyzeEvent(b *testing.B) {
	for _, c := range []struct {
		name   string
		stream benchStream
	}{
		{"pgbench-S/simple", pgbenchSelect(ProtocolSimple, false)},
		{"pgbench-S/extended", pgbenchSelect(ProtocolExtended, false)},
		{"pgbench-S-C/simple", pgbenchSelect(ProtocolSimple, true)},
		{"mixed", mixedStream()},
	} {
		b.Run(c.name, func(b *testing.B) {
			p := NewPipeline(PipelineConfig{})
			eng, err := NewEngine(EngineConfig{Rules: rules.Config{}, Stats: p.Stats()})
			if err != nil {
				b.Fatal(err)
			}
			if err := p.AddObserver(eng); err != nil {
				b.Fatal(err)
			}
			// Warm up: shapes parsed, sessions known.
			var a Analyzed
			const chunk = 4096
			evs := make([]*Event, chunk)
			for i := range chunk {
				p.process(c.stream(i), &a)
			}
			next := chunk
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				j := i % chunk
				if j == 0 {
					b.StopTimer()
					for k := range evs {
						evs[k] = c.stream(next + k)
					}
					next += chunk
					b.StartTimer()
				}
				p.process(evs[j], &a)
			}
			b.StopTimer()
			eng.Flush()
			b.ReportMetric(float64(len(eng.Findings())), "findings")
		})
	}
}

// BenchmarkAnalyzePipeline runs the pgbench -S stream (simple protocol)
// through a started Pipeline with its default two workers and the rules
// engine, from four producers (Submit, so nothing is dropped): ns/op is
// wall time per event with both workers busy, which shows contention
// between workers on shared analyzer state. Events are built before the
// timer starts.
func BenchmarkAnalyzePipeline(b *testing.B) {
	const producers = 4
	stream := pgbenchSelect(ProtocolSimple, false)
	p := NewPipeline(PipelineConfig{})
	eng, err := NewEngine(EngineConfig{Rules: rules.Config{}, Stats: p.Stats()})
	if err != nil {
		b.Fatal(err)
	}
	if err := p.AddObserver(eng); err != nil {
		b.Fatal(err)
	}
	evs := make([]*Event, b.N)
	for i := range evs {
		evs[i] = stream(i)
	}
	ctx := context.Background()
	if err := p.Start(ctx); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.ResetTimer()
	var wg sync.WaitGroup
	for w := range producers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// Producer w offers the events of the sessions it owns, in
			// order, as a relay loop would.
			for i := w; i < len(evs); i += producers {
				if err := p.Submit(ctx, evs[i]); err != nil {
					b.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	if err := p.Stop(ctx); err != nil {
		b.Fatal(err)
	}
	b.StopTimer()
	if c := p.Counters(); c.Processed != uint64(b.N) || c.Dropped != 0 {
		b.Fatalf("processed %d of %d, dropped %d", c.Processed, b.N, c.Dropped)
	}
}
