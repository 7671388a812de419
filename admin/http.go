package admin

import (
	"bytes"
	"context"
	"embed"
	"encoding/json"
	"fmt"
	"html/template"
	"io"
	"io/fs"
	"net/http"
	"net/http/pprof"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/pgaudit-proxy/pgaudit/analyzer"
	"github.com/pgaudit-proxy/pgaudit/fleet"
	"github.com/pgaudit-proxy/pgaudit/pooler"
	"github.com/pgaudit-proxy/pgaudit/rules"
)

//go:embed assets
var assetsFS embed.FS

// pageTemplate renders the dashboard (assets linked) and the report
// (everything inline).
var pageTemplate = template.Must(template.ParseFS(assetsFS, "assets/index.html"))

// pageData is what index.html needs.
type pageData struct {
	Title, Version string
	Inline         bool
	CSS            template.CSS
	UPlotCSS       template.CSS
	JS             template.JS
	UPlotJS        template.JS
	Data           *Dashboard
}

func mustAsset(name string) string {
	b, err := assetsFS.ReadFile("assets/" + name)
	if err != nil {
		panic(err)
	}
	return string(b)
}

// renderPage writes the page; with d set, the data and every asset are
// inlined (a self-contained file).
func renderPage(w io.Writer, title, version string, d *Dashboard) error {
	pd := pageData{Title: title, Version: version}
	if d != nil {
		pd.Inline = true
		pd.Data = d
		pd.CSS = template.CSS(mustAsset("app.css"))
		pd.UPlotCSS = template.CSS(mustAsset("vendor/uPlot.min.css"))
		pd.JS = template.JS(mustAsset("app.js"))
		pd.UPlotJS = template.JS(mustAsset("vendor/uPlot.iife.min.js"))
	}
	return pageTemplate.Execute(w, pd)
}

// WriteSelfContained writes d as one self-contained HTML page: the
// dashboard's page with the data, the styles, the script and uPlot inline,
// so that it opens without a network (pgaudit report). version is printed
// in the footer.
func WriteSelfContained(w io.Writer, version string, d *Dashboard) error {
	return renderPage(w, d.Title, version, d)
}

// SummaryItem is one tile at the top of the dashboard.
type SummaryItem struct {
	Label string `json:"label"`
	Value string `json:"value"`
}

// Dashboard is everything the dashboard page shows: the live one serves it
// at /api/v1/dashboard, a report embeds it.
type Dashboard struct {
	Title     string          `json:"title"`
	Subtitle  string          `json:"subtitle"`
	Generated time.Time       `json:"generated"`
	Summary   []SummaryItem   `json:"summary"`
	Series    Series          `json:"series"`
	Queries   []QueryRow      `json:"queries"`
	Findings  []rules.Finding `json:"findings"`
	Pools     []PoolRow       `json:"pools"`
	Notes     []string        `json:"notes,omitempty"`
	// Fleet is the merged view of this instance and its fleet peers
	// (fleet_peers), or of the instances a report was built from; nil
	// when there is none.
	Fleet *fleet.View `json:"fleet,omitempty"`
}

// dashboardShapes is how many shapes the dashboard lists.
const dashboardShapes = 25

// Dashboard returns the live dashboard's data, the fleet view included
// when fleet peers are configured (see FleetView).
func (a *Admin) Dashboard(ctx context.Context) *Dashboard {
	now := a.now()
	d := &Dashboard{
		Title:     "pgaudit",
		Subtitle:  "live, up " + now.Sub(a.started).Truncate(time.Second).String(),
		Generated: now.UTC(),
		Series:    a.Series(),
		Queries:   a.Queries(analyzer.ByTotalTime, dashboardShapes),
		Findings:  a.findings(),
		Pools:     a.Pools(),
		Fleet:     a.FleetView(ctx),
	}
	if d.Findings == nil {
		d.Findings = []rules.Finding{}
	}
	var clients, waiting int
	if p := a.proxy.Load(); p != nil {
		clients = p.ClientCount()
	}
	for _, p := range d.Pools {
		waiting += p.ClWaiting
	}
	d.Summary = append(d.Summary,
		SummaryItem{"clients", strconv.Itoa(clients)},
		SummaryItem{"waiting", strconv.Itoa(waiting)},
		SummaryItem{"pools", strconv.Itoa(len(d.Pools))},
	)
	if pl := a.pipeline(); pl != nil {
		c := pl.Counters()
		d.Summary = append(d.Summary,
			SummaryItem{"statements analyzed", strconv.FormatUint(c.Processed, 10)},
			SummaryItem{"events dropped", strconv.FormatUint(c.Dropped, 10)},
			SummaryItem{"query shapes", strconv.Itoa(pl.Stats().Len())},
		)
	}
	d.Summary = append(d.Summary, FindingsSummary(d.Findings)...)
	return d
}

// Handler returns the HTTP admin interface:
//
//	/                   live dashboard (assets under /assets/, embedded)
//	/metrics            Prometheus metrics
//	/healthz            200 while the process runs
//	/readyz             200 when the proxy should get traffic, else 503
//	/api/v1/dashboard   everything the dashboard shows
//	/api/v1/pools       SHOW POOLS as JSON
//	/api/v1/stats       SHOW STATS as JSON
//	/api/v1/databases   SHOW DATABASES as JSON
//	/api/v1/clients     client sessions
//	/api/v1/servers     server connections
//	/api/v1/queries     top shapes: ?by=total|calls|p99|mean|errors&limit=N (default total, 50)
//	/api/v1/findings    current findings
//	/api/v1/timeseries  the last hour in 10-second samples
//	/api/v1/export      this instance's shapes (sketch bins included), findings and pools, versioned (docs/export.md)
//	/api/v1/fleet       this instance and its fleet_peers merged (404 without peers)
//	/debug/pprof/       Go profiles, only with Options.Pprof (cmdline redacted)
//
// Every path answers only a Host that is an IP literal, localhost or one
// of Options.HTTPAuth.Hosts (421 otherwise), and, when credentials are
// configured, every path but /healthz and /readyz needs them (401).
func (a *Admin) Handler() http.Handler {
	mux := http.NewServeMux()
	sub, _ := fs.Sub(assetsFS, "assets")
	mux.Handle("GET /assets/", http.StripPrefix("/assets/", http.FileServerFS(sub)))
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		var buf bytes.Buffer
		if err := renderPage(&buf, "pgaudit", a.opts.Version, nil); err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.Header().Set("Cache-Control", "no-store")
		_, _ = w.Write(buf.Bytes())
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(a.reg, promhttp.HandlerOpts{ErrorLog: promLogger{a}}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = io.WriteString(w, "ok\n")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		if err := a.ready(); err != nil {
			w.WriteHeader(http.StatusServiceUnavailable)
			_, _ = io.WriteString(w, "not ready: "+err.Error()+"\n")
			return
		}
		_, _ = io.WriteString(w, "ready\n")
	})
	api := func(path string, f func(r *http.Request) (any, error)) {
		mux.HandleFunc("GET /api/v1/"+path, func(w http.ResponseWriter, r *http.Request) {
			v, err := f(r)
			if err != nil {
				writeJSON(w, http.StatusBadRequest, map[string]string{"error": err.Error()})
				return
			}
			writeJSON(w, http.StatusOK, v)
		})
	}
	api("dashboard", func(r *http.Request) (any, error) { return a.Dashboard(r.Context()), nil })
	api("export", func(*http.Request) (any, error) { return a.Export(), nil })
	mux.HandleFunc("GET /api/v1/fleet", func(w http.ResponseWriter, r *http.Request) {
		v := a.FleetView(r.Context())
		if v == nil {
			writeJSON(w, http.StatusNotFound, map[string]string{"error": "no fleet_peers configured"})
			return
		}
		writeJSON(w, http.StatusOK, v)
	})
	api("pools", func(*http.Request) (any, error) { return a.Pools(), nil })
	api("stats", func(*http.Request) (any, error) { return a.Stats(), nil })
	api("databases", func(*http.Request) (any, error) { return a.Databases(), nil })
	api("clients", func(*http.Request) (any, error) {
		if p := a.proxy.Load(); p != nil {
			return p.Clients(), nil
		}
		return []pooler.ClientInfo{}, nil
	})
	api("servers", func(*http.Request) (any, error) {
		if p := a.proxy.Load(); p != nil {
			if s := p.Servers(); s != nil {
				return s, nil
			}
		}
		return []pooler.ServerInfo{}, nil
	})
	api("queries", func(r *http.Request) (any, error) {
		by, err := parseBy(r.URL.Query().Get("by"))
		if err != nil {
			return nil, err
		}
		limit := 50
		if s := r.URL.Query().Get("limit"); s != "" {
			n, err := strconv.Atoi(s)
			if err != nil || n <= 0 || n > 10000 {
				return nil, fmt.Errorf("invalid limit %q: want 1 to 10000", s)
			}
			limit = n
		}
		return a.Queries(by, limit), nil
	})
	api("findings", func(r *http.Request) (any, error) {
		fs, err := filterFindings(a.findings(), r.URL.Query().Get("status"))
		if fs == nil {
			fs = []rules.Finding{}
		}
		return fs, err
	})
	api("timeseries", func(*http.Request) (any, error) { return a.Series(), nil })
	if a.opts.Pprof {
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/cmdline", cmdline) // redacted
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	}
	return a.opts.HTTPAuth.guard(mux)
}

// parseBy maps the ?by= values of /api/v1/queries to sort keys.
func parseBy(s string) (analyzer.SortKey, error) {
	switch strings.ToLower(s) {
	case "", "total", "total_time":
		return analyzer.ByTotalTime, nil
	case "calls":
		return analyzer.ByCalls, nil
	case "p99":
		return analyzer.ByP99, nil
	case "mean":
		return analyzer.ByMean, nil
	case "errors":
		return analyzer.ByErrors, nil
	}
	return "", fmt.Errorf("invalid by %q: want total, calls, p99, mean or errors", s)
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	_, _ = w.Write(append(b, '\n'))
}

// promLogger sends promhttp's errors to the admin log.
type promLogger struct{ a *Admin }

// Println logs a metrics collection error.
func (l promLogger) Println(v ...any) {
	l.a.opts.Log.Error().Msg(fmt.Sprint(v...))
}
