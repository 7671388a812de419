package analyzer

import (
	"bytes"
	"encoding/json"
	"fmt"
	"reflect"
	"strconv"
	"strings"
	"testing"

	pg_query "github.com/pganalyze/pg_query_go/v6"
	"github.com/rs/zerolog"

	"github.com/pgaudit-proxy/pgaudit/internal/testutil"
)

// goldenStatements cover the lexer's corners, normalization and annotations;
// testdata/fingerprint.golden records what the analyzer makes of each.
var goldenStatements = []string{
	"SELECT * FROM users WHERE id = 42",
	"select *  from users where id = 7 -- trailing",
	"SELECT t1.a, t2.b FROM t1 JOIN t2 ON t1.id = t2.t1_id WHERE t1.x > 1.5e-3 AND t2.y = 'it''s'",
	"INSERT INTO logs (msg, at) VALUES (E'line\\n\\'quoted\\'', now()), ('two', now())",
	"UPDATE accounts SET balance = balance - 100.00 WHERE id = $1",
	"SELECT $fn$ body with 'quotes' $fn$, $$ dollar $$, U&'d\\0061t', B'0101', X'ff', N'nat'",
	"SELECT * FROM t WHERE a IN (1, 2, 3) ORDER BY 1 LIMIT 10",
	"SELECT x::varchar(10), y::numeric(12,2) FROM t",
	"FETCH 10 FROM cur",
	"COPY t FROM '/tmp/secret.csv'",
	"CREATE ROLE app PASSWORD 'hunter2'",
	"PREPARE q AS SELECT 1 FROM t WHERE x = 'lit'",
	`SELECT "Weird ""Ident""", "t1"."c" FROM "T1" /* nested /* comment */ still */ WHERE c = 0x1F`,
	"SELECT * FROM orders WHERE id = 5 /*traceparent='00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01',route='%2Fapi%2Forders%2F%3Aid',controller='orders',action='show',application='shop%20web',file='app%2Forders.rb%3A12'*/",
	"SELECT 1 /* pgaudit:ignore n-plus-one,seq-scan */",
	"SELECT 1 -- pgaudit:ignore",
	"SELEC broken FROM WHERE 'secret literal'",
	"SELECT 'unterminated",
	"",
}

type goldenFingerprint struct {
	Text        string            `json:"text"`
	Key         string            `json:"key"`
	KeySafe     bool              `json:"key_safe"`
	Fingerprint string            `json:"fingerprint"`
	Normalized  string            `json:"normalized"`
	Fallback    bool              `json:"fallback,omitempty"`
	TraceParent string            `json:"traceparent,omitempty"`
	Tags        map[string]string `json:"tags,omitempty"`
	Ignore      []string          `json:"ignore,omitempty"`
}

func renderKey(k []byte) string { return strings.ReplaceAll(string(k), "\x00", "?") }

func TestFingerprintGolden(t *testing.T) {
	t.Parallel()
	f := NewFingerprinter(FingerprintConfig{})
	var out bytes.Buffer
	enc := json.NewEncoder(&out)
	enc.SetEscapeHTML(false)
	enc.SetIndent("", "  ")
	for _, text := range goldenStatements {
		r := scanStatement(nil, text)
		sh, ann := f.Lookup(text, ProtocolSimple)
		g := goldenFingerprint{
			Text: text, Key: renderKey(r.key), KeySafe: r.keySafe,
			Fingerprint: sh.Fingerprint.String(), Normalized: sh.Normalized, Fallback: sh.Fallback,
			TraceParent: ann.TraceParent, Tags: ann.Tags, Ignore: ann.Ignore,
		}
		if err := enc.Encode(g); err != nil {
			t.Fatal(err)
		}
	}
	testutil.Golden(t, "fingerprint.golden", out.Bytes())
}

func TestFingerprintSameShape(t *testing.T) {
	t.Parallel()
	groups := [][]string{
		{
			"SELECT * FROM users WHERE id = 1 AND name = 'alice'",
			"SELECT * FROM users WHERE id = 99999 AND name = 'bob'",
			"select * from users where id = 3 and name = E'c\\'d' -- comment",
			"SELECT  *  FROM users\n WHERE id = -4 AND name = $$dollar$$ /* x */",
		},
		{
			"INSERT INTO t (a, b) VALUES (1, 'x')",
			"INSERT INTO t (a, b) VALUES (2.5, 'yy')",
			"INSERT INTO t (a, b) VALUES ($1, $2)",
		},
		{
			"SELECT * FROM t WHERE a IN (1,2,3)",
			"SELECT * FROM t WHERE a IN (4)",
		},
	}
	for _, proto := range []Protocol{ProtocolSimple, ProtocolExtended, ProtocolLog} {
		f := NewFingerprinter(FingerprintConfig{})
		var fps []Fingerprint
		for gi, g := range groups {
			first, _ := f.Lookup(g[0], proto)
			if first.Fallback {
				t.Fatalf("%v: %q got a fallback fingerprint", proto, g[0])
			}
			for _, text := range g[1:] {
				sh, _ := f.Lookup(text, proto)
				if sh.Fingerprint != first.Fingerprint {
					t.Errorf("%v group %d: %q → %s, want %s (as %q)", proto, gi, text, sh.Fingerprint, first.Fingerprint, g[0])
				}
				if sh.Normalized != first.Normalized {
					t.Errorf("%v group %d: normalized %q, want %q", proto, gi, sh.Normalized, first.Normalized)
				}
				// The cache must agree with pg_query itself.
				want, err := fingerprintOf(text)
				if err != nil || Fingerprint(want) != sh.Fingerprint {
					t.Errorf("%v: cached fingerprint of %q is %s, pg_query says %016x (%v)", proto, text, sh.Fingerprint, want, err)
				}
			}
			fps = append(fps, first.Fingerprint)
		}
		for i := range fps {
			for j := i + 1; j < len(fps); j++ {
				if fps[i] == fps[j] {
					t.Errorf("%v: groups %d and %d share fingerprint %s", proto, i, j, fps[i])
				}
			}
		}
	}
}

// TestFingerprintDifferentShapes checks statements whose literal-stripped
// keys are equal but whose fingerprints differ are not conflated by the key
// cache, and that really different shapes differ.
func TestFingerprintDifferentShapes(t *testing.T) {
	t.Parallel()
	pairs := [][2]string{
		{"FETCH 10 FROM c", "FETCH 20 FROM c"},
		{"COPY t FROM '/a'", "COPY t FROM '/b'"},
		{"NOTIFY ch, 'a'", "NOTIFY ch, 'b'"},
		{"SELECT a FROM t1", "SELECT a FROM t2"},
		{"SELECT a FROM t WHERE x = 1", "SELECT a FROM t WHERE y = 1"},
		{`SELECT x COLLATE "C" FROM t`, `SELECT x COLLATE "POSIX" FROM t`},
		{"SELECT x FROM t FOR UPDATE", "SELECT x FROM t FOR SHARE"},
		{"SELECT 1; FETCH 1 FROM c", "SELECT 1; FETCH 2 FROM c"},
		{"EXPLAIN (FORMAT 'json') SELECT 1", "EXPLAIN (FORMAT 'text') SELECT 1"},
	}
	for _, proto := range []Protocol{ProtocolSimple, ProtocolExtended} {
		f := NewFingerprinter(FingerprintConfig{})
		for _, p := range pairs {
			a, _ := f.Lookup(p[0], proto)
			b, _ := f.Lookup(p[1], proto)
			wa, _ := fingerprintOf(p[0])
			wb, _ := fingerprintOf(p[1])
			if Fingerprint(wa) != a.Fingerprint || Fingerprint(wb) != b.Fingerprint {
				t.Errorf("%v: %q/%q → %s/%s, pg_query says %016x/%016x", proto, p[0], p[1], a.Fingerprint, b.Fingerprint, wa, wb)
			}
			if (wa == wb) != (a.Fingerprint == b.Fingerprint) {
				t.Errorf("%v: %q and %q: equal fingerprints %v, want %v", proto, p[0], p[1], a.Fingerprint == b.Fingerprint, wa == wb)
			}
		}
	}
}

// TestFingerprintPointVsInList (issue 14, item 6): "id = $1" and
// "id IN ($1, ...)" are different shapes (pg_query gives them one
// fingerprint), each with its own normalized text; IN lists of any length
// stay one shape.
func TestFingerprintPointVsInList(t *testing.T) {
	for _, proto := range []Protocol{ProtocolSimple, ProtocolExtended} {
		f := NewFingerprinter(FingerprintConfig{})
		in1, _ := f.Lookup(`SELECT "authors".* FROM "authors" WHERE "authors"."id" IN ($1, $2, $3)`, proto)
		eq, _ := f.Lookup(`SELECT "authors".* FROM "authors" WHERE "authors"."id" = $1`, proto)
		in2, _ := f.Lookup(`select "authors".* from "authors" where "authors"."id" in ($1,$2)`, proto)
		in3, _ := f.Lookup(`SELECT "authors".* FROM "authors" WHERE "authors"."id" NOT IN (1, 2)`, proto)
		if eq.Fingerprint == in1.Fingerprint {
			t.Errorf("%v: = and IN share fingerprint %s", proto, eq.Fingerprint)
		}
		if in1.Fingerprint != in2.Fingerprint {
			t.Errorf("%v: IN lists of two lengths differ: %s %s", proto, in1.Fingerprint, in2.Fingerprint)
		}
		if strings.Contains(eq.Normalized, " IN ") || !strings.Contains(in1.Normalized, " IN (") {
			t.Errorf("%v: texts %q / %q", proto, eq.Normalized, in1.Normalized)
		}
		if in3.Fingerprint == eq.Fingerprint || in3.Fingerprint == in1.Fingerprint {
			t.Errorf("%v: NOT IN conflated", proto)
		}
	}
	for q, want := range map[string]bool{
		"SELECT * FROM t WHERE a IN (1)":         true,
		"SELECT * FROM t WHERE a in(select 1)":   true,
		"SELECT * FROM t WHERE a = 'IN ('":       false,
		`SELECT "in" FROM t WHERE b = 1`:         false,
		"SELECT * FROM t /* IN ( */ WHERE a = 1": false,
		"SELECT * FROM t WHERE a = ANY($1)":      false,
		"SELECT min(x) FROM t WHERE a = 1":       false,
	} {
		if got := hasInList(q); got != want {
			t.Errorf("hasInList(%q) = %v", q, got)
		}
	}
}

func TestFingerprintCacheCounts(t *testing.T) {
	t.Parallel()
	f := NewFingerprinter(FingerprintConfig{TextCacheSize: 4, KeyCacheSize: 4})
	for i := range 10 {
		f.Lookup(fmt.Sprintf("SELECT * FROM t WHERE id = %d", i), ProtocolSimple)
	}
	st := f.Stats()
	if st.Misses != 1 || st.KeyHits != 9 {
		t.Errorf("simple: misses %d key hits %d, want 1 and 9", st.Misses, st.KeyHits)
	}
	for range 5 {
		f.Lookup("SELECT * FROM u WHERE id = $1", ProtocolExtended)
	}
	st = f.Stats()
	if st.Misses != 2 || st.TextHits != 4 {
		t.Errorf("extended: misses %d text hits %d, want 2 and 4", st.Misses, st.TextHits)
	}
	// Bounded: 20 distinct shapes leave at most 4 entries per cache.
	for i := range 20 {
		f.Lookup(fmt.Sprintf("SELECT c%d FROM t", i), ProtocolExtended)
	}
	st = f.Stats()
	if st.TextEntries > 4 || st.KeyEntries > 4 || st.TextEvictions == 0 || st.KeyEvictions == 0 {
		t.Errorf("caches not bounded: %+v", st)
	}
}

func TestFingerprintFallback(t *testing.T) {
	t.Parallel()
	var logBuf bytes.Buffer
	f := NewFingerprinter(FingerprintConfig{Logger: zerolog.New(&logBuf)})
	a, _ := f.Lookup("SELEC name FROM WHERE pw = 'hunter2'", ProtocolSimple)
	b, _ := f.Lookup("SELEC name FROM WHERE pw = 'swordfish'", ProtocolSimple)
	c, _ := f.Lookup("SELEC other FROM WHERE pw = 'x'", ProtocolSimple)
	if !a.Fallback || !b.Fallback || !c.Fallback {
		t.Fatalf("want fallback shapes, got %+v %+v %+v", a, b, c)
	}
	if a.Fingerprint != b.Fingerprint {
		t.Errorf("same unparsable shape got %s and %s", a.Fingerprint, b.Fingerprint)
	}
	if a.Fingerprint == c.Fingerprint {
		t.Errorf("different unparsable shapes share %s", a.Fingerprint)
	}
	if strings.Contains(a.Normalized, "hunter2") || a.Normalized != "SELEC name FROM WHERE pw = $1" {
		t.Errorf("fallback normalized text %q", a.Normalized)
	}
	st := f.Stats()
	if st.ParseErrors != 2 || st.FallbackLookups != 3 {
		t.Errorf("parse errors %d fallback lookups %d, want 2 and 3", st.ParseErrors, st.FallbackLookups)
	}
	logs := logBuf.String()
	if n := strings.Count(logs, "\n"); n != 2 {
		t.Errorf("want one warning per unparsable shape (2), got %d:\n%s", n, logs)
	}
	for _, secret := range []string{"hunter2", "swordfish"} {
		if strings.Contains(logs, secret) {
			t.Errorf("log leaks literal %q:\n%s", secret, logs)
		}
	}
	// An unparsable statement whose error quotes the literal.
	logBuf.Reset()
	f.Lookup("SELECT 'unterminated secret", ProtocolSimple)
	if strings.Contains(logBuf.String(), "secret") {
		t.Errorf("log leaks literal: %s", logBuf.String())
	}
}

func TestNormalizedHasNoLiterals(t *testing.T) {
	t.Parallel()
	f := NewFingerprinter(FingerprintConfig{})
	cases := []string{
		"SELECT * FROM t WHERE pw = 'hunter2' ORDER BY 31337",
		"COPY t FROM '/home/hunter2/x.csv'",
		"CREATE ROLE r PASSWORD 'hunter2'",
		"ALTER USER r WITH PASSWORD 'hunter2'",
		"PREPARE q AS SELECT * FROM t WHERE pw = 'hunter2' AND n = 31337",
		"EXECUTE q('hunter2', 31337)",
		"FETCH 31337 FROM c",
		"DO $$ BEGIN PERFORM 'hunter2'; END $$",
		"SELECT x::varchar(31337) FROM t WHERE y = E'hunter2'",
		"SELECT 1 /* hunter2 */ -- 31337",
		"NOTIFY ch, 'hunter2'",
	}
	for _, text := range cases {
		for _, proto := range []Protocol{ProtocolSimple, ProtocolExtended} {
			sh, _ := f.Lookup(text, proto)
			if strings.Contains(sh.Normalized, "hunter2") || strings.Contains(sh.Normalized, "31337") {
				t.Errorf("%v: normalized text of %q keeps a literal: %q", proto, text, sh.Normalized)
			}
		}
	}
}

func TestSanitize(t *testing.T) {
	t.Parallel()
	cases := map[string]string{
		"SELECT $1 ORDER BY 1":              "SELECT $1 ORDER BY $2",
		"SELECT a /* c */ FROM t -- x\n":    "SELECT a FROM t",
		"SELECT x::varchar(10) FROM t":      "SELECT x::varchar($1) FROM t",
		"SELECT $2, $10, 'a'":               "SELECT $2, $10, $11",
		"SELECT a FROM t1 WHERE b = $1":     "SELECT a FROM t1 WHERE b = $1",
		"  SELECT   1  ":                    "SELECT   $1",
		`SELECT "it's" FROM "1"`:            `SELECT "it's" FROM "1"`,
		"SELECT foo$bar, t2.c3 FROM x1y2z3": "SELECT foo$bar, t2.c3 FROM x1y2z3",
		"SELECT U&\"d\\0061t\" FROM t":      "SELECT U&\"d\\0061t\" FROM t",
		"SELECT $tag$ a $ b $tag$ || $$c$$": "SELECT $1 || $2",
	}
	for in, want := range cases {
		if got := sanitize(in); got != want {
			t.Errorf("sanitize(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestLiteralKey(t *testing.T) {
	t.Parallel()
	cases := []struct {
		in, key string
		safe    bool
	}{
		{"SELECT 1", "SELECT ?", true},
		{"  select t1.a1 from t1 where x=.5 and y = 1e+10", "select t1.a1 from t1 where x=? and y = ?", true},
		{"(SELECT 1) UNION (SELECT 2);", "(SELECT ?) UNION (SELECT ?)", true},
		{"WITH x AS (SELECT 'a') SELECT * FROM x", "WITH x AS (SELECT ?) SELECT * FROM x", true},
		{"FETCH 10 FROM c", "FETCH ? FROM c", false},
		{"SELECT 1; COPY t FROM 'f'", "SELECT ?; COPY t FROM ?", false},
		{"/* c */ SELECT $1, $23", "SELECT $1, $23", true},
		{"SELECT e'a\\'b', E'x', n'y', x'0f', b'1'", "SELECT ?, ?, ?, ?, ?", true},
		{"SELECT e, n FROM t", "SELECT e, n FROM t", true},
		{"SELECT a[1:2] FROM t", "SELECT a[?:?] FROM t", true},
		{"SELECT 1_000, 0x1F, 0o17, 0b101", "SELECT ?, ?, ?, ?", true},
		{"'lit' AS x", "? AS x", false},
		{"", "", false},
	}
	for _, c := range cases {
		r := scanStatement(nil, c.in)
		if got := renderKey(r.key); got != c.key || r.keySafe != c.safe {
			t.Errorf("scan(%q) = %q safe=%v, want %q safe=%v", c.in, got, r.keySafe, c.key, c.safe)
		}
	}
}

func TestAnnotations(t *testing.T) {
	t.Parallel()
	cases := []struct {
		in   string
		want Annotations
	}{
		{
			"SELECT 1 /*traceparent='00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01',route='%2Fapi%2Fv1',db_driver='pgx%3Av5'*/",
			Annotations{
				TraceParent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
				Tags: map[string]string{
					"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
					"route":       "/api/v1", "db_driver": "pgx:v5",
				},
			},
		},
		{ // trailing semicolon and whitespace; escaped quote; spaces around
			"UPDATE t SET a = 1 /* action='it\\'s' , controller='x%20y' */ ;\n",
			Annotations{Tags: map[string]string{"action": "it's", "controller": "x y"}},
		},
		{ // invalid traceparent kept as a tag only
			"SELECT 1 /*traceparent='00-zz-bb-01'*/",
			Annotations{Tags: map[string]string{"traceparent": "00-zz-bb-01"}},
		},
		{ // not trailing: not sqlcommenter
			"SELECT /*route='x'*/ 1", Annotations{},
		},
		{ // ordinary comment
			"SELECT 1 /* just a note = no quotes */", Annotations{},
		},
		{ // comment-like text inside a string is not a comment
			"SELECT '/*route=''x''*/'", Annotations{},
		},
		{
			"SELECT 1 -- pgaudit:ignore n-plus-one, seq-scan because reasons",
			Annotations{Ignore: []string{"n-plus-one", "seq-scan"}},
		},
		{
			"/* pgaudit:ignore */ SELECT 1", Annotations{Ignore: []string{"*"}},
		},
		{
			"SELECT 'pgaudit:ignore x' /* pgaudit:ignored */", Annotations{},
		},
		{
			"SELECT 1 /* pgaudit:ignore a */ /*route='r'*/",
			Annotations{Ignore: []string{"a"}, Tags: map[string]string{"route": "r"}},
		},
	}
	for _, c := range cases {
		got := ParseAnnotations(c.in)
		if !reflect.DeepEqual(got, c.want) {
			t.Errorf("ParseAnnotations(%q)\n got %#v\nwant %#v", c.in, got, c.want)
		}
	}
	if !(Annotations{Ignore: []string{"*"}}).Ignores("x") || (Annotations{Ignore: []string{"a"}}).Ignores("b") {
		t.Error("Ignores")
	}
}

func TestLookupKnown(t *testing.T) {
	t.Parallel()
	f := NewFingerprinter(FingerprintConfig{})
	live, _ := f.Lookup("FETCH 10 FROM c /* pgaudit:ignore r1 */", ProtocolSimple)
	back, ann := f.LookupKnown(live.Normalized+" /* pgaudit:ignore r1 */", live.Fingerprint)
	if back.Fingerprint != live.Fingerprint || back.Normalized != live.Normalized {
		t.Errorf("LookupKnown = %+v, want %+v", back, live)
	}
	if !reflect.DeepEqual(ann.Ignore, []string{"r1"}) {
		t.Errorf("annotations %+v", ann)
	}
	if st := f.Stats(); st.ParseErrors != 0 {
		t.Errorf("LookupKnown counted parse errors: %+v", st)
	}
}

func TestFingerprintText(t *testing.T) {
	t.Parallel()
	for _, fp := range []Fingerprint{0, 1, 0xdeadbeef, 1<<64 - 1} {
		b, err := json.Marshal(map[Fingerprint]Fingerprint{fp: fp})
		if err != nil {
			t.Fatal(err)
		}
		var m map[Fingerprint]Fingerprint
		if err := json.Unmarshal(b, &m); err != nil || m[fp] != fp {
			t.Errorf("round trip of %s: %s → %v (%v)", fp, b, m, err)
		}
	}
	if _, err := ParseFingerprint("xyz"); err == nil {
		t.Error("ParseFingerprint accepted xyz")
	}
}

// Benchmarks: a hit is the common case (one shape seen before); a miss runs
// the cgo parser.

func benchStatements(n int, format string) []string {
	s := make([]string, n)
	for i := range s {
		s[i] = fmt.Sprintf(format, i, i*7)
	}
	return s
}

const benchQuery = "SELECT u.id, u.name, u.email FROM users u JOIN orgs o ON o.id = u.org_id WHERE u.id = %d AND o.plan = 'plan-%d' ORDER BY u.name LIMIT 20"

func BenchmarkFingerprintCache(b *testing.B) {
	b.Run("simple/hit", func(b *testing.B) {
		f := NewFingerprinter(FingerprintConfig{})
		stmts := benchStatements(1024, benchQuery)
		f.Lookup(stmts[0], ProtocolSimple)
		b.ReportAllocs()
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			f.Lookup(stmts[i&1023], ProtocolSimple)
		}
	})
	b.Run("simple/miss", func(b *testing.B) {
		f := NewFingerprinter(FingerprintConfig{})
		b.ReportAllocs()
		for i := 0; i < b.N; i++ {
			// A new shape every time: the table name changes.
			f.Lookup("SELECT id, name FROM t"+strconv.Itoa(i)+" WHERE id = 42 AND name = 'x'", ProtocolSimple)
		}
	})
	b.Run("extended/hit", func(b *testing.B) {
		f := NewFingerprinter(FingerprintConfig{})
		q := "SELECT u.id, u.name, u.email FROM users u JOIN orgs o ON o.id = u.org_id WHERE u.id = $1 AND o.plan = $2 ORDER BY u.name LIMIT 20"
		f.Lookup(q, ProtocolExtended)
		b.ReportAllocs()
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			f.Lookup(q, ProtocolExtended)
		}
	})
	b.Run("extended/miss", func(b *testing.B) {
		f := NewFingerprinter(FingerprintConfig{})
		b.ReportAllocs()
		for i := 0; i < b.N; i++ {
			f.Lookup("SELECT id, name FROM t"+strconv.Itoa(i)+" WHERE id = $1 AND name = $2", ProtocolExtended)
		}
	})
}

// TestFingerprintNoPoisoning: a malformed statement seen first must not give
// its fallback fingerprint to valid statements with the same key, nor the
// other way round.
func TestFingerprintNoPoisoning(t *testing.T) {
	t.Parallel()
	cases := [][2]string{
		{"SELECT 'unterminated", "SELECT 'ok'"},
		{"SELECT 1abc", "SELECT 1"},
		{`SELECT E'\u12'`, "SELECT E'ok'"},
		{`SELECT U&'\zzzz'`, "SELECT 'x'"},
		{"SELECT 1 /* open", "SELECT 1"},
		{"SELECT $a$ open", "SELECT $a$ x $a$"},
	}
	for _, c := range cases {
		for _, order := range [][2]string{{c[0], c[1]}, {c[1], c[0]}} {
			f := NewFingerprinter(FingerprintConfig{})
			for _, text := range order {
				sh, _ := f.Lookup(text, ProtocolSimple)
				_, err := pg_query.FingerprintToUInt64(text)
				if sh.Fallback != (err != nil) {
					t.Errorf("after %q: %q fallback=%v, pg_query error %v", order[0], text, sh.Fallback, err)
				}
			}
		}
	}
}

// TestKeySafetyAgreesWithPgQuery: for statements the literal-stripped key
// may stand for (keySafe), equal keys must mean equal pg_query
// fingerprints. Each pair differs only in literals.
func TestKeySafetyAgreesWithPgQuery(t *testing.T) {
	t.Parallel()
	pairs := [][2]string{
		{"EXPLAIN (FORMAT 'json') SELECT 1", "EXPLAIN (FORMAT 'text') SELECT 1"},
		{"EXPLAIN (COSTS 1) SELECT 1", "EXPLAIN (COSTS 0) SELECT 1"},
		{"SET ROLE 'a'", "SET ROLE 'b'"},
		{"SET SESSION AUTHORIZATION 'a'", "SET SESSION AUTHORIZATION 'b'"},
		{"SET TRANSACTION SNAPSHOT 'a'", "SET TRANSACTION SNAPSHOT 'b'"},
		{"SELECT * FROM JSON_TABLE(j, '$.a' COLUMNS (x int PATH '$.b')) t", "SELECT * FROM JSON_TABLE(j, '$.c' COLUMNS (x int PATH '$.d')) t"},
		{"SELECT interval '1' day to second(3)", "SELECT interval '2' day to second(4)"},
		{"SELECT x FROM t TABLESAMPLE BERNOULLI (10) REPEATABLE (42)", "SELECT x FROM t TABLESAMPLE BERNOULLI (11) REPEATABLE (43)"},
		{"SET search_path TO 'a', 'b'", "SET search_path TO 'c'"},
		{"SET x TO 1", "SET x TO 'a'"},
		{"SELECT * FROM t WHERE a = ANY('{1}'::int[])", "SELECT * FROM t WHERE a = ANY('{2,3}'::int[])"},
		{"WITH RECURSIVE r AS (SELECT 1 UNION SELECT 2) CYCLE x SET c TO 'y' DEFAULT 'n' USING p SELECT * FROM r", "WITH RECURSIVE r AS (SELECT 1 UNION SELECT 2) CYCLE x SET c TO 'a' DEFAULT 'b' USING p SELECT * FROM r"},
		{"SELECT xmlelement(name foo, 'a')", "SELECT xmlelement(name foo, 'b')"},
		{"SELECT xmlserialize(content 'a' as text)", "SELECT xmlserialize(content 'b' as text)"},
		{"INSERT INTO t VALUES (1) ON CONFLICT DO NOTHING", "INSERT INTO t VALUES (2) ON CONFLICT DO NOTHING"},
		{"SELECT 1 FROM t WHERE x ~ 'a' ESCAPE 'b'", "SELECT 1 FROM t WHERE x ~ 'c' ESCAPE 'd'"},
		{"SELECT json_object('a' VALUE 1)", "SELECT json_object('b' VALUE 2)"},
		{"SELECT 'a' IS JSON", "SELECT 'b' IS JSON"},
		{"SELECT json_query(j, '$.a' RETURNING text)", "SELECT json_query(j, '$.b' RETURNING text)"},
		{"SELECT x::char(3)", "SELECT x::char(4)"},
		{"SELECT extract(epoch from 'a')", "SELECT extract(epoch from 'b')"},
		{"SELECT overlay('a' placing 'b' from 1 for 2)", "SELECT overlay('c' placing 'd' from 3 for 4)"},
		{"SELECT trim(both 'a' from 'b')", "SELECT trim(both 'c' from 'd')"},
		{"CALL p('a')", "CALL p('b')"},
		{"SHOW search_path", "SHOW search_path"},
		{"SELECT 1 FROM t FOR UPDATE OF t NOWAIT", "SELECT 2 FROM t FOR UPDATE OF t NOWAIT"},
		{"SELECT $1::varchar(10)", "SELECT $1::varchar(20)"},
		{"SELECT B'01'::bit(2)", "SELECT B'10'::bit(3)"},
		{"MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN UPDATE SET a = 1", "MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN UPDATE SET a = 2"},
	}
	for _, p := range pairs {
		r1, r2 := scanStatement(nil, p[0]), scanStatement(nil, p[1])
		f1, _ := fingerprintOf(p[0])
		f2, _ := fingerprintOf(p[1])
		if string(r1.key) == string(r2.key) && r1.keySafe && f1 != f2 {
			t.Errorf("key cache would conflate %q and %q", p[0], p[1])
		}
	}
}

// TestScanLiteralKey: the literal key computed during the fingerprinter's
// scan is literalKey's, which the detectors would compute otherwise.
func TestScanLiteralKey(t *testing.T) {
	t.Parallel()
	for _, text := range []string{
		"",
		"SELECT abalance FROM pgbench_accounts WHERE aid = 42;",
		"SELECT abalance FROM pgbench_accounts WHERE aid = 43",
		"select  a,b from t where x = 'it''s' /*traceparent='00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01'*/",
		"-- lead\nUPDATE t SET v = $$x$$ WHERE id IN (1, 2, 3); SELECT 1",
		"SELECT E'\\n', U&'d\\0061t', B'01', 1.5e3, \"Q\"\"id\" FROM t",
		"SELECT 'unterminated",
		"BEGIN",
	} {
		r := scanStatementLit(nil, text, true)
		if want := literalKey(literalSeed, text); r.litKey != want {
			t.Errorf("%q: scan's literal key %x, literalKey %x", text, r.litKey, want)
		}
		if r2 := scanStatement(nil, text); string(r2.key) != string(r.key) || r2.keySafe != r.keySafe || r2.trailing != r.trailing {
			t.Errorf("%q: scanStatementLit changed the scan", text)
		}
	}
	f := NewFingerprinter(FingerprintConfig{})
	for _, proto := range []Protocol{ProtocolSimple, ProtocolExtended} {
		for range 2 { // miss, then hit
			text := "SELECT x FROM t WHERE id = 7 /* c */"
			_, _, k, ok := f.lookup(text, proto, true, &f.shared)
			if ok && k != literalKey(literalSeed, text) {
				t.Errorf("lookup(%v): literal key %x, want %x", proto, k, literalKey(literalSeed, text))
			}
			if !ok && proto == ProtocolSimple {
				t.Errorf("lookup(simple) did not return the literal key")
			}
		}
	}
}
