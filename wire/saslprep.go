package wire

import (
	"strings"
	"unicode/utf8"

	"github.com/xdg-go/stringprep"
	"golang.org/x/text/secure/precis"
)

// saslPrep normalizes a password with SASLprep (RFC 4013) exactly as
// Postgres's pg_saslprep does before deriving or checking a SCRAM secret:
// ASCII passwords are left as they are; others get the SASLprep profile of
// github.com/xdg-go/stringprep (RFC 3454 tables: non-ASCII spaces mapped to
// U+0020, table B.1 removed, NFKC, prohibited and unassigned characters and
// the bidirectional rule checked). Like Postgres, a password that is not
// valid UTF-8, or that SASLprep rejects, is used as it is.
func saslPrep(password string) string {
	if isASCII(password) || !utf8.ValidString(password) {
		return password
	}
	// Two mappings first, where the library differs from Postgres (and
	// from RFC 3454): U+200B is in both table C.1.2 and B.1, and Postgres
	// maps it to a space, the library to nothing; U+1806 (Mongolian todo
	// soft hyphen) is in B.1 but not in the library's copy of it.
	mapped := strings.Map(func(r rune) rune {
		switch {
		case r == '\u1806':
			return -1
		case stringprep.TableC1_2.Contains(r):
			return ' '
		}
		return r
	}, password)
	prepped, err := stringprep.SASLprep.Prepare(mapped)
	if err != nil {
		return password
	}
	return prepped
}

// saslPrepVariants returns the distinct forms a SCRAM client may have
// derived its key from: SASLprep as libpq and Postgres do it, PRECIS
// OpaqueString as pgx does it (NFC rather than NFKC), and the raw password,
// for clients that do not normalize at all. For ASCII passwords all three
// agree.
func saslPrepVariants(password string) []string {
	out := []string{saslPrep(password)}
	add := func(s string) {
		for _, o := range out {
			if o == s {
				return
			}
		}
		out = append(out, s)
	}
	if p, err := precis.OpaqueString.String(password); err == nil {
		add(p)
	}
	add(password)
	return out
}

func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= utf8.RuneSelf {
			return false
		}
	}
	return true
}
