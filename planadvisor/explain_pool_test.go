package planadvisor

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"
)

// TestExplainPoolIgnoresLibpqDefaults: the pgxpool behind an Explainer
// connects with the Explainer's connection settings only. pgxpool's own
// ParseConfig fills a ConnConfig from PG* variables, .pgpass and the
// operating-system user; none of that may reach a per-client connection
// (docs/security-explain.md, "Never implicit libpq defaults"), and a DSN
// keeps the user, host and database it names.
func TestExplainPoolIgnoresLibpqDefaults(t *testing.T) {
	given, err := pgconn.ParseConfig("host=127.0.0.1 port=5 dbname=app user=mallory sslmode=disable")
	if err != nil {
		t.Fatal(err)
	}
	given.Password = "" // as cmd/pgaudit builds a per-client login without a plain-text secret

	passfile := filepath.Join(t.TempDir(), "pgpass")
	if err := os.WriteFile(passfile, []byte("*:*:*:*:pgpass-secret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for k, v := range map[string]string{
		"PGUSER": "postgres", "PGPASSWORD": "os-secret", "PGPASSFILE": passfile,
		"PGHOST": "elsewhere.invalid", "PGPORT": "1", "PGDATABASE": "postgres",
		"PGOPTIONS": "-c role=postgres", "PGAPPNAME": "not-the-explainer",
	} {
		t.Setenv(k, v)
	}

	cases := []struct {
		name     string
		cfg      ExplainConfig
		password string // "-" when the case does not pin it
		options  bool   // PGOPTIONS may appear (a DSN follows libpq for what it leaves out)
	}{
		{name: "Conn", cfg: ExplainConfig{Conn: given, Role: "mallory", MaxConns: 3, CloseIdle: true}, password: ""},
		{name: "DSN", cfg: ExplainConfig{DSN: "postgres://mallory@127.0.0.1:5/app?sslmode=disable&application_name=pgaudit-explain", Role: "mallory", MaxConns: 3}, password: "-", options: true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e, err := NewExplainer(c.cfg)
			if err != nil {
				t.Fatal(err)
			}
			defer e.Close()
			pc, err := e.pool.poolConfig()
			if err != nil {
				t.Fatal(err)
			}
			cc := pc.ConnConfig
			if cc.User != "mallory" || cc.Host != "127.0.0.1" || cc.Port != 5 || cc.Database != "app" {
				t.Errorf("connects as %s@%s:%d/%s, want mallory@127.0.0.1:5/app", cc.User, cc.Host, cc.Port, cc.Database)
			}
			if c.password != "-" && cc.Password != c.password {
				t.Errorf("password %q, want %q (never PGPASSWORD or .pgpass)", cc.Password, c.password)
			}
			if o, ok := cc.RuntimeParams["options"]; ok && !c.options {
				t.Errorf("runtime options %q from PGOPTIONS", o)
			}
			if got := cc.RuntimeParams["application_name"]; got != ExplainApplicationName {
				t.Errorf("application_name %q, want %q", got, ExplainApplicationName)
			}
			if got := cc.RuntimeParams["default_transaction_read_only"]; got != "on" {
				t.Errorf("default_transaction_read_only %q, want on", got)
			}
			if pc.MaxConns != 3 || pc.MinConns != 0 || pc.MinIdleConns != 0 {
				t.Errorf("pool sizes max %d min %d min idle %d, want 3 0 0", pc.MaxConns, pc.MinConns, pc.MinIdleConns)
			}
			if pc.AfterConnect == nil {
				t.Error("no role check on new connections")
			}
		})
	}
}
