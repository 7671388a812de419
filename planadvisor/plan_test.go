package planadvisor

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/pgaudit-proxy/pgaudit/internal/testutil"
)

// TestPlanGolden reads captured EXPLAIN (FORMAT JSON, VERBOSE) output from
// testdata/explain/*.json and compares what ParsePlan and SeqScans make of
// it with testdata/explain/*.golden (go test ./planadvisor -update rewrites
// them).
func TestPlanGolden(t *testing.T) {
	t.Parallel()
	files, err := filepath.Glob(filepath.Join("testdata", "explain", "*.json"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no captured plans: %v", err)
	}
	for _, f := range files {
		name := strings.TrimSuffix(filepath.Base(f), ".json")
		t.Run(name, func(t *testing.T) {
			raw, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			p, err := ParsePlan(raw)
			if err != nil {
				t.Fatalf("ParsePlan: %v", err)
			}
			var b strings.Builder
			fmt.Fprintf(&b, "total_cost: %.2f\n", p.TotalCost())
			b.WriteString("tree:\n")
			p.Walk(func(n *PlanNode, anc []*PlanNode) {
				fmt.Fprintf(&b, "%s- %s", strings.Repeat("  ", len(anc)+1), n.NodeType)
				if n.RelationName != "" {
					fmt.Fprintf(&b, " on %s.%s", n.Schema, n.RelationName)
				}
				if n.IndexName != "" {
					fmt.Fprintf(&b, " using %s", n.IndexName)
				}
				fmt.Fprintf(&b, " cost=%.2f rows=%.0f\n", n.TotalCost, n.PlanRows)
			})
			b.WriteString("seq_scans:\n")
			for _, s := range p.SeqScans() {
				j, err := json.Marshal(s)
				if err != nil {
					t.Fatal(err)
				}
				fmt.Fprintf(&b, "  %s\n  excerpt: %s\n", j, s.Excerpt())
			}
			testutil.Golden(t, filepath.Join("explain", name+".golden"), []byte(b.String()))
		})
	}
}

func TestParsePlanErrors(t *testing.T) {
	t.Parallel()
	for _, in := range []string{"", "[]", "[{}]", "not json", `{"Plan": null}`} {
		if _, err := ParsePlan([]byte(in)); err == nil {
			t.Errorf("ParsePlan(%q): want an error", in)
		}
	}
	p, err := ParsePlan([]byte(`{"Plan": {"Node Type": "Result", "Total Cost": 0.01}}`))
	if err != nil || p.TotalCost() != 0.01 {
		t.Fatalf("bare object: %v %v", p, err)
	}
}

// TestRedactLiteralsAs: with the example values known, a literal becomes
// the statement's own placeholder.
func TestRedactLiteralsAs(t *testing.T) {
	got := RedactLiteralsAs("((items.price < 100.5) AND (items.category = 42) AND (items.name = 'it''s'::text))", []string{"42", "100.5", "it's"})
	if want := "((items.price < $2) AND (items.category = $1) AND (items.name = $3))"; got != want {
		t.Errorf("got %q, want %q", got, want)
	}
	if got := RedactLiteralsAs("(t.v = -7) AND (t.w = 8)", []string{"-7"}); got != "(t.v = $1) AND (t.w = $2)" {
		t.Errorf("got %q", got)
	}
	got = RedactLiteralsAs("((t.at > '2024-01-01 00:00:00+00'::timestamp with time zone) AND (t.n = 'x'::character varying(20)) AND (t.id > '-1'::integer) AND (t.s = 'y'::text))", []string{"2024-01-01 00:00:00+00", "x", "-1"})
	if want := "((t.at > $1) AND (t.n = $2) AND (t.id > $3) AND (t.s = $4::text))"; got != want {
		t.Errorf("casts: got %q, want %q", got, want)
	}
	if got := literalValues("SELECT * FROM t WHERE a = 'x''y' AND b > 3"); !slices.Equal(got, []string{"x'y", "3"}) {
		t.Errorf("literalValues %q", got)
	}
}

func TestParallelDivisor(t *testing.T) {
	t.Parallel()
	for w, want := range map[int]float64{0: 1, 1: 1.7, 2: 2.4, 3: 3.1, 4: 4, 8: 8} {
		if got := parallelDivisor(w); fmt.Sprintf("%.2f", got) != fmt.Sprintf("%.2f", want) {
			t.Errorf("parallelDivisor(%d) = %v, want %v", w, got, want)
		}
	}
}

func TestRedactLiterals(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]string{
		"((t.v = 42) AND (t.s = 'x'::text))": "((t.v = $1) AND (t.s = $2::text))",
		"(t.v = $1)":                         "(t.v = $1)",
		"(t.price < 100.5)":                  "(t.price < $1)",
		"((t.v = $1) AND (t.w = 42))":        "((t.v = $1) AND (t.w = $2))",
		"(t.a = ANY ('{1,2,3}'::integer[]))": "(t.a = ANY ($1::integer[]))",
		`("weird col1" = E'it''s')`:          `("weird col1" = $1)`,
		"(items.category = 42)":              "(items.category = $1)",
		"((t.created_at > '2024-01-01 00:00:00+00'::timestamp with time zone) AND (t.x2 = -7))": "((t.created_at > $1::timestamp with time zone) AND (t.x2 = $2))",
		"((t.a = 5) OR (t.b = 5) OR (t.c = (t.d - 5)))":                                         "((t.a = $1) OR (t.b = $1) OR (t.c = (t.d - $1)))",
	} {
		if got := RedactLiterals(in); got != want {
			t.Errorf("RedactLiterals(%q) = %q, want %q", in, got, want)
		}
	}
}
