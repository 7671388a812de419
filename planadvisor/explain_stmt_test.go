package planadvisor

import (
	"errors"
	"testing"
)

func TestCheckExplainable(t *testing.T) {
	t.Parallel()
	ok := []struct {
		q      string
		kind   StatementKind
		params int
	}{
		{"SELECT * FROM t WHERE id = $1", StmtSelect, 1},
		{"select a, b from t join u on u.id = t.u_id where t.x in ($1, $2) order by a limit $3", StmtSelect, 3},
		{"WITH c AS (SELECT * FROM t WHERE v = $1) SELECT * FROM c", StmtSelect, 1},
		{"SELECT f() FROM t", StmtSelect, 0},
		{"SELECT * FROM t UNION ALL SELECT * FROM u", StmtSelect, 0},
		{"INSERT INTO t SELECT * FROM u WHERE v = $1", StmtInsertSelect, 1},
		{"UPDATE t SET v = $1 WHERE id = $2", StmtUpdate, 2},
		{"DELETE FROM t WHERE v = $1 RETURNING id", StmtDelete, 1},
		{"DELETE FROM t USING u WHERE u.id = t.u_id", StmtDelete, 0},
		{"SELECT * FROM t WHERE id = $1; ", StmtSelect, 1},
	}
	for _, c := range ok {
		st, err := CheckExplainable(c.q)
		if err != nil {
			t.Errorf("CheckExplainable(%q): %v", c.q, err)
			continue
		}
		if st.Kind != c.kind || st.NumParams != c.params {
			t.Errorf("CheckExplainable(%q) = kind %s params %d, want %s %d", c.q, st.Kind, st.NumParams, c.kind, c.params)
		}
	}
	refused := []string{
		"",
		"   ",
		"SELECT 1",
		"SELECT now()",
		"SELECT * FROM t; DELETE FROM t",
		"SELECT 1; SELECT 2",
		"CREATE TABLE x (id int)",
		"DROP TABLE t",
		"TRUNCATE t",
		"VACUUM t",
		"SET search_path = x",
		"COPY t TO STDOUT",
		"EXPLAIN SELECT * FROM t",
		"EXPLAIN ANALYZE DELETE FROM t",
		"CALL p()",
		"DO $$ BEGIN DELETE FROM t; END $$",
		"SELECT * INTO x FROM t",
		"CREATE TABLE x AS SELECT * FROM t",
		"SELECT * FROM t FOR UPDATE",
		"SELECT * FROM t WHERE id IN (SELECT id FROM u FOR SHARE)",
		"WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d",
		"WITH i AS (INSERT INTO t SELECT * FROM u RETURNING *) SELECT count(*) FROM i",
		"WITH d AS (DELETE FROM u RETURNING id) DELETE FROM t WHERE id IN (SELECT id FROM d)",
		"INSERT INTO t VALUES ($1, $2)",
		"INSERT INTO t DEFAULT VALUES",
		"MERGE INTO t USING u ON t.id = u.id WHEN MATCHED THEN DELETE",
		"PREPARE p AS SELECT * FROM t",
		"LOCK TABLE t",
		"BEGIN",
		"SELECT * FROM t WHERE", // does not parse
	}
	for _, q := range refused {
		st, err := CheckExplainable(q)
		if err == nil {
			t.Errorf("CheckExplainable(%q) accepted (%s), want refusal", q, st.Kind)
			continue
		}
		if !errors.Is(err, ErrNotExplainable) {
			t.Errorf("CheckExplainable(%q): error %v does not wrap ErrNotExplainable", q, err)
		}
	}
}

func TestVerifySingle(t *testing.T) {
	t.Parallel()
	good := []struct{ sql, want string }{
		{"EXPLAIN (FORMAT JSON, VERBOSE) SELECT * FROM t", "ExplainStmt"},
		{"PREPARE p AS SELECT * FROM t WHERE id = $1", "PrepareStmt"},
		{"EXPLAIN (FORMAT JSON, VERBOSE, GENERIC_PLAN) SELECT * FROM t WHERE id = $1", "ExplainStmt"},
		{"EXPLAIN (FORMAT JSON, VERBOSE) EXECUTE pgaudit_explain_1(NULL, NULL)", "ExplainStmt"},
	}
	for _, c := range good {
		if err := verifySingle(c.sql, c.want); err != nil {
			t.Errorf("verifySingle(%q): %v", c.sql, err)
		}
	}
	bad := []struct{ sql, want string }{
		{"EXPLAIN (FORMAT JSON) SELECT 1; DELETE FROM t", "ExplainStmt"},
		{"EXPLAIN (ANALYZE, FORMAT JSON) SELECT 1", "ExplainStmt"},
		{"EXPLAIN (FORMAT JSON, analyze true) SELECT 1", "ExplainStmt"},
		{"DELETE FROM t", "ExplainStmt"},
		{"EXPLAIN SELECT * FROM t --", "PrepareStmt"},
	}
	for _, c := range bad {
		if err := verifySingle(c.sql, c.want); err == nil {
			t.Errorf("verifySingle(%q, %s) accepted", c.sql, c.want)
		}
	}
}

func TestServerMajor(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]int{"15.18 (Debian 15.18-0+deb12u1)": 15, "16beta1": 16, "9.6.24": 9, "": 0} {
		if got := serverMajor(in); got != want {
			t.Errorf("serverMajor(%q) = %d, want %d", in, got, want)
		}
	}
}
