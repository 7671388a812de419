package wire

import (
	"bytes"
	"crypto/md5"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"strconv"
	"sync"

	"github.com/jackc/pgx/v5/pgproto3"
)

// Client authentication methods, named as in pg_hba.conf.
const (
	// AuthTrust accepts the client without a password.
	AuthTrust = "trust"
	// AuthPassword asks for the password in clear text. Use it only over
	// TLS.
	AuthPassword = "password"
	// AuthMD5 runs the md5 challenge, or SCRAM-SHA-256 when the user's
	// secret is a SCRAM verifier, as Postgres does.
	AuthMD5 = "md5"
	// AuthSCRAM runs SCRAM-SHA-256 (without channel binding).
	AuthSCRAM = "scram-sha-256"
)

// maxAuthMessage caps the body of a client authentication message, as
// Postgres's PG_MAX_AUTH_TOKEN_LENGTH does.
const maxAuthMessage = 65535

// Authenticate authenticates the client on c as user with method (AuthTrust,
// AuthPassword, AuthMD5 or AuthSCRAM), checking against secret. found says
// whether user is known; when it is false, secret is ignored and the
// exchange runs anyway against a fake secret and fails, so that a client
// cannot tell a missing user from a wrong password. AuthTrust exchanges
// nothing and accepts any user, known or not: whether unknown users are
// acceptable is the caller's decision.
//
// Authenticate is called after the StartupMessage has been read (and any
// NegotiateProtocolVersion written) and before AuthenticationOk. It writes the authentication requests and, for
// SCRAM, the server-final message (AuthenticationSASLFinal), flushing each,
// and reads the client's replies; it does not set deadlines, so the caller
// should bound it (Postgres's authentication_timeout is one minute). It
// lowers the Reader's body limit to 65535 bytes for the exchange and then
// restores it.
//
// On success it returns nil, and the caller sends AuthenticationOk followed
// by ParameterStatus, BackendKeyData and ReadyForQuery. Authenticate never
// sends AuthenticationOk or ErrorResponse itself. Otherwise:
//
//   - A *Error (test with errors.As) must be sent to the client, with
//     c.SendError, before closing the connection. Failed authentication is
//     FATAL 28P01 `password authentication failed for user "NAME"`, the same
//     whatever went wrong; the reason (unknown user, wrong password, ...) is
//     in its Cause, for the server log only. An unexpected message or a
//     malformed one is FATAL 08P01; an unsupported SCRAM option is FATAL
//     0A000; an unknown method is FATAL 28000 and nothing is exchanged.
//   - Any other error is an I/O error: the connection is unusable and is
//     closed without a reply. When the client hung up (as psql does when
//     it goes to prompt for a password) the error wraps io.EOF or
//     io.ErrUnexpectedEOF, a routine event that should not be logged as an
//     error.
func Authenticate(c *Conn, method, user string, secret Secret, found bool) error {
	_, err := AuthenticateLogin(c, method, user, secret, found)
	return err
}

// AuthenticateLogin is Authenticate that also returns, on success, what the
// exchange left for logging in to the server as the same user (see
// ServerLogin): the clear-text password of the password method or of a
// plain secret, an md5 secret, or the SCRAM ClientKey recovered from the
// client's proof. The ServerLogin is never nil on success; it may be empty
// (trust with a SCRAM secret, say).
func AuthenticateLogin(c *Conn, method, user string, secret Secret, found bool) (*ServerLogin, error) {
	if method == AuthTrust {
		return loginFromSecret(secret), nil
	}
	if !found {
		secret = Secret{}
	}
	saved := c.R.maxBody
	c.R.SetMaxBody(maxAuthMessage)
	defer c.R.SetMaxBody(saved)

	var failure error
	var err error
	login := loginFromSecret(secret)
	switch method {
	case AuthPassword:
		var pw string
		pw, failure, err = authPassword(c, user, secret)
		if failure == nil && err == nil {
			login = &ServerLogin{password: pw}
		}
	case AuthMD5:
		if secret.kind == SecretSCRAM {
			failure, err = authSCRAM(c, user, secret, login)
		} else {
			failure, err = authMD5(c, user, secret)
		}
	case AuthSCRAM:
		failure, err = authSCRAM(c, user, secret, login)
	default:
		return nil, &Error{Severity: "FATAL", Code: CodeInvalidAuthorization,
			Message: fmt.Sprintf("authentication method %q is not supported", method)}
	}
	if err != nil {
		return nil, err
	}
	if !found {
		failure = errUnknownUser
	}
	if failure != nil {
		return nil, authFailed(user, failure)
	}
	return login, nil
}

// Reasons for a failed authentication, recorded as the Cause of the 28P01
// Error.
var (
	errUnknownUser   = errors.New("unknown user (not in the users file, no row from auth_query)")
	errWrongPassword = errors.New("password does not match")
	errEmptyPassword = errors.New("empty password returned by client")
	errNoPassword    = errors.New("user has no password")
	errNoSCRAMSecret = errors.New("user has no SCRAM secret (md5 hashes cannot be used with scram-sha-256)")
)

func authFailed(user string, cause error) *Error {
	return &Error{
		Severity: "FATAL",
		Code:     CodeInvalidPassword,
		Message:  "password authentication failed for user " + quoteIdent(user),
		Cause:    cause,
	}
}

// sendAuth encodes, writes and flushes one authentication request.
func sendAuth(c *Conn, msg pgproto3.BackendMessage, step string) error {
	buf, err := msg.Encode(nil)
	if err != nil {
		return fmt.Errorf("auth: encode %s: %w", step, err)
	}
	if err := c.WriteRaw(buf); err != nil {
		return fmt.Errorf("auth: send %s: %w", step, err)
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("auth: send %s: %w", step, err)
	}
	return nil
}

// readAuthResponse reads the client's next message, which must be a
// password-type ('p') message, and returns its body. The body aliases the
// Reader's buffer.
func readAuthResponse(c *Conn, expect string) ([]byte, error) {
	typ, raw, err := c.R.ReadMessage()
	if err != nil {
		var tooLarge *MessageTooLargeError
		if errors.As(err, &tooLarge) || errors.Is(err, ErrInvalidLength) {
			return nil, &Error{Severity: "FATAL", Code: CodeProtocolViolation,
				Message: "invalid " + expect + " message", Cause: err}
		}
		return nil, fmt.Errorf("auth: read %s: %w", expect, err)
	}
	switch typ {
	case MsgPassword:
		return raw[5:], nil
	case MsgTerminate:
		// Terminate: the client gave up, which is as routine as hanging up.
		return nil, fmt.Errorf("auth: client sent Terminate instead of %s: %w", expect, errClientTerminated)
	}
	return nil, &Error{Severity: "FATAL", Code: CodeProtocolViolation,
		Message: fmt.Sprintf("expected %s, got message type %q", expect, typ)}
}

// errClientTerminated wraps io.EOF so that callers treat a Terminate
// during authentication like a hang-up.
var errClientTerminated = fmt.Errorf("client terminated the connection: %w", io.EOF)

// readPassword reads a PasswordMessage holding a password or md5 response.
func readPassword(c *Conn) (string, error) {
	body, err := readAuthResponse(c, "password response")
	if err != nil {
		return "", err
	}
	var msg pgproto3.PasswordMessage
	if err := msg.Decode(body); err != nil || len(msg.Password)+1 != len(body) {
		return "", &Error{Severity: "FATAL", Code: CodeProtocolViolation,
			Message: "invalid password packet size", Cause: err}
	}
	return msg.Password, nil
}

// authPassword runs cleartext password authentication. It returns a
// non-nil failure when the password is wrong.
func authPassword(c *Conn, user string, secret Secret) (password string, failure, err error) {
	if err := sendAuth(c, &pgproto3.AuthenticationCleartextPassword{}, "AuthenticationCleartextPassword"); err != nil {
		return "", nil, err
	}
	password, err = readPassword(c)
	if err != nil {
		return "", nil, err
	}
	switch {
	case password == "":
		return "", errEmptyPassword, nil
	case secret.kind == SecretNone:
		return "", errNoPassword, nil
	case !checkPlainPassword(secret, user, password):
		return "", errWrongPassword, nil
	}
	return password, nil, nil
}

// checkPlainPassword reports whether password matches secret.
func checkPlainPassword(secret Secret, user, password string) bool {
	switch secret.kind {
	case SecretPlain:
		return subtle.ConstantTimeCompare([]byte(password), []byte(secret.text)) == 1
	case SecretMD5:
		want := md5Hex(password, user)
		return subtle.ConstantTimeCompare([]byte(want), []byte(secret.text[3:])) == 1
	case SecretSCRAM:
		// As Postgres's scram_verify_plain_password: derive the keys with the
		// verifier's salt and compare StoredKey.
		sc := secret.scram
		clientKey, _ := scramClientServerKeys(saslPrep(password), sc.salt, sc.iterations)
		stored := sha256.Sum256(clientKey)
		return subtle.ConstantTimeCompare(stored[:], sc.keys[0].storedKey[:]) == 1
	}
	return false
}

// md5Hex returns hex(md5(a || b)).
func md5Hex(a, b string) string {
	h := md5.New()
	h.Write([]byte(a))
	h.Write([]byte(b))
	return hex.EncodeToString(h.Sum(nil))
}

// authMD5 runs md5 challenge-response authentication for a plain or md5
// secret (any other secret fails after the exchange).
func authMD5(c *Conn, user string, secret Secret) (failure, err error) {
	var salt [4]byte
	_, _ = rand.Read(salt[:])
	if err := sendAuth(c, &pgproto3.AuthenticationMD5Password{Salt: salt}, "AuthenticationMD5Password"); err != nil {
		return nil, err
	}
	response, err := readPassword(c)
	if err != nil {
		return nil, err
	}
	if response == "" {
		return errEmptyPassword, nil
	}
	var inner string
	switch secret.kind {
	case SecretPlain:
		inner = md5Hex(secret.text, user)
	case SecretMD5:
		inner = secret.text[3:]
	default:
		return errNoPassword, nil
	}
	want := "md5" + md5Hex(inner, string(salt[:]))
	if subtle.ConstantTimeCompare([]byte(response), []byte(want)) != 1 {
		return errWrongPassword, nil
	}
	return nil, nil
}

// SASL mechanism names.
const (
	scramMechanism     = "SCRAM-SHA-256"
	scramPlusMechanism = "SCRAM-SHA-256-PLUS"
)

// authSCRAM runs SCRAM-SHA-256 authentication (RFC 5802, RFC 7677) as the
// server. Secrets without a SCRAM verifier get a mock exchange that fails.
// On success with a SCRAM secret (a verifier that is not derived from a
// plain password), the ClientKey recovered from the proof is stored in
// login for the server login.
func authSCRAM(c *Conn, user string, secret Secret, login *ServerLogin) (failure, err error) {
	s := newSCRAMServer(user, secret)
	if err := sendAuth(c, &pgproto3.AuthenticationSASL{AuthMechanisms: []string{scramMechanism}}, "AuthenticationSASL"); err != nil {
		return nil, err
	}

	body, err := readAuthResponse(c, "SASL response")
	if err != nil {
		return nil, err
	}
	clientFirst, err := decodeSASLInitialResponse(body)
	if err != nil {
		return nil, err
	}
	serverFirst, err := s.handleClientFirst(clientFirst)
	if err != nil {
		return nil, err
	}
	if err := sendAuth(c, &pgproto3.AuthenticationSASLContinue{Data: serverFirst}, "AuthenticationSASLContinue"); err != nil {
		return nil, err
	}

	body, err = readAuthResponse(c, "SASL response")
	if err != nil {
		return nil, err
	}
	var resp pgproto3.SASLResponse
	if err := resp.Decode(body); err != nil {
		return nil, &Error{Severity: "FATAL", Code: CodeProtocolViolation, Message: "invalid SASL response", Cause: err}
	}
	serverFinal, failure, err := s.handleClientFinal(resp.Data)
	if err != nil || failure != nil {
		return failure, err
	}
	if err := sendAuth(c, &pgproto3.AuthenticationSASLFinal{Data: serverFinal}, "AuthenticationSASLFinal"); err != nil {
		return nil, err
	}
	if secret.kind == SecretSCRAM && s.clientKey != nil {
		login.scram = &scramLogin{
			iterations: s.verifier.iterations,
			salt:       s.verifier.salt,
			clientKey:  s.clientKey,
			serverKey:  s.matched.serverKey,
		}
	}
	return nil, nil
}

// decodeSASLInitialResponse decodes a SASLInitialResponse body, checks the
// chosen mechanism and returns the client-first-message.
func decodeSASLInitialResponse(body []byte) ([]byte, error) {
	var msg pgproto3.SASLInitialResponse
	if err := msg.Decode(body); err != nil {
		return nil, &Error{Severity: "FATAL", Code: CodeProtocolViolation, Message: "invalid SASL initial response", Cause: err}
	}
	// pgproto3 skips the data length; check it as Postgres does. -1 means
	// no data.
	n := int32(binary.BigEndian.Uint32(body[len(msg.AuthMechanism)+1:]))
	if !(n == -1 && len(msg.Data) == 0) && int(n) != len(msg.Data) {
		return nil, &Error{Severity: "FATAL", Code: CodeProtocolViolation, Message: "invalid SASL initial response",
			Detail: fmt.Sprintf("Data length %d does not match the message length.", n)}
	}
	if msg.AuthMechanism != scramMechanism {
		e := &Error{Severity: "FATAL", Code: CodeProtocolViolation, Message: "client selected an invalid SASL authentication mechanism"}
		if msg.AuthMechanism == scramPlusMechanism {
			e.Detail = "Channel binding (SCRAM-SHA-256-PLUS) is not offered by this server."
		}
		return nil, e
	}
	return msg.Data, nil
}

// scramServer is the server side of one SCRAM-SHA-256 exchange. It does no
// I/O: handleClientFirst and handleClientFinal take the client's messages
// and return the server's.
type scramServer struct {
	verifier *scramSecret
	// doomed, when not nil, is why the exchange must fail whatever the
	// proof: the user has no usable verifier and a mock one stands in.
	doomed      error
	serverNonce string

	gs2Header       string // "n,," or "y,,"
	clientFirstBare string
	serverFirst     string
	nonce           string // client nonce + server nonce

	// clientKey and matched are the ClientKey recovered from a valid
	// proof and the key pair it matched.
	clientKey []byte
	matched   scramKeys
}

// newSCRAMServer prepares an exchange for user with secret, using a mock
// verifier when secret has none.
func newSCRAMServer(user string, secret Secret) *scramServer {
	var raw [18]byte // Postgres's SCRAM_RAW_NONCE_LEN
	_, _ = rand.Read(raw[:])
	s := &scramServer{serverNonce: base64.StdEncoding.EncodeToString(raw[:])}
	switch v := secret.scramVerifier(); {
	case v != nil:
		s.verifier = v
	case secret.kind == SecretMD5:
		s.verifier, s.doomed = mockVerifier(user), errNoSCRAMSecret
	default:
		s.verifier, s.doomed = mockVerifier(user), errNoPassword
	}
	return s
}

var mockKey = sync.OnceValue(func() []byte {
	k := make([]byte, 32)
	_, _ = rand.Read(k)
	return k
})

// mockVerifier returns a verifier no proof matches, with a salt that
// depends only on user (and the process), so that repeated attempts for a
// missing user see a stable salt just like a real user does.
func mockVerifier(user string) *scramSecret {
	mac := hmacSHA256(mockKey(), []byte(user))
	var k scramKeys
	_, _ = rand.Read(k.storedKey[:])
	_, _ = rand.Read(k.serverKey[:])
	return &scramSecret{iterations: scramIterations, salt: mac[:scramSaltLen], keys: []scramKeys{k}}
}

// malformedSCRAM returns the 08P01 error Postgres sends for a SCRAM message
// it cannot parse.
func malformedSCRAM(detail string) *Error {
	return &Error{Severity: "FATAL", Code: CodeProtocolViolation, Message: "malformed SCRAM message", Detail: detail}
}

// clientFirstMessage is a parsed SCRAM client-first-message.
type clientFirstMessage struct {
	gs2Header string // "n,," or "y,,"
	bare      string // client-first-message-bare
	nonce     string
}

// parseClientFirst parses a client-first-message:
//
//	gs2-header client-first-message-bare
//	gs2-header = gs2-cbind-flag "," [ authzid ] ","
//	client-first-message-bare = [reserved-mext ","] username "," nonce ["," extensions]
//
// Channel binding ("p="), an authorization identity and mandatory
// extensions are refused.
func parseClientFirst(data []byte) (*clientFirstMessage, error) {
	if len(data) == 0 {
		return nil, malformedSCRAM("The message is empty.")
	}
	if bytes.IndexByte(data, 0) >= 0 {
		return nil, malformedSCRAM("The message contains a null byte.")
	}
	msg := string(data)
	switch msg[0] {
	case 'n', 'y':
		// 'y': the client could bind but thinks we cannot, which is right.
	case 'p':
		return nil, &Error{Severity: "FATAL", Code: CodeProtocolViolation,
			Message: "SCRAM channel binding is not supported",
			Detail:  "The client selected SCRAM-SHA-256 without channel binding, but the SCRAM message includes channel binding data.",
			Hint:    "This server does not offer SCRAM-SHA-256-PLUS; connect with channel_binding=prefer or disable."}
	default:
		return nil, malformedSCRAM(fmt.Sprintf("Unexpected channel-binding flag %q.", msg[0]))
	}
	if len(msg) < 2 || msg[1] != ',' {
		return nil, malformedSCRAM("Comma expected after the channel-binding flag.")
	}
	if len(msg) > 2 && msg[2] == 'a' {
		return nil, &Error{Severity: "FATAL", Code: CodeFeatureNotSupported,
			Message: "client uses authorization identity, but it is not supported"}
	}
	if len(msg) < 3 || msg[2] != ',' {
		return nil, malformedSCRAM("Comma expected after the authorization identity.")
	}
	m := &clientFirstMessage{gs2Header: msg[:3], bare: msg[3:]}
	rest := m.bare
	if len(rest) > 0 && rest[0] == 'm' {
		return nil, &Error{Severity: "FATAL", Code: CodeFeatureNotSupported,
			Message: "client requires an unsupported SCRAM extension"}
	}
	// The user name is ignored, as in Postgres: the startup packet's user
	// is the one authenticated (libpq sends "n=").
	var err error
	if _, rest, err = cutSCRAMAttr(rest, 'n'); err != nil {
		return nil, err
	}
	if m.nonce, rest, err = cutSCRAMAttr(rest, 'r'); err != nil {
		return nil, err
	}
	if err := checkSCRAMExtensions(rest); err != nil {
		return nil, err
	}
	if m.nonce == "" {
		return nil, malformedSCRAM("The client nonce is empty.")
	}
	for i := 0; i < len(m.nonce); i++ {
		if c := m.nonce[i]; c < 0x21 || c > 0x7e {
			return nil, malformedSCRAM("The client nonce contains non-printable characters.")
		}
	}
	return m, nil
}

// cutSCRAMAttr reads attribute attr ("a=value") from the start of s and
// returns its value and what follows the next comma (or "" at the end).
func cutSCRAMAttr(s string, attr byte) (value, rest string, err error) {
	if len(s) < 2 || s[0] != attr || s[1] != '=' {
		return "", "", malformedSCRAM(fmt.Sprintf("Expected attribute %q.", string(attr)))
	}
	value, rest, found := cutComma(s[2:])
	if found && rest == "" {
		return "", "", malformedSCRAM("Attribute expected after a comma.")
	}
	return value, rest, nil
}

func cutComma(s string) (before, after string, found bool) {
	for i := 0; i < len(s); i++ {
		if s[i] == ',' {
			return s[:i], s[i+1:], true
		}
	}
	return s, "", false
}

// checkSCRAMExtensions checks that s is a comma-separated list of optional
// extensions, each a letter, "=" and a value. They are ignored.
func checkSCRAMExtensions(s string) error {
	for s != "" {
		c := s[0]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z') {
			return malformedSCRAM("Attribute expected, but found invalid character.")
		}
		var err error
		if _, s, err = cutSCRAMAttr(s, c); err != nil {
			return err
		}
	}
	return nil
}

// clientFinalMessage is a parsed SCRAM client-final-message.
type clientFinalMessage struct {
	channelBinding string // c=, still base64
	nonce          string
	withoutProof   string // client-final-message-without-proof
	proof          []byte
}

// parseClientFinal parses a client-final-message:
//
//	channel-binding "," nonce ["," extensions] "," proof
func parseClientFinal(data []byte) (*clientFinalMessage, error) {
	if len(data) == 0 {
		return nil, malformedSCRAM("The message is empty.")
	}
	if bytes.IndexByte(data, 0) >= 0 {
		return nil, malformedSCRAM("The message contains a null byte.")
	}
	msg := string(data)
	m := &clientFinalMessage{}
	var err error
	rest := msg
	if m.channelBinding, rest, err = cutSCRAMAttr(rest, 'c'); err != nil {
		return nil, err
	}
	if m.nonce, rest, err = cutSCRAMAttr(rest, 'r'); err != nil {
		return nil, err
	}
	// Skip extensions up to the proof, which must come last.
	for {
		if rest == "" {
			return nil, malformedSCRAM("The client-final-message has no proof.")
		}
		start := len(msg) - len(rest)
		c := rest[0]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z') {
			return nil, malformedSCRAM("Attribute expected, but found invalid character.")
		}
		var value string
		if value, rest, err = cutSCRAMAttr(rest, c); err != nil {
			return nil, err
		}
		if c != 'p' {
			continue
		}
		if rest != "" {
			return nil, malformedSCRAM("Garbage found at the end of client-final-message.")
		}
		proof, err := base64.StdEncoding.DecodeString(value)
		if err != nil || len(proof) != sha256.Size {
			return nil, malformedSCRAM("Malformed proof in client-final-message.")
		}
		m.withoutProof = msg[:start-1] // drop the comma before "p="
		m.proof = proof
		return m, nil
	}
}

// handleClientFirst processes the client-first-message and returns the
// server-first-message.
func (s *scramServer) handleClientFirst(data []byte) ([]byte, error) {
	m, err := parseClientFirst(data)
	if err != nil {
		return nil, err
	}
	s.gs2Header = m.gs2Header
	s.clientFirstBare = m.bare
	s.nonce = m.nonce + s.serverNonce
	s.serverFirst = "r=" + s.nonce +
		",s=" + base64.StdEncoding.EncodeToString(s.verifier.salt) +
		",i=" + strconv.Itoa(s.verifier.iterations)
	return []byte(s.serverFirst), nil
}

// handleClientFinal processes the client-final-message. When the proof is
// right it returns the server-final-message; when it is wrong it returns a
// non-nil failure; err reports a malformed message.
func (s *scramServer) handleClientFinal(data []byte) (serverFinal []byte, failure, err error) {
	m, err := parseClientFinal(data)
	if err != nil {
		return nil, nil, err
	}
	// Without channel binding c= is the base64 GS2 header: "biws" for
	// "n,,", "eSws" for "y,,".
	if m.channelBinding != base64.StdEncoding.EncodeToString([]byte(s.gs2Header)) {
		return nil, nil, &Error{Severity: "FATAL", Code: CodeProtocolViolation,
			Message: "unexpected SCRAM channel-binding attribute in client-final-message"}
	}
	if m.nonce != s.nonce {
		return nil, nil, &Error{Severity: "FATAL", Code: CodeProtocolViolation,
			Message: "invalid SCRAM response", Detail: "Nonce does not match."}
	}
	authMessage := []byte(s.clientFirstBare + "," + s.serverFirst + "," + m.withoutProof)
	keys, clientKey, ok := s.verifyProof(m.proof, authMessage)
	if s.doomed != nil {
		return nil, s.doomed, nil
	}
	if !ok {
		return nil, errWrongPassword, nil
	}
	s.clientKey, s.matched = clientKey, keys
	sig := hmacSHA256(keys.serverKey[:], authMessage)
	return []byte("v=" + base64.StdEncoding.EncodeToString(sig)), nil, nil
}

// verifyProof checks a ClientProof against each key pair of the verifier:
// ClientKey = proof XOR HMAC(StoredKey, AuthMessage) must hash to StoredKey.
func (s *scramServer) verifyProof(proof, authMessage []byte) (scramKeys, []byte, bool) {
	for _, k := range s.verifier.keys {
		sig := hmacSHA256(k.storedKey[:], authMessage)
		clientKey := make([]byte, len(sig))
		subtle.XORBytes(clientKey, proof, sig)
		stored := sha256.Sum256(clientKey)
		if subtle.ConstantTimeCompare(stored[:], k.storedKey[:]) == 1 {
			return k, clientKey, true
		}
	}
	return scramKeys{}, nil, false
}
