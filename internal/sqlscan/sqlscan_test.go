package sqlscan

import (
	"slices"
	"strings"
	"testing"
)

// tok is a token as the table test writes it: kind and text.
type tok struct {
	kind Kind
	text string
}

func scanAll(s string) (toks []tok, sensitive bool) {
	l := New(s)
	for {
		kind, a, b, ok := l.Next()
		if !ok {
			return toks, l.Sensitive()
		}
		toks = append(toks, tok{kind, s[a:b]})
	}
}

// TestScan is the one table test of the scanner: the tokens of each input
// and whether it is sensitive, plus what the word helpers make of it.
func TestScan(t *testing.T) {
	tests := []struct {
		sql       string
		toks      []tok
		sensitive bool
		first     string   // FirstWord
		words     []string // Words, up to 3
		split     []string // SplitStatements
	}{
		{
			sql:   "SELECT a FROM t WHERE b = 'x'",
			toks:  []tok{{Ident, "SELECT"}, {Space, " "}, {Ident, "a"}, {Space, " "}, {Ident, "FROM"}, {Space, " "}, {Ident, "t"}, {Space, " "}, {Ident, "WHERE"}, {Space, " "}, {Ident, "b"}, {Space, " "}, {Other, "="}, {Space, " "}, {String, "'x'"}},
			first: "SELECT", words: []string{"SELECT", "a", "FROM"},
			split: []string{"SELECT a FROM t WHERE b = 'x'"},
		},
		{
			sql:   "/* a /* nested */ still */ -- line\n\tlisten x",
			toks:  []tok{{Comment, "/* a /* nested */ still */"}, {Space, " "}, {Comment, "-- line"}, {Space, "\n\t"}, {Ident, "listen"}, {Space, " "}, {Ident, "x"}},
			first: "listen", words: []string{"listen", "x"},
			split: []string{"/* a /* nested */ still */ -- line\n\tlisten x"},
		},
		{
			sql:   "select 'it''s;' ; select E'a\\'b;' ; select $q$ ; $q$",
			toks:  []tok{{Ident, "select"}, {Space, " "}, {String, "'it''s;'"}, {Space, " "}, {Other, ";"}, {Space, " "}, {Ident, "select"}, {Space, " "}, {String, "E'a\\'b;'"}, {Space, " "}, {Other, ";"}, {Space, " "}, {Ident, "select"}, {Space, " "}, {String, "$q$ ; $q$"}},
			first: "select", words: []string{"select"},
			split: []string{"select 'it''s;'", "select E'a\\'b;'", "select $q$ ; $q$"},
		},
		{
			sql:   `update "My;Table" set a=$1, b=$$x$$;;`,
			toks:  []tok{{Ident, "update"}, {Space, " "}, {QuotedIdent, `"My;Table"`}, {Space, " "}, {Ident, "set"}, {Space, " "}, {Ident, "a"}, {Other, "="}, {Param, "$1"}, {Other, ","}, {Space, " "}, {Ident, "b"}, {Other, "="}, {String, "$$x$$"}, {Other, ";"}, {Other, ";"}},
			first: "update", words: []string{"update"},
			split: []string{`update "My;Table" set a=$1, b=$$x$$`},
		},
		{
			sql:       `select U&'\0041', U&"d\0061t", b'01', X'1F', n'x', 0x1F, 1_000, 1.5e-3, .5`,
			toks:      []tok{{Ident, "select"}, {Space, " "}, {String, `U&'\0041'`}, {Other, ","}, {Space, " "}, {QuotedIdent, `U&"d\0061t"`}, {Other, ","}, {Space, " "}, {String, "b'01'"}, {Other, ","}, {Space, " "}, {String, "X'1F'"}, {Other, ","}, {Space, " "}, {String, "n'x'"}, {Other, ","}, {Space, " "}, {Number, "0x1F"}, {Other, ","}, {Space, " "}, {Number, "1_000"}, {Other, ","}, {Space, " "}, {Number, "1.5e-3"}, {Other, ","}, {Space, " "}, {Number, ".5"}},
			sensitive: true, // U&'' escapes may be invalid
			first:     "select", words: []string{"select"},
			split: []string{`select U&'\0041', U&"d\0061t", b'01', X'1F', n'x', 0x1F, 1_000, 1.5e-3, .5`},
		},
		{
			sql:       "select 123abc",
			toks:      []tok{{Ident, "select"}, {Space, " "}, {Number, "123abc"}},
			sensitive: true, // trailing junk
			first:     "select", words: []string{"select"},
			split: []string{"select 123abc"},
		},
		{
			sql:       "select 'open; select 1",
			toks:      []tok{{Ident, "select"}, {Space, " "}, {String, "'open; select 1"}},
			sensitive: true,
			first:     "select", words: []string{"select"},
			split: []string{"select 'open; select 1"},
		},
		{
			sql:       "/* open; select 1",
			toks:      []tok{{Comment, "/* open; select 1"}},
			sensitive: true,
			split:     []string{"/* open; select 1"}, // one unterminated comment
		},
		{
			sql:   "((select a$b from t))",
			toks:  []tok{{Other, "("}, {Other, "("}, {Ident, "select"}, {Space, " "}, {Ident, "a$b"}, {Space, " "}, {Ident, "from"}, {Space, " "}, {Ident, "t"}, {Other, ")"}, {Other, ")"}},
			first: "select", words: []string{},
			split: []string{"((select a$b from t))"},
		},
		{
			sql:   "begin isolation level serializable; commit",
			first: "begin", words: []string{"begin", "isolation", "level"},
			split: []string{"begin isolation level serializable", "commit"},
		},
		{
			sql:   "  ;; ",
			toks:  []tok{{Space, "  "}, {Other, ";"}, {Other, ";"}, {Space, " "}},
			split: []string{},
		},
		{
			sql: "", split: []string{""},
		},
	}
	for _, tt := range tests {
		toks, sensitive := scanAll(tt.sql)
		if tt.toks != nil && !slices.Equal(toks, tt.toks) {
			t.Errorf("tokens of %q:\n got %v\nwant %v", tt.sql, toks, tt.toks)
		}
		if sensitive != tt.sensitive {
			t.Errorf("Sensitive() of %q = %v, want %v", tt.sql, sensitive, tt.sensitive)
		}
		if first, _ := FirstWord(tt.sql); first != tt.first {
			t.Errorf("FirstWord(%q) = %q, want %q", tt.sql, first, tt.first)
		}
		var buf [3]string
		if words := Words(tt.sql, buf[:0]); !slices.Equal(words, tt.words) && !(len(words) == 0 && len(tt.words) == 0) {
			t.Errorf("Words(%q) = %q, want %q", tt.sql, words, tt.words)
		}
		if split := SplitStatements(tt.sql); !slices.Equal(split, tt.split) && !(len(split) == 0 && len(tt.split) == 0) {
			t.Errorf("SplitStatements(%q) = %q, want %q", tt.sql, split, tt.split)
		}
	}
}

// FuzzScan checks the scanner's contract on any input: tokens are
// non-empty, contiguous and cover the input exactly; Sensitive only turns
// on; the word helpers never panic and return pieces of the input.
func FuzzScan(f *testing.F) {
	for _, s := range []string{
		"SELECT a FROM t WHERE b = 'x'",
		"/* a /* b */ c */ -- d\nlisten x",
		"select E'a\\'b', U&'\\0041', $q$x$q$, $1, 1.5e-3, 0x1F, 123abc",
		`update "a""b" set x = U&"d\0061t"; commit`,
		"select $$", "/*", "'", "\"", "E'\\", "$a", "0x", ".", "-", "U&",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		l := New(s)
		pos := 0
		wasSensitive := false
		for {
			kind, a, b, ok := l.Next()
			if !ok {
				if a != len(s) || b != len(s) {
					t.Fatalf("end at [%d,%d), want %d", a, b, len(s))
				}
				break
			}
			if a != pos || b <= a || b > len(s) {
				t.Fatalf("token %d [%d,%d) after %d in %q", kind, a, b, pos, s)
			}
			if kind > Other {
				t.Fatalf("kind %d", kind)
			}
			if wasSensitive && !l.Sensitive() {
				t.Fatal("Sensitive turned off")
			}
			wasSensitive = l.Sensitive()
			pos = b
		}
		if w, rest := FirstWord(s); w != "" && !strings.Contains(s, w+rest) {
			t.Fatalf("FirstWord(%q) = %q, %q", s, w, rest)
		}
		var buf [4]string
		for _, w := range Words(s, buf[:0]) {
			if w == "" || !strings.Contains(s, w) {
				t.Fatalf("Words(%q) gave %q", s, w)
			}
		}
		for _, st := range SplitStatements(s) {
			if !strings.Contains(s, st) {
				t.Fatalf("SplitStatements(%q) gave %q", s, st)
			}
		}
	})
}

// TestFirstWordShortcut: FirstWord's shortcut for a text that starts with
// a word gives what the scanner gives, string prefixes (E'..', U&"..")
// and non-ASCII bytes included.
func TestFirstWordShortcut(t *testing.T) {
	scanned := firstWordScanned
	for _, s := range []string{
		"SELECT 1", "select", "ab", "a", "E'x'", "e'x' y", "U&'x'", "u&\"x\"", "X'0f'", "ex'", "EX'1'",
		"s$1 x", "set_config", "sé lect", "a\u00e9 b", "SELECT\tabalance", "in(1)", "ab;cd", "_x y", "é",
	} {
		w1, r1 := FirstWord(s)
		w2, r2 := scanned(s)
		if w1 != w2 || r1 != r2 {
			t.Errorf("FirstWord(%q) = %q, %q; the scanner says %q, %q", s, w1, r1, w2, r2)
		}
	}
}
