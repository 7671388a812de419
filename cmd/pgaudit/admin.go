package main

import (
	"context"
	"strconv"
	"strings"

	"github.com/rs/zerolog"

	"github.com/pgaudit/pgaudit/admin"
	"github.com/pgaudit/pgaudit/analyzer"
	"github.com/pgaudit/pgaudit/pooler"
)

// adminOptions configure the admin console, the HTTP admin listener and the
// dashboard of `pgaudit proxy`.
type adminOptions struct {
	// Listen is the HTTP admin address (admin_listen, --admin-listen);
	// empty turns the HTTP listener off. The SQL console is on whenever
	// the proxy config has admin users.
	Listen string
	// Pprof serves /debug/pprof/ on the HTTP listener (pprof).
	Pprof bool
	// Pipeline is the audit pipeline (query statistics, drops).
	Pipeline *analyzer.Pipeline
	// Findings lists the rules engine's findings (*analyzer.Engine); nil
	// means none.
	Findings admin.FindingsSource
	// Explain reports the EXPLAIN sampler's counters (*analyzer.Sampler);
	// nil leaves the explain metrics out.
	Explain admin.ExplainSource
	// Settings returns the settings in force (after a reload, the new
	// ones): SHOW DATABASES and SHOW CONFIG read them.
	Settings func() *settings
	// Reload re-reads the config and users file and applies them to the
	// proxy (RELOAD); Shutdown stops the process (SHUTDOWN).
	Reload   func() error
	Shutdown func(waitForClients bool)
	Log      zerolog.Logger
}

// newAdmin builds the admin state. Call it before the pipeline starts
// (register a.Observer() on it) and before pooler.New (set the proxy
// config's Admin to a.Console()).
func newAdmin(opts adminOptions) *admin.Admin {
	var proxyConfig func() *pooler.Config
	var rows func() []admin.Setting
	if opts.Settings != nil {
		proxyConfig = func() *pooler.Config {
			if st := opts.Settings(); st != nil {
				return st.proxy
			}
			return nil
		}
		rows = func() []admin.Setting { return adminSettingRows(opts.Settings(), opts) }
	}
	return admin.New(admin.Options{
		Version:     version,
		Pipeline:    opts.Pipeline,
		Findings:    opts.Findings,
		Explain:     opts.Explain,
		ProxyConfig: proxyConfig,
		Settings:    rows,
		Reload:      opts.Reload,
		Shutdown:    opts.Shutdown,
		Pprof:       opts.Pprof,
		Log:         opts.Log,
	})
}

// startAdmin attaches the proxy, starts the time-series sampler and, unless
// opts.Listen is empty, the HTTP admin listener. stop closes the listener,
// the sampler and open console sessions: call it before the proxy's Close
// (the proxy waits for console sessions to end).
func startAdmin(ctx context.Context, a *admin.Admin, p *pooler.Proxy, opts adminOptions) (stop func(), err error) {
	a.Attach(p)
	a.Start(ctx)
	if opts.Listen != "" {
		addr, err := a.ListenAndServe(opts.Listen)
		if err != nil {
			_ = a.Close()
			return nil, err
		}
		opts.Log.Info().Str("listen", addr.String()).Bool("pprof", opts.Pprof).Msg("admin HTTP listener (dashboard, /metrics, /api/v1)")
	}
	return func() {
		if err := a.Close(); err != nil {
			opts.Log.Warn().Err(err).Msg("admin listener did not stop cleanly")
		}
	}, nil
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
	rate := strconv.FormatFloat(ac.SampleRate, 'f', -1, 64)
	sample := string(ac.Sample)
	if sample == "" {
		sample = string(analyzer.SampleAll)
	}
	rows = append(rows,
		admin.Setting{Key: "admin_listen", Value: opts.Listen, Default: "127.0.0.1:9930", Changeable: no},
		admin.Setting{Key: "pprof", Value: boolWord(opts.Pprof), Default: "0", Changeable: no},
		admin.Setting{Key: "audit_log", Value: st.auditLog, Default: "", Changeable: no},
		admin.Setting{Key: "audit_sample", Value: sample, Default: "all", Changeable: no},
		admin.Setting{Key: "audit_sample_rate", Value: rate, Default: "0", Changeable: no},
		admin.Setting{Key: "audit_slow_threshold", Value: ac.SlowThreshold.String(), Default: "0s", Changeable: no},
		admin.Setting{Key: "audit_log_errors", Value: boolWord(ac.LogErrors), Default: "1", Changeable: no},
		admin.Setting{Key: "log_parameters", Value: boolWord(ac.LogParameters), Default: "0", Changeable: no},
		admin.Setting{Key: "audit_log_max_size", Value: strconv.FormatInt(ac.MaxSize, 10), Default: "0", Changeable: no},
		admin.Setting{Key: "audit_log_max_backups", Value: strconv.Itoa(ac.MaxBackups), Default: "5", Changeable: no},
		admin.Setting{Key: "stats_interval", Value: ac.StatsInterval.String(), Default: "1m0s", Changeable: no},
		admin.Setting{Key: "stats_top_n", Value: strconv.Itoa(ac.StatsTopN), Default: "50", Changeable: no},
		admin.Setting{Key: "max_shapes", Value: strconv.Itoa(st.pipeline.Stats.MaxShapes), Default: "5000", Changeable: no},
		admin.Setting{Key: "audit_queue_size", Value: strconv.Itoa(st.pipeline.QueueSize), Default: "8192", Changeable: no},
		admin.Setting{Key: "audit_workers", Value: strconv.Itoa(st.pipeline.Workers), Default: "2", Changeable: no},
		admin.Setting{Key: "log_level", Value: st.logLevel, Default: "info", Changeable: no},
		admin.Setting{Key: "shutdown_timeout", Value: st.shutdownTimeout.String(), Default: "30s", Changeable: yes},
	)
	var dbs []string
	for name := range st.proxy.Databases {
		dbs = append(dbs, name)
	}
	if len(dbs) > 0 {
		rows = append(rows, admin.Setting{Key: "databases", Value: strings.Join(sortedStrings(dbs), ","), Default: "", Changeable: yes})
	}
	return rows
}

func boolWord(b bool) string {
	if b {
		return "1"
	}
	return "0"
}

func sortedStrings(s []string) []string {
	for i := 1; i < len(s); i++ {
		for j := i; j > 0 && s[j] < s[j-1]; j-- {
			s[j], s[j-1] = s[j-1], s[j]
		}
	}
	return s
}
