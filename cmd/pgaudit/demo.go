package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/rs/zerolog"
	"github.com/spf13/cobra"

	"github.com/pgaudit-proxy/pgaudit/analyzer"
	"github.com/pgaudit-proxy/pgaudit/internal/pgtest"
	"github.com/pgaudit-proxy/pgaudit/pooler"
	"github.com/pgaudit-proxy/pgaudit/rules"
)

func demoCommand() *cobra.Command {
	var keep bool
	var duration time.Duration
	cmd := &cobra.Command{
		Use:   "demo",
		Short: "Run a throwaway Postgres, the proxy and a sample workload, then print the findings",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runDemo(cmd.Context(), cmd.OutOrStdout(), keep, duration)
		},
	}
	cmd.Flags().BoolVar(&keep, "keep", false, "leave Postgres and the proxy running for psql until Ctrl-C")
	cmd.Flags().DurationVar(&duration, "duration", 8*time.Second, "how long the sample workload runs")
	return cmd
}

// demoSchema has realistic sizes and one index left out on purpose
// (reviews.book_id).
const demoSchema = `
create table authors(id int primary key, name text not null, country text not null);
create table books(id int primary key, author_id int not null references authors(id), title text not null, published date not null, price numeric(8,2) not null);
create index books_author_id on books(author_id);
create index books_published on books(published);
create table reviews(id bigint primary key, book_id int not null references books(id), stars int not null, body text not null, created_at timestamptz not null);
insert into authors select g, 'author ' || g, (array['FR','DE','US','BR','JP'])[1 + g % 5] from generate_series(1, 5000) g;
insert into books select g, 1 + (g::bigint * 7919) % 5000, 'book ' || g, date '1990-01-01' + (g % 12000), 5 + (g % 50) from generate_series(1, 100000) g;
insert into reviews select g, 1 + (g::bigint * 104729) % 100000, 1 + g % 5, repeat('lorem ipsum ', 4), now() - (g % 1000) * interval '1 hour' from generate_series(1, 300000) g;
analyze;
`

func runDemo(ctx context.Context, out io.Writer, keep bool, duration time.Duration) error {
	if ctx == nil {
		ctx = context.Background()
	}
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()
	start := time.Now()
	fmt.Fprintln(out, "pgaudit demo: starting a throwaway PostgreSQL ...")
	cluster, err := pgtest.Start(ctx, pgtest.Options{})
	if err != nil {
		if errors.Is(err, pgtest.ErrNoBinaries) {
			return &exitError{1, fmt.Errorf("%w\n(on Debian/Ubuntu: apt-get install -y postgresql; the demo runs it as the postgres user)", err)}
		}
		return &exitError{1, err}
	}
	defer cluster.Stop()
	fmt.Fprintf(out, "  PostgreSQL %d on 127.0.0.1:%d (data in %s)\n", cluster.Version, cluster.Port, cluster.Dir)
	if out, err := cluster.Psql(ctx, "", "-q", "-c", demoSchema); err != nil {
		return &exitError{1, fmt.Errorf("loading the sample schema: %w\n%s", err, out)}
	}
	fmt.Fprintln(out, "  loaded authors (5,000), books (100,000), reviews (300,000); reviews.book_id has no index")
	// The demo database is ours, so it may have HypoPG for validating index
	// suggestions when the package is installed.
	if _, err := cluster.Psql(ctx, "", "-q", "-c", "create extension if not exists hypopg"); err == nil {
		fmt.Fprintln(out, "  HypoPG is installed: index suggestions will be validated")
	} else {
		fmt.Fprintln(out, "  HypoPG is not available (apt-get install postgresql-15-hypopg): index suggestions stay unvalidated")
	}

	log := zerolog.New(zerolog.ConsoleWriter{Out: os.Stderr, NoColor: true}).Level(zerolog.WarnLevel).With().Timestamp().Logger()
	aud, err := startAuditor(ctx, auditorOptions{
		Rules: rules.DefaultConfig(),
		// The demo's clients log in as postgres; their statements are
		// planned as postgres, and nobody else's are.
		Explain: func(_, user string) (explainTarget, bool) {
			return explainTarget{Key: "demo", DSN: cluster.DSN(""), Role: "postgres"}, user == "postgres"
		},
		Log: log,
	})
	if err != nil {
		return &exitError{1, err}
	}
	audStopped := false
	defer func() {
		if !audStopped {
			aud.stop(log)
		}
	}()
	pipeline := aud.pipeline
	up, err := pgconn.ParseConfig(cluster.DSN(""))
	if err != nil {
		return &exitError{1, err}
	}
	settings := pooler.DefaultPoolSettings()
	settings.Mode = pooler.TransactionMode
	settings.Size = 4
	db := &pooler.Database{Name: "postgres", Upstream: up, Pool: settings}
	proxy := pooler.New(&pooler.Config{Listen: "127.0.0.1:0", Databases: map[string]*pooler.Database{"postgres": db}, AuthType: "trust"}, pipeline, log)
	if err := proxy.Listen(); err != nil {
		return &exitError{1, err}
	}
	serveErr := make(chan error, 1)
	go func() { serveErr <- proxy.Serve(ctx) }()
	defer func() { _ = proxy.Close(); <-serveErr }()
	dsn := fmt.Sprintf("postgres://postgres@%s/postgres?sslmode=disable", proxy.Addr())
	fmt.Fprintf(out, "  proxy on %s (transaction mode, pool of %d)\n", proxy.Addr(), settings.Size)
	fmt.Fprintf(out, "pgaudit demo: running the sample application for %s through the proxy ...\n", duration)

	if err := demoWorkload(ctx, dsn, duration); err != nil && ctx.Err() == nil {
		return &exitError{1, fmt.Errorf("workload: %w", err)}
	}
	// Let the analyzer catch up, explain the heaviest shapes now rather
	// than on the sampler's schedule, and feed the pool numbers to the
	// pool-saturation rule.
	time.Sleep(300 * time.Millisecond)
	fmt.Fprintln(out, "pgaudit demo: explaining the heaviest query shapes (EXPLAIN, never ANALYZE; HypoPG when installed) ...")
	aud.explainNow(ctx)
	aud.observePools(proxy.PoolStats())
	aud.stop(log)
	audStopped = true
	printDemoFindings(out, aud.engine.Findings())
	printDemoReport(out, pipeline, proxy)
	fmt.Fprintf(out, "\ndemo finished in %s\n", time.Since(start).Round(100*time.Millisecond))
	if keep {
		fmt.Fprintf(out, "\n--keep: the proxy stays up. Try:\n  psql %q\nPress Ctrl-C to stop.\n", dsn)
		<-ctx.Done()
	}
	return nil
}

// demoWorkload is a small application: a bookshop page that lists recent
// books and loads each author in a loop (N+1), a per-book review summary
// that scans reviews (no index on book_id), and well-behaved lookups.
func demoWorkload(ctx context.Context, dsn string, d time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	worker := func(app string, fn func(*pgx.Conn) error) {
		defer wg.Done()
		conn, err := pgx.Connect(ctx, dsn+"&application_name="+app)
		if err != nil {
			errs <- err
			return
		}
		defer conn.Close(context.Background())
		for ctx.Err() == nil {
			if err := fn(conn); err != nil && ctx.Err() == nil {
				errs <- err
				return
			}
		}
	}
	// N+1: one query for the page, then one query per book for its author.
	bookPage := func(conn *pgx.Conn) error {
		rows, err := conn.Query(ctx, "select id, author_id, title from books where published > $1 order by published limit 20", time.Date(1990+rand.IntN(30), 1, 1, 0, 0, 0, 0, time.UTC))
		if err != nil {
			return err
		}
		var authors []int32
		for rows.Next() {
			var id, author int32
			var title string
			if err := rows.Scan(&id, &author, &title); err != nil {
				return err
			}
			authors = append(authors, author)
		}
		if err := rows.Err(); err != nil {
			return err
		}
		for _, a := range authors {
			var name string
			if err := conn.QueryRow(ctx, "select name from authors where id = $1", a).Scan(&name); err != nil {
				return err
			}
		}
		return nil
	}
	// Sequential scan: reviews has no index on book_id.
	reviewSummary := func(conn *pgx.Conn) error {
		var n int64
		var avg *float64
		return conn.QueryRow(ctx, "select count(*), avg(stars) from reviews where book_id = $1", 1+rand.IntN(100000)).Scan(&n, &avg)
	}
	// Well-behaved: primary-key lookups and a batched fetch.
	lookups := func(conn *pgx.Conn) error {
		var title string
		if err := conn.QueryRow(ctx, "select title from books where id = $1", 1+rand.IntN(100000)).Scan(&title); err != nil {
			return err
		}
		ids := []int32{int32(1 + rand.IntN(5000)), int32(1 + rand.IntN(5000)), int32(1 + rand.IntN(5000))}
		rows, err := conn.Query(ctx, "select id, name from authors where id = any($1)", ids)
		if err != nil {
			return err
		}
		rows.Close()
		return rows.Err()
	}
	wg.Add(5)
	go worker("bookshop-web", bookPage)
	go worker("bookshop-web", bookPage)
	go worker("bookshop-reports", reviewSummary)
	go worker("bookshop-api", lookups)
	go worker("bookshop-api", lookups)
	wg.Wait()
	close(errs)
	return <-errs
}

func printDemoFindings(out io.Writer, findings []rules.Finding) {
	fmt.Fprintf(out, "\n== Findings (%d) ==\n", len(findings))
	if len(findings) == 0 {
		fmt.Fprintln(out, "none")
	}
	r := &lintReport{New: findings, Summary: lintSummary{BySeverity: map[string]int{}}}
	writeFindings(out, r, false)
}

func printDemoReport(out io.Writer, pipeline *analyzer.Pipeline, proxy *pooler.Proxy) {
	fmt.Fprintln(out, "\n== Top query shapes by total time ==")
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "calls\trows\ttotal ms\tshare\tp50 ms\tp90 ms\tp99 ms\t\tquery")
	for _, sh := range pipeline.Stats().TopShapes(analyzer.ByTotalTime, 8) {
		fmt.Fprintf(tw, "%d\t%d\t%.0f\t%.0f%%\t%.2f\t%.2f\t%.2f\t\t%s\n", sh.Calls, sh.Rows, ms(sh.Total), 100*sh.Share, ms(sh.P50), ms(sh.P90), ms(sh.P99), oneLine(sh.Query, 70))
	}
	tw.Flush()
	fmt.Fprintln(out, "\n== Pools ==")
	for _, ps := range proxy.PoolStats() {
		fmt.Fprintf(out, "%s/%s %s pool of %d: %d transactions, %d queries, utilization %.0f%% over the last minute, wait p50 %s p99 %s max %s (%d waits)\n",
			ps.Database, ps.User, ps.Mode, ps.Size, ps.Transactions, ps.Queries, 100*ps.Utilization,
			ps.WaitP50, ps.WaitP99, ps.MaxWait.Round(time.Microsecond), ps.Waits)
	}
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func oneLine(s string, n int) string {
	s = strings.Join(strings.Fields(s), " ")
	if len(s) > n {
		return s[:n-3] + "..."
	}
	return s
}
