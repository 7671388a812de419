package planadvisor

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"

	"github.com/pgaudit-proxy/pgaudit/internal/sqlscan"
)

// PlanNode is one node of a plan read from EXPLAIN (FORMAT JSON). Only the
// fields pgaudit uses are decoded; each field holds the EXPLAIN key named
// in its JSON tag, with EXPLAIN's meaning (costs in planner cost units,
// rows as estimated per loop). Fields absent from a node stay zero
// (Schema, for instance, is printed only with VERBOSE, which the Explainer
// always uses). Plans are the child nodes.
type PlanNode struct {
	NodeType           string      `json:"Node Type"`
	Operation          string      `json:"Operation,omitempty"`
	ParentRelationship string      `json:"Parent Relationship,omitempty"`
	SubplanName        string      `json:"Subplan Name,omitempty"`
	ParallelAware      bool        `json:"Parallel Aware,omitempty"`
	RelationName       string      `json:"Relation Name,omitempty"`
	Schema             string      `json:"Schema,omitempty"`
	Alias              string      `json:"Alias,omitempty"`
	IndexName          string      `json:"Index Name,omitempty"`
	StartupCost        float64     `json:"Startup Cost"`
	TotalCost          float64     `json:"Total Cost"`
	PlanRows           float64     `json:"Plan Rows"`
	PlanWidth          int         `json:"Plan Width"`
	WorkersPlanned     int         `json:"Workers Planned,omitempty"`
	Filter             string      `json:"Filter,omitempty"`
	IndexCond          string      `json:"Index Cond,omitempty"`
	RecheckCond        string      `json:"Recheck Cond,omitempty"`
	Plans              []*PlanNode `json:"Plans,omitempty"`
}

// Plan is one statement's plan as EXPLAIN (FORMAT JSON) prints it. It is a
// plain value owned by whoever holds it.
type Plan struct {
	// Root is the top plan node.
	Root *PlanNode `json:"Plan"`
}

// TotalCost is the estimated total cost of the whole statement (the root
// node's Total Cost); 0 for an empty plan.
func (p *Plan) TotalCost() float64 {
	if p == nil || p.Root == nil {
		return 0
	}
	return p.Root.TotalCost
}

// ErrEmptyPlan is returned by ParsePlan for an EXPLAIN result with no plan.
var ErrEmptyPlan = errors.New("explain output holds no plan")

// ParsePlan reads the output of EXPLAIN (FORMAT JSON): a JSON array with one
// object per statement, of which the first is used. A bare object is
// accepted too.
func ParsePlan(b []byte) (*Plan, error) {
	b = []byte(strings.TrimSpace(string(b)))
	var plans []Plan
	if len(b) > 0 && b[0] == '{' {
		var p Plan
		if err := json.Unmarshal(b, &p); err != nil {
			return nil, fmt.Errorf("decode explain output: %w", err)
		}
		plans = append(plans, p)
	} else if err := json.Unmarshal(b, &plans); err != nil {
		return nil, fmt.Errorf("decode explain output: %w", err)
	}
	if len(plans) == 0 || plans[0].Root == nil {
		return nil, ErrEmptyPlan
	}
	return &plans[0], nil
}

// Walk calls fn for every node of the plan, parents before children, with
// the chain of ancestors (root first, not including the node). The slice
// is reused between calls: copy it to keep it.
func (p *Plan) Walk(fn func(n *PlanNode, ancestors []*PlanNode)) {
	if p == nil || p.Root == nil {
		return
	}
	var stack []*PlanNode
	var walk func(n *PlanNode)
	walk = func(n *PlanNode) {
		fn(n, stack)
		stack = append(stack, n)
		for _, c := range n.Plans {
			if c != nil {
				walk(c)
			}
		}
		stack = stack[:len(stack)-1]
	}
	walk(p.Root)
}

// SeqScan is a sequential scan found in a plan.
type SeqScan struct {
	// Schema is the relation's schema (empty unless the plan was made with
	// VERBOSE).
	Schema string `json:"schema,omitempty"`
	// Relation is the scanned relation's name.
	Relation string `json:"relation"`
	// Alias is how the plan refers to the relation (its query alias,
	// made unique by Postgres when repeated).
	Alias string `json:"alias,omitempty"`
	// Filter is the scan's Filter expression; empty when the scan reads the
	// whole relation.
	Filter string `json:"filter,omitempty"`
	// Rows is the planner's estimate of rows the scan returns. For a
	// parallel scan, whose node estimate is per process, it is scaled up
	// by the parallel divisor of the Gather above it, as Postgres computes
	// it (workers plus the leader's share), and rounded.
	Rows float64 `json:"rows"`
	// NodeRows is the node's Plan Rows as printed.
	NodeRows float64 `json:"node_rows"`
	// StartupCost is the scan node's startup cost.
	StartupCost float64 `json:"startup_cost"`
	// Cost is the scan node's total cost.
	Cost float64 `json:"cost"`
	// Parallel is true for a Parallel Seq Scan.
	Parallel bool `json:"parallel,omitempty"`
	// Path lists the node types from the root down to the scan.
	Path []string `json:"path"`
}

// Excerpt renders the scan as one line in EXPLAIN's text style, for
// finding evidence.
func (s *SeqScan) Excerpt() string {
	var b strings.Builder
	if s.Parallel {
		b.WriteString("Parallel ")
	}
	b.WriteString("Seq Scan on ")
	if s.Schema != "" {
		b.WriteString(s.Schema + ".")
	}
	b.WriteString(s.Relation)
	if s.Alias != "" && s.Alias != s.Relation {
		b.WriteString(" " + s.Alias)
	}
	if s.Parallel && s.Rows != s.NodeRows {
		// EXPLAIN prints a parallel scan's rows per process; say so, and
		// give the total the finding's message uses.
		fmt.Fprintf(&b, " (cost=%.2f..%.2f rows=%.0f per process, ~%.0f in total)", s.StartupCost, s.Cost, s.NodeRows, s.Rows)
	} else {
		fmt.Fprintf(&b, " (cost=%.2f..%.2f rows=%.0f)", s.StartupCost, s.Cost, s.NodeRows)
	}
	if s.Filter != "" {
		b.WriteString(" Filter: " + s.Filter)
	}
	return b.String()
}

// SeqScans returns the plan's Seq Scan nodes in plan order.
func (p *Plan) SeqScans() []SeqScan {
	var out []SeqScan
	p.Walk(func(n *PlanNode, anc []*PlanNode) {
		if n.NodeType != "Seq Scan" || n.RelationName == "" {
			return
		}
		s := SeqScan{
			Schema:      n.Schema,
			Relation:    n.RelationName,
			Alias:       n.Alias,
			Filter:      n.Filter,
			Rows:        n.PlanRows,
			NodeRows:    n.PlanRows,
			Cost:        n.TotalCost,
			StartupCost: n.StartupCost,
			Parallel:    n.ParallelAware,
		}
		for _, a := range anc {
			s.Path = append(s.Path, a.NodeType)
		}
		s.Path = append(s.Path, n.NodeType)
		if n.ParallelAware {
			for i := len(anc) - 1; i >= 0; i-- {
				if t := anc[i].NodeType; t == "Gather" || t == "Gather Merge" {
					s.Rows = math.Round(n.PlanRows * parallelDivisor(anc[i].WorkersPlanned))
					break
				}
			}
		}
		out = append(out, s)
	})
	return out
}

// parallelDivisor mirrors Postgres' get_parallel_divisor with
// parallel_leader_participation on: the workers plus what the leader is
// expected to contribute.
func parallelDivisor(workers int) float64 {
	d := float64(workers)
	if lead := 1.0 - 0.3*float64(workers); lead > 0 {
		d += lead
	}
	return max(d, 1)
}

// UsesIndex reports whether any node of the plan scans the named index
// (matched against Index Name, which for a HypoPG index is like
// "<13556>btree_t_v").
func (p *Plan) UsesIndex(name string) bool {
	found := false
	p.Walk(func(n *PlanNode, _ []*PlanNode) {
		if n.IndexName != "" && n.IndexName == name {
			found = true
		}
	})
	return found
}

// RedactLiterals replaces every string and numeric literal in an
// expression EXPLAIN printed (a Filter, an Index Cond) with a placeholder
// $n, as in normalized statements, keeping casts and identifiers:
// "((t.v = 42) AND (t.s = 'x'::text))" becomes
// "((t.v = $1) AND (t.s = $2::text))". Placeholders are numbered in order
// of appearance in the expression (the same literal gets the same number),
// which need not be the statement's numbering. A minus sign directly before
// a number is part of the literal. Plans made with example parameter values
// print those values; findings carry only the redacted form.
func RedactLiterals(expr string) string { return RedactLiteralsAs(expr, nil) }

// RedactLiteralsAs is RedactLiterals for a plan made with the example
// values values ($1 is values[0]): a literal whose value equals values[i]
// becomes $(i+1), the statement's own placeholder; other literals are
// numbered after them.
func RedactLiteralsAs(expr string, values []string) string {
	var b strings.Builder
	l := sqlscan.New(expr)
	nums := map[string]int{}
	base := 0 // placeholders already in expr keep their numbers
	for i := 0; i < len(expr); i++ {
		if expr[i] == '$' {
			n, j := 0, i+1
			for ; j < len(expr) && expr[j] >= '0' && expr[j] <= '9'; j++ {
				n = n*10 + int(expr[j]-'0')
			}
			base = max(base, n)
		}
	}
	base = max(base, len(values))
	for {
		kind, start, end, ok := l.Next()
		if !ok {
			break
		}
		switch kind {
		case sqlscan.String, sqlscan.Number:
			lit := expr[start:end]
			if kind == sqlscan.Number {
				if s := b.String(); strings.HasSuffix(s, "-") {
					if p := strings.TrimRight(s[:len(s)-1], " "); p == "" || strings.ContainsAny(p[len(p)-1:], "(,=<>+-*/") {
						lit = "-" + lit
						rest := s[:len(s)-1]
						b.Reset()
						b.WriteString(rest)
					}
				}
			}
			n, ok := nums[lit]
			if !ok {
				if v := literalValue(lit); v != "" {
					if i := slices.Index(values, v); i >= 0 {
						nums[lit] = i + 1
						fmt.Fprintf(&b, "$%d", i+1)
						// A bound value prints with its type's cast
						// ('-1'::integer); the parameter does not.
						l.Seek(skipCast(expr, end))
						continue
					}
				}
				base++
				n = base
				nums[lit] = n
			}
			fmt.Fprintf(&b, "$%d", n)
		default:
			b.WriteString(expr[start:end])
		}
	}
	return b.String()
}

// skipCast returns the position after a cast ("::integer",
// "::timestamp with time zone", "::character varying(20)[]") starting at
// pos in expr, or pos when there is none.
func skipCast(expr string, pos int) int {
	if !strings.HasPrefix(expr[pos:], "::") {
		return pos
	}
	word := func(p int) int {
		for p < len(expr) && (sqlscan.IsIdentCont(expr[p]) || expr[p] == '"' || expr[p] == '.') {
			p++
		}
		return p
	}
	p := word(pos + 2)
	if p == pos+2 {
		return pos
	}
	for p < len(expr) {
		switch {
		case strings.HasPrefix(expr[p:], "[]"):
			p += 2
			continue
		case expr[p] == '(':
			q := p + 1
			for q < len(expr) && (expr[q] >= '0' && expr[q] <= '9' || expr[q] == ',' || expr[q] == ' ') {
				q++
			}
			if q < len(expr) && expr[q] == ')' {
				p = q + 1
				continue
			}
		case expr[p] == ' ':
			q := word(p + 1)
			switch strings.ToLower(expr[p+1 : q]) {
			case "with", "without", "time", "zone", "varying", "precision":
				p = q
				continue
			}
		}
		break
	}
	return p
}

// literalValue returns the value a literal token spells: a plain quoted
// string unquoted (doubled quotes undone), a number as written; "" for
// other forms.
func literalValue(tok string) string {
	if len(tok) >= 2 && tok[0] == '\'' && tok[len(tok)-1] == '\'' {
		return strings.ReplaceAll(tok[1:len(tok)-1], "''", "'")
	}
	if tok != "" && (tok[0] == '-' || tok[0] == '.' || (tok[0] >= '0' && tok[0] <= '9')) {
		return tok
	}
	return ""
}

// literalValues returns the values of a statement's literals in order (the
// $n a normalized statement gives them).
func literalValues(query string) []string {
	var out []string
	l := sqlscan.New(query)
	for {
		kind, start, end, ok := l.Next()
		if !ok {
			return out
		}
		if kind == sqlscan.String || kind == sqlscan.Number {
			out = append(out, literalValue(query[start:end]))
		}
	}
}
