package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgerrcode"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/rs/zerolog"

	"github.com/pgaudit-proxy/pgaudit/admin"
	"github.com/pgaudit-proxy/pgaudit/internal/pgtest"
	"github.com/pgaudit-proxy/pgaudit/pooler"
)

func strPtr(s string) *string { return &s }

func writeFile(t *testing.T, name, text string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestQuickStartUserMustBeUpstreamUser: in the quick start (--upstream, no
// users file) a client asking for another role is refused with exactly
// the error Postgres gives for a missing role, instead of getting a
// session as the DSN's user (here a superuser).
func TestQuickStartUserMustBeUpstreamUser(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c, err := pgtest.Start(ctx, pgtest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Stop()
	st, err := loadSettings(proxyFlags{listen: "127.0.0.1:0", upstream: c.DSN("postgres"), adminListen: strPtr("")})
	if err != nil {
		t.Fatal(err)
	}
	p := pooler.New(st.proxy, nil, zerolog.Nop())
	if err := p.Listen(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { defer close(done); _ = p.Serve(ctx) }()
	defer func() { _ = p.Close(); <-done }()

	connect := func(addr, user string) error {
		conn, err := pgconn.Connect(ctx, fmt.Sprintf("postgres://%s@%s/postgres?sslmode=disable", user, addr))
		if err != nil {
			return err
		}
		defer conn.Close(ctx)
		_, err = conn.Exec(ctx, "select 1").ReadAll()
		return err
	}
	if err := connect(p.Addr().String(), "postgres"); err != nil {
		t.Fatalf("the upstream user: %v", err)
	}
	viaProxy := connect(p.Addr().String(), "nosuchrole")
	direct := connect(fmt.Sprintf("127.0.0.1:%d", c.Port), "nosuchrole")
	var pp, pd *pgconn.PgError
	if !errors.As(viaProxy, &pp) || !errors.As(direct, &pd) {
		t.Fatalf("want server errors, got proxy %v, direct %v", viaProxy, direct)
	}
	if pp.Severity != pd.Severity || pp.Code != pd.Code || pp.Message != pd.Message {
		t.Errorf("through the proxy: %s %s %q; Postgres: %s %s %q", pp.Severity, pp.Code, pp.Message, pd.Severity, pd.Code, pd.Message)
	}
	if pp.Code != pgerrcode.InvalidAuthorizationSpecification || pp.Message != `role "nosuchrole" does not exist` {
		t.Errorf("got %s %q", pp.Code, pp.Message)
	}
	for _, ps := range p.PoolStats() {
		if ps.User != "postgres" {
			t.Errorf("pool for %q", ps.User)
		}
	}
}

// TestTrustOnNetworkNeedsOptIn: trust on a non-loopback listen address is
// refused, with or without a users file, unless the loudly named opt-in
// is set.
func TestTrustOnNetworkNeedsOptIn(t *testing.T) {
	users := writeFile(t, "users.txt", `"app" ""`+"\n")
	cfgFile := func(extra string) string {
		return writeFile(t, "pgaudit.toml", fmt.Sprintf(`[pgaudit]
listen = "0.0.0.0:6432"
auth_type = "trust"
auth_file = %q
%s
[databases.app]
host = "127.0.0.1"
`, users, extra))
	}
	cases := []struct {
		name string
		fl   proxyFlags
		ok   bool
	}{
		{"quick start", proxyFlags{listen: "0.0.0.0:6432", upstream: "postgres://app@127.0.0.1/app"}, false},
		{"quick start, users file", proxyFlags{listen: "0.0.0.0:6432", upstream: "postgres://app@127.0.0.1/app", authFile: users, authType: "trust"}, false},
		{"config, users file", proxyFlags{configPath: cfgFile("")}, false},
		{"config, users file, all interfaces", proxyFlags{configPath: cfgFile(""), listen: ":6432"}, false},
		{"config, opt-in", proxyFlags{configPath: cfgFile("dangerously_allow_trust_on_network = true")}, true},
		{"flag opt-in", proxyFlags{listen: "0.0.0.0:6432", upstream: "postgres://app@127.0.0.1/app", authFile: users, authType: "trust", allowTrustOnNetwork: true}, true},
		{"quick start, flag opt-in", proxyFlags{listen: "0.0.0.0:6432", upstream: "postgres://app@127.0.0.1/app", allowTrustOnNetwork: true}, true},
		{"loopback", proxyFlags{listen: "127.0.0.1:6432", upstream: "postgres://app@127.0.0.1/app"}, true},
		{"network with scram", proxyFlags{listen: "0.0.0.0:6432", upstream: "postgres://app@127.0.0.1/app", authFile: users}, true},
	}
	for _, tc := range cases {
		tc.fl.adminListen = strPtr("")
		st, err := loadSettings(tc.fl)
		if !tc.ok {
			if err == nil {
				t.Errorf("%s: accepted auth_type %s on %s", tc.name, st.proxy.AuthType, st.proxy.Listen)
			} else if !strings.Contains(err.Error(), "trust") {
				t.Errorf("%s: error %q does not name trust", tc.name, err)
			}
			continue
		}
		if err != nil {
			t.Errorf("%s: %v", tc.name, err)
			continue
		}
		if st.proxy.AuthType == "trust" && !admin.IsLoopbackAddr(st.proxy.Listen) && !strings.Contains(strings.Join(st.warnings, "\n"), "DANGER") {
			t.Errorf("%s: no loud warning for trust on %s", tc.name, st.proxy.Listen)
		}
	}
}

// TestSecretsOutOfArgv: the upstream password can come from
// PGAUDIT_UPSTREAM_PASSWORD or a file; a password in the --upstream DSN
// draws a warning; admin credentials are required off loopback; SHOW
// CONFIG shows no secret.
func TestSecretsOutOfArgv(t *testing.T) {
	base := proxyFlags{listen: "127.0.0.1:6432", upstream: "postgres://app@127.0.0.1/app", adminListen: strPtr("")}
	upstreamPW := func(st *settings) string { return st.proxy.Databases["app"].Upstream.Password }

	t.Setenv("PGAUDIT_UPSTREAM_PASSWORD", "from-env")
	st, err := loadSettings(base)
	if err != nil {
		t.Fatal(err)
	}
	if upstreamPW(st) != "from-env" || len(st.warnings) != 0 {
		t.Errorf("env: password %q, warnings %q", upstreamPW(st), st.warnings)
	}
	fl := base
	fl.upstreamPasswordFile = writeFile(t, "pw", "from-file\n")
	if st, err = loadSettings(fl); err != nil || upstreamPW(st) != "from-file" {
		t.Errorf("file: %q %v", upstreamPW(st), err)
	}
	t.Setenv("PGAUDIT_UPSTREAM_PASSWORD", "")
	fl = base
	fl.upstream = "postgres://app:in-argv@127.0.0.1/app"
	if st, err = loadSettings(fl); err != nil || upstreamPW(st) != "in-argv" || !strings.Contains(strings.Join(st.warnings, "\n"), "ps") {
		t.Errorf("argv: %q %v, warnings %q", upstreamPW(st), err, st.warnings)
	}

	dbCfg := writeFile(t, "db.toml", fmt.Sprintf("[databases.app]\nhost = \"127.0.0.1\"\nuser = \"app\"\npassword_file = %q\n", writeFile(t, "db.pw", "db-file-pw\n")))
	if st, err = loadSettings(proxyFlags{configPath: dbCfg, adminListen: strPtr("")}); err != nil || upstreamPW(st) != "db-file-pw" {
		t.Errorf("[databases] password_file: %v", err)
	}

	adminCfg := func(extra string) proxyFlags {
		fl := base
		fl.adminListen = nil
		fl.configPath = writeFile(t, "pgaudit.toml", "[pgaudit]\nadmin_listen = \"0.0.0.0:9930\"\n"+extra)
		return fl
	}
	if _, err := loadSettings(adminCfg("")); err == nil || !strings.Contains(err.Error(), "admin_token") {
		t.Errorf("non-loopback admin_listen without credentials: %v", err)
	}
	if _, err := loadSettings(adminCfg("admin_user = \"ops\"\n")); err == nil {
		t.Error("admin_user without admin_password accepted")
	}
	st, err = loadSettings(adminCfg("admin_token = \"tok-secret\"\nadmin_hosts = [\"pgaudit.internal\"]\nauth_user = \"pgaudit_auth\"\nauth_password = \"auth-secret\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	if st.httpAuth.Token != "tok-secret" || len(st.httpAuth.Hosts) != 1 {
		t.Errorf("httpAuth %+v", st.httpAuth.Hosts)
	}
	st.proxy.Databases["app"].Upstream.Password = "pw-secret"
	seen := map[string]string{}
	for _, row := range adminSettingRows(st, adminOptions{Listen: st.adminListen, HTTPAuth: st.httpAuth}) {
		seen[row.Key] = row.Value
		if strings.Contains(row.Value, "secret") {
			t.Errorf("SHOW CONFIG %s = %q", row.Key, row.Value)
		}
	}
	if seen["auth_user"] != "pgaudit_auth" || seen["admin_http_auth"] != "bearer" {
		t.Errorf("SHOW CONFIG auth_user %q, admin_http_auth %q", seen["auth_user"], seen["admin_http_auth"])
	}
}

// TestAuthQueryConfig: auth_user turns auth_query on with PgBouncer's
// default query and scram-sha-256, with its password from a file, the
// environment or the config, and needs no users file.
func TestAuthQueryConfig(t *testing.T) {
	cfg := func(extra string) proxyFlags {
		return proxyFlags{adminListen: strPtr(""), configPath: writeFile(t, "pgaudit.toml",
			"[pgaudit]\nlisten = \"0.0.0.0:6432\"\nauth_user = \"pgaudit_auth\"\n"+extra+"[databases.app]\nhost = \"127.0.0.1\"\n")}
	}
	st, err := loadSettings(cfg("auth_password = \"from-config\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	aq := st.proxy.AuthQuery
	if aq == nil || aq.User != "pgaudit_auth" || aq.Password != "from-config" || aq.Query != pooler.DefaultAuthQuery || st.proxy.AuthType != "scram-sha-256" || st.proxy.Users != nil {
		t.Fatalf("auth_query settings: %+v, auth_type %s", aq, st.proxy.AuthType)
	}
	t.Setenv("PGAUDIT_AUTH_PASSWORD", "from-env")
	if st, err = loadSettings(cfg("auth_password = \"from-config\"\n")); err != nil || st.proxy.AuthQuery.Password != "from-env" {
		t.Errorf("env: %v", err)
	}
	pw := writeFile(t, "auth.pw", "from-file\n")
	if st, err = loadSettings(cfg(fmt.Sprintf("auth_password_file = %q\n", pw))); err != nil || st.proxy.AuthQuery.Password != "from-file" {
		t.Errorf("file: %v", err)
	}
	if _, err := loadSettings(cfg("auth_dbname = \"nosuchdb\"\n")); err == nil {
		t.Error("auth_dbname naming no database was accepted")
	}
	if _, err := loadSettings(proxyFlags{adminListen: strPtr(""), configPath: writeFile(t, "x.toml", "[pgaudit]\nauth_query = \"select 1\"\n[databases.app]\n")}); err == nil {
		t.Error("auth_query without auth_user was accepted")
	}
}
