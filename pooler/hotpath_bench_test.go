//go:build linux

package pooler

import (
	"context"
	"net"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/rs/zerolog"

	"github.com/pgaudit-proxy/pgaudit/internal/event"
	"github.com/pgaudit-proxy/pgaudit/internal/testutil"
	"github.com/pgaudit-proxy/pgaudit/wire"
)

// countSink counts the events offered to it and drops them.
type countSink struct{ n atomic.Int64 }

// Offer counts ev.
func (c *countSink) Offer(*event.Event) { c.n.Add(1) }

// BenchmarkRelayTransaction runs pgbench -S's transaction (one primary-key
// style SELECT returning one row) through a transaction pool on the real
// Postgres, one client, the way pgbench -M simple and -M extended send it:
// a Query, or Parse/Bind/Describe/Execute/Sync of the unnamed statement.
// Every statement becomes an event (a counting sink), as with the
// analysis on. The direct/ variants run the same client against Postgres
// itself.
//
// Besides ns/op (mostly the round trips) it reports cpu-us/op, the test
// process's user+system CPU per transaction (getrusage): the proxy's
// relay plus the client's own work, which the direct/ variant measures
// alone, so the proxy costs the difference. allocs/op likewise counts
// the client's (pgconn's) allocations too.
func BenchmarkRelayTransaction(b *testing.B) {
	for _, target := range []string{"proxy", "direct"} {
		for _, proto := range []string{"simple", "extended"} {
			b.Run(target+"/"+proto, func(b *testing.B) {
				sink := &countSink{}
				dsn := testutil.Shared(b).DSN("postgres")
				if target == "proxy" {
					dsn = proxyDSN(testProxyWithSink(b, withMode(TransactionMode, 1), sink), "", "")
				}
				ctx := context.Background()
				conn, err := pgconn.Connect(ctx, dsn)
				if err != nil {
					b.Fatal(err)
				}
				defer conn.Close(ctx)
				const text = "SELECT abs($1::int) + 0"
				params := [][]byte{[]byte("42")}
				b.ReportAllocs()
				cpu0 := processCPU(b)
				for b.Loop() {
					if proto == "simple" {
						res, err := conn.Exec(ctx, "SELECT abs(42) + 0").ReadAll()
						if err != nil || len(res) != 1 || len(res[0].Rows) != 1 {
							b.Fatalf("simple: %v %v", res, err)
						}
					} else {
						res := conn.ExecParams(ctx, text, params, nil, nil, nil).Read()
						if res.Err != nil || len(res.Rows) != 1 {
							b.Fatalf("extended: %v", res.Err)
						}
					}
				}
				b.StopTimer()
				b.ReportMetric(float64(processCPU(b)-cpu0)/float64(time.Microsecond)/float64(b.N), "cpu-us/op")
				if target == "proxy" && sink.n.Load() < int64(b.N) {
					b.Fatalf("%d events for %d transactions", sink.n.Load(), b.N)
				}
			})
		}
	}
}

// processCPU returns the test process's user+system CPU time so far.
func processCPU(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// discardConn is a net.Conn that swallows what is written to it: the
// client side of BenchmarkRelayReplies.
type discardConn struct{ net.Conn }

// Write discards p.
func (discardConn) Write(p []byte) (int, error) { return len(p), nil }

// SetReadDeadline does nothing.
func (discardConn) SetReadDeadline(time.Time) error { return nil }

// frame encodes one backend message.
func frame(typ byte, body ...byte) []byte {
	return append(wire.AppendHeader(nil, typ, len(body)), body...)
}

// BenchmarkRelayReplies measures the relay's bookkeeping of one pgbench -S
// transaction's replies without any I/O: the pending items a simple Query
// or an extended-protocol group (Parse, Bind, Describe portal, Execute,
// Sync) pushes, then relayLocked over each server message, ending with the
// statement's event (to a counting sink) and the client's ReadyForQuery,
// written to a discarding client connection. Deterministic where the
// end-to-end benchmarks are at the mercy of the machine's load.
func BenchmarkRelayReplies(b *testing.B) {
	rowDesc := frame(wire.MsgRowDescription, 0, 1, 'a', 'b', 'a', 'l', 'a', 'n', 'c', 'e', 0,
		0, 0, 0x40, 0, 0, 3, 0, 0, 0, 23, 0, 4, 0xff, 0xff, 0xff, 0xff, 0, 0)
	dataRow := frame(wire.MsgDataRow, 0, 1, 0, 0, 0, 4, '1', '2', '3', '4')
	complete := frame(wire.MsgCommandComplete, append([]byte("SELECT 1"), 0)...)
	ready := frame(wire.MsgReadyForQuery, wire.TxIdle)
	parseOK, bindOK := frame(wire.MsgParseComplete), frame(wire.MsgBindComplete)
	for _, proto := range []string{"simple", "extended"} {
		b.Run(proto, func(b *testing.B) {
			sink := &countSink{}
			p := New(&Config{}, sink, zerolog.Nop())
			pool := newPool(&Database{Name: "postgres", Pool: DefaultPoolSettings()}, "postgres", nil, nil, 0, zerolog.Nop())
			s := &Session{proxy: p, id: 1, pool: pool, mode: TransactionMode, client: wire.NewConn(discardConn{}, 0), busyState: &busyState{}}
			srv := &Server{ServerConn: &wire.ServerConn{Params: map[string]string{}}, pool: pool}
			s.server = srv
			def := &stmtDef{query: "SELECT abalance FROM pgbench_accounts WHERE aid = $1", types: []byte{0, 0}}
			text := "SELECT abalance FROM pgbench_accounts WHERE aid = 1234"
			var replies [][]byte
			if proto == "simple" {
				replies = [][]byte{rowDesc, dataRow, complete, ready}
			} else {
				replies = [][]byte{parseOK, bindOK, rowDesc, dataRow, complete, ready}
			}
			b.ReportAllocs()
			for b.Loop() {
				s.mu.Lock()
				now := time.Now()
				if proto == "simple" {
					it := pending{kind: pendQuery, text: text, start: now}
					s.incInFlightLocked()
					s.stampTx(&it)
					s.queue.push(it)
				} else {
					s.groupOpen = true
					s.incInFlightLocked()
					s.queue.push(pending{kind: pendParse, text: def.query, start: now})
					s.queue.push(pending{kind: pendBind, text: def.query, start: now, paramHash: 1, numParams: 1})
					s.queue.push(pending{kind: pendDescribePortal, stmt: def})
					it := pending{kind: pendExecute, text: def.query, start: now, paramHash: 1, numParams: 1}
					s.stampTx(&it)
					s.queue.push(it)
					s.groupOpen = false
					s.groupStamped = false
					s.queue.push(pending{kind: pendSync})
				}
				for _, raw := range replies {
					s.relayLocked(srv, raw[0], raw)
				}
				_ = s.client.Flush()
				s.mu.Unlock()
			}
			b.StopTimer()
			if sink.n.Load() != int64(b.N) || s.queue.len() != 0 {
				b.Fatalf("%d events for %d transactions, %d items left", sink.n.Load(), b.N, s.queue.len())
			}
		})
	}
}

// groupConn is the client side of BenchmarkHandleExtended: every Read
// returns the same extended-protocol group, as a client sending it again
// and again would.
type groupConn struct {
	discardConn
	group []byte
}

// Read returns the group (p must hold it).
func (c *groupConn) Read(p []byte) (int, error) { return copy(p, c.group), nil }

// BenchmarkHandleExtended measures the client side of pgbench -S -M
// extended's transaction without any I/O: handleExtended over the Parse,
// Bind, Describe portal and Execute of the unnamed statement, read from
// one client buffer as pgbench sends them, each planned onto an attached
// server connection whose writes are discarded. (The group's Sync, which
// waits for the replies, is read and its bookkeeping undone instead; the
// replies are BenchmarkRelayReplies'.) Deterministic where the
// end-to-end benchmarks are at the mercy of the machine's load.
func BenchmarkHandleExtended(b *testing.B) {
	const text = "SELECT abalance FROM pgbench_accounts WHERE aid = $1"
	var group []byte
	group = wire.AppendParse(group, "", text, []byte{0, 0})
	group = wire.AppendBind(group, nil, "", []byte{0, 0, 0, 1, 0, 0, 0, 4, '1', '2', '3', '4', 0, 0})
	group = wire.AppendTarget(group, wire.MsgDescribe, wire.TargetPortal, "")
	group = append(group, wire.MsgExecute, 0, 0, 0, 9, 0, 0, 0, 0, 0)
	group = wire.AppendEmpty(group, wire.MsgSync)
	sink := &countSink{}
	p := New(&Config{}, sink, zerolog.Nop())
	pool := newPool(&Database{Name: "postgres", Pool: DefaultPoolSettings()}, "postgres", nil, nil, 0, zerolog.Nop())
	s := &Session{proxy: p, id: 1, pool: pool, mode: TransactionMode, busyState: &busyState{},
		client: wire.NewConn(&groupConn{group: group}, 0)}
	srv := &Server{ServerConn: &wire.ServerConn{Conn: wire.NewConn(discardConn{}, 0), Params: map[string]string{}}, pool: pool}
	s.server = srv
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		for i := 0; i < 5; i++ {
			buffered := s.client.R.Buffered()
			typ, raw, err := s.client.R.ReadMessage()
			if err != nil {
				b.Fatal(err)
			}
			if buffered < len(raw) {
				s.msgAt = time.Time{}
			}
			if typ == wire.MsgSync {
				break
			}
			if err := s.handleExtended(ctx, typ, raw); err != nil {
				b.Fatal(err)
			}
		}
		s.mu.Lock()
		if s.queue.len() != 4 || s.readerActive || s.skipUntilSync {
			b.Fatalf("%d items queued, reader %v, skip %v", s.queue.len(), s.readerActive, s.skipUntilSync)
		}
		s.queue.reset()
		s.groupOpen, s.groupStamped, s.inFlight = false, false, 0
		_ = srv.W.Flush()
		s.mu.Unlock()
	}
}
