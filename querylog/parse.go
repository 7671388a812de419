package querylog

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strconv"
)

// worker parses chunks of one format into entries. Each parse goroutine
// has its own worker.
type worker struct {
	format Format
	prefix *Prefix
	tp     *timeParser
	keep   bool

	intern  map[string]string
	fields  [][]byte
	scratch []byte
	pf      prefixFields
}

func newWorker(format Format, prefix *Prefix, opts *Options) *worker {
	return &worker{format: format, prefix: prefix, tp: newTimeParser(opts.Location), keep: opts.KeepParams, intern: make(map[string]string)}
}

// str returns b as a string, sharing the copy of values seen before (user,
// database and application names repeat on every line).
func (w *worker) str(b []byte) string {
	if len(b) == 0 {
		return ""
	}
	if len(b) > 64 {
		return string(b)
	}
	if s, ok := w.intern[string(b)]; ok {
		return s
	}
	if len(w.intern) >= 4096 {
		clear(w.intern)
	}
	s := string(b)
	w.intern[s] = s
	return s
}

// parse parses a chunk that starts at line number line.
func (w *worker) parse(data []byte, line int64, out []entry) []entry {
	switch w.format {
	case FormatStderr:
		return w.parseStderr(data, line, out)
	case FormatCSV:
		return w.parseCSV(data, line, out)
	case FormatJSON:
		return w.parseJSON(data, line, out)
	}
	return out
}

func lineEnd(data []byte, pos int) int {
	if i := bytes.IndexByte(data[pos:], '\n'); i >= 0 {
		return pos + i
	}
	return len(data)
}

func trimCR(b []byte) []byte {
	if len(b) > 0 && b[len(b)-1] == '\r' {
		return b[:len(b)-1]
	}
	return b
}

func malformed(line int64, format string, args ...any) entry {
	return entry{line: line, kind: kMalformed, err: fmt.Sprintf(format, args...)}
}

// parseStderr parses stderr log lines: a prefixed line and the lines after
// it that start with a tab (the continuation of a multi-line message).
func (w *worker) parseStderr(data []byte, line int64, out []entry) []entry {
	pos := 0
	for pos < len(data) {
		startLine := line
		end := lineEnd(data, pos)
		first := trimCR(data[pos:end])
		pos = end + 1
		line++
		contStart := pos
		for pos < len(data) && data[pos] == '\t' {
			pos = lineEnd(data, pos) + 1
			line++
		}
		var conts []byte
		if contStart < len(data) && pos > contStart {
			conts = data[contStart:min(pos, len(data))]
		}
		if len(first) == 0 && conts == nil {
			out = append(out, entry{line: startLine, kind: kBlank})
			continue
		}
		if len(first) > 0 && first[0] == '\t' {
			out = append(out, malformed(startLine, "continuation line without a log entry before it"))
			continue
		}
		rest, ok := w.prefix.parse(first, w.tp, &w.pf)
		if !ok {
			out = append(out, malformed(startLine, "line does not match log_line_prefix '%s'", w.prefix.src))
			continue
		}
		sev, n := severityAt(rest)
		msg := rest[n:]
		if conts != nil {
			w.scratch = append(w.scratch[:0], msg...)
			for len(conts) > 0 {
				e := bytes.IndexByte(conts, '\n')
				var l []byte
				if e < 0 {
					l, conts = conts, nil
				} else {
					l, conts = conts[:e], conts[e+1:]
				}
				w.scratch = append(w.scratch, '\n')
				w.scratch = append(w.scratch, trimCR(l[1:])...)
			}
			msg = w.scratch
		}
		pf := &w.pf
		e := entry{line: startLine, severity: sev, time: pf.time, pid: pf.pid, lineNum: pf.lineNum}
		switch {
		case pf.sessHex != nil:
			e.sess, _ = parseSessionHex(pf.sessHex)
			if e.pid == 0 {
				e.pid = int64(uint32(e.sess))
			}
		case pf.hasSess && pf.pid != 0:
			e.sess = sessionOf(pf.sessTime, pf.pid)
		}
		if pf.vxid != nil {
			e.vx, e.vxOK = parseVxid(pf.vxid)
		}
		state := pf.state
		if verboseState(sev, msg) {
			state, msg = msg[:5], msg[7:]
		}
		w.fill(&e, sev, msg, nil, state, pf.user, pf.db, pf.app, pf.host, pf.ps)
		out = append(out, e)
	}
	return out
}

// verboseState recognizes the "00000: " that log_error_verbosity = verbose
// puts before a message.
func verboseState(sev string, msg []byte) bool {
	switch sev {
	case "DETAIL", "STATEMENT", "HINT", "CONTEXT", "QUERY", "LOCATION":
		return false
	}
	if len(msg) < 7 || msg[5] != ':' || msg[6] != ' ' {
		return false
	}
	for _, c := range msg[:5] {
		if !(c >= '0' && c <= '9' || c >= 'A' && c <= 'Z') {
			return false
		}
	}
	return true
}

// fill sets an entry's kind, text and names from its severity, message and
// (csvlog, jsonlog) detail.
func (w *worker) fill(e *entry, sev string, msg, detail, state, user, db, app, host, ps []byte) {
	e.user, e.db, e.app, e.client, e.ps = w.str(user), w.str(db), w.str(app), w.str(host), w.str(ps)
	switch sev {
	case "LOG":
		text := classifyLog(e, msg)
		switch e.kind {
		case kLogStmt, kDurStmt:
			e.text = string(text)
			if detail != nil {
				e.nParams, e.pHash, e.params, _ = parseParams(detail, w.keep)
			}
		case kConnAuth:
			u, d, a := parseConnAuth(msg)
			e.user, e.db, e.app = w.str(u), w.str(d), w.str(a)
		case kConnReceived:
			if i := bytes.Index(msg, []byte("host=")); i >= 0 {
				h := msg[i+len("host="):]
				if j := bytes.IndexByte(h, ' '); j >= 0 {
					h = h[:j]
				}
				e.client = w.str(h)
			}
		}
	case "ERROR", "FATAL", "PANIC":
		e.kind = kError
		e.state = w.str(state)
	case "DETAIL":
		e.kind = kDetail
		e.nParams, e.pHash, e.params, _ = parseParams(msg, w.keep)
	case "STATEMENT":
		e.kind = kStatementLine
		e.stmt = string(msg)
	case "HINT", "CONTEXT", "QUERY", "LOCATION":
		e.kind = kSecondary
	default:
		e.kind = kSkip
	}
	w.classify(e)
}

// classify sets the transaction role and verb of an entry's statement.
func (w *worker) classify(e *entry) {
	switch {
	case e.text != "":
		e.txw, e.verb = classifyTx(e.text)
	case e.stmt != "":
		e.txw, e.verb = classifyTx(e.stmt)
	}
}

// csvMinFields and csvMaxFields bound the csvlog columns: 23 up to
// PostgreSQL 12, 24 in 13 (backend_type), 26 from 14 (leader_pid,
// query_id).
const (
	csvMinFields = 23
	csvMaxFields = 32
)

// parseCSV parses csvlog records.
func (w *worker) parseCSV(data []byte, line int64, out []entry) []entry {
	pos := 0
	for pos < len(data) {
		if data[pos] == '\n' || (data[pos] == '\r' && pos+1 < len(data) && data[pos+1] == '\n') {
			out = append(out, entry{line: line, kind: kBlank})
			pos = lineEnd(data, pos) + 1
			line++
			continue
		}
		next, nl, err := w.csvRecord(data, pos)
		start := line
		pos, line = next, line+int64(nl)
		if err != "" {
			out = append(out, malformed(start, "%s", err))
			continue
		}
		out = append(out, w.csvEntry(start))
	}
	return out
}

// csvRecord splits the record at data[pos:] into w.fields. It returns where
// the next record starts and how many newlines it passed; on a syntax error
// it skips to the end of the line.
func (w *worker) csvRecord(data []byte, pos int) (next int, nl int, err string) {
	w.fields = w.fields[:0]
	i := pos
	for {
		var field []byte
		if i < len(data) && data[i] == '"' {
			i++
			st, seg := i, i
			var buf []byte
			for {
				j := bytes.IndexByte(data[i:], '"')
				if j < 0 {
					return len(data), nl + bytes.Count(data[st:], []byte{'\n'}), "unterminated quoted field"
				}
				i += j
				if i+1 < len(data) && data[i+1] == '"' {
					buf = append(buf, data[seg:i+1]...)
					i += 2
					seg = i
					continue
				}
				break
			}
			if buf != nil {
				field = append(buf, data[seg:i]...)
			} else {
				field = data[st:i]
			}
			nl += bytes.Count(data[st:i], []byte{'\n'})
			i++ // the closing quote
		} else {
			st := i
			for i < len(data) && data[i] != ',' && data[i] != '\n' && data[i] != '"' {
				i++
			}
			field = data[st:i]
		}
		w.fields = append(w.fields, field)
		if i >= len(data) {
			return i, nl, ""
		}
		switch data[i] {
		case ',':
			i++
			continue
		case '\n':
			return i + 1, nl + 1, ""
		case '\r':
			if i+1 < len(data) && data[i+1] == '\n' {
				return i + 2, nl + 1, ""
			}
		}
		e := lineEnd(data, i)
		if e < len(data) {
			return e + 1, nl + 1, fmt.Sprintf("unexpected %q in csv field %d", data[i], len(w.fields))
		}
		return e, nl, fmt.Sprintf("unexpected %q in csv field %d", data[i], len(w.fields))
	}
}

// csvEntry turns w.fields into an entry.
func (w *worker) csvEntry(line int64) entry {
	f := w.fields
	if len(f) < csvMinFields || len(f) > csvMaxFields {
		return malformed(line, "csvlog record has %d fields, want %d to 26", len(f), csvMinFields)
	}
	t, _, ok := w.tp.parse(f[0], true)
	if !ok {
		return malformed(line, "csvlog record: bad log_time %q", clip(f[0]))
	}
	e := entry{line: line, time: t, severity: string(f[11])}
	e.pid, _ = strconv.ParseInt(string(f[3]), 10, 64)
	e.sess, _ = parseSessionHex(f[5])
	e.lineNum, _ = strconv.ParseInt(string(f[6]), 10, 64)
	e.vx, e.vxOK = parseVxid(f[9])
	w.fill(&e, w.sev(f[11]), f[13], f[14], f[12], f[1], f[2], f[22], hostOf(f[4]), f[7])
	if e.kind == kError && len(f[19]) > 0 {
		e.stmt = string(f[19])
		w.classify(&e)
	}
	return e
}

// sev returns a severity as one of the constant strings (no allocation).
func (w *worker) sev(b []byte) string {
	for _, s := range severities {
		if string(b) == s {
			return s
		}
	}
	return w.str(b)
}

// hostOf strips the port of a csvlog connection_from ("127.0.0.1:5432").
func hostOf(b []byte) []byte {
	i := bytes.LastIndexByte(b, ':')
	if i <= 0 || !allDigits(b[i+1:]) || i == len(b)-1 {
		return b
	}
	return b[:i]
}

func clip(b []byte) string {
	if len(b) > 40 {
		return string(b[:40]) + "..."
	}
	return string(b)
}

// jsonRecord holds the jsonlog keys the reader uses.
type jsonRecord struct {
	Timestamp       *string `json:"timestamp"`
	User            string  `json:"user"`
	DBName          string  `json:"dbname"`
	PID             int64   `json:"pid"`
	RemoteHost      string  `json:"remote_host"`
	SessionID       string  `json:"session_id"`
	LineNum         int64   `json:"line_num"`
	PS              string  `json:"ps"`
	VXID            string  `json:"vxid"`
	ErrorSeverity   *string `json:"error_severity"`
	StateCode       string  `json:"state_code"`
	Message         string  `json:"message"`
	Detail          *string `json:"detail"`
	Statement       string  `json:"statement"`
	ApplicationName string  `json:"application_name"`
}

// parseJSON parses jsonlog lines.
func (w *worker) parseJSON(data []byte, line int64, out []entry) []entry {
	pos := 0
	var rec jsonRecord
	for pos < len(data) {
		end := lineEnd(data, pos)
		l := bytes.TrimSpace(data[pos:end])
		pos = end + 1
		line++
		if len(l) == 0 {
			out = append(out, entry{line: line - 1, kind: kBlank})
			continue
		}
		rec = jsonRecord{}
		if err := json.Unmarshal(l, &rec); err != nil {
			out = append(out, malformed(line-1, "invalid JSON: %v", err))
			continue
		}
		if rec.Timestamp == nil || rec.ErrorSeverity == nil {
			out = append(out, malformed(line-1, "not a jsonlog record: no timestamp or error_severity"))
			continue
		}
		t, _, ok := w.tp.parse([]byte(*rec.Timestamp), true)
		if !ok {
			out = append(out, malformed(line-1, "jsonlog record: bad timestamp %q", clip([]byte(*rec.Timestamp))))
			continue
		}
		e := entry{line: line - 1, time: t, pid: rec.PID, lineNum: rec.LineNum, severity: *rec.ErrorSeverity}
		e.sess, _ = parseSessionHex([]byte(rec.SessionID))
		e.vx, e.vxOK = parseVxid([]byte(rec.VXID))
		var detail []byte
		if rec.Detail != nil {
			detail = []byte(*rec.Detail)
		}
		w.fill(&e, w.sev([]byte(*rec.ErrorSeverity)), []byte(rec.Message), detail, []byte(rec.StateCode),
			[]byte(rec.User), []byte(rec.DBName), []byte(rec.ApplicationName), []byte(rec.RemoteHost), []byte(rec.PS))
		if e.kind == kError && rec.Statement != "" {
			e.stmt = rec.Statement
			w.classify(&e)
		}
		out = append(out, e)
	}
	return out
}
