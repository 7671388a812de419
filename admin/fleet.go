package admin

import (
	"context"
	"os"
	"sync"
	"time"

	"github.com/pgaudit-proxy/pgaudit/fleet"
)

// fleetTop is how many merged shapes the fleet view lists.
const fleetTop = 50

// Export returns this instance's export document (/api/v1/export): every
// tracked shape with its latency sketch's bins, the findings and the
// pools' summable counters.
func (a *Admin) Export() *fleet.Document {
	inst := fleet.Instance{PgauditVersion: a.opts.Version, Started: a.started.UTC()}
	if cfg := a.proxyConfig(); cfg != nil {
		inst.PeerID, inst.Listen = cfg.PeerID, cfg.Listen
	}
	if p := a.proxy.Load(); p != nil {
		if addr := p.Addr(); addr != nil {
			inst.Listen = addr.String()
		}
	}
	inst.Hostname, _ = os.Hostname()
	var d *fleet.Document
	if pl := a.pipeline(); pl != nil {
		d = fleet.Export(inst, pl.Stats().Snapshot(), a.findings(), a.poolStats())
	} else {
		d = fleet.Export(inst, nil, a.findings(), a.poolStats())
	}
	d.Instance.Exported = a.now().UTC()
	if !d.Instance.StatsSince.IsZero() {
		d.Instance.StatsSince = d.Instance.StatsSince.UTC()
	}
	return d
}

// fleetCache fetches the peers' exports on request and keeps the merged
// view for a short time, so that dashboards refreshing every few seconds
// cost the peers one fetch per TTL. One fetch runs at a time; requests
// arriving meanwhile wait for it (bounded by the fetch timeout). It runs
// on admin HTTP goroutines only, never on the relay.
type fleetCache struct {
	mu      sync.Mutex
	view    *fleet.View
	fetched time.Time
}

// FleetView returns the merged view of this instance and its fleet peers
// (Options.FleetPeers): merged top shapes with percentiles from the
// merged sketches, merged findings and pools, each row with the number of
// instances behind it, and each peer's status (a peer that did not answer
// is listed with its error). It returns nil when no peers are configured.
// Peers are fetched at most once per Options.FleetCacheTTL, each bounded
// by Options.FleetTimeout.
func (a *Admin) FleetView(ctx context.Context) *fleet.View {
	if len(a.opts.FleetPeers) == 0 {
		return nil
	}
	c := &a.fleet
	c.mu.Lock()
	defer c.mu.Unlock()
	now := a.now()
	if c.view != nil && now.Sub(c.fetched) < a.opts.FleetCacheTTL {
		return c.view
	}
	cl := &fleet.Client{Auth: a.opts.FleetAuth, Timeout: a.opts.FleetTimeout}
	sources := append([]fleet.Source{{Name: "self", Doc: a.Export()}}, cl.FetchAll(context.WithoutCancel(ctx), a.opts.FleetPeers)...)
	m, err := fleet.Merge(sources)
	if err != nil {
		// A peer's document that cannot be merged exactly: show the
		// error in place of that peer rather than a wrong number.
		for i := 1; i < len(sources); i++ {
			if sources[i].Doc == nil {
				continue
			}
			if _, err := fleet.Merge([]fleet.Source{sources[i]}); err != nil {
				sources[i] = fleet.Source{Name: sources[i].Name, Err: err}
			}
		}
		if m, err = fleet.Merge(sources); err != nil {
			a.opts.Log.Error().Err(err).Msg("fleet view: merge")
			return &fleet.View{Generated: now.UTC(), Sources: []fleet.SourceStatus{{Name: "self", Error: err.Error()}}}
		}
	}
	c.view = m.View(fleetTop, a.now())
	c.fetched = now
	return c.view
}
