package pooler

import "testing"

// TestScanStatement: the session-state and settings classification of
// statements, in any letter case, alone or in a multi-statement Query.
func TestScanStatement(t *testing.T) {
	tests := []struct {
		sql  string
		want stmtFlags
	}{
		{"SELECT abalance FROM pgbench_accounts WHERE aid = 1", 0},
		{"select 1 into temp t", flagTempTable},
		{"SELECT 1 INTO TEMP t", flagTempTable},
		{"set search_path = a", flagSetGUC},
		{"SET LOCAL search_path = a", 0},
		{"set transaction isolation level serializable", 0},
		{"Reset all", flagSetGUC | flagResetGUC},
		{"DISCARD ALL", flagDiscardAll | flagSetGUC | flagResetGUC},
		{"discard temp", flagSetGUC},
		{"DEALLOCATE PREPARE ALL", flagDeallocateAll},
		{"deallocate all", flagDeallocateAll},
		{"deallocate p1", 0},
		{"LISTEN chan", flagListen},
		{"prepare p as select 1", flagPrepare},
		{"DECLARE c CURSOR WITH HOLD FOR SELECT 1", flagWithHold},
		{"declare c cursor for select 1", 0},
		{"CREATE GLOBAL TEMPORARY TABLE t (a int)", flagTempTable},
		{"create temp table t (a int)", flagTempTable},
		{"create table t (a int)", flagDDL},
		{"alter table t alter column a type text", flagDDL},
		{"DROP TYPE mood", flagDDL},
		{"create unique index on t (a)", 0},
		{"drop index t_a", 0},
		{"set datestyle to default", flagSetGUC | flagResetGUC},
		{"select pg_advisory_lock(1)", flagAdvisoryLock},
		{"SELECT PG_TRY_ADVISORY_LOCK(1)", flagAdvisoryLock},
		{"select pg_advisory_xact_lock(1)", 0},
		{"select set_config('a.b', 'c', false)", flagSetGUC},
		{"/* c */ -- x\n  LISTEN a", flagListen},
		{"begin; set search_path = b; listen x; commit", flagSetGUC | flagListen},
	}
	for _, tt := range tests {
		if got := scanStatement(tt.sql); got != tt.want {
			t.Errorf("scanStatement(%q) = %b, want %b", tt.sql, got, tt.want)
		}
	}
}

func BenchmarkScanStatement(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		scanStatement("SELECT abalance FROM pgbench_accounts WHERE aid = 12345;")
		scanStatement("SELECT abalance FROM pgbench_accounts WHERE aid = 12345")
	}
}
