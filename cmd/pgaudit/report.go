package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/pgaudit-proxy/pgaudit/fleet"
	"github.com/pgaudit-proxy/pgaudit/report"
)

// reportFlags are pgaudit report's options besides the files.
type reportFlags struct {
	output, title, format string
	top                   int
	from                  []string
	allowPartial          bool
	timeout               time.Duration
	// Credentials for --from come from files or the environment, never
	// from the command line.
	tokenFile, user, passwordFile string
}

// reportCommand is `pgaudit report`: one self-contained HTML file (or a
// JSON fleet view) from audit logs and live instances.
func reportCommand() *cobra.Command {
	var rf reportFlags
	cmd := &cobra.Command{
		Use:   "report [--output report.html] [--from http://host:9930]... [FILE...]",
		Short: "Write a self-contained HTML report (charts, top query shapes, findings) from audit logs and live instances",
		Long: `Reads pgaudit audit logs (rotated files and .gz included, from one or
several proxies) and writes one HTML file with the charts and tables of the
live dashboard: throughput, latency percentiles, pool utilization and wait
time over time, the top query shapes with p50/p90/p99 (merged across
proxies through their latency sketches), and the findings with their fixes.
The file needs no network to open.

--from URL (repeatable) fetches a running instance's export
(URL/api/v1/export, see docs/export.md) and merges it: latency sketches bin
by bin, so fleet percentiles are exact to the sketch's 1 % relative error;
calls, rows and errors summed; findings merged by stable id. Each row says
how many instances contributed. An instance that cannot be fetched is an
error (exit 1) unless --allow-partial, which lists it as failed and goes on.
Admin credentials for the instances: --admin-token-file or
$PGAUDIT_ADMIN_TOKEN (bearer), or --admin-user with --admin-password-file
or $PGAUDIT_ADMIN_PASSWORD (basic).

--format json writes the merged view (sources, shapes with p50/p90/p99 and
instances, findings, pools) as JSON instead of HTML.`,
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) == 0 && len(rf.from) == 0 {
				return &exitError{2, errors.New("report: give audit log files, --from URLs, or both")}
			}
			return runReport(cmd.Context(), cmd.OutOrStdout(), cmd.ErrOrStderr(), args, rf)
		},
	}
	cmd.Flags().StringVarP(&rf.output, "output", "o", "", "file to write, or - for standard output (default report.html, or report.json with --format json)")
	cmd.Flags().StringVar(&rf.title, "title", "", "page title (default \"pgaudit report\")")
	cmd.Flags().IntVar(&rf.top, "top", 50, "query shapes listed")
	cmd.Flags().StringVar(&rf.format, "format", "html", "html or json")
	cmd.Flags().StringArrayVar(&rf.from, "from", nil, "admin URL of a live pgaudit instance (http://host:9930); repeat for each")
	cmd.Flags().BoolVar(&rf.allowPartial, "allow-partial", false, "report instances that cannot be fetched as failed and go on")
	cmd.Flags().DurationVar(&rf.timeout, "timeout", 10*time.Second, "time limit of each --from fetch")
	cmd.Flags().StringVar(&rf.tokenFile, "admin-token-file", "", "file holding the instances' admin_token (else $PGAUDIT_ADMIN_TOKEN)")
	cmd.Flags().StringVar(&rf.user, "admin-user", "", "admin_user for basic authentication (password from --admin-password-file or $PGAUDIT_ADMIN_PASSWORD)")
	cmd.Flags().StringVar(&rf.passwordFile, "admin-password-file", "", "file holding the admin_password")
	return cmd
}

// reportAuth reads the credentials for --from from files and the
// environment.
func reportAuth(rf reportFlags) (fleet.Auth, error) {
	token, err := secretFrom("--admin-token-file", rf.tokenFile, "PGAUDIT_ADMIN_TOKEN", "")
	if err != nil {
		return fleet.Auth{}, err
	}
	if token != "" {
		return fleet.Auth{Token: token}, nil
	}
	if rf.user == "" {
		if rf.passwordFile != "" {
			return fleet.Auth{}, errors.New("--admin-password-file needs --admin-user")
		}
		return fleet.Auth{}, nil
	}
	pw, err := secretFrom("--admin-password-file", rf.passwordFile, "PGAUDIT_ADMIN_PASSWORD", "")
	if err != nil {
		return fleet.Auth{}, err
	}
	if pw == "" {
		return fleet.Auth{}, errors.New("--admin-user needs a password: --admin-password-file or $PGAUDIT_ADMIN_PASSWORD")
	}
	return fleet.Auth{User: rf.user, Password: pw}, nil
}

// fetchInstances fetches every --from URL. Without allowPartial any
// failure is an error naming every URL that failed; with it, failures are
// written to stderr and kept as failed sources. No instance answering at
// all is an error either way when there are no files.
func fetchInstances(ctx context.Context, stderr io.Writer, rf reportFlags, haveFiles bool) ([]fleet.Source, error) {
	for _, u := range rf.from {
		if err := checkPeerURL(u, "--admin-token-file, $PGAUDIT_ADMIN_TOKEN or --admin-user with --admin-password-file"); err != nil {
			return nil, &exitError{2, fmt.Errorf("--from: %w", err)}
		}
	}
	auth, err := reportAuth(rf)
	if err != nil {
		return nil, &exitError{2, err}
	}
	cl := &fleet.Client{Auth: auth, Timeout: rf.timeout}
	srcs := cl.FetchAll(ctx, rf.from)
	var failed []string
	for _, s := range srcs {
		if s.Err != nil {
			failed = append(failed, s.Err.Error())
		}
	}
	if len(failed) == 0 {
		return srcs, nil
	}
	if !rf.allowPartial {
		return nil, &exitError{1, fmt.Errorf("report: %d of %d instances failed (--allow-partial reports without them):\n  %s", len(failed), len(srcs), strings.Join(failed, "\n  "))}
	}
	for _, f := range failed {
		fmt.Fprintf(stderr, "pgaudit report: instance failed, left out: %s\n", f)
	}
	if len(failed) == len(srcs) && !haveFiles {
		return nil, &exitError{1, errors.New("report: no instance answered")}
	}
	return srcs, nil
}

// runReport builds the report from files and instances and writes it to
// output (via a temporary file renamed into place).
func runReport(ctx context.Context, stdout, stderr io.Writer, files []string, rf reportFlags) error {
	if ctx == nil {
		ctx = context.Background()
	}
	if rf.format != "html" && rf.format != "json" {
		return &exitError{2, fmt.Errorf("--format %q: want html or json", rf.format)}
	}
	if rf.output == "" {
		rf.output = "report." + rf.format
	}
	inputs := make([]report.Input, len(files))
	for i, f := range files {
		if _, err := os.Stat(f); err != nil {
			return &exitError{2, err}
		}
		inputs[i] = report.FileInput(f)
	}
	var srcs []fleet.Source
	if len(rf.from) > 0 {
		var err error
		if srcs, err = fetchInstances(ctx, stderr, rf, len(files) > 0); err != nil {
			return err
		}
	}
	rep, err := report.Build(inputs, report.Options{Title: rf.title, Version: version, TopShapes: rf.top, Fleet: srcs})
	if errors.Is(err, report.ErrNotAuditLog) {
		return &exitError{2, err} // bad input, as lint reports it
	}
	if err != nil {
		return &exitError{1, err}
	}
	write := rep.WriteHTML
	if rf.format == "json" {
		view := rep.Fleet
		if view == nil {
			inst := fleet.Instance{Hostname: "audit logs", PgauditVersion: version}
			m, err := fleet.Merge([]fleet.Source{{Name: "audit logs", Doc: fleet.Export(inst, rep.Stats, rep.Dashboard.Findings, nil)}})
			if err != nil {
				return &exitError{1, err}
			}
			view = m.View(rf.top, time.Now())
		}
		write = func(w io.Writer) error {
			enc := json.NewEncoder(w)
			enc.SetIndent("", "  ")
			return enc.Encode(view)
		}
	}
	if rf.output == "-" {
		w := bufio.NewWriter(stdout)
		if err := write(w); err != nil {
			return &exitError{1, err}
		}
		return w.Flush()
	}
	tmp, err := os.CreateTemp(filepath.Dir(rf.output), ".pgaudit-report-*")
	if err != nil {
		return &exitError{1, err}
	}
	defer os.Remove(tmp.Name())
	w := bufio.NewWriter(tmp)
	err = write(w)
	if err == nil {
		err = w.Flush()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		_ = os.Chmod(tmp.Name(), 0o644)
		err = os.Rename(tmp.Name(), rf.output)
	}
	if err != nil {
		return &exitError{1, fmt.Errorf("write %s: %w", rf.output, err)}
	}
	s := rep.Summary
	fmt.Fprintf(stdout, "wrote %s: %d statement records, %d query shapes, %d findings from %d runs",
		rf.output, s.Statements, len(rep.Stats.Shapes), len(rep.Dashboard.Findings), len(s.Runs))
	if rep.Fleet != nil {
		fmt.Fprintf(stdout, " and %d instances (%d failed)", rep.Fleet.Instances-btoi(len(files) > 0), rep.Fleet.Failed)
	}
	if s.BadLineCount > 0 {
		fmt.Fprintf(stdout, " (%d unusable lines skipped)", s.BadLineCount)
	}
	fmt.Fprintln(stdout)
	return nil
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}
