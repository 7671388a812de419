package wire

import (
	"bufio"
	"bytes"
	"crypto/hmac"
	"crypto/pbkdf2"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"sync"
)

// SecretKind says how a Secret stores a password.
type SecretKind uint8

const (
	// SecretNone is an empty secret. No password matches it; it lets a users
	// file list a user for trust authentication only, as PgBouncer allows.
	SecretNone SecretKind = iota
	// SecretPlain is a plain-text password.
	SecretPlain
	// SecretMD5 is "md5" followed by the 32 lowercase hex digits of
	// md5(password || username), as in pg_authid.
	SecretMD5
	// SecretSCRAM is a SCRAM-SHA-256 verifier in pg_authid format.
	SecretSCRAM
)

// String returns the kind's name: "none", "plain", "md5" or "SCRAM-SHA-256".
func (k SecretKind) String() string {
	switch k {
	case SecretNone:
		return "none"
	case SecretPlain:
		return "plain"
	case SecretMD5:
		return "md5"
	case SecretSCRAM:
		return "SCRAM-SHA-256"
	}
	return "SecretKind(" + strconv.Itoa(int(k)) + ")"
}

// scramIterations is the PBKDF2 iteration count used when a SCRAM verifier
// has to be derived from a plain-text password (Postgres's default
// scram_iterations).
const scramIterations = 4096

// scramSaltLen is the salt length Postgres uses for new SCRAM secrets.
const scramSaltLen = 16

// scramSecret is a SCRAM-SHA-256 verifier: what the server needs to check a
// client proof and sign its reply, but not enough to log in elsewhere.
type scramSecret struct {
	iterations int
	salt       []byte
	// keys holds one StoredKey/ServerKey pair, or, for a verifier derived
	// from a non-ASCII plain password, one per normalization a client may
	// have applied (see saslPrepVariants); any of them is accepted.
	keys []scramKeys
}

type scramKeys struct {
	storedKey [sha256.Size]byte
	serverKey [sha256.Size]byte
}

// Secret is a password secret for one user, as read from a users file. The
// zero Secret is SecretNone. A Secret is immutable and safe for concurrent
// use; copies share state. String and GoString never reveal the secret.
type Secret struct {
	kind  SecretKind
	text  string       // the plain password or the "md5..." hash
	scram *scramSecret // SecretSCRAM only
	// derived caches the SCRAM verifier of a plain password, computed on
	// first use with a random salt (SecretPlain only).
	derived *lazySCRAM
}

type lazySCRAM struct {
	once sync.Once
	s    *scramSecret
}

// ParseSecret parses a secret as stored in a users file or pg_authid:
// "md5" followed by 32 lowercase hex digits is an md5 hash,
// "SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>" (base64) is a
// SCRAM verifier, "" is SecretNone, and anything else is a plain-text
// password. Like Postgres, a string that only resembles an md5 hash is taken
// as plain text; a malformed SCRAM verifier is an error, since no password
// plausibly begins with "SCRAM-SHA-256$".
func ParseSecret(s string) (Secret, error) {
	switch {
	case s == "":
		return Secret{}, nil
	case isMD5Secret(s):
		return Secret{kind: SecretMD5, text: s}, nil
	case strings.HasPrefix(s, "SCRAM-SHA-256$"):
		sc, err := parseSCRAMSecret(s)
		if err != nil {
			return Secret{}, err
		}
		return Secret{kind: SecretSCRAM, scram: sc}, nil
	}
	return Secret{kind: SecretPlain, text: s, derived: new(lazySCRAM)}, nil
}

// Kind reports how the secret stores the password.
func (s Secret) Kind() SecretKind { return s.kind }

// String returns the kind of the secret, never the secret itself.
func (s Secret) String() string { return "Secret(" + s.kind.String() + ")" }

// GoString is String, so that %#v does not print the secret either.
func (s Secret) GoString() string { return s.String() }

func isMD5Secret(s string) bool {
	if len(s) != 35 || !strings.HasPrefix(s, "md5") {
		return false
	}
	for _, c := range []byte(s[3:]) {
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}

func parseSCRAMSecret(s string) (*scramSecret, error) {
	// SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>
	bad := func(what string) error {
		return fmt.Errorf("invalid SCRAM-SHA-256 secret: %s", what)
	}
	rest := strings.TrimPrefix(s, "SCRAM-SHA-256$")
	params, keys, ok := strings.Cut(rest, "$")
	if !ok {
		return nil, bad(`want SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`)
	}
	iterStr, saltStr, ok := strings.Cut(params, ":")
	if !ok {
		return nil, bad(`missing ":" between iterations and salt`)
	}
	iter, err := strconv.Atoi(iterStr)
	if err != nil || iter <= 0 {
		return nil, bad(fmt.Sprintf("iteration count %q is not a positive integer", iterStr))
	}
	salt, err := base64.StdEncoding.DecodeString(saltStr)
	if err != nil || len(salt) == 0 {
		return nil, bad("salt is not valid base64")
	}
	storedStr, serverStr, ok := strings.Cut(keys, ":")
	if !ok {
		return nil, bad(`missing ":" between StoredKey and ServerKey`)
	}
	var k scramKeys
	if err := decodeKey(k.storedKey[:], storedStr); err != nil {
		return nil, bad("StoredKey " + err.Error())
	}
	if err := decodeKey(k.serverKey[:], serverStr); err != nil {
		return nil, bad("ServerKey " + err.Error())
	}
	return &scramSecret{iterations: iter, salt: salt, keys: []scramKeys{k}}, nil
}

func decodeKey(dst []byte, s string) error {
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		return errors.New("is not valid base64")
	}
	if len(b) != len(dst) {
		return fmt.Errorf("is %d bytes, want %d", len(b), len(dst))
	}
	copy(dst, b)
	return nil
}

// scramVerifier returns the SCRAM verifier of a plain or SCRAM secret, and
// nil for other kinds. For a plain password it is derived once, with a
// random salt, and cached.
func (s Secret) scramVerifier() *scramSecret {
	switch s.kind {
	case SecretSCRAM:
		return s.scram
	case SecretPlain:
		s.derived.once.Do(func() {
			salt := make([]byte, scramSaltLen)
			_, _ = rand.Read(salt) // never fails
			s.derived.s = deriveSCRAM(s.text, salt, scramIterations)
		})
		return s.derived.s
	}
	return nil
}

// deriveSCRAM computes the verifier of a plain password, with one key pair
// for each way a client may have normalized it (see saslPrepVariants).
func deriveSCRAM(password string, salt []byte, iterations int) *scramSecret {
	sc := &scramSecret{iterations: iterations, salt: salt}
	for _, p := range saslPrepVariants(password) {
		sc.keys = append(sc.keys, scramKeysFor(p, salt, iterations))
	}
	return sc
}

func scramKeysFor(password string, salt []byte, iterations int) scramKeys {
	var k scramKeys
	clientKey, serverKey := scramClientServerKeys(password, salt, iterations)
	k.storedKey = sha256.Sum256(clientKey)
	copy(k.serverKey[:], serverKey)
	return k
}

// scramClientServerKeys returns ClientKey and ServerKey (RFC 5802) for an
// already normalized password.
func scramClientServerKeys(password string, salt []byte, iterations int) (clientKey, serverKey []byte) {
	salted, err := pbkdf2.Key(sha256.New, password, salt, iterations, sha256.Size)
	if err != nil {
		// Only possible in FIPS 140-only mode with a short key or salt.
		panic("wire: pbkdf2: " + err.Error())
	}
	return hmacSHA256(salted, []byte("Client Key")), hmacSHA256(salted, []byte("Server Key"))
}

func hmacSHA256(key, msg []byte) []byte {
	m := hmac.New(sha256.New, key)
	m.Write(msg)
	return m.Sum(nil)
}

// Users maps user names to secrets. It is immutable once built, and safe
// for concurrent use; reload a users file by building a new Users. A nil
// *Users knows no user.
type Users struct {
	m map[string]Secret
}

// NewUsers returns a Users holding a copy of m.
func NewUsers(m map[string]Secret) *Users {
	u := &Users{m: make(map[string]Secret, len(m))}
	for name, s := range m {
		u.m[name] = s
	}
	return u
}

// Lookup returns the secret of user and whether user is listed.
func (u *Users) Lookup(user string) (Secret, bool) {
	if u == nil {
		return Secret{}, false
	}
	s, ok := u.m[user]
	return s, ok
}

// Len returns the number of users.
func (u *Users) Len() int {
	if u == nil {
		return 0
	}
	return len(u.m)
}

// LoadUsers reads a users file in PgBouncer auth_file format; see
// ParseUsers.
func LoadUsers(path string) (*Users, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("users file: %w", err)
	}
	defer f.Close()
	return ParseUsers(f, path)
}

// ParseUsers reads a users file in PgBouncer auth_file format from r. Each
// line holds two double-quoted fields, the user name and its secret (see
// ParseSecret); a quote inside a field is written twice (""). Anything after
// the second field, separated by white space, is ignored, as PgBouncer
// does. Blank lines and lines whose first non-blank character is ';' or '#'
// are skipped. A user listed twice is an error. Errors name the file (name)
// and line number.
func ParseUsers(r io.Reader, name string) (*Users, error) {
	u := &Users{m: make(map[string]Secret)}
	firstLine := make(map[string]int)
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 4096), 1<<20)
	lineno := 0
	for sc.Scan() {
		lineno++
		line := bytes.TrimSpace(sc.Bytes())
		if lineno == 1 {
			line = bytes.TrimPrefix(line, []byte("\xef\xbb\xbf")) // UTF-8 BOM
		}
		if len(line) == 0 || line[0] == ';' || line[0] == '#' {
			continue
		}
		user, secretText, err := parseUsersLine(line)
		if err != nil {
			return nil, fmt.Errorf("%s:%d: %w", name, lineno, err)
		}
		if prev, dup := firstLine[user]; dup {
			return nil, fmt.Errorf("%s:%d: user %q is already listed on line %d", name, lineno, user, prev)
		}
		secret, err := ParseSecret(secretText)
		if err != nil {
			return nil, fmt.Errorf("%s:%d: user %q: %w", name, lineno, user, err)
		}
		firstLine[user] = lineno
		u.m[user] = secret
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("%s:%d: %w", name, lineno+1, err)
	}
	return u, nil
}

// parseUsersLine splits `"user" "secret" ...` into its first two fields.
func parseUsersLine(line []byte) (user, secret string, err error) {
	user, rest, err := cutQuoted(line)
	if err != nil {
		return "", "", fmt.Errorf("user name: %w", err)
	}
	if user == "" {
		return "", "", errors.New("empty user name")
	}
	trimmed := bytes.TrimLeft(rest, " \t")
	if len(trimmed) == len(rest) {
		return "", "", errors.New(`expected white space and a quoted secret after the user name`)
	}
	secret, rest, err = cutQuoted(trimmed)
	if err != nil {
		return "", "", fmt.Errorf("secret of user %q: %w", user, err)
	}
	if len(rest) > 0 && rest[0] != ' ' && rest[0] != '\t' {
		return "", "", fmt.Errorf("unexpected %q after the secret of user %q", rest[0], user)
	}
	return user, secret, nil
}

// cutQuoted reads one double-quoted field with "" escapes from the start of
// b and returns its value and the rest of b.
func cutQuoted(b []byte) (string, []byte, error) {
	if len(b) == 0 || b[0] != '"' {
		return "", nil, errors.New(`expected a field in double quotes`)
	}
	var sb strings.Builder
	for i := 1; i < len(b); i++ {
		if b[i] != '"' {
			sb.WriteByte(b[i])
			continue
		}
		if i+1 < len(b) && b[i+1] == '"' {
			sb.WriteByte('"')
			i++
			continue
		}
		return sb.String(), b[i+1:], nil
	}
	return "", nil, errors.New("missing closing double quote")
}
