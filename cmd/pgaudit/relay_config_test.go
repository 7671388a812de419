package main

import (
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/pgaudit-proxy/pgaudit/pooler"
)

// writeRelayConfig writes a config file with the [pgaudit] lines text and
// one database to path.
func writeRelayConfig(t *testing.T, path, text string) {
	t.Helper()
	body := "[pgaudit]\n" + text + "\n[databases.app]\nhost = \"127.0.0.1\"\nport = 5432\n"
	if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestRelaySettings: relay_park_after from the file; relay = "event" (the
// one relay's old name) and --relay event still load and change nothing;
// relay = "goroutine" (removed) and unknown relays are refused with an
// error that names the setting and, for goroutine, says it was removed.
func TestRelaySettings(t *testing.T) {
	const removed = "the goroutine relay was removed; there is one relay since this version"
	for _, tc := range []struct {
		file, flag string
		parkAfter  time.Duration
		err        []string // substrings the error must contain; nil: loads
	}{
		{file: "", parkAfter: pooler.DefaultRelayParkAfter},
		{file: `relay = "event"`, parkAfter: pooler.DefaultRelayParkAfter},
		{file: "relay = \"event\"\nrelay_park_after = \"250ms\"", parkAfter: 250 * time.Millisecond},
		{file: "", flag: "event", parkAfter: pooler.DefaultRelayParkAfter},
		{file: `relay = "goroutine"`, err: []string{`[pgaudit] relay = "goroutine"`, removed, "docs/relay.md"}},
		{file: "", flag: "goroutine", err: []string{`--relay "goroutine"`, removed}},
		// The file's removed value is refused even when a flag says event.
		{file: `relay = "goroutine"`, flag: "event", err: []string{`[pgaudit] relay = "goroutine"`, removed}},
		{file: `relay = "epoll"`, err: []string{`[pgaudit] relay = "epoll": invalid relay`, `the only relay is "event"`}},
		{file: "", flag: "threads", err: []string{`--relay "threads": invalid relay`}},
		{file: `relay_park_after = "0s"`, err: []string{"relay_park_after must be positive"}},
	} {
		path := filepath.Join(t.TempDir(), "pgaudit.toml")
		writeRelayConfig(t, path, tc.file)
		st, err := loadSettings(proxyFlags{configPath: path, relay: tc.flag})
		if tc.err != nil {
			if err == nil {
				t.Errorf("%q --relay=%q: loaded, want an error", tc.file, tc.flag)
				continue
			}
			for _, want := range tc.err {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("%q --relay=%q: error %q lacks %q", tc.file, tc.flag, err, want)
				}
			}
			continue
		}
		if err != nil {
			t.Errorf("%q --relay=%q: %v", tc.file, tc.flag, err)
			continue
		}
		if st.proxy.RelayParkAfter != tc.parkAfter {
			t.Errorf("%q --relay=%q: park_after %v, want %v", tc.file, tc.flag, st.proxy.RelayParkAfter, tc.parkAfter)
		}
	}
}

// TestRelayGoroutineRefusedOnReload: a RELOAD (or SIGHUP) that finds
// relay = "goroutine" in the file fails with the removal error and keeps
// the running settings; relay = "event" reloads.
func TestRelayGoroutineRefusedOnReload(t *testing.T) {
	path := filepath.Join(t.TempDir(), "pgaudit.toml")
	writeRelayConfig(t, path, `relay = "event"`)
	load := func() (*settings, error) { return loadSettings(proxyFlags{configPath: path}) }
	st, err := load()
	if err != nil {
		t.Fatal(err)
	}
	var cur atomic.Pointer[settings]
	cur.Store(st)
	p := pooler.New(st.proxy, nil, zerolog.Nop()) // never served: Reload only stores the settings
	t.Cleanup(func() { _ = p.Close() })

	writeRelayConfig(t, path, `relay = "goroutine"`)
	err = reloadProxy(p, &cur, nil, load)
	if err == nil || !strings.Contains(err.Error(), "the goroutine relay was removed") {
		t.Fatalf("reload with relay = \"goroutine\": %v, want the removal error", err)
	}
	if cur.Load() != st {
		t.Fatal("a refused reload replaced the settings")
	}

	writeRelayConfig(t, path, "relay = \"event\"\nmax_client_conn = 77")
	if err := reloadProxy(p, &cur, nil, load); err != nil {
		t.Fatalf("reload with relay = \"event\": %v", err)
	}
	if got := cur.Load().proxy.MaxClientConn; got != 77 {
		t.Fatalf("after the reload max_client_conn is %d, want 77", got)
	}
}
