package sqlscan

import "strings"

// FirstWord skips whitespace, comments and opening parentheses at the start
// of s and returns the identifier or keyword found there (as written;
// compare it with strings.EqualFold) and the text after it. word is empty
// when s holds no such token before anything else (a literal, an operator,
// a quoted identifier) or holds nothing; rest then starts at that token.
// It does not allocate.
func FirstWord(s string) (word, rest string) {
	// The common case, a text that starts with a keyword of two or more
	// letters (SELECT, INSERT, ...), without the scanner: its first token
	// is that identifier (a one-letter word may open a string, E'..').
	if len(s) > 1 && IsIdentStart(s[0]) && s[0] < 0x80 {
		j := 1
		for j < len(s) && IsIdentCont(s[j]) {
			j++
		}
		if j > 1 {
			return s[:j], s[j:]
		}
	}
	return firstWordScanned(s)
}

// firstWordScanned is FirstWord by the scanner alone, without the
// shortcut for a text that starts with a plain word.
func firstWordScanned(s string) (string, string) {
	l := New(s)
	for {
		kind, a, b, ok := l.Next()
		if !ok {
			return "", ""
		}
		switch kind {
		case Space, Comment:
			continue
		case Other:
			if s[a] == '(' {
				continue
			}
		case Ident:
			return s[a:b], s[b:]
		}
		return "", s[a:]
	}
}

// Words appends to out, until len(out) reaches cap(out), the leading
// keywords or identifiers of s as written, skipping whitespace and
// comments. It stops at the first token of another kind (a literal, an
// operator, a parenthesis). It allocates only if out must grow, which it
// never does.
func Words(s string, out []string) []string {
	n := cap(out)
	l := New(s)
	for len(out) < n {
		kind, a, b, ok := l.Next()
		switch {
		case !ok:
			return out
		case kind == Ident:
			out = append(out, s[a:b])
		case kind != Space && kind != Comment:
			return out
		}
	}
	return out
}

// SplitStatements splits a simple-protocol query string at top-level
// semicolons (outside comments, strings, dollar quotes and quoted
// identifiers). Empty statements are dropped; each piece has its
// surrounding whitespace trimmed. A text without any semicolon is returned
// as its one trimmed statement, even when that is empty.
func SplitStatements(sql string) []string {
	if strings.IndexByte(sql, ';') < 0 {
		return []string{strings.TrimSpace(sql)}
	}
	var out []string
	start := 0
	l := New(sql)
	for {
		kind, a, _, ok := l.Next()
		if !ok {
			break
		}
		if kind == Other && sql[a] == ';' {
			if s := strings.TrimSpace(sql[start:a]); s != "" {
				out = append(out, s)
			}
			start = a + 1
		}
	}
	if start < len(sql) {
		if s := strings.TrimSpace(sql[start:]); s != "" {
			out = append(out, s)
		}
	}
	return out
}
