package analyzer

import (
	"hash/fnv"
	"hash/maphash"
	"strconv"

	"github.com/pgaudit-proxy/pgaudit/internal/sqlscan"
)

// This file holds the analyzer's uses of internal/sqlscan, the one SQL
// tokenizer: the literal-stripped cache key (literalKey), the sanitizer
// that removes any literal left in normalized text (sanitize), and the
// comment scan for sqlcommenter tags and pgaudit:ignore directives. The
// short names below keep the analyzer's call sites as they were.

type tokKind = sqlscan.Kind

const (
	tokSpace       = sqlscan.Space       // run of whitespace
	tokComment     = sqlscan.Comment     // -- line comment or /* block */ comment (nested)
	tokString      = sqlscan.String      // any string literal: '', E'', B'', X'', N'', U&'', $tag$...$tag$
	tokNumber      = sqlscan.Number      // numeric literal: 42, 1.5e-3, .5, 0x1F, 1_000
	tokParam       = sqlscan.Param       // positional parameter: $1
	tokIdent       = sqlscan.Ident       // unquoted identifier or keyword
	tokQuotedIdent = sqlscan.QuotedIdent // "quoted identifier", U&"..."
	tokOther       = sqlscan.Other       // one byte of punctuation or operator
)

// lexer walks a statement token by token (a sqlscan.Scanner). It never
// allocates.
type lexer struct{ sqlscan.Scanner }

func newLexer(s string) lexer { return lexer{sqlscan.New(s)} }

// next returns the next token as a kind and the byte range [start,end) of
// the input; ok is false at the end of input.
func (l *lexer) next() (kind tokKind, start, end int, ok bool) { return l.Next() }

func isSpace(c byte) bool     { return sqlscan.IsSpace(c) }
func isIdentCont(c byte) bool { return sqlscan.IsIdentCont(c) }
func isDigit(c byte) bool     { return sqlscan.IsDigit(c) }

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
	// statement parses (see sqlscan.Scanner.Sensitive).
	sensitive bool
	// hasComments reports whether any comment was seen.
	hasComments bool
	// trailing is the body of the last /* */ comment when nothing but
	// whitespace and semicolons follows it (the sqlcommenter position);
	// empty otherwise.
	trailing string
	// litKey is literalKey(literalSeed, s), computed in the same pass
	// when scanStatementLit was asked for it.
	litKey uint64
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
func scanStatement(dst []byte, s string) scanResult { return scanStatementLit(dst, s, false) }

// scanStatementLit is scanStatement that also computes r.litKey (the
// literal key the detectors need) in the same pass when lit is set, so the
// statement is lexed once.
func scanStatementLit(dst []byte, s string, lit bool) scanResult {
	r := scanResult{key: dst[:0]}
	var h maphash.Hash
	if lit {
		h.SetSeed(literalSeed)
	}
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
		if lit && kind != tokSpace && kind != tokComment {
			// as literalKey does
			h.WriteString(s[a:b])
			h.WriteByte(0)
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
	r.sensitive = l.Sensitive()
	r.keySafe = sawAny && !unsafe && !r.sensitive
	for len(r.key) > 0 && (r.key[len(r.key)-1] == ' ' || r.key[len(r.key)-1] == ';') {
		r.key = r.key[:len(r.key)-1]
	}
	if !trailingOpen {
		r.trailing = ""
	}
	if lit {
		r.litKey = h.Sum64()
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
