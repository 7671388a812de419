package analyzer

import (
	"slices"
	"strings"

	pg_query "github.com/pganalyze/pg_query_go/v6"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/pgaudit-proxy/pgaudit/internal/pgtree"
)

// Lookup describes a statement as the repeated statement of an N+1 loop:
// which table and column it looks up by a parameter, and how to fetch every
// row at once instead. It is built from pg_query's parse tree.
type Lookup struct {
	// Select is true for a single plain SELECT (no set operation, no
	// VALUES list); the other fields are meaningful only then.
	Select bool
	// SingleRow is true when the SELECT returns at most one row by its
	// form: no FROM clause, or aggregates without GROUP BY.
	SingleRow bool
	// Batch is true when the statement already fetches many keys at once:
	// it has unnest() in FROM, or an IN (...), = ANY(...) or ALL(...)
	// comparison either on a key-like column ("id", "..._id") or with no
	// "column = $n" comparison beside it. (An IN over a status column next
	// to "id = $1" is a filter, not a batch.)
	Batch bool
	// Table is the relation the looked-up column belongs to, schema
	// qualified when the statement qualifies it ("public.authors"); empty
	// when it cannot be told (an unqualified column over a join).
	Table string
	// Column is the column compared with a parameter ("id"); when the
	// statement compares several, the one named "id", else the last.
	Column string
	// Rewrite is the statement with that comparison turned into
	// "column = ANY($n)" (a cast on the parameter becomes an array cast),
	// the column added to the select list when the list neither has it nor
	// a star, and a LIMIT without ORDER BY removed. Empty when no rewrite
	// can be built (no parameter comparison, or ORDER BY ... LIMIT, which
	// asks for the top rows per key).
	Rewrite string
}

// AnalyzeLookup parses sql (normally a Shape's normalized text, so the
// rewrite carries $n placeholders and no literal values) and describes it
// as a lookup. A statement pg_query cannot parse yields the zero Lookup.
// It calls pg_query (cgo): call it from analyzer workers, once per shape.
func AnalyzeLookup(sql string) Lookup {
	var lk Lookup
	tree, err := pg_query.Parse(sql)
	if err != nil || len(tree.GetStmts()) != 1 {
		return lk
	}
	sel := tree.GetStmts()[0].GetStmt().GetSelectStmt()
	if sel == nil || sel.GetOp() != pg_query.SetOperation_SETOP_NONE || len(sel.GetValuesLists()) > 0 {
		return lk
	}
	lk.Select = true
	lk.SingleRow = singleRow(sel)
	batchKey, batchAny := batchShape(sel)

	rels := map[string]string{} // alias or relation name -> qualified name
	var order []string          // qualified names in FROM order
	for _, n := range sel.GetFromClause() {
		collectRelations(n, rels, &order)
	}

	type cand struct {
		expr  *pg_query.A_Expr
		col   *pg_query.ColumnRef
		param *pg_query.Node
	}
	var cands []cand
	for _, c := range conjuncts(sel.GetWhereClause()) {
		e := c.GetAExpr()
		if e == nil || e.GetKind() != pg_query.A_Expr_Kind_AEXPR_OP || !isOp(e.GetName(), "=") {
			continue
		}
		if col := e.GetLexpr().GetColumnRef(); col != nil && isParam(e.GetRexpr()) {
			cands = append(cands, cand{e, col, e.GetRexpr()})
		} else if col := e.GetRexpr().GetColumnRef(); col != nil && isParam(e.GetLexpr()) {
			cands = append(cands, cand{e, col, e.GetLexpr()})
		}
	}
	lk.Batch = batchKey || (batchAny && len(cands) == 0)
	if len(cands) == 0 {
		if len(order) == 1 {
			lk.Table = order[0]
		}
		return lk
	}
	pick := cands[len(cands)-1]
	for _, c := range cands {
		if _, name := columnName(c.col); name == "id" {
			pick = c
			break
		}
	}
	qual, name := columnName(pick.col)
	lk.Column = name
	switch {
	case qual != "":
		lk.Table = rels[qual]
	case len(order) == 1:
		lk.Table = order[0]
	}
	if lk.Batch || name == "" {
		return lk
	}
	if sel.GetLimitCount() != nil && len(sel.GetSortClause()) > 0 {
		return lk // top rows per key: no plain batch rewrite
	}

	// Rewrite in place: the tree is ours.
	pick.expr.Kind = pg_query.A_Expr_Kind_AEXPR_OP_ANY
	pick.expr.Lexpr = &pg_query.Node{Node: &pg_query.Node_ColumnRef{ColumnRef: pick.col}}
	param := pick.param
	if tc := param.GetTypeCast(); tc != nil && tc.GetTypeName() != nil {
		tn := proto.Clone(tc.GetTypeName()).(*pg_query.TypeName)
		tn.ArrayBounds = append(tn.ArrayBounds, pg_query.MakeIntNode(-1))
		tc.TypeName = tn
	}
	pick.expr.Rexpr = param
	colNode := func() *pg_query.Node {
		return &pg_query.Node{Node: &pg_query.Node_ColumnRef{ColumnRef: proto.Clone(pick.col).(*pg_query.ColumnRef)}}
	}
	if !selectsColumn(sel.GetTargetList(), qual, name) {
		sel.TargetList = slices.Insert(sel.TargetList, 0, pg_query.MakeResTargetNodeWithVal(colNode(), 0))
	}
	if len(sel.GetGroupClause()) > 0 || hasAggregate(sel) {
		// One group per key: count(*) per post instead of one count.
		if !groupsBy(sel.GetGroupClause(), qual, name) {
			sel.GroupClause = slices.Insert(sel.GroupClause, 0, colNode())
		}
	}
	if sel.GetLimitCount() != nil {
		sel.LimitCount = nil
		sel.LimitOption = pg_query.LimitOption_LIMIT_OPTION_DEFAULT
	}
	if out, err := pg_query.Deparse(tree); err == nil {
		lk.Rewrite = out
	}
	return lk
}

// aggregates are the common aggregate functions: a SELECT of them without
// GROUP BY returns one row.
var aggregates = map[string]bool{
	"count": true, "sum": true, "avg": true, "min": true, "max": true,
	"bool_and": true, "bool_or": true, "every": true, "array_agg": true,
	"string_agg": true, "json_agg": true, "jsonb_agg": true,
	"json_object_agg": true, "jsonb_object_agg": true, "bit_and": true,
	"bit_or": true, "stddev": true, "variance": true,
}

func singleRow(sel *pg_query.SelectStmt) bool {
	if len(sel.GetFromClause()) == 0 {
		return true
	}
	return len(sel.GetGroupClause()) == 0 && hasAggregate(sel)
}

// hasAggregate reports whether the select list calls an aggregate (not as
// a window function) at its top level.
func hasAggregate(sel *pg_query.SelectStmt) bool {
	for _, t := range sel.GetTargetList() {
		fc := t.GetResTarget().GetVal().GetFuncCall()
		if fc == nil || fc.GetOver() != nil || len(fc.GetFuncname()) == 0 {
			continue
		}
		name := fc.GetFuncname()[len(fc.GetFuncname())-1].GetString_().GetSval()
		if aggregates[strings.ToLower(name)] {
			return true
		}
	}
	return false
}

// groupsBy reports whether a GROUP BY list has the column.
func groupsBy(group []*pg_query.Node, qual, name string) bool {
	for _, g := range group {
		if c := g.GetColumnRef(); c != nil {
			q, n := columnName(c)
			if n == name && (q == "" || qual == "" || q == qual) {
				return true
			}
		}
	}
	return false
}

// conjuncts flattens the AND tree of a WHERE clause.
func conjuncts(n *pg_query.Node) []*pg_query.Node {
	if n == nil {
		return nil
	}
	if b := n.GetBoolExpr(); b != nil && b.GetBoolop() == pg_query.BoolExprType_AND_EXPR {
		var out []*pg_query.Node
		for _, a := range b.GetArgs() {
			out = append(out, conjuncts(a)...)
		}
		return out
	}
	return []*pg_query.Node{n}
}

func isOp(name []*pg_query.Node, op string) bool {
	return len(name) == 1 && name[0].GetString_().GetSval() == op
}

// isParam reports whether n is $n, possibly cast ($1::int).
func isParam(n *pg_query.Node) bool {
	if tc := n.GetTypeCast(); tc != nil {
		n = tc.GetArg()
	}
	return n.GetParamRef() != nil
}

// columnName splits a column reference into its qualifier (the table or
// alias, "" when unqualified) and its column name ("" for a star).
func columnName(c *pg_query.ColumnRef) (qual, name string) {
	f := c.GetFields()
	if len(f) == 0 {
		return "", ""
	}
	name = f[len(f)-1].GetString_().GetSval()
	if len(f) >= 2 {
		qual = f[len(f)-2].GetString_().GetSval()
	}
	return qual, name
}

// collectRelations records the plain relations of a FROM item under their
// alias (or name) and in order.
func collectRelations(n *pg_query.Node, rels map[string]string, order *[]string) {
	switch {
	case n.GetRangeVar() != nil:
		rv := n.GetRangeVar()
		name := rv.GetRelname()
		if rv.GetSchemaname() != "" {
			name = rv.GetSchemaname() + "." + name
		}
		*order = append(*order, name)
		if a := rv.GetAlias().GetAliasname(); a != "" {
			rels[a] = name
		} else {
			rels[rv.GetRelname()] = name
		}
	case n.GetJoinExpr() != nil:
		collectRelations(n.GetJoinExpr().GetLarg(), rels, order)
		collectRelations(n.GetJoinExpr().GetRarg(), rels, order)
	}
}

// selectsColumn reports whether the select list has a star (t.* or *) or
// the column itself.
func selectsColumn(targets []*pg_query.Node, qual, name string) bool {
	for _, t := range targets {
		c := t.GetResTarget().GetVal().GetColumnRef()
		if c == nil {
			continue
		}
		f := c.GetFields()
		if len(f) > 0 && f[len(f)-1].GetAStar() != nil {
			return true
		}
		q, n := columnName(c)
		if n == name && (q == "" || qual == "" || q == qual) {
			return true
		}
	}
	return false
}

// batchShape looks for the marks of a batch in the WHERE clause and FROM
// list: key is true for unnest() in FROM or an IN/ANY/ALL comparison on a
// key-like column, anyIn for an IN/ANY/ALL comparison on anything.
func batchShape(sel *pg_query.SelectStmt) (key, anyIn bool) {
	visit := func(m protoreflect.Message) bool {
		switch x := m.Interface().(type) {
		case *pg_query.A_Expr:
			switch x.GetKind() {
			case pg_query.A_Expr_Kind_AEXPR_IN, pg_query.A_Expr_Kind_AEXPR_OP_ANY, pg_query.A_Expr_Kind_AEXPR_OP_ALL:
				anyIn = true
				for _, side := range []*pg_query.Node{x.GetLexpr(), x.GetRexpr()} {
					if c := side.GetColumnRef(); c != nil {
						if _, name := columnName(c); keyLike(name) {
							key = true
						}
					}
				}
			}
		case *pg_query.FuncCall:
			for _, n := range x.GetFuncname() {
				if strings.EqualFold(n.GetString_().GetSval(), "unnest") {
					key = true
				}
			}
		}
		return true
	}
	if w := sel.GetWhereClause(); w != nil {
		pgtree.Walk(w.ProtoReflect(), visit)
	}
	for _, f := range sel.GetFromClause() {
		pgtree.Walk(f.ProtoReflect(), func(m protoreflect.Message) bool {
			switch x := m.Interface().(type) {
			case *pg_query.RangeFunction:
				pgtree.Walk(x.ProtoReflect(), visit)
			case *pg_query.JoinExpr:
				if q := x.GetQuals(); q != nil {
					pgtree.Walk(q.ProtoReflect(), visit)
				}
			}
			return true
		})
	}
	return key, anyIn
}

// keyLike reports whether a column name looks like a key: "id", "..._id"
// or "...Id".
func keyLike(name string) bool {
	l := strings.ToLower(name)
	return l == "id" || strings.HasSuffix(l, "_id") || strings.HasSuffix(name, "Id")
}
