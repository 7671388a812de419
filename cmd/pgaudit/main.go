// Command pgaudit is a Postgres wire-protocol proxy and connection pooler
// that audits every statement it carries. See README.md.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"runtime/pprof"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/rs/zerolog"
	"github.com/spf13/cobra"

	"github.com/pgaudit-proxy/pgaudit/analyzer"
	"github.com/pgaudit-proxy/pgaudit/internal/auditlog"
	"github.com/pgaudit-proxy/pgaudit/pooler"
	"github.com/pgaudit-proxy/pgaudit/tracing"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

// exitError carries a process exit code out of a command.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }

func main() {
	root := &cobra.Command{
		Use:           "pgaudit",
		Short:         "Postgres proxy and connection pooler that audits every statement",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(reportCommand(), proxyCommand(), demoCommand(), lintCommand(), versionCommand())
	if err := root.Execute(); err != nil {
		code := 2
		var ee *exitError
		if errors.As(err, &ee) {
			code = ee.code
		}
		fmt.Fprintln(os.Stderr, "pgaudit:", err)
		os.Exit(code)
	}
}

func versionCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the version",
		Run: func(cmd *cobra.Command, _ []string) {
			fmt.Fprintln(cmd.OutOrStdout(), "pgaudit", version)
		},
	}
}

func newLogger(level string) (zerolog.Logger, error) {
	lvl, err := zerolog.ParseLevel(level)
	if err != nil {
		return zerolog.Logger{}, fmt.Errorf("invalid log level %q", level)
	}
	return zerolog.New(os.Stderr).Level(lvl).With().Timestamp().Logger(), nil
}

func proxyCommand() *cobra.Command {
	var fl proxyFlags
	var cpuProfile string
	cmd := &cobra.Command{
		Use:   "proxy",
		Short: "Run the proxy",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if cmd.Flags().Changed("admin-listen") {
				v, _ := cmd.Flags().GetString("admin-listen")
				fl.adminListen = &v
			}
			st, err := loadSettings(fl)
			if err != nil {
				return &exitError{2, err}
			}
			log, err := newLogger(st.logLevel)
			if err != nil {
				return &exitError{2, err}
			}
			if cpuProfile != "" {
				f, err := os.Create(cpuProfile)
				if err != nil {
					return &exitError{2, err}
				}
				if err := pprof.StartCPUProfile(f); err != nil {
					return &exitError{2, err}
				}
				defer func() { pprof.StopCPUProfile(); _ = f.Close() }()
			}
			return runProxy(cmd.Context(), st, func() (*settings, error) { return loadSettings(fl) }, log)
		},
	}
	f := cmd.Flags()
	f.StringVar(&fl.configPath, "config", "", "TOML config file")
	f.StringVar(&fl.listen, "listen", "", "listen address (default 127.0.0.1:6432)")
	f.StringVar(&fl.upstream, "upstream", "", "upstream Postgres DSN (quick start)")
	f.StringVar(&fl.poolMode, "pool-mode", "", "session or transaction")
	f.IntVar(&fl.poolSize, "pool-size", 0, "server connections per (database, user)")
	// --relay stays, accepting only event, so that scripts and units
	// written for the two relays still start (see checkRelay); hidden
	// from the help, with a warning when used.
	f.StringVar(&fl.relay, "relay", "", "no effect: event is the only relay (goroutine was removed; docs/relay.md)")
	_ = f.MarkDeprecated("relay", "it has no effect: event is the only relay since the goroutine relay was removed (docs/relay.md)")
	f.StringVar(&fl.auditLog, "audit-log", "", "audit log file, or - for stdout")
	f.StringVar(&fl.logLevel, "log-level", "", "debug, info, warn or error")
	f.StringVar(&fl.authType, "auth-type", "", "trust, password, md5 or scram-sha-256")
	f.StringVar(&fl.authFile, "auth-file", "", "users file (PgBouncer auth_file format)")
	f.StringVar(&cpuProfile, "cpuprofile", "", "write a CPU profile of the proxy to this file until it stops")
	f.BoolVar(&fl.noAudit, "no-audit", false, "relay without auditing (no events, statistics or findings), to measure the audit cost")
	f.StringVar(&fl.auditSample, "audit-sample", "", "statement records: all, none, rate or slow")
	f.DurationVar(&fl.statsInterval, "stats-interval", 0, "how often stats and pool snapshots are written (default 1m)")
	f.String("admin-listen", "", "HTTP admin address: dashboard, /metrics, /api/v1 (default 127.0.0.1:9930; empty turns it off)")
	f.StringVar(&fl.adminUsers, "admin-users", "", "comma-separated users allowed on the admin console (databases pgaudit and pgbouncer)")
	f.BoolVar(&fl.pprof, "pprof", false, "serve /debug/pprof/ on the admin listener")
	f.StringVar(&fl.upstreamPasswordFile, "upstream-password-file", "", "file holding the --upstream DSN's password (or set PGAUDIT_UPSTREAM_PASSWORD): keeps it out of ps")
	f.BoolVar(&fl.allowTrustOnNetwork, "dangerously-allow-trust-on-network", false, "allow auth_type trust on a non-loopback listen address: anyone who can reach it logs in without a password")
	f.StringVar(&fl.otlpEndpoint, "otlp-endpoint", "", "OTLP/HTTP endpoint (host:4318): spans for statements with a sqlcommenter traceparent")
	f.StringVar(&fl.otlpLogsEndpoint, "otlp-logs-endpoint", "", "OTLP/HTTP collector URL (http://127.0.0.1:4318): audit records as OpenTelemetry logs")
	return cmd
}

// runProxy runs the proxy until SIGINT (close at once) or SIGTERM (stop
// accepting, let clients finish up to shutdown_timeout). SIGHUP re-reads the
// config and users file (reload) and reopens the audit log for logrotate.
func runProxy(ctx context.Context, st *settings, reload func() (*settings, error), log zerolog.Logger) error {
	if ctx == nil {
		ctx = context.Background()
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var cur atomic.Pointer[settings]
	cur.Store(st)
	var p *pooler.Proxy
	var console pooler.AdminHandler
	shutdownReq := make(chan bool, 1)
	for _, w := range st.warnings {
		log.Warn().Msg(w)
	}
	adminOpts := adminOptions{
		Listen: st.adminListen, Pprof: st.pprof, HTTPAuth: st.httpAuth, Fleet: st.fleet, Settings: &cur, Log: log,
		Reload: func() error { return reloadProxy(p, &cur, console, reload) },
		Shutdown: func(wait bool) {
			select {
			case shutdownReq <- wait:
			default:
			}
		},
	}
	adm := newAdmin(adminOpts)
	console = adm.Console()
	ao := st.auditorOptions(log)
	ao.Observers = append(ao.Observers, adm.Observer())
	if st.otlpEndpoint != "" {
		tp, shutdownTraces, err := tracing.StartOTLP(ctx, st.otlpEndpoint, st.otlpInsecure, version)
		if err != nil {
			return &exitError{1, err}
		}
		defer func() {
			sctx, scancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer scancel()
			_ = shutdownTraces(sctx)
		}()
		ao.Observers = append(ao.Observers, traceObserver(tracing.New(tp)))
		log.Info().Str("endpoint", st.otlpEndpoint).Msg("OTLP tracing on for statements with a traceparent")
	}
	audit, err := startAuditor(ctx, ao)
	if err != nil {
		return &exitError{1, err}
	}
	defer audit.stop(log)
	if audit.otlp != nil {
		if err := adm.RegisterCollector(audit.otlp); err != nil {
			return &exitError{1, err}
		}
		log.Info().Str("endpoint", st.otlpLogs.Endpoint).Msg("audit records exported as OTLP logs")
	}
	st.proxy.Admin = console
	var sink analyzer.Sink = audit.pipeline
	if st.noAudit {
		// The proxy relays without emitting events (for measuring the
		// audit pipeline's cost); the admin views stay empty.
		sink = analyzer.DiscardSink{}
	}
	p = pooler.New(st.proxy, sink, log)
	st.attachProxy(p)
	if err := p.Listen(); err != nil {
		return &exitError{1, err}
	}
	stopAdmin, err := startAdmin(ctx, adm, p, audit, adminOpts)
	if err != nil {
		return &exitError{1, err}
	}
	defer stopAdmin()
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	defer signal.Stop(sigs)
	errc := make(chan error, 1)
	go func() { errc <- p.Serve(ctx) }()
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		reportPools(ctx, p, audit, st.audit.StatsInterval, log)
	}()
	defer wg.Wait()
	defer cancel()
	for {
		select {
		case err := <-errc:
			stopAdmin()
			_ = p.Close()
			if err != nil {
				return &exitError{1, err}
			}
			return nil
		case wait := <-shutdownReq:
			adm.SetShuttingDown()
			if wait {
				log.Info().Int("clients", p.ClientCount()).Dur("timeout", st.shutdownTimeout).Msg("SHUTDOWN WAIT_FOR_CLIENTS: draining clients")
				sctx, scancel := context.WithTimeout(ctx, st.shutdownTimeout)
				p.Shutdown(sctx)
				scancel()
			} else {
				log.Info().Int("clients", p.ClientCount()).Msg("SHUTDOWN: closing now")
			}
			remaining := p.ClientCount()
			stopAdmin()
			_ = p.Close()
			<-errc
			writePoolSnapshot(p, audit.log, log)
			log.Info().Int("clients_cut", remaining).Msg("proxy stopped")
			return nil
		case sig := <-sigs:
			switch sig {
			case syscall.SIGHUP:
				if err := reloadProxy(p, &cur, console, reload); err != nil {
					log.Error().Err(err).Msg("SIGHUP: configuration not reloaded")
				} else {
					log.Info().Msg("SIGHUP: configuration reloaded")
				}
				if audit.log != nil {
					if err := audit.log.Reopen(); err != nil {
						log.Error().Err(err).Msg("SIGHUP: reopening the audit log failed")
					} else {
						log.Info().Msg("SIGHUP: audit log reopened")
					}
				}
				continue
			case syscall.SIGTERM:
				adm.SetShuttingDown()
				log.Info().Int("clients", p.ClientCount()).Dur("timeout", st.shutdownTimeout).Msg("SIGTERM: draining clients")
				sctx, scancel := context.WithTimeout(ctx, st.shutdownTimeout)
				p.Shutdown(sctx)
				scancel()
			default:
				log.Info().Int("clients", p.ClientCount()).Msg("SIGINT: closing now")
			}
			remaining := p.ClientCount()
			stopAdmin()
			_ = p.Close()
			<-errc
			writePoolSnapshot(p, audit.log, log)
			log.Info().Int("clients_cut", remaining).Msg("proxy stopped")
			return nil
		}
	}
}

// reportPools logs pool statistics and writes pool snapshots every
// interval until ctx ends.
// reportPools feeds the pool-saturation rule every 10 s, and logs and
// writes pool snapshots every interval, until ctx ends.
func reportPools(ctx context.Context, p *pooler.Proxy, a *auditor, every time.Duration, log zerolog.Logger) {
	if every <= 0 {
		every = time.Minute
	}
	snap := time.NewTicker(every)
	defer snap.Stop()
	facts := time.NewTicker(10 * time.Second)
	defer facts.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-facts.C:
			a.observePools(p.PoolStats())
		case <-snap.C:
			writePoolSnapshot(p, a.log, log)
		}
	}
}

func writePoolSnapshot(p *pooler.Proxy, al *auditlog.Log, log zerolog.Logger) {
	for _, ps := range p.PoolStats() {
		log.Info().Str("database", ps.Database).Str("user", ps.User).Str("pool_mode", ps.Mode).
			Int("cl_active", ps.ClientsActive).Int("cl_waiting", ps.ClientsWaiting).
			Int("sv_active", ps.ServersActive).Int("sv_idle", ps.ServersIdle).
			Int64("xact_count", ps.Transactions).Int64("query_count", ps.Queries).
			Float64("utilization", ps.Utilization).Dur("wait_p99", ps.WaitP99).Dur("maxwait", ps.MaxWait).
			Msg("pool stats")
		if al != nil {
			if err := al.WritePool(ps); err != nil {
				log.Warn().Err(err).Msg("writing pool record")
			}
		}
	}
}
