package wire

import (
	"strings"
	"unicode"
	"unicode/utf8"

	"golang.org/x/text/secure/precis"
	"golang.org/x/text/unicode/norm"
)

//go:generate python3 saslprep_gen.py

// saslPrep normalizes a password with SASLprep (RFC 4013) exactly as
// Postgres's pg_saslprep does before deriving or checking a SCRAM secret:
// ASCII passwords are left as they are; others have non-ASCII spaces mapped
// to U+0020, the characters of RFC 3454 table B.1 removed, and NFKC applied.
// Like Postgres, a password that is not valid UTF-8, or that then holds a
// prohibited or (in Unicode 3.2) unassigned character, or that breaks the
// bidirectional rule, is used as it is.
func saslPrep(password string) string {
	if isASCII(password) || !utf8.ValidString(password) {
		return password
	}
	mapped := strings.Map(func(r rune) rune {
		switch {
		case unicode.Is(saslprepNonASCIISpace, r):
			return ' '
		case unicode.Is(saslprepMappedToNothing, r):
			return -1
		}
		return r
	}, password)
	prepped := norm.NFKC.String(mapped)

	var randAL, l bool
	for _, r := range prepped {
		if unicode.Is(saslprepProhibited, r) {
			return password
		}
		randAL = randAL || unicode.Is(saslprepRandAL, r)
		l = l || unicode.Is(saslprepL, r)
	}
	if randAL {
		// RFC 3454 section 6: a string with right-to-left characters holds
		// no left-to-right ones and begins and ends with right-to-left ones.
		first, _ := utf8.DecodeRuneInString(prepped)
		last, _ := utf8.DecodeLastRuneInString(prepped)
		if l || !unicode.Is(saslprepRandAL, first) || !unicode.Is(saslprepRandAL, last) {
			return password
		}
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
