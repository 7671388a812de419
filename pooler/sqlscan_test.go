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
		{"SELECT SET_CONFIG('a.b', 'c', false)", flagSetGUC},
		{"select Set_Config('a.b', 'c', false)", 0}, // as before: only all lower or all upper case
		{"select x_set_config, pg_advisory_lock(2)", flagSetGUC | flagAdvisoryLock},
		{"_set_config", flagSetGUC},
		{"select a_b, c_ from t_", 0},
		{"select pg_Advisory_Lock(1)", flagAdvisoryLock},
		{"select pg_advisory", 0},
		{"SeLeCt 1 InTo TeMp t", flagTempTable},
		{"ListEN chan", flagListen},
		{"DeallocatE all", flagDeallocateAll},
		{"selects 1 into temp t", 0},
		{"(select 1 into temp t)", flagTempTable},
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

// BenchmarkScanStatementMulti: a multi-statement Query with comments and
// quotes, which takes the splitting path.
func BenchmarkScanStatementMulti(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		scanStatement("/* app */ BEGIN; UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid = 7 AND note <> 'a;b'; -- x\nCOMMIT")
	}
}

// BenchmarkFirstWordIsDDL: the session-mode test run on every statement.
func BenchmarkFirstWordIsDDL(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		firstWordIsDDL("SELECT abalance FROM pgbench_accounts WHERE aid = 12345")
		firstWordIsDDL("  /* c */ create table t (a int)")
	}
}

// TestScanPreparedRef: which Query texts name a prepared statement, and
// the name as Postgres resolves it.
func TestScanPreparedRef(t *testing.T) {
	tests := []struct {
		sql     string
		ok      bool
		execute bool
		name    string
	}{
		{"execute a1(1)", true, true, "a1"},
		{"EXECUTE A1 (1, 'x;y')", false, false, ""}, // a semicolon inside: left to the server
		{"execute \"Mixed Case\"", true, true, "Mixed Case"},
		{"execute \"a\"\"b\";", true, true, `a"b`},
		{"  /* c */ Deallocate Prepare S_1 ;", true, false, "s_1"},
		{"deallocate all", false, false, ""},
		{"deallocate prepare all", false, false, ""},
		{"deallocate x y", false, false, ""},
		{"execute", false, false, ""},
		{"execute 1a", false, false, ""},
		{"select 1", false, false, ""},
		{"execute a; select 1", false, false, ""},
	}
	for _, tt := range tests {
		ref, ok := scanPreparedRef(tt.sql)
		if ok != tt.ok || ok && (ref.execute != tt.execute || ref.name != tt.name) {
			t.Errorf("scanPreparedRef(%q) = %+v, %v; want execute=%v name=%q ok=%v", tt.sql, ref, ok, tt.execute, tt.name, tt.ok)
			continue
		}
		if ok && !tt.execute {
			continue
		}
		if ok {
			// The identifier's bytes are where the rewrite puts the
			// server's name.
			rewritten := tt.sql[:ref.start] + "X" + tt.sql[ref.end:]
			if again, ok := scanPreparedRef(rewritten); !ok || again.name != "x" {
				t.Errorf("rewrite of %q gives %q", tt.sql, rewritten)
			}
		}
	}
}

// TestContainsFold: the IndexByte-driven search finds exactly what a
// comparison at every offset finds, anchors on the first letter of a
// pattern that starts with a space, and handles patterns without
// letters, at the ends of the text, and longer than it.
func TestContainsFold(t *testing.T) {
	naive := func(s, lower string) bool {
		for i := 0; i+len(lower) <= len(s); i++ {
			if equalFoldLower(s[i:i+len(lower)], lower) {
				return true
			}
		}
		return false
	}
	tests := []struct {
		s, lower string
		want     bool
	}{
		{"SELECT abalance FROM pgbench_accounts WHERE aid = 1", " into temp", false},
		{"select * INTO TEMP t from x", " into temp", true},
		{"select *\tinto temp t", " into temp", false}, // a tab is not the space asked for
		{"SELECT a INTO TEMPORARY t", " into temp", true},
		{"iiiiIIII into tem", " into temp", false},
		{"Into temp", " into temp", false},
		{"x into temp", " into temp", true},
		{"SET x TO DEFAULT", "default", true},
		{"DEFAULT", "default", true},
		{"defaul", "default", false},
		{"", "copy", false},
		{"copy", "", true},
		{"a;b", ";", true},
		{"ab", ";", false},
		{"cOpY t FROM stdin", "copy", true},
		{"ccccopy", "copy", true},
		{"CCCCOPX", "copy", false},
	}
	for _, tt := range tests {
		if got := containsFold(tt.s, tt.lower); got != tt.want {
			t.Errorf("containsFold(%q, %q) = %v, want %v", tt.s, tt.lower, got, tt.want)
		}
	}
	// Every text over a small alphabet up to length 7 against a few
	// patterns: the same answers as the comparison at every offset.
	alphabet := "aAiI o;"
	patterns := []string{"a", "ai", " ai", "ia o", "aaa", " ;", "i;"}
	var gen func(prefix string, n int)
	gen = func(prefix string, n int) {
		for _, p := range patterns {
			if got, want := containsFold(prefix, p), naive(prefix, p); got != want {
				t.Fatalf("containsFold(%q, %q) = %v, want %v", prefix, p, got, want)
			}
		}
		if n == 0 {
			return
		}
		for i := 0; i < len(alphabet); i++ {
			gen(prefix+alphabet[i:i+1], n-1)
		}
	}
	gen("", 6)
}
