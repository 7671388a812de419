package pooler

import (
	"bufio"
	"bytes"
	"context"
	"crypto/md5"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgaudit-proxy/pgaudit/internal/testutil"
)

// goroutinesIn counts the goroutines whose stack contains fn.
func goroutinesIn(fn string) int {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	count := 0
	for _, g := range bytes.Split(buf, []byte("\n\n")) {
		if bytes.Contains(g, []byte(fn)) {
			count++
		}
	}
	return count
}

// waitGoroutinesIn waits until at least n goroutines are in fn.
func waitGoroutinesIn(t testing.TB, fn string, n int) {
	t.Helper()
	if !testutil.Within(20*time.Second, func() bool { return goroutinesIn(fn) >= n }) {
		t.Fatalf("%d goroutines in %s, want %d", goroutinesIn(fn), fn, n)
	}
}

// heapInuse returns the Go heap in use after a collection.
func heapInuse() uint64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapInuse
}

// rssBytes returns this process's resident set size (the proxy runs in
// the test process), or 0 where /proc is missing.
func rssBytes() uint64 {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			kb, _ := strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			return kb << 10
		}
	}
	return 0
}

// queryHeader is the header of a Query message whose body is bodyLen
// bytes.
func queryHeader(bodyLen int) []byte {
	return binary.BigEndian.AppendUint32([]byte{'Q'}, uint32(bodyLen+4))
}

// lengthQuery returns the body of a Query message of exactly size bytes:
// select length('aaa...').
func lengthQuery(size int) []byte {
	const pre, post = "select length('", "')\x00"
	q := make([]byte, size)
	copy(q, pre)
	for i := len(pre); i < size-len(post); i++ {
		q[i] = 'a'
	}
	copy(q[size-len(post):], post)
	return q
}

// TestClaimedLengthsReserveNothing (issue 12, hole 2): logged-in clients
// that each send only the header of a 64 MiB Query and a few bytes, then
// hang, make the proxy hold memory for the bytes that arrived, not for the
// lengths claimed, and a normal client is served meanwhile.
func TestClaimedLengthsReserveNothing(t *testing.T) {
	const clients = 100
	p := testProxy(t, withMode(TransactionMode, 2))
	addr := p.Addr().String()
	conns := make([]*wireConn, clients)
	for i := range conns {
		conns[i] = dialWire(t, addr, nil)
	}
	body := 64<<20 - 4 // the frame claims 64 MiB, the default max_message_size
	q := lengthQuery(body)
	heapBefore, rssBefore := heapInuse(), rssBytes()
	sent := len("select length('aaaa")
	for _, c := range conns {
		_ = c.nc.SetWriteDeadline(time.Now().Add(wireTimeout))
		if _, err := c.nc.Write(append(queryHeader(body), q[:sent]...)); err != nil {
			t.Fatal(err)
		}
	}
	// Every client's goroutine is now assembling its message.
	waitGoroutinesIn(t, "wire.(*Reader).fill", clients)
	heapAfter, rssAfter := heapInuse(), rssBytes()
	growth := int64(heapAfter) - int64(heapBefore)
	t.Logf("%d clients claiming 64 MiB each: Go heap in use %.1f -> %.1f MiB (%+.1f MiB), RSS %.1f -> %.1f MiB; budget charged %d bytes",
		clients, mib(heapBefore), mib(heapAfter), float64(growth)/(1<<20), mib(rssBefore), mib(rssAfter), p.BufferedClientBytes())
	if growth > 32<<20 {
		t.Errorf("the Go heap grew by %.1f MiB for %d clients that sent a few bytes each", float64(growth)/(1<<20), clients)
	}
	if rssBefore > 0 && rssAfter > rssBefore+64<<20 {
		t.Errorf("RSS grew by %.1f MiB for %d clients that sent a few bytes each", mib(rssAfter-rssBefore), clients)
	}
	if n := p.BufferedClientBytes(); n != 0 {
		t.Errorf("%d bytes charged to client_buffer_budget for messages of a few bytes so far", n)
	}
	// A normal pgx client is served meanwhile.
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	normal := connect(t, ctx, proxyDSN(p, "", ""), pgx.QueryExecModeCacheStatement)
	if got := queryString(t, ctx, normal, "select 1::text"); got != "1" {
		t.Fatalf("select 1 while %d clients hang mid-message: %q", clients, got)
	}
	normal.Close(ctx)

	// Memory follows the bytes: 1 MiB more on one of them is charged as
	// about 1 MiB (the buffer doubles), and the whole message, once it is
	// complete, runs and its buffer is given back.
	c := conns[0]
	if _, err := c.nc.Write(q[sent : sent+1<<20]); err != nil {
		t.Fatal(err)
	}
	sent += 1 << 20
	testutil.Within(10*time.Second, func() bool { return p.BufferedClientBytes() >= 1<<20 }) // checked below
	if n := p.BufferedClientBytes(); n < 1<<20 || n > 4<<20 {
		t.Fatalf("after 1 MiB of a 64 MiB message arrived, %d bytes are charged; want 1-4 MiB", n)
	}
	go func() {
		_ = c.nc.SetWriteDeadline(time.Now().Add(30 * time.Second))
		_, _ = c.nc.Write(q[sent:])
	}()
	m := c.recvUntil(func(m pgproto3.BackendMessage) bool {
		return isType[*pgproto3.ReadyForQuery](m) || isType[*pgproto3.ErrorResponse](m)
	})
	if er, ok := m.(*pgproto3.ErrorResponse); ok {
		t.Fatalf("a complete 64 MiB Query: %s %s %s", er.Severity, er.Code, er.Message)
	}
	testutil.Within(10*time.Second, func() bool { return p.BufferedClientBytes() == 0 }) // checked below
	if n := p.BufferedClientBytes(); n != 0 {
		t.Fatalf("%d bytes still charged after the message was handled", n)
	}
	for _, c := range conns {
		c.nc.Close()
	}
	proxyServes(t, p)
}

func mib(n uint64) float64 { return float64(n) / (1 << 20) }

// TestClientBufferBudget (issue 12, hole 2): when the client messages
// being received together exceed client_buffer_budget, the client whose
// message would take it over gets FATAL 53200 and is closed; the others
// are unaffected, and the budget is whole again afterwards.
func TestClientBufferBudget(t *testing.T) {
	for _, mode := range []PoolMode{SessionMode, TransactionMode} {
		t.Run(string(mode), func(t *testing.T) {
			p := testProxy(t, func(c *Config) {
				withMode(mode, 3)(c)
				c.ClientBufferBudget = 4 << 20
			})
			addr := p.Addr().String()
			bystander := dialWire(t, addr, nil)

			// holder's message, 3.5 MiB, takes most of the budget.
			holder := dialWire(t, addr, nil)
			held := lengthQuery(7 << 19)
			_ = holder.nc.SetWriteDeadline(time.Now().Add(wireTimeout))
			if _, err := holder.nc.Write(append(queryHeader(len(held)), held[:3<<20]...)); err != nil {
				t.Fatal(err)
			}
			testutil.Within(10*time.Second, func() bool { return p.BufferedClientBytes() >= 3<<20 }) // checked below
			if n := p.BufferedClientBytes(); n < 3<<20 || n > 4<<20 {
				t.Fatalf("3 MiB of a 3.5 MiB message charged as %d bytes", n)
			}

			// offender streams a 32 MiB message: it runs out of budget.
			offender := dialWire(t, addr, nil)
			werr := make(chan error, 1)
			go func() {
				_ = offender.nc.SetWriteDeadline(time.Now().Add(wireTimeout))
				_, err := offender.nc.Write(append(queryHeader(32<<20), lengthQuery(2<<20)...))
				werr <- err
			}()
			er := readErrorAndClose(t, offender.nc)
			wantFatal(t, er, "53200")
			if want := "pgaudit: buffered client bytes exceed client_buffer_budget (4 MiB)"; er.Message != want {
				t.Errorf("message %q, want %q", er.Message, want)
			}
			if lc := p.LimitCounts(); lc.BudgetExceeded != 1 || lc.BufferBudget != 4<<20 {
				t.Errorf("limit counts %+v: want one budget refusal of a 4 MiB budget", lc)
			}
			<-werr // may fail: the proxy stopped reading

			// Nobody else is hurt: the bystander queries, and the holder's
			// message completes and runs.
			if st := bystander.query("select 1"); st != 'I' {
				t.Fatalf("bystander: status %q", st)
			}
			_ = holder.nc.SetWriteDeadline(time.Now().Add(wireTimeout))
			if _, err := holder.nc.Write(held[3<<20:]); err != nil {
				t.Fatal(err)
			}
			m := holder.recvUntil(func(m pgproto3.BackendMessage) bool {
				return isType[*pgproto3.ReadyForQuery](m) || isType[*pgproto3.ErrorResponse](m)
			})
			if er, ok := m.(*pgproto3.ErrorResponse); ok {
				t.Fatalf("holder: %s %s %s", er.Severity, er.Code, er.Message)
			}
			testutil.Within(10*time.Second, func() bool { return p.BufferedClientBytes() == 0 }) // checked below
			if n := p.BufferedClientBytes(); n != 0 {
				t.Fatalf("%d bytes still charged", n)
			}
			// The whole budget is available again.
			if st := bystander.query(string(lengthQuery(3 << 20)[:3<<20-1])); st != 'I' {
				t.Fatalf("a 3 MiB query after: status %q", st)
			}
			waitPool(t, p, 5*time.Second, "after the budget error", func(active, _ int) bool { return active <= 2 })
			proxyServesWith(t, p, 2)
		})
	}
}

// proxyServesWith is proxyServes for a proxy that keeps open clients
// connected.
func proxyServesWith(t testing.TB, p *Proxy, open int) {
	t.Helper()
	if err := connectErr(t, proxyDSN(p, "", "")); err != nil {
		t.Fatalf("proxy no longer serves clients: %v", err)
	}
	if !testutil.Within(3*time.Second, func() bool { return p.ClientCount() <= open }) {
		t.Fatalf("%d clients registered, want %d", p.ClientCount(), open)
	}
}

// TestSilentSocketFlood (issue 12, hole 3): more silent sockets than
// max_client_conn neither count toward it nor keep an authenticating
// client out; those beyond max_login_clients are closed at once with
// FATAL 53300, the rest at client_login_timeout.
func TestSilentSocketFlood(t *testing.T) {
	const maxClients, maxLogin, silentN = 20, 10, 50
	p := testProxy(t, func(c *Config) {
		c.AuthType = "md5"
		c.Users = authUsers(t)
		withMode(TransactionMode, 2)(c)
		c.MaxClientConn = maxClients
		c.MaxLoginClients = maxLogin
		c.ClientLoginTimeout = 4 * time.Second
	})
	addr := p.Addr().String()
	silent := make([]net.Conn, silentN)
	for i := range silent {
		silent[i] = dialRaw(t, addr)
	}
	// The proxy has accepted them all.
	testutil.Eventually(t, 10*time.Second, "the proxy accepted every silent socket", func() bool {
		lc := p.LimitCounts()
		return lc.LoginEvicted+int64(lc.LoggingIn) >= silentN
	})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	// Real clients log in and query, several at once and one after another,
	// while the silent sockets hold every login slot.
	var wg sync.WaitGroup
	errs := make(chan error, maxLogin)
	for i := 0; i < maxLogin-2; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := 0; j < 3; j++ {
				conn, err := pgconn.Connect(ctx, userDSN(p, plainUser, plainPW, ""))
				if err != nil {
					errs <- fmt.Errorf("login during the flood: %w", err)
					return
				}
				_, err = conn.Exec(ctx, "select 1").ReadAll()
				conn.Close(ctx)
				if err != nil {
					errs <- fmt.Errorf("query during the flood: %w", err)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	// Authenticated clients still count: max_client_conn holds.
	testutil.Eventually(t, 5*time.Second, "authenticated clients to leave", func() bool { return p.authed.Load() == 0 })
	var held []*pgconn.PgConn
	for i := 0; i < maxClients; i++ {
		conn, err := pgconn.Connect(ctx, userDSN(p, plainUser, plainPW, ""))
		if err != nil {
			t.Fatalf("client %d of max_client_conn %d: %v", i+1, maxClients, err)
		}
		held = append(held, conn)
	}
	wantPgError(t, connectErr(t, userDSN(p, plainUser, plainPW, "")), "FATAL", "53300", "no more connections allowed (max_client_conn)")
	for _, c := range held {
		c.Close(ctx)
	}
	testutil.Eventually(t, 5*time.Second, "authenticated clients to leave", func() bool { return p.authed.Load() == 0 })
	// Every silent socket was closed: the oldest to make room (with
	// 53300), the others when client_login_timeout passed.
	// (Which ones were oldest is the order in which the proxy's handlers
	// took their slots, not quite the order of the dials.)
	evicted := 0
	for _, nc := range silent {
		if er := readErrorAndClose(t, nc); er != nil {
			wantFatal(t, er, "53300")
			evicted++
		}
	}
	if evicted < silentN-maxLogin {
		t.Errorf("%d silent sockets got 53300, want at least %d", evicted, silentN-maxLogin)
	}
	testutil.Within(5*time.Second, func() bool { return p.LoginCount() == 0 }) // checked below
	if n := p.LoginCount(); n != 0 {
		t.Fatalf("%d connections still logging in", n)
	}
}

// TestLoginSlotsSpareStartedClients: with every login slot taken by
// clients that sent their StartupMessage and stalled in authentication,
// new silent sockets displace each other, not those clients, until
// none of the silent ones is left.
func TestLoginSlotsSpareStartedClients(t *testing.T) {
	p := testProxy(t, func(c *Config) {
		c.AuthType = "md5"
		c.Users = authUsers(t)
		c.MaxLoginClients = 3
	})
	addr := p.Addr().String()
	type stalled struct {
		*wireConn
		salt [4]byte
	}
	inAuth := func() stalled {
		c := newWireConn(t, dialRaw(t, addr))
		c.send(&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersion30,
			Parameters: map[string]string{"user": plainUser, "database": "postgres"}})
		m, ok := c.recv().(*pgproto3.AuthenticationMD5Password)
		if !ok {
			t.Fatal("want AuthenticationMD5Password")
		}
		return stalled{c, m.Salt}
	}
	a, b := inAuth(), inAuth()
	s1 := dialRaw(t, addr)
	testutil.Eventually(t, 5*time.Second, "three logins in progress", func() bool { return p.LoginCount() == 3 })
	s2 := dialRaw(t, addr) // displaces s1, not a or b
	wantFatal(t, readErrorAndClose(t, s1), "53300")
	testutil.Eventually(t, 5*time.Second, "three logins in progress", func() bool { return p.LoginCount() == 3 })
	c := inAuth() // displaces s2
	wantFatal(t, readErrorAndClose(t, s2), "53300")
	// a, b and c are still in authentication; a new connection now
	// displaces the oldest of them, a.
	s3 := dialRaw(t, addr)
	wantFatal(t, readErrorAndClose(t, a.nc), "53300")
	for _, w := range []stalled{b, c} {
		inner := md5Secret(plainUser, plainPW)[3:]
		outer := md5.Sum(append([]byte(inner), w.salt[:]...))
		w.send(&pgproto3.PasswordMessage{Password: "md5" + hex.EncodeToString(outer[:])})
		if err := w.readStartup(); err != nil {
			t.Fatalf("stalled client finishing its login: %v", err)
		}
		if st := w.query("select 1"); st != 'I' {
			t.Fatalf("status %q", st)
		}
	}
	s3.Close()
}

// TestLoginBufferBudget: connections that have not authenticated buffer
// against a budget of their own: they cannot spend client_buffer_budget,
// and the one that exceeds theirs gets FATAL 53200.
func TestLoginBufferBudget(t *testing.T) {
	p := testProxy(t, func(c *Config) {
		withMode(TransactionMode, 2)(c)
		c.AuthType = "md5"
		c.Users = authUsers(t)
		c.ClientBufferBudget = 4 << 20
	})
	p.loginBudget.SetLimit(64 << 10)
	addr := p.Addr().String()
	// stalled sends 40 KiB of a 60 KiB password message: its buffer grows
	// to the message's size, charged to the login budget.
	inAuth := func() net.Conn {
		c := newWireConn(t, dialRaw(t, addr))
		c.send(&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersion30,
			Parameters: map[string]string{"user": plainUser, "database": "postgres"}})
		if _, ok := c.recv().(*pgproto3.AuthenticationMD5Password); !ok {
			t.Fatal("want AuthenticationMD5Password")
		}
		return c.nc
	}
	password := func(body int) []byte {
		return append(binary.BigEndian.AppendUint32([]byte{'p'}, uint32(body+4)), bytes.Repeat([]byte{'x'}, 40<<10)...)
	}
	stalled := inAuth()
	if _, err := stalled.Write(password(60 << 10)); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 10*time.Second, "login budget in use", func() bool { return p.loginBudget.Used() > 32<<10 })
	if n := p.BufferedClientBytes(); n != 0 {
		t.Fatalf("an unauthenticated client's bytes charged %d bytes to client_buffer_budget", n)
	}
	offender := inAuth()
	if _, err := offender.Write(password(60 << 10)); err != nil {
		t.Fatal(err)
	}
	er := readErrorAndClose(t, offender)
	wantFatal(t, er, "53200")
	if want := "pgaudit: buffered bytes of connections logging in exceed their limit (64 KiB)"; er.Message != want {
		t.Errorf("message %q, want %q", er.Message, want)
	}
	if lc := p.LimitCounts(); lc.BudgetExceeded != 1 || lc.BufferedBytes != 0 {
		t.Errorf("limit counts %+v: want one budget refusal and nothing charged to client_buffer_budget", lc)
	}
	// Authenticated clients still have all of client_buffer_budget.
	conn, err := pgconn.Connect(context.Background(), userDSN(p, plainUser, plainPW, ""))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	q := string(lengthQuery(3 << 20)[:3<<20-1])
	if _, err := conn.Exec(context.Background(), q).ReadAll(); err != nil {
		t.Fatalf("a 3 MiB query of an authenticated client: %v", err)
	}
	stalled.Close()
	testutil.Eventually(t, 5*time.Second, "budgets released", func() bool { return p.loginBudget.Used() == 0 && p.BufferedClientBytes() == 0 })
}
