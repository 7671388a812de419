// Command idle opens N authenticated client connections to Postgres or a
// proxy in front of it and holds them idle: bench/pgbench.sh's idle section
// measures the proxy's memory per idle client with it.
//
// Each connection completes the startup handshake (authentication, then
// ReadyForQuery) and then sends nothing. Once every attempt has finished the
// program prints
//
//	ready connected=N failed=F seconds=S
//
// and waits. On SIGUSR1 it runs SELECT 1 on every open connection (so the
// bench knows the proxy still serves them) and prints
//
//	checked ok=N failed=F seconds=S
//
// On SIGTERM or SIGINT it closes every connection and exits. Errors are
// summarised on stderr, one line per distinct message with its count.
//
//	go build -o /tmp/idle ./bench/idle
//	/tmp/idle -n 10000 -dsn 'host=127.0.0.1 port=6432 user=postgres dbname=postgres sslmode=disable'
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"sort"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

func main() {
	n := flag.Int("n", 1000, "connections to open")
	dsn := flag.String("dsn", "host=127.0.0.1 user=postgres dbname=postgres sslmode=disable", "libpq-style connection string")
	parallel := flag.Int("parallel", 32, "connection attempts (and checks) in flight at once")
	timeout := flag.Duration("timeout", 60*time.Second, "per connection attempt and per check")
	flag.Parse()

	cfg, err := pgconn.ParseConfig(*dsn)
	if err != nil {
		fmt.Fprintln(os.Stderr, "idle:", err)
		os.Exit(2)
	}
	cfg.ConnectTimeout = *timeout

	// Ask for the signals before connecting, so that an early SIGTERM
	// still closes what is open.
	sig := make(chan os.Signal, 4)
	signal.Notify(sig, syscall.SIGUSR1, syscall.SIGTERM, syscall.SIGINT)

	conns := make([]*pgconn.PgConn, *n)
	errs := newErrCount()
	start := time.Now()
	forEach(*n, *parallel, func(i int) {
		ctx, cancel := context.WithTimeout(context.Background(), *timeout)
		defer cancel()
		c, err := pgconn.ConnectConfig(ctx, cfg)
		if err != nil {
			errs.add("connect: " + err.Error())
			return
		}
		conns[i] = c
	})
	fmt.Printf("ready connected=%d failed=%d seconds=%.1f\n", *n-errs.total(), errs.total(), time.Since(start).Seconds())
	errs.print()

	for s := range sig {
		if s != syscall.SIGUSR1 {
			break
		}
		check := newErrCount()
		ok := 0
		var mu sync.Mutex
		start := time.Now()
		forEach(*n, *parallel, func(i int) {
			if conns[i] == nil {
				return
			}
			ctx, cancel := context.WithTimeout(context.Background(), *timeout)
			defer cancel()
			if _, err := conns[i].Exec(ctx, "SELECT 1").ReadAll(); err != nil {
				check.add("SELECT 1: " + err.Error())
				return
			}
			mu.Lock()
			ok++
			mu.Unlock()
		})
		fmt.Printf("checked ok=%d failed=%d seconds=%.1f\n", ok, check.total(), time.Since(start).Seconds())
		check.print()
	}
	forEach(*n, *parallel, func(i int) {
		if conns[i] != nil {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			_ = conns[i].Close(ctx)
		}
	})
}

// forEach runs f(0..n-1) on at most parallel goroutines.
func forEach(n, parallel int, f func(int)) {
	if parallel < 1 {
		parallel = 1
	}
	var wg sync.WaitGroup
	next := make(chan int)
	for w := 0; w < parallel; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				f(i)
			}
		}()
	}
	for i := 0; i < n; i++ {
		next <- i
	}
	close(next)
	wg.Wait()
}

// errCount counts errors by message.
type errCount struct {
	mu sync.Mutex
	m  map[string]int
	n  int
}

func newErrCount() *errCount { return &errCount{m: map[string]int{}} }

func (e *errCount) add(msg string) {
	e.mu.Lock()
	e.m[msg]++
	e.n++
	e.mu.Unlock()
}

func (e *errCount) total() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.n
}

func (e *errCount) print() {
	e.mu.Lock()
	defer e.mu.Unlock()
	msgs := make([]string, 0, len(e.m))
	for k := range e.m {
		msgs = append(msgs, k)
	}
	sort.Slice(msgs, func(i, j int) bool { return e.m[msgs[i]] > e.m[msgs[j]] })
	for _, k := range msgs {
		fmt.Fprintf(os.Stderr, "%6d %s\n", e.m[k], k)
	}
}
