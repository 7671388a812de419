// Package sqlscan is pgaudit's one SQL scanner: a small, allocation-free,
// pure-Go tokenizer that knows just enough of PostgreSQL's lexical rules to
// find comments (-- and nested /* */), string literals ('x', E'x', B'x',
// X'x', N'x', U&'x' and $tag$x$tag$), numbers, positional parameters,
// identifiers (plain, "quoted" and U&"quoted") and keywords. It never judges whether a
// statement is valid and never builds a parse tree; real parsing is
// pg_query's job in the analyzer.
//
// It is a leaf package (standard library only) so that the relay, which
// classifies statements on its hot path, and the log readers can use it
// without linking cgo. Its callers are the pooler's statement
// classification, the analyzer's literal-stripped cache key and sanitizer,
// and the log readers' keyword scan.
package sqlscan

// Kind is the kind of a token.
type Kind uint8

const (
	Space       Kind = iota // run of whitespace
	Comment                 // -- line comment or /* block */ comment (nested)
	String                  // any string literal: '', E'', B'', X'', N'', U&'', $tag$...$tag$
	Number                  // numeric literal: 42, 1.5e-3, .5, 0x1F, 1_000
	Param                   // positional parameter: $1
	Ident                   // unquoted identifier or keyword
	QuotedIdent             // "quoted identifier", U&"..."
	Other                   // one byte of punctuation or operator
)

// Scanner walks a statement token by token. The zero value scans the empty
// string; use New. A Scanner never allocates and may be copied; it is not
// safe for concurrent use.
type Scanner struct {
	s   string
	pos int
	// sensitive is set once a token was seen whose content, not just its
	// kind, decides whether the statement parses (see Sensitive).
	sensitive bool
}

// New returns a Scanner positioned at the start of s.
func New(s string) Scanner { return Scanner{s: s} }

// Sensitive reports whether a token was scanned so far whose content, not
// just its kind, decides whether the statement parses: an unterminated
// string, quoted identifier, dollar quote or comment; a number with
// trailing junk; an E'x' string with \u, \U, \x or octal escapes (which
// may be invalid); any U&'x' string or U&"x" identifier.
func (l *Scanner) Sensitive() bool { return l.sensitive }

// Seek makes the next call of Next start at byte pos of the input, which
// the caller has scanned past by other means (a cast after a literal, say).
// pos must be a token boundary the caller knows; a pos past the end ends
// the scan.
func (l *Scanner) Seek(pos int) { l.pos = pos }

// Character classes, looked up in one table: the scanner touches every byte
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

// IsSpace reports whether c is SQL whitespace (space, \t, \n, \r, \f, \v).
func IsSpace(c byte) bool { return charClass[c]&clSpace != 0 }

// IsIdentStart reports whether c may start an unquoted identifier: an ASCII
// letter, '_' or any byte of a multi-byte UTF-8 sequence.
func IsIdentStart(c byte) bool { return charClass[c]&clIdentStart != 0 }

// IsIdentCont reports whether c may continue an unquoted identifier: what
// IsIdentStart accepts, digits and '$'.
func IsIdentCont(c byte) bool { return charClass[c]&clIdentCont != 0 }

// IsDigit reports whether c is an ASCII digit.
func IsDigit(c byte) bool { return charClass[c]&clDigit != 0 }

// Next returns the next token as a kind and the byte range [start,end) of
// the input; ok is false at the end of input. Every byte of the input
// belongs to exactly one token; an unterminated string, quoted identifier,
// dollar quote or block comment runs to the end of the input.
func (l *Scanner) Next() (kind Kind, start, end int, ok bool) {
	s := l.s
	i := l.pos
	n := len(s)
	if i >= n {
		return 0, i, i, false
	}
	start = i
	c := s[i]
	switch {
	case IsSpace(c):
		for i < n && IsSpace(s[i]) {
			i++
		}
		kind = Space
	case c == '-' && i+1 < n && s[i+1] == '-':
		for i < n && s[i] != '\n' {
			i++
		}
		kind = Comment
	case c == '/' && i+1 < n && s[i+1] == '*':
		var closed bool
		i, closed = SkipBlockComment(s, i)
		if !closed {
			l.sensitive = true
		}
		kind = Comment
	case c == '\'':
		i = l.quoted(i, false)
		kind = String
	case c == '"':
		i = l.quotedIdent(i)
		kind = QuotedIdent
	case c == '$':
		if i+1 < n && IsDigit(s[i+1]) {
			i++
			for i < n && IsDigit(s[i]) {
				i++
			}
			kind = Param
			break
		}
		if end, ok, closed := SkipDollarQuoted(s, i); ok {
			i = end
			kind = String
			l.sensitive = l.sensitive || !closed
			break
		}
		i++
		kind = Other
	case IsDigit(c) || (c == '.' && i+1 < n && IsDigit(s[i+1])):
		var junk bool
		i, junk = skipNumber(s, i)
		l.sensitive = l.sensitive || junk
		kind = Number
	case IsIdentStart(c):
		j := i
		for j < n && IsIdentCont(s[j]) {
			j++
		}
		// String prefixes: E'..', B'..', X'..', N'..', U&'..' and U&"..".
		if j-i == 1 && j < n && s[j] == '\'' {
			switch c | 0x20 {
			case 'e':
				i = l.quoted(j, true)
				kind = String
				goto done
			case 'b', 'x', 'n':
				i = l.quoted(j, false)
				kind = String
				goto done
			}
		}
		if j-i == 1 && c|0x20 == 'u' && j+1 < n && s[j] == '&' {
			if s[j+1] == '\'' {
				l.sensitive = true // Unicode escapes may be invalid
				i = l.quoted(j+1, false)
				kind = String
				goto done
			}
			if s[j+1] == '"' {
				l.sensitive = true
				i = l.quotedIdent(j + 1)
				kind = QuotedIdent
				goto done
			}
		}
		i = j
		kind = Ident
	default:
		i++
		kind = Other
	}
done:
	l.pos = i
	return kind, start, i, true
}

// quoted returns the index just past the single-quoted string starting at
// s[i], a single quote. Doubled quotes continue the string; with backslash
// true (an E'...' string) a backslash escapes the next byte. An
// unterminated string runs to the end of the input.
func (l *Scanner) quoted(i int, backslash bool) int {
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
func (l *Scanner) quotedIdent(i int) int {
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

// SkipBlockComment returns the index just past the block comment that
// starts at s[i:i+2] == "/*", honouring nesting as Postgres does. closed is
// false when the comment runs to the end of s (end is then len(s)).
func SkipBlockComment(s string, i int) (end int, closed bool) {
	n := len(s)
	depth := 0
	for i < n {
		switch {
		case s[i] == '/' && i+1 < n && s[i+1] == '*':
			depth++
			i += 2
		case s[i] == '*' && i+1 < n && s[i+1] == '/':
			depth--
			i += 2
			if depth == 0 {
				return i, true
			}
		default:
			i++
		}
	}
	return n, false
}

// SkipDollarQuoted recognises $tag$...$tag$ (or $$...$$) at s[i] == '$' and
// returns the index just past it. ok is false when s[i:] does not open a
// dollar quote; closed is false when the quote runs to the end of input.
func SkipDollarQuoted(s string, i int) (end int, ok, closed bool) {
	n := len(s)
	j := i + 1
	if j < n && s[j] != '$' {
		if !IsIdentStart(s[j]) {
			return 0, false, false
		}
		for j < n && s[j] != '$' {
			if !IsIdentCont(s[j]) {
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
			ok = func(c byte) bool { return IsDigit(c) || (c|0x20 >= 'a' && c|0x20 <= 'f') }
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
	digits(IsDigit)
	if i < n && s[i] == '.' && !(i+1 < n && s[i+1] == '.') {
		i++
		digits(IsDigit)
	}
	if i+1 < n && s[i]|0x20 == 'e' {
		j := i + 1
		if s[j] == '+' || s[j] == '-' {
			j++
		}
		if j < n && IsDigit(s[j]) {
			i = j
			digits(IsDigit)
		}
	}
tail:
	for i < n && IsIdentCont(s[i]) {
		i++
		junk = true
	}
	return i, junk
}
