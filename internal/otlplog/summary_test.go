package otlplog

import "testing"

func TestQuerySummary(t *testing.T) {
	tests := []struct {
		query, tag              string
		summary, op, collection string
	}{
		{"SELECT * FROM users WHERE id = $1", "", "SELECT users", "SELECT", "users"},
		{"select a from public.users u join orders o on o.uid = u.id", "", "SELECT public.users orders", "SELECT", ""},
		{"INSERT INTO orders (a, b) VALUES ($1, $2)", "", "INSERT orders", "INSERT", "orders"},
		{"UPDATE \"Accounts\" SET balance = balance - $1", "", "UPDATE Accounts", "UPDATE", "Accounts"},
		{"DELETE FROM ONLY s.t WHERE x = $1", "", "DELETE s.t", "DELETE", "s.t"},
		{"SELECT $1", "", "SELECT", "SELECT", ""},
		{"SELECT * FROM (SELECT 1) AS sub", "", "SELECT", "SELECT", ""},
		{"WITH x AS (SELECT * FROM a) SELECT * FROM x JOIN b ON true JOIN c ON true JOIN d ON true", "", "WITH a x b", "WITH", ""},
		{"BEGIN", "", "BEGIN", "BEGIN", ""},
		{"/* c */ (SELECT 1 FROM t)", "", "SELECT t", "SELECT", "t"},
		{"$1", "", "", "", ""},
		{"", "", "", "", ""},
		{"CREATE TABLE IF NOT EXISTS t (a int)", "", "CREATE TABLE t", "CREATE TABLE", "t"},
		{"CREATE UNIQUE INDEX CONCURRENTLY i ON t (a)", "", "CREATE INDEX", "CREATE INDEX", ""},
		{"DROP MATERIALIZED VIEW mv", "", "DROP MATERIALIZED VIEW", "DROP MATERIALIZED VIEW", ""},
		{"WITH x AS (SELECT * FROM a) SELECT * FROM x", "SELECT", "SELECT a x", "SELECT", ""},
		{"CREATE TABLE t (a int)", "CREATE TABLE", "CREATE TABLE t", "CREATE TABLE", "t"},
	}
	for _, tt := range tests {
		summary, op, coll := querySummary(tt.query, tt.tag)
		if summary != tt.summary || op != tt.op || coll != tt.collection {
			t.Errorf("querySummary(%q) = %q, %q, %q; want %q, %q, %q", tt.query, summary, op, coll, tt.summary, tt.op, tt.collection)
		}
	}
}
