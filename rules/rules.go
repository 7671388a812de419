// Package rules holds pgaudit's rules as data plus pure functions over facts
// the analyzer gathers: each rule has an id, a severity, a description,
// thresholds with defaults, and an evaluation that turns facts into a
// Finding with evidence and a suggestion a person can apply. The package
// does no I/O; the analyzer (proxy mode) and lint mode feed it the same
// facts, so a rule never knows where its events came from.
package rules

import (
	"fmt"
	"strings"
	"time"
)

// Severity orders findings; lint fails at or above a chosen severity.
type Severity int

const (
	// Info is worth knowing; it never fails a build by default.
	Info Severity = iota
	// Warning is a likely performance problem.
	Warning
	// Error is a problem that should block a change.
	Error
)

// String returns "info", "warning" or "error".
func (s Severity) String() string {
	switch s {
	case Info:
		return "info"
	case Warning:
		return "warning"
	case Error:
		return "error"
	}
	return fmt.Sprintf("severity(%d)", int(s))
}

// ParseSeverity parses "info", "warning" or "error" (case-insensitive).
func ParseSeverity(s string) (Severity, error) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "info":
		return Info, nil
	case "warning", "warn":
		return Warning, nil
	case "error":
		return Error, nil
	}
	return 0, fmt.Errorf("invalid severity %q: want info, warning or error", s)
}

// MarshalText encodes the severity name.
func (s Severity) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// UnmarshalText decodes a severity name.
func (s *Severity) UnmarshalText(b []byte) error {
	v, err := ParseSeverity(string(b))
	if err != nil {
		return err
	}
	*s = v
	return nil
}

// Rule ids.
const (
	IDNPlusOne         = "n-plus-one"
	IDSeqScan          = "seq-scan"
	IDMissingIndex     = "missing-index"
	IDPoolSaturation   = "pool-saturation"
	IDTxnPoolingUnsafe = "txn-pooling-unsafe"
	IDSlowQuery        = "slow-query"
	IDCacheCandidate   = "cache-candidate"
)

// Finding is one problem found, with the numbers that justify it. It is a
// plain value: copy it freely. ID is stable across runs (rule plus query
// fingerprint, plus the table for index findings), so baselines and ignores
// survive.
type Finding struct {
	ID          string   `json:"id"`
	Rule        string   `json:"rule"`
	Severity    Severity `json:"severity"`
	Fingerprint string   `json:"fingerprint,omitempty"`
	// Query is the normalized statement (never literal values).
	Query string `json:"query,omitempty"`
	// Message is one line a person reads first.
	Message string `json:"message"`
	// Evidence holds the measured numbers and facts behind the finding;
	// docs/rules.md documents the keys of each rule.
	Evidence map[string]any `json:"evidence,omitempty"`
	// Suggestion is the fix: a rewritten query shape, a CREATE INDEX
	// CONCURRENTLY statement, a pool setting.
	Suggestion string `json:"suggestion,omitempty"`
	// Confidence says how strong the evidence is ("high", or "medium" for
	// the weaker N+1 form used on Postgres logs without row counts).
	Confidence string `json:"confidence,omitempty"`
	Table      string `json:"table,omitempty"`

	Count     int64     `json:"count"`
	FirstSeen time.Time `json:"first_seen"`
	// LastSeen is when the condition was last observed true.
	LastSeen time.Time `json:"last_seen"`
	// WindowStart and WindowEnd bound the period the evidence numbers
	// cover (the latest occurrence's: a loop's span, a pool's sliding
	// minute, a shape's recent latency window); zero when unknown.
	WindowStart time.Time `json:"window_start,omitzero"`
	WindowEnd   time.Time `json:"window_end,omitzero"`
	// Status is StatusOpen while the condition holds, StatusResolved once
	// it is gone (see Store.Resolve); a new occurrence reopens it. Empty
	// means open.
	Status string `json:"status,omitempty"`
	// ResolvedAt and Resolution say when and why a finding was resolved
	// (zero and empty while open).
	ResolvedAt time.Time `json:"resolved_at,omitzero"`
	Resolution string    `json:"resolution,omitempty"`

	Database        string            `json:"database,omitempty"`
	ApplicationName string            `json:"application_name,omitempty"`
	ClientAddr      string            `json:"client_addr,omitempty"`
	TraceParent     string            `json:"traceparent,omitempty"`
	Tags            map[string]string `json:"tags,omitempty"`
}

// Finding statuses.
const (
	StatusOpen     = "open"
	StatusResolved = "resolved"
)

// Open reports whether f is open (Status empty or StatusOpen).
func (f *Finding) Open() bool { return f.Status != StatusResolved }

// MergeSeen combines two records of the same finding (same ID) from
// different sources — runs in audit logs, or instances of a fleet: counts
// add up, first and last seen widen to span both, and everything else
// (text, evidence, status) is the record last seen. Callers that merge
// concurrent sources decide status themselves (fleet: open if open
// anywhere). Neither argument is modified; the result shares their slices
// and maps, so Clone it before changing those.
func MergeSeen(a, b Finding) Finding {
	merged := b
	if a.LastSeen.After(b.LastSeen) {
		merged = a
	}
	merged.Count = a.Count + b.Count
	merged.FirstSeen = a.FirstSeen
	if merged.FirstSeen.IsZero() || (!b.FirstSeen.IsZero() && b.FirstSeen.Before(merged.FirstSeen)) {
		merged.FirstSeen = b.FirstSeen
	}
	merged.LastSeen = a.LastSeen
	if b.LastSeen.After(merged.LastSeen) {
		merged.LastSeen = b.LastSeen
	}
	return merged
}

// StableID builds a finding id from a rule id and the parts that identify
// the problem (fingerprint, table).
func StableID(rule string, parts ...string) string {
	id := rule
	for _, p := range parts {
		if p != "" {
			id += ":" + p
		}
	}
	return id
}
