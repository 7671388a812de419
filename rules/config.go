package rules

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Duration is a threshold duration in the config file: a Go duration string
// ("100ms", "2s") or a number of seconds (0.1), as the rest of pgaudit.toml
// writes durations. It encodes as the Go duration string.
type Duration time.Duration

// UnmarshalTOML implements the BurntSushi/toml Unmarshaler interface: it
// accepts strings and numbers (seconds).
func (d *Duration) UnmarshalTOML(v any) error {
	switch x := v.(type) {
	case string:
		return d.UnmarshalText([]byte(x))
	case int64:
		*d = Duration(time.Duration(x) * time.Second)
	case float64:
		*d = Duration(x * float64(time.Second))
	default:
		return fmt.Errorf("invalid duration %v: want a string such as \"100ms\" or a number of seconds", v)
	}
	return nil
}

// UnmarshalText parses a Go duration string or a number of seconds.
func (d *Duration) UnmarshalText(b []byte) error {
	s := strings.TrimSpace(string(b))
	v, err := time.ParseDuration(s)
	if err != nil {
		secs, err2 := strconv.ParseFloat(s, 64)
		if err2 != nil {
			return fmt.Errorf("invalid duration %q: %w", s, err)
		}
		v = time.Duration(secs * float64(time.Second))
	}
	*d = Duration(v)
	return nil
}

// MarshalText writes the Go duration string ("100ms").
func (d Duration) MarshalText() ([]byte, error) { return []byte(time.Duration(d).String()), nil }

// String returns the Go duration string.
func (d Duration) String() string { return time.Duration(d).String() }

// Common holds the settings every rule has. Nil pointers mean "not set":
// the rule's default applies.
type Common struct {
	// Enabled turns the rule off with false; default true.
	Enabled *bool `toml:"enabled" json:"enabled,omitempty"`
	// Severity overrides the rule's default severity ("info", "warning"
	// or "error").
	Severity *Severity `toml:"severity" json:"severity,omitempty"`
}

// IsEnabled reports whether the rule is on (Enabled unset or true).
func (c Common) IsEnabled() bool { return c.Enabled == nil || *c.Enabled }

// SeverityOr returns the configured severity, or def when none is set.
func (c Common) SeverityOr(def Severity) Severity {
	if c.Severity != nil {
		return *c.Severity
	}
	return def
}

// NPlusOneConfig configures the n-plus-one rule ([rules.n-plus-one]).
type NPlusOneConfig struct {
	Common
	// MinRepeats is the minimum run length and the minimum number of
	// distinct parameter sets in the run. Default 5; at least 2.
	MinRepeats int `toml:"min_repeats" json:"min_repeats,omitempty"`
	// MaxGap ties a run together outside a transaction or trace: every
	// gap between the end of one statement and the start of the next must
	// be below it. Default 100ms.
	MaxGap Duration `toml:"max_gap" json:"max_gap,omitempty"`
}

// SlowQueryConfig configures the slow-query rule ([rules.slow-query]).
type SlowQueryConfig struct {
	Common
	// P99Threshold: a shape fires when its p99 latency is at or above it.
	// Default 500ms.
	P99Threshold Duration `toml:"p99_threshold" json:"p99_threshold,omitempty"`
	// MinCalls is the number of calls a shape needs before its p99 is
	// trusted. Default 10.
	MinCalls int `toml:"min_calls" json:"min_calls,omitempty"`
}

// PoolSaturationConfig configures the pool-saturation rule
// ([rules.pool-saturation]).
type PoolSaturationConfig struct {
	Common
	// Utilization: a pool fires when the share of its servers held over
	// the window is at or above it (0..1). Default 0.8.
	Utilization float64 `toml:"utilization" json:"utilization,omitempty"`
	// P99Wait: a pool fires when clients' p99 time queued for a server
	// (behind busy servers; connect time excluded) over the window is
	// above it, and at least MinWaits acquisitions queued. Default 50ms.
	P99Wait Duration `toml:"p99_wait" json:"p99_wait,omitempty"`
	// MinWaits is the number of queued acquisitions in the window the
	// p99 wait needs before it is trusted. Default 20.
	MinWaits int64 `toml:"min_waits" json:"min_waits,omitempty"`
}

// SeqScanConfig configures the seq-scan rule ([rules.seq-scan]). The rule
// is evaluated by the EXPLAIN sampler.
type SeqScanConfig struct {
	Common
	// MinTableRows is the smallest estimated relation size (reltuples)
	// worth a finding. Default 10000.
	MinTableRows int64 `toml:"min_table_rows" json:"min_table_rows,omitempty"`
	// MaxSelectivity: the filter is selective when the estimated rows it
	// returns divided by the rows scanned is at most this (0..1). Default
	// 0.1.
	MaxSelectivity float64 `toml:"max_selectivity" json:"max_selectivity,omitempty"`
}

// MissingIndexConfig configures the missing-index rule
// ([rules.missing-index]). The rule is evaluated by the index advisor.
type MissingIndexConfig struct {
	Common
	// MinCostReduction is the share of plan cost a hypothetical index must
	// remove to be suggested (0..1). Default 0.5.
	MinCostReduction float64 `toml:"min_cost_reduction" json:"min_cost_reduction,omitempty"`
}

// TxnPoolingUnsafeConfig configures the txn-pooling-unsafe rule
// ([rules.txn-pooling-unsafe]). It has no thresholds.
type TxnPoolingUnsafeConfig struct {
	Common
}

// Ignore suppresses findings: an entry matches a finding when every
// non-empty field matches it, so {rule = "seq-scan", table = "audit_log"}
// ignores seq scans of audit_log only. At least one of ID, Rule,
// Fingerprint and Table must be set.
type Ignore struct {
	// ID matches the finding's stable id exactly.
	ID string `toml:"id" json:"id,omitempty"`
	// Rule matches the rule id.
	Rule string `toml:"rule" json:"rule,omitempty"`
	// Fingerprint matches the query fingerprint (16 hex digits; case and
	// leading zeros are not significant).
	Fingerprint string `toml:"fingerprint" json:"fingerprint,omitempty"`
	// Table matches the finding's table, with or without its schema:
	// "authors" matches "authors" and "public.authors"; "public.authors"
	// matches only that. Case-insensitive.
	Table string `toml:"table" json:"table,omitempty"`
	// Reason is free text for people reading the config.
	Reason string `toml:"reason" json:"reason,omitempty"`
}

// Config is the rules configuration: the [rules] table of pgaudit.toml and
// its [rules.<rule-id>] sub-tables, plus [[rules.ignore]] entries.
//
// The zero value means "every rule on, with its defaults": unset fields
// (zero numbers, nil pointers) take the defaults in WithDefaults. Decode the
// file into a zero Config (or into DefaultConfig()), then call Validate.
type Config struct {
	// NPlusOne is [rules.n-plus-one].
	NPlusOne NPlusOneConfig `toml:"n-plus-one" json:"n-plus-one"`
	// SlowQuery is [rules.slow-query].
	SlowQuery SlowQueryConfig `toml:"slow-query" json:"slow-query"`
	// PoolSaturation is [rules.pool-saturation].
	PoolSaturation PoolSaturationConfig `toml:"pool-saturation" json:"pool-saturation"`
	// SeqScan is [rules.seq-scan].
	SeqScan SeqScanConfig `toml:"seq-scan" json:"seq-scan"`
	// MissingIndex is [rules.missing-index].
	MissingIndex MissingIndexConfig `toml:"missing-index" json:"missing-index"`
	// TxnPoolingUnsafe is [rules.txn-pooling-unsafe].
	TxnPoolingUnsafe TxnPoolingUnsafeConfig `toml:"txn-pooling-unsafe" json:"txn-pooling-unsafe"`
	// CacheCandidate is [rules.cache-candidate].
	CacheCandidate CacheCandidateConfig `toml:"cache-candidate" json:"cache-candidate"`
	// Ignore lists suppressions by id, rule, fingerprint and table.
	Ignore []Ignore `toml:"ignore" json:"ignore,omitempty"`
}

// Defaults of the thresholds, applied by WithDefaults and by the evaluators
// to unset (zero) fields.
const (
	DefaultNPlusOneMinRepeats        = 5
	DefaultNPlusOneMaxGap            = 100 * time.Millisecond
	DefaultSlowQueryP99              = 500 * time.Millisecond
	DefaultSlowQueryMinCalls         = 10
	DefaultPoolUtilization           = 0.8
	DefaultPoolP99Wait               = 50 * time.Millisecond
	DefaultPoolMinWaits              = 20
	DefaultSeqScanMinTableRows       = 10000
	DefaultSeqScanMaxSelectivity     = 0.1
	DefaultMissingIndexCostReduction = 0.5
)

// DefaultConfig returns a Config with every threshold at its default and
// every rule enabled.
func DefaultConfig() Config {
	return Config{}.WithDefaults()
}

// WithDefaults returns a copy of c with every unset threshold (zero) set to
// its default. Enabled and Severity stay as they are (nil means default).
// The Ignore slice is shared with c.
func (c Config) WithDefaults() Config {
	if c.NPlusOne.MinRepeats == 0 {
		c.NPlusOne.MinRepeats = DefaultNPlusOneMinRepeats
	}
	if c.NPlusOne.MaxGap == 0 {
		c.NPlusOne.MaxGap = Duration(DefaultNPlusOneMaxGap)
	}
	if c.SlowQuery.P99Threshold == 0 {
		c.SlowQuery.P99Threshold = Duration(DefaultSlowQueryP99)
	}
	if c.SlowQuery.MinCalls == 0 {
		c.SlowQuery.MinCalls = DefaultSlowQueryMinCalls
	}
	if c.PoolSaturation.Utilization == 0 {
		c.PoolSaturation.Utilization = DefaultPoolUtilization
	}
	if c.PoolSaturation.P99Wait == 0 {
		c.PoolSaturation.P99Wait = Duration(DefaultPoolP99Wait)
	}
	if c.PoolSaturation.MinWaits == 0 {
		c.PoolSaturation.MinWaits = DefaultPoolMinWaits
	}
	if c.SeqScan.MinTableRows == 0 {
		c.SeqScan.MinTableRows = DefaultSeqScanMinTableRows
	}
	if c.SeqScan.MaxSelectivity == 0 {
		c.SeqScan.MaxSelectivity = DefaultSeqScanMaxSelectivity
	}
	if c.MissingIndex.MinCostReduction == 0 {
		c.MissingIndex.MinCostReduction = DefaultMissingIndexCostReduction
	}
	c.CacheCandidate = c.CacheCandidate.withDefaults()
	return c
}

// Validate reports every out-of-range threshold and malformed ignore entry,
// joined into one error; nil when c is usable. Zero thresholds are valid
// (they mean the default).
func (c Config) Validate() error {
	var errs []error
	bad := func(rule, key string, format string, args ...any) {
		errs = append(errs, fmt.Errorf("rules.%s.%s: %s", rule, key, fmt.Sprintf(format, args...)))
	}
	if n := c.NPlusOne.MinRepeats; n != 0 && n < 2 {
		bad(IDNPlusOne, "min_repeats", "%d is below 2", n)
	}
	if c.NPlusOne.MaxGap < 0 {
		bad(IDNPlusOne, "max_gap", "negative duration %s", c.NPlusOne.MaxGap)
	}
	if c.SlowQuery.P99Threshold < 0 {
		bad(IDSlowQuery, "p99_threshold", "negative duration %s", c.SlowQuery.P99Threshold)
	}
	if c.SlowQuery.MinCalls < 0 {
		bad(IDSlowQuery, "min_calls", "%d is negative", c.SlowQuery.MinCalls)
	}
	if u := c.PoolSaturation.Utilization; u < 0 || u > 1 {
		bad(IDPoolSaturation, "utilization", "%g is outside 0..1", u)
	}
	if c.PoolSaturation.P99Wait < 0 {
		bad(IDPoolSaturation, "p99_wait", "negative duration %s", c.PoolSaturation.P99Wait)
	}
	if c.PoolSaturation.MinWaits < 0 {
		bad(IDPoolSaturation, "min_waits", "%d is negative", c.PoolSaturation.MinWaits)
	}
	if c.SeqScan.MinTableRows < 0 {
		bad(IDSeqScan, "min_table_rows", "%d is negative", c.SeqScan.MinTableRows)
	}
	if s := c.SeqScan.MaxSelectivity; s < 0 || s > 1 {
		bad(IDSeqScan, "max_selectivity", "%g is outside 0..1", s)
	}
	if r := c.MissingIndex.MinCostReduction; r < 0 || r >= 1 {
		bad(IDMissingIndex, "min_cost_reduction", "%g is outside 0..1 (exclusive of 1)", r)
	}
	c.CacheCandidate.validate(bad)
	for id, cm := range c.commons() {
		if cm.Severity != nil && (*cm.Severity < Info || *cm.Severity > Error) {
			bad(id, "severity", "invalid severity %d", int(*cm.Severity))
		}
	}
	for i, ig := range c.Ignore {
		if ig.ID == "" && ig.Rule == "" && ig.Fingerprint == "" && ig.Table == "" {
			errs = append(errs, fmt.Errorf("rules.ignore[%d]: set at least one of id, rule, fingerprint, table", i))
		}
		if ig.Rule != "" {
			if _, ok := LookupRule(ig.Rule); !ok {
				errs = append(errs, fmt.Errorf("rules.ignore[%d]: unknown rule %q (known: %s)", i, ig.Rule, strings.Join(RuleIDs(), ", ")))
			}
		}
		if ig.Fingerprint != "" {
			if _, err := strconv.ParseUint(ig.Fingerprint, 16, 64); err != nil || len(ig.Fingerprint) > 16 {
				errs = append(errs, fmt.Errorf("rules.ignore[%d]: fingerprint %q is not 1 to 16 hex digits", i, ig.Fingerprint))
			}
		}
	}
	return errors.Join(errs...)
}

// commons returns the Common settings of every rule by id.
func (c *Config) commons() map[string]*Common {
	return map[string]*Common{
		IDNPlusOne:         &c.NPlusOne.Common,
		IDSlowQuery:        &c.SlowQuery.Common,
		IDPoolSaturation:   &c.PoolSaturation.Common,
		IDSeqScan:          &c.SeqScan.Common,
		IDMissingIndex:     &c.MissingIndex.Common,
		IDTxnPoolingUnsafe: &c.TxnPoolingUnsafe.Common,
		IDCacheCandidate:   &c.CacheCandidate.Common,
	}
}

// Enabled reports whether rule id is on. Unknown ids are off.
func (c Config) Enabled(id string) bool {
	cm, ok := c.commons()[id]
	return ok && cm.IsEnabled()
}

// Severity returns the severity findings of rule id get: the configured
// override, else the rule's default (Info for unknown ids).
func (c Config) Severity(id string) Severity {
	r, _ := LookupRule(id)
	if cm, ok := c.commons()[id]; ok {
		return cm.SeverityOr(r.Severity)
	}
	return r.Severity
}

// Ignored returns the first ignore entry matching f, if any. It looks only
// at config entries; inline comments are checked with IgnoredInline.
func (c Config) Ignored(f *Finding) (Ignore, bool) {
	for _, ig := range c.Ignore {
		if ig.matches(f) {
			return ig, true
		}
	}
	return Ignore{}, false
}

func (ig Ignore) matches(f *Finding) bool {
	if ig.ID == "" && ig.Rule == "" && ig.Fingerprint == "" && ig.Table == "" {
		return false
	}
	if ig.ID != "" && ig.ID != f.ID {
		return false
	}
	if ig.Rule != "" && ig.Rule != f.Rule {
		return false
	}
	if ig.Fingerprint != "" && !sameFingerprint(ig.Fingerprint, f.Fingerprint) {
		return false
	}
	if ig.Table != "" && !sameTable(ig.Table, f.Table) {
		return false
	}
	return true
}

func sameFingerprint(a, b string) bool {
	if a == "" || b == "" {
		return false
	}
	x, err1 := strconv.ParseUint(a, 16, 64)
	y, err2 := strconv.ParseUint(b, 16, 64)
	if err1 != nil || err2 != nil {
		return strings.EqualFold(a, b)
	}
	return x == y
}

// sameTable compares a configured table with a finding's: an unqualified
// pattern matches any schema.
func sameTable(pattern, table string) bool {
	if table == "" {
		return false
	}
	pattern = strings.ToLower(strings.ReplaceAll(pattern, `"`, ""))
	table = strings.ToLower(strings.ReplaceAll(table, `"`, ""))
	if pattern == table {
		return true
	}
	if !strings.Contains(pattern, ".") {
		if i := strings.LastIndexByte(table, '.'); i >= 0 {
			return table[i+1:] == pattern
		}
	}
	return false
}

// IgnoredInline reports whether a statement's pgaudit:ignore directives
// (rule ids, "*" for every rule) suppress rule id.
func IgnoredInline(directives []string, id string) bool {
	for _, d := range directives {
		if d == "*" || d == id {
			return true
		}
	}
	return false
}

// Apply applies the configuration to a finding of rule f.Rule: it reports
// false when the rule is disabled or a config ignore entry matches, and
// otherwise replaces f.Severity with the configured override, if one is
// set (without one, the severity the evaluator chose stays). Inline
// pgaudit:ignore comments are not seen here: see IgnoredInline. The engine
// calls it for every finding, whichever evaluator built it.
func (c Config) Apply(f *Finding) bool {
	if f == nil || !c.Enabled(f.Rule) {
		return false
	}
	if cm, ok := c.commons()[f.Rule]; ok && cm.Severity != nil {
		f.Severity = *cm.Severity
	}
	_, ignored := c.Ignored(f)
	return !ignored
}
