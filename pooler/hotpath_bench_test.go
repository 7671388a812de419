package pooler

import (
	"context"
	"sync/atomic"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgaudit-proxy/pgaudit/internal/event"
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
// analysis on. allocs/op counts the client's (pgconn's) allocations too,
// which are the same before and after a change to the relay.
func BenchmarkRelayTransaction(b *testing.B) {
	for _, proto := range []string{"simple", "extended"} {
		b.Run(proto, func(b *testing.B) {
			sink := &countSink{}
			p := testProxyWithSink(b, withMode(TransactionMode, 1), sink)
			ctx := context.Background()
			conn, err := pgconn.Connect(ctx, proxyDSN(p, "", ""))
			if err != nil {
				b.Fatal(err)
			}
			defer conn.Close(ctx)
			const text = "SELECT abs($1::int) + 0"
			params := [][]byte{[]byte("42")}
			b.ReportAllocs()
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
			if sink.n.Load() < int64(b.N) {
				b.Fatalf("%d events for %d transactions", sink.n.Load(), b.N)
			}
		})
	}
}
