package main

import (
	"context"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"

	"github.com/pgaudit-proxy/pgaudit/admin"
	"github.com/pgaudit-proxy/pgaudit/internal/auditlog"
	"github.com/pgaudit-proxy/pgaudit/pooler"
)

// adminOptions configure the admin console, the HTTP admin listener and the
// dashboard of `pgaudit proxy`.
type adminOptions struct {
	// Listen is the HTTP admin address (admin_listen, --admin-listen);
	// empty turns the HTTP listener off. The SQL console is on whenever
	// the proxy config's Admin is set (its AdminUsers may use it).
	Listen string
	// Pprof serves /debug/pprof/ on the HTTP listener (pprof).
	Pprof bool
	// HTTPAuth is the HTTP listener's credentials and Host names.
	HTTPAuth admin.HTTPAuth
	// Fleet is fleet_peers and how to reach them (the dashboard's fleet
	// view).
	Fleet fleetSettings
	// Settings holds the settings in force: SHOW DATABASES and SHOW CONFIG
	// read it at request time; reloadProxy replaces its content.
	Settings *atomic.Pointer[settings]
	// Reload re-reads the config and users file and applies them
	// (RELOAD); Shutdown stops the process (SHUTDOWN passes false,
	// SHUTDOWN WAIT_FOR_CLIENTS true). Shutdown runs on its own goroutine
	// after the reply was sent.
	Reload   func() error
	Shutdown func(waitForClients bool)
	Log      zerolog.Logger
}

// newAdmin builds the admin state. Call it before the audit pipeline starts:
// register a.Observer() on the pipeline (it feeds the query-latency
// histograms), set the proxy config's Admin to a.Console(), then call
// startAdmin once the proxy exists.
func newAdmin(opts adminOptions) *admin.Admin {
	var proxyConfig func() *pooler.Config
	var rows func() []admin.Setting
	if opts.Settings != nil {
		proxyConfig = func() *pooler.Config {
			if st := opts.Settings.Load(); st != nil {
				return st.proxy
			}
			return nil
		}
		rows = func() []admin.Setting { return adminSettingRows(opts.Settings.Load(), opts) }
	}
	return admin.New(admin.Options{
		Version:      version,
		ProxyConfig:  proxyConfig,
		Settings:     rows,
		Reload:       opts.Reload,
		Shutdown:     opts.Shutdown,
		Pprof:        opts.Pprof,
		HTTPAuth:     opts.HTTPAuth,
		FleetPeers:   opts.Fleet.peers,
		FleetAuth:    opts.Fleet.auth,
		FleetTimeout: opts.Fleet.timeout,
		Log:          opts.Log,
	})
}

// startAdmin binds the audit pipeline, rules engine and EXPLAIN sampler of
// aud (nil: none), attaches the proxy, starts the dashboard's time-series
// sampler and, unless opts.Listen is empty, the HTTP admin listener. Call
// it after pooler.New and before p.Serve. stop closes the listener, the
// sampler and open console sessions; call it before p.Close (the proxy
// waits for console sessions to end).
func startAdmin(ctx context.Context, a *admin.Admin, p *pooler.Proxy, aud *auditor, opts adminOptions) (stop func(), err error) {
	if aud != nil {
		var findings admin.FindingsSource
		if aud.engine != nil {
			findings = aud.engine
		}
		var explain admin.ExplainSource
		if aud.sampler != nil {
			explain = aud.sampler
		}
		a.SetSources(aud.pipeline, findings, explain)
	}
	a.Attach(p)
	a.Start(ctx)
	if opts.Listen != "" {
		addr, err := a.ListenAndServe(opts.Listen)
		if err != nil {
			_ = a.Close()
			return nil, err
		}
		opts.Log.Info().Str("listen", addr.String()).Bool("pprof", opts.Pprof).Msg("admin HTTP listener: dashboard at /, /metrics, /api/v1/")
	}
	return func() {
		if err := a.Close(); err != nil {
			opts.Log.Warn().Err(err).Msg("admin listener did not stop cleanly")
		}
	}, nil
}

// reloadProxy re-reads the settings with load and applies them to p without
// dropping clients (users, auth, databases and pool settings; see
// pooler.Proxy.Reload), keeping the admin console and storing the new
// settings in cur. RELOAD and SIGHUP both use it.
func reloadProxy(p *pooler.Proxy, cur *atomic.Pointer[settings], console pooler.AdminHandler, load func() (*settings, error)) error {
	next, err := load()
	if err != nil {
		return err
	}
	if next.proxy.Admin == nil {
		next.proxy.Admin = console
	}
	p.Reload(next.proxy)
	cur.Store(next)
	return nil
}

// adminSettingRows is SHOW CONFIG: the proxy and pool settings plus the
// audit and admin settings this command owns.
func adminSettingRows(st *settings, opts adminOptions) []admin.Setting {
	if st == nil {
		return nil
	}
	rows := admin.SettingsFromConfig(st.proxy)
	yes, no := "yes", "no"
	ac := st.audit
	stats := ac.StatsInterval
	if stats == 0 {
		stats = time.Minute
	}
	sample := string(ac.Sample)
	if sample == "" {
		sample = string(auditlog.SampleAll)
	}
	rows = append(rows,
		admin.Setting{Key: "admin_listen", Value: opts.Listen, Default: "127.0.0.1:9930", Changeable: no},
		admin.Setting{Key: "pprof", Value: boolWord(opts.Pprof), Default: "0", Changeable: no},
		admin.Setting{Key: "audit_log", Value: st.auditLog, Default: "", Changeable: no},
		admin.Setting{Key: "audit_sample", Value: sample, Default: "all", Changeable: no},
		admin.Setting{Key: "audit_sample_rate", Value: strconv.FormatFloat(ac.SampleRate, 'f', -1, 64), Default: "0", Changeable: no},
		admin.Setting{Key: "audit_slow_threshold", Value: ac.SlowThreshold.String(), Default: "0s", Changeable: no},
		admin.Setting{Key: "audit_log_errors", Value: boolWord(ac.LogErrors), Default: "1", Changeable: no},
		admin.Setting{Key: "log_parameters", Value: boolWord(ac.LogParameters), Default: "0", Changeable: no},
		admin.Setting{Key: "audit_log_max_size", Value: strconv.FormatInt(ac.MaxSize, 10), Default: "0", Changeable: no},
		admin.Setting{Key: "audit_log_max_backups", Value: strconv.Itoa(orDefault(ac.MaxBackups, 5)), Default: "5", Changeable: no},
		admin.Setting{Key: "stats_interval", Value: stats.String(), Default: "1m0s", Changeable: no},
		admin.Setting{Key: "stats_top_n", Value: strconv.Itoa(orDefault(ac.StatsTopN, 50)), Default: "50", Changeable: no},
		admin.Setting{Key: "max_shapes", Value: strconv.Itoa(orDefault(st.pipeline.Stats.MaxShapes, 5000)), Default: "5000", Changeable: no},
		admin.Setting{Key: "audit_queue_size", Value: strconv.Itoa(orDefault(st.pipeline.QueueSize, 8192)), Default: "8192", Changeable: no},
		admin.Setting{Key: "audit_workers", Value: strconv.Itoa(orDefault(st.pipeline.Workers, 2)), Default: "2", Changeable: no},
		admin.Setting{Key: "log_level", Value: st.logLevel, Default: "info", Changeable: no},
		admin.Setting{Key: "shutdown_timeout", Value: st.shutdownTimeout.String(), Default: "30s", Changeable: yes},
	)
	// Identity settings, never their secrets.
	var authUser, authQuery, authDB string
	if aq := st.proxy.AuthQuery; aq != nil {
		authUser, authQuery, authDB = aq.User, aq.Query, aq.DBName
	}
	httpAuth := []string{}
	if opts.HTTPAuth.Token != "" {
		httpAuth = append(httpAuth, "bearer")
	}
	if opts.HTTPAuth.User != "" {
		httpAuth = append(httpAuth, "basic")
	}
	if len(httpAuth) == 0 {
		httpAuth = append(httpAuth, "none")
	}
	rows = append(rows,
		admin.Setting{Key: "auth_user", Value: authUser, Default: "", Changeable: yes},
		admin.Setting{Key: "auth_query", Value: authQuery, Default: "", Changeable: yes},
		admin.Setting{Key: "auth_dbname", Value: authDB, Default: "", Changeable: yes},
		admin.Setting{Key: "admin_http_auth", Value: strings.Join(httpAuth, ","), Default: "none", Changeable: no},
		admin.Setting{Key: "admin_hosts", Value: strings.Join(opts.HTTPAuth.Hosts, ","), Default: "", Changeable: no},
		admin.Setting{Key: "fleet_peers", Value: strings.Join(opts.Fleet.peers, ","), Default: "", Changeable: no},
	)
	rows = append(rows, otlpLogsSettingRows(st)...)
	return rows
}

// orDefault returns n, or d when n is 0 (unset: the default applies).
func orDefault(n, d int) int {
	if n == 0 {
		return d
	}
	return n
}

func boolWord(b bool) string {
	if b {
		return "1"
	}
	return "0"
}
