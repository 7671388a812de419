package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"
	"github.com/spf13/cobra"

	"github.com/pgaudit-proxy/pgaudit/analyzer"
	"github.com/pgaudit-proxy/pgaudit/planadvisor"
	"github.com/pgaudit-proxy/pgaudit/querylog"
	"github.com/pgaudit-proxy/pgaudit/rules"
)

type lintFlags struct {
	configPath    string
	format        string
	prefix        string
	output        string
	failOn        string
	dsn           string
	baseline      string
	writeBaseline string
	logLevel      string
}

func lintCommand() *cobra.Command {
	var fl lintFlags
	cmd := &cobra.Command{
		Use:   "lint [flags] FILE...|-",
		Short: "Run the rules over query logs; exit 1 when a finding is at or above --fail-on",
		Long: `lint reads Postgres logs (stderr with a log_line_prefix, csvlog, jsonlog) or
pgaudit audit logs, rebuilds sessions and transactions, and runs the same rules
as the proxy. Exit codes: 0 no finding at or above --fail-on, 1 findings,
2 usage errors or unreadable input.`,
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) == 0 {
				return &exitError{2, errors.New("lint needs at least one log file, or - for standard input")}
			}
			if !cmd.Flags().Changed("output") && os.Getenv("GITHUB_ACTIONS") == "true" {
				fl.output = "github"
			}
			return runLint(cmd.Context(), fl, args, cmd.OutOrStdout(), os.Stderr)
		},
	}
	f := cmd.Flags()
	f.StringVar(&fl.configPath, "config", "", "pgaudit.toml ([rules] thresholds, enables and ignores)")
	f.StringVar(&fl.format, "format", "auto", "auto, stderr, csvlog, jsonlog or audit")
	f.StringVar(&fl.prefix, "log-line-prefix", "", "log_line_prefix of stderr logs when it is not one of the common ones")
	f.StringVar(&fl.output, "output", "text", "text, json, sarif or github")
	f.StringVar(&fl.failOn, "fail-on", "warning", "info, warning or error")
	f.StringVar(&fl.dsn, "dsn", "", "database with the schema, for the EXPLAIN rules (seq-scan, missing-index)")
	f.StringVar(&fl.baseline, "baseline", "", "accept the findings recorded in this file (from --write-baseline)")
	f.StringVar(&fl.writeBaseline, "write-baseline", "", "record the current findings in this file")
	f.StringVar(&fl.logLevel, "log-level", "warn", "log level of lint's own messages on stderr")
	return cmd
}

// baselineFile is what --write-baseline writes.
type baselineFile struct {
	Version  int             `json:"version"`
	Created  time.Time       `json:"created"`
	Findings []baselineEntry `json:"findings"`
}

type baselineEntry struct {
	ID    string `json:"id"`
	Rule  string `json:"rule"`
	Query string `json:"query,omitempty"`
}

func runLint(ctx context.Context, fl lintFlags, args []string, stdout, stderr io.Writer) error {
	if ctx == nil {
		ctx = context.Background()
	}
	failOn, err := rules.ParseSeverity(fl.failOn)
	if err != nil {
		return &exitError{2, err}
	}
	format, err := querylog.ParseFormat(fl.format)
	if err != nil {
		return &exitError{2, err}
	}
	switch fl.output {
	case "text", "json", "sarif", "github":
	default:
		return &exitError{2, fmt.Errorf("invalid --output %q: want text, json, sarif or github", fl.output)}
	}
	lvl, err := zerolog.ParseLevel(fl.logLevel)
	if err != nil {
		return &exitError{2, fmt.Errorf("invalid --log-level %q", fl.logLevel)}
	}
	// People read lint's stderr (CI logs): one readable line per message.
	log := zerolog.New(zerolog.ConsoleWriter{Out: stderr, NoColor: stderr != io.Writer(os.Stderr) || !isTerminal(os.Stderr), TimeFormat: "15:04:05"}).
		Level(lvl).With().Timestamp().Logger()
	ruleCfg := rules.DefaultConfig()
	if fl.configPath != "" {
		fc, err := readConfigFile(fl.configPath)
		if err != nil {
			return &exitError{2, err}
		}
		if ruleCfg, err = fc.rulesConfig(); err != nil {
			return &exitError{2, fmt.Errorf("config %s [rules]: %w", fl.configPath, err)}
		}
	}
	var accepted map[string]bool
	if fl.baseline != "" {
		accepted, err = readBaseline(fl.baseline)
		if err != nil {
			return &exitError{2, err}
		}
	}
	opts := auditorOptions{
		Pipeline: analyzer.PipelineConfig{QueueSize: 1 << 16},
		Rules:    ruleCfg,
		Lint:     true,
		Log:      log,
	}
	if fl.dsn != "" {
		if !planadvisor.DSNNamesUser(fl.dsn) {
			return &exitError{2, fmt.Errorf("--dsn must name its user (postgres://USER@host/db or user=USER): pgaudit never connects as libpq's default user")}
		}
		// Every logged statement is planned as the --dsn role: point it at
		// a scratch or CI database, as an unprivileged role.
		opts.Explain = func(string, string) (explainTarget, bool) { return explainTarget{Key: "lint", DSN: fl.dsn}, true }
	}
	aud, err := startAuditor(ctx, opts)
	if err != nil {
		return &exitError{2, err}
	}
	stopped := false
	defer func() {
		if !stopped {
			aud.stop(log)
		}
	}()

	inputs := querylog.Files(args...)
	qopts := querylog.Options{Format: format, Prefix: fl.prefix}
	if isTerminal(os.Stderr) {
		qopts.Progress = progressBar(stderr)
	}
	var own atomic.Int64
	sum, err := querylog.Read(ctx, inputs, qopts, func(ev *analyzer.Event) {
		if ev.ApplicationName == planadvisor.ExplainApplicationName {
			own.Add(1) // pgaudit's own EXPLAINs (an earlier lint --dsn), read back
			return
		}
		_ = aud.pipeline.Submit(ctx, ev)
	})
	if qopts.Progress != nil {
		fmt.Fprint(stderr, "\r\x1b[K")
	}
	if err != nil {
		return &exitError{2, fmt.Errorf("reading logs: %w", err)}
	}
	// Every event must be in the statistics before the sampler picks
	// shapes from them.
	if err := aud.pipeline.Stop(ctx); err != nil {
		return &exitError{2, fmt.Errorf("analysis: %w", err)}
	}
	skipped := map[string]string{}
	if fl.dsn != "" {
		// Explain every shape worth it once: rounds until nothing is left.
		for i := 0; i < 20 && aud.explainNow(ctx) > 0; i++ {
		}
	} else {
		why := "needs --dsn pointing at a database with the schema (EXPLAIN-based)"
		skipped[rules.IDSeqScan] = why
		skipped[rules.IDMissingIndex] = why
	}
	skipped[rules.IDPoolSaturation] = "needs a live proxy's pool statistics"
	skipped[rules.IDCacheCandidate] = "needs result hashes, which only the proxy samples (logs record no results)"
	if sum.Format != querylog.FormatAudit {
		skipped[rules.IDTxnPoolingUnsafe] = "needs the session-state events of a transaction-mode proxy (pgaudit audit log)"
	}
	aud.stop(log)
	stopped = true

	all := aud.engine.Findings()
	sortFindings(all)
	report := &lintReport{Findings: all, Skipped: skipped, Inputs: args}
	report.Summary = lintSummary{
		Format: sum.Format.String(), Lines: sum.Lines, Statements: sum.Statements, Sessions: sum.Sessions,
		Skipped: sum.Skipped, Malformed: sum.MalformedCount, BySeverity: map[string]int{}, FailOn: failOn.String(),
		OwnSkipped: own.Load(),
	}
	for _, m := range sum.Malformed {
		report.Summary.MalformedAts = append(report.Summary.MalformedAts, fmt.Sprintf("%s:%d: %s", m.File, m.Line, m.Err))
	}
	for _, f := range all {
		if accepted[f.ID] {
			report.Summary.Baselined++
			continue
		}
		report.New = append(report.New, f)
		report.Summary.BySeverity[f.Severity.String()]++
		if f.Severity >= failOn {
			report.Summary.Failed = true
		}
	}
	if report.New == nil {
		report.New = []rules.Finding{}
	}
	if fl.writeBaseline != "" {
		if err := writeBaselineFile(fl.writeBaseline, all); err != nil {
			return &exitError{2, err}
		}
	}
	switch fl.output {
	case "json":
		err = writeJSON(stdout, report)
	case "sarif":
		err = writeSARIF(stdout, report)
	case "github":
		writeGitHub(stdout, report)
	default:
		writeText(stdout, report, isTerminal(os.Stdout) && stdout == os.Stdout)
	}
	if err != nil {
		return &exitError{2, err}
	}
	if report.Summary.Failed && fl.writeBaseline == "" {
		// Writing a baseline accepts the current findings: that run
		// succeeds (CI records the baseline, then compares against it).
		return &exitError{1, fmt.Errorf("%d finding(s) at or above %s", countAtOrAbove(report.New, failOn), failOn)}
	}
	return nil
}

func countAtOrAbove(fs []rules.Finding, sev rules.Severity) int {
	n := 0
	for _, f := range fs {
		if f.Severity >= sev {
			n++
		}
	}
	return n
}

func readBaseline(path string) (map[string]bool, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("baseline: %w", err)
	}
	var bf baselineFile
	if err := json.Unmarshal(b, &bf); err != nil {
		return nil, fmt.Errorf("baseline %s: %w", path, err)
	}
	if bf.Version != 1 {
		return nil, fmt.Errorf("baseline %s: unsupported version %d", path, bf.Version)
	}
	m := make(map[string]bool, len(bf.Findings))
	for _, e := range bf.Findings {
		m[e.ID] = true
	}
	return m, nil
}

func writeBaselineFile(path string, fs []rules.Finding) error {
	bf := baselineFile{Version: 1, Created: time.Now().UTC()}
	for _, f := range fs {
		bf.Findings = append(bf.Findings, baselineEntry{ID: f.ID, Rule: f.Rule, Query: f.Query})
	}
	sort.Slice(bf.Findings, func(i, j int) bool { return bf.Findings[i].ID < bf.Findings[j].ID })
	b, err := json.MarshalIndent(bf, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(path, append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("write baseline: %w", err)
	}
	return nil
}

func isTerminal(f *os.File) bool {
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}

// progressBar draws a one-line bar on a terminal.
func progressBar(w io.Writer) func(read, total int64) {
	last := time.Time{}
	return func(read, total int64) {
		if time.Since(last) < 100*time.Millisecond {
			return
		}
		last = time.Now()
		if total <= 0 {
			fmt.Fprintf(w, "\r%d MB read", read>>20)
			return
		}
		pct := float64(read) / float64(total)
		n := int(pct * 30)
		fmt.Fprintf(w, "\r[%s%s] %3.0f%% %d/%d MB", strings.Repeat("#", n), strings.Repeat(" ", 30-n), 100*pct, read>>20, total>>20)
	}
}
