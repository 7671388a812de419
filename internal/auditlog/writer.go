// Package auditlog owns pgaudit's JSON-lines audit log (docs/audit-log.md):
// the writer with size-based rotation and SIGHUP reopen, used by the proxy's
// analysis pipeline, and the reader that rebuilds Events and a summary from
// log files, used by lint (querylog) and report. It depends only on the
// event contract (internal/event) and the pure-Go SQL scanner, not on the
// analyzer: the analyzer hands it plain values (Statement, any JSON value
// for stats and findings), so the log readers build without cgo.
package auditlog

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"hash"
	"io"
	"maps"
	mrand "math/rand/v2"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pgaudit-proxy/pgaudit/internal/event"
	"github.com/pgaudit-proxy/pgaudit/internal/sqlscan"
	"github.com/rs/zerolog"
)

// SchemaVersion is the value of the "schema" field of every audit log
// record. It changes only when a field changes meaning or is removed; new
// fields and record types may be added within a version.
const SchemaVersion = 1

// Record types: the value of the "record" field.
const (
	RecordStatement = "statement"
	RecordStats     = "stats"
	RecordFinding   = "finding"
	RecordPool      = "pool"
	RecordDrops     = "drops"
)

// SampleMode selects which statements get a statement record.
type SampleMode string

const (
	// SampleAll writes every statement (the default).
	SampleAll SampleMode = "all"
	// SampleNone writes no statement records (stats, findings, pool and
	// drops records are still written).
	SampleNone SampleMode = "none"
	// SampleRate writes a random fraction SampleRate of statements.
	SampleRate SampleMode = "rate"
	// SampleSlow writes statements whose Duration is at least
	// SlowThreshold.
	SampleSlow SampleMode = "slow"
)

// ParseSampleMode validates a sample mode name; "" means SampleAll.
func ParseSampleMode(s string) (SampleMode, error) {
	switch m := SampleMode(s); m {
	case "":
		return SampleAll, nil
	case SampleAll, SampleNone, SampleRate, SampleSlow:
		return m, nil
	}
	return "", fmt.Errorf("invalid audit sample mode %q: want all, none, rate or slow", s)
}

// Config configures a Log.
type Config struct {
	// Path is the file to append to, or "-" for standard output. Ignored
	// when Writer is set.
	Path string
	// Writer, when set, receives the records instead of Path (no rotation;
	// Reopen does nothing). It need not be safe for concurrent use.
	Writer io.Writer
	// MaxSize rotates the file before a record would take it past this
	// many bytes: path becomes path.1, path.1 becomes path.2, and so on.
	// Zero disables rotation.
	MaxSize int64
	// MaxBackups is how many rotated files are kept (path.1 .. path.N).
	// Default 5; with MaxSize zero it is unused.
	MaxBackups int
	// LiteralKey keys the literal_hash of statement records. Default: 32
	// random bytes per open, never written anywhere (set it only in
	// tests, for reproducible output).
	LiteralKey []byte
	// Sample selects the statements that get a statement record; the zero
	// value means SampleAll.
	Sample SampleMode
	// SampleRate is the fraction (0..1) of statements written in
	// SampleRate mode.
	SampleRate float64
	// SlowThreshold is the minimum duration written in SampleSlow mode.
	SlowThreshold time.Duration
	// LogErrors writes every failed statement whatever the sampling.
	LogErrors bool
	// LogParameters adds the raw statement text ("text") and the bound
	// parameter values ("params") to statement records. Off by default:
	// both may hold secrets.
	LogParameters bool
	// StatsInterval is how often a pipeline writes a stats record; default
	// one minute, negative disables periodic records (the final one at
	// Stop is still written).
	StatsInterval time.Duration
	// StatsTopN is how many shapes a stats record lists by total time
	// (the rest are folded into "other"); default 50, negative lists all.
	StatsTopN int
	// FlushInterval is how often buffered records are written out; default
	// one second. Negative disables buffering (one write per record).
	FlushInterval time.Duration
	// RunID identifies this process's records (stats snapshots are
	// cumulative per run, session ids are unique per run); default 16
	// random hex digits.
	RunID string
	// Now is the clock for "ts", for tests; default time.Now.
	Now func() time.Time
	// Logger receives write errors (throttled). The zero Logger discards.
	Logger zerolog.Logger
	// Mirror, when set, receives a copy of every statement, stats, finding
	// and pool record right after it is written to the file (the OTLP log
	// exporter, internal/otlplog). It is called on the writer's goroutine
	// (analyzer workers, timers), so it must not block; it must not keep
	// the *Statement or the body slices after it returns.
	Mirror Mirror
}

// Mirror receives copies of audit log records as plain values, for
// exporting them elsewhere (OpenTelemetry logs). Its methods are called
// concurrently from analyzer workers and timers, never from the relay path;
// they must return quickly and never block.
type Mirror interface {
	// MirrorStatement gets a statement record: its common fields and the
	// statement. Only the normalized text (st.Query) may leave the process;
	// st.Event.Text and st.Event.Params hold literal values.
	MirrorStatement(h Header, st *Statement)
	// MirrorStats gets a stats record: its sequence number, whether it is
	// the final one, and the JSON body written under "stats".
	MirrorStats(h Header, seq uint64, final bool, body []byte)
	// MirrorFinding gets a finding record's JSON body ("finding").
	MirrorFinding(h Header, body []byte)
	// MirrorPool gets a pool record's JSON body ("pool").
	MirrorPool(h Header, body []byte)
}

// Header holds the fields every audit log record has, for a Mirror.
type Header struct {
	// Time is the record's "ts".
	Time time.Time
	// RunID is the record's "run_id".
	RunID string
}

const (
	defaultMaxBackups    = 5
	defaultStatsInterval = time.Minute
	defaultStatsTopN     = 50
	defaultFlushInterval = time.Second
	auditBufferSize      = 64 << 10
)

// Log writes the JSON-lines audit log described in docs/audit-log.md.
//
// Every method is safe for concurrent use. Methods do file I/O under a lock,
// so they must be called from analyzer workers and timers, never from the
// proxy's relay path. Register a Log with the analyzer's Pipeline
// (PipelineConfig.AuditLog) to get statement and stats records.
type Log struct {
	cfg   Config
	w     *logWriter
	zl    zerolog.Logger
	runID string
	now   func() time.Time
	seq   atomic.Uint64
	// litKey keys literal_hash (random per open, never written), so the
	// hash tells values apart within the log without revealing them.
	litKey [32]byte

	stop     chan struct{}
	flusher  sync.WaitGroup
	closeMu  sync.Mutex
	isClosed bool
}

// Open opens (creating or appending) the audit log and, when
// buffering is on, starts a goroutine that flushes it periodically; Close
// stops it.
func Open(cfg Config) (*Log, error) {
	if cfg.Sample == "" {
		cfg.Sample = SampleAll
	}
	if _, err := ParseSampleMode(string(cfg.Sample)); err != nil {
		return nil, fmt.Errorf("open audit log: %w", err)
	}
	if cfg.SampleRate < 0 || cfg.SampleRate > 1 {
		return nil, fmt.Errorf("open audit log: sample rate %v outside 0..1", cfg.SampleRate)
	}
	if cfg.MaxSize < 0 {
		return nil, fmt.Errorf("open audit log: negative max size %d", cfg.MaxSize)
	}
	if cfg.MaxBackups <= 0 {
		cfg.MaxBackups = defaultMaxBackups
	}
	if cfg.StatsInterval == 0 {
		cfg.StatsInterval = defaultStatsInterval
	}
	if cfg.StatsTopN == 0 {
		cfg.StatsTopN = defaultStatsTopN
	}
	if cfg.FlushInterval == 0 {
		cfg.FlushInterval = defaultFlushInterval
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.RunID == "" {
		var b [8]byte
		_, _ = rand.Read(b[:])
		cfg.RunID = hex.EncodeToString(b[:])
	}
	bufBytes := auditBufferSize
	if cfg.FlushInterval < 0 {
		bufBytes = 0
	}
	logger := cfg.Logger
	onError := func(err error, n uint64) {
		if n <= 3 || n&(n-1) == 0 { // the first few, then powers of two
			logger.Error().Err(err).Uint64("errors_total", n).Msg("audit log write failed")
		}
	}
	w, err := openLogWriter(cfg.Path, cfg.Writer, cfg.MaxSize, cfg.MaxBackups, bufBytes, onError)
	if err != nil {
		return nil, err
	}
	a := &Log{
		cfg:   cfg,
		w:     w,
		zl:    zerolog.New(w),
		runID: cfg.RunID,
		now:   cfg.Now,
		stop:  make(chan struct{}),
	}
	if len(cfg.LiteralKey) > 0 {
		copy(a.litKey[:], cfg.LiteralKey)
	} else {
		_, _ = rand.Read(a.litKey[:])
	}
	if bufBytes > 0 {
		a.flusher.Add(1)
		go a.flushLoop(cfg.FlushInterval)
	}
	return a, nil
}

func (a *Log) flushLoop(every time.Duration) {
	defer a.flusher.Done()
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-a.stop:
			return
		case <-t.C:
			if err := a.w.Flush(); err != nil {
				a.w.fail(err)
			}
		}
	}
}

// RunID returns the run id written on this log's records.
func (a *Log) RunID() string { return a.runID }

// StatsInterval returns the configured interval between stats records
// (negative when periodic records are off).
func (a *Log) StatsInterval() time.Duration { return a.cfg.StatsInterval }

// StatsTopN returns how many shapes a stats record lists (negative: all);
// the pipeline truncates its snapshot to it before WriteStats.
func (a *Log) StatsTopN() int { return a.cfg.StatsTopN }

// WriteErrors returns how many records could not be written.
func (a *Log) WriteErrors() uint64 { return a.w.errs.Load() }

// begin starts a record with the fields every record has.
func (a *Log) begin(record string) *zerolog.Event { return a.beginAt(record, a.now()) }

// beginAt is begin with the record's time given.
func (a *Log) beginAt(record string, now time.Time) *zerolog.Event {
	var ts [40]byte
	return a.zl.Log().
		Int("schema", SchemaVersion).
		Bytes("ts", appendTime(ts[:0], now)).
		Str("record", record).
		Str("run_id", a.runID)
}

func formatTime(t time.Time) string { return t.UTC().Format(time.RFC3339Nano) }

// appendTime is formatTime without the allocation (statement records are
// written once per statement).
func appendTime(dst []byte, t time.Time) []byte { return t.UTC().AppendFormat(dst, time.RFC3339Nano) }

// Sampled reports whether ev gets a statement record under the configured
// sampling (session-state events and, with LogErrors, failed statements
// always do).
func (a *Log) Sampled(ev *event.Event) bool {
	if ev.Kind == event.KindSessionState {
		return true
	}
	if a.cfg.LogErrors && ev.SQLState != "" {
		return true
	}
	switch a.cfg.Sample {
	case SampleNone:
		return false
	case SampleRate:
		return a.cfg.SampleRate > 0 && (a.cfg.SampleRate >= 1 || mrand.Float64() < a.cfg.SampleRate)
	case SampleSlow:
		return ev.Duration >= a.cfg.SlowThreshold
	default:
		return true
	}
}

// Statement is what a statement record holds besides the Event: the
// analyzer's view of it. The analyzer's pipeline fills it from its analyzed
// event; the Log keeps nothing of it after WriteStatement returns.
type Statement struct {
	// Event is the statement as the proxy saw it.
	Event *event.Event
	// HasShape says the analyzer had a query shape for the event: only
	// then are Fingerprint, Query and Fallback written.
	HasShape bool
	// Fingerprint and Query are the shape's fingerprint and normalized
	// text; Fallback marks a shape from the fallback normalizer.
	Fingerprint event.Fingerprint
	Query       string
	Fallback    bool
	// TraceParent is the event's W3C traceparent, from the event or from
	// its sqlcommenter comment.
	TraceParent string
	// Tags and Ignore are the statement's sqlcommenter tags and
	// pgaudit:ignore directives.
	Tags   map[string]string
	Ignore []string
}

// WriteStatement writes a statement record, whatever the sampling (see
// Sampled). The record carries the normalized text only; the raw text and
// parameter values are added only with LogParameters.
func (a *Log) WriteStatement(an *Statement) {
	ev := an.Event
	var scratch [40]byte
	ts := a.now()
	e := a.beginAt(RecordStatement, ts).
		Str("kind", ev.Kind.String()).
		Uint64("session_id", ev.SessionID).
		Uint64("tx_seq", ev.TxSeq).
		Bool("in_transaction", ev.InTransaction).
		Str("database", ev.Database).
		Str("user", ev.User).
		Str("application_name", ev.ApplicationName)
	if ev.ClientAddr != "" {
		e = e.Str("client_addr", ev.ClientAddr)
	}
	if !ev.Start.IsZero() {
		e = e.Bytes("start", appendTime(scratch[:0], ev.Start))
	}
	e = e.Int64("duration_us", ev.Duration.Microseconds()).
		Int64("wait_us", ev.Wait.Microseconds()).
		Str("command", ev.Command).
		Int64("rows", ev.Rows)
	if ev.SQLState != "" {
		e = e.Str("sqlstate", ev.SQLState)
	}
	if an.HasShape {
		e = e.Bytes("fingerprint", an.Fingerprint.AppendHex(scratch[:0])).Str("query", an.Query)
		if an.Fallback {
			e = e.Bool("fallback", true)
		}
	}
	if ev.ParamHash != 0 {
		e = e.Bytes("param_hash", event.Fingerprint(ev.ParamHash).AppendHex(scratch[:0]))
	}
	if ev.NumParams != 0 {
		e = e.Int("num_params", ev.NumParams)
	}
	if ev.ParamHash == 0 && ev.NumParams == 0 && ev.Kind == event.KindStatement {
		if h := literalHash(&a.litKey, ev.Text); h != 0 {
			e = e.Bytes("literal_hash", event.Fingerprint(h).AppendHex(scratch[:0]))
		}
	}
	if an.TraceParent != "" {
		e = e.Str("traceparent", an.TraceParent)
	}
	e = e.Str("protocol", ev.Protocol.String())
	if ev.Detail != "" {
		e = e.Str("detail", ev.Detail)
	}
	if len(an.Tags) > 0 {
		d := zerolog.Dict()
		for _, k := range slices.Sorted(maps.Keys(an.Tags)) {
			d = d.Str(k, an.Tags[k])
		}
		e = e.Dict("tags", d)
	}
	if len(an.Ignore) > 0 {
		e = e.Strs("ignore", an.Ignore)
	}
	if a.cfg.LogParameters {
		e = e.Str("text", ev.Text)
		if ev.Params != nil {
			e = e.Strs("params", loggableParams(ev.Params))
		}
	}
	e.Send()
	if a.cfg.Mirror != nil {
		a.cfg.Mirror.MirrorStatement(Header{Time: ts, RunID: a.runID}, an)
	}
}

// WriteStats writes a stats record with v (any value encoding/json can
// marshal, normally the analyzer's statistics snapshot truncated to
// StatsTopN shapes) under "stats", with a sequence number increasing per
// Log. Stats snapshots are cumulative since the run started; final marks
// the one written at shutdown, after which the log is flushed.
func (a *Log) WriteStats(v any, final bool) error {
	body, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("write stats record: %w", err)
	}
	ts, seq := a.now(), a.seq.Add(1)
	a.beginAt(RecordStats, ts).
		Uint64("seq", seq).
		Bool("final", final).
		RawJSON("stats", body).
		Send()
	if a.cfg.Mirror != nil {
		a.cfg.Mirror.MirrorStats(Header{Time: ts, RunID: a.runID}, seq, final, body)
	}
	if final {
		return a.Flush()
	}
	return nil
}

// WriteFinding writes a finding record with v (any value encoding/json can
// marshal, normally a rules finding) under "finding". It is for the rules
// engine, called from analyzer workers or timers.
func (a *Log) WriteFinding(v any) error {
	body, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("write finding record: %w", err)
	}
	ts := a.now()
	a.beginAt(RecordFinding, ts).RawJSON("finding", body).Send()
	if a.cfg.Mirror != nil {
		a.cfg.Mirror.MirrorFinding(Header{Time: ts, RunID: a.runID}, body)
	}
	return nil
}

// WritePool writes a pool record with v (the pooler's pool statistics, any
// value encoding/json can marshal) under "pool". Call it from the pooler's
// statistics timer, not from the relay path.
func (a *Log) WritePool(v any) error {
	body, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("write pool record: %w", err)
	}
	ts := a.now()
	a.beginAt(RecordPool, ts).RawJSON("pool", body).Send()
	if a.cfg.Mirror != nil {
		a.cfg.Mirror.MirrorPool(Header{Time: ts, RunID: a.runID}, body)
	}
	return nil
}

// WriteDrops writes a drops record: delta events were dropped since the
// last one, total since the run started.
func (a *Log) WriteDrops(delta, total uint64) {
	a.begin(RecordDrops).
		Str("source", "analyzer_queue").
		Uint64("dropped", delta).
		Uint64("dropped_total", total).
		Send()
}

// Flush writes buffered records out.
func (a *Log) Flush() error { return a.w.Flush() }

// Reopen flushes and reopens the log file at its path, for logrotate's
// "move then signal" (the proxy calls it on SIGHUP). A no-op for standard
// output and Writer.
func (a *Log) Reopen() error { return a.w.Reopen() }

// Close flushes and closes the log and stops the flush goroutine. Records
// written after Close are counted as write errors. Close is idempotent.
func (a *Log) Close() error {
	a.closeMu.Lock()
	if a.isClosed {
		a.closeMu.Unlock()
		return nil
	}
	a.isClosed = true
	a.closeMu.Unlock()
	close(a.stop)
	a.flusher.Wait()
	return a.w.Close()
}

// IgnoreDirective is the comment word that suppresses rules for one
// statement; it must equal analyzer.IgnoreDirective (a test checks it). The
// reader writes it back into rebuilt statements' text.
const IgnoreDirective = "pgaudit:ignore"

// annotationComments renders annotations as comments to append to a
// statement's text, so that an Event rebuilt from an audit log carries its
// pgaudit:ignore directives and sqlcommenter tags in Text, as the original
// statement did. The normalized text is unchanged by them.
func annotationComments(ignore []string, tags map[string]string) string {
	var b strings.Builder
	if len(ignore) > 0 {
		b.WriteString(" /* " + IgnoreDirective)
		if !slices.Contains(ignore, "*") {
			b.WriteByte(' ')
			b.WriteString(strings.Join(ignore, ","))
		}
		b.WriteString(" */")
	}
	if len(tags) > 0 {
		b.WriteString(" /*")
		for i, k := range slices.Sorted(maps.Keys(tags)) {
			if i > 0 {
				b.WriteByte(',')
			}
			b.WriteString(url.PathEscape(k))
			b.WriteString("='")
			b.WriteString(strings.ReplaceAll(url.PathEscape(tags[k]), "'", `\'`))
			b.WriteByte('\'')
		}
		b.WriteString("*/")
	}
	return b.String()
}

func parseHexUint(s string) (uint64, error) {
	v, err := strconv.ParseUint(s, 16, 64)
	if err != nil {
		return 0, fmt.Errorf("invalid hex value %q: %w", s, err)
	}
	return v, nil
}

// literalHash returns a keyed hash (HMAC-SHA-256, 64 bits) of the literal
// values of a statement, in order, or 0 when it has none. Statements of
// one shape with other literals get other hashes, so lint can count the
// distinct values of a simple-protocol N+1 loop from the audit log as the
// proxy does from the statements; the values cannot be recovered without
// the key, which is never written.
func literalHash(key *[32]byte, text string) uint64 {
	var m hash.Hash
	l := sqlscan.New(text)
	for {
		kind, s, e, ok := l.Next()
		if !ok {
			break
		}
		if kind != sqlscan.String && kind != sqlscan.Number {
			continue
		}
		if m == nil {
			m = hmac.New(sha256.New, key[:])
		}
		m.Write([]byte(text[s:e]))
		m.Write([]byte{0})
	}
	if m == nil {
		return 0
	}
	return max(binary.BigEndian.Uint64(m.Sum(nil)), 1)
}

// loggableParams renders params for the audit log: binary-format values as
// \x followed by their bytes in hex (a NUL byte is no text).
func loggableParams(params []string) []string {
	if !slices.ContainsFunc(params, func(p string) bool { return strings.HasPrefix(p, event.BinaryParamPrefix) }) {
		return params
	}
	out := make([]string, len(params))
	for i, p := range params {
		if raw, ok := strings.CutPrefix(p, event.BinaryParamPrefix); ok {
			out[i] = `\x` + hex.EncodeToString([]byte(raw))
		} else {
			out[i] = p
		}
	}
	return out
}
