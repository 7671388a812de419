package main

import (
	"fmt"
	"net/url"
	"time"

	"github.com/pgaudit-proxy/pgaudit/fleet"
)

// fleetFile holds the [pgaudit] keys of the fleet view.
type fleetFile struct {
	// FleetPeers are other pgaudit instances' admin URLs
	// ("http://host:9930"); the dashboard merges them with this one.
	FleetPeers []string `toml:"fleet_peers"`
	// FleetTokenFile holds the bearer token sent to the peers (else
	// $PGAUDIT_FLEET_TOKEN, else this instance's own admin credentials).
	FleetTokenFile string `toml:"fleet_token_file"`
	// FleetTimeout bounds each fetch from a peer (default 2s).
	FleetTimeout *Duration `toml:"fleet_timeout"`
}

// fleetSettings is the applied fleet view configuration.
type fleetSettings struct {
	peers   []string
	auth    fleet.Auth
	timeout time.Duration
}

// applyFleet: fleet_peers, their credentials and timeout. It runs after
// applyAdmin, whose credentials are the default for the peers (a fleet
// usually shares one admin token).
func (l *settingsLoader) applyFleet() error {
	g, st := l.g, l.st
	for _, p := range g.FleetPeers {
		if err := checkPeerURL(p, "fleet_token_file or $PGAUDIT_FLEET_TOKEN"); err != nil {
			return fmt.Errorf("fleet_peers: %w", err)
		}
	}
	st.fleet.peers = g.FleetPeers
	token, err := secretFrom("fleet_token_file", g.FleetTokenFile, "PGAUDIT_FLEET_TOKEN", "")
	if err != nil {
		return err
	}
	switch {
	case token != "":
		st.fleet.auth = fleet.Auth{Token: token}
	case st.httpAuth.Token != "":
		st.fleet.auth = fleet.Auth{Token: st.httpAuth.Token}
	case st.httpAuth.User != "":
		st.fleet.auth = fleet.Auth{User: st.httpAuth.User, Password: st.httpAuth.Password}
	}
	if g.FleetTimeout != nil {
		if g.FleetTimeout.Duration <= 0 {
			return fmt.Errorf("fleet_timeout %v: want a positive duration", g.FleetTimeout.Duration)
		}
		st.fleet.timeout = g.FleetTimeout.Duration
	}
	return nil
}

// checkPeerURL accepts an http or https URL with a host and without
// credentials (they belong in a file or the environment, named by hint,
// not in a URL that ends up in argv, error messages and the dashboard).
func checkPeerURL(s, hint string) error {
	u, err := url.Parse(s)
	if err != nil {
		return fmt.Errorf("%q: %w", s, err)
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return fmt.Errorf("%q: want an http:// or https:// URL", s)
	}
	if u.Host == "" {
		return fmt.Errorf("%q: no host", s)
	}
	if u.User != nil {
		return fmt.Errorf("%q: credentials in the URL: use %s", u.Redacted(), hint)
	}
	return nil
}
