package planadvisor

import (
	"context"
	"fmt"
	"slices"
	"strings"

	pg_query "github.com/pganalyze/pg_query_go/v6"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/pgaudit-proxy/pgaudit/internal/pgtree"
)

// IndexAdvice is the index advisor's result for one sequentially scanned
// table. A plain value owned by the caller.
type IndexAdvice struct {
	// Columns are the suggested index's key columns, in order; empty when
	// no candidate was found or none passed validation.
	Columns []string `json:"columns,omitempty"`
	// CreateStatement is the ready CREATE INDEX CONCURRENTLY statement
	// (empty with Columns).
	CreateStatement string `json:"create_statement,omitempty"`
	// Validated is true when the costs were measured with HypoPG
	// hypothetical indexes.
	Validated bool `json:"validated"`
	// Note says why the advice is unvalidated or empty.
	Note string `json:"note,omitempty"`
	// CostBefore is the statement's plan cost as it is.
	CostBefore float64 `json:"cost_before"`
	// CostAfter is the plan cost with the suggested hypothetical index
	// (validated only).
	CostAfter float64 `json:"cost_after,omitempty"`
	// Tried lists every hypothetical index explained, with its cost.
	Tried []CandidateCost `json:"tried,omitempty"`
	// Skipped lists columns the statement filters or sorts on that were
	// left out, with the reason.
	Skipped []SkippedColumn `json:"skipped,omitempty"`
}

// CandidateCost is one hypothetical index tried and the statement's plan
// cost with it.
type CandidateCost struct {
	Columns []string `json:"columns"` // index key columns in order
	Cost    float64  `json:"cost"`    // statement plan cost with the index
	// Used is true when the plan scanned the hypothetical index.
	Used bool `json:"used"`
}

// SkippedColumn is a candidate column the advisor left out and why.
type SkippedColumn struct {
	Column string `json:"column"` // column, or comma-separated column list
	Reason string `json:"reason"` // e.g. "covered by existing index x"
}

// columnClass orders candidate columns: equality and IN first, then
// range, then ORDER BY, then join keys.
type columnClass int

const (
	classEq columnClass = iota
	classRange
	classOrder
	classJoin
)

// ColumnUses are a statement's uses of one relation's columns, as the
// advisor ranks them. Each list is in order of appearance without
// duplicates; a column appears in the first list that has it.
type ColumnUses struct {
	// Eq are columns compared with = to a value, IN (...), = ANY(...), or
	// IS NULL.
	Eq []string `json:"eq,omitempty"`
	// Range are columns compared with <, <=, >, >= or BETWEEN to a value.
	Range []string `json:"range,omitempty"`
	// Order are ORDER BY columns.
	Order []string `json:"order,omitempty"`
	// Join are columns compared with = to another relation's column.
	Join []string `json:"join,omitempty"`
}

func (u *ColumnUses) add(c columnClass, col string) {
	for _, l := range [][]string{u.Eq, u.Range, u.Order, u.Join} {
		if slices.Contains(l, col) {
			if c == classEq && !slices.Contains(u.Eq, col) {
				// Promote: equality beats any other use.
				u.Range = slices.DeleteFunc(u.Range, func(s string) bool { return s == col })
				u.Order = slices.DeleteFunc(u.Order, func(s string) bool { return s == col })
				u.Join = slices.DeleteFunc(u.Join, func(s string) bool { return s == col })
				u.Eq = append(u.Eq, col)
				for _, l := range []*[]string{&u.Range, &u.Order, &u.Join} {
					if len(*l) == 0 {
						*l = nil
					}
				}
			}
			return
		}
	}
	switch c {
	case classEq:
		u.Eq = append(u.Eq, col)
	case classRange:
		u.Range = append(u.Range, col)
	case classOrder:
		u.Order = append(u.Order, col)
	case classJoin:
		u.Join = append(u.Join, col)
	}
}

// RelationRef names a relation as a plan shows it.
type RelationRef struct {
	Schema string // may be empty: any schema matches
	Name   string // relation name
	// Alias is the plan's Alias (the query's alias, or the relation name).
	Alias string
}

// FindColumnUses walks a statement's parse tree for the query blocks
// (SELECT, UPDATE, DELETE) that read rel and collects how their WHERE
// clauses, JOIN ... ON conditions and ORDER BY use rel's columns. columns
// are the relation's column names, used to attribute unqualified column
// references; only top-level AND-ed conditions count (an OR is skipped).
func FindColumnUses(tree *pg_query.ParseResult, rel RelationRef, columns []string) ColumnUses {
	var blocks []*queryBlock
	for _, rs := range tree.GetStmts() {
		pgtree.Walk(rs.ProtoReflect(), func(m protoreflect.Message) bool {
			if b := newQueryBlock(m.Interface()); b != nil {
				blocks = append(blocks, b)
			}
			return true
		})
	}
	// Prefer blocks where the plan's alias names the relation; fall back
	// to any block reading it (Postgres renames repeated aliases, t_1).
	var matched []blockMatch
	for _, strong := range []bool{true, false} {
		for _, b := range blocks {
			for _, rv := range b.rels {
				if rv.GetRelname() != rel.Name || (rv.GetSchemaname() != "" && rel.Schema != "" && rv.GetSchemaname() != rel.Schema) {
					continue
				}
				ref := rv.GetRelname()
				if a := rv.GetAlias().GetAliasname(); a != "" {
					ref = a
				}
				if strong && rel.Alias != "" && ref != rel.Alias {
					continue
				}
				matched = append(matched, blockMatch{b, ref})
			}
		}
		if len(matched) > 0 {
			break
		}
	}
	var uses ColumnUses
	for _, m := range matched {
		c := &useCollector{rel: rel, ref: m.ref, cols: columns, uses: &uses}
		for _, q := range m.b.quals {
			c.qual(q)
		}
		for _, s := range m.b.sort {
			if col, ok := c.ours(s.GetSortBy().GetNode()); ok {
				uses.add(classOrder, col)
			}
		}
	}
	return uses
}

type blockMatch struct {
	b   *queryBlock
	ref string
}

// queryBlock is one SELECT, UPDATE or DELETE level: the relations it reads
// directly, its conditions and its ORDER BY.
type queryBlock struct {
	rels  []*pg_query.RangeVar
	quals []*pg_query.Node
	sort  []*pg_query.Node
}

func newQueryBlock(m any) *queryBlock {
	b := &queryBlock{}
	switch n := m.(type) {
	case *pg_query.SelectStmt:
		b.from(n.GetFromClause())
		b.quals = append(b.quals, n.GetWhereClause())
		b.sort = n.GetSortClause()
	case *pg_query.UpdateStmt:
		b.rels = append(b.rels, n.GetRelation())
		b.from(n.GetFromClause())
		b.quals = append(b.quals, n.GetWhereClause())
	case *pg_query.DeleteStmt:
		b.rels = append(b.rels, n.GetRelation())
		b.from(n.GetUsingClause())
		b.quals = append(b.quals, n.GetWhereClause())
	default:
		return nil
	}
	return b
}

func (b *queryBlock) from(items []*pg_query.Node) {
	for _, it := range items {
		switch n := it.GetNode().(type) {
		case *pg_query.Node_RangeVar:
			b.rels = append(b.rels, n.RangeVar)
		case *pg_query.Node_JoinExpr:
			b.from([]*pg_query.Node{n.JoinExpr.GetLarg(), n.JoinExpr.GetRarg()})
			if q := n.JoinExpr.GetQuals(); q != nil {
				b.quals = append(b.quals, q)
			}
		}
	}
}

type useCollector struct {
	rel  RelationRef
	ref  string
	cols []string
	uses *ColumnUses
}

// ours returns the column name when n is a plain reference to a column of
// the relation.
func (c *useCollector) ours(n *pg_query.Node) (string, bool) {
	cr := n.GetColumnRef()
	if cr == nil {
		return "", false
	}
	var f []string
	for _, x := range cr.GetFields() {
		s := x.GetString_()
		if s == nil {
			return "", false // A_Star
		}
		f = append(f, s.GetSval())
	}
	switch len(f) {
	case 1:
		return f[0], slices.Contains(c.cols, f[0])
	case 2:
		return f[1], f[0] == c.ref
	case 3:
		return f[2], f[1] == c.rel.Name && (c.rel.Schema == "" || f[0] == c.rel.Schema) && c.ref == c.rel.Name
	}
	return "", false
}

// otherSide classifies the expression compared with one of our columns:
// "const" (no column references: literals, parameters, functions of
// those, subqueries), "join" (references another relation's columns), or
// "self" (references our relation).
func (c *useCollector) otherSide(n *pg_query.Node) string {
	kind := "const"
	pgtree.Walk(n.ProtoReflect(), func(m protoreflect.Message) bool {
		switch x := m.Interface().(type) {
		case *pg_query.SubLink:
			return false
		case *pg_query.ColumnRef:
			if _, ok := c.ours(&pg_query.Node{Node: &pg_query.Node_ColumnRef{ColumnRef: x}}); ok {
				kind = "self"
				return false
			}
			if kind == "const" {
				kind = "join"
			}
		}
		return kind != "self"
	})
	return kind
}

func opName(names []*pg_query.Node) string {
	if len(names) == 0 {
		return ""
	}
	return names[len(names)-1].GetString_().GetSval()
}

// qual classifies one condition; AND is descended into, anything else that
// is not a simple comparison of our column is ignored.
func (c *useCollector) qual(n *pg_query.Node) {
	if n == nil {
		return
	}
	switch x := n.GetNode().(type) {
	case *pg_query.Node_BoolExpr:
		if x.BoolExpr.GetBoolop() == pg_query.BoolExprType_AND_EXPR {
			for _, a := range x.BoolExpr.GetArgs() {
				c.qual(a)
			}
		}
	case *pg_query.Node_AExpr:
		e := x.AExpr
		op := opName(e.GetName())
		switch e.GetKind() {
		case pg_query.A_Expr_Kind_AEXPR_OP:
			col, other := "", (*pg_query.Node)(nil)
			if name, ok := c.ours(e.GetLexpr()); ok {
				col, other = name, e.GetRexpr()
			} else if name, ok := c.ours(e.GetRexpr()); ok {
				col, other = name, e.GetLexpr()
			}
			if col == "" || other == nil {
				return
			}
			switch kind := c.otherSide(other); {
			case op == "=" && kind == "const":
				c.uses.add(classEq, col)
			case op == "=" && kind == "join":
				c.uses.add(classJoin, col)
			case (op == "<" || op == "<=" || op == ">" || op == ">=") && kind == "const":
				c.uses.add(classRange, col)
			}
		case pg_query.A_Expr_Kind_AEXPR_OP_ANY, pg_query.A_Expr_Kind_AEXPR_IN:
			if col, ok := c.ours(e.GetLexpr()); ok && op == "=" && c.otherSide(e.GetRexpr()) == "const" {
				c.uses.add(classEq, col)
			}
		case pg_query.A_Expr_Kind_AEXPR_BETWEEN, pg_query.A_Expr_Kind_AEXPR_BETWEEN_SYM:
			if col, ok := c.ours(e.GetLexpr()); ok && c.otherSide(e.GetRexpr()) == "const" {
				c.uses.add(classRange, col)
			}
		}
	case *pg_query.Node_NullTest:
		if x.NullTest.GetNulltesttype() == pg_query.NullTestType_IS_NULL {
			if col, ok := c.ours(x.NullTest.GetArg()); ok {
				c.uses.add(classEq, col)
			}
		}
	}
}

// indexCandidates builds the column lists to try, best guess first: every
// usable column alone, then each equality column followed by each other
// column. Columns whose type has no btree operator class are skipped, and
// so is every candidate an existing valid, non-partial btree index already
// covers with a prefix of its keys. At most maxN are returned.
func indexCandidates(uses ColumnUses, ti *TableInfo, maxN int) (cands [][]string, skipped []SkippedColumn) {
	byName := map[string]ColumnInfo{}
	for _, c := range ti.Columns {
		byName[c.Name] = c
	}
	usable := func(list []string) []string {
		var out []string
		for _, col := range list {
			ci, ok := byName[col]
			switch {
			case !ok:
				skipped = append(skipped, SkippedColumn{col, "not a column of the table"})
			case !ci.Btree:
				skipped = append(skipped, SkippedColumn{col, "type " + ci.Type + " has no btree operator class"})
			default:
				out = append(out, col)
			}
		}
		return out
	}
	eq := usable(uses.Eq)
	rng := usable(uses.Range)
	if len(rng) > 1 {
		rng = rng[:1] // one range column: a btree uses only the first
	}
	base := slices.Concat(eq, rng, usable(uses.Order), usable(uses.Join))

	seen := map[string]bool{}
	try := func(cols ...string) {
		key := strings.Join(cols, "\x00")
		if len(cands) >= maxN || seen[key] {
			return
		}
		seen[key] = true
		if ix := coveringIndex(ti, byName, cols); ix != "" {
			skipped = append(skipped, SkippedColumn{strings.Join(cols, ", "), "covered by existing index " + ix})
			return
		}
		cands = append(cands, cols)
	}
	for _, col := range base {
		try(col)
	}
	for _, a := range eq {
		for _, b := range base {
			if a != b {
				try(a, b)
			}
		}
	}
	return cands, skipped
}

// naturalCandidate is the suggestion made without HypoPG: up to two
// columns, equality first, then range, then ORDER BY or join keys; the
// longest such prefix that no existing index covers.
func naturalCandidate(cands [][]string) []string {
	var best []string
	for _, c := range cands {
		if len(c) > len(best) {
			best = c
		}
		if len(best) == 2 {
			break
		}
	}
	return best
}

// coveringIndex returns the name of a valid, non-partial btree index whose
// leading keys are cols, or "".
func coveringIndex(ti *TableInfo, byName map[string]ColumnInfo, cols []string) string {
	for _, ix := range ti.Indexes {
		if ix.Method != "btree" || ix.Partial || !ix.Valid || len(ix.Keys) < len(cols) {
			continue
		}
		ok := true
		for i, col := range cols {
			if ix.Keys[i] != byName[col].Num {
				ok = false
				break
			}
		}
		if ok {
			return ix.Name
		}
	}
	return ""
}

// advise runs the index advisor for one qualifying scan inside the open
// read-only transaction.
func (s *explainSession) advise(ctx context.Context, rep *ScanReport, costBefore float64, opts InspectOptions) (*IndexAdvice, error) {
	ti := rep.Table
	names := make([]string, len(ti.Columns))
	for i, c := range ti.Columns {
		names[i] = c.Name
	}
	uses := FindColumnUses(s.st.Tree, RelationRef{Schema: ti.Schema, Name: ti.Name, Alias: rep.Alias}, names)
	cands, skipped := indexCandidates(uses, ti, s.e.cfg.MaxCandidates)
	adv := &IndexAdvice{CostBefore: costBefore, Skipped: skipped}
	if len(cands) == 0 {
		adv.Note = "no candidate column"
		return adv, nil
	}
	if s.hypo == "" {
		adv.Columns = naturalCandidate(cands)
		adv.CreateStatement = CreateIndexStatement(ti.Schema, ti.Name, adv.Columns)
		adv.Note = "HypoPG is not installed in this database"
		if s.e.cfg.DisableHypoPG {
			adv.Note = "HypoPG validation is disabled"
		}
		return adv, nil
	}
	adv.Validated = true
	minCut := opts.MissingIndex.MinCostReduction
	if minCut <= 0 || minCut >= 1 {
		minCut = 0.5
	}
	var best *CandidateCost
	for _, cols := range cands {
		cc, err := s.tryHypothetical(ctx, ti, cols)
		if err != nil {
			return nil, err
		}
		adv.Tried = append(adv.Tried, cc)
		if costBefore <= 0 || (costBefore-cc.Cost)/costBefore < minCut {
			continue
		}
		// The cheapest plan wins; a shorter index wins a near tie (2%).
		if best == nil || cc.Cost < best.Cost*0.98 ||
			(cc.Cost <= best.Cost*1.02 && len(cc.Columns) < len(best.Columns)) {
			c := cc
			best = &c
		}
	}
	if best == nil {
		adv.Note = fmt.Sprintf("no hypothetical index cut the plan cost by %.0f%% or more", minCut*100)
		return adv, nil
	}
	adv.Columns = best.Columns
	adv.CostAfter = best.Cost
	adv.CreateStatement = CreateIndexStatement(ti.Schema, ti.Name, best.Columns)
	return adv, nil
}

// tryHypothetical creates a hypothetical index on cols, explains the
// statement again and removes the index. HypoPG works in a read-only
// transaction, but its indexes live in backend memory and survive
// ROLLBACK, hence the explicit hypopg_reset() (and another in cleanup).
func (s *explainSession) tryHypothetical(ctx context.Context, ti *TableInfo, cols []string) (CandidateCost, error) {
	cc := CandidateCost{Columns: cols}
	def := "CREATE INDEX ON " + quoteQualified(ti.Schema, ti.Name) + " (" + quoteList(cols) + ")"
	hypo := quoteIdent(s.hypo)
	s.hypoUsed = true
	var name string
	if err := s.conn.QueryRow(ctx, "SELECT indexname FROM "+hypo+".hypopg_create_index($1)", def).Scan(&name); err != nil {
		return cc, fmt.Errorf("hypopg_create_index: %w", err)
	}
	_, plan, err := s.explain(ctx)
	if err != nil {
		return cc, err
	}
	s.e.validations.Add(1)
	if _, err := s.conn.Exec(ctx, "SELECT "+hypo+".hypopg_reset()"); err != nil {
		return cc, fmt.Errorf("hypopg_reset: %w", err)
	}
	cc.Cost = plan.TotalCost()
	cc.Used = plan.UsesIndex(name)
	return cc, nil
}

// CreateIndexStatement returns "CREATE INDEX CONCURRENTLY name ON
// schema.table (cols);" with identifiers quoted where Postgres needs it
// and a name in Postgres' own style (table_col1_col2_idx, at most 63
// bytes). The schema is omitted when empty.
func CreateIndexStatement(schema, table string, cols []string) string {
	name := table + "_" + strings.Join(cols, "_") + "_idx"
	if len(name) > 63 {
		name = strings.TrimRight(name[:59], "_") + "_idx"
	}
	stmt := "CREATE INDEX CONCURRENTLY " + quoteIdent(name) + " ON " + quoteQualified(schema, table) + " (" + quoteList(cols) + ");"
	if _, err := pg_query.Parse(stmt); err != nil {
		// A keyword the short list below misses: quote everything.
		q := func(s string) string { return `"` + strings.ReplaceAll(s, `"`, `""`) + `"` }
		var qc []string
		for _, c := range cols {
			qc = append(qc, q(c))
		}
		rel := q(table)
		if schema != "" {
			rel = q(schema) + "." + rel
		}
		stmt = "CREATE INDEX CONCURRENTLY " + q(name) + " ON " + rel + " (" + strings.Join(qc, ", ") + ");"
	}
	return stmt
}

func quoteQualified(schema, name string) string {
	if schema == "" {
		return quoteIdent(name)
	}
	return quoteIdent(schema) + "." + quoteIdent(name)
}

func quoteList(cols []string) string {
	q := make([]string, len(cols))
	for i, c := range cols {
		q[i] = quoteIdent(c)
	}
	return strings.Join(q, ", ")
}

// quoteIdent quotes an identifier as Postgres' quote_ident does: bare
// when it is lower case letters, digits, _ and $ (not leading digit or $)
// and not a reserved keyword.
func quoteIdent(s string) string {
	bare := s != "" && !reservedWords[s]
	for i, r := range s {
		if !(r >= 'a' && r <= 'z' || r == '_' || i > 0 && (r >= '0' && r <= '9' || r == '$')) {
			bare = false
			break
		}
	}
	if bare {
		return s
	}
	return `"` + strings.ReplaceAll(s, `"`, `""`) + `"`
}

// reservedWords are Postgres' reserved keywords and those reserved except
// as function or type names: they cannot be bare column or table names.
var reservedWords = func() map[string]bool {
	m := map[string]bool{}
	for _, w := range strings.Fields(`all analyse analyze and any array as asc asymmetric authorization
		binary both case cast check collate collation column concurrently constraint create cross
		current_catalog current_date current_role current_schema current_time current_timestamp
		current_user default deferrable desc distinct do else end except false fetch for foreign
		freeze from full grant group having ilike in initially inner intersect into is isnull join
		lateral leading left like limit localtime localtimestamp natural not notnull null offset on
		only or order outer overlaps placing primary references returning right select session_user
		similar some symmetric system_user table tablesample then to trailing true union unique user
		using variadic verbose when where window with`) {
		m[w] = true
	}
	return m
}()
