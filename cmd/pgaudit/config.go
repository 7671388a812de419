package main

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/BurntSushi/toml"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/rs/zerolog"

	"github.com/pgaudit/pgaudit/analyzer"
	"github.com/pgaudit/pgaudit/pooler"
	"github.com/pgaudit/pgaudit/rules"
	"github.com/pgaudit/pgaudit/wire"
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
	// database (a dedicated read-only role, say); default: the upstream.
	ExplainDSN string `toml:"explain_dsn"`
	poolFile
}

// fileConfig is the TOML file's shape.
type fileConfig struct {
	Pgaudit struct {
		Listen             string    `toml:"listen"`
		AuthType           string    `toml:"auth_type"`
		AuthFile           string    `toml:"auth_file"`
		ClientTLS          string    `toml:"client_tls"`
		ClientTLSCertFile  string    `toml:"client_tls_cert_file"`
		ClientTLSKeyFile   string    `toml:"client_tls_key_file"`
		MaxClientConn      int       `toml:"max_client_conn"`
		ClientLoginTimeout *Duration `toml:"client_login_timeout"`
		MaxMessageSize     int       `toml:"max_message_size"`
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
	} `toml:"pgaudit"`
	Databases map[string]databaseFile `toml:"databases"`
	Rules     rules.Config            `toml:"rules"`
}

// proxyFlags are the quick-start flags; empty values leave the file alone.
type proxyFlags struct {
	configPath    string
	listen        string
	upstream      string
	poolMode      string
	poolSize      int
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
}

// settings is everything `pgaudit proxy` needs.
type settings struct {
	proxy           *pooler.Config
	auditLog        string
	audit           analyzer.AuditLogConfig
	pipeline        analyzer.PipelineConfig
	rules           rules.Config
	noAudit         bool
	otlpEndpoint    string
	otlpInsecure    bool
	explain         bool
	explainInterval time.Duration
	explainDSNs     map[string]string
	hypopgCreate    bool
	logLevel        string
	shutdownTimeout time.Duration
	adminListen     string
	pprof           bool
}

// loadSettings merges the config file and flags. Flags win.
func loadSettings(fl proxyFlags) (*settings, error) {
	var fc fileConfig
	if fl.configPath != "" {
		md, err := toml.DecodeFile(fl.configPath, &fc)
		if err != nil {
			return nil, fmt.Errorf("config %s: %w", fl.configPath, err)
		}
		if und := md.Undecoded(); len(und) > 0 {
			keys := make([]string, len(und))
			for i, k := range und {
				keys[i] = k.String()
			}
			return nil, fmt.Errorf("config %s: unknown settings: %s", fl.configPath, strings.Join(keys, ", "))
		}
	}
	g := fc.Pgaudit
	cfg := &pooler.Config{
		Listen:         firstNonEmpty(fl.listen, g.Listen, "127.0.0.1:6432"),
		AuthType:       firstNonEmpty(fl.authType, g.AuthType),
		ClientTLS:      firstNonEmpty(g.ClientTLS, "disable"),
		MaxClientConn:  g.MaxClientConn,
		MaxMessageSize: g.MaxMessageSize,
		Databases:      map[string]*pooler.Database{},
	}
	if cfg.MaxClientConn == 0 {
		cfg.MaxClientConn = 10000
	}
	if g.ClientLoginTimeout != nil {
		cfg.ClientLoginTimeout = g.ClientLoginTimeout.Duration
	}
	global := pooler.DefaultPoolSettings()
	if err := g.poolFile.apply(&global); err != nil {
		return nil, fmt.Errorf("config [pgaudit]: %w", err)
	}
	if fl.poolMode != "" {
		m, err := pooler.ParsePoolMode(fl.poolMode)
		if err != nil {
			return nil, err
		}
		global.Mode = m
	}
	if fl.poolSize > 0 {
		global.Size = fl.poolSize
	}
	for name, df := range fc.Databases {
		db, err := databaseFromFile(name, df, global)
		if err != nil {
			return nil, err
		}
		cfg.Databases[name] = db
	}
	authFile := firstNonEmpty(fl.authFile, g.AuthFile)
	if fl.upstream != "" {
		up, force, err := parseUpstream(fl.upstream)
		if err != nil {
			return nil, fmt.Errorf("--upstream: %w", err)
		}
		db := &pooler.Database{Name: up.Database, Upstream: up, ForceUser: force, Pool: global}
		cfg.Databases[up.Database] = db
		fallback := *db
		fallback.Name = "*"
		cfg.Databases["*"] = &fallback
		if authFile == "" && cfg.AuthType == "" {
			if !isLoopback(cfg.Listen) {
				return nil, fmt.Errorf("--upstream without a users file accepts clients with trust, which is only allowed on a loopback address, not %s: set auth_file", cfg.Listen)
			}
			cfg.AuthType = "trust"
		}
	}
	if len(cfg.Databases) == 0 {
		return nil, errors.New("no databases configured: pass --upstream DSN or add [databases] to the config file")
	}
	if authFile != "" {
		users, err := wire.LoadUsers(authFile)
		if err != nil {
			return nil, err
		}
		cfg.Users = users
		if cfg.AuthType == "" {
			cfg.AuthType = "scram-sha-256"
		}
	}
	if cfg.AuthType == "" {
		cfg.AuthType = "trust"
	}
	switch cfg.AuthType {
	case "trust":
		if authFile == "" && !isLoopback(cfg.Listen) {
			return nil, fmt.Errorf("auth_type trust without a users file is only allowed on a loopback listen address, not %s", cfg.Listen)
		}
	case "md5", "scram-sha-256", "password":
		if cfg.Users == nil {
			return nil, fmt.Errorf("auth_type %s needs auth_file", cfg.AuthType)
		}
	default:
		return nil, fmt.Errorf("invalid auth_type %q: want trust, password, md5 or scram-sha-256", cfg.AuthType)
	}
	switch cfg.ClientTLS {
	case "disable", "allow", "require":
	default:
		return nil, fmt.Errorf("invalid client_tls %q: want disable, allow or require", cfg.ClientTLS)
	}
	if cfg.ClientTLS != "disable" {
		if g.ClientTLSCertFile == "" || g.ClientTLSKeyFile == "" {
			return nil, errors.New("client_tls needs client_tls_cert_file and client_tls_key_file")
		}
		cert, err := tls.LoadX509KeyPair(g.ClientTLSCertFile, g.ClientTLSKeyFile)
		if err != nil {
			return nil, fmt.Errorf("client TLS: %w", err)
		}
		cfg.TLS = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	}
	st := &settings{proxy: cfg, auditLog: firstNonEmpty(fl.auditLog, g.AuditLog), logLevel: firstNonEmpty(fl.logLevel, g.LogLevel, "info"), shutdownTimeout: 30 * time.Second}
	if g.ShutdownTimeout != nil {
		st.shutdownTimeout = g.ShutdownTimeout.Duration
	}
	st.adminListen = "127.0.0.1:9930"
	if g.AdminListen != nil {
		st.adminListen = *g.AdminListen
	}
	if fl.adminListen != nil {
		st.adminListen = *fl.adminListen
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
	sample, err := analyzer.ParseSampleMode(firstNonEmpty(fl.auditSample, g.AuditSample))
	if err != nil {
		return nil, fmt.Errorf("audit_sample: %w", err)
	}
	st.audit = analyzer.AuditLogConfig{
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
	cfg.CaptureParams = true
	st.rules = fc.Rules.WithDefaults()
	if err := st.rules.Validate(); err != nil {
		return nil, fmt.Errorf("config [rules]: %w", err)
	}
	st.noAudit = fl.noAudit
	st.otlpEndpoint = firstNonEmpty(fl.otlpEndpoint, g.OTLPEndpoint)
	st.otlpInsecure = g.OTLPInsecure == nil || *g.OTLPInsecure
	st.explain = (g.Explain == nil || *g.Explain) && !fl.noAudit
	if g.ExplainInterval != nil {
		st.explainInterval = g.ExplainInterval.Duration
	}
	st.hypopgCreate = g.HypoPGCreate
	st.explainDSNs = map[string]string{}
	for name, df := range fc.Databases {
		if df.ExplainDSN != "" {
			st.explainDSNs[name] = df.ExplainDSN
		}
	}
	return st, nil
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
		add("password", df.Password)
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

func isLoopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
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
		o.ExplainDSN = func(database string) string {
			if dsn := st.explainDSNs[database]; dsn != "" {
				return dsn
			}
			db, ok := st.proxy.Databases[database]
			if !ok {
				db, ok = st.proxy.Databases["*"]
				if !ok {
					return ""
				}
				return upstreamDSN(db.Upstream, database)
			}
			return upstreamDSN(db.Upstream, "")
		}
	}
	return o
}
