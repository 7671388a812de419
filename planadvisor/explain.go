package planadvisor

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgerrcode"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/rs/zerolog"

	"github.com/pgaudit-proxy/pgaudit/rules"
)

// ExplainConfig configures an Explainer. DSN or Conn is required.
//
// The planner runs user code (IMMUTABLE and STABLE functions are evaluated
// at plan time), with the privileges of the connection's role. An
// Explainer must therefore connect as the role that ran the statements it
// plans: see Role, and docs/security-explain.md.
type ExplainConfig struct {
	// DSN is the upstream server to explain on (a URL or key=value string,
	// as pgx parses it). It must name its user: pgaudit never connects
	// as libpq's default user (the operating system user, or PGUSER).
	// Unless the DSN sets them, application_name is "pgaudit-explain" and
	// default_transaction_read_only is on.
	DSN string
	// Conn, when set, is used instead of DSN: a parsed connection
	// configuration (copied; its User must be set), such as the pooler's
	// upstream with the client's own user and password filled in.
	Conn *pgconn.Config
	// Role, when set, is the role every statement given to this Explainer
	// ran as. Each new connection is checked before use: session_user and
	// current_user must both be Role (a role-level "SET role" default or a
	// DSN option could change them), else the connection is closed and the
	// request fails with ErrRoleMismatch. Empty skips the check (lint
	// explains every logged statement as the --dsn role).
	Role string
	// MaxConns caps the explainer's own connections. Default 2.
	MaxConns int
	// CloseIdle closes each connection when its request is done instead of
	// keeping it for the next: for the many explainers of per-client roles,
	// which must not hold a connection each while idle.
	CloseIdle bool
	// StatementTimeout is SET LOCAL statement_timeout for every explain
	// transaction. Default 2s.
	StatementTimeout time.Duration
	// LockTimeout is SET LOCAL lock_timeout (planning takes the same
	// relation locks as the statement would). Default 500ms.
	LockTimeout time.Duration
	// Rate is the most EXPLAIN statements per second (validation explains
	// with hypothetical indexes included). Default 5.
	Rate float64
	// Burst is how many EXPLAIN statements may start back to back before
	// Rate applies. Default 1.
	Burst int
	// ConnectTimeout bounds opening a connection when the DSN sets none.
	// Default 5s.
	ConnectTimeout time.Duration
	// DisableHypoPG turns hypothetical-index validation off even where
	// HypoPG is installed.
	DisableHypoPG bool
	// AllowCreateExtension lets the explainer run CREATE EXTENSION hypopg
	// (once, in a read-write transaction) where the extension is available
	// but not installed. Default false: pgaudit never installs anything
	// without the operator's consent.
	AllowCreateExtension bool
	// MaxCandidates caps the hypothetical indexes tried per scanned table.
	// Default 8.
	MaxCandidates int
	// Logger receives explain failures and timeouts (SQLSTATE and reason,
	// never parameter values). The zero Logger discards.
	Logger zerolog.Logger

	// skipUserCodeCheck turns the check for user-defined code off, for
	// tests of the defences behind it.
	skipUserCodeCheck bool
}

const (
	defaultExplainConns     = 2
	defaultExplainStmtTO    = 2 * time.Second
	defaultExplainLockTO    = 500 * time.Millisecond
	defaultExplainRate      = 5
	defaultExplainConnectTO = 5 * time.Second
	defaultMaxCandidates    = 8
)

// ExplainMode says how a statement's parameters were handled.
type ExplainMode string

const (
	// ModePlain: the statement has no parameters.
	ModePlain ExplainMode = "plain"
	// ModeParams: example parameter values (kept in memory only) were
	// bound, giving a custom plan.
	ModeParams ExplainMode = "params"
	// ModeGeneric: a generic plan, with EXPLAIN (GENERIC_PLAN) on
	// Postgres 16+.
	ModeGeneric ExplainMode = "generic"
	// ModeGenericPrepared: a generic plan before Postgres 16: PREPARE with
	// plan_cache_mode = force_generic_plan, EXPLAIN EXECUTE with NULLs,
	// DEALLOCATE.
	ModeGenericPrepared ExplainMode = "generic-prepared"
)

// Generic reports whether the mode plans without parameter values.
func (m ExplainMode) Generic() bool { return m == ModeGeneric || m == ModeGenericPrepared }

// ErrRoleMismatch is wrapped by the error of a request whose connection
// is not logged in as ExplainConfig.Role.
var ErrRoleMismatch = errors.New("explain connection is not the statement's role")

// ErrRunsUserCode is wrapped by the error of a request refused because the
// planner could run user-defined code for it: a function outside
// pg_catalog and information_schema and not part of an extension, that is
// IMMUTABLE or STABLE (evaluated at plan time) or LANGUAGE sql (inlined),
// called by the statement (directly, through an operator or a cast) or by
// a view, column default, policy, constraint or index expression of a
// relation it reads. The check runs before planning, as the statement's
// role; the Sampler never explains such a shape again.
var ErrRunsUserCode = errors.New("planning would run user-defined code")

// ErrExplainTimeout is wrapped by the error of an explain that hit
// statement_timeout (SQLSTATE 57014) or lock_timeout (55P03).
var ErrExplainTimeout = errors.New("explain timed out")

// ExplainCounters are an Explainer's cumulative counters, for metrics.
type ExplainCounters struct {
	// Run counts EXPLAIN statements that returned a plan, validation
	// explains included.
	Run uint64 `json:"run"`
	// Validations counts EXPLAINs run with a hypothetical index.
	Validations uint64 `json:"validations"`
	// Skipped counts requests refused because the statement is not
	// explainable.
	Skipped uint64 `json:"skipped"`
	// Errors counts requests that failed other than by a timeout
	// (connection failures, planner errors, catalog errors).
	Errors uint64 `json:"errors"`
	// Timeouts counts requests that hit statement_timeout or lock_timeout.
	Timeouts uint64 `json:"timeouts"`
	// Discarded counts connections closed rather than reused because
	// cleanup (ROLLBACK, DEALLOCATE, hypopg_reset, DISCARD ALL) could not
	// be confirmed.
	Discarded uint64 `json:"discarded"`
	// UserCode counts requests refused because planning would run
	// user-defined code (ErrRunsUserCode).
	UserCode uint64 `json:"user_code"`
	// RoleMismatch counts requests refused because the connection was not
	// logged in as the statement's role (ErrRoleMismatch).
	RoleMismatch uint64 `json:"role_mismatch"`
}

// Explainer runs EXPLAIN for query shapes on its own small connection pool
// to one upstream database, and reads the plans. Every explain is EXPLAIN
// (FORMAT JSON, VERBOSE), never ANALYZE, inside BEGIN READ ONLY with SET
// LOCAL statement_timeout and lock_timeout, and is always rolled back;
// only statements CheckExplainable accepts are sent. It is safe for
// concurrent use; at most MaxConns explains run at once and Rate bounds how
// many start per second. Close it when done.
type Explainer struct {
	cfg     ExplainConfig
	pool    *explainPool
	limit   *rateLimiter
	log     zerolog.Logger
	seq     atomic.Uint64
	stmtTO  string
	lockTO  string
	extOnce sync.Once

	run, validations, skipped, errs, timeouts, discarded, userCode, roleMismatch atomic.Uint64
}

// NewExplainer validates cfg and returns an Explainer; it connects lazily,
// on the first explain.
func NewExplainer(cfg ExplainConfig) (*Explainer, error) {
	var pc *pgx.ConnConfig
	switch {
	case cfg.Conn != nil:
		if cfg.Conn.User == "" {
			return nil, errors.New("explainer: connection config names no user")
		}
		var err error
		// A ConnConfig must come from ParseConfig; its connection part is
		// then replaced wholesale by the caller's, so nothing of the
		// environment's libpq defaults survives.
		if pc, err = pgx.ParseConfig(""); err != nil {
			return nil, fmt.Errorf("explainer: %w", err)
		}
		pc.Config = *cfg.Conn.Copy()
	case cfg.DSN != "":
		if !DSNNamesUser(cfg.DSN) {
			return nil, errors.New("explainer: DSN names no user; pgaudit never connects as libpq's default user (the operating system user or PGUSER)")
		}
		var err error
		if pc, err = pgx.ParseConfig(cfg.DSN); err != nil {
			return nil, fmt.Errorf("explainer: parse DSN: %w", err)
		}
	default:
		return nil, errors.New("explainer: DSN is required")
	}
	if cfg.MaxConns <= 0 {
		cfg.MaxConns = defaultExplainConns
	}
	if cfg.StatementTimeout <= 0 {
		cfg.StatementTimeout = defaultExplainStmtTO
	}
	if cfg.LockTimeout <= 0 {
		cfg.LockTimeout = defaultExplainLockTO
	}
	if cfg.Rate <= 0 {
		cfg.Rate = defaultExplainRate
	}
	if cfg.ConnectTimeout <= 0 {
		cfg.ConnectTimeout = defaultExplainConnectTO
	}
	if cfg.MaxCandidates <= 0 {
		cfg.MaxCandidates = defaultMaxCandidates
	}
	if pc.ConnectTimeout == 0 {
		pc.ConnectTimeout = cfg.ConnectTimeout
	}
	if pc.RuntimeParams == nil {
		pc.RuntimeParams = map[string]string{}
	}
	if _, ok := pc.RuntimeParams["application_name"]; !ok {
		pc.RuntimeParams["application_name"] = ExplainApplicationName
	}
	if _, ok := pc.RuntimeParams["default_transaction_read_only"]; !ok {
		pc.RuntimeParams["default_transaction_read_only"] = "on"
	}
	// No named prepared statements of pgx's own: the only ones on these
	// connections are the explainer's, which it deallocates.
	pc.DefaultQueryExecMode = pgx.QueryExecModeDescribeExec
	pool := newExplainPool(pc, cfg.MaxConns)
	pool.closeIdle = cfg.CloseIdle
	if cfg.Role != "" {
		pool.check = func(ctx context.Context, c *pgx.Conn) error { return checkRole(ctx, c, cfg.Role) }
	}
	return &Explainer{
		cfg:    cfg,
		pool:   pool,
		limit:  newRateLimiter(cfg.Rate, cfg.Burst),
		log:    cfg.Logger,
		stmtTO: strconv.FormatInt(max(cfg.StatementTimeout.Milliseconds(), 1), 10),
		lockTO: strconv.FormatInt(max(cfg.LockTimeout.Milliseconds(), 1), 10),
	}, nil
}

// Close closes the idle connections and waits for explains in flight to
// finish and release theirs (each is bounded by its timeouts). The
// Explainer must not be used afterwards.
func (e *Explainer) Close() { e.pool.close() }

// Counters returns the cumulative counters. Safe to call at any time.
func (e *Explainer) Counters() ExplainCounters {
	return ExplainCounters{
		Run: e.run.Load(), Validations: e.validations.Load(), Skipped: e.skipped.Load(),
		Errors: e.errs.Load(), Timeouts: e.timeouts.Load(), Discarded: e.discarded.Load(),
		UserCode: e.userCode.Load(), RoleMismatch: e.roleMismatch.Load(),
	}
}

// Role returns ExplainConfig.Role: the role this Explainer plans as, or ""
// when unchecked.
func (e *Explainer) Role() string { return e.cfg.Role }

// DSNNamesUser reports whether a connection string (URL or key=value)
// names its user explicitly, rather than leaving it to libpq's default
// (PGUSER, then the operating system user).
func DSNNamesUser(dsn string) bool {
	if u, err := url.Parse(dsn); err == nil && (u.Scheme == "postgres" || u.Scheme == "postgresql") {
		return (u.User != nil && u.User.Username() != "") || u.Query().Get("user") != ""
	}
	return keyValueSettings(dsn)["user"] != ""
}

// keyValueSettings parses a libpq key=value connection string (spaces
// around "=" allowed, values optionally single-quoted, backslash escapes).
// A malformed string yields what was read before the fault.
func keyValueSettings(s string) map[string]string {
	out := map[string]string{}
	i := 0
	skip := func() {
		for i < len(s) && (s[i] == ' ' || s[i] == '\t' || s[i] == '\n' || s[i] == '\r') {
			i++
		}
	}
	for {
		skip()
		if i >= len(s) {
			return out
		}
		start := i
		for i < len(s) && s[i] != '=' && s[i] != ' ' && s[i] != '\t' && s[i] != '\n' && s[i] != '\r' {
			i++
		}
		key := s[start:i]
		skip()
		if i >= len(s) || s[i] != '=' {
			return out
		}
		i++
		skip()
		var v strings.Builder
		if i < len(s) && s[i] == '\'' {
			i++
			for i < len(s) && s[i] != '\'' {
				if s[i] == '\\' && i+1 < len(s) {
					i++
				}
				v.WriteByte(s[i])
				i++
			}
			i++ // closing quote
		} else {
			for i < len(s) && s[i] != ' ' && s[i] != '\t' && s[i] != '\n' && s[i] != '\r' {
				if s[i] == '\\' && i+1 < len(s) {
					i++
				}
				v.WriteByte(s[i])
				i++
			}
		}
		out[key] = v.String()
	}
}

// checkRole confirms a new connection is logged in as role, with no SET
// ROLE in effect; a superuser connection is only accepted when role is
// that superuser.
func checkRole(ctx context.Context, c *pgx.Conn, role string) error {
	var sessionUser, currentUser string
	if err := c.QueryRow(ctx, "SELECT session_user::text, current_user::text").Scan(&sessionUser, &currentUser); err != nil {
		return fmt.Errorf("check role: %w", err)
	}
	if sessionUser != role || currentUser != role {
		return fmt.Errorf("%w: logged in as %q (current_user %q), statements ran as %q", ErrRoleMismatch, sessionUser, currentUser, role)
	}
	return nil
}

// ExplainRequest is one statement to explain.
type ExplainRequest struct {
	// Query is the statement: normally a shape's normalized text, where
	// literals are $n parameters.
	Query string
	// Params are example parameter values in text form (Event.Params),
	// used, in memory only, when their number equals the statement's
	// highest $n; otherwise a generic plan is made. They are never logged.
	Params []string
	// Literal says Query is an example statement as a client sent it, which
	// may hold literal values: the plan's filters are then redacted like
	// those of ModeParams, and error messages are withheld.
	Literal bool
}

// InspectOptions say which scans Inspect looks into further.
type InspectOptions struct {
	// SeqScan decides which filtered sequential scans qualify (table size,
	// selectivity; defaults for unset fields). Only qualifying scans get
	// an index search.
	SeqScan rules.SeqScanConfig
	// MissingIndex.MinCostReduction is the cut a hypothetical index must
	// make to be kept. Default 0.5.
	MissingIndex rules.MissingIndexConfig
	// NoAdvice skips the index advisor.
	NoAdvice bool

	planOnly bool // Explain: no catalog reads at all
}

// Inspection is the result of Inspect: the plan, its sequential scans with
// their tables' facts, and index advice. A plain value owned by the caller.
type Inspection struct {
	// Statement is the checked statement.
	Statement *ExplainableStatement
	// Mode says how parameters were handled.
	Mode ExplainMode
	// ServerVersion is the upstream's major version (15, 16, ...).
	ServerVersion int
	// Plan is the statement's plan; Raw its EXPLAIN output. With
	// ModeParams both may show the example parameter values: keep them in
	// memory, never log them.
	Plan *Plan
	Raw  []byte // the EXPLAIN (FORMAT JSON) text Plan was read from
	// Scans are the plan's filtered sequential scans, one per relation.
	// With ModeParams their Filter has every literal redacted (see
	// RedactLiterals), so it may go into findings.
	Scans []ScanReport
	// HypoPG is true when hypothetical indexes could be used.
	HypoPG bool
}

// ScanReport is one filtered sequential scan with what is known of its
// table.
type ScanReport struct {
	SeqScan
	// Table holds the catalog facts; nil when the relation could not be
	// found (a temporary table of another session, for instance).
	Table *TableInfo
	// Qualifies is true when the scan passes InspectOptions.SeqScan.
	Qualifies bool
	// Advice is the index advisor's result for a qualifying scan; nil when
	// the advisor did not run.
	Advice *IndexAdvice
}

// TableInfo holds a relation's catalog facts.
type TableInfo struct {
	OID    uint32 // pg_class.oid
	Schema string // pg_namespace.nspname
	Name   string // pg_class.relname
	// RelTuples is pg_class.reltuples: the estimated row count (-1 when
	// the table was never vacuumed or analyzed).
	RelTuples float64
	// Columns are the table's live columns.
	Columns []ColumnInfo
	// Indexes are the table's indexes (all kinds).
	Indexes []IndexInfo
	// StatsKnown is true when pg_stat_user_tables had a row; the counters
	// are its cumulative values.
	StatsKnown  bool
	Inserted    int64 // n_tup_ins
	Updated     int64 // n_tup_upd
	Deleted     int64 // n_tup_del
	SeqTupRead  int64 // seq_tup_read
	IdxTupFetch int64 // idx_tup_fetch (0 when NULL)
	// StatsSeconds is the time the counters cover: since the database's
	// statistics were reset, or since the server started when they never
	// were (Postgres 15 keeps counters across clean restarts, so this may
	// be short and the rates high).
	StatsSeconds float64
	// WriteRateWindow and WritesInWindow are the table's current write
	// rate as rows written between two readings of its counters
	// WriteRateWindow seconds apart; filled by the Sampler, which keeps
	// the readings (zero: not measured yet).
	WriteRateWindow float64
	WritesInWindow  int64
}

// WriteShare is rules.WriteShare over the table's counters.
func (t *TableInfo) WriteShare() float64 {
	return rules.WriteShare(t.Inserted, t.Updated, t.Deleted, t.SeqTupRead, t.IdxTupFetch)
}

// ColumnInfo is one table column.
type ColumnInfo struct {
	Num  int16  // pg_attribute.attnum
	Name string // pg_attribute.attname
	Type string // format_type of the column's type and modifier
	// Btree is true when the column's type has a default btree operator
	// class (directly, through its base or binary-coercible type, or as an
	// array, enum, range or composite).
	Btree bool
}

// IndexInfo is one existing index.
type IndexInfo struct {
	Name string // index relation name
	// Keys are the key columns' attribute numbers (0 for an expression),
	// INCLUDE columns excluded.
	Keys    []int16
	Method  string // access method: btree, hash, gin, ...
	Partial bool   // has a WHERE predicate
	Valid   bool   // pg_index.indisvalid
	Unique  bool   // pg_index.indisunique
}

// Explain checks query with CheckExplainable and returns its plan without
// looking further (no catalogs, no advice). See Inspect.
func (e *Explainer) Explain(ctx context.Context, req ExplainRequest) (*Plan, error) {
	in, err := e.Inspect(ctx, req, InspectOptions{NoAdvice: true, planOnly: true})
	if err != nil {
		return nil, err
	}
	return in.Plan, nil
}

// Inspect explains one statement and, for each filtered sequential scan,
// reads the table's facts (pg_class.reltuples, pg_index, pg_attribute,
// pg_stat_user_tables) and, for scans that qualify, runs the index advisor
// (validating candidates with HypoPG where installed). Everything runs in
// one read-only transaction on one connection, rolled back at the end;
// prepared statements and hypothetical indexes are removed afterwards, and
// a connection whose cleanup fails is closed.
//
// Errors: a refused statement wraps ErrNotExplainable (counted as
// skipped); a timeout wraps ErrExplainTimeout; ctx's error when it ends.
func (e *Explainer) Inspect(ctx context.Context, req ExplainRequest, opts InspectOptions) (*Inspection, error) {
	st, err := CheckExplainable(req.Query)
	if err != nil {
		e.skipped.Add(1)
		return nil, err
	}
	// A bound on the whole inspection, beyond the server-side timeouts: a
	// connection that stops answering must not hold the sampler.
	perExplain := e.cfg.StatementTimeout + time.Duration(float64(time.Second)/e.cfg.Rate)
	rctx, cancel := context.WithTimeout(ctx, e.cfg.ConnectTimeout+time.Duration(e.cfg.MaxCandidates+4)*perExplain)
	defer cancel()
	conn, err := e.pool.acquire(rctx)
	if err != nil {
		if ctx.Err() != nil {
			return nil, fmt.Errorf("explainer: %w", ctx.Err())
		}
		if errors.Is(err, ErrRoleMismatch) {
			e.roleMismatch.Add(1)
			e.log.Warn().Err(err).Msg("explain refused: connection is not the statement's role")
			return nil, fmt.Errorf("explainer: %w", err)
		}
		e.errs.Add(1)
		return nil, fmt.Errorf("explainer: connect: %w", err)
	}
	s := &explainSession{e: e, conn: conn.Conn(), st: st, params: req.Params, literal: req.Literal}
	in, err := s.run(rctx, opts)
	discard := s.cleanup()
	if discard {
		e.discarded.Add(1)
	}
	e.pool.release(conn, discard)
	if err != nil {
		if errors.Is(err, ErrRunsUserCode) {
			e.userCode.Add(1)
			return nil, err
		}
		if where, ok := raisedInFunction(err); ok && ctx.Err() == nil {
			// The check missed it, but the planner did run user code: say
			// so, so that the shape is never planned again.
			e.userCode.Add(1)
			if s.mode == ModeParams || s.literal {
				err = &withheldError{err: err}
			}
			e.log.Warn().Str("where", where).Msg("explain ran user-defined code")
			return nil, fmt.Errorf("%w (error raised in %s): %w", ErrRunsUserCode, where, err)
		}
		return nil, e.classify(ctx, err, s.mode == ModeParams || s.literal)
	}
	return in, nil
}

// raisedInFunction reports whether err is a server error raised inside a
// function (PL/pgSQL, SQL or another language: its context names one),
// returning the innermost context line.
func raisedInFunction(err error) (string, bool) {
	var pe *pgconn.PgError
	if !errors.As(err, &pe) || pe.Where == "" {
		return "", false
	}
	first, _, _ := strings.Cut(pe.Where, "\n")
	return first, strings.Contains(pe.Where, "function")
}

// classify counts and logs a failed inspection and wraps timeouts. An
// error caused by ctx ending is returned as is, uncounted.
func (e *Explainer) classify(ctx context.Context, err error, withParams bool) error {
	if ctx.Err() != nil {
		return fmt.Errorf("explainer: %w", ctx.Err())
	}
	var pe *pgconn.PgError
	if errors.As(err, &pe) && (pe.Code == pgerrcode.QueryCanceled || pe.Code == pgerrcode.LockNotAvailable) {
		e.timeouts.Add(1)
		e.log.Warn().Str("sqlstate", pe.Code).Str("error", pe.Message).Msg("explain timed out")
		return fmt.Errorf("%w: %s (SQLSTATE %s)", ErrExplainTimeout, pe.Message, pe.Code)
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	e.errs.Add(1)
	if withParams {
		// Messages such as `invalid input syntax for type integer: "x"`
		// quote parameter values, which are never logged.
		err = &withheldError{err: err}
	}
	ev := e.log.Warn()
	if errors.As(err, &pe) {
		ev = ev.Str("sqlstate", pe.Code)
	}
	ev.Str("error", err.Error()).Msg("explain failed")
	return err
}

// withheldError hides the message of an error from an explain made with
// example parameter values: its text gives the SQLSTATE only. Unwrap
// returns the original error.
type withheldError struct{ err error }

// Error returns the SQLSTATE without the server's message.
func (w *withheldError) Error() string {
	var pe *pgconn.PgError
	if errors.As(w.err, &pe) {
		return "explain with example parameter values failed (SQLSTATE " + pe.Code + "; message withheld)"
	}
	return "explain with example parameter values failed (message withheld)"
}

// Unwrap returns the original error.
func (w *withheldError) Unwrap() error { return w.err }

// ExplainApplicationName is the application_name of the explainer's
// connections (unless its DSN sets one): pgaudit lint skips statements
// logged with it, its own EXPLAINs read back from the Postgres log.
const ExplainApplicationName = "pgaudit-explain"

// explainSession is one Inspect call on one connection.
type explainSession struct {
	e        *Explainer
	conn     *pgx.Conn
	st       *ExplainableStatement
	params   []string
	literal  bool
	mode     ExplainMode
	version  int
	hypo     string // schema of the hypopg extension, "" when unavailable
	inTx     bool
	prepared []string // names to DEALLOCATE after the transaction
	hypoUsed bool
	broken   bool
}

func (s *explainSession) exec(ctx context.Context, sql string) error {
	_, err := s.conn.PgConn().Exec(ctx, sql).ReadAll()
	return err
}

func (s *explainSession) run(ctx context.Context, opts InspectOptions) (*Inspection, error) {
	in, err := s.plan(ctx, opts)
	if err != nil {
		return in, err
	}
	// Planning took a session advisory lock: user code ran. DISCARD ALL
	// releases it; the shape is not planned again.
	var locked bool
	if err := s.conn.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_locks
		WHERE pid = pg_catalog.pg_backend_pid() AND locktype = 'advisory')`).Scan(&locked); err != nil {
		return nil, err
	}
	if locked {
		return nil, fmt.Errorf("%w: planning took an advisory lock", ErrRunsUserCode)
	}
	return in, nil
}

// plan runs the inspection proper: see run.
func (s *explainSession) plan(ctx context.Context, opts InspectOptions) (*Inspection, error) {
	s.version = serverMajor(s.conn.PgConn().ParameterStatus("server_version"))
	switch {
	case s.st.NumParams == 0:
		s.mode = ModePlain
	case len(s.params) == s.st.NumParams:
		s.mode = ModeParams
	case s.version >= 16:
		s.mode = ModeGeneric
	default:
		s.mode = ModeGenericPrepared
	}
	if !opts.NoAdvice && !s.e.cfg.DisableHypoPG && s.e.cfg.AllowCreateExtension {
		s.e.extOnce.Do(func() { s.createExtension(ctx) })
	}

	if err := s.exec(ctx, "BEGIN READ ONLY"); err != nil {
		return nil, err
	}
	s.inTx = true
	setup := "SET LOCAL statement_timeout = " + s.e.stmtTO + "; SET LOCAL lock_timeout = " + s.e.lockTO
	if s.mode == ModeGenericPrepared {
		setup += "; SET LOCAL plan_cache_mode = force_generic_plan"
	}
	if err := s.exec(ctx, setup); err != nil {
		return nil, err
	}
	if !s.e.cfg.skipUserCodeCheck {
		if fn, err := s.userCode(ctx); err != nil {
			return nil, err
		} else if fn != "" {
			return nil, fmt.Errorf("%w: %s", ErrRunsUserCode, fn)
		}
	}
	raw, plan, err := s.explain(ctx)
	if err != nil {
		return nil, err
	}
	in := &Inspection{Statement: s.st, Mode: s.mode, ServerVersion: s.version, Plan: plan, Raw: raw}
	if opts.planOnly {
		return in, nil
	}

	seen := map[string]bool{}
	for _, sc := range plan.SeqScans() {
		key := sc.Schema + "." + sc.Relation
		if sc.Filter == "" || seen[key] {
			continue
		}
		seen[key] = true
		if s.mode == ModeParams || s.literal {
			// The values stand for $1..$n (the bound parameters), then
			// for the statement's literals in order, as pg_query numbers
			// them when it normalizes.
			var vals []string
			if s.mode == ModeParams {
				vals = slices.Clone(s.params)
			}
			if s.literal {
				vals = append(vals, literalValues(s.st.Query)...)
			}
			sc.Filter = RedactLiteralsAs(sc.Filter, vals)
		}
		rep := ScanReport{SeqScan: sc}
		ti, err := s.tableInfo(ctx, sc.Schema, sc.Relation)
		if err != nil {
			return nil, err
		}
		rep.Table = ti
		if ti != nil {
			rep.Qualifies = rules.SeqScanQualifies(opts.SeqScan, ti.RelTuples, sc.Rows)
		}
		in.Scans = append(in.Scans, rep)
	}
	if opts.NoAdvice {
		return in, nil
	}
	for i := range in.Scans {
		rep := &in.Scans[i]
		if !rep.Qualifies || rep.Table == nil {
			continue
		}
		if s.hypo == "" && !s.e.cfg.DisableHypoPG {
			if s.hypo, err = s.hypoSchema(ctx); err != nil {
				return nil, err
			}
		}
		in.HypoPG = s.hypo != ""
		adv, err := s.advise(ctx, rep, plan.TotalCost(), opts)
		if err != nil {
			return nil, err
		}
		rep.Advice = adv
	}
	return in, nil
}

// explain runs the statement's EXPLAIN in the session's mode and parses
// the plan. The transaction must be open.
func (s *explainSession) explain(ctx context.Context) ([]byte, *Plan, error) {
	if err := s.e.limit.wait(ctx); err != nil {
		return nil, nil, err
	}
	const opts = "EXPLAIN (FORMAT JSON, VERBOSE"
	var raw []byte
	switch s.mode {
	case ModeParams:
		// Extended protocol: one statement by construction, values bound
		// as text with types inferred by the server. Values the client
		// sent in binary format are decoded by those types first.
		if HasBinaryParams(s.params) {
			sd, err := s.conn.PgConn().Prepare(ctx, "", opts+") "+s.st.Query, nil)
			if err != nil {
				return nil, nil, err
			}
			p, err := DecodeParams(s.params, sd.ParamOIDs)
			if err != nil {
				return nil, nil, err
			}
			s.params = p
		}
		vals := make([][]byte, len(s.params))
		for i, p := range s.params {
			vals[i] = []byte(p)
		}
		res := s.conn.PgConn().ExecParams(ctx, opts+") "+s.st.Query, vals, nil, nil, nil).Read()
		if res.Err != nil {
			return nil, nil, res.Err
		}
		if len(res.Rows) == 0 || len(res.Rows[0]) == 0 {
			return nil, nil, ErrEmptyPlan
		}
		raw = res.Rows[0][0]
	case ModeGeneric:
		r, err := s.simpleExplain(ctx, opts+", GENERIC_PLAN) "+s.st.Query, "ExplainStmt")
		if err != nil {
			return nil, nil, err
		}
		raw = r
	case ModeGenericPrepared:
		// A fresh prepared statement per explain: a cached generic plan
		// would not see a hypothetical index created after it.
		name := "pgaudit_explain_" + strconv.FormatUint(s.e.seq.Add(1), 10)
		prep := "PREPARE " + name + " AS " + s.st.Query
		if err := verifySingle(prep, "PrepareStmt"); err != nil {
			return nil, nil, err
		}
		s.prepared = append(s.prepared, name)
		if err := s.exec(ctx, prep); err != nil {
			return nil, nil, err
		}
		args := strings.TrimSuffix(strings.Repeat("NULL, ", s.st.NumParams), ", ")
		r, err := s.simpleExplain(ctx, opts+") EXECUTE "+name+"("+args+")", "ExplainStmt")
		if err != nil {
			return nil, nil, err
		}
		raw = r
	default:
		r, err := s.simpleExplain(ctx, opts+") "+s.st.Query, "ExplainStmt")
		if err != nil {
			return nil, nil, err
		}
		raw = r
	}
	plan, err := ParsePlan(raw)
	if err != nil {
		return nil, nil, err
	}
	s.e.run.Add(1)
	return raw, plan, nil
}

// simpleExplain verifies sql is one statement of the wanted kind and runs
// it with the simple protocol, returning the first column of the first row.
func (s *explainSession) simpleExplain(ctx context.Context, sql, want string) ([]byte, error) {
	if err := verifySingle(sql, want); err != nil {
		return nil, err
	}
	res, err := s.conn.PgConn().Exec(ctx, sql).ReadAll()
	if err != nil {
		return nil, err
	}
	if len(res) == 0 || len(res[0].Rows) == 0 || len(res[0].Rows[0]) == 0 {
		return nil, ErrEmptyPlan
	}
	return res[0].Rows[0][0], nil
}

// cleanup ends the transaction and removes session state the explain may
// have left (prepared statements, hypothetical indexes). It reports
// whether the connection must be discarded: when any step fails, the
// connection is closed, which removes that state for certain.
func (s *explainSession) cleanup() (discard bool) {
	if s.conn.IsClosed() {
		return true
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if s.inTx || s.conn.PgConn().TxStatus() != 'I' {
		if err := s.exec(ctx, "ROLLBACK"); err != nil {
			return true
		}
	}
	for _, name := range s.prepared {
		if err := s.exec(ctx, "DEALLOCATE "+name); err != nil {
			var pe *pgconn.PgError
			if !errors.As(err, &pe) || pe.Code != pgerrcode.InvalidSQLStatementName { // never prepared
				return true
			}
		}
	}
	if s.hypoUsed {
		if err := s.exec(ctx, "SELECT "+quoteIdent(s.hypo)+".hypopg_reset()"); err != nil {
			return true
		}
	}
	// Whatever user code the planner may have run despite the check
	// (session advisory locks, set_config(..., false), temporary objects)
	// must not outlive this request.
	if err := s.exec(ctx, "DISCARD ALL"); err != nil {
		return true
	}
	return s.broken || s.conn.PgConn().TxStatus() != 'I'
}

// userCodeSQL finds one function the planner could run for a statement:
// one outside pg_catalog and information_schema, not an extension's, that
// is IMMUTABLE or STABLE (evaluated while planning) or LANGUAGE sql
// (inlined, with its body's calls folded). Candidates: functions named by
// the statement, the functions of operators it uses and of casts to types
// it names (unqualified names: any schema on the search path; qualified:
// that schema), and functions the referenced relations depend on through
// views (recursively), rules, column defaults, policies, constraints and
// index expressions. Arrays: $1/$2 relation schemas/names, $3/$4
// functions, $5/$6 operators, $7/$8 types. It runs as the statement's
// role, inside the read-only transaction.
const userCodeSQL = `WITH RECURSIVE
rels(oid) AS (
	SELECT c.oid FROM unnest($1::text[], $2::text[]) AS r(nsp, rel)
	JOIN pg_catalog.pg_class c ON c.oid = pg_catalog.to_regclass(CASE WHEN r.nsp = '' THEN pg_catalog.quote_ident(r.rel)
		ELSE pg_catalog.quote_ident(r.nsp) || '.' || pg_catalog.quote_ident(r.rel) END)
	UNION
	SELECT d.refobjid FROM rels
	JOIN pg_catalog.pg_rewrite rw ON rw.ev_class = rels.oid
	JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_rewrite'::pg_catalog.regclass AND d.objid = rw.oid
		AND d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass
),
objs(classid, objid) AS (
	SELECT 'pg_catalog.pg_rewrite'::pg_catalog.regclass, rw.oid FROM pg_catalog.pg_rewrite rw JOIN rels ON rw.ev_class = rels.oid
	UNION ALL SELECT 'pg_catalog.pg_attrdef'::pg_catalog.regclass, a.oid FROM pg_catalog.pg_attrdef a JOIN rels ON a.adrelid = rels.oid
	UNION ALL SELECT 'pg_catalog.pg_policy'::pg_catalog.regclass, p.oid FROM pg_catalog.pg_policy p JOIN rels ON p.polrelid = rels.oid
	UNION ALL SELECT 'pg_catalog.pg_constraint'::pg_catalog.regclass, k.oid FROM pg_catalog.pg_constraint k JOIN rels ON k.conrelid = rels.oid
	UNION ALL SELECT 'pg_catalog.pg_class'::pg_catalog.regclass, i.indexrelid FROM pg_catalog.pg_index i JOIN rels ON i.indrelid = rels.oid
),
names(kind, nsp, name) AS (
	SELECT 'f', * FROM unnest($3::text[], $4::text[])
	UNION ALL SELECT 'o', * FROM unnest($5::text[], $6::text[])
	UNION ALL SELECT 't', * FROM unnest($7::text[], $8::text[])
),
funcs(oid) AS (
	SELECT d.refobjid FROM objs JOIN pg_catalog.pg_depend d ON d.classid = objs.classid AND d.objid = objs.objid
		AND d.refclassid = 'pg_catalog.pg_proc'::pg_catalog.regclass
	UNION
	SELECT o.oprcode FROM objs JOIN pg_catalog.pg_depend d ON d.classid = objs.classid AND d.objid = objs.objid
		AND d.refclassid = 'pg_catalog.pg_operator'::pg_catalog.regclass
	JOIN pg_catalog.pg_operator o ON o.oid = d.refobjid
	UNION
	SELECT p.oid FROM names JOIN pg_catalog.pg_proc p ON names.kind = 'f' AND p.proname = names.name
	JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
	WHERE n.nspname = names.nsp OR (names.nsp = '' AND n.nspname = ANY (pg_catalog.current_schemas(true)))
	UNION
	SELECT o.oprcode FROM names JOIN pg_catalog.pg_operator o ON names.kind = 'o' AND o.oprname = names.name
	JOIN pg_catalog.pg_namespace n ON n.oid = o.oprnamespace
	WHERE n.nspname = names.nsp OR (names.nsp = '' AND n.nspname = ANY (pg_catalog.current_schemas(true)))
	UNION
	SELECT c.castfunc FROM names JOIN pg_catalog.pg_type t ON names.kind = 't' AND t.typname = names.name
	JOIN pg_catalog.pg_namespace n ON n.oid = t.typnamespace
	JOIN pg_catalog.pg_cast c ON c.casttarget = t.oid
	WHERE n.nspname = names.nsp OR (names.nsp = '' AND n.nspname = ANY (pg_catalog.current_schemas(true)))
)
SELECT p.oid::pg_catalog.regprocedure::text FROM funcs
JOIN pg_catalog.pg_proc p ON p.oid = funcs.oid
JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
JOIN pg_catalog.pg_language l ON l.oid = p.prolang
WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')
	AND (p.provolatile <> 'v' OR l.lanname = 'sql')
	AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend e WHERE e.classid = 'pg_catalog.pg_proc'::pg_catalog.regclass
		AND e.objid = p.oid AND e.deptype = 'e')
ORDER BY 1 LIMIT 1`

// userCode returns a function (as regprocedure text) the planner could run
// for the statement, or "" when it found none. See userCodeSQL.
func (s *explainSession) userCode(ctx context.Context) (string, error) {
	split := func(qs []qualName) (nsp, name []string) {
		nsp, name = make([]string, 0, len(qs)), make([]string, 0, len(qs))
		for _, q := range qs {
			nsp, name = append(nsp, q.schema), append(name, q.name)
		}
		return nsp, name
	}
	rn, rr := split(s.st.rels)
	fn, ff := split(s.st.funcs)
	on, oo := split(s.st.ops)
	tn, tt := split(s.st.types)
	var fnName string
	err := s.conn.QueryRow(ctx, userCodeSQL, rn, rr, fn, ff, on, oo, tn, tt).Scan(&fnName)
	if errors.Is(err, pgx.ErrNoRows) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("check for user-defined functions: %w", err)
	}
	return fnName, nil
}

// serverMajor parses the major version from server_version ("15.18
// (Debian ...)", "16beta1", "9.6.24").
func serverMajor(v string) int {
	end := 0
	for end < len(v) && v[end] >= '0' && v[end] <= '9' {
		end++
	}
	n, _ := strconv.Atoi(v[:end])
	return n
}

// tableInfo reads a relation's catalog facts; nil (and no error) when the
// relation is not found.
func (s *explainSession) tableInfo(ctx context.Context, schema, name string) (*TableInfo, error) {
	ti := &TableInfo{Schema: schema, Name: name}
	var rt float32
	var err error
	if schema != "" {
		err = s.conn.QueryRow(ctx, `SELECT c.oid, c.reltuples FROM pg_catalog.pg_class c
			JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
			WHERE c.relname = $1 AND n.nspname = $2`, name, schema).Scan(&ti.OID, &rt)
	} else {
		err = s.conn.QueryRow(ctx, `SELECT c.oid, c.reltuples, n.nspname FROM pg_catalog.pg_class c
			JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
			WHERE c.oid = pg_catalog.to_regclass(pg_catalog.quote_ident($1))`, name).Scan(&ti.OID, &rt, &ti.Schema)
	}
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read pg_class for %s: %w", name, err)
	}
	ti.RelTuples = float64(rt)

	rows, err := s.conn.Query(ctx, `SELECT a.attnum, a.attname, pg_catalog.format_type(a.atttypid, a.atttypmod),
		EXISTS (SELECT 1 FROM pg_catalog.pg_opclass oc JOIN pg_catalog.pg_am am ON am.oid = oc.opcmethod
			WHERE am.amname = 'btree' AND oc.opcdefault AND (
				oc.opcintype = bt.oid
				OR (pg_catalog.format_type(oc.opcintype, NULL) = 'anyarray' AND bt.typcategory = 'A')
				OR (pg_catalog.format_type(oc.opcintype, NULL) = 'anyenum' AND bt.typtype = 'e')
				OR (pg_catalog.format_type(oc.opcintype, NULL) = 'anyrange' AND bt.typtype = 'r')
				OR (pg_catalog.format_type(oc.opcintype, NULL) = 'anymultirange' AND bt.typtype = 'm')
				OR (pg_catalog.format_type(oc.opcintype, NULL) = 'record' AND bt.typtype = 'c')
				OR EXISTS (SELECT 1 FROM pg_catalog.pg_cast ca WHERE ca.castsource = bt.oid
					AND ca.casttarget = oc.opcintype AND ca.castmethod = 'b')))
		FROM pg_catalog.pg_attribute a
		JOIN pg_catalog.pg_type t ON t.oid = a.atttypid
		JOIN pg_catalog.pg_type bt ON bt.oid = CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE t.oid END
		WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped
		ORDER BY a.attnum`, ti.OID)
	if err != nil {
		return nil, fmt.Errorf("read pg_attribute for %s: %w", name, err)
	}
	for rows.Next() {
		var c ColumnInfo
		if err := rows.Scan(&c.Num, &c.Name, &c.Type, &c.Btree); err != nil {
			rows.Close()
			return nil, fmt.Errorf("read pg_attribute for %s: %w", name, err)
		}
		ti.Columns = append(ti.Columns, c)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read pg_attribute for %s: %w", name, err)
	}

	rows, err = s.conn.Query(ctx, `SELECT ic.relname, i.indkey::int2[], i.indnkeyatts, am.amname,
			i.indpred IS NOT NULL, i.indisvalid, i.indisunique
		FROM pg_catalog.pg_index i
		JOIN pg_catalog.pg_class ic ON ic.oid = i.indexrelid
		JOIN pg_catalog.pg_am am ON am.oid = ic.relam
		WHERE i.indrelid = $1 ORDER BY ic.relname`, ti.OID)
	if err != nil {
		return nil, fmt.Errorf("read pg_index for %s: %w", name, err)
	}
	for rows.Next() {
		var ix IndexInfo
		var nkey int16
		if err := rows.Scan(&ix.Name, &ix.Keys, &nkey, &ix.Method, &ix.Partial, &ix.Valid, &ix.Unique); err != nil {
			rows.Close()
			return nil, fmt.Errorf("read pg_index for %s: %w", name, err)
		}
		if int(nkey) < len(ix.Keys) {
			ix.Keys = ix.Keys[:nkey]
		}
		ti.Indexes = append(ti.Indexes, ix)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read pg_index for %s: %w", name, err)
	}

	err = s.conn.QueryRow(ctx, `SELECT n_tup_ins, n_tup_upd, n_tup_del,
			COALESCE(seq_tup_read, 0), COALESCE(idx_tup_fetch, 0),
			EXTRACT(epoch FROM pg_catalog.now() - COALESCE(
				(SELECT d.stats_reset FROM pg_catalog.pg_stat_database d WHERE d.datname = pg_catalog.current_database()),
				pg_catalog.pg_postmaster_start_time()))::float8
		FROM pg_catalog.pg_stat_user_tables WHERE relid = $1`, ti.OID).
		Scan(&ti.Inserted, &ti.Updated, &ti.Deleted, &ti.SeqTupRead, &ti.IdxTupFetch, &ti.StatsSeconds)
	switch {
	case err == nil:
		ti.StatsKnown = true
	case errors.Is(err, pgx.ErrNoRows):
	default:
		return nil, fmt.Errorf("read pg_stat_user_tables for %s: %w", name, err)
	}
	return ti, nil
}

// hypoSchema returns the schema HypoPG is installed in, or "" when it is
// not installed in this database.
func (s *explainSession) hypoSchema(ctx context.Context) (string, error) {
	var schema string
	err := s.conn.QueryRow(ctx, `SELECT n.nspname FROM pg_catalog.pg_extension e
		JOIN pg_catalog.pg_namespace n ON n.oid = e.extnamespace WHERE e.extname = 'hypopg'`).Scan(&schema)
	if errors.Is(err, pgx.ErrNoRows) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("look up hypopg: %w", err)
	}
	return schema, nil
}

// createExtension installs HypoPG where it is available but not installed;
// called at most once per Explainer, only with AllowCreateExtension.
func (s *explainSession) createExtension(ctx context.Context) {
	var installed, available bool
	err := s.conn.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_extension WHERE extname = 'hypopg'),
		EXISTS (SELECT 1 FROM pg_catalog.pg_available_extensions WHERE name = 'hypopg')`).Scan(&installed, &available)
	if err != nil || installed || !available {
		if err != nil {
			s.e.log.Warn().Err(err).Msg("check for hypopg")
		}
		return
	}
	err = s.exec(ctx, "BEGIN READ WRITE; CREATE EXTENSION IF NOT EXISTS hypopg; COMMIT")
	if err != nil {
		_ = s.exec(ctx, "ROLLBACK")
		s.e.log.Warn().Err(err).Msg("CREATE EXTENSION hypopg failed (allowed by allow_create_extension); index suggestions stay unvalidated")
		return
	}
	s.e.log.Info().Msg("created extension hypopg (allowed by allow_create_extension)")
}
