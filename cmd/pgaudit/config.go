package main

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/BurntSushi/toml"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/rs/zerolog"

	"github.com/pgaudit-proxy/pgaudit/admin"
	"github.com/pgaudit-proxy/pgaudit/analyzer"
	"github.com/pgaudit-proxy/pgaudit/internal/auditlog"
	"github.com/pgaudit-proxy/pgaudit/internal/otlplog"
	"github.com/pgaudit-proxy/pgaudit/planadvisor"
	"github.com/pgaudit-proxy/pgaudit/pooler"
	"github.com/pgaudit-proxy/pgaudit/rules"
	"github.com/pgaudit-proxy/pgaudit/wire"
)

// Duration is a TOML duration: a Go duration string ("250ms", "5m") or a
// number of seconds, as PgBouncer writes them.
type Duration struct{ time.Duration }

// UnmarshalTOML accepts strings and numbers.
func (d *Duration) UnmarshalTOML(v any) error {
	switch x := v.(type) {
	case string:
		dd, err := time.ParseDuration(x)
		if err != nil {
			if secs, err2 := strconv.ParseFloat(x, 64); err2 == nil {
				dd = time.Duration(secs * float64(time.Second))
			} else {
				return fmt.Errorf("invalid duration %q: %w", x, err)
			}
		}
		d.Duration = dd
	case int64:
		d.Duration = time.Duration(x) * time.Second
	case float64:
		d.Duration = time.Duration(x * float64(time.Second))
	default:
		return fmt.Errorf("invalid duration %v", v)
	}
	return nil
}

// ByteSize is a TOML size: a number of bytes, or a string with a unit as
// Postgres writes them ("256MB", "64kB", "1GB"; units are powers of 1024,
// "MiB" and "B" are accepted too).
type ByteSize struct{ Bytes int64 }

// UnmarshalTOML accepts integers and strings.
func (b *ByteSize) UnmarshalTOML(v any) error {
	switch x := v.(type) {
	case int64:
		b.Bytes = x
		return nil
	case string:
		n, err := parseByteSize(x)
		if err != nil {
			return err
		}
		b.Bytes = n
		return nil
	}
	return fmt.Errorf("invalid size %v: want bytes or a string such as \"256MB\"", v)
}

func parseByteSize(s string) (int64, error) {
	t := strings.TrimSpace(s)
	i := 0
	for i < len(t) && t[i] >= '0' && t[i] <= '9' {
		i++
	}
	n, err := strconv.ParseInt(t[:i], 10, 64)
	if err != nil {
		return 0, fmt.Errorf("invalid size %q: want bytes or a number with kB, MB, GB or TB", s)
	}
	var shift uint
	switch strings.ToLower(strings.TrimSpace(t[i:])) {
	case "", "b":
	case "kb", "kib", "k":
		shift = 10
	case "mb", "mib", "m":
		shift = 20
	case "gb", "gib", "g":
		shift = 30
	case "tb", "tib", "t":
		shift = 40
	default:
		return 0, fmt.Errorf("invalid size %q: want bytes or a number with kB, MB, GB or TB", s)
	}
	if n > (1<<63-1)>>shift {
		return 0, fmt.Errorf("invalid size %q: too large", s)
	}
	return n << shift, nil
}

// poolFile holds the pool settings that may appear globally or per
// database; nil means "not set here".
type poolFile struct {
	PoolMode               *string   `toml:"pool_mode"`
	DefaultPoolSize        *int      `toml:"default_pool_size"`
	PoolSize               *int      `toml:"pool_size"`
	MinPoolSize            *int      `toml:"min_pool_size"`
	ReservePoolSize        *int      `toml:"reserve_pool_size"`
	ReservePoolTimeout     *Duration `toml:"reserve_pool_timeout"`
	MaxDBConnections       *int      `toml:"max_db_connections"`
	QueryWaitTimeout       *Duration `toml:"query_wait_timeout"`
	ServerResetQuery       *string   `toml:"server_reset_query"`
	ServerLifetime         *Duration `toml:"server_lifetime"`
	ServerIdleTimeout      *Duration `toml:"server_idle_timeout"`
	ServerConnectTimeout   *Duration `toml:"server_connect_timeout"`
	ServerCheckDelay       *Duration `toml:"server_check_delay"`
	ServerCheckQuery       *string   `toml:"server_check_query"`
	ServerLoginRetry       *Duration `toml:"server_login_retry"`
	IdleTransactionTimeout *Duration `toml:"idle_transaction_timeout"`
	ClientIdleTimeout      *Duration `toml:"client_idle_timeout"`
	ClientWriteTimeout     *Duration `toml:"client_write_timeout"`
	QueryTimeout           *Duration `toml:"query_timeout"`
	MaxPreparedStatements  *int      `toml:"max_prepared_statements"`
	PinOnSessionState      *bool     `toml:"pin_on_session_state"`
}

func (f *poolFile) apply(s *pooler.PoolSettings) error {
	if f.PoolMode != nil {
		m, err := pooler.ParsePoolMode(*f.PoolMode)
		if err != nil {
			return err
		}
		s.Mode = m
	}
	setInt := func(dst *int, v *int) {
		if v != nil {
			*dst = *v
		}
	}
	setDur := func(dst *time.Duration, v *Duration) {
		if v != nil {
			*dst = v.Duration
		}
	}
	setInt(&s.Size, f.DefaultPoolSize)
	setInt(&s.Size, f.PoolSize)
	setInt(&s.MinSize, f.MinPoolSize)
	setInt(&s.ReserveSize, f.ReservePoolSize)
	setDur(&s.ReserveTimeout, f.ReservePoolTimeout)
	setInt(&s.MaxDBConnections, f.MaxDBConnections)
	setDur(&s.QueryWaitTimeout, f.QueryWaitTimeout)
	if f.ServerResetQuery != nil {
		s.ServerResetQuery = *f.ServerResetQuery
	}
	setDur(&s.ServerLifetime, f.ServerLifetime)
	setDur(&s.ServerIdleTimeout, f.ServerIdleTimeout)
	setDur(&s.ServerConnectTimeout, f.ServerConnectTimeout)
	setDur(&s.ServerCheckDelay, f.ServerCheckDelay)
	if f.ServerCheckQuery != nil {
		s.ServerCheckQuery = *f.ServerCheckQuery
	}
	setDur(&s.ServerLoginRetry, f.ServerLoginRetry)
	setDur(&s.IdleTransactionTimeout, f.IdleTransactionTimeout)
	setDur(&s.ClientIdleTimeout, f.ClientIdleTimeout)
	setDur(&s.ClientWriteTimeout, f.ClientWriteTimeout)
	setDur(&s.QueryTimeout, f.QueryTimeout)
	setInt(&s.MaxPreparedStatements, f.MaxPreparedStatements)
	if f.PinOnSessionState != nil {
		s.PinOnSessionState = *f.PinOnSessionState
	}
	if s.Size <= 0 {
		return errors.New("pool size must be at least 1")
	}
	return nil
}

// databaseFile is one [databases.NAME] table: either dsn, or the separate
// fields, plus pool overrides.
type databaseFile struct {
	DSN      string `toml:"dsn"`
	Host     string `toml:"host"`
	Port     int    `toml:"port"`
	DBName   string `toml:"dbname"`
	User     string `toml:"user"`
	Password string `toml:"password"`
	SSLMode  string `toml:"sslmode"`
	// ExplainDSN is the connection the EXPLAIN sampler uses for this
	// database (a replica, say); default: the upstream, logged in as the
	// role each statement ran as. It must name its user, and only
	// statements that ran as that role are planned on it (the planner
	// runs user code with the connection's privileges).
	ExplainDSN string `toml:"explain_dsn"`

	// PasswordFile holds the password (first line), so that it need
	// not be in the config file.
	PasswordFile string `toml:"password_file"`
	poolFile
}

// fileConfig is the TOML file's shape.
type fileConfig struct {
	Pgaudit   pgauditFile             `toml:"pgaudit"`
	Databases map[string]databaseFile `toml:"databases"`
	Rules     rules.Config            `toml:"rules"`
	// Peers is PgBouncer's [peers]: peer id = address (host:port or a
	// unix socket path) of each other pgaudit process sharing the
	// listen address, where cancels for its clients are forwarded.
	Peers map[string]string `toml:"peers"`
}

// pgauditFile is the [pgaudit] section.
type pgauditFile struct {
	Listen             string    `toml:"listen"`
	SoReuseport        bool      `toml:"so_reuseport"`
	PeerID             int       `toml:"peer_id"`
	PeerListen         string    `toml:"peer_listen"`
	AuthType           string    `toml:"auth_type"`
	AuthFile           string    `toml:"auth_file"`
	ClientTLS          string    `toml:"client_tls"`
	ClientTLSCertFile  string    `toml:"client_tls_cert_file"`
	ClientTLSKeyFile   string    `toml:"client_tls_key_file"`
	MaxClientConn      int       `toml:"max_client_conn"`
	ClientLoginTimeout *Duration `toml:"client_login_timeout"`
	MaxLoginClients    int       `toml:"max_login_clients"`
	Relay              string    `toml:"relay"` // "event" or unset; "goroutine" was removed (checkRelay)
	RelayParkAfter     *Duration `toml:"relay_park_after"`
	ResultSampleEvery  int       `toml:"result_sample_every"`
	MaxMessageSize     int       `toml:"max_message_size"`
	ClientBufferBudget *ByteSize `toml:"client_buffer_budget"`
	AuditLog           string    `toml:"audit_log"`
	AuditSample        string    `toml:"audit_sample"`
	AuditSampleRate    float64   `toml:"audit_sample_rate"`
	AuditSlowThreshold *Duration `toml:"audit_slow_threshold"`
	AuditLogErrors     *bool     `toml:"audit_log_errors"`
	LogParameters      bool      `toml:"log_parameters"`
	AuditMaxSize       int64     `toml:"audit_log_max_size"`
	AuditMaxBackups    int       `toml:"audit_log_max_backups"`
	StatsInterval      *Duration `toml:"stats_interval"`
	StatsTopN          int       `toml:"stats_top_n"`
	MaxShapes          int       `toml:"max_shapes"`
	AuditQueueSize     int       `toml:"audit_queue_size"`
	AuditWorkers       int       `toml:"audit_workers"`
	Explain            *bool     `toml:"explain"`
	ExplainInterval    *Duration `toml:"explain_interval"`
	HypoPGCreate       bool      `toml:"hypopg_create_extension"`
	AdminListen        *string   `toml:"admin_listen"`
	AdminUsers         []string  `toml:"admin_users"`
	OTLPEndpoint       string    `toml:"otlp_endpoint"`
	OTLPInsecure       *bool     `toml:"otlp_insecure"`
	Pprof              bool      `toml:"pprof"`
	LogLevel           string    `toml:"log_level"`
	ShutdownTimeout    *Duration `toml:"shutdown_timeout"`
	poolFile
	identityFile
	fleetFile
	otlpLogsFile // otlplogs.go
}

// rulesConfig is the [rules] section with defaults filled in, validated;
// proxy and lint read it alike.
func (fc *fileConfig) rulesConfig() (rules.Config, error) {
	c := fc.Rules.WithDefaults()
	return c, c.Validate()
}

// identityFile holds the [pgaudit] settings of who may log in and where
// secrets come from.
type identityFile struct {
	// auth_query (PgBouncer's): look up users missing from the users
	// file on the server, as auth_user.
	AuthUser         string    `toml:"auth_user"`
	AuthPassword     string    `toml:"auth_password"`
	AuthPasswordFile string    `toml:"auth_password_file"`
	AuthQuery        string    `toml:"auth_query"`
	AuthDBName       string    `toml:"auth_dbname"`
	AuthQueryCache   *Duration `toml:"auth_query_cache"`
	// DangerouslyAllowTrustOnNetwork permits auth_type = "trust" on a
	// listen address that is not loopback.
	DangerouslyAllowTrustOnNetwork bool `toml:"dangerously_allow_trust_on_network"`
	// UpstreamPasswordFile holds the password of the --upstream DSN.
	UpstreamPasswordFile string `toml:"upstream_password_file"`
	// HTTP admin credentials and Host names.
	AdminToken     string   `toml:"admin_token"`
	AdminTokenFile string   `toml:"admin_token_file"`
	AdminUser      string   `toml:"admin_user"`
	AdminPassword  string   `toml:"admin_password"`
	AdminHosts     []string `toml:"admin_hosts"`
}

// proxyFlags are the quick-start flags; empty values leave the file alone.
type proxyFlags struct {
	configPath    string
	listen        string
	upstream      string
	poolMode      string
	poolSize      int
	relay         string
	auditLog      string
	logLevel      string
	authType      string
	authFile      string
	auditSample   string
	noAudit       bool
	otlpEndpoint  string
	statsInterval time.Duration
	adminListen   *string // set when --admin-listen was given (even empty)
	adminUsers    string  // comma-separated
	pprof         bool
	// upstreamPasswordFile holds the --upstream DSN's password.
	upstreamPasswordFile string
	allowTrustOnNetwork  bool
	// otlpLogsEndpoint is --otlp-logs-endpoint (otlplogs.go).
	otlpLogsEndpoint string
}

// settings is everything `pgaudit proxy` needs.
type settings struct {
	// proxyLogin is the proxy whose pools hold client credentials, for
	// per-client EXPLAIN logins (see attachProxy).
	proxyLogin      atomic.Pointer[pooler.Proxy]
	proxy           *pooler.Config
	auditLog        string
	audit           auditlog.Config
	pipeline        analyzer.PipelineConfig
	rules           rules.Config
	noAudit         bool
	otlpEndpoint    string
	otlpInsecure    bool
	explain         bool
	explainInterval time.Duration
	explainDSNs     map[string]explainDSN
	hypopgCreate    bool
	logLevel        string
	shutdownTimeout time.Duration
	adminListen     string
	pprof           bool
	httpAuth        admin.HTTPAuth
	fleet           fleetSettings
	// warnings are logged when the proxy starts (a password on the
	// command line, trust on a network address).
	warnings []string
	// otlpLogs exports audit records as OTLP logs; nil: off (otlplogs.go).
	otlpLogs *otlplog.Config
}

// readConfigFile decodes a pgaudit.toml, rejecting keys it does not know
// (a typo must not silently leave a default in force). proxy and lint
// read the file the same way.
func readConfigFile(path string) (fileConfig, error) {
	var fc fileConfig
	md, err := toml.DecodeFile(path, &fc)
	if err != nil {
		return fc, fmt.Errorf("config %s: %w", path, err)
	}
	if und := md.Undecoded(); len(und) > 0 {
		keys := make([]string, len(und))
		for i, k := range und {
			keys[i] = k.String()
		}
		return fc, fmt.Errorf("config %s: unknown settings: %s", path, strings.Join(keys, ", "))
	}
	return fc, nil
}

// loadSettings merges the config file and flags. Flags win. Each section or
// concern of the file has its applier in settingsAppliers.
func loadSettings(fl proxyFlags) (*settings, error) {
	l := &settingsLoader{fl: fl}
	if fl.configPath != "" {
		var err error
		if l.fc, err = readConfigFile(fl.configPath); err != nil {
			return nil, err
		}
	}
	l.g = &l.fc.Pgaudit
	l.cfg = &pooler.Config{Databases: map[string]*pooler.Database{}}
	l.st = &settings{proxy: l.cfg}
	for _, apply := range settingsAppliers {
		if err := apply(l); err != nil {
			return nil, err
		}
	}
	return l.st, nil
}

// settingsLoader is the state loadSettings' appliers share: the inputs
// (flags, file) and what they build.
type settingsLoader struct {
	fl  proxyFlags
	fc  fileConfig
	g   *pgauditFile // &fc.Pgaudit
	cfg *pooler.Config
	st  *settings // st.proxy == cfg
	// global is the pool settings of [pgaudit] and the flags, the
	// defaults of each database.
	global pooler.PoolSettings
}

// settingsAppliers apply the config file's sections and the flags, one
// concern each, in this order: an applier may read what an earlier one
// set, and the first error wins.
var settingsAppliers = []func(*settingsLoader) error{
	(*settingsLoader).applyClientLimits, // [pgaudit] listener and client limits
	(*settingsLoader).applyPools,        // [pgaudit] pool settings, --pool-mode, --pool-size, [databases.NAME]
	(*settingsLoader).applyUpstream,     // --upstream
	(*settingsLoader).applyUsers,        // auth_file, auth_user and auth_query
	(*settingsLoader).applyAuthType,     // auth_type
	(*settingsLoader).applyClientTLS,    // client_tls
	(*settingsLoader).applyProcess,      // process: audit_log path, log_level, shutdown_timeout
	(*settingsLoader).applyAdmin,        // admin interfaces
	(*settingsLoader).applyAudit,        // audit log and pipeline
	(*settingsLoader).applyRules,        // [rules]
	(*settingsLoader).applyTracing,      // tracing
	(*settingsLoader).applyOTLPLogs,     // otlp_logs_*: audit records as OTLP logs (otlplogs.go)
	(*settingsLoader).applyExplain,      // EXPLAIN sampler and explain_dsn
	(*settingsLoader).applyFleet,        // fleet_peers (after applyAdmin: its credentials are the default)
}

// authFile is the users file, from the flag or the file.
func (l *settingsLoader) authFile() string { return firstNonEmpty(l.fl.authFile, l.g.AuthFile) }

// applyPeers: peer_id and [peers], for cancels across processes.
func (l *settingsLoader) applyPeers() error {
	l.cfg.PeerID = l.g.PeerID
	l.cfg.PeerListen = l.g.PeerListen
	if l.cfg.PeerListen != "" && l.cfg.PeerID == 0 {
		return fmt.Errorf("peer_listen is set but peer_id is 0: give this process its own peer_id")
	}
	if len(l.fc.Peers) > 0 {
		l.cfg.Peers = make(map[int]string, len(l.fc.Peers))
		for k, addr := range l.fc.Peers {
			id, err := strconv.Atoi(k)
			if err != nil {
				return fmt.Errorf("[peers] key %q: want a peer id (1..%d)", k, pooler.MaxPeerID)
			}
			l.cfg.Peers[id] = addr
		}
	}
	return pooler.ValidatePeers(l.cfg.PeerID, l.cfg.Peers)
}

// checkRelay validates a relay setting (what names it: the file's key or
// the flag). Since the goroutine relay was removed there is one relay, so
// "" and "event" (its old name, kept so that existing configs and scripts
// still start) are accepted and change nothing; "goroutine" is refused
// with an error saying it was removed, anything else as invalid.
func checkRelay(value, what string) error {
	switch value {
	case "", "event":
		return nil
	case "goroutine":
		return fmt.Errorf("%s %q: the goroutine relay was removed; there is one relay since this version, which parks idle plain-socket sessions on epoll loops (docs/relay.md): remove the setting or set it to \"event\"", what, value)
	}
	return fmt.Errorf("%s %q: invalid relay: the only relay is \"event\", and the setting may be left out (docs/relay.md)", what, value)
}

// applyClientLimits: listen address, client connection and message limits.
func (l *settingsLoader) applyClientLimits() error {
	cfg, g, fl := l.cfg, l.g, l.fl
	cfg.Listen = firstNonEmpty(fl.listen, g.Listen, "127.0.0.1:6432")
	cfg.SoReuseport = g.SoReuseport
	if err := l.applyPeers(); err != nil {
		return err
	}
	cfg.AuthType = firstNonEmpty(fl.authType, g.AuthType)
	cfg.ClientTLS = firstNonEmpty(g.ClientTLS, "disable")
	cfg.MaxClientConn = g.MaxClientConn
	cfg.MaxMessageSize = g.MaxMessageSize
	if cfg.MaxClientConn == 0 {
		cfg.MaxClientConn = 10000
	}
	if g.ClientLoginTimeout != nil {
		cfg.ClientLoginTimeout = g.ClientLoginTimeout.Duration
	}
	if cfg.ClientLoginTimeout <= 0 {
		cfg.ClientLoginTimeout = pooler.DefaultClientLoginTimeout
	}
	// Both are checked: a removed relay in the file is an error even
	// when a flag would override it.
	if err := checkRelay(g.Relay, "[pgaudit] relay ="); err != nil {
		return err
	}
	if err := checkRelay(fl.relay, "--relay"); err != nil {
		return err
	}
	cfg.RelayParkAfter = pooler.DefaultRelayParkAfter
	if g.RelayParkAfter != nil {
		if g.RelayParkAfter.Duration <= 0 {
			return fmt.Errorf("relay_park_after must be positive")
		}
		cfg.RelayParkAfter = g.RelayParkAfter.Duration
	}
	cfg.MaxLoginClients = g.MaxLoginClients
	if cfg.MaxLoginClients < 0 {
		return fmt.Errorf("max_login_clients must not be negative (0 means the default, %d)", pooler.DefaultMaxLoginClients)
	}
	if cfg.MaxLoginClients == 0 {
		cfg.MaxLoginClients = pooler.DefaultMaxLoginClients
	}
	// 0: the default (1 in 16); negative: no result hashing, so the
	// cache-candidate rule sees no results.
	cfg.ResultSampleEvery = g.ResultSampleEvery
	if cfg.MaxMessageSize <= 0 {
		cfg.MaxMessageSize = wire.DefaultMaxMessageSize
	}
	cfg.ClientBufferBudget = wire.DefaultClientBufferBudget
	if g.ClientBufferBudget != nil {
		cfg.ClientBufferBudget = g.ClientBufferBudget.Bytes
	}
	if cfg.ClientBufferBudget < int64(cfg.MaxMessageSize) {
		return fmt.Errorf("client_buffer_budget (%s) must be at least max_message_size (%s), or no message of that size could ever be received",
			wire.FormatBytes(cfg.ClientBufferBudget), wire.FormatBytes(int64(cfg.MaxMessageSize)))
	}
	return nil
}

// applyPools: the global pool settings ([pgaudit], then the flags) and the
// [databases.NAME] tables.
func (l *settingsLoader) applyPools() error {
	l.global = pooler.DefaultPoolSettings()
	if err := l.g.poolFile.apply(&l.global); err != nil {
		return fmt.Errorf("config [pgaudit]: %w", err)
	}
	if l.fl.poolMode != "" {
		m, err := pooler.ParsePoolMode(l.fl.poolMode)
		if err != nil {
			return err
		}
		l.global.Mode = m
	}
	if l.fl.poolSize > 0 {
		l.global.Size = l.fl.poolSize
	}
	for name, df := range l.fc.Databases {
		db, err := databaseFromFile(name, df, l.global)
		if err != nil {
			return err
		}
		l.cfg.Databases[name] = db
	}
	return nil
}

// applyUpstream: the --upstream DSN, its password and the trust it implies
// without a users file; then at least one database must be configured.
func (l *settingsLoader) applyUpstream() error {
	cfg, g, fl := l.cfg, l.g, l.fl
	if fl.upstream != "" {
		up, force, err := parseUpstream(fl.upstream)
		if err != nil {
			return fmt.Errorf("--upstream: %w", err)
		}
		if admin.RedactDSN(fl.upstream) != fl.upstream {
			l.st.warnings = append(l.st.warnings, "the --upstream DSN holds a password, which every local user can read with ps: use PGAUDIT_UPSTREAM_PASSWORD or upstream_password_file instead")
		}
		pw, err := secretFrom("upstream_password_file", firstNonEmpty(fl.upstreamPasswordFile, g.UpstreamPasswordFile), "PGAUDIT_UPSTREAM_PASSWORD", "")
		if err != nil {
			return err
		}
		if pw != "" {
			up.Password = pw
		}
		db := &pooler.Database{Name: up.Database, Upstream: up, ForceUser: force, Pool: l.global}
		cfg.Databases[up.Database] = db
		fallback := *db
		fallback.Name = "*"
		cfg.Databases["*"] = &fallback
		if l.authFile() == "" && cfg.AuthType == "" && g.AuthUser == "" {
			if !admin.IsLoopbackAddr(cfg.Listen) && !(g.DangerouslyAllowTrustOnNetwork || fl.allowTrustOnNetwork) {
				return fmt.Errorf("--upstream without a users file accepts clients with trust, which is only allowed on a loopback address, not %s: set auth_file or auth_user (auth_query)", cfg.Listen)
			}
			cfg.AuthType = "trust"
		}
	}
	if len(cfg.Databases) == 0 {
		return errors.New("no databases configured: pass --upstream DSN or add [databases] to the config file")
	}
	return nil
}

// applyUsers: the users file and auth_query (auth_user, its password,
// auth_dbname, the cache).
func (l *settingsLoader) applyUsers() error {
	cfg, g := l.cfg, l.g
	if authFile := l.authFile(); authFile != "" {
		users, err := wire.LoadUsers(authFile)
		if err != nil {
			return err
		}
		cfg.Users = users
		if cfg.AuthType == "" {
			cfg.AuthType = "scram-sha-256"
		}
	}
	if g.AuthUser != "" {
		pw, err := secretFrom("auth_password_file", g.AuthPasswordFile, "PGAUDIT_AUTH_PASSWORD", g.AuthPassword)
		if err != nil {
			return err
		}
		if pw == "" {
			// As PgBouncer: auth_user's password may come from the users file.
			if sec, ok := cfg.Users.Lookup(g.AuthUser); ok {
				pw, _ = sec.PlainPassword()
			}
		}
		cfg.AuthQuery = &pooler.AuthQuery{User: g.AuthUser, Password: pw, Query: firstNonEmpty(g.AuthQuery, pooler.DefaultAuthQuery), DBName: g.AuthDBName}
		if g.AuthQueryCache != nil {
			cfg.AuthQuery.CacheTTL = g.AuthQueryCache.Duration
			if cfg.AuthQuery.CacheTTL == 0 {
				cfg.AuthQuery.CacheTTL = -1 // 0 in the file: no cache
			}
		}
		cfg.AuthDatabase = g.AuthDBName
		if g.AuthDBName != "" {
			if _, ok := cfg.Databases[g.AuthDBName]; !ok {
				if _, wild := cfg.Databases["*"]; !wild {
					return fmt.Errorf("auth_dbname %q is not a configured database", g.AuthDBName)
				}
			}
		}
		if cfg.AuthType == "" {
			cfg.AuthType = "scram-sha-256"
		}
	} else if g.AuthQuery != "" || g.AuthDBName != "" {
		return errors.New("auth_query and auth_dbname need auth_user")
	}
	return nil
}

// applyAuthType: the default (trust), and what each auth_type needs.
func (l *settingsLoader) applyAuthType() error {
	cfg, g, fl := l.cfg, l.g, l.fl
	if cfg.AuthType == "" {
		cfg.AuthType = "trust"
	}
	switch cfg.AuthType {
	case "trust":
		if !admin.IsLoopbackAddr(cfg.Listen) {
			if !(g.DangerouslyAllowTrustOnNetwork || fl.allowTrustOnNetwork) {
				return fmt.Errorf("auth_type trust on %s, which is not a loopback address, lets anyone who can reach it log in without a password: use auth_file or auth_user (auth_query) with scram-sha-256, or, if the network is really trusted, set dangerously_allow_trust_on_network = true", cfg.Listen)
			}
			l.st.warnings = append(l.st.warnings, fmt.Sprintf("DANGER: auth_type trust on the network address %s (dangerously_allow_trust_on_network): anyone who can reach it logs in without a password", cfg.Listen))
		}
		if cfg.Users == nil && cfg.AuthQuery == nil {
			// No users file: when every database logs in to the
			// server as a fixed user, only that user name is accepted
			// (a client asking for another role would otherwise get
			// that user's session); others get 28000 role "NAME"
			// does not exist, as from Postgres.
			cfg.Users = forcedUsers(cfg.Databases)
		}
	case "md5", "scram-sha-256", "password":
		if cfg.Users == nil && cfg.AuthQuery == nil {
			return fmt.Errorf("auth_type %s needs auth_file or auth_user (auth_query)", cfg.AuthType)
		}
	default:
		return fmt.Errorf("invalid auth_type %q: want trust, password, md5 or scram-sha-256", cfg.AuthType)
	}
	return nil
}

// applyClientTLS: client_tls and its certificate.
func (l *settingsLoader) applyClientTLS() error {
	cfg, g := l.cfg, l.g
	switch cfg.ClientTLS {
	case "disable", "allow", "require":
	default:
		return fmt.Errorf("invalid client_tls %q: want disable, allow or require", cfg.ClientTLS)
	}
	if cfg.ClientTLS != "disable" {
		if g.ClientTLSCertFile == "" || g.ClientTLSKeyFile == "" {
			return errors.New("client_tls needs client_tls_cert_file and client_tls_key_file")
		}
		cert, err := tls.LoadX509KeyPair(g.ClientTLSCertFile, g.ClientTLSKeyFile)
		if err != nil {
			return fmt.Errorf("client TLS: %w", err)
		}
		cfg.TLS = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	}
	return nil
}

// applyProcess: the audit log's path, the log level and the shutdown
// timeout.
func (l *settingsLoader) applyProcess() error {
	st, g, fl := l.st, l.g, l.fl
	st.auditLog = firstNonEmpty(fl.auditLog, g.AuditLog)
	st.logLevel = firstNonEmpty(fl.logLevel, g.LogLevel, "info")
	st.shutdownTimeout = 30 * time.Second
	if g.ShutdownTimeout != nil {
		st.shutdownTimeout = g.ShutdownTimeout.Duration
	}
	return nil
}

// applyAdmin: the HTTP admin listener and its credentials, pprof, and the
// users of the SQL admin console.
func (l *settingsLoader) applyAdmin() error {
	st, cfg, g, fl := l.st, l.cfg, l.g, l.fl
	st.adminListen = "127.0.0.1:9930"
	if g.AdminListen != nil {
		st.adminListen = *g.AdminListen
	}
	if fl.adminListen != nil {
		st.adminListen = *fl.adminListen
	}
	token, err := secretFrom("admin_token_file", g.AdminTokenFile, "PGAUDIT_ADMIN_TOKEN", g.AdminToken)
	if err != nil {
		return err
	}
	st.httpAuth = admin.HTTPAuth{Token: token, User: g.AdminUser, Password: g.AdminPassword, Hosts: g.AdminHosts}
	if (g.AdminUser == "") != (g.AdminPassword == "") {
		return errors.New("admin_user and admin_password go together")
	}
	if st.adminListen != "" {
		if host, _, err := net.SplitHostPort(st.adminListen); err == nil && host != "" && net.ParseIP(host) == nil {
			st.httpAuth.Hosts = append(st.httpAuth.Hosts, host)
		}
		if err := st.httpAuth.CheckListen(st.adminListen); err != nil {
			return err
		}
	}
	st.pprof = g.Pprof || fl.pprof
	cfg.AdminUsers = g.AdminUsers
	if fl.adminUsers != "" {
		cfg.AdminUsers = strings.Split(fl.adminUsers, ",")
	}
	if len(cfg.AdminUsers) == 0 && fl.upstream != "" {
		if db, ok := cfg.Databases["*"]; ok && db.Upstream.User != "" {
			cfg.AdminUsers = []string{db.Upstream.User}
		}
	}
	return nil
}

// applyAudit: the audit log's sampling, rotation and statistics, and the
// analysis pipeline.
func (l *settingsLoader) applyAudit() error {
	st, g, fl := l.st, l.g, l.fl
	sample, err := auditlog.ParseSampleMode(firstNonEmpty(fl.auditSample, g.AuditSample))
	if err != nil {
		return fmt.Errorf("audit_sample: %w", err)
	}
	st.audit = auditlog.Config{
		Path:          st.auditLog,
		MaxSize:       g.AuditMaxSize,
		MaxBackups:    g.AuditMaxBackups,
		Sample:        sample,
		SampleRate:    g.AuditSampleRate,
		LogErrors:     true,
		LogParameters: g.LogParameters,
		StatsTopN:     g.StatsTopN,
	}
	if g.AuditLogErrors != nil {
		st.audit.LogErrors = *g.AuditLogErrors
	}
	if g.AuditSlowThreshold != nil {
		st.audit.SlowThreshold = g.AuditSlowThreshold.Duration
	}
	if g.StatsInterval != nil {
		st.audit.StatsInterval = g.StatsInterval.Duration
	}
	if fl.statsInterval > 0 {
		st.audit.StatsInterval = fl.statsInterval
	}
	st.pipeline = analyzer.PipelineConfig{QueueSize: g.AuditQueueSize, Workers: g.AuditWorkers, Stats: analyzer.StatsConfig{MaxShapes: g.MaxShapes}}
	// Example parameter values for EXPLAIN are kept in memory only; they
	// reach the audit log only with log_parameters.
	l.cfg.CaptureParams = true
	st.noAudit = fl.noAudit
	return nil
}

// applyRules: the [rules] section, as lint reads it.
func (l *settingsLoader) applyRules() error {
	var err error
	if l.st.rules, err = l.fc.rulesConfig(); err != nil {
		return fmt.Errorf("config [rules]: %w", err)
	}
	return nil
}

// applyTracing: where OpenTelemetry spans go.
func (l *settingsLoader) applyTracing() error {
	l.st.otlpEndpoint = firstNonEmpty(l.fl.otlpEndpoint, l.g.OTLPEndpoint)
	l.st.otlpInsecure = l.g.OTLPInsecure == nil || *l.g.OTLPInsecure
	return nil
}

// applyExplain: the EXPLAIN sampler, hypopg consent and each database's
// explain_dsn.
func (l *settingsLoader) applyExplain() error {
	st, cfg, g := l.st, l.cfg, l.g
	st.explain = (g.Explain == nil || *g.Explain) && !l.fl.noAudit
	if g.ExplainInterval != nil {
		st.explainInterval = g.ExplainInterval.Duration
	}
	st.hypopgCreate = g.HypoPGCreate
	st.explainDSNs = map[string]explainDSN{}
	for name, df := range l.fc.Databases {
		if df.ExplainDSN == "" {
			continue
		}
		ed, err := parseExplainDSN(df.ExplainDSN)
		if err != nil {
			return fmt.Errorf("config [databases.%s] explain_dsn: %w", name, err)
		}
		if db := cfg.Databases[name]; db != nil && db.ForceUser && db.Upstream.User != ed.role {
			return fmt.Errorf("config [databases.%s] explain_dsn: logs in as %q, but every statement of this database runs as %q; "+
				"statements are only planned as the role that ran them (the planner runs user code), so use user %q or drop explain_dsn",
				name, ed.role, db.Upstream.User, db.Upstream.User)
		}
		st.explainDSNs[name] = ed
	}
	return nil
}

// explainDSN is a database's explain_dsn and the role it logs in as.
type explainDSN struct {
	dsn, role string
}

// parseExplainDSN checks that an explain_dsn names its user and returns
// it with that user.
func parseExplainDSN(dsn string) (explainDSN, error) {
	if !planadvisor.DSNNamesUser(dsn) {
		return explainDSN{}, errors.New("names no user; pgaudit never connects as libpq's default user (the operating system user or PGUSER)")
	}
	pc, err := pgconn.ParseConfig(dsn)
	if err != nil {
		return explainDSN{}, err
	}
	return explainDSN{dsn: dsn, role: pc.User}, nil
}

func databaseFromFile(name string, df databaseFile, global pooler.PoolSettings) (*pooler.Database, error) {
	var up *pgconn.Config
	var force bool
	var err error
	if df.DSN != "" {
		up, force, err = parseUpstream(df.DSN)
	} else {
		kv := []string{}
		add := func(k, v string) {
			if v != "" {
				kv = append(kv, k+"='"+strings.ReplaceAll(strings.ReplaceAll(v, `\`, `\\`), "'", `\'`)+"'")
			}
		}
		add("host", firstNonEmpty(df.Host, "127.0.0.1"))
		if df.Port != 0 {
			add("port", strconv.Itoa(df.Port))
		}
		add("dbname", firstNonEmpty(df.DBName, name))
		add("user", df.User)
		pw, perr := secretFrom(fmt.Sprintf("[databases.%s] password_file", name), df.PasswordFile, "", df.Password)
		if perr != nil {
			return nil, perr
		}
		add("password", pw)
		add("sslmode", firstNonEmpty(df.SSLMode, "prefer"))
		up, err = pgconn.ParseConfig(strings.Join(kv, " "))
		force = df.User != ""
	}
	if err != nil {
		return nil, fmt.Errorf("config [databases.%s]: %w", name, err)
	}
	pool := global
	if err := df.poolFile.apply(&pool); err != nil {
		return nil, fmt.Errorf("config [databases.%s]: %w", name, err)
	}
	return &pooler.Database{Name: name, Upstream: up, ForceUser: force, Pool: pool}, nil
}

// parseUpstream parses a DSN (URL or key=value) and reports whether it
// names a user, which then is used for every client.
func parseUpstream(dsn string) (*pgconn.Config, bool, error) {
	cfg, err := pgconn.ParseConfig(dsn)
	if err != nil {
		return nil, false, err
	}
	force := false
	if u, err := url.Parse(dsn); err == nil && (u.Scheme == "postgres" || u.Scheme == "postgresql") {
		force = u.User != nil && u.User.Username() != ""
	} else {
		force = strings.Contains(dsn, "user=")
	}
	if cfg.Database == "" {
		cfg.Database = "postgres"
	}
	return cfg, force, nil
}

// secretFrom returns a secret from file (its first line), else from the
// environment variable env, else value. Files and variables keep secrets
// out of the command line (ps) and the config file.
func secretFrom(what, file, env, value string) (string, error) {
	if file != "" {
		b, err := os.ReadFile(file)
		if err != nil {
			return "", fmt.Errorf("%s: %w", what, err)
		}
		line, _, _ := strings.Cut(string(b), "\n")
		return strings.TrimRight(line, "\r"), nil
	}
	if env != "" {
		if v := os.Getenv(env); v != "" {
			return v, nil
		}
	}
	return value, nil
}

// forcedUsers returns the users file implied by trust without one: the
// fixed server users, when every database has one; nil (any user name)
// otherwise.
func forcedUsers(dbs map[string]*pooler.Database) *wire.Users {
	m := map[string]wire.Secret{}
	for _, db := range dbs {
		if !db.ForceUser {
			return nil
		}
		m[db.Upstream.User] = wire.Secret{}
	}
	if len(m) == 0 {
		return nil
	}
	return wire.NewUsers(m)
}

func firstNonEmpty(vals ...string) string {
	for _, v := range vals {
		if v != "" {
			return v
		}
	}
	return ""
}

// auditorOptions builds the analysis configuration of `pgaudit proxy`.
func (st *settings) auditorOptions(log zerolog.Logger) auditorOptions {
	o := auditorOptions{
		Pipeline:             st.pipeline,
		AuditLog:             st.audit,
		Rules:                st.rules,
		ExplainInterval:      st.explainInterval,
		AllowCreateExtension: st.hypopgCreate,
		Log:                  log,
	}
	if st.explain {
		o.Explain = st.explainTarget
	}
	o.OTLPLogs = st.otlpLogs
	return o
}

// explainTarget decides how a statement that ran on database for client
// user is planned: only ever logged in as the role it ran as. That role
// is the database entry's user when it sets one (every client runs as
// it), else the client's own user, logged in with the client's plain-text
// password from the users file (as the pool does) or none. A database's
// explain_dsn is used for the statements of its own role only. Never with
// libpq's implicit defaults: an unknown database or user is not planned.
func (st *settings) explainTarget(database, user string) (explainTarget, bool) {
	if database == "" {
		return explainTarget{}, false
	}
	cfg := st.proxy
	db, ok := cfg.Databases[database]
	fallback := false
	if !ok {
		if db, ok = cfg.Databases["*"]; !ok {
			return explainTarget{}, false
		}
		fallback = true
	}
	role := user
	if db.ForceUser {
		role = db.Upstream.User
	}
	if role == "" {
		return explainTarget{}, false
	}
	if ed, ok := st.explainDSNs[database]; ok {
		if ed.role != role {
			return explainTarget{}, false
		}
		return explainTarget{Key: database + "\x00dsn", DSN: ed.dsn, Role: role}, true
	}
	conn := db.Upstream.Copy()
	if fallback {
		conn.Database = database
	}
	if !db.ForceUser {
		// The client's own login, never the password libpq found for the
		// operating system user (PGPASSWORD, .pgpass) at parse time.
		conn.User, conn.Password = user, ""
		if secret, found := cfg.Users.Lookup(user); found {
			if pw, ok := secret.PlainPassword(); ok {
				conn.Password = pw
			}
		}
		// A SCRAM verifier or md5 hash in the users file (or from
		// auth_query): log in with what the client's own login left in
		// its pool, as the pool's server connections do.
		if conn.Password == "" {
			if l := st.serverLogin(database, user); !l.Empty() {
				l.Apply(conn)
			}
		}
	}
	return explainTarget{Key: database + "\x00" + role, Conn: conn, Role: role, PerClient: !db.ForceUser}, true
}

// attachProxy lets the EXPLAIN sampler's per-client connections log in
// with the credentials p's pools hold (SCRAM keys passed through from the
// client's login). Call it once, before p serves clients.
func (st *settings) attachProxy(p *pooler.Proxy) {
	st.proxyLogin.Store(p)
}

// serverLogin is attachProxy's Proxy.ServerLogin, or nil before it.
func (st *settings) serverLogin(database, user string) *wire.ServerLogin {
	if p := st.proxyLogin.Load(); p != nil {
		return p.ServerLogin(database, user)
	}
	return nil
}
