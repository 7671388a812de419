package pooler

import (
	"strconv"
	"strings"
	"testing"
)

// parseTagRef is parseTag as it was written first, over strings: the
// reference the allocation-free version must match.
func parseTagRef(tag []byte) (string, int64) {
	t := string(tag)
	i := strings.LastIndexByte(t, ' ')
	if i < 0 {
		return t, -1
	}
	n, err := strconv.ParseInt(t[i+1:], 10, 64)
	if err != nil {
		return t, -1
	}
	verb := t[:i]
	if strings.HasPrefix(verb, "INSERT ") {
		verb = "INSERT"
	}
	return verb, n
}

// TestParseTag checks parseTag against the reference on the tags Postgres
// sends and on malformed ones, and that common tags cost no allocation.
func TestParseTag(t *testing.T) {
	for _, tag := range []string{
		"SELECT 1", "SELECT 0", "SELECT 123456789", "INSERT 0 1", "INSERT 0 250", "UPDATE 7", "DELETE 0",
		"MERGE 3", "FETCH 10", "MOVE 2", "COPY 1000", "BEGIN", "COMMIT", "ROLLBACK", "SET", "SHOW",
		"START TRANSACTION", "CREATE TABLE", "DROP INDEX", "DISCARD ALL", "SELECT", "", " ", "SELECT ",
		"SELECT x", "SELECT -1", "SELECT +2", "SELECT 1a", "SELECT 9223372036854775807",
		"SELECT 9223372036854775808", "SELECT 999999999999999999", "SELECT 1 2", "INSERT 1",
		"CREATE TABLE AS 5", "SELECT 00012",
	} {
		wantVerb, wantN := parseTagRef([]byte(tag))
		verb, n := parseTag([]byte(tag))
		if verb != wantVerb || n != wantN {
			t.Errorf("parseTag(%q) = %q, %d; want %q, %d", tag, verb, n, wantVerb, wantN)
		}
	}
	for _, tag := range []string{"SELECT 1", "INSERT 0 1", "UPDATE 3", "BEGIN", "COMMIT"} {
		b := []byte(tag)
		if a := testing.AllocsPerRun(100, func() { parseTag(b) }); a != 0 {
			t.Errorf("parseTag(%q) allocates %.0f times, want 0", tag, a)
		}
	}
}
