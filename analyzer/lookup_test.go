package analyzer

import "testing"

// TestAnalyzeLookup runs real pg_query parse trees through the lookup
// analysis: table and column found, and the batch rewrite built.
func TestAnalyzeLookup(t *testing.T) {
	tests := []struct {
		name, sql string
		want      Lookup
	}{
		{
			name: "single table equality",
			sql:  "SELECT id, name FROM authors WHERE id = $1",
			want: Lookup{Select: true, Table: "authors", Column: "id",
				Rewrite: "SELECT id, name FROM authors WHERE id = ANY($1)"},
		},
		{
			name: "column added to the select list",
			sql:  "SELECT name FROM authors WHERE id = $1",
			want: Lookup{Select: true, Table: "authors", Column: "id",
				Rewrite: "SELECT id, name FROM authors WHERE id = ANY($1)"},
		},
		{
			name: "qualified column, ORM limit dropped",
			sql:  `SELECT "authors".* FROM "authors" WHERE "authors"."id" = $1 LIMIT $2`,
			want: Lookup{Select: true, Table: "authors", Column: "id",
				Rewrite: "SELECT authors.* FROM authors WHERE authors.id = ANY($1)"},
		},
		{
			name: "schema-qualified table with alias and cast parameter",
			sql:  "SELECT a.name FROM public.authors a WHERE $1::bigint = a.id",
			want: Lookup{Select: true, Table: "public.authors", Column: "id",
				Rewrite: "SELECT a.id, a.name FROM public.authors a WHERE a.id = ANY($1::bigint[])"},
		},
		{
			name: "join, column qualified by alias",
			sql:  "SELECT b.title, a.name FROM books b JOIN authors a ON a.id = b.author_id WHERE b.author_id = $1",
			want: Lookup{Select: true, Table: "books", Column: "author_id",
				Rewrite: "SELECT b.author_id, b.title, a.name FROM books b JOIN authors a ON a.id = b.author_id WHERE b.author_id = ANY($1)"},
		},
		{
			name: "extra predicates kept",
			sql:  "SELECT * FROM reviews WHERE book_id = $1 AND stars >= $2 AND status IN ($3, $4)",
			want: Lookup{Select: true, Table: "reviews", Column: "book_id",
				Rewrite: "SELECT * FROM reviews WHERE book_id = ANY($1) AND stars >= $2 AND status IN ($3, $4)"},
		},
		{
			name: "tenant predicate beside the key",
			sql:  "SELECT * FROM books WHERE tenant_id = $1 AND id = $2",
			want: Lookup{Select: true, Table: "books", Column: "id",
				Rewrite: "SELECT * FROM books WHERE tenant_id = $1 AND id = ANY($2)"},
		},
		{
			name: "top rows per key has no plain rewrite",
			sql:  "SELECT * FROM reviews WHERE book_id = $1 ORDER BY created_at DESC LIMIT $2",
			want: Lookup{Select: true, Table: "reviews", Column: "book_id"},
		},
		{
			name: "aggregate grouped by the key",
			sql:  "SELECT count(*) FROM comments WHERE post_id = $1",
			want: Lookup{Select: true, SingleRow: true, Table: "comments", Column: "post_id",
				Rewrite: "SELECT post_id, count(*) FROM comments WHERE post_id = ANY($1) GROUP BY post_id"},
		},
		{
			name: "batch with ANY",
			sql:  "SELECT * FROM authors WHERE id = ANY($1)",
			want: Lookup{Select: true, Batch: true, Table: "authors"},
		},
		{
			name: "batch with IN",
			sql:  "SELECT * FROM authors WHERE id IN ($1, $2, $3)",
			want: Lookup{Select: true, Batch: true, Table: "authors"},
		},
		{
			name: "batch with unnest",
			sql:  "SELECT a.* FROM authors a JOIN unnest($1::int[]) k(id) ON a.id = k.id",
			want: Lookup{Select: true, Batch: true, Table: "authors"},
		},
		{
			name: "no FROM is one row",
			sql:  "SELECT now()",
			want: Lookup{Select: true, SingleRow: true},
		},
		{
			name: "not a select",
			sql:  "UPDATE authors SET name = $1 WHERE id = $2",
			want: Lookup{},
		},
		{
			name: "unparsable",
			sql:  "SELEC 1",
			want: Lookup{},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := AnalyzeLookup(tt.sql); got != tt.want {
				t.Errorf("AnalyzeLookup(%q)\n got  %+v\n want %+v", tt.sql, got, tt.want)
			}
		})
	}
}
