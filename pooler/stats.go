package pooler

import (
	"math"
	"math/bits"
	"sync"
	"sync/atomic"
	"time"
)

// waitBuckets is a log2 histogram of wait times in microseconds: bucket i
// holds waits in [2^(i-1), 2^i) µs, bucket 0 holds waits under 1 µs.
const waitBuckets = 40

type poolStats struct {
	xacts   atomic.Int64
	xactNs  atomic.Int64 // time in transactions, nanoseconds
	queries atomic.Int64
	// Parse messages from clients, Parse messages sent to servers (a
	// shared statement is prepared once per server), Bind messages.
	clientParses atomic.Int64
	serverParses atomic.Int64
	binds        atomic.Int64
	bytesIn      atomic.Int64
	bytesOut     atomic.Int64
	login        atomic.Int64
	waiting      atomic.Int64

	mu         sync.Mutex
	waitHist   [waitBuckets]int64
	waitCount  int64
	waitTotal  time.Duration
	maxWait    time.Duration
	busy       int // servers held by sessions now
	lastChange time.Time
	// busySec[i] holds server-busy nanoseconds accumulated in second i of
	// a one-minute ring.
	busySec  [60]float64
	secIndex int64
	started  time.Time
}

func (s *poolStats) init() {
	s.started = time.Now()
	s.lastChange = s.started
	s.secIndex = s.started.Unix()
}

func (s *poolStats) recordWait(d time.Duration) {
	us := uint64(d / time.Microsecond)
	b := bits.Len64(us)
	if b >= waitBuckets {
		b = waitBuckets - 1
	}
	s.mu.Lock()
	s.waitHist[b]++
	s.waitCount++
	s.waitTotal += d
	if d > s.maxWait {
		s.maxWait = d
	}
	s.mu.Unlock()
}

// accumulateLocked adds busy time since the last change into the ring.
func (s *poolStats) accumulateLocked(now time.Time) {
	// Spread the interval across the seconds it covers.
	from := s.lastChange
	for from.Before(now) {
		sec := from.Unix()
		end := time.Unix(sec+1, 0)
		if end.After(now) {
			end = now
		}
		s.advanceLocked(sec)
		s.busySec[sec%60] += float64(s.busy) * float64(end.Sub(from))
		from = end
	}
	s.lastChange = now
}

func (s *poolStats) advanceLocked(sec int64) {
	if sec <= s.secIndex {
		return
	}
	n := sec - s.secIndex
	if n > 60 {
		n = 60
	}
	for i := int64(1); i <= n; i++ {
		s.busySec[(s.secIndex+i)%60] = 0
	}
	s.secIndex = sec
}

func (s *poolStats) acquired() {
	s.mu.Lock()
	s.accumulateLocked(time.Now())
	s.busy++
	s.mu.Unlock()
}

func (s *poolStats) released() {
	s.mu.Lock()
	s.accumulateLocked(time.Now())
	if s.busy > 0 {
		s.busy--
	}
	s.mu.Unlock()
}

// releasedToWaiter hands a server from one holder to the next: busy count is
// unchanged.
func (s *poolStats) releasedToWaiter() {}

func (s *poolStats) tick(now time.Time, _ int) {
	s.mu.Lock()
	s.accumulateLocked(now)
	s.mu.Unlock()
}

// PoolStats is a point-in-time copy of a pool's statistics.
type PoolStats struct {
	Database string `json:"database"`
	User     string `json:"user"`
	Mode     string `json:"pool_mode"`
	Size     int    `json:"pool_size"`

	ClientsActive  int `json:"cl_active"`
	ClientsWaiting int `json:"cl_waiting"`
	ServersActive  int `json:"sv_active"`
	ServersIdle    int `json:"sv_idle"`
	ServersLogin   int `json:"sv_login"`

	Transactions int64 `json:"xact_count"`
	// XactTime is the time clients spent in transactions (from the first
	// statement after ReadyForQuery 'I' to the next 'I', idle in
	// transaction included), as PgBouncer's total_xact_time.
	XactTime time.Duration `json:"xact_time_ns"`
	Queries  int64         `json:"query_count"`
	// ClientParses, ServerParses and Binds count Parse messages from
	// clients, Parse messages sent to servers and Bind messages.
	ClientParses int64 `json:"client_parse_count"`
	ServerParses int64 `json:"server_parse_count"`
	Binds        int64 `json:"bind_count"`
	BytesIn      int64 `json:"bytes_received"`
	BytesOut     int64 `json:"bytes_sent"`

	Waits     int64         `json:"wait_count"`
	WaitTotal time.Duration `json:"wait_total_ns"`
	MaxWait   time.Duration `json:"maxwait_ns"`
	// OldestWait is how long the oldest waiting client has been waiting
	// now (PgBouncer's maxwait); zero when nobody waits.
	OldestWait  time.Duration `json:"oldest_wait_ns"`
	WaitP50     time.Duration `json:"wait_p50_ns"`
	WaitP99     time.Duration `json:"wait_p99_ns"`
	Utilization float64       `json:"utilization"`
}

// Stats returns a snapshot of the pool's statistics. Utilization is the
// share of pool capacity (pool_size servers) held by sessions over the last
// minute, from 0 to 1 (it can exceed 1 while the reserve pool is in use).
func (p *Pool) Stats(clientsActive int) PoolStats {
	p.mu.Lock()
	st := PoolStats{
		Database:       p.Database,
		User:           p.User,
		Mode:           string(p.set().Mode),
		Size:           p.set().Size,
		ClientsWaiting: len(p.waiters),
		OldestWait:     oldestWait(p.waiters),
		ServersActive:  p.active,
		ServersIdle:    len(p.idle),
	}
	p.mu.Unlock()
	st.ClientsActive = clientsActive
	st.ServersLogin = int(p.stats.login.Load())
	st.Transactions = p.stats.xacts.Load()
	st.XactTime = time.Duration(p.stats.xactNs.Load())
	st.Queries = p.stats.queries.Load()
	st.ClientParses = p.stats.clientParses.Load()
	st.ServerParses = p.stats.serverParses.Load()
	st.Binds = p.stats.binds.Load()
	st.BytesIn = p.stats.bytesIn.Load()
	st.BytesOut = p.stats.bytesOut.Load()
	s := &p.stats
	now := time.Now()
	s.mu.Lock()
	s.accumulateLocked(now)
	var busy float64
	for _, b := range s.busySec {
		busy += b
	}
	st.Waits = s.waitCount
	st.WaitTotal = s.waitTotal
	st.MaxWait = s.maxWait
	st.WaitP50 = histQuantile(&s.waitHist, s.waitCount, 0.50)
	st.WaitP99 = histQuantile(&s.waitHist, s.waitCount, 0.99)
	window := min(now.Sub(s.started), 60*time.Second)
	s.mu.Unlock()
	if st.Size > 0 && window > 0 {
		st.Utilization = busy / (float64(window) * float64(st.Size))
	}
	return st
}

// histQuantile returns the upper bound of the bucket holding quantile q.
func histQuantile(h *[waitBuckets]int64, n int64, q float64) time.Duration {
	if n == 0 {
		return 0
	}
	rank := int64(math.Ceil(q * float64(n)))
	var seen int64
	for i, c := range h {
		seen += c
		if seen >= rank {
			if i == 0 {
				return time.Microsecond
			}
			return time.Duration(uint64(1)<<uint(i)) * time.Microsecond
		}
	}
	return 0
}

func oldestWait(ws []*waiter) time.Duration {
	var oldest time.Time
	for _, w := range ws {
		if oldest.IsZero() || w.since.Before(oldest) {
			oldest = w.since
		}
	}
	if oldest.IsZero() {
		return 0
	}
	return time.Since(oldest)
}
