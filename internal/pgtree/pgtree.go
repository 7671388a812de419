// Package pgtree holds the pg_query helpers shared by the analyzer and the
// planadvisor: a generic walk over a parse tree (through protobuf
// reflection), for analyses that look for a kind of node anywhere below a
// statement, and a parse-error summary that never quotes a literal.
package pgtree

import (
	"errors"
	"strings"

	"github.com/pganalyze/pg_query_go/v6/parser"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// Walk calls fn for m and every message below it, depth first, in field
// order. fn returns false to skip a message's children. Map fields are not
// entered (pg_query trees have none). An invalid (nil) message is skipped.
func Walk(m protoreflect.Message, fn func(protoreflect.Message) bool) {
	if !m.IsValid() || !fn(m) {
		return
	}
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		switch {
		case fd.IsMap():
		case fd.IsList() && fd.Message() != nil:
			l := v.List()
			for i := range l.Len() {
				Walk(l.Get(i).Message(), fn)
			}
		case fd.Message() != nil:
			Walk(v.Message(), fn)
		}
		return true
	})
}

// ParseErrorSummary returns a parse error's message without the "at or near
// <token>" part, which may quote a literal, and the cursor position.
func ParseErrorSummary(err error) (string, int) {
	var pe *parser.Error
	if errors.As(err, &pe) {
		msg := pe.Message
		if i := strings.Index(msg, " at or near"); i >= 0 {
			msg = msg[:i]
		} else if i := strings.IndexAny(msg, "\"'"); i >= 0 {
			msg = strings.TrimSpace(msg[:i])
		}
		return msg, pe.Cursorpos
	}
	return "parse failed", 0
}
