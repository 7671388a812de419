package wire

import (
	"bytes"
	"errors"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"
)

// TestSCRAMKeysClient runs the key-based SCRAM client against the proxy's
// own SCRAM server: the ClientKey recovered from one client's proof is
// enough to pass a second exchange, the server's signature is checked,
// and a verifier with another salt is refused with 28P01.
func TestSCRAMKeysClient(t *testing.T) {
	salt := []byte("0123456789abcdef")
	secret := Secret{kind: SecretSCRAM, scram: deriveSCRAM("correct horse", salt, 4096)}
	clientKey, _ := scramClientServerKeys("correct horse", salt, 4096)
	keys := &scramLogin{iterations: 4096, salt: salt, clientKey: clientKey, serverKey: secret.scram.keys[0].serverKey}

	exchange := func(keys *scramLogin, srv *scramServer) (serverFinal string, err error) {
		c := newSCRAMClient(keys)
		first, err := srv.handleClientFirst([]byte(c.clientFirst()))
		if err != nil {
			return "", err
		}
		final, err := c.handleServerFirst(string(first))
		if err != nil {
			return "", err
		}
		sf, failure, err := srv.handleClientFinal([]byte(final))
		if err != nil || failure != nil {
			return "", errors.Join(err, failure)
		}
		return string(sf), c.checkServerFinal(string(sf))
	}

	srv := newSCRAMServer("alice", secret)
	if _, err := exchange(keys, srv); err != nil {
		t.Fatalf("exchange with the right keys: %v", err)
	}
	if !bytes.Equal(srv.clientKey, clientKey) {
		t.Fatal("the server did not recover the ClientKey")
	}

	// A server that does not know the verifier cannot forge the final
	// message.
	c := newSCRAMClient(keys)
	srv = newSCRAMServer("alice", secret)
	first, _ := srv.handleClientFirst([]byte(c.clientFirst()))
	if _, err := c.handleServerFirst(string(first)); err != nil {
		t.Fatal(err)
	}
	if err := c.checkServerFinal("v=" + strings.Repeat("A", 44)); err == nil {
		t.Error("a forged server signature was accepted")
	}

	// The server's verifier has another salt (password changed).
	other := Secret{kind: SecretSCRAM, scram: deriveSCRAM("correct horse", []byte("fedcba9876543210"), 4096)}
	_, err := exchange(keys, newSCRAMServer("alice", other))
	var pe *pgconn.PgError
	if !errors.As(err, &pe) || pe.Code != CodeInvalidPassword {
		t.Errorf("other salt: want 28P01, got %v", err)
	}

	// Nothing secret in the printed form.
	l := &ServerLogin{scram: keys}
	if s := l.String(); s != "ServerLogin(SCRAM keys)" {
		t.Errorf("String() = %q", s)
	}
}
