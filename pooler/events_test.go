package pooler

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgaudit-proxy/pgaudit/analyzer"
	"github.com/pgaudit-proxy/pgaudit/internal/auditlog"
	"github.com/pgaudit-proxy/pgaudit/internal/testutil"
)

// eventView is the part of an Event that a golden file pins down: no
// times, no session numbers.
type eventView struct {
	Kind          string `json:"kind"`
	Protocol      string `json:"protocol"`
	Text          string `json:"text"`
	Detail        string `json:"detail,omitempty"`
	TxSeq         uint64 `json:"tx_seq"`
	InTransaction bool   `json:"in_transaction"`
	Command       string `json:"command,omitempty"`
	Rows          int64  `json:"rows"`
	SQLState      string `json:"sqlstate,omitempty"`
	NumParams     int    `json:"num_params,omitempty"`
	HasParamHash  bool   `json:"has_param_hash,omitempty"`
	App           string `json:"application_name"`
}

// TestStatementEvents runs workloads through the proxy in both pool modes
// and compares the events with a golden file: one per statement of a
// multi-statement query, one per Execute (a portal run in parts counts
// once), COPY, errors, and a statement pg_query cannot parse.
func TestStatementEvents(t *testing.T) {
	for _, mode := range []PoolMode{SessionMode, TransactionMode} {
		t.Run(string(mode), func(t *testing.T) {
			sink := &captureSink{}
			p := testProxyWithSink(t, withMode(mode, 2), sink)
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			dsn := proxyDSN(p, "", "&application_name=golden")
			simple := connect(t, ctx, dsn, pgx.QueryExecModeSimpleProtocol)
			ext := connect(t, ctx, dsn, pgx.QueryExecModeCacheStatement)
			run := func(c *pgx.Conn, sql string, args ...any) {
				t.Helper()
				rows, err := c.Query(ctx, sql, args...)
				if err == nil {
					for rows.Next() {
					}
					rows.Close()
					err = rows.Err()
				}
				_ = err // errors are part of the workload
			}
			run(simple, "drop table if exists ev_t; create table ev_t(id int primary key, v text)")
			run(simple, "insert into ev_t select g, 'v' || g from generate_series(1, 10) g")
			run(simple, "select count(*) from ev_t; select v from ev_t where id = 3")
			run(simple, "select 1/0")
			run(simple, "selec broken syntax")
			run(simple, "begin; update ev_t set v = 'x' where id <= 4; commit")
			run(ext, "select v from ev_t where id = $1", 5)
			run(ext, "select v from ev_t where id = $1", 6)
			run(ext, "select id from ev_t where id > $1 order by id", 7)
			// Pipelined batch.
			batch := &pgx.Batch{}
			batch.Queue("select v from ev_t where id = $1", 1)
			batch.Queue("select v from ev_t where id = $1", 2)
			batch.Queue("update ev_t set v = $1 where id = $2", "y", 9)
			if err := ext.SendBatch(ctx, batch).Close(); err != nil {
				t.Fatal(err)
			}
			// COPY in and out.
			if _, err := simple.PgConn().CopyFrom(ctx, strings.NewReader("11\tcopied\n12\tcopied\n"), "copy ev_t from stdin"); err != nil {
				t.Fatal(err)
			}
			var out bytes.Buffer
			if _, err := simple.PgConn().CopyTo(ctx, &out, "copy (select * from ev_t order by id) to stdout"); err != nil {
				t.Fatal(err)
			}
			// A portal executed in two parts counts once.
			sendPortalInParts(t, ext.PgConn())

			waitForEvents(t, sink, 19)
			var views []eventView
			for _, ev := range sink.snapshot() {
				views = append(views, eventView{
					Kind: ev.Kind.String(), Protocol: ev.Protocol.String(), Text: ev.Text, Detail: ev.Detail,
					TxSeq: ev.TxSeq, InTransaction: ev.InTransaction, Command: ev.Command, Rows: ev.Rows,
					SQLState: ev.SQLState, NumParams: ev.NumParams, HasParamHash: ev.ParamHash != 0, App: ev.ApplicationName,
				})
			}
			// Two sessions interleave; order by session then arrival.
			sessions := map[uint64][]eventView{}
			var ids []uint64
			for i, ev := range sink.snapshot() {
				if _, ok := sessions[ev.SessionID]; !ok {
					ids = append(ids, ev.SessionID)
				}
				sessions[ev.SessionID] = append(sessions[ev.SessionID], views[i])
			}
			sort.Slice(ids, func(i, j int) bool { return ids[i] < ids[j] })
			var b bytes.Buffer
			for n, id := range ids {
				fmt.Fprintf(&b, "# session %d\n", n+1)
				for _, v := range sessions[id] {
					line, _ := json.Marshal(v)
					b.Write(line)
					b.WriteByte('\n')
				}
			}
			golden := filepath.Join("testdata", "events.golden")
			if *update && mode == SessionMode {
				if err := os.WriteFile(golden, b.Bytes(), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (run with -update)", err)
			}
			if b.String() != string(want) {
				t.Fatalf("events differ from %s:\n--- got\n%s\n--- want\n%s", golden, b.String(), want)
			}
		})
	}
}

func waitForEvents(t *testing.T, sink *captureSink, n int) {
	t.Helper()
	testutil.Eventually(t, 5*time.Second, fmt.Sprintf("%d events", n), func() bool { return len(sink.snapshot()) >= n })
	// Deliberate: a moment more, so that a surplus event shows in the
	// comparison (absence cannot be waited for).
	time.Sleep(50 * time.Millisecond)
}

// TestAuditLogThroughProxy checks percentiles against latencies computed
// independently from the same events, and that secrets sent as literals
// and as parameters never reach the audit log unless log_parameters is on.
func TestAuditLogThroughProxy(t *testing.T) {
	for _, logParams := range []bool{false, true} {
		t.Run(fmt.Sprint("log_parameters=", logParams), func(t *testing.T) {
			var buf testutil.Buffer
			al, err := auditlog.Open(auditlog.Config{Writer: &buf, LogParameters: logParams, FlushInterval: -1})
			if err != nil {
				t.Fatal(err)
			}
			pl := analyzer.NewPipeline(analyzer.PipelineConfig{AuditLog: al})
			capture := &captureSink{}
			if err := pl.Start(context.Background()); err != nil {
				t.Fatal(err)
			}
			p := testProxyWithSink(t, func(c *Config) { withMode(TransactionMode, 2)(c); c.CaptureParams = logParams }, teeSink{pl, capture})
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			simple := connect(t, ctx, proxyDSN(p, "", ""), pgx.QueryExecModeSimpleProtocol)
			ext := connect(t, ctx, proxyDSN(p, "", ""), pgx.QueryExecModeCacheStatement)
			for i := 0; i < 200; i++ {
				if _, err := simple.Exec(ctx, fmt.Sprintf("select pg_sleep(%f), 'hunter2-literal'", float64(i%10)/2000)); err != nil {
					t.Fatal(err)
				}
			}
			if _, err := ext.Exec(ctx, "select $1::text", "hunter2-param"); err != nil {
				t.Fatal(err)
			}
			waitForEvents(t, capture, 201)
			if err := pl.Stop(context.Background()); err != nil {
				t.Fatal(err)
			}
			_ = al.Close()
			log := buf.String()
			for _, secret := range []string{"hunter2-literal", "hunter2-param"} {
				if got := strings.Contains(log, secret); got != logParams {
					t.Errorf("secret %q in audit log: %v, want %v", secret, got, logParams)
				}
			}
			// Independent percentiles over the same events.
			var durs []float64
			for _, ev := range capture.snapshot() {
				if strings.Contains(ev.Text, "pg_sleep") {
					durs = append(durs, float64(ev.Duration.Microseconds()))
				}
			}
			sort.Float64s(durs)
			top := pl.Stats().TopShapes(analyzer.ByTotalTime, 1)
			if len(top) != 1 || top[0].Calls != 200 {
				t.Fatalf("top shape: %+v", top)
			}
			for _, q := range []struct {
				q   float64
				got time.Duration
			}{{0.5, top[0].P50}, {0.9, top[0].P90}, {0.99, top[0].P99}} {
				exact := durs[int(math.Ceil(q.q*float64(len(durs))))-1]
				got := float64(q.got.Microseconds())
				if math.Abs(got-exact) > 0.02*exact+1 {
					t.Errorf("p%v: sketch %.0fµs, exact %.0fµs", q.q*100, got, exact)
				}
			}
		})
	}
}

// TestAuditBackpressure: with the analyzer stalled, the proxy keeps
// serving and counts the dropped events.
func TestAuditBackpressure(t *testing.T) {
	release := make(chan struct{})
	pl := analyzer.NewPipeline(analyzer.PipelineConfig{QueueSize: 4, Workers: 1})
	var once sync.Once
	if err := pl.AddObserver(analyzer.ObserverFunc(func(*analyzer.Analyzed) { once.Do(func() { <-release }) })); err != nil {
		t.Fatal(err)
	}
	if err := pl.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	p := testProxyWithSink(t, withMode(TransactionMode, 2), pl)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c := connect(t, ctx, proxyDSN(p, "", ""), pgx.QueryExecModeCacheStatement)
	for i := 0; i < 300; i++ {
		if _, err := c.Exec(ctx, "select $1::int", i); err != nil {
			t.Fatal(err)
		}
	}
	if d := pl.Dropped(); d < 290 {
		t.Fatalf("dropped = %d, want the queue overflow counted", d)
	}
	close(release)
	_ = pl.Stop(context.Background())
}

type teeSink []analyzer.Sink

func (t teeSink) Offer(ev *analyzer.Event) {
	for _, s := range t {
		s.Offer(ev)
	}
}

// sendPortalInParts executes an unnamed portal with a row limit, then
// finishes it, using the protocol directly.
func sendPortalInParts(t *testing.T, pc *pgconn.PgConn) {
	t.Helper()
	fe := pc.Frontend()
	fe.SendParse(&pgproto3.Parse{Query: "select g from generate_series(1, 5) g"})
	fe.SendBind(&pgproto3.Bind{})
	fe.SendExecute(&pgproto3.Execute{MaxRows: 2})
	fe.Send(&pgproto3.Flush{})
	if err := fe.Flush(); err != nil {
		t.Fatal(err)
	}
	readUntil := func(want byte) {
		for {
			msg, err := fe.Receive()
			if err != nil {
				t.Fatal(err)
			}
			switch m := msg.(type) {
			case *pgproto3.PortalSuspended:
				if want == 's' {
					return
				}
			case *pgproto3.ReadyForQuery:
				if want == 'Z' {
					return
				}
			case *pgproto3.ErrorResponse:
				t.Fatalf("portal: %s", m.Message)
			}
		}
	}
	readUntil('s')
	fe.SendExecute(&pgproto3.Execute{})
	fe.SendSync(&pgproto3.Sync{})
	if err := fe.Flush(); err != nil {
		t.Fatal(err)
	}
	readUntil('Z')
}

// TestSessionEndEvents: every client session that ran a statement reports
// its end to the sink exactly once, after its last statement event (so the
// analysis can forget it at once: a workload of one connection per
// transaction must not leave thousands of dead sessions in the N+1
// detector until their idle timeout). A session that ran nothing reports
// nothing. Both pool modes; sessions park and resume between steps.
func TestSessionEndEvents(t *testing.T) {
	for _, mode := range []PoolMode{SessionMode, TransactionMode} {
		t.Run(string(mode), func(t *testing.T) {
			sink := &captureSink{}
			p := testProxyWithSink(t, withMode(mode, 4), sink) // session mode: long and silent hold two
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			dsn := proxyDSN(p, "", "")
			long := connect(t, ctx, dsn, pgx.QueryExecModeSimpleProtocol)
			queryString(t, ctx, long, "select 'a'")
			queryString(t, ctx, long, "select 'b'")
			silent := connect(t, ctx, dsn, pgx.QueryExecModeCacheStatement) // runs nothing
			const short = 5
			for i := range short {
				c := connect(t, ctx, dsn, pgx.QueryExecModeCacheStatement)
				queryString(t, ctx, c, fmt.Sprintf("select '%d'", i))
				if err := c.Close(ctx); err != nil {
					t.Fatal(err)
				}
			}
			if err := long.Close(ctx); err != nil {
				t.Fatal(err)
			}
			if err := silent.Close(ctx); err != nil {
				t.Fatal(err)
			}
			testutil.Eventually(t, 10*time.Second, "session ends", func() bool {
				ends, _ := sink.sessionEnds()
				return len(ends) >= short+1
			})
			testutil.Eventually(t, 10*time.Second, "every client gone", func() bool { return p.ClientCount() == 0 })
			ends, after := sink.sessionEnds()
			events := sink.snapshot()
			if len(ends) != short+1 {
				t.Fatalf("%d session ends, want %d (the silent session reports none)", len(ends), short+1)
			}
			seen := map[uint64]bool{}
			for i, end := range ends {
				if seen[end.SessionID] {
					t.Errorf("session %d ended twice", end.SessionID)
				}
				seen[end.SessionID] = true
				if end.Start.IsZero() || end.Text != "" {
					t.Errorf("session end %+v: want a time and no statement", end)
				}
				ran := 0
				for j, ev := range events {
					if ev.SessionID != end.SessionID {
						continue
					}
					ran++
					if j >= after[i] {
						t.Errorf("session %d: statement %q offered after its end", end.SessionID, ev.Text)
					}
				}
				if ran == 0 {
					t.Errorf("session %d reported an end but ran no statement", end.SessionID)
				}
			}
		})
	}
}
