package planadvisor

import (
	"errors"
	"fmt"
	"strings"

	pg_query "github.com/pganalyze/pg_query_go/v6"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/pgaudit-proxy/pgaudit/internal/pgtree"
)

// ErrNotExplainable is wrapped by the error CheckExplainable (and the
// Explainer) returns for a statement pgaudit never explains; the wrapping
// error says why.
var ErrNotExplainable = errors.New("statement is not explainable")

// StatementKind says which of the explainable forms a statement has.
type StatementKind string

const (
	// StmtSelect is a plain SELECT (no INTO, no FOR UPDATE/SHARE, no
	// data-modifying WITH).
	StmtSelect StatementKind = "select"
	// StmtInsertSelect is INSERT ... SELECT.
	StmtInsertSelect StatementKind = "insert-select"
	// StmtUpdate is UPDATE.
	StmtUpdate StatementKind = "update"
	// StmtDelete is DELETE.
	StmtDelete StatementKind = "delete"
)

// ExplainableStatement is a statement CheckExplainable accepted, with its
// parse tree (shared, read-only) for the index advisor.
type ExplainableStatement struct {
	// Query is the statement text as checked.
	Query string
	// Kind is the statement's form.
	Kind StatementKind
	// NumParams is the highest parameter number ($n) the statement uses;
	// 0 when it has none.
	NumParams int
	// Tree is the statement's pg_query parse tree (exactly one statement).
	Tree *pg_query.ParseResult

	// Names the planner may resolve to user code, for the explainer's
	// check before planning (see Explainer.Inspect): functions called,
	// operators used, types cast to, and relations referenced (whose
	// views, defaults, policies, constraints and index expressions may
	// call functions). Each is a schema (or "") and a name.
	funcs, ops, types, rels []qualName
}

// qualName is a possibly schema-qualified name from the parse tree.
type qualName struct{ schema, name string }

// qualNameOf turns a parse tree name list (String nodes, the last one the
// name) into a qualName; ok is false when the list holds no name.
func qualNameOf(list []*pg_query.Node) (qualName, bool) {
	var parts []string
	for _, n := range list {
		if s := n.GetString_(); s != nil {
			parts = append(parts, s.GetSval())
		}
	}
	switch len(parts) {
	case 0:
		return qualName{}, false
	case 1:
		return qualName{name: parts[0]}, true
	default:
		return qualName{schema: parts[len(parts)-2], name: parts[len(parts)-1]}, true
	}
}

func notExplainable(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrNotExplainable, fmt.Sprintf(format, args...))
}

// CheckExplainable decides from the pg_query parse tree (never from the
// text) whether pgaudit may explain query. It accepts exactly one
// statement that is a plain SELECT, an INSERT ... SELECT, an UPDATE or a
// DELETE, and refuses everything else: text that does not parse, several
// statements, utility statements (DDL, SET, COPY, EXPLAIN, CALL, ...),
// SELECT INTO, FOR UPDATE/SHARE anywhere, a data-modifying statement
// nested anywhere (WITH d AS (DELETE ...)), INSERT ... VALUES or DEFAULT
// VALUES, and statements that reference no table. The error wraps
// ErrNotExplainable. Safe for concurrent use.
func CheckExplainable(query string) (*ExplainableStatement, error) {
	tree, err := pg_query.Parse(query)
	if err != nil {
		msg, _ := pgtree.ParseErrorSummary(err)
		return nil, notExplainable("does not parse (%s)", msg)
	}
	switch len(tree.Stmts) {
	case 0:
		return nil, notExplainable("empty statement")
	case 1:
	default:
		return nil, notExplainable("%d statements; only a single statement is explained", len(tree.Stmts))
	}
	root := tree.Stmts[0].GetStmt()
	st := &ExplainableStatement{Query: query, Tree: tree}
	var top proto.Message
	switch n := root.GetNode().(type) {
	case *pg_query.Node_SelectStmt:
		st.Kind, top = StmtSelect, n.SelectStmt
	case *pg_query.Node_InsertStmt:
		sel := n.InsertStmt.GetSelectStmt().GetSelectStmt()
		if sel == nil {
			return nil, notExplainable("INSERT without a SELECT")
		}
		if len(sel.GetValuesLists()) > 0 {
			return nil, notExplainable("INSERT ... VALUES")
		}
		st.Kind, top = StmtInsertSelect, n.InsertStmt
	case *pg_query.Node_UpdateStmt:
		st.Kind, top = StmtUpdate, n.UpdateStmt
	case *pg_query.Node_DeleteStmt:
		st.Kind, top = StmtDelete, n.DeleteStmt
	default:
		return nil, notExplainable("%s is not a SELECT, INSERT ... SELECT, UPDATE or DELETE", nodeName(root))
	}
	var refusal error
	tables := 0
	pgtree.Walk(top.ProtoReflect(), func(m protoreflect.Message) bool {
		if refusal != nil {
			return false
		}
		if m.Interface() == top {
			return true
		}
		switch n := m.Interface().(type) {
		case *pg_query.InsertStmt, *pg_query.UpdateStmt, *pg_query.DeleteStmt, *pg_query.MergeStmt:
			refusal = notExplainable("contains a data-modifying statement (%T)", n)
		case *pg_query.IntoClause:
			refusal = notExplainable("SELECT INTO creates a table")
		case *pg_query.LockingClause:
			refusal = notExplainable("FOR UPDATE/SHARE takes row locks")
		case *pg_query.RangeVar:
			tables++
			st.rels = append(st.rels, qualName{schema: n.GetSchemaname(), name: n.GetRelname()})
		case *pg_query.FuncCall:
			if q, ok := qualNameOf(n.GetFuncname()); ok {
				st.funcs = append(st.funcs, q)
			}
		case *pg_query.A_Expr:
			if q, ok := qualNameOf(n.GetName()); ok {
				st.ops = append(st.ops, q)
			}
			if k := n.GetKind(); k >= pg_query.A_Expr_Kind_AEXPR_BETWEEN && k <= pg_query.A_Expr_Kind_AEXPR_NOT_BETWEEN_SYM {
				// BETWEEN becomes >= and <= (or < and >).
				st.ops = append(st.ops, qualName{name: ">="}, qualName{name: "<="}, qualName{name: ">"}, qualName{name: "<"})
			}
		case *pg_query.SubLink:
			if q, ok := qualNameOf(n.GetOperName()); ok {
				st.ops = append(st.ops, q)
			}
		case *pg_query.TypeCast:
			if q, ok := qualNameOf(n.GetTypeName().GetNames()); ok {
				st.types = append(st.types, q)
			}
		case *pg_query.ParamRef:
			st.NumParams = max(st.NumParams, int(n.GetNumber()))
		}
		return refusal == nil
	})
	if refusal != nil {
		return nil, refusal
	}
	if tables == 0 {
		return nil, notExplainable("references no table")
	}
	return st, nil
}

// nodeName returns a parse node's type name without the package prefix,
// e.g. "CreateStmt".
func nodeName(n *pg_query.Node) string {
	if n == nil || n.GetNode() == nil {
		return "empty node"
	}
	m := n.ProtoReflect()
	if fd := m.WhichOneof(m.Descriptor().Oneofs().ByName("node")); fd != nil {
		return string(fd.Message().Name())
	}
	return "unknown node"
}

// verifySingle parses sql (built by the Explainer around an already checked
// statement) and confirms it is exactly one statement of the wanted type,
// and, for EXPLAIN, that it has no ANALYZE option: a second line of defence
// before text is sent over the simple protocol.
func verifySingle(sql string, want string) error {
	tree, err := pg_query.Parse(sql)
	if err != nil {
		msg, _ := pgtree.ParseErrorSummary(err)
		return fmt.Errorf("%w: built statement does not parse (%s)", ErrNotExplainable, msg)
	}
	if len(tree.Stmts) != 1 {
		return fmt.Errorf("%w: built statement is %d statements", ErrNotExplainable, len(tree.Stmts))
	}
	root := tree.Stmts[0].GetStmt()
	if got := nodeName(root); got != want {
		return fmt.Errorf("%w: built statement is %s, want %s", ErrNotExplainable, got, want)
	}
	if ex := root.GetExplainStmt(); ex != nil {
		for _, o := range ex.GetOptions() {
			if strings.EqualFold(o.GetDefElem().GetDefname(), "analyze") {
				return fmt.Errorf("%w: EXPLAIN ANALYZE is never run", ErrNotExplainable)
			}
		}
	}
	return nil
}
