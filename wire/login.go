package wire

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
)

// ServerLogin is what a client's successful authentication leaves for
// logging in to the server as the same user, without the proxy storing
// the user's password: a clear-text password (the password method, or a
// plain secret in a users file), an md5 secret (md5 authentication needs
// only the hash), or the SCRAM ClientKey recovered from the client's proof
// together with the verifier's ServerKey, salt and iteration count. With
// the SCRAM keys the proxy answers the server's SCRAM challenge as
// PgBouncer (1.14 and later) does; it works when the server holds the same
// verifier the client was checked against (the users file or auth_query
// copied it from pg_authid).
//
// A ServerLogin is immutable and safe for concurrent use. String never
// reveals the secret.
type ServerLogin struct {
	password string
	md5      string // "md5" + 32 hex digits
	scram    *scramLogin
}

type scramLogin struct {
	iterations int
	salt       []byte
	clientKey  []byte
	serverKey  [sha256.Size]byte
}

// loginFromSecret returns what a secret alone allows: the password of a
// plain secret, or an md5 hash.
func loginFromSecret(s Secret) *ServerLogin {
	switch s.kind {
	case SecretPlain:
		return &ServerLogin{password: s.text}
	case SecretMD5:
		return &ServerLogin{md5: s.text}
	}
	return &ServerLogin{}
}

// Empty reports whether l holds nothing to log in with.
func (l *ServerLogin) Empty() bool {
	return l == nil || l.password == "" && l.md5 == "" && l.scram == nil
}

// String names what l holds, never the secret.
func (l *ServerLogin) String() string {
	switch {
	case l == nil || l.Empty():
		return "ServerLogin(none)"
	case l.password != "":
		return "ServerLogin(password)"
	case l.scram != nil:
		return "ServerLogin(SCRAM keys)"
	}
	return "ServerLogin(md5)"
}

// Equal reports whether l and o hold the same credentials.
func (l *ServerLogin) Equal(o *ServerLogin) bool {
	if l.Empty() || o.Empty() {
		return l.Empty() == o.Empty()
	}
	if l.password != o.password || l.md5 != o.md5 || (l.scram == nil) != (o.scram == nil) {
		return false
	}
	if l.scram == nil {
		return true
	}
	a, b := l.scram, o.scram
	return a.iterations == b.iterations && bytes.Equal(a.salt, b.salt) &&
		bytes.Equal(a.clientKey, b.clientKey) && a.serverKey == b.serverKey
}

// Apply sets cfg up to log in with l: a clear-text password goes to
// cfg.Password, for pgconn's own authentication; md5 and SCRAM keys are
// answered by an AfterNetConnect hook that runs the startup and the
// authentication exchange itself and hands pgconn a connection that is
// already authenticated. cfg must be a copy the caller owns. An empty l
// leaves cfg alone.
func (l *ServerLogin) Apply(cfg *pgconn.Config) {
	switch {
	case l.Empty():
	case l.password != "":
		cfg.Password = l.password
	default:
		cfg.Password = ""
		cfg.AfterNetConnect = func(ctx context.Context, cfg *pgconn.Config, conn net.Conn) (net.Conn, error) {
			lc, err := l.afterNetConnect(ctx, cfg, conn)
			if err != nil {
				// pgconn closes the connection it gets back with an
				// error (and would panic on a nil one).
				return conn, err
			}
			return lc, nil
		}
	}
}

// maxLoginMessage caps a server message during our own authentication
// exchange.
const maxLoginMessage = 1 << 20

// afterNetConnect runs the StartupMessage and authentication on conn (TLS
// already established by pgconn) up to AuthenticationOk, and returns a
// connection that shows pgconn that AuthenticationOk and swallows the
// StartupMessage pgconn then writes. pgconn reads the rest of the startup
// (ParameterStatus, BackendKeyData, ReadyForQuery) from the server itself.
func (l *ServerLogin) afterNetConnect(ctx context.Context, cfg *pgconn.Config, conn net.Conn) (net.Conn, error) {
	if cfg.ChannelBinding == "require" {
		return nil, errors.New("channel_binding=require cannot be met when logging in with the client's SCRAM keys")
	}
	if dl, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(dl)
		defer conn.SetDeadline(time.Time{})
	}
	params := make(map[string]string, len(cfg.RuntimeParams)+2)
	maps.Copy(params, cfg.RuntimeParams)
	params["user"] = cfg.User
	if cfg.Database != "" {
		params["database"] = cfg.Database
	}
	startup, err := (&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersion30, Parameters: params}).Encode(nil)
	if err != nil {
		return nil, err
	}
	if _, err := conn.Write(startup); err != nil {
		return nil, fmt.Errorf("write startup message: %w", err)
	}
	var sc *scramClient
	for {
		typ, body, err := readLoginMessage(conn)
		if err != nil {
			return nil, err
		}
		switch typ {
		case MsgErrorResponse:
			var er pgproto3.ErrorResponse
			if err := er.Decode(body); err != nil {
				return nil, fmt.Errorf("decode server error: %w", err)
			}
			return nil, pgconn.ErrorResponseToPgError(&er)
		case MsgNoticeResponse:
			continue
		case MsgAuthentication:
		default:
			return nil, fmt.Errorf("unexpected message %q during authentication", typ)
		}
		if len(body) < 4 {
			return nil, errors.New("malformed authentication request")
		}
		code := binary.BigEndian.Uint32(body)
		var reply []byte
		switch code {
		case 0: // AuthenticationOk
			return &loggedInConn{Conn: conn, replay: AppendAuthOK(nil), skip: -1}, nil
		case 5: // MD5
			if len(body) != 8 {
				return nil, errors.New("malformed AuthenticationMD5Password")
			}
			if l.md5 == "" {
				return nil, errors.New("server asks for md5 authentication, but only SCRAM keys are known for this user")
			}
			reply, err = (&pgproto3.PasswordMessage{Password: "md5" + md5Hex(l.md5[3:], string(body[4:8]))}).Encode(nil)
		case 10: // SASL
			if l.scram == nil {
				return nil, errors.New("server asks for SCRAM-SHA-256 authentication, but only an md5 hash is known for this user")
			}
			if !hasMechanism(body[4:], scramMechanism) {
				return nil, errors.New("server does not offer SCRAM-SHA-256")
			}
			sc = newSCRAMClient(l.scram)
			reply, err = (&pgproto3.SASLInitialResponse{AuthMechanism: scramMechanism, Data: []byte(sc.clientFirst())}).Encode(nil)
		case 11: // SASLContinue
			if sc == nil {
				return nil, errors.New("unexpected AuthenticationSASLContinue")
			}
			var final string
			final, err = sc.handleServerFirst(string(body[4:]))
			if err == nil {
				reply, err = (&pgproto3.SASLResponse{Data: []byte(final)}).Encode(nil)
			}
		case 12: // SASLFinal
			if sc == nil {
				return nil, errors.New("unexpected AuthenticationSASLFinal")
			}
			if err := sc.checkServerFinal(string(body[4:])); err != nil {
				return nil, err
			}
			continue
		default:
			return nil, fmt.Errorf("server asks for authentication method %d, which cannot be answered with the client's SCRAM keys or md5 hash", code)
		}
		if err != nil {
			return nil, err
		}
		if _, err := conn.Write(reply); err != nil {
			return nil, fmt.Errorf("write authentication response: %w", err)
		}
	}
}

// readLoginMessage reads one message without read-ahead, so that nothing
// past AuthenticationOk is consumed.
func readLoginMessage(conn net.Conn) (byte, []byte, error) {
	var hdr [5]byte
	if _, err := io.ReadFull(conn, hdr[:]); err != nil {
		return 0, nil, fmt.Errorf("read from server: %w", err)
	}
	n := int(binary.BigEndian.Uint32(hdr[1:])) - 4
	if n < 0 || n > maxLoginMessage {
		return 0, nil, fmt.Errorf("server message of %d bytes during authentication", n)
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(conn, body); err != nil {
		return 0, nil, fmt.Errorf("read from server: %w", err)
	}
	return hdr[0], body, nil
}

func hasMechanism(list []byte, name string) bool {
	for _, m := range bytes.Split(list, []byte{0}) {
		if string(m) == name {
			return true
		}
	}
	return false
}

// loggedInConn is a connection whose authentication is done: it replays
// AuthenticationOk to pgconn and drops the StartupMessage pgconn writes
// first. ConnectServer unwraps it after pgconn's Hijack.
type loggedInConn struct {
	net.Conn
	replay []byte
	// skip is how many more bytes of pgconn's StartupMessage to drop: -1
	// until its length is known (hdr collects the length word), 0 after.
	skip int
	hdr  []byte
}

func (c *loggedInConn) Read(b []byte) (int, error) {
	if len(c.replay) > 0 {
		n := copy(b, c.replay)
		c.replay = c.replay[n:]
		return n, nil
	}
	return c.Conn.Read(b)
}

func (c *loggedInConn) Write(b []byte) (int, error) {
	total := len(b)
	for c.skip != 0 && len(b) > 0 {
		if c.skip < 0 {
			need := 4 - len(c.hdr)
			k := min(need, len(b))
			c.hdr = append(c.hdr, b[:k]...)
			b = b[k:]
			if len(c.hdr) == 4 {
				c.skip = int(binary.BigEndian.Uint32(c.hdr)) - 4
				if c.skip <= 0 {
					return 0, errors.New("malformed StartupMessage")
				}
			}
			continue
		}
		k := min(c.skip, len(b))
		c.skip -= k
		b = b[k:]
	}
	if len(b) == 0 {
		return total, nil
	}
	n, err := c.Conn.Write(b)
	return total - len(b) + n, err
}

// unwrap returns the underlying connection once pgconn has read the
// replayed bytes and written its StartupMessage.
func (c *loggedInConn) unwrap() (net.Conn, error) {
	if len(c.replay) > 0 || c.skip != 0 {
		return nil, errors.New("pass-through login: startup not finished")
	}
	return c.Conn, nil
}

// scramClient is the client side of SCRAM-SHA-256 given the ClientKey and
// ServerKey instead of the password.
type scramClient struct {
	keys            *scramLogin
	clientNonce     string
	clientFirstBare string
	authMessage     string
}

func newSCRAMClient(keys *scramLogin) *scramClient {
	var raw [18]byte
	_, _ = rand.Read(raw[:])
	return &scramClient{keys: keys, clientNonce: base64.StdEncoding.EncodeToString(raw[:])}
}

// clientFirst returns the client-first-message. Like libpq it sends an
// empty user name (the startup packet's user counts) and no channel
// binding ("n": the proxy does not bind).
func (s *scramClient) clientFirst() string {
	s.clientFirstBare = "n=,r=" + s.clientNonce
	return "n,," + s.clientFirstBare
}

// handleServerFirst checks the server-first-message and returns the
// client-final-message with the proof.
func (s *scramClient) handleServerFirst(msg string) (string, error) {
	var nonce, saltB64, iterStr string
	for _, attr := range strings.Split(msg, ",") {
		switch {
		case strings.HasPrefix(attr, "r="):
			nonce = attr[2:]
		case strings.HasPrefix(attr, "s="):
			saltB64 = attr[2:]
		case strings.HasPrefix(attr, "i="):
			iterStr = attr[2:]
		}
	}
	if !strings.HasPrefix(nonce, s.clientNonce) || len(nonce) == len(s.clientNonce) {
		return "", errors.New("SCRAM: server nonce does not extend the client nonce")
	}
	salt, err := base64.StdEncoding.DecodeString(saltB64)
	if err != nil {
		return "", errors.New("SCRAM: invalid salt from server")
	}
	iter, err := strconv.Atoi(iterStr)
	if err != nil {
		return "", errors.New("SCRAM: invalid iteration count from server")
	}
	if iter != s.keys.iterations || !bytes.Equal(salt, s.keys.salt) {
		// The server's verifier is not the one the client was checked
		// against (the password changed, or the users file is stale):
		// the keys cannot answer it.
		return "", &pgconn.PgError{Severity: "FATAL", Code: CodeInvalidPassword,
			Message: "the server's SCRAM secret for this user differs from the one the client authenticated with (password changed, or a stale users file)"}
	}
	withoutProof := "c=biws,r=" + nonce
	s.authMessage = s.clientFirstBare + "," + msg + "," + withoutProof
	storedKey := sha256.Sum256(s.keys.clientKey)
	sig := hmacSHA256(storedKey[:], []byte(s.authMessage))
	proof := make([]byte, len(sig))
	subtle.XORBytes(proof, s.keys.clientKey, sig)
	return withoutProof + ",p=" + base64.StdEncoding.EncodeToString(proof), nil
}

// checkServerFinal verifies the server's signature, so that a server that
// does not know the verifier cannot pose as the real one.
func (s *scramClient) checkServerFinal(msg string) error {
	if strings.HasPrefix(msg, "e=") {
		return fmt.Errorf("SCRAM: server error %q", msg[2:])
	}
	v, ok := strings.CutPrefix(msg, "v=")
	if !ok {
		return errors.New("SCRAM: malformed server-final-message")
	}
	got, err := base64.StdEncoding.DecodeString(v)
	if err != nil {
		return errors.New("SCRAM: malformed server signature")
	}
	want := hmacSHA256(s.keys.serverKey[:], []byte(s.authMessage))
	if !hmac.Equal(got, want) {
		return errors.New("SCRAM: invalid server signature")
	}
	return nil
}
