package pooler

import (
	"testing"

	"github.com/pgaudit-proxy/pgaudit/wire"
)

// TestTrustAdmitsOnlyListedUsers: with auth_type trust and a users file, a
// user missing from the file is refused with Postgres's own error for a
// missing role, and nothing reaches the server. (auth_query and the SCRAM
// pass-through are tested end to end, from a config file, in
// cmd/pgaudit's TestAuthQuerySCRAMPassThrough, on a cluster of their own
// that asks for passwords.)
func TestTrustAdmitsOnlyListedUsers(t *testing.T) {
	p := testProxy(t, func(c *Config) {
		c.AuthType = "trust"
		c.Users = wire.NewUsers(map[string]wire.Secret{"postgres": {}})
	})
	if err := connectErr(t, proxyDSN(p, "", "")); err != nil {
		t.Fatalf("listed user: %v", err)
	}
	// The role exists in Postgres, but not in the users file.
	setupAuthRoles(t)
	for _, user := range []string{"nosuchrole", plainUser} {
		err := connectErr(t, userDSN(p, user, "", ""))
		wantPgError(t, err, "FATAL", "28000", `role "`+user+`" does not exist`)
	}
	for _, st := range p.PoolStats() {
		if st.User != "postgres" {
			t.Errorf("a pool was created for an unlisted user: %+v", st)
		}
	}
}
