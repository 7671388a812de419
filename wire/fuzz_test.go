package wire

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"io"
	"slices"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgproto3"
)

// Seed corpora beyond the f.Add calls live in testdata/fuzz/<FuzzName>/.

// startupBody builds a StartupMessage body (without the length word).
func startupBody(version uint32, kv ...string) []byte {
	b := binary.BigEndian.AppendUint32(nil, version)
	for _, s := range kv {
		b = append(b, s...)
		b = append(b, 0)
	}
	return append(b, 0)
}

func FuzzParseStartup(f *testing.F) {
	f.Add(startupBody(ProtocolVersion30, "user", "alice", "database", "db"))
	f.Add(startupBody(ProtocolVersion32, "user", "alice", "_pq_.opt", "x", "application_name", ""))
	f.Add(binary.BigEndian.AppendUint32(nil, sslRequestCode))
	f.Add(binary.BigEndian.AppendUint32(nil, gssEncRequestCode))
	f.Add(AppendCancelRequest(nil, 42, []byte{1, 2, 3, 4})[4:])
	f.Add([]byte{0, 3, 0, 0, 'u', 's', 'e', 'r', 0, 'a', 0}) // no terminator

	f.Fuzz(func(t *testing.T, body []byte) {
		st, err := ParseStartup(body)
		if err != nil {
			return
		}
		switch st.Kind {
		case StartupMessageKind:
			// The last value's NUL, then the terminator.
			if !bytes.HasSuffix(body, []byte{0, 0}) {
				t.Fatalf("accepted a StartupMessage without its terminator: %q", body)
			}
			if st.Get("user") == "" {
				t.Fatal("accepted a StartupMessage without user")
			}
			// Encode what was decoded (options without their values) and
			// decode it again.
			kv := make([]string, 0, 2*len(st.Params)+2*len(st.UnsupportedOptions))
			for _, p := range st.Params {
				kv = append(kv, p.Name, p.Value)
			}
			for _, o := range st.UnsupportedOptions {
				kv = append(kv, o, "")
			}
			again, err := ParseStartup(startupBody(st.ProtocolVersion, kv...))
			if err != nil {
				t.Fatalf("re-encoded startup does not parse: %v", err)
			}
			if again.ProtocolVersion != st.ProtocolVersion ||
				!slices.Equal(again.Params, st.Params) ||
				!slices.Equal(again.UnsupportedOptions, st.UnsupportedOptions) {
				t.Fatalf("round trip changed the startup:\n%+v\n%+v", st, again)
			}
		case CancelRequestKind:
			if enc := AppendCancelRequest(nil, st.PID, st.Key)[4:]; !bytes.Equal(enc, body) {
				t.Fatalf("cancel request round trip: got %x, want %x", enc, body)
			}
		case SSLRequestKind, GSSENCRequestKind:
		default:
			t.Fatalf("unknown kind %d", st.Kind)
		}
	})
}

// chunkReader returns at most n bytes per Read, to exercise partial reads.
type chunkReader struct {
	r io.Reader
	n int
}

func (c *chunkReader) Read(p []byte) (int, error) {
	if len(p) > c.n {
		p = p[:c.n]
	}
	return c.r.Read(p)
}

func FuzzReader(f *testing.F) {
	var two []byte
	two = append(two, 'Q', 0, 0, 0, 13)
	two = append(two, "SELECT 1\x00"...)
	two = append(two, 'X', 0, 0, 0, 4)
	f.Add(two, uint16(100), uint8(0), false)
	f.Add(two, uint16(100), uint8(3), false)
	f.Add(two, uint16(8), uint8(0), false) // Query body over the limit
	startup := binary.BigEndian.AppendUint32(nil, uint32(len(startupBody(ProtocolVersion30, "user", "u"))+4))
	startup = append(startup, startupBody(ProtocolVersion30, "user", "u")...)
	f.Add(append(startup, two...), uint16(0), uint8(1), true)
	f.Add([]byte{'p', 0, 0, 0}, uint16(100), uint8(0), false)                 // truncated header
	f.Add([]byte{'p', 0, 0, 0, 9, 'a'}, uint16(100), uint8(0), false)         // truncated body
	f.Add([]byte{'p', 0x7f, 0xff, 0xff, 0xff}, uint16(0), uint8(0), false)    // oversize
	f.Add([]byte{'p', 0xff, 0xff, 0xff, 0xff}, uint16(0), uint8(0), false)    // negative
	f.Add([]byte{'p', 0, 0, 0, 3}, uint16(0), uint8(0), false)                // below 4
	f.Add(queryFrame(100<<10), uint16(0), uint8(0), false)                    // over the 64 KiB budget
	f.Add(queryFrame(40<<10), uint16(0), uint8(200), false)                   // charged, within the budget
	f.Add([]byte{'Q', 4, 0, 0, 0, 's', 'e', 'l'}, uint16(0), uint8(0), false) // claims 64 MiB, sends 3 bytes

	f.Fuzz(func(t *testing.T, data []byte, maxBody uint16, chunk uint8, startup bool) {
		var src io.Reader = bytes.NewReader(data)
		if chunk > 0 {
			src = &chunkReader{r: src, n: int(chunk)}
		}
		limit := int(maxBody)
		if limit == 0 {
			limit = DefaultMaxMessageSize
		}
		r := NewReader(src, int(maxBody))
		// Frames above 64 KiB exceed the budget (the buffer doubles from
		// keepBufferSize, 16 KiB, and only growth beyond it is charged).
		const budgetLimit = 64 << 10
		budget := NewMemoryBudget(budgetLimit)
		r.SetBudget(budget)
		defer func() {
			r.Release()
			if budget.Used() != 0 {
				t.Fatalf("%d bytes still charged after Release", budget.Used())
			}
		}()
		off := 0
		if startup {
			body, err := r.ReadStartup()
			if err != nil {
				return
			}
			if n := int(binary.BigEndian.Uint32(data)); n != len(body)+4 || n > maxStartupSize {
				t.Fatalf("startup length %d, body %d bytes", n, len(body))
			}
			if !bytes.Equal(body, data[4:4+len(body)]) {
				t.Fatal("startup body differs from the input")
			}
			off = 4 + len(body)
		}
		for {
			typ, raw, err := r.ReadMessage()
			if err != nil {
				var tooLarge *MessageTooLargeError
				var overBudget *BufferBudgetError
				switch {
				case errors.As(err, &overBudget):
					if overBudget.Size+5 <= budgetLimit || overBudget.Size > limit || overBudget.Limit != budgetLimit {
						t.Fatalf("%v for a body of %d bytes, limit %d", err, overBudget.Size, limit)
					}
				case errors.Is(err, io.EOF):
					if off != len(data) {
						t.Fatalf("io.EOF at offset %d of %d", off, len(data))
					}
				case errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, ErrInvalidLength):
				case errors.As(err, &tooLarge):
					if tooLarge.Size <= limit || tooLarge.Max != limit {
						t.Fatalf("%v with limit %d", err, limit)
					}
				default:
					t.Fatalf("unexpected error %v", err)
				}
				return
			}
			if len(raw) < 5 || raw[0] != typ {
				t.Fatalf("frame %x does not start with its type %q and length", raw, typ)
			}
			if n := int(binary.BigEndian.Uint32(raw[1:5])); n+1 != len(raw) {
				t.Fatalf("frame length header says %d, frame is %d bytes", n, len(raw))
			}
			if len(raw)-5 > limit {
				t.Fatalf("frame body of %d bytes exceeds the limit %d", len(raw)-5, limit)
			}
			if used := budget.Used(); used > budgetLimit {
				t.Fatalf("%d bytes charged, over the budget", used)
			}
			if !bytes.Equal(raw, data[off:off+len(raw)]) {
				t.Fatalf("frame at offset %d differs from the input", off)
			}
			off += len(raw)
		}
	})
}

// fuzzSCRAMPassword is the password of the secret FuzzSCRAM checks against.
const fuzzSCRAMPassword = "pencil"

// FuzzSCRAM feeds a SASLInitialResponse body and a client-final-message to
// the server side of SCRAM. Whatever the input, nothing may panic, every
// error must be a *Error, and the proof must be accepted exactly when it is
// the right one for the password.
func FuzzSCRAM(f *testing.F) {
	secret, err := ParseSecret("SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY=:wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dU=")
	if err != nil {
		f.Fatal(err)
	}
	const serverNonce = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
	salted := fuzzSaltedPassword(f)

	initial := func(data string) []byte {
		return mustEncode(&pgproto3.SASLInitialResponse{AuthMechanism: "SCRAM-SHA-256", Data: []byte(data)})[5:]
	}
	// The RFC 7677 exchange, which succeeds, and variations of it.
	f.Add(initial("n,,n=user,r=rOprNGfwEbeRWgbNEkqO"), []byte("c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="))
	f.Add(initial("n,,n=user,r=rOprNGfwEbeRWgbNEkqO"), []byte("c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVA="))
	f.Add(initial("y,,n=,r=abc,x=1"), []byte("c=eSws,r=abc"+serverNonce+",y=2,p="+base64.StdEncoding.EncodeToString(make([]byte, 32))))
	f.Add(initial("p=tls-server-end-point,,n=,r=abc"), []byte(""))
	f.Add([]byte("SCRAM-SHA-256\x00\xff\xff\xff\xff"), []byte("c=biws"))

	f.Fuzz(func(t *testing.T, initialBody, final []byte) {
		s := newSCRAMServer("user", secret)
		s.serverNonce = serverNonce

		clientFirst, err := decodeSASLInitialResponse(initialBody)
		if err != nil {
			mustBeWireError(t, err)
			return
		}
		if m, err := parseClientFirst(clientFirst); err == nil {
			if m.gs2Header+m.bare != string(clientFirst) || !strings.Contains(m.bare, "r="+m.nonce) {
				t.Fatalf("parseClientFirst(%q) = %+v", clientFirst, m)
			}
		}
		serverFirst, err := s.handleClientFirst(clientFirst)
		if err != nil {
			mustBeWireError(t, err)
			return
		}
		serverFinal, failure, err := s.handleClientFinal(final)
		if err != nil {
			mustBeWireError(t, err)
			return
		}
		// The message parsed: compute the right proof independently and
		// check that the server agrees.
		m, err := parseClientFinal(final)
		if err != nil {
			t.Fatalf("handleClientFinal accepted %q that parseClientFinal rejects: %v", final, err)
		}
		if !strings.HasPrefix(string(final), m.withoutProof+",p=") {
			t.Fatalf("parseClientFinal(%q): without-proof %q is not a prefix", final, m.withoutProof)
		}
		authMessage := s.clientFirstBare + "," + string(serverFirst) + "," + m.withoutProof
		wantProof, wantFinal := fuzzProof(salted, authMessage)
		if right := bytes.Equal(m.proof, wantProof); right != (failure == nil) {
			t.Fatalf("right proof = %v, but failure = %v", right, failure)
		}
		if failure == nil && string(serverFinal) != wantFinal {
			t.Fatalf("server-final = %q, want %q", serverFinal, wantFinal)
		}
	})
}

func mustBeWireError(t *testing.T, err error) {
	t.Helper()
	var we *Error
	if !errors.As(err, &we) || we.Severity != "FATAL" || we.Code == "" || we.Message == "" {
		t.Fatalf("error %v (%T) is not a FATAL *wire.Error", err, err)
	}
}

// fuzzSaltedPassword is SaltedPassword for fuzzSCRAMPassword and the RFC
// 7677 salt, computed with Python's hashlib.pbkdf2_hmac.
func fuzzSaltedPassword(tb testing.TB) []byte {
	b, err := base64.StdEncoding.DecodeString("xKSVEDI6tPlSysH6mUQZOeeOp01r6B3fcJbodRPcYV0=")
	if err != nil {
		tb.Fatal(err)
	}
	return b
}

// fuzzProof returns the ClientProof and server-final-message for
// authMessage (RFC 5802 section 3).
func fuzzProof(salted []byte, authMessage string) (proof []byte, serverFinal string) {
	mac := func(key []byte, msg string) []byte {
		m := hmac.New(sha256.New, key)
		m.Write([]byte(msg))
		return m.Sum(nil)
	}
	clientKey := mac(salted, "Client Key")
	storedKey := sha256.Sum256(clientKey)
	sig := mac(storedKey[:], authMessage)
	proof = make([]byte, len(sig))
	for i := range sig {
		proof[i] = clientKey[i] ^ sig[i]
	}
	return proof, "v=" + base64.StdEncoding.EncodeToString(mac(mac(salted, "Server Key"), authMessage))
}
