package analyzer

import (
	"hash/fnv"
	"strconv"
)

// This file holds a small, allocation-free SQL tokenizer. It knows just
// enough of PostgreSQL's lexical rules to find literals, comments, parameters
// and identifiers; it never judges whether a statement is valid. It feeds
// three consumers: the literal-stripped cache key (literalKey), the
// sanitizer that removes any literal left in normalized text (sanitize), and
// the comment scan for sqlcommenter tags and pgaudit:ignore directives.

type tokKind uint8

const (
	tokSpace       tokKind = iota // run of whitespace
	tokComment                    // -- line comment or /* block */ comment (nested)
	tokString                     // any string literal: '', E'', B'', X'', N'', U&'', $tag$...$tag$
	tokNumber                     // numeric literal: 42, 1.5e-3, .5, 0x1F, 1_000
	tokParam                      // positional parameter: $1
	tokIdent                      // unquoted identifier or keyword
	tokQuotedIdent                // "quoted identifier", U&"..."
	tokOther                      // one byte of punctuation or operator
)

// lexer walks a statement token by token. The zero value is not usable; use
// newLexer. A lexer never allocates.
type lexer struct {
	s   string
	pos int
	// sensitive is set once a token was seen whose content, not just its
	// kind, decides whether the statement parses: an unterminated string,
	// quoted identifier, dollar quote or comment; a number with trailing
	// junk; an E'' string with \u, \U, \x or octal escapes (which may be
	// invalid); any U&'' string.
	sensitive bool
}

func newLexer(s string) lexer { return lexer{s: s} }

// Character classes, looked up in one table: the lexer touches every byte
// of every simple-protocol statement.
const (
	clSpace      = 1 << iota // ' ', \t, \n, \r, \f, \v
	clIdentStart             // letters, '_', bytes >= 0x80
	clIdentCont              // clIdentStart, digits, '$'
	clDigit                  // '0'..'9'
)

var charClass = func() (t [256]uint8) {
	for c := 0; c < 256; c++ {
		b := byte(c)
		switch {
		case b == ' ' || b == '\t' || b == '\n' || b == '\r' || b == '\f' || b == '\v':
			t[c] = clSpace
		case b == '_' || (b|0x20 >= 'a' && b|0x20 <= 'z') || b >= 0x80:
			t[c] = clIdentStart | clIdentCont
		case b >= '0' && b <= '9':
			t[c] = clDigit | clIdentCont
		case b == '$':
			t[c] = clIdentCont
		}
	}
	return t
}()

func isSpace(c byte) bool      { return charClass[c]&clSpace != 0 }
func isIdentStart(c byte) bool { return charClass[c]&clIdentStart != 0 }
func isIdentCont(c byte) bool  { return charClass[c]&clIdentCont != 0 }
func isDigit(c byte) bool      { return charClass[c]&clDigit != 0 }

// next returns the next token as a kind and the byte range [start,end) of
// the input; ok is false at the end of input.
func (l *lexer) next() (kind tokKind, start, end int, ok bool) {
	s := l.s
	i := l.pos
	n := len(s)
	if i >= n {
		return 0, i, i, false
	}
	start = i
	c := s[i]
	switch {
	case isSpace(c):
		for i < n && isSpace(s[i]) {
			i++
		}
		kind = tokSpace
	case c == '-' && i+1 < n && s[i+1] == '-':
		for i < n && s[i] != '\n' {
			i++
		}
		kind = tokComment
	case c == '/' && i+1 < n && s[i+1] == '*':
		depth := 0
	comment:
		for i < n {
			switch {
			case s[i] == '/' && i+1 < n && s[i+1] == '*':
				depth++
				i += 2
			case s[i] == '*' && i+1 < n && s[i+1] == '/':
				depth--
				i += 2
				if depth == 0 {
					break comment
				}
			default:
				i++
			}
		}
		if depth > 0 {
			l.sensitive = true // unterminated comment
		}
		kind = tokComment
	case c == '\'':
		i = l.quoted(i, false)
		kind = tokString
	case c == '"':
		i = l.quotedIdent(i)
		kind = tokQuotedIdent
	case c == '$':
		if i+1 < n && isDigit(s[i+1]) {
			i++
			for i < n && isDigit(s[i]) {
				i++
			}
			kind = tokParam
			break
		}
		if end, ok, closed := skipDollarQuoted(s, i); ok {
			i = end
			kind = tokString
			l.sensitive = l.sensitive || !closed
			break
		}
		i++
		kind = tokOther
	case isDigit(c) || (c == '.' && i+1 < n && isDigit(s[i+1])):
		var junk bool
		i, junk = skipNumber(s, i)
		l.sensitive = l.sensitive || junk
		kind = tokNumber
	case isIdentStart(c):
		j := i
		for j < n && isIdentCont(s[j]) {
			j++
		}
		// String prefixes: E'..', B'..', X'..', N'..', U&'..' and U&"..".
		if j-i == 1 && j < n && s[j] == '\'' {
			switch c | 0x20 {
			case 'e':
				i = l.quoted(j, true)
				kind = tokString
				goto done
			case 'b', 'x', 'n':
				i = l.quoted(j, false)
				kind = tokString
				goto done
			}
		}
		if j-i == 1 && c|0x20 == 'u' && j+1 < n && s[j] == '&' {
			if s[j+1] == '\'' {
				l.sensitive = true // Unicode escapes may be invalid
				i = l.quoted(j+1, false)
				kind = tokString
				goto done
			}
			if s[j+1] == '"' {
				l.sensitive = true
				i = l.quotedIdent(j + 1)
				kind = tokQuotedIdent
				goto done
			}
		}
		i = j
		kind = tokIdent
	default:
		i++
		kind = tokOther
	}
done:
	l.pos = i
	return kind, start, i, true
}

// quoted returns the index just past the single-quoted string starting at
// s[i], a single quote. Doubled quotes continue the string; with backslash
// true (an E'...' string) a backslash escapes the next byte. An
// unterminated string runs to the end of the input.
func (l *lexer) quoted(i int, backslash bool) int {
	s := l.s
	n := len(s)
	i++ // opening quote
	for i < n {
		switch s[i] {
		case '\\':
			if backslash {
				if i+1 < n {
					switch c := s[i+1]; {
					case c == 'u' || c == 'U' || c == 'x' || (c >= '0' && c <= '7'):
						l.sensitive = true
					}
				}
				i += 2
				continue
			}
		case '\'':
			if i+1 < n && s[i+1] == '\'' {
				i += 2
				continue
			}
			return i + 1
		}
		i++
	}
	l.sensitive = true
	return n
}

// quotedIdent returns the index just past the double-quoted identifier
// starting at s[i] == '"'.
func (l *lexer) quotedIdent(i int) int {
	s := l.s
	n := len(s)
	i++
	for i < n {
		if s[i] == '"' {
			if i+1 < n && s[i+1] == '"' {
				i += 2
				continue
			}
			return i + 1
		}
		i++
	}
	l.sensitive = true
	return n
}

// skipDollarQuoted recognises $tag$...$tag$ (or $$...$$) at s[i] == '$' and
// returns the index just past it. ok is false when s[i:] does not open a
// dollar quote; closed is false when the quote runs to the end of input.
func skipDollarQuoted(s string, i int) (end int, ok, closed bool) {
	n := len(s)
	j := i + 1
	if j < n && s[j] != '$' {
		if !isIdentStart(s[j]) {
			return 0, false, false
		}
		for j < n && s[j] != '$' {
			if !isIdentCont(s[j]) {
				return 0, false, false
			}
			j++
		}
	}
	if j >= n {
		return 0, false, false
	}
	tag := s[i : j+1] // "$tag$" or "$$"
	body := j + 1
	for k := body; k+len(tag) <= n; k++ {
		if s[k] == '$' && s[k:k+len(tag)] == tag {
			return k + len(tag), true, true
		}
	}
	return n, true, false // unterminated: a literal to the end
}

// skipNumber returns the index just past the numeric literal at s[i]:
// decimal (digits, optional fraction, optional signed exponent) or a 0x, 0o
// or 0b integer, with '_' separators. junk is true when identifier
// characters follow (PostgreSQL rejects "123abc"); they are consumed too.
func skipNumber(s string, i int) (end int, junk bool) {
	n := len(s)
	digits := func(ok func(byte) bool) {
		for i < n && (ok(s[i]) || s[i] == '_') {
			i++
		}
	}
	if s[i] == '0' && i+2 < n {
		var ok func(byte) bool
		switch s[i+1] | 0x20 {
		case 'x':
			ok = func(c byte) bool { return isDigit(c) || (c|0x20 >= 'a' && c|0x20 <= 'f') }
		case 'o':
			ok = func(c byte) bool { return c >= '0' && c <= '7' }
		case 'b':
			ok = func(c byte) bool { return c == '0' || c == '1' }
		}
		if ok != nil && ok(s[i+2]) {
			i += 2
			digits(ok)
			goto tail
		}
	}
	digits(isDigit)
	if i < n && s[i] == '.' && !(i+1 < n && s[i+1] == '.') {
		i++
		digits(isDigit)
	}
	if i+1 < n && s[i]|0x20 == 'e' {
		j := i + 1
		if s[j] == '+' || s[j] == '-' {
			j++
		}
		if j < n && isDigit(s[j]) {
			i = j
			digits(isDigit)
		}
	}
tail:
	for i < n && isIdentCont(s[i]) {
		i++
		junk = true
	}
	return i, junk
}

// keyPlaceholder stands for a literal in a literal-stripped key. PostgreSQL
// rejects NUL bytes in statement text, so it cannot clash with real text.
const keyPlaceholder = 0

// scanResult is what one pass of scanStatement learns about a statement.
type scanResult struct {
	// key is the literal-stripped cache key: literals replaced by
	// keyPlaceholder, comments dropped, whitespace runs collapsed.
	key []byte
	// keySafe reports whether statements with equal keys are guaranteed to
	// have equal pg_query fingerprints (see keySafeVerbs) and to parse
	// alike (no sensitive token).
	keySafe bool
	// sensitive reports a token whose content may decide whether the
	// statement parses (see lexer.sensitive).
	sensitive bool
	// hasComments reports whether any comment was seen.
	hasComments bool
	// trailing is the body of the last /* */ comment when nothing but
	// whitespace and semicolons follows it (the sqlcommenter position);
	// empty otherwise.
	trailing string
}

// keySafeVerbs are the leading keywords of statements whose literals all
// appear as A_Const nodes in the parse tree, which pg_query's fingerprint
// ignores: for these, two statements that differ only in literals always
// share a fingerprint, so the literal-stripped key may stand for the shape.
// Other statements (FETCH 10, COPY ... FROM 'file', CREATE ROLE ... PASSWORD,
// NOTIFY ch, 'payload', EXPLAIN (FORMAT 'json'), DO $$...$$) carry literals
// in fields the fingerprint does hash, so they are cached by exact text only
// (TestKeySafetyAgreesWithPgQuery checks the list against pg_query).
var keySafeVerbs = map[string]bool{
	"select": true, "insert": true, "update": true, "delete": true,
	"with": true, "values": true, "table": true, "merge": true,
	"set": true, "show": true, "reset": true,
	"begin": true, "start": true, "commit": true, "end": true,
	"rollback": true, "abort": true, "savepoint": true, "release": true,
	"call": true,
}

// scanStatement builds the literal-stripped key of s into dst[:0] and
// collects what the comment scan needs, in one pass.
func scanStatement(dst []byte, s string) scanResult {
	r := scanResult{key: dst[:0]}
	l := newLexer(s)
	space := true    // suppress leading space
	sawVerb := false // the current statement's first word was seen
	unsafe := false  // some statement starts with a verb not in keySafeVerbs
	sawAny := false
	trailingOpen := false
	for {
		kind, a, b, ok := l.next()
		if !ok {
			break
		}
		switch kind {
		case tokSpace:
			if !space {
				r.key = append(r.key, ' ')
				space = true
			}
			continue
		case tokComment:
			r.hasComments = true
			if s[a] == '/' {
				r.trailing = blockBody(s[a:b])
				trailingOpen = true
			}
			if !space {
				r.key = append(r.key, ' ')
				space = true
			}
			continue
		case tokString, tokNumber:
			r.key = append(r.key, keyPlaceholder)
		case tokIdent:
			if !sawVerb && !isSafeVerb(s[a:b]) {
				unsafe = true
			}
			sawVerb = true
			r.key = append(r.key, s[a:b]...)
		case tokOther:
			if s[a] == ';' {
				r.key = append(r.key, ';')
				space = false
				sawVerb = false // the next statement has its own verb
				continue        // a trailing ';' keeps a trailing comment trailing
			}
			r.key = append(r.key, s[a:b]...)
		default:
			r.key = append(r.key, s[a:b]...)
		}
		space = false
		trailingOpen = false
		sawAny = true
		if !sawVerb && kind != tokIdent && (kind != tokOther || s[a] != '(') {
			// Only "(" may precede the verb, as in "(SELECT 1) UNION ...".
			sawVerb = true
			unsafe = true
		}
	}
	r.sensitive = l.sensitive
	r.keySafe = sawAny && !unsafe && !r.sensitive
	for len(r.key) > 0 && (r.key[len(r.key)-1] == ' ' || r.key[len(r.key)-1] == ';') {
		r.key = r.key[:len(r.key)-1]
	}
	if !trailingOpen {
		r.trailing = ""
	}
	return r
}

// isSafeVerb reports whether w (any case) is in keySafeVerbs without
// allocating for the common short verbs.
func isSafeVerb(w string) bool {
	if len(w) > 9 {
		return false
	}
	var buf [9]byte
	for i := 0; i < len(w); i++ {
		c := w[i]
		if c >= 'A' && c <= 'Z' {
			c += 'a' - 'A'
		}
		buf[i] = c
	}
	return keySafeVerbs[string(buf[:len(w)])]
}

// blockBody strips the /* and */ of a block comment.
func blockBody(c string) string {
	c = c[2:]
	if len(c) >= 2 && c[len(c)-2:] == "*/" {
		c = c[:len(c)-2]
	}
	return c
}

// keyHash is the fallback fingerprint of an unparsable statement: FNV-1a of
// its literal-stripped key, stable across processes and versions.
func keyHash(key []byte) Fingerprint {
	h := fnv.New64a()
	h.Write(key)
	return Fingerprint(h.Sum64())
}

// sanitize returns s with every comment removed and every literal (string,
// dollar-quoted, numeric) replaced by a positional parameter numbered after
// the highest one already present. It is applied to pg_query's normalized
// text, which keeps literals in a few places (ORDER BY 1, type modifiers,
// FETCH counts, COPY file names, PREPARE/EXECUTE), and to the text of
// statements pg_query cannot parse, so that what the audit log writes never
// carries a literal value. Whitespace outside comments is kept except that
// leading and trailing whitespace is trimmed.
func sanitize(s string) string {
	// First pass: highest existing $n and whether any change is needed.
	maxParam := 0
	dirty := false
	l := newLexer(s)
	for {
		kind, a, b, ok := l.next()
		if !ok {
			break
		}
		switch kind {
		case tokParam:
			if n, err := strconv.Atoi(s[a+1 : b]); err == nil && n > maxParam {
				maxParam = n
			}
		case tokComment, tokString, tokNumber:
			dirty = true
		}
	}
	if !dirty {
		return trimSpace(s)
	}
	out := make([]byte, 0, len(s)+8)
	l = newLexer(s)
	for {
		kind, a, b, ok := l.next()
		if !ok {
			break
		}
		switch kind {
		case tokComment:
			if len(out) > 0 && !isSpace(out[len(out)-1]) {
				out = append(out, ' ')
			}
		case tokSpace:
			if len(out) > 0 && isSpace(out[len(out)-1]) {
				continue // after a removed comment
			}
			out = append(out, s[a:b]...)
		case tokString, tokNumber:
			maxParam++
			out = append(out, '$')
			out = strconv.AppendInt(out, int64(maxParam), 10)
		default:
			out = append(out, s[a:b]...)
		}
	}
	return trimSpace(string(out))
}

func trimSpace(s string) string {
	i, j := 0, len(s)
	for i < j && isSpace(s[i]) {
		i++
	}
	for j > i && isSpace(s[j-1]) {
		j--
	}
	return s[i:j]
}
