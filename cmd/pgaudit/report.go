package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/pgaudit-proxy/pgaudit/report"
)

// reportCommand is `pgaudit report`: one self-contained HTML file from
// audit logs.
func reportCommand() *cobra.Command {
	var output, title string
	var top int
	cmd := &cobra.Command{
		Use:   "report [--output report.html] FILE...",
		Short: "Write a self-contained HTML report (charts, top query shapes, findings) from audit logs",
		Long: `Reads pgaudit audit logs (rotated files and .gz included, from one or
several proxies) and writes one HTML file with the charts and tables of the
live dashboard: throughput, latency percentiles, pool utilization and wait
time over time, the top query shapes with p50/p90/p99 (merged across
proxies through their latency sketches), and the findings with their fixes.
The file needs no network to open.`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runReport(cmd.OutOrStdout(), args, output, title, top)
		},
	}
	cmd.Flags().StringVarP(&output, "output", "o", "report.html", "HTML file to write, or - for standard output")
	cmd.Flags().StringVar(&title, "title", "", "page title (default \"pgaudit report\")")
	cmd.Flags().IntVar(&top, "top", 50, "query shapes listed")
	return cmd
}

// runReport builds the report from files and writes it to output (via a
// temporary file renamed into place).
func runReport(stdout io.Writer, files []string, output, title string, top int) error {
	inputs := make([]report.Input, len(files))
	for i, f := range files {
		if _, err := os.Stat(f); err != nil {
			return &exitError{2, err}
		}
		inputs[i] = report.FileInput(f)
	}
	rep, err := report.Build(inputs, report.Options{Title: title, Version: version, TopShapes: top})
	if errors.Is(err, report.ErrNotAuditLog) {
		return &exitError{2, err} // bad input, as lint reports it
	}
	if err != nil {
		return &exitError{1, err}
	}
	if output == "-" {
		w := bufio.NewWriter(stdout)
		if err := rep.WriteHTML(w); err != nil {
			return &exitError{1, err}
		}
		return w.Flush()
	}
	tmp, err := os.CreateTemp(filepath.Dir(output), ".pgaudit-report-*.html")
	if err != nil {
		return &exitError{1, err}
	}
	defer os.Remove(tmp.Name())
	w := bufio.NewWriter(tmp)
	err = rep.WriteHTML(w)
	if err == nil {
		err = w.Flush()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		_ = os.Chmod(tmp.Name(), 0o644)
		err = os.Rename(tmp.Name(), output)
	}
	if err != nil {
		return &exitError{1, fmt.Errorf("write %s: %w", output, err)}
	}
	s := rep.Summary
	fmt.Fprintf(stdout, "wrote %s: %d statement records, %d query shapes, %d findings from %d runs",
		output, s.Statements, len(rep.Stats.Shapes), len(rep.Dashboard.Findings), len(s.Runs))
	if s.BadLineCount > 0 {
		fmt.Fprintf(stdout, " (%d unusable lines skipped)", s.BadLineCount)
	}
	fmt.Fprintln(stdout)
	return nil
}
