// Command pgaudit is a Postgres wire-protocol proxy and connection pooler
// that audits every statement it carries. See README.md.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/rs/zerolog"
	"github.com/spf13/cobra"

	"github.com/pgaudit/pgaudit/pooler"
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
	root.AddCommand(proxyCommand(), versionCommand())
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
	cmd := &cobra.Command{
		Use:   "proxy",
		Short: "Run the proxy",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			st, err := loadSettings(fl)
			if err != nil {
				return &exitError{2, err}
			}
			log, err := newLogger(st.logLevel)
			if err != nil {
				return &exitError{2, err}
			}
			return runProxy(cmd.Context(), st, log)
		},
	}
	f := cmd.Flags()
	f.StringVar(&fl.configPath, "config", "", "TOML config file")
	f.StringVar(&fl.listen, "listen", "", "listen address (default 127.0.0.1:6432)")
	f.StringVar(&fl.upstream, "upstream", "", "upstream Postgres DSN (quick start)")
	f.StringVar(&fl.poolMode, "pool-mode", "", "session or transaction")
	f.IntVar(&fl.poolSize, "pool-size", 0, "server connections per (database, user)")
	f.StringVar(&fl.auditLog, "audit-log", "", "audit log file, or - for stdout")
	f.StringVar(&fl.logLevel, "log-level", "", "debug, info, warn or error")
	f.StringVar(&fl.authType, "auth-type", "", "trust, password, md5 or scram-sha-256")
	f.StringVar(&fl.authFile, "auth-file", "", "users file (PgBouncer auth_file format)")
	return cmd
}

// runProxy runs the proxy until SIGINT (close at once) or SIGTERM (stop
// accepting, let clients finish up to shutdown_timeout).
func runProxy(ctx context.Context, st *settings, log zerolog.Logger) error {
	if ctx == nil {
		ctx = context.Background()
	}
	p := pooler.New(st.proxy, nil, log)
	if err := p.Listen(); err != nil {
		return &exitError{1, err}
	}
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(sigs)
	errc := make(chan error, 1)
	go func() { errc <- p.Serve(ctx) }()
	select {
	case err := <-errc:
		_ = p.Close()
		if err != nil {
			return &exitError{1, err}
		}
		return nil
	case sig := <-sigs:
		if sig == syscall.SIGTERM {
			log.Info().Int("clients", p.ClientCount()).Dur("timeout", st.shutdownTimeout).Msg("SIGTERM: draining clients")
			sctx, cancel := context.WithTimeout(ctx, st.shutdownTimeout)
			p.Shutdown(sctx)
			cancel()
		} else {
			log.Info().Int("clients", p.ClientCount()).Msg("SIGINT: closing now")
		}
		_ = p.Close()
		<-errc
		log.Info().Msg("proxy stopped")
		return nil
	}
}

var _ = time.Second
