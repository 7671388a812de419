package rules

import (
	"fmt"
	"math"
	"strings"
	"time"
)

// PoolFacts are one pool's statistics over a window, as the proxy's pooler
// reports them.
type PoolFacts struct {
	// Database and User identify the pool.
	Database, User string
	// Mode is the pool mode ("session" or "transaction").
	Mode string
	// Size is the configured pool size (servers).
	Size int
	// Utilization is the share of Size held by clients over Window, 0..1
	// (above 1 while a reserve pool is in use).
	Utilization float64
	// Window is the time the figures cover (the pooler's sliding window of
	// the last minute, shorter right after a pool started).
	Window time.Duration
	// Acquires counts server acquisitions in the window. Waits counts
	// those that queued behind busy servers; WaitP99 and MaxWait describe
	// the time they spent queued. Time spent opening a server connection
	// is not queueing: it is ConnectP99 and ConnectMax over Connects.
	Acquires   int64
	Waits      int64
	WaitP99    time.Duration
	MaxWait    time.Duration
	Connects   int64
	ConnectP99 time.Duration
	ConnectMax time.Duration
	// ClientsWaiting and ClientsActive are the clients waiting for a
	// server and holding one when the numbers were taken.
	ClientsWaiting int
	ClientsActive  int
	// At is when the numbers were taken.
	At time.Time
}

// TargetUtilization is the utilization suggested_pool_size aims at.
const TargetUtilization = 0.7

// EvaluatePoolSaturation returns a pool-saturation finding when the pool is
// saturated over the window, or nil: its utilization is at or above
// cfg.Utilization while clients queued for a server (reason
// "utilization"), or at least cfg.MinWaits
// acquisitions queued behind busy servers and their p99 time queued is
// above cfg.P99Wait (reason "p99_wait"). Time spent opening server
// connections never counts as waiting. Thresholds unset in cfg take their
// defaults. The finding's Count is 1 (one saturated observation); its id
// is stable per database and user.
func EvaluatePoolSaturation(f PoolFacts, cfg PoolSaturationConfig) *Finding {
	if !cfg.IsEnabled() {
		return nil
	}
	util := cfg.Utilization
	if util <= 0 {
		util = DefaultPoolUtilization
	}
	p99 := time.Duration(cfg.P99Wait)
	if p99 <= 0 {
		p99 = DefaultPoolP99Wait
	}
	minWaits := cfg.MinWaits
	if minWaits <= 0 {
		minWaits = DefaultPoolMinWaits
	}
	// A p99 is never above the max (the pooler's histogram bound is
	// capped too; facts from elsewhere may not be).
	f.WaitP99 = min(f.WaitP99, f.MaxWait)
	f.ConnectP99 = min(f.ConnectP99, f.ConnectMax)
	var reasons []string
	// High utilization alone is no saturation when nobody queued: with
	// at most pool_size clients (pgbench -N, 20 clients on 20 servers)
	// every client has a server, and a larger pool would change nothing.
	if f.Size > 0 && f.Utilization >= util && (f.Waits > 0 || f.ClientsWaiting > 0) {
		reasons = append(reasons, "utilization")
	}
	if f.Waits >= minWaits && f.WaitP99 > p99 {
		reasons = append(reasons, "p99_wait")
	}
	if len(reasons) == 0 {
		return nil
	}
	busy := f.Utilization * float64(f.Size)
	suggested := f.Size
	if busy > 0 {
		suggested = max(int(math.Ceil(busy/TargetUtilization)), f.Size+1)
	}
	pool := f.Database + "/" + f.User
	msg := fmt.Sprintf("pool %s saturated over the last %.0fs: %.0f%% of %d servers busy, %d of %d acquisitions queued, p99 queue wait %s (max %s)",
		pool, f.Window.Seconds(), f.Utilization*100, f.Size, f.Waits, f.Acquires, fmtDuration(f.WaitP99), fmtDuration(f.MaxWait))
	var sug strings.Builder
	fmt.Fprintf(&sug, "On average %.1f of %d servers were held. Raise pool_size for this pool to about %d (70%% utilization at this load) if Postgres max_connections leaves room", busy, f.Size, suggested)
	switch f.Mode {
	case "session":
		sug.WriteString("; in session mode a client holds a server for its whole connection, so transaction mode (pool_mode = \"transaction\") serves the same clients with far fewer servers")
	default:
		sug.WriteString("; otherwise shorten what holds a server: long transactions, idle-in-transaction clients (see idle_transaction_timeout) and slow queries (see slow-query findings)")
	}
	sug.WriteString(".")
	return &Finding{
		ID:       StableID(IDPoolSaturation, pool),
		Rule:     IDPoolSaturation,
		Severity: cfg.SeverityOr(DefaultSeverity(IDPoolSaturation)),
		Message:  msg,
		Evidence: map[string]any{
			"utilization":         math.Round(f.Utilization*1000) / 1000,
			"busy_servers":        math.Round(busy*10) / 10,
			"pool_size":           int64(f.Size),
			"suggested_pool_size": int64(suggested),
			"p99_wait_ms":         Millis(f.WaitP99),
			"max_wait_ms":         Millis(f.MaxWait),
			"waits":               f.Waits,
			"acquires":            f.Acquires,
			"connects":            f.Connects,
			"connect_p99_ms":      Millis(f.ConnectP99),
			"connect_max_ms":      Millis(f.ConnectMax),
			"clients_waiting":     int64(f.ClientsWaiting),
			"clients_active":      int64(f.ClientsActive),
			"pool_mode":           f.Mode,
			"window_s":            f.Window.Seconds(),
			"reason":              strings.Join(reasons, ","),
		},
		Suggestion:  sug.String(),
		Count:       1,
		FirstSeen:   f.At,
		LastSeen:    f.At,
		WindowStart: f.At.Add(-f.Window),
		WindowEnd:   f.At,
		Database:    f.Database,
	}
}
