package planadvisor

import (
	"reflect"
	"slices"
	"testing"

	pg_query "github.com/pganalyze/pg_query_go/v6"
)

func TestFindColumnUses(t *testing.T) {
	t.Parallel()
	cols := []string{"id", "category", "price", "created_at", "name", "author_id", "doc"}
	rel := RelationRef{Schema: "public", Name: "items", Alias: "items"}
	cases := []struct {
		q    string
		rel  RelationRef
		want ColumnUses
	}{
		{"SELECT * FROM items WHERE category = $1", rel, ColumnUses{Eq: []string{"category"}}},
		{"SELECT * FROM items WHERE $1 = category AND price > $2 AND created_at < $3 ORDER BY name",
			rel, ColumnUses{Eq: []string{"category"}, Range: []string{"price", "created_at"}, Order: []string{"name"}}},
		{"SELECT * FROM items WHERE id IN ($1, $2) AND name = ANY($3) AND doc IS NULL", rel,
			ColumnUses{Eq: []string{"id", "name", "doc"}}},
		{"SELECT * FROM items WHERE price BETWEEN $1 AND $2 AND category = $3", rel,
			ColumnUses{Eq: []string{"category"}, Range: []string{"price"}}},
		{"SELECT * FROM items i WHERE i.category = $1 OR i.price = $2", RelationRef{Schema: "public", Name: "items", Alias: "i"}, ColumnUses{}},
		{"SELECT * FROM items i JOIN authors a ON a.id = i.author_id WHERE a.name = $1 AND i.price < $2 ORDER BY i.created_at",
			RelationRef{Schema: "public", Name: "items", Alias: "i"},
			ColumnUses{Range: []string{"price"}, Order: []string{"created_at"}, Join: []string{"author_id"}}},
		{"SELECT * FROM authors a WHERE a.id IN (SELECT author_id FROM items WHERE category = $1)", rel,
			ColumnUses{Eq: []string{"category"}}},
		{"UPDATE items SET price = $1 WHERE category = $2 AND lower(name) = $3", rel, ColumnUses{Eq: []string{"category"}}},
		{"DELETE FROM items WHERE created_at < $1", rel, ColumnUses{Range: []string{"created_at"}}},
		{"SELECT * FROM items WHERE price = price + $1", rel, ColumnUses{}},
		{"SELECT * FROM items WHERE category = $1 AND category > $2", rel, ColumnUses{Eq: []string{"category"}}},
		{"SELECT * FROM items WHERE price > $1 AND price = $2", rel, ColumnUses{Eq: []string{"price"}}},
		{"SELECT * FROM public.items WHERE public.items.category = $1", rel, ColumnUses{Eq: []string{"category"}}},
		{"SELECT * FROM other WHERE category = $1", rel, ColumnUses{}},
	}
	for _, c := range cases {
		tree, err := pg_query.Parse(c.q)
		if err != nil {
			t.Fatalf("parse %q: %v", c.q, err)
		}
		got := FindColumnUses(tree, c.rel, cols)
		if !reflect.DeepEqual(got, c.want) {
			t.Errorf("FindColumnUses(%q) = %+v, want %+v", c.q, got, c.want)
		}
	}
}

func TestIndexCandidates(t *testing.T) {
	t.Parallel()
	ti := &TableInfo{
		Schema: "public", Name: "items",
		Columns: []ColumnInfo{
			{Num: 1, Name: "id", Btree: true}, {Num: 2, Name: "category", Btree: true},
			{Num: 3, Name: "price", Btree: true}, {Num: 4, Name: "doc", Type: "json"},
			{Num: 5, Name: "name", Btree: true},
		},
		Indexes: []IndexInfo{
			{Name: "items_pkey", Keys: []int16{1}, Method: "btree", Valid: true, Unique: true},
			{Name: "items_name_part", Keys: []int16{5}, Method: "btree", Valid: true, Partial: true},
			{Name: "items_price_hash", Keys: []int16{3}, Method: "hash", Valid: true},
		},
	}
	uses := ColumnUses{Eq: []string{"category", "doc", "id"}, Range: []string{"price"}, Order: []string{"name"}}
	cands, skipped := indexCandidates(uses, ti, 8)
	want := [][]string{{"category"}, {"price"}, {"name"}, {"category", "id"}, {"category", "price"}, {"category", "name"}, {"id", "category"}, {"id", "price"}}
	if !reflect.DeepEqual(cands, want) {
		t.Errorf("candidates = %v, want %v", cands, want)
	}
	var reasons []string
	for _, s := range skipped {
		reasons = append(reasons, s.Column+": "+s.Reason)
	}
	for _, w := range []string{"doc: type json has no btree operator class", "id: covered by existing index items_pkey"} {
		if !slices.Contains(reasons, w) {
			t.Errorf("skipped %v lacks %q", reasons, w)
		}
	}
	if got := naturalCandidate(cands); !reflect.DeepEqual(got, []string{"category", "id"}) {
		t.Errorf("naturalCandidate = %v", got)
	}
	if got, _ := indexCandidates(uses, ti, 2); len(got) != 2 {
		t.Errorf("maxN 2 gave %d candidates", len(got))
	}
}

func TestCreateIndexStatement(t *testing.T) {
	t.Parallel()
	cases := []struct {
		schema, table string
		cols          []string
		want          string
	}{
		{"public", "items", []string{"category"}, "CREATE INDEX CONCURRENTLY items_category_idx ON public.items (category);"},
		{"", "items", []string{"a", "b"}, "CREATE INDEX CONCURRENTLY items_a_b_idx ON items (a, b);"},
		{"App", "Order", []string{"user", "createdAt"}, `CREATE INDEX CONCURRENTLY "Order_user_createdAt_idx" ON "App"."Order" ("user", "createdAt");`},
		{"s", "t", []string{`we"ird`}, `CREATE INDEX CONCURRENTLY "t_we""ird_idx" ON s.t ("we""ird");`},
	}
	for _, c := range cases {
		got := CreateIndexStatement(c.schema, c.table, c.cols)
		if got != c.want {
			t.Errorf("CreateIndexStatement(%q, %q, %v) = %s, want %s", c.schema, c.table, c.cols, got, c.want)
		}
		if _, err := pg_query.Parse(got); err != nil {
			t.Errorf("%s does not parse: %v", got, err)
		}
	}
	long := CreateIndexStatement("public", "a_very_long_table_name_that_goes_on_and_on", []string{"and_a_very_long_column_name"})
	tree, err := pg_query.Parse(long)
	if err != nil {
		t.Fatal(err)
	}
	if n := tree.Stmts[0].Stmt.GetIndexStmt().GetIdxname(); len(n) > 63 {
		t.Errorf("index name %q longer than 63 bytes", n)
	}
}
