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

// Native histogram of wait times, in seconds, as Prometheus lays it out at
// schema 2: bucket i holds waits in (2^((i-1)/4), 2^(i/4)] s, 19% apart.
// Waits up to NativeWaitZeroThreshold (2^-20 s, about 0.95 µs) go to the
// zero bucket, waits past 2^12 s (68 min) to the last bucket.
const (
	NativeWaitSchema        = 2
	NativeWaitZeroThreshold = 1.0 / (1 << 20)
	// NativeWaitFirst is the index of PoolStats.WaitNative[0].
	NativeWaitFirst   = -20*4 + 1
	nativeWaitLast    = 12 * 4
	nativeWaitBuckets = nativeWaitLast - NativeWaitFirst + 1
)

// nativeWaitIndex returns the position in WaitNative of wait, or -1 for
// the zero bucket. Without a logarithm (it runs on every acquire): with
// v = frac * 2^exp, frac in [0.5, 1), the bucket is 4*exp + k for the
// first k in -3..0 with frac <= 2^(k/4); frac = 0.5 is v = 2^(exp-1), the
// upper bound of bucket 4*exp - 4.
func nativeWaitIndex(wait time.Duration) int {
	v := wait.Seconds()
	if v <= NativeWaitZeroThreshold {
		return -1
	}
	frac, exp := math.Frexp(v)
	i := 4 * exp
	switch {
	case frac == 0.5:
		i -= 4
	case frac <= 0.5946035575013605: // 2^(-3/4)
		i -= 3
	case frac <= 0.7071067811865476: // 2^(-2/4)
		i -= 2
	case frac <= 0.8408964152537145: // 2^(-1/4)
		i--
	}
	return min(max(i, NativeWaitFirst), nativeWaitLast) - NativeWaitFirst
}

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
	waitNative [nativeWaitBuckets]int64
	waitZero   int64 // waits in the native histogram's zero bucket
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

	// recent holds the acquisitions of the last RecentWindow in
	// recentSlots slots of recentSlotLen, by slot start (Unix seconds
	// divided by the slot length): queue waits (time spent queued behind
	// busy servers) apart from server connect time.
	recent [recentSlots]recentSlot
}

// RecentWindow is the length of the sliding window PoolStats' Recent*
// figures and Utilization cover.
const RecentWindow = 60 * time.Second

const (
	recentSlotLen = 5 // seconds
	recentSlots   = int(RecentWindow/time.Second) / recentSlotLen
	// fineBuckets is a log-linear histogram of microseconds: 4 buckets per
	// power of two (within 19%), up to 2^36 µs.
	fineSub     = 4
	fineBuckets = 37 * fineSub
)

type recentSlot struct {
	slot           int64 // Unix seconds / recentSlotLen; 0 = empty
	acquires       int64
	waits          int64 // acquisitions that queued
	waitHist       [fineBuckets]int32
	maxWait        time.Duration
	connects       int64
	connHist       [fineBuckets]int32
	maxConnect     time.Duration
	connectFailure int64
}

// fineBucket maps a duration to its log-linear bucket.
func fineBucket(d time.Duration) int {
	us := uint64(max(d, 0) / time.Microsecond)
	if us < fineSub {
		return int(us)
	}
	e := bits.Len64(us) - 1 // us in [2^e, 2^(e+1))
	m := (us >> uint(e-2)) & (fineSub - 1)
	b := (e-1)*fineSub + int(m)
	return min(b, fineBuckets-1)
}

// fineUpper is the exclusive upper bound of bucket b.
func fineUpper(b int) time.Duration {
	if b < fineSub {
		return time.Duration(b+1) * time.Microsecond
	}
	e := b/fineSub + 1
	m := uint64(b % fineSub)
	return time.Duration((uint64(1)<<uint(e))+(m+1)<<uint(e-2)) * time.Microsecond
}

// fineQuantile returns quantile q of a histogram of n values, never above
// hi (the largest value seen).
func fineQuantile(h *[fineBuckets]int64, n int64, q float64, hi time.Duration) time.Duration {
	if n == 0 {
		return 0
	}
	rank := int64(math.Ceil(q * float64(n)))
	var seen int64
	for i, c := range h {
		seen += c
		if seen >= rank {
			return min(fineUpper(i), hi)
		}
	}
	return hi
}

// slotLocked returns the slot for now, clearing it when it held an older
// slot.
func (s *poolStats) slotLocked(now time.Time) *recentSlot {
	k := now.Unix() / recentSlotLen
	r := &s.recent[k%int64(recentSlots)]
	if r.slot != k {
		*r = recentSlot{slot: k}
	}
	return r
}

// recordAcquire counts one acquisition at now that took wait in all
// (connect included: the cumulative, PgBouncer-style wait figures) and
// spent queued waiting behind busy servers (zero when it did not queue;
// the windowed figures). Connect time is not queueing: see recordConnect.
// One lock per acquisition: it is on the relay's path.
func (s *poolStats) recordAcquire(now time.Time, wait, queued time.Duration) {
	us := uint64(wait / time.Microsecond)
	b := bits.Len64(us)
	if b >= waitBuckets {
		b = waitBuckets - 1
	}
	n := nativeWaitIndex(wait)
	s.mu.Lock()
	s.waitHist[b]++
	if n < 0 {
		s.waitZero++
	} else {
		s.waitNative[n]++
	}
	s.waitCount++
	s.waitTotal += wait
	if wait > s.maxWait {
		s.maxWait = wait
	}
	r := s.slotLocked(now)
	r.acquires++
	if queued > 0 {
		r.waits++
		r.waitHist[fineBucket(queued)]++
		r.maxWait = max(r.maxWait, queued)
	}
	s.mu.Unlock()
}

// recordConnect counts one server connection attempt that took d.
func (s *poolStats) recordConnect(now time.Time, d time.Duration, failed bool) {
	s.mu.Lock()
	r := s.slotLocked(now)
	r.connects++
	if failed {
		r.connectFailure++
	}
	r.connHist[fineBucket(d)]++
	r.maxConnect = max(r.maxConnect, d)
	s.mu.Unlock()
}

// recentLocked fills st's Recent* and Connect* figures from the slots
// inside the window ending at now.
func (s *poolStats) recentLocked(now time.Time, st *PoolStats) {
	k := now.Unix() / recentSlotLen
	var wh, ch [fineBuckets]int64
	for i := range s.recent {
		r := &s.recent[i]
		if r.slot == 0 || r.slot <= k-int64(recentSlots) || r.slot > k {
			continue
		}
		st.RecentAcquires += r.acquires
		st.RecentWaits += r.waits
		st.RecentMaxWait = max(st.RecentMaxWait, r.maxWait)
		st.Connects += r.connects
		st.ConnectFailures += r.connectFailure
		st.ConnectMax = max(st.ConnectMax, r.maxConnect)
		for b := range wh {
			wh[b] += int64(r.waitHist[b])
			ch[b] += int64(r.connHist[b])
		}
	}
	st.RecentWaitP99 = fineQuantile(&wh, st.RecentWaits, 0.99, st.RecentMaxWait)
	st.ConnectP99 = fineQuantile(&ch, st.Connects, 0.99, st.ConnectMax)
}

func (s *poolStats) init() {
	s.started = time.Now()
	s.lastChange = s.started
	s.secIndex = s.started.Unix()
}

// accumulateLocked adds busy time since the last change into the ring.
func (s *poolStats) accumulateLocked(now time.Time) {
	// A reading taken before the lock may be older than the last change:
	// time never runs back here, or an interval would count twice.
	if now.Before(s.lastChange) {
		return
	}
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

func (s *poolStats) acquired() { s.acquiredAt(time.Now()) }

// acquiredAt counts a server taken by a holder at now (a reading the
// caller already has: the relay's path reads the clock as little as it
// can).
func (s *poolStats) acquiredAt(now time.Time) {
	s.mu.Lock()
	s.accumulateLocked(now)
	s.busy++
	s.mu.Unlock()
}

func (s *poolStats) released() { s.releasedAt(time.Now()) }

// releasedAt counts a server given back at now (see acquiredAt).
func (s *poolStats) releasedAt(now time.Time) {
	s.mu.Lock()
	s.accumulateLocked(now)
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
	OldestWait time.Duration `json:"oldest_wait_ns"`
	WaitP50    time.Duration `json:"wait_p50_ns"`
	WaitP99    time.Duration `json:"wait_p99_ns"`
	// WaitHist counts the acquisitions behind Waits by time to get a
	// server: WaitHist[i] holds waits in [2^(i-1), 2^i) µs, WaitHist[0]
	// waits under 1 µs, the last bucket everything longer. Cumulative
	// since the pool started; /metrics exports it as a histogram.
	WaitHist [waitBuckets]int64 `json:"-"`
	// WaitNative and WaitZero are the same waits as a native histogram
	// (see NativeWaitSchema): WaitNative[i] is bucket NativeWaitFirst+i.
	WaitNative  [nativeWaitBuckets]int64 `json:"-"`
	WaitZero    int64                    `json:"-"`
	Utilization float64                  `json:"utilization"`

	// Window is the time the Recent* and Connect* figures and Utilization
	// cover: the last RecentWindow, or less right after the pool started.
	// They age out: an acquisition older than the window no longer counts
	// (to the granularity of 5 s).
	Window time.Duration `json:"window_ns"`
	// RecentAcquires counts server acquisitions in the window;
	// RecentWaits those that queued behind busy servers (a paused pool or
	// a connect back-off counts too), with RecentWaitP99 and
	// RecentMaxWait describing the time spent queued (p99 within 19%,
	// never above the max). Time spent opening a server connection is not
	// queueing and is not counted here.
	RecentAcquires int64         `json:"recent_acquires"`
	RecentWaits    int64         `json:"recent_waits"`
	RecentWaitP99  time.Duration `json:"recent_wait_p99_ns"`
	RecentMaxWait  time.Duration `json:"recent_maxwait_ns"`
	// Connects counts server connections opened (or attempted:
	// ConnectFailures of them failed) in the window; ConnectP99 and
	// ConnectMax are the time opening them took (TCP, TLS,
	// authentication, startup).
	Connects        int64         `json:"connects"`
	ConnectFailures int64         `json:"connect_failures"`
	ConnectP99      time.Duration `json:"connect_p99_ns"`
	ConnectMax      time.Duration `json:"connect_max_ns"`
}

// Stats returns a snapshot of the pool's statistics. Utilization is the
// share of pool capacity (pool_size servers) held by sessions over the last
// minute, from 0 to 1 (it can exceed 1 while the reserve pool is in use).
// Waits, WaitTotal, MaxWait, WaitP50 and WaitP99 are cumulative since the
// pool started and count every acquisition with its whole time to get a
// server (connect included), as PgBouncer's wait counters; the Recent*
// figures separate queueing from connecting over the window.
func (p *Pool) Stats(clientsActive int) PoolStats {
	return p.statsAt(time.Now(), clientsActive)
}

func (p *Pool) statsAt(now time.Time, clientsActive int) PoolStats {
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
	s.mu.Lock()
	s.accumulateLocked(now)
	var busy float64
	for _, b := range s.busySec {
		busy += b
	}
	st.Waits = s.waitCount
	st.WaitTotal = s.waitTotal
	st.MaxWait = s.maxWait
	st.WaitHist = s.waitHist
	st.WaitNative = s.waitNative
	st.WaitZero = s.waitZero
	st.WaitP50 = min(histQuantile(&s.waitHist, s.waitCount, 0.50), s.maxWait)
	st.WaitP99 = min(histQuantile(&s.waitHist, s.waitCount, 0.99), s.maxWait)
	window := max(min(now.Sub(s.started), RecentWindow), 0)
	st.Window = window
	s.recentLocked(now, &st)
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
