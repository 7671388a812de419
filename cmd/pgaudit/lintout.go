package main

import (
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strings"

	"github.com/pgaudit-proxy/pgaudit/rules"
)

// lintReport is what every lint output format renders.
type lintReport struct {
	Findings []rules.Finding `json:"findings"`
	// New are the findings not in the baseline (all of them without one).
	New []rules.Finding `json:"new"`
	// Skipped names rules that could not run and why (for example the
	// EXPLAIN rules without --dsn).
	Skipped map[string]string `json:"skipped_rules,omitempty"`
	Summary lintSummary       `json:"summary"`
	// Inputs are the files read, for SARIF locations.
	Inputs []string `json:"inputs"`
}

type lintSummary struct {
	Format     string `json:"format"`
	Lines      int64  `json:"lines"`
	Statements int64  `json:"statements"`
	Sessions   int64  `json:"sessions"`
	Skipped    int64  `json:"lines_skipped"`
	Malformed  int64  `json:"lines_malformed"`
	// OwnSkipped counts statements of pgaudit's own EXPLAIN connections
	// (application_name pgaudit-explain) found in the input and skipped.
	OwnSkipped   int64          `json:"own_statements_skipped"`
	BySeverity   map[string]int `json:"findings_by_severity"`
	Baselined    int            `json:"baselined"`
	FailOn       string         `json:"fail_on"`
	Failed       bool           `json:"failed"`
	MalformedAts []string       `json:"malformed_examples,omitempty"`
}

// sortFindings orders findings by severity (highest first), then count.
func sortFindings(fs []rules.Finding) {
	sort.SliceStable(fs, func(i, j int) bool {
		if fs[i].Severity != fs[j].Severity {
			return fs[i].Severity > fs[j].Severity
		}
		if fs[i].Count != fs[j].Count {
			return fs[i].Count > fs[j].Count
		}
		return fs[i].ID < fs[j].ID
	})
}

// writeText renders findings grouped by severity, with evidence and fix.
// Colors are used only when color is true (stdout is a terminal).
func writeText(w io.Writer, r *lintReport, color bool) {
	writeFindings(w, r, color)
	for _, rule := range sortedKeysOf(r.Skipped) {
		fmt.Fprintf(w, "skipped rule %s: %s\n", rule, r.Skipped[rule])
	}
	s := r.Summary
	fmt.Fprintf(w, "%d lines read (%s), %d statements, %d sessions, findings: %d error, %d warning, %d info",
		s.Lines, s.Format, s.Statements, s.Sessions, s.BySeverity["error"], s.BySeverity["warning"], s.BySeverity["info"])
	if s.Baselined > 0 {
		fmt.Fprintf(w, " (%d more in the baseline)", s.Baselined)
	}
	fmt.Fprintf(w, ", %d lines skipped, %d malformed\n", s.Skipped, s.Malformed)
	for _, m := range s.MalformedAts {
		fmt.Fprintf(w, "  malformed: %s\n", m)
	}
}

// writeFindings renders r.New grouped by severity.
func writeFindings(w io.Writer, r *lintReport, color bool) {
	paint := func(code, s string) string {
		if !color {
			return s
		}
		return "\x1b[" + code + "m" + s + "\x1b[0m"
	}
	sevColor := map[rules.Severity]string{rules.Error: "1;31", rules.Warning: "1;33", rules.Info: "1;36"}
	for _, sev := range []rules.Severity{rules.Error, rules.Warning, rules.Info} {
		var group []rules.Finding
		for _, f := range r.New {
			if f.Severity == sev {
				group = append(group, f)
			}
		}
		if len(group) == 0 {
			continue
		}
		fmt.Fprintf(w, "%s (%d)\n", paint(sevColor[sev], strings.ToUpper(sev.String())), len(group))
		for _, f := range group {
			fmt.Fprintf(w, "  [%s] %s\n", f.Rule, f.Message)
			if f.Query != "" {
				fmt.Fprintf(w, "    query:      %s\n", oneLine(f.Query, 160))
			}
			if keys := sortedEvidenceKeys(f.Evidence); len(keys) > 0 {
				parts := make([]string, 0, len(keys))
				for _, k := range keys {
					parts = append(parts, fmt.Sprintf("%s=%v", k, formatEvidence(f.Evidence[k])))
				}
				fmt.Fprintf(w, "    evidence:   %s\n", oneLine(strings.Join(parts, " "), 400))
			}
			if f.Confidence != "" {
				fmt.Fprintf(w, "    confidence: %s\n", f.Confidence)
			}
			if loc := codeLocation(f); loc != "" {
				fmt.Fprintf(w, "    code:       %s\n", loc)
			}
			if f.Suggestion != "" {
				fmt.Fprintf(w, "    %s %s\n", paint("32", "fix:"), strings.ReplaceAll(f.Suggestion, "\n", "\n                "))
			}
			fmt.Fprintf(w, "    id:         %s (seen %d times)\n", f.ID, f.Count)
		}
		fmt.Fprintln(w)
	}
}

func sortedEvidenceKeys(m map[string]any) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

func formatEvidence(v any) string {
	switch x := v.(type) {
	case float64:
		return strings.TrimRight(strings.TrimRight(fmt.Sprintf("%.3f", x), "0"), ".")
	case string:
		return x
	}
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Sprint(v)
	}
	return string(b)
}

// codeLocation is where sqlcommenter tags say the statement came from.
func codeLocation(f rules.Finding) string {
	var parts []string
	for _, k := range []string{"file", "route", "controller", "action", "framework", "application"} {
		if v := f.Tags[k]; v != "" {
			parts = append(parts, k+"="+v)
		}
	}
	return strings.Join(parts, " ")
}

func writeJSON(w io.Writer, r *lintReport) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(r)
}

// writeGitHub prints workflow commands that GitHub Actions shows as
// annotations.
func writeGitHub(w io.Writer, r *lintReport) {
	for _, f := range r.New {
		level := "notice"
		switch f.Severity {
		case rules.Error:
			level = "error"
		case rules.Warning:
			level = "warning"
		}
		props := "title=" + escapeGitHubProperty("pgaudit "+f.Rule)
		if file := f.Tags["file"]; file != "" {
			path, line, _ := strings.Cut(file, ":")
			props = "file=" + escapeGitHubProperty(path) + "," + props
			if line != "" {
				props = "line=" + escapeGitHubProperty(line) + "," + props
			}
		}
		msg := f.Message
		if f.Query != "" {
			msg += "\nquery: " + oneLine(f.Query, 300)
		}
		if f.Suggestion != "" {
			msg += "\nfix: " + f.Suggestion
		}
		fmt.Fprintf(w, "::%s %s::%s\n", level, props, escapeGitHubData(msg))
	}
	s := r.Summary
	fmt.Fprintf(w, "pgaudit lint: %d statements, findings: %d error, %d warning, %d info\n",
		s.Statements, s.BySeverity["error"], s.BySeverity["warning"], s.BySeverity["info"])
}

func escapeGitHubData(s string) string {
	return strings.NewReplacer("%", "%25", "\r", "%0D", "\n", "%0A").Replace(s)
}

func escapeGitHubProperty(s string) string {
	return strings.NewReplacer("%", "%25", "\r", "%0D", "\n", "%0A", ":", "%3A", ",", "%2C").Replace(s)
}

// SARIF 2.1.0, the subset pgaudit fills.
type sarifLog struct {
	Schema  string     `json:"$schema"`
	Version string     `json:"version"`
	Runs    []sarifRun `json:"runs"`
}

type sarifRun struct {
	Tool    sarifTool     `json:"tool"`
	Results []sarifResult `json:"results"`
}

type sarifTool struct {
	Driver sarifDriver `json:"driver"`
}

type sarifDriver struct {
	Name           string      `json:"name"`
	Version        string      `json:"version"`
	InformationURI string      `json:"informationUri"`
	Rules          []sarifRule `json:"rules"`
}

type sarifRule struct {
	ID                   string          `json:"id"`
	Name                 string          `json:"name"`
	ShortDescription     sarifText       `json:"shortDescription"`
	FullDescription      sarifText       `json:"fullDescription"`
	Help                 sarifText       `json:"help"`
	DefaultConfiguration sarifRuleConfig `json:"defaultConfiguration"`
	Properties           map[string]any  `json:"properties,omitempty"`
}

type sarifRuleConfig struct {
	Level string `json:"level"`
}

type sarifText struct {
	Text string `json:"text"`
}

type sarifResult struct {
	RuleID              string            `json:"ruleId"`
	RuleIndex           int               `json:"ruleIndex"`
	Level               string            `json:"level"`
	Message             sarifText         `json:"message"`
	Locations           []sarifLocation   `json:"locations,omitempty"`
	PartialFingerprints map[string]string `json:"partialFingerprints"`
	Properties          map[string]any    `json:"properties,omitempty"`
}

type sarifLocation struct {
	PhysicalLocation sarifPhysical `json:"physicalLocation"`
}

type sarifPhysical struct {
	ArtifactLocation sarifArtifact `json:"artifactLocation"`
	Region           *sarifRegion  `json:"region,omitempty"`
}

type sarifArtifact struct {
	URI string `json:"uri"`
}

type sarifRegion struct {
	StartLine int `json:"startLine"`
}

func sarifLevel(s rules.Severity) string {
	switch s {
	case rules.Error:
		return "error"
	case rules.Warning:
		return "warning"
	}
	return "note"
}

// writeSARIF renders a SARIF 2.1.0 log with rule metadata and the stable
// finding id in partialFingerprints.
func writeSARIF(w io.Writer, r *lintReport) error {
	run := sarifRun{Tool: sarifTool{Driver: sarifDriver{Name: "pgaudit", Version: version, InformationURI: "https://github.com/pgaudit-proxy/pgaudit"}}, Results: []sarifResult{}}
	index := map[string]int{}
	for i, rule := range rules.Rules() {
		index[rule.ID] = i
		props := map[string]any{}
		if len(rule.Thresholds) > 0 {
			props["thresholds"] = rule.Thresholds
		}
		run.Tool.Driver.Rules = append(run.Tool.Driver.Rules, sarifRule{
			ID: rule.ID, Name: rule.ID,
			ShortDescription:     sarifText{rule.Description},
			FullDescription:      sarifText{rule.Description},
			Help:                 sarifText{"See docs/rules.md#" + rule.ID},
			DefaultConfiguration: sarifRuleConfig{Level: sarifLevel(rule.Severity)},
			Properties:           props,
		})
	}
	for _, f := range r.New {
		msg := f.Message
		if f.Suggestion != "" {
			msg += " Fix: " + f.Suggestion
		}
		res := sarifResult{
			RuleID: f.Rule, RuleIndex: index[f.Rule], Level: sarifLevel(f.Severity), Message: sarifText{msg},
			PartialFingerprints: map[string]string{"pgauditFindingId/v1": f.ID},
			Properties:          map[string]any{"evidence": f.Evidence, "query": f.Query, "count": f.Count},
		}
		if file := f.Tags["file"]; file != "" {
			path, line, _ := strings.Cut(file, ":")
			loc := sarifLocation{PhysicalLocation: sarifPhysical{ArtifactLocation: sarifArtifact{URI: path}}}
			if n := atoiOr(line, 0); n > 0 {
				loc.PhysicalLocation.Region = &sarifRegion{StartLine: n}
			}
			res.Locations = append(res.Locations, loc)
		} else if len(r.Inputs) > 0 && r.Inputs[0] != "-" {
			res.Locations = append(res.Locations, sarifLocation{PhysicalLocation: sarifPhysical{ArtifactLocation: sarifArtifact{URI: r.Inputs[0]}}})
		}
		run.Results = append(run.Results, res)
	}
	log := sarifLog{Schema: "https://json.schemastore.org/sarif-2.1.0.json", Version: "2.1.0", Runs: []sarifRun{run}}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(log)
}

func atoiOr(s string, def int) int {
	n := 0
	if s == "" {
		return def
	}
	for _, c := range s {
		if c < '0' || c > '9' {
			return def
		}
		n = n*10 + int(c-'0')
	}
	return n
}

func sortedKeysOf(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
