package analyzer

import (
	"net/url"
	"strings"
)

// Annotations are the per-statement facts found in a statement's comments:
// sqlcommenter tags (https://google.github.io/sqlcommenter/spec/) on a
// trailing /* ... */ comment, and pgaudit:ignore directives in any comment.
//
// An Annotations value is read-only once returned: its map and slice may be
// shared between every event that carries the same statement text.
type Annotations struct {
	// TraceParent is the W3C traceparent from the sqlcommenter comment, set
	// only when it is well formed ("00-<32 hex>-<16 hex>-<2 hex>").
	TraceParent string
	// Tags holds every sqlcommenter key and value, URL-decoded (route,
	// controller, action, framework, db_driver, application, file,
	// traceparent, tracestate, ...); nil when the statement has none. At most
	// maxTags tags of bounded size are kept.
	Tags map[string]string
	// Ignore lists the rule ids named by "pgaudit:ignore id[,id...]"
	// directives. A directive that names no rule yields "*": ignore every
	// rule for this statement. Nil when there is no directive.
	Ignore []string
}

// IsZero reports whether no annotation was found.
func (a Annotations) IsZero() bool {
	return a.TraceParent == "" && a.Tags == nil && a.Ignore == nil
}

// Ignores reports whether the statement asked rule ruleID to be ignored,
// either by name or with a bare directive ("*").
func (a Annotations) Ignores(ruleID string) bool {
	for _, id := range a.Ignore {
		if id == "*" || id == ruleID {
			return true
		}
	}
	return false
}

// IgnoreDirective is the comment word that suppresses rules for one
// statement: "/* pgaudit:ignore n-plus-one,seq-scan */" or
// "-- pgaudit:ignore".
const IgnoreDirective = "pgaudit:ignore"

const (
	maxTags        = 32
	maxTagKeyLen   = 128
	maxTagValueLen = 1024
)

// ParseAnnotations reads the annotations of one statement. It is safe for
// concurrent use and does not retain text beyond the returned strings (which
// may share its memory).
func ParseAnnotations(text string) Annotations {
	var buf [256]byte
	r := scanStatement(buf[:0], text)
	return annotationsFrom(text, &r)
}

// annotationsFrom builds Annotations from a scan already made of text.
func annotationsFrom(text string, r *scanResult) Annotations {
	var a Annotations
	if !r.hasComments {
		return a
	}
	if r.trailing != "" {
		a.Tags = parseSQLCommenter(r.trailing)
		if tp, ok := a.Tags["traceparent"]; ok && validTraceParent(tp) {
			a.TraceParent = tp
		}
	}
	if strings.Contains(text, IgnoreDirective) {
		l := newLexer(text)
		for {
			kind, s, e, ok := l.next()
			if !ok {
				break
			}
			if kind != tokComment {
				continue
			}
			body := text[s+2 : e] // after "--" or "/*"
			if text[s] == '/' {
				body = blockBody(text[s:e])
			}
			a.Ignore = parseIgnore(body, a.Ignore)
		}
	}
	return a
}

// parseSQLCommenter decodes the body of a sqlcommenter comment:
// key='value',key2='value2' with keys and values URL-encoded and ' escaped
// as \'. It returns nil when body is not in that form (an ordinary comment).
func parseSQLCommenter(body string) map[string]string {
	body = trimSpace(body)
	if body == "" {
		return nil
	}
	var m map[string]string
	for {
		eq := strings.IndexByte(body, '=')
		if eq <= 0 {
			return nil
		}
		key := trimSpace(body[:eq])
		if key == "" || strings.ContainsAny(key, " \t\r\n'\",") {
			return nil
		}
		rest := trimSpace(body[eq+1:])
		if rest == "" || rest[0] != '\'' {
			return nil
		}
		// Find the closing quote; \' and \\ are escapes.
		i := 1
		escaped := false
		for ; i < len(rest); i++ {
			if rest[i] == '\\' && i+1 < len(rest) {
				escaped = true
				i++
				continue
			}
			if rest[i] == '\'' {
				break
			}
		}
		if i >= len(rest) {
			return nil // unterminated value
		}
		raw := rest[1:i]
		if escaped {
			raw = unescapeMeta(raw)
		}
		if len(key) <= maxTagKeyLen && len(raw) <= maxTagValueLen && len(m) < maxTags {
			if m == nil {
				m = make(map[string]string, 4)
			}
			m[urlDecode(key)] = urlDecode(raw)
		}
		rest = trimSpace(rest[i+1:])
		if rest == "" {
			return m
		}
		if rest[0] != ',' {
			return nil
		}
		body = rest[1:]
	}
}

// unescapeMeta undoes sqlcommenter's meta-character escaping (\' and \\).
func unescapeMeta(s string) string {
	var b strings.Builder
	b.Grow(len(s))
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+1 < len(s) {
			i++
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// urlDecode percent-decodes s as sqlcommenter specifies (RFC 3986; '+' is
// kept as is). A malformed escape leaves s unchanged.
func urlDecode(s string) string {
	if strings.IndexByte(s, '%') < 0 {
		return s
	}
	d, err := url.PathUnescape(s)
	if err != nil {
		return s
	}
	return d
}

// validTraceParent checks the W3C trace-context form
// version-traceid-parentid-flags with lowercase hex fields, rejecting the
// invalid version ff and all-zero ids.
func validTraceParent(s string) bool {
	if len(s) < 55 || s[2] != '-' || s[35] != '-' || s[52] != '-' {
		return false
	}
	if len(s) > 55 && (s[:2] == "00" || s[55] != '-') {
		return false // version 00 has exactly four fields
	}
	if !isLowerHex(s[0:2]) || s[0:2] == "ff" ||
		!isLowerHex(s[3:35]) || !isLowerHex(s[36:52]) || !isLowerHex(s[53:55]) {
		return false
	}
	return strings.Trim(s[3:35], "0") != "" && strings.Trim(s[36:52], "0") != ""
}

func isLowerHex(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !isDigit(c) && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

func isRuleIDChar(c byte) bool {
	return isDigit(c) || (c|0x20 >= 'a' && c|0x20 <= 'z') || c == '_' || c == '-' || c == '.' || c == '/' || c == '*'
}

// parseIgnore appends the rule ids of every pgaudit:ignore directive in one
// comment body to dst.
func parseIgnore(body string, dst []string) []string {
	for {
		i := strings.Index(body, IgnoreDirective)
		if i < 0 {
			return dst
		}
		rest := body[i+len(IgnoreDirective):]
		body = rest
		if rest != "" && !isSpace(rest[0]) && rest[0] != ',' {
			continue // "pgaudit:ignored" is not the directive
		}
		n := len(dst)
		for {
			for rest != "" && isSpace(rest[0]) {
				rest = rest[1:]
			}
			j := 0
			for j < len(rest) && isRuleIDChar(rest[j]) {
				j++
			}
			if j > 0 {
				dst = append(dst, rest[:j])
			}
			rest = rest[j:]
			for rest != "" && isSpace(rest[0]) {
				rest = rest[1:]
			}
			if rest == "" || rest[0] != ',' {
				break
			}
			rest = rest[1:]
		}
		if len(dst) == n {
			dst = append(dst, "*")
		}
		body = rest
	}
}
