package auditlog

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/pgaudit-proxy/pgaudit/internal/event"
)

// BadLine is an audit log line that could not be used.
type BadLine struct {
	// File is the name given to Reader.Read.
	File string `json:"file,omitempty"`
	// Line is the 1-based line number.
	Line int `json:"line"`
	// Err says what is wrong with it.
	Err string `json:"error"`
}

// Summary is what reading audit logs produced besides events.
type Summary struct {
	// Lines counts non-empty lines read.
	Lines int `json:"lines"`
	// Statements, StatsRecords, Findings, Pools and DropRecords count
	// records by type; Unknown counts records of a type this version does
	// not know (skipped, for forward compatibility).
	Statements   int `json:"statements"`
	StatsRecords int `json:"stats_records"`
	Findings     int `json:"findings"`
	Pools        int `json:"pools"`
	DropRecords  int `json:"drop_records"`
	Unknown      int `json:"unknown"`
	// Dropped sums the "dropped" counts of drops records: events the proxy
	// never analyzed.
	Dropped uint64 `json:"dropped"`
	// Runs lists the run ids seen, in order of first appearance.
	Runs []string `json:"runs"`
	// RunStats holds the "stats" field of the latest stats record of each
	// run that had one (stats records are cumulative per run), in the order
	// of Runs. The analyzer decodes and merges them
	// (analyzer.MergeAuditStats).
	RunStats []json.RawMessage `json:"-"`
	// BadLines holds the first MaxBadLines unusable lines (invalid JSON,
	// unsupported schema, bad field values); BadLineCount counts them all.
	BadLines     []BadLine `json:"bad_lines,omitempty"`
	BadLineCount int       `json:"bad_line_count"`
}

// MaxBadLines bounds Summary.BadLines.
const MaxBadLines = 100

// maxAuditLine bounds one audit log line; longer lines are reported bad.
// A variable for tests.
var maxAuditLine = 64 << 20

// Reader rebuilds events and statistics from one or more audit log
// files (for example a log and its rotated predecessors) so that lint mode
// can analyze what a proxy saw. Statement records become Events with
// Protocol ProtocolLog, Text set to the normalized query (or the raw text
// when the proxy logged parameters) plus comments carrying the statement's
// pgaudit:ignore directives and sqlcommenter tags, and Fingerprint set, so
// re-analysis yields the proxy's shapes. Session ids of the second and later
// runs are offset by run<<48 so sessions of different processes stay apart.
//
// An Reader is not safe for concurrent use.
type Reader struct {
	// OnEvent receives each rebuilt Event in file order; nil discards them.
	// An error stops Read, which returns it wrapped.
	OnEvent func(*event.Event) error
	// OnFinding and OnPool, when set, receive the raw JSON of the
	// "finding" and "pool" fields of those records.
	OnFinding func(json.RawMessage) error
	OnPool    func(json.RawMessage) error

	sum    Summary
	runIdx map[string]uint64
	latest map[string]*statsAt
}

type statsAt struct {
	seq   uint64
	stats json.RawMessage
}

// auditRecord is the union of every record's fields.
type auditRecord struct {
	Schema *int   `json:"schema"`
	Record string `json:"record"`
	RunID  string `json:"run_id"`

	Kind            string            `json:"kind"`
	SessionID       uint64            `json:"session_id"`
	TxSeq           uint64            `json:"tx_seq"`
	InTransaction   bool              `json:"in_transaction"`
	Database        string            `json:"database"`
	User            string            `json:"user"`
	ApplicationName string            `json:"application_name"`
	ClientAddr      string            `json:"client_addr"`
	Start           *time.Time        `json:"start"`
	DurationUS      int64             `json:"duration_us"`
	WaitUS          int64             `json:"wait_us"`
	Command         string            `json:"command"`
	Rows            *int64            `json:"rows"`
	SQLState        string            `json:"sqlstate"`
	Fingerprint     string            `json:"fingerprint"`
	Query           string            `json:"query"`
	ParamHash       string            `json:"param_hash"`
	LiteralHash     string            `json:"literal_hash"`
	NumParams       int               `json:"num_params"`
	TraceParent     string            `json:"traceparent"`
	Protocol        string            `json:"protocol"`
	Detail          string            `json:"detail"`
	Tags            map[string]string `json:"tags"`
	Ignore          []string          `json:"ignore"`
	Text            *string           `json:"text"`
	Params          []string          `json:"params"`

	Seq   uint64          `json:"seq"`
	Final bool            `json:"final"`
	Stats json.RawMessage `json:"stats"`

	Dropped uint64 `json:"dropped"`

	Finding json.RawMessage `json:"finding"`
	Pool    json.RawMessage `json:"pool"`
}

func (r *Reader) bad(file string, line int, err error) {
	r.sum.BadLineCount++
	if len(r.sum.BadLines) < MaxBadLines {
		r.sum.BadLines = append(r.sum.BadLines, BadLine{File: file, Line: line, Err: err.Error()})
	}
}

// Read reads one audit log stream; name labels its bad lines. Lines that are
// not valid JSON or not usable records are counted and reported in the
// summary, not fatal. Read returns an error only for an I/O error or an
// error from a callback.
func (r *Reader) Read(name string, rd io.Reader) error {
	if r.runIdx == nil {
		r.runIdx = make(map[string]uint64)
		r.latest = make(map[string]*statsAt)
	}
	br := bufio.NewReaderSize(rd, 256<<10)
	var long []byte
	tooLong := false
	lineNo := 0
	for {
		chunk, err := br.ReadSlice('\n')
		if errors.Is(err, bufio.ErrBufferFull) {
			if !tooLong && len(long)+len(chunk) <= maxAuditLine {
				long = append(long, chunk...)
			} else {
				tooLong, long = true, long[:0] // keep skipping to the newline
			}
			continue
		}
		line := chunk
		if len(long) > 0 {
			line = append(long, chunk...)
		}
		long = long[:0]
		if len(line) > maxAuditLine {
			tooLong = true
		}
		if len(line) > 0 || tooLong {
			lineNo++
			if tooLong {
				r.sum.Lines++
				r.bad(name, lineNo, fmt.Errorf("line longer than %d bytes", maxAuditLine))
			} else if perr := r.line(name, lineNo, line); perr != nil {
				return perr
			}
			tooLong = false
		}
		if err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return fmt.Errorf("read audit log %s: %w", name, err)
		}
	}
}

// line handles one line; it returns only callback errors.
func (r *Reader) line(file string, n int, line []byte) error {
	line = bytes.TrimSpace(line)
	if len(line) == 0 {
		return nil
	}
	r.sum.Lines++
	var rec auditRecord
	if err := json.Unmarshal(line, &rec); err != nil {
		r.bad(file, n, fmt.Errorf("invalid JSON: %w", err))
		return nil
	}
	if rec.Schema == nil {
		r.bad(file, n, errors.New("not an audit log record: no schema field"))
		return nil
	}
	if *rec.Schema != SchemaVersion {
		r.bad(file, n, fmt.Errorf("unsupported schema version %d", *rec.Schema))
		return nil
	}
	idx, ok := r.runIdx[rec.RunID]
	if !ok {
		idx = uint64(len(r.runIdx))
		r.runIdx[rec.RunID] = idx
		r.sum.Runs = append(r.sum.Runs, rec.RunID)
	}
	switch rec.Record {
	case RecordStatement:
		ev, err := rec.event(idx)
		if err != nil {
			r.bad(file, n, err)
			return nil
		}
		r.sum.Statements++
		if r.OnEvent != nil {
			if err := r.OnEvent(ev); err != nil {
				return fmt.Errorf("%s:%d: %w", file, n, err)
			}
		}
	case RecordStats:
		if len(rec.Stats) == 0 || rec.Stats[0] != '{' {
			r.bad(file, n, errors.New("stats record: no stats object"))
			return nil
		}
		r.sum.StatsRecords++
		if cur := r.latest[rec.RunID]; cur == nil || rec.Seq >= cur.seq {
			r.latest[rec.RunID] = &statsAt{seq: rec.Seq, stats: bytes.Clone(rec.Stats)}
		}
	case RecordFinding:
		r.sum.Findings++
		if r.OnFinding != nil && rec.Finding != nil {
			if err := r.OnFinding(rec.Finding); err != nil {
				return fmt.Errorf("%s:%d: %w", file, n, err)
			}
		}
	case RecordPool:
		r.sum.Pools++
		if r.OnPool != nil && rec.Pool != nil {
			if err := r.OnPool(rec.Pool); err != nil {
				return fmt.Errorf("%s:%d: %w", file, n, err)
			}
		}
	case RecordDrops:
		r.sum.DropRecords++
		r.sum.Dropped += rec.Dropped
	default:
		r.sum.Unknown++
	}
	return nil
}

// event rebuilds the Event of a statement record.
func (rec *auditRecord) event(run uint64) (*event.Event, error) {
	ev := &event.Event{
		Protocol:        event.ProtocolLog,
		Detail:          rec.Detail,
		SessionID:       rec.SessionID | run<<48,
		TxSeq:           rec.TxSeq,
		InTransaction:   rec.InTransaction,
		Database:        rec.Database,
		User:            rec.User,
		ApplicationName: rec.ApplicationName,
		ClientAddr:      rec.ClientAddr,
		Duration:        time.Duration(rec.DurationUS) * time.Microsecond,
		Wait:            time.Duration(rec.WaitUS) * time.Microsecond,
		Command:         rec.Command,
		Rows:            -1,
		SQLState:        rec.SQLState,
		NumParams:       rec.NumParams,
		Params:          rec.Params,
		TraceParent:     rec.TraceParent,
	}
	switch rec.Kind {
	case "", "statement":
		ev.Kind = event.KindStatement
	case "session_state":
		ev.Kind = event.KindSessionState
	default:
		return nil, fmt.Errorf("statement record: unknown kind %q", rec.Kind)
	}
	if rec.Start != nil {
		ev.Start = *rec.Start
	}
	if rec.Rows != nil {
		ev.Rows = *rec.Rows
	}
	if rec.Fingerprint != "" {
		fp, err := event.ParseFingerprint(rec.Fingerprint)
		if err != nil {
			return nil, fmt.Errorf("statement record: %w", err)
		}
		ev.Fingerprint = fp
	}
	if rec.ParamHash != "" {
		h, err := parseHexUint(rec.ParamHash)
		if err != nil {
			return nil, fmt.Errorf("statement record: param_hash: %w", err)
		}
		ev.ParamHash = h
	}
	if rec.LiteralHash != "" && rec.NumParams == 0 && ev.ParamHash == 0 {
		// Simple protocol: the literal values' hash stands for the
		// parameters (NumParams stays 0).
		h, err := parseHexUint(rec.LiteralHash)
		if err != nil {
			return nil, fmt.Errorf("statement record: literal_hash: %w", err)
		}
		ev.ParamHash = h
	}
	switch {
	case rec.Text != nil:
		ev.Text = *rec.Text // the raw text still has its comments
	case rec.Query != "":
		ev.Text = rec.Query + annotationComments(rec.Ignore, rec.Tags)
	}
	return ev, nil
}

// Summary returns the counts so far and the latest stats record of each
// run. It may be called more than once.
func (r *Reader) Summary() *Summary {
	sum := r.sum
	sum.Runs = append([]string(nil), r.sum.Runs...)
	sum.BadLines = append([]BadLine(nil), r.sum.BadLines...)
	for _, id := range r.sum.Runs {
		if s := r.latest[id]; s != nil {
			sum.RunStats = append(sum.RunStats, s.stats)
		}
	}
	return &sum
}

// Read reads one audit log stream, passing each rebuilt Event to onEvent
// (nil discards them), and returns the summary. See Reader for several
// files.
func Read(rd io.Reader, onEvent func(*event.Event) error) (*Summary, error) {
	r := &Reader{OnEvent: onEvent}
	if err := r.Read("", rd); err != nil {
		return nil, err
	}
	return r.Summary(), nil
}
