package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pgaudit-proxy/pgaudit/fleet"
)

// TestFleetSettings: fleet_peers and the peers' credentials and timeout,
// from the file and the environment; bad URLs are refused.
func TestFleetSettings(t *testing.T) {
	tokenFile := filepath.Join(t.TempDir(), "fleet-token")
	if err := os.WriteFile(tokenFile, []byte("from-file\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PGAUDIT_ADMIN_TOKEN", "")
	t.Setenv("PGAUDIT_FLEET_TOKEN", "")
	cases := []struct {
		name, section, env string
		want               fleetSettings
		err                string
	}{
		{name: "unset", want: fleetSettings{}},
		{name: "peers, own admin token", section: `fleet_peers = ["http://b:9930", "https://c.example:9930/"]` + "\nadmin_token = \"adm\"",
			want: fleetSettings{peers: []string{"http://b:9930", "https://c.example:9930/"}, auth: fleet.Auth{Token: "adm"}}},
		{name: "own basic auth", section: `fleet_peers = ["http://b:9930"]` + "\nadmin_user = \"u\"\nadmin_password = \"p\"",
			want: fleetSettings{peers: []string{"http://b:9930"}, auth: fleet.Auth{User: "u", Password: "p"}}},
		{name: "token file and timeout", section: `fleet_peers = ["http://b:9930"]` + "\nadmin_token = \"adm\"\nfleet_token_file = \"" + tokenFile + "\"\nfleet_timeout = \"500ms\"",
			want: fleetSettings{peers: []string{"http://b:9930"}, auth: fleet.Auth{Token: "from-file"}, timeout: 500 * time.Millisecond}},
		{name: "token from env", section: `fleet_peers = ["http://b:9930"]`, env: "from-env",
			want: fleetSettings{peers: []string{"http://b:9930"}, auth: fleet.Auth{Token: "from-env"}}},
		{name: "not http", section: `fleet_peers = ["b:9930"]`, err: "want an http:// or https:// URL"},
		{name: "credentials in URL", section: `fleet_peers = ["http://u:secret@b:9930"]`, err: "credentials in the URL"},
		{name: "no host", section: `fleet_peers = ["http://"]`, err: "no host"},
		{name: "bad timeout", section: `fleet_timeout = "-1s"`, err: "fleet_timeout"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv("PGAUDIT_FLEET_TOKEN", tc.env)
			st, err := loadConfig(t, tc.section)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("error %v, want one containing %q", err, tc.err)
				}
				if strings.Contains(err.Error(), "secret") {
					t.Errorf("error %q shows the URL's password", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			got := st.fleet
			if strings.Join(got.peers, ",") != strings.Join(tc.want.peers, ",") || got.auth != tc.want.auth || got.timeout != tc.want.timeout {
				t.Errorf("fleet settings %+v, want %+v", got, tc.want)
			}
		})
	}
}
