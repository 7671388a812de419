package wire

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func TestParseSecret(t *testing.T) {
	tests := []struct {
		in      string
		kind    SecretKind
		wantErr string
	}{
		{in: "", kind: SecretNone},
		{in: "hunter2", kind: SecretPlain},
		{in: "md58cc7ff7afbc8551bd526b65944c17b36", kind: SecretMD5},
		// Postgres takes anything but "md5" + 32 lowercase hex as plain text.
		{in: "md58CC7FF7AFBC8551BD526B65944C17B36", kind: SecretPlain},
		{in: "md58cc7ff7afbc8551bd526b65944c17b3", kind: SecretPlain},
		{in: "md5", kind: SecretPlain},
		{in: "SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY=:wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dU=", kind: SecretSCRAM},
		{in: "SCRAM-SHA-256$", wantErr: "want SCRAM-SHA-256$<iterations>"},
		{in: "SCRAM-SHA-256$4096$a:b", wantErr: `missing ":" between iterations and salt`},
		{in: "SCRAM-SHA-256$0:W22ZaJ0SNY7soEsUEjb6gQ==$WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY=:wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dU=", wantErr: `iteration count "0"`},
		{in: "SCRAM-SHA-256$x:W22ZaJ0SNY7soEsUEjb6gQ==$WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY=:wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dU=", wantErr: `iteration count "x"`},
		{in: "SCRAM-SHA-256$4096:!!$WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY=:wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dU=", wantErr: "salt is not valid base64"},
		{in: "SCRAM-SHA-256$4096:$WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY=:wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dU=", wantErr: "salt is not valid base64"},
		{in: "SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY=", wantErr: `missing ":" between StoredKey and ServerKey`},
		{in: "SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$WG5d8oPm3OtcPnkd:wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dU=", wantErr: "StoredKey is 12 bytes, want 32"},
		{in: "SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY=:***", wantErr: "ServerKey is not valid base64"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			s, err := ParseSecret(tt.in)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("ParseSecret() error = %v, want it to contain %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseSecret() error = %v", err)
			}
			if s.Kind() != tt.kind {
				t.Errorf("Kind() = %v, want %v", s.Kind(), tt.kind)
			}
		})
	}
}

func TestSecretDoesNotPrint(t *testing.T) {
	s, err := ParseSecret("hunter2")
	if err != nil {
		t.Fatal(err)
	}
	for _, format := range []string{"%v", "%s", "%+v", "%#v", "%q"} {
		if out := fmt.Sprintf(format, s); strings.Contains(out, "hunter2") {
			t.Errorf("Sprintf(%q) = %q reveals the password", format, out)
		}
	}
}

// TestParseUsersGolden parses testdata/users.txt and compares the users and
// kinds of secret found with testdata/users.golden.
func TestParseUsersGolden(t *testing.T) {
	users, err := LoadUsers(filepath.Join("testdata", "users.txt"))
	if err != nil {
		t.Fatal(err)
	}
	names := make([]string, 0, users.Len())
	for name := range users.m {
		names = append(names, name)
	}
	slices.Sort(names)
	var b strings.Builder
	for _, name := range names {
		s, _ := users.Lookup(name)
		fmt.Fprintf(&b, "%q\t%s\n", name, s.Kind())
	}
	golden := filepath.Join("testdata", "users.golden")
	if *update {
		if err := os.WriteFile(golden, []byte(b.String()), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatal(err)
	}
	if got := b.String(); got != string(want) {
		t.Errorf("users from testdata/users.txt differ from %s (run with -update to rewrite):\ngot:\n%s\nwant:\n%s", golden, got, want)
	}
}

// TestUsersFilePasswords checks the secrets of testdata/users.txt, some made
// by PostgreSQL, against their passwords.
func TestUsersFilePasswords(t *testing.T) {
	users, err := LoadUsers(filepath.Join("testdata", "users.txt"))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		user, password string
		want           bool
	}{
		{"alice", "wonderland", true},
		{"alice", "Wonderland", false},
		{"bob", "builder", true},
		{"bob", "builder ", false},
		// Postgres applied SASLprep (NFKC: "Ⅸ" is "IX") when it made the secret.
		{"ünï", "Ⅸ café", true},
		{"ünï", "IX café", true},
		{"ünï", "Ⅸ cafe", false},
		{"carol", `c"at`, true},
		{"carol", `c""at`, false},
		{"dave", "md5-looks-like-a-hash-but-is-not", true},
		{"user", "pencil", true},
		{"trusted only", "", false},
		{`quote"d`, "sp ace", true},
		{"upper", "md58CC7FF7AFBC8551BD526B65944C17B36", true},
		{"upper", "builder", false},
	}
	for _, tt := range tests {
		secret, ok := users.Lookup(tt.user)
		if !ok {
			t.Errorf("Lookup(%q) found nothing", tt.user)
			continue
		}
		if got := checkPlainPassword(secret, tt.user, tt.password); got != tt.want {
			t.Errorf("password %q for %q: match = %v, want %v", tt.password, tt.user, got, tt.want)
		}
	}
}

func TestParseUsersErrors(t *testing.T) {
	tests := []struct {
		name, file, wantErr string
	}{
		{"unquoted user", "alice secret\n", `users.txt:1: user name: expected a field in double quotes`},
		{"unterminated user", "\n\n\"alice secret\n", `users.txt:3: user name: missing closing double quote`},
		{"missing secret", "# c\n\"alice\"\n", `users.txt:2: expected white space and a quoted secret after the user name`},
		{"no space", `"alice""secret"`, `users.txt:1: expected white space`},
		{"unquoted secret", `"alice" secret`, `users.txt:1: secret of user "alice": expected a field in double quotes`},
		{"unterminated secret", `"alice" "secret`, `users.txt:1: secret of user "alice": missing closing double quote`},
		{"junk after secret", `"alice" "secret"x`, `users.txt:1: unexpected 'x' after the secret of user "alice"`},
		{"empty user", `"" "secret"`, `users.txt:1: empty user name`},
		{"duplicate", "\"alice\" \"a\"\n\"bob\" \"b\"\n\"alice\" \"c\"\n", `users.txt:3: user "alice" is already listed on line 1`},
		{"bad scram", `"alice" "SCRAM-SHA-256$4096:abc"`, `users.txt:1: user "alice": invalid SCRAM-SHA-256 secret`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParseUsers(strings.NewReader(tt.file), "users.txt")
			if err == nil || !strings.HasPrefix(err.Error(), tt.wantErr) {
				t.Fatalf("ParseUsers() error = %v, want prefix %q", err, tt.wantErr)
			}
			if strings.Contains(err.Error(), "secret\"") || strings.Contains(err.Error(), `"secret`) {
				t.Errorf("error %q reveals the secret", err)
			}
		})
	}
}

func TestParseUsersAccepts(t *testing.T) {
	tests := []struct {
		name, file string
		want       map[string]string // user -> kind
	}{
		{"empty", "", map[string]string{}},
		{"comments only", "; a\n# b\n   ; c\n\n", map[string]string{}},
		{"crlf", "\"a\" \"x\"\r\n\"b\" \"\"\r\n", map[string]string{"a": "plain", "b": "none"}},
		{"bom", "\xef\xbb\xbf\"a\" \"x\"\n", map[string]string{"a": "plain"}},
		{"no final newline", `"a" "x"`, map[string]string{"a": "plain"}},
		{"escaped quotes", `"""" """"""`, map[string]string{`"`: "plain"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			users, err := ParseUsers(strings.NewReader(tt.file), "users.txt")
			if err != nil {
				t.Fatal(err)
			}
			if users.Len() != len(tt.want) {
				t.Errorf("Len() = %d, want %d", users.Len(), len(tt.want))
			}
			for name, kind := range tt.want {
				s, ok := users.Lookup(name)
				if !ok || s.Kind().String() != kind {
					t.Errorf("Lookup(%q) = %v, %v; want kind %s", name, s, ok, kind)
				}
			}
		})
	}
}

func TestUsersNil(t *testing.T) {
	var u *Users
	if _, ok := u.Lookup("alice"); ok {
		t.Error("nil Users found a user")
	}
	if u.Len() != 0 {
		t.Error("nil Users is not empty")
	}
}

func TestLoadUsersMissingFile(t *testing.T) {
	_, err := LoadUsers(filepath.Join(t.TempDir(), "nope.txt"))
	if err == nil || !os.IsNotExist(err) && !strings.Contains(err.Error(), "nope.txt") {
		t.Fatalf("LoadUsers() error = %v, want a not-exist error naming the file", err)
	}
}

func TestSASLPrep(t *testing.T) {
	tests := []struct{ in, want string }{
		{"pencil", "pencil"},
		{"\x01ascii controls stay", "\x01ascii controls stay"}, // ASCII is never touched
		{"I\u00adX", "IX"},                 // B.1: soft hyphen maps to nothing
		{"a\u00a0b", "a b"},                // C.1.2: no-break space maps to space
		{"\u2168", "IX"},                   // NFKC
		{"\u00aa", "a"},                    // RFC 4013 example 3
		{"x\u0007\u00e9", "x\u0007\u00e9"}, // RFC 4013 example 4: prohibited, kept raw
		{"\u0627\u0031", "\u0627\u0031"},   // RFC 4013 example 5: bidi rule, kept raw
		{"\u0627\u0031\u0628", "\u0627\u0031\u0628"},
		{"caf\u0065\u0301", "caf\u00e9"},
		{"\xff\xfe", "\xff\xfe"},     // not UTF-8, kept raw
		{"\U0001F600", "\U0001F600"}, // unassigned in Unicode 3.2, kept raw
	}
	for _, tt := range tests {
		if got := saslPrep(tt.in); got != tt.want {
			t.Errorf("saslPrep(%+q) = %+q, want %+q", tt.in, got, tt.want)
		}
	}
}
