package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pgaudit-proxy/pgaudit/pooler"
	"github.com/pgaudit-proxy/pgaudit/wire"
)

func TestParseByteSize(t *testing.T) {
	for in, want := range map[string]int64{
		"268435456": 256 << 20, "256MB": 256 << 20, "256 MiB": 256 << 20, "64kB": 64 << 10,
		"1GB": 1 << 30, "2g": 2 << 30, "1TB": 1 << 40, "100B": 100, " 7 mb ": 7 << 20,
	} {
		got, err := parseByteSize(in)
		if err != nil || got != want {
			t.Errorf("parseByteSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "MB", "12XB", "-1MB", "1.5GB", "99999999999999TB"} {
		if got, err := parseByteSize(in); err == nil {
			t.Errorf("parseByteSize(%q) = %d, want an error", in, got)
		}
	}
}

// loadConfig loads a [pgaudit] section (plus a database) as `pgaudit proxy
// --config` would.
func loadConfig(t *testing.T, section string) (*settings, error) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "pgaudit.toml")
	text := "[pgaudit]\n" + section + "\n[databases.app]\nhost = \"127.0.0.1\"\nport = 5432\n"
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	return loadSettings(proxyFlags{configPath: path})
}

func TestClientLimitSettings(t *testing.T) {
	st, err := loadConfig(t, "")
	if err != nil {
		t.Fatal(err)
	}
	c := st.proxy
	if c.MaxLoginClients != pooler.DefaultMaxLoginClients || c.ClientLoginTimeout != pooler.DefaultClientLoginTimeout ||
		c.ClientBufferBudget != wire.DefaultClientBufferBudget || c.MaxMessageSize != wire.DefaultMaxMessageSize {
		t.Errorf("defaults: max_login_clients %d, client_login_timeout %v, client_buffer_budget %d, max_message_size %d",
			c.MaxLoginClients, c.ClientLoginTimeout, c.ClientBufferBudget, c.MaxMessageSize)
	}
	st, err = loadConfig(t, "max_login_clients = 50\nclient_login_timeout = 5\nclient_buffer_budget = \"1GB\"")
	if err != nil {
		t.Fatal(err)
	}
	if c := st.proxy; c.MaxLoginClients != 50 || c.ClientLoginTimeout != 5*time.Second || c.ClientBufferBudget != 1<<30 {
		t.Errorf("set: max_login_clients %d, client_login_timeout %v, client_buffer_budget %d", c.MaxLoginClients, c.ClientLoginTimeout, c.ClientBufferBudget)
	}
	st, err = loadConfig(t, "client_buffer_budget = 134217728\nmax_message_size = 1048576")
	if err != nil || st.proxy.ClientBufferBudget != 128<<20 || st.proxy.MaxMessageSize != 1<<20 {
		t.Errorf("numeric budget: %v %+v", err, st)
	}
	for section, want := range map[string]string{
		"client_buffer_budget = \"32MB\"": "client_buffer_budget (32 MiB) must be at least max_message_size (64 MiB)",
		"client_buffer_budget = \"lots\"": "invalid size",
		"max_login_clients = -1":          "max_login_clients must not be negative",
		"client_buffer_budget = [1]":      "invalid size",
	} {
		if _, err := loadConfig(t, section); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: got %v, want an error with %q", section, err, want)
		}
	}
}

// TestConfigUnknownKey: proxy rejects a key it does not know in any section,
// through the same readConfigFile that lint uses (TestLint checks lint).
func TestConfigUnknownKey(t *testing.T) {
	for _, section := range []string{"max_client_conns = 5", "pool_mod = \"session\"", "[rules.n-plus-one]\nmin_repeat = 3"} {
		_, err := loadConfig(t, section)
		if err == nil || !strings.Contains(err.Error(), "unknown settings") {
			t.Errorf("%q: %v", section, err)
		}
	}
}

// TestResultSampleEverySetting: [pgaudit] result_sample_every reaches the
// proxy's config (0 = the pooler's default, negative = off).
func TestResultSampleEverySetting(t *testing.T) {
	for in, want := range map[string]int{"": 0, "result_sample_every = 4": 4, "result_sample_every = -1": -1} {
		st, err := loadConfig(t, in)
		if err != nil {
			t.Fatal(err)
		}
		if st.proxy.ResultSampleEvery != want {
			t.Errorf("%q: result_sample_every %d, want %d", in, st.proxy.ResultSampleEvery, want)
		}
	}
}

// TestSoReuseportSetting: [pgaudit] so_reuseport reaches the proxy's config
// (default off).
func TestSoReuseportSetting(t *testing.T) {
	for in, want := range map[string]bool{"": false, "so_reuseport = true": true} {
		st, err := loadConfig(t, in)
		if err != nil {
			t.Fatal(err)
		}
		if st.proxy.SoReuseport != want {
			t.Errorf("%q: so_reuseport %v, want %v", in, st.proxy.SoReuseport, want)
		}
	}
}

// TestPeerSettings: peer_id and [peers] reach the proxy's config and are
// checked.
func TestPeerSettings(t *testing.T) {
	st, err := loadConfig(t, "peer_id = 2\npeer_listen = \"127.0.0.1:7002\"\n[peers]\n1 = \"127.0.0.1:7001\"\n3 = \"/run/pgaudit/p3.sock\"")
	if err != nil {
		t.Fatal(err)
	}
	if c := st.proxy; c.PeerID != 2 || c.PeerListen != "127.0.0.1:7002" || len(c.Peers) != 2 || c.Peers[1] != "127.0.0.1:7001" || c.Peers[3] != "/run/pgaudit/p3.sock" {
		t.Errorf("peer_id %d, peers %v", c.PeerID, c.Peers)
	}
	for section, want := range map[string]string{
		"peer_id = 16384":                   "peer_id 16384 out of range",
		"peer_listen = \"127.0.0.1:7002\"":  "peer_listen is set but peer_id is 0",
		"[peers]\n1 = \"127.0.0.1:7001\"":   "peer_id is 0",
		"peer_id = 1\n[peers]\nx = \"a:1\"": "[peers] key \"x\"",
		"peer_id = 1\n[peers]\n0 = \"a:1\"": "[peers] id 0 out of range",
	} {
		if _, err := loadConfig(t, section); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: got %v, want an error with %q", section, err, want)
		}
	}
}
