// Package querylog reads query logs into Events (internal/event) for pgaudit lint:
// Postgres stderr logs (any log_line_prefix with a time and a process or
// session id), csvlog, jsonlog, and pgaudit's own audit log (through
// auditlog.Reader). Inputs may be gzip-compressed and "-" reads
// standard input.
//
// Statements come from log_min_duration_statement ("duration: ... ms
// statement: ...", "... execute <name>: ...") and from log_statement
// ("statement: ...", "execute <name>: ..."). With both settings on, the
// statement line and its later duration line are paired into one event.
// Parse and bind steps of the extended protocol and resumed portals
// ("execute fetch from") are skipped; an execute's DETAIL parameters give
// the event's ParamHash and NumParams. A failed statement (an ERROR with its
// STATEMENT) becomes an event with SQLState set when the log records the
// SQLSTATE (csvlog, jsonlog, a prefix with %e, or log_error_verbosity =
// verbose).
//
// Reading streams: an input is cut into chunks at record boundaries, chunks
// are parsed on several goroutines, and a single stage puts statements
// together per session in log order. Memory stays bounded by the chunk size
// times the number of workers plus the state of the sessions in progress.
package querylog

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pgaudit-proxy/pgaudit/internal/auditlog"
	"github.com/pgaudit-proxy/pgaudit/internal/event"
)

// Format is a log format.
type Format uint8

const (
	// FormatAuto detects the format of each input from its first lines.
	FormatAuto Format = iota
	// FormatStderr is Postgres's stderr log (log_destination = 'stderr'),
	// lines starting with log_line_prefix.
	FormatStderr
	// FormatCSV is Postgres's csvlog.
	FormatCSV
	// FormatJSON is Postgres's jsonlog (PostgreSQL 15 and later).
	FormatJSON
	// FormatAudit is pgaudit's own JSON-lines audit log.
	FormatAudit
)

// String returns the name ParseFormat accepts.
func (f Format) String() string {
	switch f {
	case FormatAuto:
		return "auto"
	case FormatStderr:
		return "stderr"
	case FormatCSV:
		return "csvlog"
	case FormatJSON:
		return "jsonlog"
	case FormatAudit:
		return "audit"
	}
	return "unknown"
}

// MarshalText encodes the format as its name.
func (f Format) MarshalText() ([]byte, error) { return []byte(f.String()), nil }

// ParseFormat parses a --format value: auto, stderr, csvlog (or csv),
// jsonlog (or json) and audit.
func ParseFormat(s string) (Format, error) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "", "auto":
		return FormatAuto, nil
	case "stderr", "log", "text":
		return FormatStderr, nil
	case "csvlog", "csv":
		return FormatCSV, nil
	case "jsonlog", "json":
		return FormatJSON, nil
	case "audit", "pgaudit":
		return FormatAudit, nil
	}
	return FormatAuto, fmt.Errorf("unknown log format %q (known: %s)", s, knownFormats)
}

const knownFormats = "auto, stderr, csvlog, jsonlog, audit"

// ErrUnknownFormat is wrapped by the error Read returns for an input of
// which no line reads as the detected or given format.
var ErrUnknownFormat = errors.New("no line reads as a known log format")

// Input is one log to read.
type Input struct {
	// Name is a file path, or "-" for standard input. It labels malformed
	// lines and errors.
	Name string
	// R, when not nil, is read instead of opening Name. Read does not
	// close it.
	R io.Reader
	// Size is the size of R in bytes for progress reports; 0 when unknown.
	Size int64
}

// Files returns the inputs for file names ("-" is standard input).
func Files(names ...string) []Input {
	in := make([]Input, len(names))
	for i, n := range names {
		in[i] = Input{Name: n}
	}
	return in
}

// Options configure Read. The zero value detects everything.
type Options struct {
	// Format forces the format of every input; FormatAuto detects it per
	// input.
	Format Format
	// Prefix is the log_line_prefix of stderr logs. Empty detects it among
	// KnownPrefixes.
	Prefix string
	// KeepParams keeps parameter values (from DETAIL: parameters: ...) in
	// Event.Params. They are hashed either way.
	KeepParams bool
	// Workers is the number of parse goroutines; 0 means GOMAXPROCS.
	Workers int
	// ChunkSize is how many bytes a worker parses at a time; 0 means 1 MiB.
	ChunkSize int
	// MaxRecordBytes bounds one log entry (a statement can span many
	// lines); a longer one is reported malformed and skipped. 0 means
	// 64 MiB.
	MaxRecordBytes int
	// Location interprets time zone abbreviations the reader does not know
	// (it knows UTC, numeric offsets and common abbreviations); nil is UTC.
	Location *time.Location
	// Progress, when set, is called after each chunk with the bytes read
	// so far from all inputs (compressed bytes for gzip files) and their
	// total size (-1 when an input's size is unknown). It runs on the
	// goroutine that called Read, as emit does.
	Progress func(read, total int64)
	// Stdin is read for the input "-"; nil means os.Stdin.
	Stdin io.Reader
}

func (o *Options) defaults() {
	if o.Workers <= 0 {
		o.Workers = runtime.GOMAXPROCS(0)
	}
	if o.ChunkSize <= 0 {
		o.ChunkSize = 1 << 20
	}
	if o.MaxRecordBytes <= 0 {
		o.MaxRecordBytes = 64 << 20
	}
	if o.MaxRecordBytes < 2*o.ChunkSize {
		o.MaxRecordBytes = 2 * o.ChunkSize
	}
	if o.Stdin == nil {
		o.Stdin = os.Stdin
	}
}

// MaxMalformed bounds Summary.Malformed.
const MaxMalformed = 10

// LineError is a line that could not be read.
type LineError struct {
	File string `json:"file,omitempty"`
	// Line is the 1-based number of the entry's first line.
	Line int64  `json:"line"`
	Err  string `json:"error"`
}

// Error returns "file:line: error".
func (e LineError) Error() string {
	if e.File == "" {
		return fmt.Sprintf("line %d: %s", e.Line, e.Err)
	}
	return fmt.Sprintf("%s:%d: %s", e.File, e.Line, e.Err)
}

// FileSummary describes one input.
type FileSummary struct {
	Name   string `json:"name"`
	Format Format `json:"format"`
	// Prefix is the log_line_prefix used for a stderr log.
	Prefix string `json:"prefix,omitempty"`
	Gzip   bool   `json:"gzip,omitempty"`
	// Bytes counts the bytes read (compressed, for gzip).
	Bytes int64 `json:"bytes"`
	Lines int64 `json:"lines"`
}

// Summary is what Read found besides events.
type Summary struct {
	// Format is the format of the first input (the one given, or the one
	// detected); Files has each input's.
	Format Format `json:"format"`
	// Prefix is the log_line_prefix of the first stderr input.
	Prefix string        `json:"prefix,omitempty"`
	Files  []FileSummary `json:"files"`
	// Lines counts the lines read.
	Lines int64 `json:"lines"`
	// Statements counts the events emitted; Sessions the distinct
	// sessions among them.
	Statements int64 `json:"statements"`
	Sessions   int64 `json:"sessions"`
	// Skipped counts well-formed log entries that carry no statement
	// (connections, checkpoints, parse and bind steps, ...).
	Skipped int64 `json:"skipped"`
	// Malformed holds the first MaxMalformed lines that did not read as
	// their input's format; MalformedCount counts them all.
	Malformed      []LineError `json:"malformed,omitempty"`
	MalformedCount int64       `json:"malformed_count"`
	// ErrorsWithoutSQLState counts failed statements whose log did not
	// record the SQLSTATE (a stderr log_line_prefix without %e); their
	// events have an empty SQLState.
	ErrorsWithoutSQLState int64 `json:"errors_without_sqlstate,omitempty"`
	// Audit is the audit log reader's summary (with the proxy's merged
	// statistics) when an input was a pgaudit audit log.
	Audit *auditlog.Summary `json:"-"`
}

// reader is the state of one Read call.
type reader struct {
	opts   Options
	sum    Summary
	asm    *assembler
	emit   func(*event.Event)
	prefix *Prefix // from Options.Prefix

	base, total int64
	audit       *auditlog.Reader
}

// Read reads inputs in order and calls emit with each statement event. emit
// is called from the goroutine that called Read, one event at a time, and
// owns each event. The events of one session reach it in log order; across
// sessions the order is only roughly the log's, because a statement whose
// InTransaction depends on the session's next statement (do they share a
// vxid?) waits for it or for the session's end.
// Sessions carry over from one input to the next (a log and its rotated
// successor). Read returns an error for an input that cannot be read, for
// an input of which no line reads as the given or detected format (it
// wraps ErrUnknownFormat), and when ctx is done; malformed lines are only
// counted in the Summary.
func Read(ctx context.Context, inputs []Input, opts Options, emit func(*event.Event)) (Summary, error) {
	opts.defaults()
	if emit == nil {
		emit = func(*event.Event) {}
	}
	r := &reader{opts: opts, emit: emit}
	r.asm = newAssembler(&r.opts, &r.sum, emit)
	if opts.Prefix != "" {
		p, err := CompilePrefix(opts.Prefix)
		if err != nil {
			return r.sum, err
		}
		r.prefix = p
	}
	for _, in := range inputs {
		switch {
		case in.R != nil:
			if in.Size <= 0 {
				r.total = -1
			} else if r.total >= 0 {
				r.total += in.Size
			}
		case in.Name == "-":
			r.total = -1
		default:
			if st, err := os.Stat(in.Name); err == nil && r.total >= 0 && st.Mode().IsRegular() {
				r.total += st.Size()
			} else {
				r.total = -1
			}
		}
	}
	for _, in := range inputs {
		if err := r.readInput(ctx, in); err != nil {
			return r.sum, err
		}
	}
	r.asm.finish()
	if err := r.finishAudit(); err != nil {
		return r.sum, err
	}
	if r.opts.Progress != nil {
		r.opts.Progress(r.base, r.total)
	}
	return r.sum, nil
}

func (r *reader) progress(pos int64) {
	if r.opts.Progress != nil {
		r.opts.Progress(r.base+pos, r.total)
	}
}

// openInput is an input being read.
type openInput struct {
	name   string
	r      io.Reader // decompressed
	read   atomic.Int64
	closer io.Closer
	once   sync.Once
	fs     *FileSummary
}

func (in *openInput) close() {
	in.once.Do(func() {
		if in.closer != nil {
			in.closer.Close()
		}
	})
}

type countingReader struct {
	r io.Reader
	n *atomic.Int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n.Add(int64(n))
	return n, err
}

// sampleSize is how much of an input format detection looks at.
const sampleSize = 256 << 10

func (r *reader) readInput(ctx context.Context, in Input) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	name := in.Name
	oi := &openInput{name: name}
	var raw io.Reader
	switch {
	case in.R != nil:
		raw = in.R
	case name == "-":
		raw = r.opts.Stdin
	default:
		f, err := os.Open(name)
		if err != nil {
			return err
		}
		raw, oi.closer = f, f
	}
	defer oi.close()
	r.sum.Files = append(r.sum.Files, FileSummary{Name: name})
	fs := &r.sum.Files[len(r.sum.Files)-1]
	oi.fs = fs
	br := bufio.NewReaderSize(&countingReader{r: raw, n: &oi.read}, 64<<10)
	var src io.Reader = br
	if magic, _ := br.Peek(2); len(magic) == 2 && magic[0] == 0x1f && magic[1] == 0x8b {
		gz, err := gzip.NewReader(br)
		if err != nil {
			return fmt.Errorf("read %s: %w", name, err)
		}
		src = gz
		fs.Gzip = true
	}
	sb := bufio.NewReaderSize(src, sampleSize)
	sample, err := sb.Peek(sampleSize)
	eof := false
	switch {
	case err == nil:
	case errors.Is(err, io.EOF):
		eof = true
	default:
		return fmt.Errorf("read %s: %w", name, err)
	}
	oi.r = sb
	format, prefix, err := r.detect(name, sample, eof)
	if err != nil {
		return err
	}
	fs.Format = format
	if prefix != nil {
		fs.Prefix = prefix.src
	}
	if len(r.sum.Files) == 1 || r.sum.Format == FormatAuto {
		r.sum.Format = format
	}
	if r.sum.Prefix == "" && prefix != nil {
		r.sum.Prefix = prefix.src
	}
	defer func() {
		fs.Bytes = oi.read.Load()
		r.base += fs.Bytes
	}()
	if format == FormatAudit {
		return r.readAudit(ctx, oi)
	}
	r.asm.startFile(name, format)
	if err := r.runPipeline(ctx, oi, format, prefix); err != nil {
		return err
	}
	if r.asm.good == 0 && r.asm.bad > 0 {
		return unknownFormat(name, format, prefix)
	}
	return nil
}

func unknownFormat(name string, f Format, p *Prefix) error {
	e := &FormatError{File: name, Format: f}
	if p != nil && (f == FormatStderr || f == FormatAuto) {
		e.Prefix = p.src
	}
	return e
}

// FormatError is the error for an input of which no line reads as the
// given or detected format. It wraps ErrUnknownFormat.
type FormatError struct {
	File string
	// Format is the format asked for; FormatAuto when none was detected.
	Format Format
	// Prefix is the log_line_prefix given for a stderr log.
	Prefix string
}

func (e *FormatError) Error() string {
	const known = "known formats: stderr (a log_line_prefix with %m, %t or %n and %p or %c), csvlog, jsonlog, audit"
	switch {
	case e.Format == FormatAuto && e.Prefix != "":
		return fmt.Sprintf("%s: %v: not stderr with log_line_prefix '%s' nor csvlog, jsonlog or audit", e.File, ErrUnknownFormat, e.Prefix)
	case e.Format == FormatAuto:
		return fmt.Sprintf("%s: %v (%s; a stderr log is recognized by the common log_line_prefix settings, give any other prefix explicitly)", e.File, ErrUnknownFormat, known)
	case e.Prefix != "":
		return fmt.Sprintf("%s: no line reads as a stderr log with log_line_prefix '%s' (%s)", e.File, e.Prefix, known)
	case e.Format == FormatStderr:
		return fmt.Sprintf("%s: no line reads as a stderr log with a common log_line_prefix; give the server's log_line_prefix (%s)", e.File, known)
	}
	return fmt.Sprintf("%s: no line reads as %s (%s)", e.File, e.Format, known)
}

// Unwrap returns ErrUnknownFormat.
func (e *FormatError) Unwrap() error { return ErrUnknownFormat }

// detect finds the format (and stderr prefix) of an input from a sample of
// its first bytes.
func (r *reader) detect(name string, sample []byte, eof bool) (Format, *Prefix, error) {
	if !eof {
		if i := lastNL(sample); i >= 0 {
			sample = sample[:i+1]
		}
	}
	if len(bytes.TrimSpace(sample)) == 0 {
		// Empty input: nothing to detect, nothing to read.
		f := r.opts.Format
		if f == FormatAuto {
			f = FormatStderr
		}
		p := r.prefix
		if f == FormatStderr && p == nil {
			p = knownCompiled[0]
		}
		if f != FormatStderr {
			p = nil
		}
		return f, p, nil
	}
	want := r.opts.Format
	var jsonN, auditN int
	if want == FormatAuto || want == FormatJSON || want == FormatAudit {
		jsonN, auditN = scoreJSON(sample)
	}
	csvN := 0
	if want == FormatAuto || want == FormatCSV {
		csvN = scoreCSV(sample, &r.opts)
	}
	var best *Prefix
	stderrN := 0
	if want == FormatAuto || want == FormatStderr {
		best, stderrN = r.scoreStderr(sample)
	}
	switch want {
	case FormatJSON:
		if jsonN == 0 {
			return 0, nil, unknownFormat(name, want, nil)
		}
		return want, nil, nil
	case FormatAudit:
		if auditN == 0 {
			return 0, nil, unknownFormat(name, want, nil)
		}
		return want, nil, nil
	case FormatCSV:
		if csvN == 0 {
			return 0, nil, unknownFormat(name, want, nil)
		}
		return want, nil, nil
	case FormatStderr:
		if stderrN == 0 {
			return 0, nil, unknownFormat(name, want, r.prefix)
		}
		return want, best, nil
	}
	switch {
	case jsonN == 0 && auditN == 0 && csvN == 0 && stderrN == 0:
		return 0, nil, unknownFormat(name, FormatAuto, r.prefix)
	case jsonN >= auditN && jsonN >= csvN && jsonN >= stderrN:
		return FormatJSON, nil, nil
	case auditN >= csvN && auditN >= stderrN:
		return FormatAudit, nil, nil
	case csvN >= stderrN:
		return FormatCSV, nil, nil
	}
	return FormatStderr, best, nil
}

func lastNL(b []byte) int {
	for i := len(b) - 1; i >= 0; i-- {
		if b[i] == '\n' {
			return i
		}
	}
	return -1
}

// detectLines bounds the lines detection scores.
const detectLines = 200

// scoreJSON counts the sample lines that are jsonlog records and audit log
// records.
func scoreJSON(sample []byte) (jsonN, auditN int) {
	n := 0
	for len(sample) > 0 && n < detectLines {
		i := indexNL(sample)
		l := strings.TrimSpace(string(sample[:i]))
		sample = sample[min(i+1, len(sample)):]
		if l == "" {
			continue
		}
		n++
		if l[0] != '{' {
			continue
		}
		var m map[string]json.RawMessage
		if json.Unmarshal([]byte(l), &m) != nil {
			continue
		}
		_, ts := m["timestamp"]
		_, sev := m["error_severity"]
		_, schema := m["schema"]
		_, rec := m["record"]
		switch {
		case ts && sev:
			jsonN++
		case schema && rec:
			auditN++
		}
	}
	return jsonN, auditN
}

func indexNL(b []byte) int {
	for i, c := range b {
		if c == '\n' {
			return i
		}
	}
	return len(b)
}

// scoreCSV counts the csvlog records among the sample's first records.
func scoreCSV(sample []byte, opts *Options) int {
	w := newWorker(FormatCSV, nil, opts)
	n, good := 0, 0
	pos := 0
	for pos < len(sample) && n < detectLines {
		if sample[pos] == '\n' {
			pos++
			continue
		}
		next, _, err := w.csvRecord(sample, pos)
		pos = next
		n++
		if err != "" {
			continue
		}
		if e := w.csvEntry(0); e.kind != kMalformed {
			good++
		}
	}
	return good
}

// scoreStderr returns the prefix (the given one, or the best of
// KnownPrefixes) that reads the most sample lines, and how many.
func (r *reader) scoreStderr(sample []byte) (*Prefix, int) {
	cands := knownCompiled
	if r.prefix != nil {
		cands = []*Prefix{r.prefix}
	}
	var lines [][]byte
	for len(sample) > 0 && len(lines) < detectLines {
		i := indexNL(sample)
		l := trimCR(sample[:i])
		sample = sample[min(i+1, len(sample)):]
		if len(l) == 0 || l[0] == '\t' {
			continue
		}
		lines = append(lines, l)
	}
	// The best prefix reads the most lines; on a tie, the one that reads
	// more fields (a shorter prefix can read a longer one's lines only by
	// taking several fields for one), then the simpler one.
	tp := newTimeParser(r.opts.Location)
	var f prefixFields
	var best *Prefix
	bestN, bestFields := 0, 0
	for _, p := range cands {
		n, fields := 0, 0
		for _, l := range lines {
			if _, ok := p.parse(l, tp, &f); ok {
				n++
				fields += p.escapes(f.upto)
			}
		}
		switch {
		case n == 0:
		case n > bestN, n == bestN && fields > bestFields,
			n == bestN && fields == bestFields && p.escapes(len(p.toks)) < best.escapes(len(best.toks)):
			best, bestN, bestFields = p, n, fields
		}
	}
	if best == nil {
		best = cands[0]
	}
	return best, bestN
}

// readAudit delegates an audit log to internal/auditlog's reader.
func (r *reader) readAudit(ctx context.Context, in *openInput) error {
	if r.audit == nil {
		r.audit = &auditlog.Reader{}
	}
	n := 0
	r.audit.OnEvent = func(ev *event.Event) error {
		if err := ctx.Err(); err != nil {
			return err
		}
		r.sum.Statements++
		if _, ok := r.asm.seen[ev.SessionID]; !ok {
			r.asm.seen[ev.SessionID] = struct{}{}
			r.sum.Sessions++
		}
		r.emit(ev)
		if n++; n%4096 == 0 {
			r.progress(in.read.Load())
		}
		return nil
	}
	before := r.audit.Summary()
	if err := r.audit.Read(in.name, in.r); err != nil {
		return err
	}
	after := r.audit.Summary()
	in.fs.Lines = int64(after.Lines - before.Lines)
	r.progress(in.read.Load())
	if after.Lines > before.Lines && after.BadLineCount-before.BadLineCount == after.Lines-before.Lines {
		return unknownFormat(in.name, FormatAudit, nil)
	}
	return nil
}

// finishAudit folds the audit log reader's summary into the summary.
func (r *reader) finishAudit() error {
	if r.audit == nil {
		return nil
	}
	as := r.audit.Summary()
	r.sum.Audit = as
	r.sum.Lines += int64(as.Lines)
	r.sum.Skipped += int64(as.Lines - as.Statements - as.BadLineCount)
	r.sum.MalformedCount += int64(as.BadLineCount)
	for _, b := range as.BadLines {
		if len(r.sum.Malformed) >= MaxMalformed {
			break
		}
		r.sum.Malformed = append(r.sum.Malformed, LineError{File: b.File, Line: int64(b.Line), Err: b.Err})
	}
	return nil
}
