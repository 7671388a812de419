package pooler

import (
	"context"
	"fmt"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/rs/zerolog"
)

// TestResultHashSampling: with ResultSampleEvery 1 every statement with
// rows gets a non-zero hash, equal for equal rows and different for
// different rows, across sessions of one proxy; off (negative) gives
// none; the default samples about one statement in 16.
func TestResultHashSampling(t *testing.T) {
	p := New(&Config{ResultSampleEvery: 1}, nil, zerolog.Nop())
	a, b := &Session{proxy: p, id: 1, busyState: &busyState{}}, &Session{proxy: p, id: 2, busyState: &busyState{}}
	stmt := func(s *Session, rows ...string) uint64 {
		for _, r := range rows {
			s.hashRowLocked([]byte(r))
		}
		return s.endResultLocked()
	}
	h1 := stmt(a, "row1", "row2")
	if h1 == 0 || stmt(b, "row1", "row2") != h1 || stmt(a, "row1", "row3") == h1 || stmt(a) != 0 {
		t.Fatal("hashes do not tell equal from different results")
	}
	p.cfgPtr.Store(&Config{ResultSampleEvery: -1})
	if stmt(a, "row1") != 0 {
		t.Fatal("hashing is off but a hash came back")
	}
	p.cfgPtr.Store(&Config{})
	sampled := 0
	for i := 0; i < 16000; i++ {
		if stmt(a, "row1") != 0 {
			sampled++
		}
	}
	if sampled < 800 || sampled > 1200 {
		t.Fatalf("default sampling hashed %d of 16000 statements, want about 1000", sampled)
	}
}

// BenchmarkResultHash measures what result hashing adds to the relay per
// statement: rows DataRows of 64 bytes, then CommandComplete.
func BenchmarkResultHash(b *testing.B) {
	row := make([]byte, 64)
	for _, every := range []int{-1, DefaultResultSampleEvery, 1} {
		for _, rows := range []int{1, 100} {
			b.Run(fmt.Sprintf("every=%d/rows=%d", every, rows), func(b *testing.B) {
				p := New(&Config{ResultSampleEvery: every}, nil, zerolog.Nop())
				s := &Session{proxy: p, id: 1, busyState: &busyState{}}
				for b.Loop() {
					for range rows {
						s.hashRowLocked(row)
					}
					s.endResultLocked()
				}
			})
		}
	}
}

// BenchmarkRelayResultHash runs a 100-row query (about 60 bytes a row)
// through the proxy on the real Postgres with result hashing off, at the
// default sampling and for every statement: the end-to-end relay cost of
// the cache-candidate rule's sampling.
func BenchmarkRelayResultHash(b *testing.B) {
	for _, every := range []int{-1, DefaultResultSampleEvery, 1} {
		b.Run(fmt.Sprintf("every=%d", every), func(b *testing.B) {
			p := testProxy(b, func(c *Config) { c.ResultSampleEvery = every })
			ctx := context.Background()
			conn, err := pgx.Connect(ctx, proxyDSN(p, "", ""))
			if err != nil {
				b.Fatal(err)
			}
			defer conn.Close(ctx)
			const q = "select g, repeat('x', 50) from generate_series(1, 100) g"
			for b.Loop() {
				rows, err := conn.Query(ctx, q)
				if err != nil {
					b.Fatal(err)
				}
				for rows.Next() {
				}
				if rows.Err() != nil {
					b.Fatal(rows.Err())
				}
			}
		})
	}
}
