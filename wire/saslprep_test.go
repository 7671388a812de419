package wire

import "testing"

// TestSASLPrepAsPostgres adds cases to TestSASLPrep (users_test.go) where a
// generic SASLprep could differ from Postgres's pg_saslprep. The outputs
// were checked against the RFC 3454 tables of Unicode 3.2 for every code
// point alone and between ASCII, Latin and Arabic letters.
func TestSASLPrepAsPostgres(t *testing.T) {
	t.Parallel()
	tests := []struct{ name, in, want string }{
		{"ideographic space", "a\u3000b", "a b"},
		{"em space", "a\u2003b", "a b"},
		{"ogham space mark", "\u1680\u00e9", " \u00e9"},
		{"narrow no-break space", "\u00e9\u202f", "\u00e9 "},
		{"zero width space: C.1.2 before B.1, as Postgres", "a\u200b\u00e9", "a \u00e9"},
		{"mongolian todo soft hyphen: B.1", "a\u1806\u00e9", "a\u00e9"},
		{"zero width joiner: B.1", "a\u200d\u00e9", "a\u00e9"},
		{"byte order mark: B.1", "\ufeff\u00e9", "\u00e9"},
		{"next line: C.2.2, kept raw", "\u00e9\u0085", "\u00e9\u0085"},
		{"line separator: C.2.2, kept raw", "\u00e9\u2028x", "\u00e9\u2028x"},
		{"private use: C.3, kept raw", "\u00e9\ue000", "\u00e9\ue000"},
		{"non-character: C.4, kept raw", "\u00e9\ufdd0", "\u00e9\ufdd0"},
		{"replacement character: C.6, kept raw", "\u00e9\ufffd", "\u00e9\ufffd"},
		{"left-to-right mark: C.8, kept raw", "\u00e9\u200e", "\u00e9\u200e"},
		{"tag: C.9, kept raw", "\u00e9\U000E0001", "\u00e9\U000E0001"},
		{"unassigned in Unicode 3.2 (U+0221), kept raw", "\u00e9\u0221", "\u00e9\u0221"},
		{"unassigned in Unicode 3.2 (U+A4D0), kept raw", "\ua4d0", "\ua4d0"},
		{"right-to-left only", "\u05d0\u05d1", "\u05d0\u05d1"},
		{"right-to-left with left-to-right, kept raw", "\u05d0x\u05d1", "\u05d0x\u05d1"},
		{"NFKC of a ligature", "\ufb01n\u00e9", "fin\u00e9"},
	}
	for _, tt := range tests {
		if got := saslPrep(tt.in); got != tt.want {
			t.Errorf("%s: saslPrep(%+q) = %+q, want %+q", tt.name, tt.in, got, tt.want)
		}
	}
}
