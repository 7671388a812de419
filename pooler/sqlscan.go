package pooler

import (
	"strings"

	"github.com/pgaudit-proxy/pgaudit/internal/sqlscan"
)

// The cheap scans below run on the relay path, so they look at bytes, never
// build a parse tree, and only run in transaction mode (plus statement
// splitting for multi-statement queries). Their job is to notice statements
// that change session state; the analyzer does real parsing later. The
// lexical rules (comments, quotes, dollar quotes, identifiers) are
// internal/sqlscan's, shared with the analyzer and the log readers.

// stmtFlags describe what a statement does to the session.
type stmtFlags uint16

const (
	flagSetGUC        stmtFlags = 1 << iota // SET, RESET, set_config(): snapshot settings after
	flagDiscardAll                          // DISCARD ALL
	flagDeallocateAll                       // DEALLOCATE ALL
	flagListen                              // LISTEN
	flagAdvisoryLock                        // session-level advisory lock
	flagTempTable                           // CREATE TEMP TABLE / SELECT INTO TEMP
	flagWithHold                            // DECLARE ... WITH HOLD
	flagPrepare                             // SQL-level PREPARE
	flagResetGUC                            // RESET, DISCARD ALL, SET ... DEFAULT: settings may go to their reset values
	flagDDL                                 // CREATE, ALTER, DROP (not of an index): prepared statements may go stale
)

const sessionStateFlags = flagListen | flagAdvisoryLock | flagTempTable | flagWithHold | flagPrepare

// detail names the first session-state feature in f, for events.
func (f stmtFlags) detail() string {
	switch {
	case f&flagListen != 0:
		return "listen"
	case f&flagAdvisoryLock != 0:
		return "advisory_lock"
	case f&flagTempTable != 0:
		return "temp_table"
	case f&flagWithHold != 0:
		return "with_hold"
	case f&flagPrepare != 0:
		return "prepare"
	}
	return ""
}

// scanStatement classifies a whole Query or Parse text, which may hold
// several statements. It runs for every statement in transaction mode, so
// the common case (one statement, nothing to flag) allocates nothing.
func scanStatement(sql string) stmtFlags {
	var f stmtFlags
	if i := strings.IndexByte(sql, ';'); i < 0 || strings.TrimSpace(sql[i+1:]) == "" {
		// One statement, perhaps with a final semicolon (as pgbench and
		// most drivers send them).
		f = scanOne(sql, f)
	} else {
		for _, stmt := range splitStatements(sql) {
			f = scanOne(stmt, f)
		}
	}
	// Both function checks need a '_' (set_config; pg_advisory_lock and
	// its siblings): one pass over the underscores finds the candidates,
	// and the exact checks run only for a text that has one.
	setConfig, advisory := false, false
	for i := 0; i < len(sql) && !(setConfig && advisory); {
		j := strings.IndexByte(sql[i:], '_')
		if j < 0 {
			break
		}
		p := i + j
		if p >= 3 && (strings.HasPrefix(sql[p-3:], "set_config") || strings.HasPrefix(sql[p-3:], "SET_CONFIG")) {
			setConfig = true
		}
		if len(sql)-p > 8 && equalFoldLower(sql[p+1:p+9], "advisory") {
			advisory = true
		}
		i = p + 1
	}
	if advisory && (strings.Contains(sql, "dvisory") || strings.Contains(sql, "DVISORY")) {
		l := strings.ToLower(sql)
		for _, fn := range []string{"pg_advisory_lock(", "pg_advisory_lock_shared(", "pg_try_advisory_lock(", "pg_try_advisory_lock_shared("} {
			if strings.Contains(l, fn) {
				f |= flagAdvisoryLock
			}
		}
	}
	if setConfig {
		f |= flagSetGUC
	}
	return f
}

// scanKeywords marks the lengths of the first words scanOne acts on (SET,
// DROP, RESET/ALTER, LISTEN/CREATE/SELECT, DISCARD/PREPARE/DECLARE,
// DEALLOCATE): a first word of any other length leaves the flags alone
// without a comparison.
var scanKeywords = [...]bool{3: true, 4: true, 5: true, 6: true, 7: true, 10: true}

// scanOne adds the flags of one statement to f.
func scanOne(stmt string, f stmtFlags) stmtFlags {
	kw, rest := firstWord(stmt)
	if len(kw) >= len(scanKeywords) || !scanKeywords[len(kw)] {
		return f
	}
	// The keyword in lower case, on the stack: one string switch instead
	// of a strings.EqualFold per case.
	var buf [10]byte
	for i := 0; i < len(kw); i++ {
		c := kw[i]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		buf[i] = c
	}
	is := strings.EqualFold
	switch string(buf[:len(kw)]) {
	case "set":
		next, _ := firstWord(rest)
		if !is(next, "local") && !is(next, "transaction") && !is(next, "constraints") {
			f |= flagSetGUC
		}
		if containsFold(rest, "default") {
			f |= flagResetGUC
		}
	case "reset":
		f |= flagSetGUC | flagResetGUC
	case "discard":
		next, _ := firstWord(rest)
		if is(next, "all") {
			f |= flagDiscardAll | flagSetGUC | flagResetGUC
		} else if is(next, "temp") || is(next, "temporary") {
			f |= flagSetGUC
		}
	case "deallocate":
		next, r2 := firstWord(rest)
		if is(next, "prepare") {
			next, _ = firstWord(r2)
		}
		if is(next, "all") {
			f |= flagDeallocateAll
		}
	case "listen":
		f |= flagListen
	case "prepare":
		f |= flagPrepare
	case "declare":
		if containsFold(stmt, "with hold") {
			f |= flagWithHold
		}
	case "create":
		next, r2 := firstWord(rest)
		if is(next, "global") || is(next, "local") {
			next, _ = firstWord(r2)
		}
		if is(next, "temp") || is(next, "temporary") {
			// Visible to its own (pinned) session only.
			f |= flagTempTable
		} else {
			f |= ddlFlag(next, r2)
		}
	case "alter", "drop":
		next, r2 := firstWord(rest)
		f |= ddlFlag(next, r2)
	case "select":
		if containsFold(stmt, " into temp") {
			f |= flagTempTable
		}
	}
	return f
}

// containsFold reports whether s contains lower, an ASCII lower-case
// string, ignoring ASCII case, without allocating. It runs on every
// statement of the relay's path: candidates are found with
// strings.IndexByte (vectorized) on lower's first letter in both cases,
// not by comparing at every offset.
func containsFold(s, lower string) bool {
	n := len(lower)
	if n == 0 {
		return true
	}
	if n > len(s) {
		return false
	}
	// The anchor: lower's first letter (a leading space or punctuation
	// is frequent in any text; a letter less so).
	a := 0
	for a < n && (lower[a] < 'a' || lower[a] > 'z') {
		a++
	}
	if a == n {
		return strings.Contains(s, lower) // no letter: case does not matter
	}
	lo, up := lower[a], lower[a]-('a'-'A')
	// Candidates for the anchor lie in s[a : len(s)-n+a+1].
	last := len(s) - n + a   // the last possible anchor position
	nextLo, nextUp := -2, -2 // next position of each case at or after i; -1: none
	for i := a; i <= last; {
		if nextLo != -1 && nextLo < i {
			nextLo = indexByteFrom(s[:last+1], lo, i)
		}
		if nextUp != -1 && nextUp < i {
			nextUp = indexByteFrom(s[:last+1], up, i)
		}
		p := nextLo
		if p < 0 || (nextUp >= 0 && nextUp < p) {
			p = nextUp
		}
		if p < 0 {
			return false
		}
		if equalFoldLower(s[p-a:p-a+n], lower) {
			return true
		}
		i = p + 1
	}
	return false
}

// indexByteFrom is the index of c in s at or after from, or -1.
func indexByteFrom(s string, c byte, from int) int {
	if j := strings.IndexByte(s[from:], c); j >= 0 {
		return from + j
	}
	return -1
}

// equalFoldLower reports whether s equals lower (ASCII lower-case, the
// same length) ignoring ASCII case.
func equalFoldLower(s, lower string) bool {
	for j := 0; j < len(lower); j++ {
		c := s[j]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		if c != lower[j] {
			return false
		}
	}
	return true
}

// firstWord skips whitespace, comments and opening parentheses and returns
// the first word (as written; compare it with strings.EqualFold) and the
// text after it (sqlscan.FirstWord).
func firstWord(s string) (string, string) { return sqlscan.FirstWord(s) }

// splitStatements splits a simple-protocol query string at top-level
// semicolons, honouring quotes, dollar quotes and comments. Empty statements
// are dropped; the pieces keep their own whitespace trimmed
// (sqlscan.SplitStatements).
func splitStatements(sql string) []string { return sqlscan.SplitStatements(sql) }

// preparedRef is a statement that names a prepared statement in SQL:
// EXECUTE name [(args)] or DEALLOCATE [PREPARE] name.
type preparedRef struct {
	execute bool   // EXECUTE; otherwise DEALLOCATE
	name    string // as Postgres resolves the identifier
	// start and end delimit the identifier in the text.
	start, end int
}

// scanPreparedRef recognizes a Query text that is a single EXECUTE or
// DEALLOCATE of a named prepared statement (not DEALLOCATE ALL).
func scanPreparedRef(sql string) (preparedRef, bool) {
	if i := strings.IndexByte(sql, ';'); i >= 0 && strings.TrimSpace(sql[i+1:]) != "" {
		return preparedRef{}, false
	}
	kw, rest := firstWord(sql)
	var ref preparedRef
	switch {
	case strings.EqualFold(kw, "execute"):
		ref.execute = true
	case strings.EqualFold(kw, "deallocate"):
		if next, r2 := firstWord(rest); strings.EqualFold(next, "prepare") {
			rest = r2
		}
	default:
		return preparedRef{}, false
	}
	rest = strings.TrimLeft(rest, " \t\r\n\f")
	ref.start = len(sql) - len(rest)
	if strings.HasPrefix(rest, `"`) {
		var b strings.Builder
		i := 1
		for ; i < len(rest); i++ {
			if rest[i] == '"' {
				if i+1 < len(rest) && rest[i+1] == '"' {
					b.WriteByte('"')
					i++
					continue
				}
				break
			}
			b.WriteByte(rest[i])
		}
		if i >= len(rest) || b.Len() == 0 {
			return preparedRef{}, false
		}
		ref.name, rest = b.String(), rest[i+1:]
	} else {
		i := 0
		for i < len(rest) && sqlscan.IsIdentCont(rest[i]) {
			i++
		}
		if i == 0 || rest[0] >= '0' && rest[0] <= '9' || rest[0] == '$' {
			return preparedRef{}, false
		}
		// Postgres folds unquoted identifiers to lower case, ASCII only.
		ref.name, rest = strings.Map(func(r rune) rune {
			if 'A' <= r && r <= 'Z' {
				return r + 'a' - 'A'
			}
			return r
		}, rest[:i]), rest[i:]
		if !ref.execute && ref.name == "all" {
			return preparedRef{}, false
		}
	}
	ref.end = len(sql) - len(rest)
	tail := strings.TrimSpace(strings.TrimRight(strings.TrimSpace(rest), ";"))
	if tail != "" && !(ref.execute && strings.HasPrefix(tail, "(")) {
		return preparedRef{}, false
	}
	return ref, true
}

// ddlFlag says whether a CREATE, ALTER or DROP of object kind kw (the
// word after the verb) may change what statements prepared earlier
// return or accept: anything but indexes, which Postgres's plan cache
// handles by replanning.
func ddlFlag(kw, rest string) stmtFlags {
	if strings.EqualFold(kw, "unique") {
		kw, _ = firstWord(rest)
	}
	if strings.EqualFold(kw, "index") {
		return 0
	}
	return flagDDL
}

// firstWordIsDDL is the cheap test of session mode, where statements are
// not scanned: does text start with CREATE, ALTER or DROP?
func firstWordIsDDL(text string) bool {
	kw, _ := firstWord(text)
	return len(kw) >= 4 && len(kw) <= 6 && (strings.EqualFold(kw, "create") || strings.EqualFold(kw, "alter") || strings.EqualFold(kw, "drop"))
}
