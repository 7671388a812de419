package analyzer

import (
	"encoding/json"
	"fmt"

	"github.com/pgaudit-proxy/pgaudit/internal/auditlog"
)

// auditObserver writes the statement records of a pipeline's audit log
// (internal/auditlog), which knows nothing of shapes and annotations: it
// gets them as plain fields.
type auditObserver struct{ log *auditlog.Log }

// Observe writes a statement record for an analyzed event when the log's
// sampling selects it.
func (o auditObserver) Observe(a *Analyzed) {
	if o.log.Sampled(a.Event) {
		st := AuditStatement(a)
		o.log.WriteStatement(&st)
	}
}

// AuditStatement is the audit log's statement record for an analyzed event.
func AuditStatement(a *Analyzed) auditlog.Statement {
	st := auditlog.Statement{
		Event:       a.Event,
		TraceParent: a.TraceParent,
		Tags:        a.Annotations.Tags,
		Ignore:      a.Annotations.Ignore,
	}
	if a.Shape != nil {
		st.HasShape = true
		st.Fingerprint = a.Shape.Fingerprint
		st.Query = a.Shape.Normalized
		st.Fallback = a.Shape.Fallback
	}
	return st
}

// writeAuditStats writes snap to the audit log as a stats record, truncated
// to the log's StatsTopN shapes by total time (the rest folded into
// "other").
func writeAuditStats(l *auditlog.Log, snap *Snapshot, final bool) error {
	if snap == nil {
		return nil
	}
	t, err := snap.Truncate(ByTotalTime, l.StatsTopN())
	if err != nil {
		return fmt.Errorf("write stats record: %w", err)
	}
	return l.WriteStats(t, final)
}

// MergeAuditStats decodes and merges the per-run stats records of an audit
// log (auditlog.Summary.RunStats); nil when there are none.
func MergeAuditStats(runStats []json.RawMessage) (*Snapshot, error) {
	if len(runStats) == 0 {
		return nil, nil
	}
	snaps := make([]*Snapshot, 0, len(runStats))
	for i, raw := range runStats {
		var s Snapshot
		if err := json.Unmarshal(raw, &s); err != nil {
			return nil, fmt.Errorf("audit log stats record of run %d: %w", i+1, err)
		}
		snaps = append(snaps, &s)
	}
	merged, err := MergeSnapshots(snaps...)
	if err != nil {
		return nil, fmt.Errorf("merge audit log stats: %w", err)
	}
	return merged, nil
}
