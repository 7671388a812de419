package admin

import (
	"fmt"
	"math"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/pgaudit-proxy/pgaudit/analyzer"
	"github.com/pgaudit-proxy/pgaudit/pooler"
	"github.com/pgaudit-proxy/pgaudit/rules"
)

// The row types below are what the console's SHOW commands and the JSON API
// return. A field's json name is its column name in both; the columns that
// PgBouncer also has keep its names, order and meanings, and pgaudit's own
// columns come after them. Values PgBouncer reports that pgaudit does not
// measure are 0 (counters) or NULL (nil pointers), as documented per field.

// PoolRow is one pool (a database and user pair): SHOW POOLS and
// /api/v1/pools.
type PoolRow struct {
	Database string `json:"database"`
	User     string `json:"user"`
	// ClActive counts clients of this pool that are connected and not
	// waiting for a server (PgBouncer counts idle ones here too).
	ClActive int `json:"cl_active"`
	// ClWaiting counts clients waiting for a server connection.
	ClWaiting int `json:"cl_waiting"`
	// The cancel-request columns are always 0: pgaudit forwards a cancel
	// at once and does not queue it.
	ClActiveCancelReq  int `json:"cl_active_cancel_req"`
	ClWaitingCancelReq int `json:"cl_waiting_cancel_req"`
	// SvActive counts server connections held by clients.
	SvActive        int `json:"sv_active"`
	SvActiveCancel  int `json:"sv_active_cancel"`
	SvBeingCanceled int `json:"sv_being_canceled"`
	// SvIdle counts idle server connections ready for use.
	SvIdle int `json:"sv_idle"`
	// SvUsed and SvTested are 0: pgaudit checks an idle server on checkout
	// instead of keeping a "used" list.
	SvUsed   int `json:"sv_used"`
	SvTested int `json:"sv_tested"`
	// SvLogin counts server connections being opened.
	SvLogin int `json:"sv_login"`
	// MaxWait and MaxWaitUS are the seconds and the microsecond part of
	// the current wait of the oldest waiting client (PgBouncer's meaning);
	// wait_max_us has the longest wait ever seen.
	MaxWait   int64  `json:"maxwait"`
	MaxWaitUS int64  `json:"maxwait_us"`
	PoolMode  string `json:"pool_mode"`
	// pgaudit's columns.
	PoolSize int `json:"pool_size"`
	// WaitP50US and WaitP99US are percentiles of the time clients waited
	// for a server connection since the pool started (upper bounds of
	// power-of-two microsecond buckets); WaitMaxUS is the longest wait.
	WaitP50US int64 `json:"wait_p50_us"`
	WaitP99US int64 `json:"wait_p99_us"`
	WaitMaxUS int64 `json:"wait_max_us"`
	// Utilization is the share of pool_size held by clients over the last
	// minute (0..1, above 1 while the reserve pool is in use).
	Utilization float64 `json:"utilization"`
}

// PoolRowOf converts the pooler's statistics of one pool (SHOW POOLS, the
// dashboard and the report).
func PoolRowOf(ps pooler.PoolStats) PoolRow {
	return PoolRow{
		Database: ps.Database, User: ps.User,
		ClActive: ps.ClientsActive, ClWaiting: ps.ClientsWaiting,
		SvActive: ps.ServersActive, SvIdle: ps.ServersIdle, SvLogin: ps.ServersLogin,
		PoolMode: ps.Mode, PoolSize: ps.Size,
		MaxWait:   int64(ps.OldestWait / time.Second),
		MaxWaitUS: (ps.OldestWait % time.Second).Microseconds(),
		// The pooler's percentiles are bucket upper bounds: never report
		// more than the longest wait actually seen.
		WaitP50US: min(ps.WaitP50, ps.MaxWait).Microseconds(), WaitP99US: min(ps.WaitP99, ps.MaxWait).Microseconds(),
		WaitMaxUS:   ps.MaxWait.Microseconds(),
		Utilization: round(ps.Utilization, 4),
	}
}

// StatsRow is one database's traffic statistics: SHOW STATS. Totals are
// since the proxy started; averages are over about the last minute
// (stats_period in PgBouncer), per second for counts and bytes and per
// item in microseconds for times.
type StatsRow struct {
	Database string `json:"database"`
	// TotalServerAssignmentCount counts the times a client was given a
	// server connection.
	TotalServerAssignmentCount int64 `json:"total_server_assignment_count"`
	TotalXactCount             int64 `json:"total_xact_count"`
	TotalQueryCount            int64 `json:"total_query_count"`
	// TotalReceived and TotalSent are bytes from and to clients.
	TotalReceived int64 `json:"total_received"`
	TotalSent     int64 `json:"total_sent"`
	// TotalXactTime is the time clients spent in transactions, idle in
	// transaction included, in microseconds (as measured at the proxy:
	// from a transaction's first statement to its last ReadyForQuery).
	TotalXactTime int64 `json:"total_xact_time"`
	// TotalQueryTime is the summed duration of the statements the
	// analyzer saw, in microseconds.
	TotalQueryTime int64 `json:"total_query_time"`
	// TotalWaitTime is the time clients waited for a server, in
	// microseconds.
	TotalWaitTime int64 `json:"total_wait_time"`
	// The prepared-statement counters are 0 (not reported by the pooler).
	TotalClientParseCount    int64 `json:"total_client_parse_count"`
	TotalServerParseCount    int64 `json:"total_server_parse_count"`
	TotalBindCount           int64 `json:"total_bind_count"`
	AvgServerAssignmentCount int64 `json:"avg_server_assignment_count"`
	AvgXactCount             int64 `json:"avg_xact_count"`
	AvgQueryCount            int64 `json:"avg_query_count"`
	AvgRecv                  int64 `json:"avg_recv"`
	AvgSent                  int64 `json:"avg_sent"`
	AvgXactTime              int64 `json:"avg_xact_time"`
	AvgQueryTime             int64 `json:"avg_query_time"`
	AvgWaitTime              int64 `json:"avg_wait_time"`
	AvgClientParseCount      int64 `json:"avg_client_parse_count"`
	AvgServerParseCount      int64 `json:"avg_server_parse_count"`
	AvgBindCount             int64 `json:"avg_bind_count"`
	// pgaudit's columns: wait percentiles (the highest among the
	// database's pools) and the capacity-weighted utilization of its
	// pools over the last minute.
	WaitP50US   int64   `json:"wait_p50_us"`
	WaitP99US   int64   `json:"wait_p99_us"`
	Utilization float64 `json:"utilization"`
}

// StatsTotalsRow is SHOW STATS_TOTALS: the totals of StatsRow under
// PgBouncer's unprefixed names (what pgbouncer_exporter reads).
type StatsTotalsRow struct {
	Database              string `json:"database"`
	ServerAssignmentCount int64  `json:"server_assignment_count"`
	XactCount             int64  `json:"xact_count"`
	QueryCount            int64  `json:"query_count"`
	BytesReceived         int64  `json:"bytes_received"`
	BytesSent             int64  `json:"bytes_sent"`
	XactTime              int64  `json:"xact_time"`
	QueryTime             int64  `json:"query_time"`
	WaitTime              int64  `json:"wait_time"`
	ClientParseCount      int64  `json:"client_parse_count"`
	ServerParseCount      int64  `json:"server_parse_count"`
	BindCount             int64  `json:"bind_count"`
}

// StatsAveragesRow is SHOW STATS_AVERAGES: the averages of StatsRow under
// PgBouncer's names.
type StatsAveragesRow struct {
	Database              string `json:"database"`
	ServerAssignmentCount int64  `json:"server_assignment_count"`
	XactCount             int64  `json:"xact_count"`
	QueryCount            int64  `json:"query_count"`
	BytesReceived         int64  `json:"bytes_received"`
	BytesSent             int64  `json:"bytes_sent"`
	XactTime              int64  `json:"xact_time"`
	QueryTime             int64  `json:"query_time"`
	WaitTime              int64  `json:"wait_time"`
	ClientParseCount      int64  `json:"avg_client_parse_count"`
	ServerParseCount      int64  `json:"avg_server_parse_count"`
	BindCount             int64  `json:"avg_bind_count"`
}

// ClientRow is one client connection: SHOW CLIENTS.
type ClientRow struct {
	Type        string `json:"type"` // "C"
	User        string `json:"user"`
	Database    string `json:"database"`
	Replication string `json:"replication"` // always "none"
	// State is active (holds a server connection), waiting (for one) or
	// idle.
	State string `json:"state"`
	Addr  string `json:"addr"`
	// Port, LocalAddr and LocalPort are NULL: the pooler does not report
	// them.
	Port        *int      `json:"port"`
	LocalAddr   *string   `json:"local_addr"`
	LocalPort   *int      `json:"local_port"`
	ConnectTime time.Time `json:"connect_time"`
	// RequestTime is NULL (not tracked).
	RequestTime *time.Time `json:"request_time"`
	Wait        int64      `json:"wait"`
	WaitUS      int64      `json:"wait_us"`
	CloseNeeded int        `json:"close_needed"`
	// Ptr names this client ("c" and the session id); Link names the
	// server connection it holds ("s" and the server id), or is empty.
	Ptr       string `json:"ptr"`
	Link      string `json:"link"`
	RemotePID int64  `json:"remote_pid"`
	// TLS is NULL (not reported by the pooler).
	TLS             *string `json:"tls"`
	ApplicationName string  `json:"application_name"`
	// PreparedStatements is NULL (not reported by the pooler).
	PreparedStatements *int  `json:"prepared_statements"`
	ID                 int64 `json:"id"`
	// pgaudit's columns: the proxy-issued cancel key pid, the last
	// transaction status (I, T or E) and whether the client is pinned to
	// its server connection (transaction mode).
	CancelPID int64  `json:"cancel_pid"`
	TxStatus  string `json:"tx_status"`
	Pinned    bool   `json:"pinned"`
}

// ServerRow is one server connection: SHOW SERVERS.
type ServerRow struct {
	Type        string `json:"type"` // "S"
	User        string `json:"user"`
	Database    string `json:"database"`
	Replication string `json:"replication"` // always "none"
	State       string `json:"state"`       // active or idle
	// Addr and Port are the upstream's host and port from the
	// configuration (NULL when unknown).
	Addr        *string   `json:"addr"`
	Port        *int      `json:"port"`
	LocalAddr   *string   `json:"local_addr"`
	LocalPort   *int      `json:"local_port"`
	ConnectTime time.Time `json:"connect_time"`
	// RequestTime is when the connection was last handed out or released.
	RequestTime     time.Time `json:"request_time"`
	Wait            int64     `json:"wait"`
	WaitUS          int64     `json:"wait_us"`
	CloseNeeded     int       `json:"close_needed"`
	Ptr             string    `json:"ptr"`
	Link            string    `json:"link"`
	RemotePID       int64     `json:"remote_pid"`
	TLS             *string   `json:"tls"`
	ApplicationName string    `json:"application_name"`
	// PreparedStatements counts protocol-level statements prepared on the
	// connection (transaction mode).
	PreparedStatements int   `json:"prepared_statements"`
	ID                 int64 `json:"id"`
}

// DatabaseRow is one configured database: SHOW DATABASES.
type DatabaseRow struct {
	Name     string  `json:"name"`
	Host     *string `json:"host"`
	Port     *int    `json:"port"`
	Database string  `json:"database"`
	// ForceUser is the server user every client uses, or NULL.
	ForceUser       *string `json:"force_user"`
	PoolSize        int     `json:"pool_size"`
	MinPoolSize     int     `json:"min_pool_size"`
	ReservePoolSize int     `json:"reserve_pool_size"`
	// ServerLifetime is in seconds.
	ServerLifetime int64  `json:"server_lifetime"`
	PoolMode       string `json:"pool_mode"`
	// MaxConnections is max_db_connections (0 = unlimited).
	MaxConnections int `json:"max_connections"`
	// CurrentConnections counts the database's open server connections.
	CurrentConnections int `json:"current_connections"`
	// MaxClientConnections is 0 (no per-database client limit).
	MaxClientConnections     int `json:"max_client_connections"`
	CurrentClientConnections int `json:"current_client_connections"`
	// Paused is 1 after PAUSE (of this database or all) until RESUME.
	Paused   int `json:"paused"`
	Disabled int `json:"disabled"`
}

// QueryRow is one query shape: SHOW QUERIES and /api/v1/queries. Times are
// milliseconds; percentiles come from the shape's latency sketch (1 %
// relative error).
type QueryRow struct {
	Fingerprint string  `json:"fingerprint"`
	Calls       int64   `json:"calls"`
	Rows        int64   `json:"rows"`
	Errors      int64   `json:"errors"`
	TotalMS     float64 `json:"total_ms"`
	MeanMS      float64 `json:"mean_ms"`
	P50MS       float64 `json:"p50_ms"`
	P90MS       float64 `json:"p90_ms"`
	P99MS       float64 `json:"p99_ms"`
	MaxMS       float64 `json:"max_ms"`
	// SharePct is the shape's share of the total time of all shapes, in
	// percent.
	SharePct float64 `json:"share_pct"`
	// Query is the normalized statement (no literal values).
	Query string `json:"query"`
}

func ms(d time.Duration) float64 { return round(float64(d)/float64(time.Millisecond), 3) }

func round(f float64, digits int) float64 {
	p := math.Pow(10, float64(digits))
	return math.Round(f*p) / p
}

// QueryRowOf converts one shape's statistics (the dashboard and the
// report).
func QueryRowOf(st analyzer.ShapeStats) QueryRow {
	fp := ""
	if st.Fingerprint != 0 {
		fp = st.Fingerprint.String()
	}
	q := st.Query
	if st.Fingerprint == 0 && q == "" {
		q = "(other shapes)"
	}
	return QueryRow{
		Fingerprint: fp, Calls: int64(st.Calls), Rows: st.Rows, Errors: int64(st.Errors),
		TotalMS: ms(st.Total), MeanMS: ms(st.Mean), P50MS: ms(st.P50), P90MS: ms(st.P90), P99MS: ms(st.P99), MaxMS: ms(st.Max),
		SharePct: round(st.Share*100, 2), Query: q,
	}
}

// FindingRow is one finding: SHOW FINDINGS. /api/v1/findings serves the
// full rules.Finding (with evidence) instead.
// Status is "open" or "resolved" (with ResolvedAt and Resolution);
// LastSeen is when the condition was last observed true.
type FindingRow struct {
	Status     string    `json:"status"`
	Severity   string    `json:"severity"`
	Rule       string    `json:"rule"`
	Count      int64     `json:"count"`
	Database   string    `json:"database"`
	Message    string    `json:"message"`
	Query      string    `json:"query"`
	Suggestion string    `json:"suggestion"`
	FirstSeen  time.Time `json:"first_seen"`
	LastSeen   time.Time `json:"last_seen"`
	ResolvedAt string    `json:"resolved_at"`
	Resolution string    `json:"resolution"`
	ID         string    `json:"id"`
}

func findingRow(f rules.Finding) FindingRow {
	r := FindingRow{
		Status:   rules.StatusOpen,
		Severity: f.Severity.String(), Rule: f.Rule, Count: f.Count, Database: f.Database,
		Message: f.Message, Query: f.Query, Suggestion: f.Suggestion,
		FirstSeen: f.FirstSeen, LastSeen: f.LastSeen, Resolution: f.Resolution, ID: f.ID,
	}
	if !f.Open() {
		r.Status = rules.StatusResolved
	}
	if !f.ResolvedAt.IsZero() {
		r.ResolvedAt = f.ResolvedAt.UTC().Format(time.RFC3339)
	}
	return r
}

// filterFindings keeps the findings with status ("open" or "resolved");
// "" or "all" keeps every one.
func filterFindings(fs []rules.Finding, status string) ([]rules.Finding, error) {
	switch status {
	case "", "all":
		return fs, nil
	case rules.StatusOpen, rules.StatusResolved:
	default:
		return nil, fmt.Errorf("invalid status %q: want open, resolved or all", status)
	}
	out := fs[:0:0]
	for _, f := range fs {
		if f.Open() == (status == rules.StatusOpen) {
			out = append(out, f)
		}
	}
	return out, nil
}

// SortFindings orders findings open first, then by severity (highest
// first), then count, then id.
func SortFindings(fs []rules.Finding) {
	sort.SliceStable(fs, func(i, j int) bool {
		if fs[i].Open() != fs[j].Open() {
			return fs[i].Open()
		}
		if fs[i].Severity != fs[j].Severity {
			return fs[i].Severity > fs[j].Severity
		}
		if fs[i].Count != fs[j].Count {
			return fs[i].Count > fs[j].Count
		}
		return fs[i].ID < fs[j].ID
	})
}

// Setting is one configuration entry: SHOW CONFIG. Changeable is "yes" for
// settings RELOAD applies to a running proxy, "no" for those that need a
// restart.
type Setting struct {
	Key        string `json:"key"`
	Value      string `json:"value"`
	Default    string `json:"default"`
	Changeable string `json:"changeable"`
}

// SettingsFromConfig describes a pooler configuration as SHOW CONFIG rows:
// the global settings and the pool settings of the default pool (the "*"
// database, else the first database by name). cmd/pgaudit adds the audit
// settings it owns.
func SettingsFromConfig(cfg *pooler.Config) []Setting {
	if cfg == nil {
		return nil
	}
	def := pooler.DefaultPoolSettings()
	yes, no := "yes", "no"
	dur := func(d time.Duration) string { return d.String() }
	out := []Setting{
		{"listen", cfg.Listen, "127.0.0.1:6432", no},
		{"auth_type", cfg.AuthType, "trust", yes},
		{"client_tls", cfg.ClientTLS, "disable", no},
		{"max_client_conn", itoa(cfg.MaxClientConn), "10000", yes},
		{"max_login_clients", itoa(cfg.MaxLoginClients), itoa(pooler.DefaultMaxLoginClients), yes},
		{"relay_park_after", dur(cfg.RelayParkAfter), dur(pooler.DefaultRelayParkAfter), no},
		{"client_login_timeout", dur(cfg.ClientLoginTimeout), dur(pooler.DefaultClientLoginTimeout), yes},
		{"max_message_size", itoa(cfg.MaxMessageSize), itoa(64 << 20), yes},
		{"client_buffer_budget", strconv.FormatInt(cfg.ClientBufferBudget, 10), itoa(256 << 20), yes},
		{"admin_users", strings.Join(cfg.AdminUsers, ","), "", yes},
	}
	var pool *pooler.PoolSettings
	if db, ok := cfg.Databases["*"]; ok {
		pool = &db.Pool
	} else {
		names := make([]string, 0, len(cfg.Databases))
		for n := range cfg.Databases {
			names = append(names, n)
		}
		sort.Strings(names)
		if len(names) > 0 {
			pool = &cfg.Databases[names[0]].Pool
		}
	}
	if pool == nil {
		pool = &def
	}
	out = append(out,
		Setting{"pool_mode", string(pool.Mode), string(def.Mode), yes},
		Setting{"default_pool_size", itoa(pool.Size), itoa(def.Size), yes},
		Setting{"min_pool_size", itoa(pool.MinSize), itoa(def.MinSize), yes},
		Setting{"reserve_pool_size", itoa(pool.ReserveSize), itoa(def.ReserveSize), yes},
		Setting{"reserve_pool_timeout", dur(pool.ReserveTimeout), dur(def.ReserveTimeout), yes},
		Setting{"max_db_connections", itoa(pool.MaxDBConnections), itoa(def.MaxDBConnections), yes},
		Setting{"query_wait_timeout", dur(pool.QueryWaitTimeout), dur(def.QueryWaitTimeout), yes},
		Setting{"server_reset_query", pool.ServerResetQuery, def.ServerResetQuery, yes},
		Setting{"server_lifetime", dur(pool.ServerLifetime), dur(def.ServerLifetime), yes},
		Setting{"server_idle_timeout", dur(pool.ServerIdleTimeout), dur(def.ServerIdleTimeout), yes},
		Setting{"server_connect_timeout", dur(pool.ServerConnectTimeout), dur(def.ServerConnectTimeout), yes},
		Setting{"server_check_delay", dur(pool.ServerCheckDelay), dur(def.ServerCheckDelay), yes},
		Setting{"server_check_query", pool.ServerCheckQuery, def.ServerCheckQuery, yes},
		Setting{"server_login_retry", dur(pool.ServerLoginRetry), dur(def.ServerLoginRetry), yes},
		Setting{"idle_transaction_timeout", dur(pool.IdleTransactionTimeout), dur(def.IdleTransactionTimeout), yes},
		Setting{"client_idle_timeout", dur(pool.ClientIdleTimeout), dur(def.ClientIdleTimeout), yes},
		Setting{"client_write_timeout", dur(pool.ClientWriteTimeout), dur(def.ClientWriteTimeout), yes},
		Setting{"query_timeout", dur(pool.QueryTimeout), dur(def.QueryTimeout), yes},
		Setting{"max_prepared_statements", itoa(pool.MaxPreparedStatements), itoa(def.MaxPreparedStatements), yes},
		Setting{"pin_on_session_state", boolStr(pool.PinOnSessionState), boolStr(def.PinOnSessionState), yes},
	)
	return out
}

func itoa(n int) string { return strconv.Itoa(n) }

func boolStr(b bool) string {
	if b {
		return "1"
	}
	return "0"
}

// ListRow is one line of SHOW LISTS.
type ListRow struct {
	List  string `json:"list"`
	Items int64  `json:"items"`
}

// VersionRow is SHOW VERSION.
type VersionRow struct {
	Version string `json:"version"`
}

// HelpRow is one line of SHOW HELP.
type HelpRow struct {
	Command     string `json:"command"`
	Description string `json:"description"`
}

// FindingsSummary returns the dashboard tiles for findings: open and
// resolved counts.
func FindingsSummary(fs []rules.Finding) []SummaryItem {
	open := 0
	for _, f := range fs {
		if f.Open() {
			open++
		}
	}
	return []SummaryItem{
		{"findings open", strconv.Itoa(open)},
		{"findings resolved", strconv.Itoa(len(fs) - open)},
	}
}
