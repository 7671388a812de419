package otlplog

import (
	"strings"

	"github.com/pgaudit-proxy/pgaudit/internal/sqlscan"
)

// maxSummaryTables bounds the tables named in a query summary.
const maxSummaryTables = 3

// querySummary returns the OpenTelemetry db.query.summary of a normalized
// statement ("SELECT users", "INSERT orders", "SELECT orders customers",
// "CREATE TABLE users"), its operation name and its collection: the one
// table it names, or "" when it names none or several. The operation is
// op when given (the command tag's verb), else the first keyword in upper
// case, with the object type for CREATE, DROP and ALTER ("" when the text
// starts with no keyword). It reads only keywords and identifiers, never
// literals (the text is normalized anyway).
func querySummary(text, op string) (summary, operation, collection string) {
	word, rest := sqlscan.FirstWord(text)
	if word == "" && op == "" {
		return "", "", ""
	}
	operation = op
	if operation == "" {
		operation = strings.ToUpper(word)
		if operation == "CREATE" || operation == "DROP" || operation == "ALTER" {
			if obj := objectType(rest); obj != "" {
				operation += " " + obj
			}
		}
	}
	var tables []string
	l := sqlscan.New(text)
	expectTable := false
	for len(tables) < maxSummaryTables {
		kind, a, b, ok := l.Next()
		if !ok {
			break
		}
		switch kind {
		case sqlscan.Space, sqlscan.Comment:
			continue
		case sqlscan.Ident:
			w := text[a:b]
			if expectTable {
				if isNameModifier(w) {
					continue
				}
				name := qualifiedName(&l, text, strings.ToLower(w))
				if !containsFold(tables, name) {
					tables = append(tables, name)
				}
				expectTable = false
				continue
			}
			expectTable = isTableKeyword(w)
			continue
		case sqlscan.QuotedIdent:
			if expectTable {
				name := qualifiedName(&l, text, unquoteIdent(text[a:b]))
				if !containsFold(tables, name) {
					tables = append(tables, name)
				}
			}
		}
		expectTable = false
	}
	summary = operation
	if len(tables) > 0 {
		summary += " " + strings.Join(tables, " ")
	}
	if len(tables) == 1 {
		collection = tables[0]
	}
	return summary, operation, collection
}

// objectType returns the object type after CREATE, DROP or ALTER (TABLE,
// INDEX, MATERIALIZED VIEW), upper case, skipping OR REPLACE, UNIQUE and
// TEMPORARY-like modifiers; "" when none follows.
func objectType(rest string) string {
	var buf [6]string
	for _, w := range sqlscan.Words(rest, buf[:0]) {
		switch strings.ToLower(w) {
		case "or", "replace", "unique", "temp", "temporary", "unlogged", "global", "local", "concurrently":
			continue
		case "materialized":
			return "MATERIALIZED VIEW"
		}
		return strings.ToUpper(w)
	}
	return ""
}

// isNameModifier reports whether w may stand between a table keyword and
// the table name.
func isNameModifier(w string) bool {
	for _, k := range [...]string{"only", "lateral", "if", "not", "exists"} {
		if strings.EqualFold(w, k) {
			return true
		}
	}
	return false
}

// isTableKeyword reports whether a table name follows the keyword w.
func isTableKeyword(w string) bool {
	for _, k := range [...]string{"from", "join", "into", "update", "table"} {
		if strings.EqualFold(w, k) {
			return true
		}
	}
	return false
}

// qualifiedName extends first (folded or unquoted already) with the
// ".name" parts that follow it.
func qualifiedName(l *sqlscan.Scanner, text, first string) string {
	name := first
	for {
		save := *l
		kind, a, b, ok := l.Next()
		if !ok || kind != sqlscan.Other || text[a:b] != "." {
			*l = save
			return name
		}
		kind, a, b, ok = l.Next()
		switch {
		case ok && kind == sqlscan.Ident:
			name += "." + strings.ToLower(text[a:b])
		case ok && kind == sqlscan.QuotedIdent:
			name += "." + unquoteIdent(text[a:b])
		default:
			*l = save
			return name
		}
	}
}

func unquoteIdent(s string) string {
	s = strings.TrimPrefix(s, "U&")
	s = strings.TrimSuffix(strings.TrimPrefix(s, `"`), `"`)
	return strings.ReplaceAll(s, `""`, `"`)
}

func containsFold(list []string, s string) bool {
	for _, v := range list {
		if strings.EqualFold(v, s) {
			return true
		}
	}
	return false
}
