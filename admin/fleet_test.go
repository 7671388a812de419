package admin

import (
	"context"
	"encoding/json"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/pgaudit-proxy/pgaudit/fleet"
	"github.com/pgaudit-proxy/pgaudit/rules"
)

// startFleetAdmin serves an Admin without a proxy whose findings are fs,
// with token auth when token is set, and peers reached with peerToken; it
// is closed when the test ends.
func startFleetAdmin(t *testing.T, token, peerToken string, fs []rules.Finding, peers []string) (*Admin, string) {
	t.Helper()
	a := New(Options{Findings: &fakeFindings{fs: fs}, HTTPAuth: HTTPAuth{Token: token},
		FleetPeers: peers, FleetAuth: fleet.Auth{Token: peerToken}, FleetTimeout: 2 * time.Second, Log: zerolog.Nop()})
	addr, err := a.ListenAndServe("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = a.Close() })
	return a, "http://" + addr.String()
}

func getJSON(t *testing.T, url, token string, into any) int {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, url, nil)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusOK && into != nil {
		if err := json.NewDecoder(resp.Body).Decode(into); err != nil {
			t.Fatalf("GET %s: %v", url, err)
		}
	}
	return resp.StatusCode
}

const fleetToken = "tok"

// fleetTrio starts instances A and B (token auth, sampleFinding on both
// with different counts and times, resolvedFinding on B) and C, whose
// fleet_peers are A, B and a closed port. C has no credentials of its own
// so that a browser can open it (loopback).
func fleetTrio(t *testing.T) (onA, onB rules.Finding, urlA, dead, urlC string, self *Admin) {
	const token = fleetToken
	onA, onB = sampleFinding, sampleFinding
	onA.Count, onA.FirstSeen, onA.LastSeen = 10, sampleFinding.FirstSeen, sampleFinding.FirstSeen.Add(time.Hour)
	onB.Count, onB.FirstSeen, onB.LastSeen = 32, sampleFinding.FirstSeen.Add(-time.Hour), sampleFinding.FirstSeen.Add(30*time.Minute)
	_, urlA = startFleetAdmin(t, token, "", []rules.Finding{onA}, nil)
	_, urlB := startFleetAdmin(t, token, "", []rules.Finding{onB, resolvedFinding}, nil)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead = "http://" + l.Addr().String()
	_ = l.Close()
	self, urlC = startFleetAdmin(t, "", token, nil, []string{urlA, urlB, dead})
	return
}

// TestFleetFindingsMerge (issue 17, section 2): the same finding on two
// instances is one row of the fleet view with the counts added, first and
// last seen spanning both and instances 2; a peer that is down is listed
// as failed; /api/v1/export needs the admin credentials like every other
// API path.
func TestFleetFindingsMerge(t *testing.T) {
	const token = fleetToken
	onA, onB, urlA, dead, urlC, self := fleetTrio(t)

	// The export document, and its guard.
	var doc fleet.Document
	if code := getJSON(t, urlA+"/api/v1/export", token, &doc); code != http.StatusOK {
		t.Fatalf("/api/v1/export: %d", code)
	}
	if doc.Version != fleet.Version || len(doc.Findings) != 1 || doc.Findings[0].ID != onA.ID || doc.Instance.Started.IsZero() || doc.Instance.Exported.IsZero() {
		t.Errorf("export: version %d, %d findings, instance %+v", doc.Version, len(doc.Findings), doc.Instance)
	}
	if code := getJSON(t, urlA+"/api/v1/export", "", nil); code != http.StatusUnauthorized {
		t.Errorf("/api/v1/export without the token: %d, want 401", code)
	}
	req, _ := http.NewRequest(http.MethodGet, urlA+"/api/v1/export", nil)
	req.Host = "evil.example"
	req.Header.Set("Authorization", "Bearer "+token)
	if resp, err := http.DefaultClient.Do(req); err != nil || resp.StatusCode != http.StatusMisdirectedRequest {
		t.Errorf("/api/v1/export with a foreign Host: %v %v, want 421", resp, err)
	} else {
		resp.Body.Close()
	}
	if code := getJSON(t, urlA+"/api/v1/fleet", token, nil); code != http.StatusNotFound {
		t.Errorf("/api/v1/fleet without fleet_peers: %d, want 404", code)
	}

	var v fleet.View
	if code := getJSON(t, urlC+"/api/v1/fleet", token, &v); code != http.StatusOK {
		t.Fatalf("/api/v1/fleet: %d", code)
	}
	if v.Instances != 3 || v.Failed != 1 {
		t.Errorf("%d instances, %d failed; want 3, 1: %+v", v.Instances, v.Failed, v.Sources)
	}
	for _, s := range v.Sources {
		if (s.Name == dead) == s.OK || (s.Name == dead && !strings.Contains(s.Error, dead)) {
			t.Errorf("source %+v", s)
		}
	}
	if len(v.Findings) != 2 {
		t.Fatalf("%d findings, want 2 (one merged, one resolved): %+v", len(v.Findings), v.Findings)
	}
	f := v.Findings[0]
	if f.ID != sampleFinding.ID || f.Count != 42 || f.Instances != 2 ||
		!f.FirstSeen.Equal(onB.FirstSeen) || !f.LastSeen.Equal(onA.LastSeen) {
		t.Errorf("merged finding %s: count %d instances %d first %v last %v; want 42, 2, %v, %v",
			f.ID, f.Count, f.Instances, f.FirstSeen, f.LastSeen, onB.FirstSeen, onA.LastSeen)
	}
	if g := v.Findings[1]; g.ID != resolvedFinding.ID || g.Instances != 1 || g.Count != resolvedFinding.Count {
		t.Errorf("second finding %s: instances %d count %d", g.ID, g.Instances, g.Count)
	}

	// Cached: a second request within the TTL reuses the view.
	if again := self.FleetView(context.Background()); again.Generated != v.Generated {
		t.Errorf("fleet view refetched within the cache TTL")
	}

}

// TestFleetDashboardInChromium: the dashboard page of an instance with
// fleet_peers shows the fleet: sources (the dead one failed) and the
// merged finding with its instances.
func TestFleetDashboardInChromium(t *testing.T) {
	_, _, _, dead, urlC, _ := fleetTrio(t)
	dom := chromiumDOM(t, urlC+"/")
	i := strings.Index(dom, `<section id="fleet"`)
	if i < 0 || strings.Contains(dom[i:i+40], "hidden") {
		t.Fatalf("fleet section missing or hidden:\n%s", tail(dom, 3000))
	}
	sec := dom[i:]
	for _, want := range []string{"3 instances, 1 failed", "failed: fetch " + dead, "<th>instances</th>", sampleFinding.Message, "<td>2</td>", "<td>42</td>"} {
		if !strings.Contains(sec, want) {
			t.Errorf("fleet section lacks %q:\n%s", want, tail(sec, 3000))
		}
	}
}
