package rules

import (
	"fmt"
	"strconv"
	"time"
)

// SessionStateFacts describe one statement that needs a session, seen by a
// transaction-mode pool (the pooler's session-state detection).
type SessionStateFacts struct {
	// Feature is the pooler's word for it: "listen", "advisory_lock",
	// "temp_table", "with_hold" or "prepare".
	Feature string
	// Fingerprint and Query (normalized) identify the statement.
	Fingerprint string
	Query       string
	// Context of the statement.
	SessionID       uint64
	Database        string
	User            string
	ApplicationName string
	ClientAddr      string
	TraceParent     string
	At              time.Time
}

var featureAdvice = map[string]struct{ what, fix string }{
	"listen": {"LISTEN",
		"LISTEN needs its own session: connect the listener straight to Postgres or through a session-mode pool; in transaction mode notifications go to whichever client holds the server next, or are lost."},
	"advisory_lock": {"a session-level advisory lock",
		"Use pg_advisory_xact_lock / pg_try_advisory_xact_lock (released at transaction end) instead of pg_advisory_lock, or take the lock through a session-mode pool; in transaction mode the lock stays on a server other clients then use."},
	"temp_table": {"a temporary table",
		"Create the temporary table with ON COMMIT DROP and use it inside one transaction, or use a session-mode pool; in transaction mode the table lives on a server other clients then use."},
	"with_hold": {"a WITH HOLD cursor",
		"Declare the cursor without WITH HOLD and fetch from it inside one transaction, or use a session-mode pool."},
	"prepare": {"SQL PREPARE",
		"Use protocol-level prepared statements (your driver's default; pgaudit maps them in transaction mode) instead of SQL PREPARE/EXECUTE, or PREPARE, EXECUTE and DEALLOCATE inside one transaction."},
}

// EvaluateTxnPoolingUnsafe returns a txn-pooling-unsafe finding for one
// session-state statement, or nil when the rule is disabled. Its id is
// stable per statement fingerprint (per feature when the statement has no
// fingerprint); Count is 1 (one occurrence).
func EvaluateTxnPoolingUnsafe(f SessionStateFacts, cfg TxnPoolingUnsafeConfig) *Finding {
	if !cfg.IsEnabled() {
		return nil
	}
	adv, ok := featureAdvice[f.Feature]
	if !ok {
		adv.what = "session state (" + f.Feature + ")"
		adv.fix = "Keep the statement's session state inside one transaction, or use a session-mode pool for this client."
	}
	id := StableID(IDTxnPoolingUnsafe, f.Fingerprint)
	if f.Fingerprint == "" {
		id = StableID(IDTxnPoolingUnsafe, f.Feature)
	}
	ev := map[string]any{
		"feature":    f.Feature,
		"session_id": strconv.FormatUint(f.SessionID, 10),
	}
	if f.User != "" {
		ev["user"] = f.User
	}
	return &Finding{
		ID:              id,
		Rule:            IDTxnPoolingUnsafe,
		Severity:        cfg.SeverityOr(DefaultSeverity(IDTxnPoolingUnsafe)),
		Fingerprint:     f.Fingerprint,
		Query:           f.Query,
		Message:         fmt.Sprintf("%s runs through a transaction-mode pool: the state stays on a server connection that other clients share", adv.what),
		Evidence:        ev,
		Suggestion:      adv.fix,
		Count:           1,
		FirstSeen:       f.At,
		LastSeen:        f.At,
		WindowStart:     f.At,
		WindowEnd:       f.At,
		Database:        f.Database,
		ApplicationName: f.ApplicationName,
		ClientAddr:      f.ClientAddr,
		TraceParent:     f.TraceParent,
	}
}
