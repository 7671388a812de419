package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgaudit-proxy/pgaudit/internal/pgtest"
	"github.com/pgaudit-proxy/pgaudit/internal/testutil"
)

// Issue 17, section 1: several real `pgaudit proxy` processes on one
// host:port (so_reuseport) with peer_id and [peers], driven by pgbench and
// by clients of every process, and a rolling restart of one of them.

// buildPgaudit builds this package's binary (without -race: it is the
// system under load, not under inspection) into a temp dir.
func buildPgaudit(t *testing.T) string {
	t.Helper()
	goBin, err := exec.LookPath("go")
	if err != nil {
		goBin = filepath.Join(runtime.GOROOT(), "bin", "go")
	}
	out := filepath.Join(t.TempDir(), "pgaudit")
	cmd := exec.Command(goBin, "build", "-o", out, ".")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, b)
	}
	return out
}

// lockedBuffer collects a process's stderr.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// fleetProc is one `pgaudit proxy` process of a test fleet.
type fleetProc struct {
	id        int
	cmd       *exec.Cmd
	adminAddr string
	log       *lockedBuffer
	done      chan struct{} // closed when the process has exited
	exitErr   error         // valid after done
	exitedAt  time.Time     // valid after done
}

// fleetSpec is what every process of a fleet shares.
type fleetSpec struct {
	bin      string
	dir      string
	port     int    // the shared listen port
	upstream string // the cluster's DSN
	// peerSock names each peer id's peer_listen socket.
	peerSock        func(id int) string
	ids             []int // every peer id in [peers]
	poolSize        int
	shutdownTimeout time.Duration
}

// newFleetSpec builds the pgaudit binary and describes a fleet of the
// given peer ids on one free port in front of cluster c, each process with
// its peer_listen socket in a temp dir.
func newFleetSpec(t *testing.T, c *pgtest.Cluster, ids []int, poolSize int, shutdownTimeout time.Duration) fleetSpec {
	t.Helper()
	port, err := pgtest.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	return fleetSpec{bin: buildPgaudit(t), dir: dir, port: port, upstream: c.DSN(""), ids: ids, poolSize: poolSize,
		shutdownTimeout: shutdownTimeout,
		peerSock:        func(id int) string { return filepath.Join(dir, fmt.Sprintf("peer-%d.sock", id)) }}
}

// startFleetProc starts process id of the fleet and waits until its admin
// listener answers /readyz (the proxy listener opens before it).
func startFleetProc(t *testing.T, ctx context.Context, fs fleetSpec, id int) *fleetProc {
	t.Helper()
	adminPort, err := pgtest.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	// The same [peers] in every file, this process's own id included (as
	// docs/deploy.md suggests): a process never forwards to itself.
	var peers strings.Builder
	for _, other := range fs.ids {
		fmt.Fprintf(&peers, "%d = %q\n", other, fs.peerSock(other))
	}
	conf := fmt.Sprintf(`[pgaudit]
listen = "127.0.0.1:%d"
so_reuseport = true
peer_id = %d
peer_listen = %q
admin_listen = "127.0.0.1:%d"
pool_mode = "transaction"
pool_size = %d
shutdown_timeout = %q
explain = false
log_level = "info"

[peers]
%s`, fs.port, id, fs.peerSock(id), adminPort, fs.poolSize, fs.shutdownTimeout.String(), peers.String())
	path := filepath.Join(fs.dir, fmt.Sprintf("pgaudit-%d.toml", id))
	if err := os.WriteFile(path, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	p := &fleetProc{id: id, adminAddr: fmt.Sprintf("127.0.0.1:%d", adminPort), log: &lockedBuffer{}, done: make(chan struct{})}
	p.cmd = exec.Command(fs.bin, "proxy", "--config", path, "--upstream", fs.upstream)
	p.cmd.Stdout, p.cmd.Stderr = p.log, p.log
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		defer close(p.done)
		p.exitErr = p.cmd.Wait()
		p.exitedAt = time.Now()
	}()
	t.Cleanup(func() {
		select {
		case <-p.done:
		default:
			_ = p.cmd.Process.Kill()
			<-p.done
		}
		if t.Failed() {
			t.Logf("process %d log (tail):\n%s", id, tailLines(p.log.String(), 30))
		}
	})
	deadline := time.Now().Add(30 * time.Second)
	for {
		if resp, err := http.Get("http://" + p.adminAddr + "/readyz"); err == nil {
			_ = resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return p
			}
		}
		select {
		case <-p.done:
			t.Fatalf("process %d exited at start: %v\n%s", id, p.exitErr, p.log.String())
		case <-ctx.Done():
			t.Fatal(ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("process %d not ready within 30s\n%s", id, p.log.String())
		}
	}
}

// metric returns the value of the sample `name{labels}` (labels as they
// appear in the text format, "" for none) from the process's /metrics.
func (p *fleetProc) metric(t *testing.T, name, labels string) float64 {
	t.Helper()
	resp, err := http.Get("http://" + p.adminAddr + "/metrics")
	if err != nil {
		t.Fatalf("process %d /metrics: %v", p.id, err)
	}
	defer resp.Body.Close()
	want := name
	if labels != "" {
		want += "{" + labels + "}"
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if v, ok := strings.CutPrefix(line, want+" "); ok {
			f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			if err != nil {
				t.Fatalf("process %d: %q: %v", p.id, line, err)
			}
			return f
		}
	}
	t.Fatalf("process %d: no sample %s in /metrics", p.id, want)
	return 0
}

// cancels returns the process's pgaudit_cancel_requests_total by result,
// plus "from_peers".
func (p *fleetProc) cancels(t *testing.T) map[string]int {
	t.Helper()
	out := map[string]int{}
	for _, r := range []string{"local", "forwarded", "forward_failed", "unknown"} {
		out[r] = int(p.metric(t, "pgaudit_cancel_requests_total", `result="`+r+`"`))
	}
	out["from_peers"] = int(p.metric(t, "pgaudit_peer_cancel_requests_received_total", ""))
	return out
}

func sumCancels(t *testing.T, procs []*fleetProc) map[string]int {
	t.Helper()
	sum := map[string]int{}
	for _, p := range procs {
		for k, v := range p.cancels(t) {
			sum[k] += v
		}
	}
	return sum
}

// cmdWaiter owns the goroutine waiting for a started command.
type cmdWaiter struct {
	ch  chan error
	got bool
	err error
}

// waiter starts waiting for cmd (already started).
func waiter(cmd *exec.Cmd) *cmdWaiter {
	w := &cmdWaiter{ch: make(chan error, 1)}
	go func() { w.ch <- cmd.Wait() }()
	return w
}

// startPgbench starts pgbench with args, its output collected in the
// returned buffer (read it only after wait). The command is killed and
// waited for when the test ends unless the test waited for it already.
func startPgbench(t *testing.T, ctx context.Context, bin string, args ...string) (*bytes.Buffer, *cmdWaiter) {
	t.Helper()
	var out bytes.Buffer
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	w := waiter(cmd)
	t.Cleanup(func() {
		if !w.done() {
			_ = cmd.Process.Kill()
			_ = w.wait()
		}
	})
	return &out, w
}

// wait returns the command's exit error, waiting for it once.
func (w *cmdWaiter) wait() error {
	if !w.got {
		w.err, w.got = <-w.ch, true
	}
	return w.err
}

// done reports whether wait has returned.
func (w *cmdWaiter) done() bool { return w.got }

// peerOfPID returns the peer id a proxy-issued BackendKeyData PID carries
// (PgBouncer's layout: bytes 1 and 2, low byte first).
func peerOfPID(pid uint32) int { return int(pid>>16&0xff) | int(pid>>8&0xff)<<8 }

func tailLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// sleepAndCancel runs pg_sleep(30) on conn, waits until Postgres shows it
// active, sends a CancelRequest through the address conn was opened on and
// returns the time from the CancelRequest to the statement's error, and
// the error. It fails the test when the statement is not canceled within 5 s.
func sleepAndCancel(t *testing.T, ctx context.Context, c *pgtest.Cluster, conn *pgconn.PgConn, tag string) (time.Duration, error) {
	t.Helper()
	marker := fmt.Sprintf("fleet_%s_%d", tag, time.Now().UnixNano())
	res := make(chan error, 1)
	go func() {
		_, err := conn.Exec(ctx, fmt.Sprintf("select pg_sleep(30) /* %s */", marker)).ReadAll()
		res <- err
	}()
	waitActiveIn(t, ctx, c, marker, res)
	start := time.Now()
	if err := conn.CancelRequest(ctx); err != nil {
		t.Fatalf("%s: CancelRequest: %v", tag, err)
	}
	select {
	case err := <-res:
		return time.Since(start), err
	case <-time.After(5 * time.Second):
		t.Fatalf("%s: statement not canceled within 5s of its CancelRequest", tag)
		return 0, nil
	}
}

// waitActiveIn waits until a statement containing marker is active in
// pg_stat_activity (checked on a direct connection).
func waitActiveIn(t *testing.T, ctx context.Context, c *pgtest.Cluster, marker string, res chan error) {
	t.Helper()
	direct, err := pgconn.Connect(ctx, c.DSN(""))
	if err != nil {
		t.Fatal(err)
	}
	defer direct.Close(context.Background())
	q := fmt.Sprintf("select count(*) from pg_stat_activity where state = 'active' and query like '%%%s%%' and pid <> pg_backend_pid()", marker)
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case err := <-res:
			t.Fatalf("statement %s ended before it was canceled: %v", marker, err)
		default:
		}
		rr, err := direct.Exec(ctx, q).ReadAll()
		if err != nil {
			t.Fatal(err)
		}
		if string(rr[0].Rows[0][0]) != "0" {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("statement %s never became active", marker)
}

func wantCanceled(t *testing.T, err error, what string) {
	t.Helper()
	var pe *pgconn.PgError
	if !errors.As(err, &pe) || pe.Code != "57014" {
		t.Fatalf("%s: got %v, want ERROR 57014", what, err)
	}
}

func median(ds []time.Duration) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[len(s)/2]
}

// TestFleetCancelAcrossProcesses (issue 17, section 1): three pgaudit
// processes share one port with so_reuseport, each with its own peer_id
// and peer_listen socket, and all three in [peers]. Under a pgbench run
// through the shared port, three clients of every process each run
// pg_sleep(30) and cancel it through the shared port: every cancel lands
// (57014 within 5 s) on whichever process the kernel hands the
// CancelRequest to, the counters show that some were forwarded to
// another process and none were lost, and pgbench sees no failure.
func TestFleetCancelAcrossProcesses(t *testing.T) {
	t.Parallel() // own cluster, port, processes and sockets
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	c := startE2ECluster(t, ctx, pgtest.Options{}, "", true)
	fs := newFleetSpec(t, c, []int{1, 2, 3}, 8, 10*time.Second)
	port := fs.port
	var procs []*fleetProc
	for _, id := range fs.ids {
		procs = append(procs, startFleetProc(t, ctx, fs, id))
	}
	shared := fmt.Sprintf("postgres://postgres@127.0.0.1:%d/postgres?sslmode=disable", port)

	// pgbench through the shared port for the whole test.
	// Rate-limited (-R): load on every process for the whole test without
	// taking the two cores from the tests running beside this one.
	bench, benchWait := startPgbench(t, ctx, c.Bin("pgbench"), "-n", "-S", "-c", "9", "-j", "2", "-R", "300", "-T", "20", shared)

	// Three clients on every process; the kernel picks, the key tells.
	const perProc = 3
	on := map[int][]*pgconn.PgConn{}
	for i := 0; i < 300 && (len(on[1]) < perProc || len(on[2]) < perProc || len(on[3]) < perProc); i++ {
		conn, err := pgconn.Connect(ctx, shared)
		if err != nil {
			t.Fatal(err)
		}
		id := peerOfPID(conn.PID())
		if len(on[id]) >= perProc {
			_ = conn.Close(ctx)
			continue
		}
		on[id] = append(on[id], conn)
		t.Cleanup(func() { _ = conn.Close(context.Background()) })
	}
	for _, id := range fs.ids {
		if len(on[id]) < perProc {
			t.Fatalf("300 connections gave process %d only %d clients", id, len(on[id]))
		}
	}

	var local, forwarded []time.Duration
	sent := 0
	for _, id := range fs.ids {
		for i, conn := range on[id] {
			before := sumCancels(t, procs)["forwarded"]
			took, err := sleepAndCancel(t, ctx, c, conn, fmt.Sprintf("p%d_c%d", id, i))
			wantCanceled(t, err, fmt.Sprintf("client %d of process %d", i, id))
			sent++
			// The forwarding process counts its forward once the peer has
			// closed the forwarded request's connection, which may be
			// after the client saw 57014.
			var after map[string]int
			testutil.Eventually(t, 5*time.Second, "the cancel counters to settle", func() bool {
				after = sumCancels(t, procs)
				return after["local"] >= sent && after["forwarded"] == after["from_peers"]
			})
			if after["forwarded"] > before {
				forwarded = append(forwarded, took)
			} else {
				local = append(local, took)
			}
			// The session goes on after its statement was canceled.
			if _, err := conn.Exec(ctx, "select 1").ReadAll(); err != nil {
				t.Fatalf("client %d of process %d after the cancel: %v", i, id, err)
			}
		}
	}
	sum := sumCancels(t, procs)
	t.Logf("cancels: %v; CancelRequest to 57014: local median %v (%d), forwarded median %v (%d)",
		sum, median(local), len(local), median(forwarded), len(forwarded))
	n := perProc * len(fs.ids)
	// Every client request ended on its client's process (local there),
	// directly or after one forward; none was dropped or unmatched.
	if sum["local"] != n || sum["unknown"] != 0 || sum["forward_failed"] != 0 {
		t.Errorf("cancel counters %v: want local = %d, unknown = forward_failed = 0", sum, n)
	}
	if sum["forwarded"] != sum["from_peers"] || sum["forwarded"] != len(forwarded) {
		t.Errorf("cancel counters %v: forwarded %d, want from_peers equal and %d", sum, sum["forwarded"], len(forwarded))
	}
	// With 3 processes, 9 requests all landing on their own client's
	// process has probability (1/3)^9.
	if sum["forwarded"] == 0 {
		t.Errorf("no CancelRequest reached a process other than its client's: %v", sum)
	}

	if err := benchWait.wait(); err != nil {
		t.Fatalf("pgbench through the shared port: %v\n%s", err, bench.String())
	}
	out := bench.String()
	if !strings.Contains(out, "number of failed transactions: 0") {
		t.Errorf("pgbench reported failed transactions:\n%s", out)
	}
	for _, p := range procs {
		if q := p.metric(t, "pgaudit_pool_transactions_total", `database="postgres",user="postgres"`); q == 0 {
			t.Errorf("process %d carried no transactions: the kernel did not spread pgbench's connections", p.id)
		}
	}
	t.Logf("pgbench -S -c 9 through the shared port while canceling:\n%s", tailLines(out, 4))
}

// restartWorker runs pgbench-like transactions (BEGIN; UPDATE; SELECT;
// COMMIT, one round trip each) through dsn until stop closes, as a
// reconnecting client does: a connection error or FATAL before or on
// BEGIN (nothing of the transaction ran) is retried on a new connection;
// an error after BEGIN succeeded is a failed transaction.
type restartWorker struct {
	commits       []time.Time
	connectErrors int // failed connection attempts (retried)
	beginErrors   int // errors on BEGIN: the session was ended (retried)
	failures      []string
}

func (w *restartWorker) run(ctx context.Context, dsn string, id int, stop <-chan struct{}) {
	var conn *pgconn.PgConn
	defer func() {
		if conn != nil {
			_ = conn.Close(context.Background())
		}
	}()
	aid := 1 + id*1000
	for {
		select {
		case <-stop:
			return
		default:
		}
		if conn == nil || conn.IsClosed() {
			var err error
			cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			conn, err = pgconn.Connect(cctx, dsn)
			cancel()
			if err != nil {
				conn = nil
				w.connectErrors++
				time.Sleep(5 * time.Millisecond)
				continue
			}
		}
		if _, err := conn.Exec(ctx, "BEGIN").ReadAll(); err != nil {
			w.beginErrors++
			_ = conn.Close(ctx)
			conn = nil
			continue
		}
		aid = aid%100000 + 1
		stmts := []string{
			fmt.Sprintf("UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid = %d", aid),
			fmt.Sprintf("SELECT abalance FROM pgbench_accounts WHERE aid = %d", aid),
			"COMMIT",
		}
		failed := false
		for _, s := range stmts {
			if _, err := conn.Exec(ctx, s).ReadAll(); err != nil {
				w.failures = append(w.failures, fmt.Sprintf("%s: %v", s, err))
				failed = true
				break
			}
		}
		if failed {
			_ = conn.Close(ctx)
			conn = nil
			continue
		}
		w.commits = append(w.commits, time.Now())
	}
}

// TestFleetRollingRestart (issue 17, section 1): the rolling restart of
// a pgaudit process that shares its port with so_reuseport, under
// reconnecting clients that run transactions without pause.
//
//  1. Process 1 serves alone; 8 workers run transactions through the
//     port; one more client runs pg_sleep(30) and another holds a
//     transaction open, both on process 1.
//  2. Process 2 (the replacement, another peer id; each has the other in
//     [peers]) starts on the same port; pgbench -C (a new connection for
//     every transaction) runs through the port across the restart.
//  3. SIGTERM to process 1: from then on every new connection reaches
//     process 2; the sleeping client's statement is canceled through the
//     shared port (so by process 2, forwarding to process 1 on its
//     peer_listen socket) and that client, now idle, gets FATAL 57P01;
//     the workers' sessions on process 1 end at their next BEGIN and
//     reconnect; the client holding a transaction open keeps it until
//     shutdown_timeout, when it gets 57P01 and process 1 exits.
//
// No worker transaction fails: only BEGINs (nothing ran) meet a closed
// session; pgbench -C sees no error at all. The test logs the
// transactions, retries and the longest gap.
func TestFleetRollingRestart(t *testing.T) {
	t.Parallel() // own cluster, port, processes and sockets
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	c := startE2ECluster(t, ctx, pgtest.Options{}, "", true)
	const shutdownTimeout = 6 * time.Second
	fs := newFleetSpec(t, c, []int{1, 2}, 6, shutdownTimeout)
	port := fs.port
	old := startFleetProc(t, ctx, fs, 1)
	shared := fmt.Sprintf("postgres://postgres@127.0.0.1:%d/postgres?sslmode=disable", port)

	// The clients that must be on the old process.
	sleeper, err := pgconn.Connect(ctx, shared)
	if err != nil {
		t.Fatal(err)
	}
	defer sleeper.Close(context.Background())
	holder, err := pgconn.Connect(ctx, shared)
	if err != nil {
		t.Fatal(err)
	}
	defer holder.Close(context.Background())
	if _, err := holder.Exec(ctx, "BEGIN; SELECT 1").ReadAll(); err != nil {
		t.Fatal(err)
	}
	if peerOfPID(sleeper.PID()) != 1 || peerOfPID(holder.PID()) != 1 {
		t.Fatalf("clients not on process 1: peers %d, %d", peerOfPID(sleeper.PID()), peerOfPID(holder.PID()))
	}

	const nWorkers = 8
	workers := make([]*restartWorker, nWorkers)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for i := range workers {
		workers[i] = &restartWorker{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			workers[i].run(ctx, shared, i, stop)
		}()
	}
	stopped := false
	stopWorkers := func() {
		if !stopped {
			stopped = true
			close(stop)
			wg.Wait()
		}
	}
	defer stopWorkers()
	time.Sleep(2 * time.Second)

	// And pgbench, connecting anew for each transaction (-C), as a
	// client that reconnects does; it aborts on any error.
	bench, benchWait := startPgbench(t, ctx, c.Bin("pgbench"), "-n", "-C", "-c", "4", "-j", "2", "-T", "10", shared)
	// 2. The replacement.
	repl := startFleetProc(t, ctx, fs, 2)
	time.Sleep(time.Second)

	// 3. SIGTERM to the old process while a statement of its runs.
	marker := fmt.Sprintf("fleet_restart_%d", time.Now().UnixNano())
	res := make(chan error, 1)
	go func() {
		_, err := sleeper.Exec(ctx, fmt.Sprintf("select pg_sleep(30) /* %s */", marker)).ReadAll()
		res <- err
	}()
	waitActiveIn(t, ctx, c, marker, res)
	sigAt := time.Now()
	if err := old.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	// The old listener closes at once: new connections reach process 2.
	testutil.Eventually(t, 5*time.Second, "new connections to reach only process 2", func() bool {
		for i := 0; i < 10; i++ {
			conn, err := pgconn.Connect(ctx, shared)
			if err != nil {
				return false
			}
			id := peerOfPID(conn.PID())
			_ = conn.Close(ctx)
			if id != 2 {
				return false
			}
		}
		return true
	})
	// A cancel for the old process's client still lands: the shared port
	// now reaches process 2 only, which forwards it.
	before := repl.cancels(t)["forwarded"]
	cancelAt := time.Now()
	if err := sleeper.CancelRequest(ctx); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-res:
		wantCanceled(t, err, "the draining process's client")
		t.Logf("forwarded cancel to a draining process: 57014 after %v", time.Since(cancelAt))
	case <-time.After(5 * time.Second):
		t.Fatal("the draining process's client: not canceled within 5s")
	}
	testutil.Eventually(t, 5*time.Second, "process 2 to count its forward to process 1", func() bool {
		return repl.cancels(t)["forwarded"] == before+1
	})
	// Now idle, the sleeper is ended with 57P01 (at once by the drain
	// poll, or at its next statement).
	testutil.Eventually(t, 5*time.Second, "the idle client of the draining process to be ended", func() bool {
		_, err := sleeper.Exec(ctx, "select 1").ReadAll()
		if err == nil {
			return false
		}
		var pe *pgconn.PgError
		if !errors.As(err, &pe) || pe.Code != "57P01" {
			t.Errorf("idle client of the draining process: got %v, want FATAL 57P01", err)
		}
		return true
	})

	// The holder keeps its transaction until shutdown_timeout.
	select {
	case <-old.done:
	case <-time.After(shutdownTimeout + 10*time.Second):
		t.Fatalf("old process still running %v after SIGTERM", time.Since(sigAt))
	}
	drain := old.exitedAt.Sub(sigAt)
	if old.exitErr != nil {
		t.Errorf("old process exit: %v", old.exitErr)
	}
	if drain < shutdownTimeout-500*time.Millisecond {
		t.Errorf("old process exited %v after SIGTERM, before shutdown_timeout %v, with a transaction open", drain, shutdownTimeout)
	}
	if !strings.Contains(old.log.String(), `"clients_cut":1`) {
		t.Errorf("old process did not report cutting exactly the one client in a transaction:\n%s", tailLines(old.log.String(), 10))
	}
	// The client holding a transaction open past shutdown_timeout was
	// told why its session ended.
	if _, err := holder.Exec(ctx, "select 1").ReadAll(); err == nil {
		t.Error("the client holding a transaction open past shutdown_timeout still has its session")
	} else if pe := (*pgconn.PgError)(nil); !errors.As(err, &pe) || pe.Code != "57P01" {
		t.Errorf("the client holding a transaction open past shutdown_timeout: got %v, want FATAL 57P01", err)
	}

	// Transactions go on through process 2.
	time.Sleep(2 * time.Second)
	stopWorkers()
	endAt := time.Now()
	var all []time.Time
	var failures []string
	connectErrors, beginErrors := 0, 0
	var maxGap time.Duration // one client's longest wait for a commit after SIGTERM
	for _, w := range workers {
		all = append(all, w.commits...)
		failures = append(failures, w.failures...)
		connectErrors += w.connectErrors
		beginErrors += w.beginErrors
		prev := sigAt
		for _, ts := range w.commits {
			if ts.After(sigAt) {
				maxGap = max(maxGap, ts.Sub(prev))
				prev = ts
			}
		}
	}
	sort.Slice(all, func(i, j int) bool { return all[i].Before(all[j]) })
	var during, after int
	var globalGap time.Duration
	for i, ts := range all {
		if ts.After(sigAt) && !ts.After(old.exitedAt) {
			during++
		}
		if ts.After(old.exitedAt) {
			after++
		}
		if i > 0 && ts.After(sigAt) {
			globalGap = max(globalGap, ts.Sub(all[i-1]))
		}
	}
	t.Logf("rolling restart, %d reconnecting clients: %d transactions in all, %d between SIGTERM and the old process's exit (%v), %d after it (%v); %d failed; retried: %d BEGINs on an ended session, %d failed connection attempts; longest wait for a commit after SIGTERM: %v for one client, %v between any two commits",
		nWorkers, len(all), during, drain.Round(time.Millisecond), after, endAt.Sub(old.exitedAt).Round(time.Millisecond),
		len(failures), beginErrors, connectErrors, maxGap.Round(time.Millisecond), globalGap.Round(time.Millisecond))
	if len(failures) > 0 {
		t.Errorf("%d transactions failed after BEGIN (a reconnecting client would not retry them): %v", len(failures), failures)
	}
	if during == 0 || after == 0 {
		t.Errorf("transactions during the drain %d, after it %d: want both > 0", during, after)
	}
	if n := repl.metric(t, "pgaudit_pool_transactions_total", `database="postgres",user="postgres"`); n == 0 {
		t.Error("the replacement process carried no transactions")
	}
	if err := benchWait.wait(); err != nil {
		t.Fatalf("pgbench -C across the restart: %v\n%s", err, bench.String())
	}
	if out := bench.String(); !strings.Contains(out, "number of failed transactions: 0") {
		t.Errorf("pgbench -C across the restart reported failed transactions:\n%s", out)
	} else {
		t.Logf("pgbench -C -c 4 across the restart:\n%s", tailLines(out, 4))
	}
}
