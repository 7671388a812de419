package main

import (
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pgaudit-proxy/pgaudit/pooler"
)

// The relay of proxies that tests start without choosing one: go test
// ./cmd/pgaudit -relay=goroutine runs the suite on the goroutine relay
// (the event relay is the default).
func init() {
	testRelay = flag.String("relay", "", "relay of the proxies tests start: goroutine or event")
}

// TestRelaySettings: relay and relay_park_after from the file, --relay
// over the file, and the errors for bad values.
func TestRelaySettings(t *testing.T) {
	def, err := pooler.ParseRelayMode(*testRelay) // event unless -relay
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		file, flag string
		relay      pooler.RelayMode
		parkAfter  time.Duration
		err        string
	}{
		{file: "", relay: def, parkAfter: pooler.DefaultRelayParkAfter},
		{file: `relay = "event"`, relay: pooler.RelayEvent, parkAfter: pooler.DefaultRelayParkAfter},
		{file: "relay = \"event\"\nrelay_park_after = \"250ms\"", relay: pooler.RelayEvent, parkAfter: 250 * time.Millisecond},
		{file: `relay = "event"`, flag: "goroutine", relay: pooler.RelayGoroutine, parkAfter: pooler.DefaultRelayParkAfter},
		{file: "", flag: "event", relay: pooler.RelayEvent, parkAfter: pooler.DefaultRelayParkAfter},
		{file: `relay = "epoll"`, err: `invalid relay "epoll"`},
		{file: "", flag: "threads", err: `invalid relay "threads"`},
		{file: `relay_park_after = "0s"`, err: "relay_park_after must be positive"},
	} {
		path := filepath.Join(t.TempDir(), "pgaudit.toml")
		text := "[pgaudit]\n" + tc.file + "\n[databases.app]\nhost = \"127.0.0.1\"\nport = 5432\n"
		if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
		st, err := loadSettings(proxyFlags{configPath: path, relay: tc.flag})
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%q --relay=%q: got %v, want an error with %q", tc.file, tc.flag, err, tc.err)
			}
			continue
		}
		if err != nil {
			t.Errorf("%q --relay=%q: %v", tc.file, tc.flag, err)
			continue
		}
		if st.proxy.Relay != tc.relay || st.proxy.RelayParkAfter != tc.parkAfter {
			t.Errorf("%q --relay=%q: relay %q park_after %v, want %q %v", tc.file, tc.flag, st.proxy.Relay, st.proxy.RelayParkAfter, tc.relay, tc.parkAfter)
		}
	}
}
