package querylog

import (
	"bytes"
	"encoding/binary"
	"hash/fnv"
	"strconv"
	"strings"
	"time"

	"github.com/pgaudit-proxy/pgaudit/internal/sqlscan"
)

// entryKind says what a log entry means for statement assembly.
type entryKind uint8

const (
	kSkip          entryKind = iota // well formed, carries no statement
	kMalformed                      // does not read as the format
	kBlank                          // an empty line
	kLogStmt                        // log_statement: "statement: ..." or "execute <name>: ..."
	kDurStmt                        // "duration: ... ms  statement: ..." or "...  execute <name>: ..."
	kDurBare                        // "duration: ... ms" (the statement was logged before)
	kError                          // ERROR, FATAL or PANIC
	kConnReceived                   // "connection received: ..."
	kConnAuth                       // "connection authorized: ..."
	kDisconnect                     // "disconnection: ..."
	kDetail                         // stderr: a DETAIL line
	kStatementLine                  // stderr: a STATEMENT line
	kSecondary                      // stderr: HINT, CONTEXT, QUERY or LOCATION
)

// entry is one log entry as a parse worker sees it. Strings are owned.
type entry struct {
	line     int64 // line number of the entry's first line
	kind     entryKind
	extended bool // an execute of the extended protocol
	severity string

	time    time.Time
	pid     int64
	sess    uint64 // session start<<32 | pid; 0 when the log does not say
	lineNum int64  // %l, session_line_num; 0 when unknown
	vx      uint64 // backend id<<32 | local xid
	vxOK    bool

	user, db, app, client, ps string
	state                     string

	text string // the statement (kLogStmt, kDurStmt)
	stmt string // the failed statement (kError, kStatementLine)
	dur  time.Duration
	txw  txWord // classifyTx of text or stmt
	verb string

	nParams int
	pHash   uint64
	params  []string

	err string // kMalformed: what is wrong
}

// lxidZero reports whether the entry's vxid shows no open transaction.
func (e *entry) lxidZero() bool { return e.vxOK && uint32(e.vx) == 0 }

// parseVxid parses "3/17".
func parseVxid(b []byte) (uint64, bool) {
	i := bytes.IndexByte(b, '/')
	if i <= 0 || i == len(b)-1 {
		return 0, false
	}
	be, err1 := strconv.ParseUint(string(b[:i]), 10, 32)
	lx, err2 := strconv.ParseUint(string(b[i+1:]), 10, 32)
	if err1 != nil || err2 != nil {
		return 0, false
	}
	return be<<32 | lx, true
}

// parseSessionHex parses a session id ("6b0935eb.84d": start time and pid
// in hex) into start<<32 | pid.
func parseSessionHex(b []byte) (uint64, bool) {
	i := bytes.IndexByte(b, '.')
	if i <= 0 || i == len(b)-1 || i > 16 || len(b)-i-1 > 8 {
		return 0, false
	}
	start, err1 := strconv.ParseUint(string(b[:i]), 16, 64)
	pid, err2 := strconv.ParseUint(string(b[i+1:]), 16, 32)
	if err1 != nil || err2 != nil {
		return 0, false
	}
	return start<<32 | pid, true
}

func sessionOf(start time.Time, pid int64) uint64 {
	return uint64(start.Unix())<<32 | uint64(uint32(pid))
}

// classifyLog sets e.kind and friends from the message of a LOG entry. It
// returns the statement text as a sub-slice of msg.
func classifyLog(e *entry, msg []byte) []byte {
	switch {
	case bytes.HasPrefix(msg, []byte("duration: ")):
		rest := msg[len("duration: "):]
		d, n, ok := parseMS(rest)
		if !ok {
			e.kind = kSkip
			return nil
		}
		e.dur = d
		rest = rest[n:]
		switch {
		case len(rest) == 0:
			e.kind = kDurBare
		case bytes.HasPrefix(rest, []byte("  statement: ")):
			e.kind = kDurStmt
			return rest[len("  statement: "):]
		case bytes.HasPrefix(rest, []byte("  execute ")):
			if text, ok := executeText(rest[len("  execute "):]); ok {
				e.kind, e.extended = kDurStmt, true
				return text
			}
			e.kind = kSkip // "execute fetch from": a portal run in parts counts once
		default:
			e.kind = kSkip // parse, bind, plan, fastpath function call
		}
	case bytes.HasPrefix(msg, []byte("statement: ")):
		e.kind = kLogStmt
		return msg[len("statement: "):]
	case bytes.HasPrefix(msg, []byte("execute ")):
		if text, ok := executeText(msg[len("execute "):]); ok {
			e.kind, e.extended = kLogStmt, true
			return text
		}
		e.kind = kSkip
	case bytes.HasPrefix(msg, []byte("connection received: ")):
		e.kind = kConnReceived
	case bytes.HasPrefix(msg, []byte("connection authorized: ")):
		e.kind = kConnAuth
	case bytes.HasPrefix(msg, []byte("disconnection: ")):
		e.kind = kDisconnect
	default:
		e.kind = kSkip
	}
	return nil
}

// executeText returns the statement of "<name>: <text>"; "fetch from ..."
// (a portal resumed) reports false.
func executeText(b []byte) ([]byte, bool) {
	if bytes.HasPrefix(b, []byte("fetch from ")) {
		return nil, false
	}
	i := bytes.Index(b, []byte(": "))
	if i < 0 {
		return nil, false
	}
	return b[i+2:], true
}

// parseMS parses "0.123 ms" at the start of b.
func parseMS(b []byte) (time.Duration, int, bool) {
	i := 0
	var whole int64
	for i < len(b) && b[i] >= '0' && b[i] <= '9' {
		whole = whole*10 + int64(b[i]-'0')
		i++
	}
	if i == 0 {
		return 0, 0, false
	}
	var frac int64
	scale := int64(time.Millisecond)
	if i < len(b) && b[i] == '.' {
		i++
		for i < len(b) && b[i] >= '0' && b[i] <= '9' {
			if scale >= 10 {
				scale /= 10
				frac += int64(b[i]-'0') * scale
			}
			i++
		}
	}
	if !bytes.HasPrefix(b[i:], []byte(" ms")) {
		return 0, 0, false
	}
	return time.Duration(whole)*time.Millisecond + time.Duration(frac), i + 3, true
}

// parseConnAuth reads user, database and application_name of a
// "connection authorized: user=x database=y application_name=z" message.
func parseConnAuth(msg []byte) (user, db, app []byte) {
	rest := msg[len("connection authorized: "):]
	for _, ext := range [][]byte{[]byte(" SSL enabled"), []byte(" GSS ")} {
		if i := bytes.Index(rest, ext); i >= 0 {
			rest = rest[:i]
		}
	}
	get := func(key string, stop string) []byte {
		i := bytes.Index(rest, []byte(key))
		if i < 0 {
			return nil
		}
		v := rest[i+len(key):]
		if stop != "" {
			if j := bytes.Index(v, []byte(stop)); j >= 0 {
				v = v[:j]
			}
		}
		return v
	}
	user = get("user=", " ")
	db = get(" database=", " ")
	app = get(" application_name=", "")
	return user, db, app
}

// parseParams reads a DETAIL "parameters: $1 = '1', $2 = NULL" into the
// count and hash of the values (FNV-1a over each value's 4-byte big-endian
// length, -1 for NULL, and bytes, as the proxy hashes Bind values). It keeps
// text copies of the values (NULL as "") when keep is set. ok is false for
// a detail that is not a parameter list.
func parseParams(detail []byte, keep bool) (n int, hash uint64, values []string, ok bool) {
	const pfx = "parameters: "
	if !bytes.HasPrefix(detail, []byte(pfx)) {
		return 0, 0, nil, false
	}
	b := detail[len(pfx):]
	h := fnv.New64a()
	var lenbuf [4]byte
	var val []byte
	for len(b) > 0 {
		if b[0] != '$' {
			return 0, 0, nil, false
		}
		i := 1
		for i < len(b) && b[i] >= '0' && b[i] <= '9' {
			i++
		}
		if i == 1 || !bytes.HasPrefix(b[i:], []byte(" = ")) {
			return 0, 0, nil, false
		}
		b = b[i+3:]
		null := false
		switch {
		case bytes.HasPrefix(b, []byte("NULL")):
			null = true
			b = b[4:]
		case len(b) > 0 && b[0] == '\'':
			val = val[:0]
			j := 1
			closed := false
			for j < len(b) {
				if b[j] == '\'' {
					if j+1 < len(b) && b[j+1] == '\'' {
						val = append(val, '\'')
						j += 2
						continue
					}
					closed = true
					j++
					break
				}
				val = append(val, b[j])
				j++
			}
			if !closed {
				return 0, 0, nil, false
			}
			b = b[j:]
		default:
			return 0, 0, nil, false
		}
		n++
		if null {
			binary.BigEndian.PutUint32(lenbuf[:], 0xFFFFFFFF)
			_, _ = h.Write(lenbuf[:])
		} else {
			binary.BigEndian.PutUint32(lenbuf[:], uint32(len(val)))
			_, _ = h.Write(lenbuf[:])
			_, _ = h.Write(val)
		}
		if keep {
			if null {
				values = append(values, "")
			} else {
				values = append(values, string(val))
			}
		}
		if len(b) == 0 {
			break
		}
		if !bytes.HasPrefix(b, []byte(", ")) {
			return 0, 0, nil, false
		}
		b = b[2:]
	}
	if n == 0 {
		return 0, 0, values, true
	}
	return n, h.Sum64(), values, true
}

// txWord says whether a statement opens or closes a transaction block.
type txWord uint8

const (
	txOther txWord = iota
	txBegin
	txEnd
)

// keywords appends up to cap(out) leading keywords of a statement,
// upper-cased, to out, skipping white space and comments (sqlscan.Words).
func keywords(s string, out []string) []string {
	n := len(out)
	out = sqlscan.Words(s, out)
	for i := n; i < len(out); i++ {
		out[i] = upperASCII(out[i])
	}
	return out
}

// knownWords are the keywords keywords returns without allocating.
var knownWords = func() map[string]string {
	m := map[string]string{}
	for _, w := range strings.Fields(`SELECT INSERT UPDATE DELETE MERGE WITH VALUES TABLE COPY BEGIN START
		TRANSACTION COMMIT END ROLLBACK ABORT PREPARE PREPARED TO SAVEPOINT RELEASE SET SHOW RESET CREATE ALTER
		DROP TRUNCATE EXPLAIN ANALYZE VACUUM GRANT REVOKE LOCK LISTEN NOTIFY UNLISTEN DO CALL FETCH MOVE CLOSE
		DECLARE DISCARD DEALLOCATE EXECUTE REFRESH COMMENT INDEX VIEW FUNCTION SCHEMA SEQUENCE TYPE TRIGGER
		EXTENSION UNIQUE OR REPLACE TEMP TEMPORARY UNLOGGED MATERIALIZED FOREIGN INTO FROM WHERE ONLY`) {
		m[w] = w
	}
	return m
}()

func upperASCII(s string) string {
	if len(s) <= 16 {
		var buf [16]byte
		b := buf[:len(s)]
		for i := 0; i < len(s); i++ {
			c := s[i]
			if c >= 'a' && c <= 'z' {
				c -= 'a' - 'A'
			}
			b[i] = c
		}
		if w, ok := knownWords[string(b)]; ok {
			return w
		}
	}
	for i := 0; i < len(s); i++ {
		if s[i] >= 'a' && s[i] <= 'z' {
			b := []byte(s)
			for j := i; j < len(b); j++ {
				if b[j] >= 'a' && b[j] <= 'z' {
					b[j] -= 'a' - 'A'
				}
			}
			return string(b)
		}
	}
	return s
}

// classifyTx returns the transaction role of a statement and its command
// tag as Postgres would name it ("SELECT", "CREATE TABLE"), or "" when the
// text does not tell (WITH ...).
func classifyTx(text string) (txWord, string) {
	var buf [6]string
	w := keywords(text, buf[:0])
	at := func(i int) string {
		if i < len(w) {
			return w[i]
		}
		return ""
	}
	switch at(0) {
	case "BEGIN":
		return txBegin, "BEGIN"
	case "START":
		if at(1) == "TRANSACTION" {
			return txBegin, "START TRANSACTION"
		}
	case "COMMIT", "END":
		if at(1) == "PREPARED" {
			return txOther, "COMMIT PREPARED"
		}
		return txEnd, "COMMIT"
	case "ROLLBACK", "ABORT":
		switch at(1) {
		case "PREPARED":
			return txOther, "ROLLBACK PREPARED"
		case "TO":
			return txOther, "ROLLBACK"
		}
		return txEnd, "ROLLBACK"
	case "PREPARE":
		if at(1) == "TRANSACTION" {
			return txEnd, "PREPARE TRANSACTION"
		}
	case "CREATE", "ALTER", "DROP":
		i := 1
		for {
			switch at(i) {
			case "OR", "REPLACE", "UNIQUE", "TEMP", "TEMPORARY", "UNLOGGED", "GLOBAL", "LOCAL", "RECURSIVE", "TRUSTED", "PROCEDURAL":
				i++
				continue
			}
			break
		}
		obj := at(i)
		switch obj {
		case "":
			return txOther, at(0)
		case "MATERIALIZED", "FOREIGN", "EVENT", "TEXT", "ACCESS", "USER":
			if at(i+1) != "" {
				obj += " " + at(i+1)
			}
		}
		return txOther, at(0) + " " + obj
	case "WITH", "":
		return txOther, ""
	}
	return txOther, at(0)
}

// validTag reports whether a process title (csvlog command_tag, jsonlog
// ps, %i) names the statement's command, as opposed to "idle" or a
// protocol step.
func validTag(ps string) bool {
	if ps == "" || ps == "PARSE" || ps == "BIND" {
		return false
	}
	for i := 0; i < len(ps); i++ {
		if c := ps[i]; !(c >= 'A' && c <= 'Z' || c == ' ') {
			return false
		}
	}
	return true
}
