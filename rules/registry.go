package rules

import "slices"

// Threshold documents one tunable of a rule: its key in the rule's
// [rules.<id>] table and its default as written in TOML.
type Threshold struct {
	// Key is the TOML key in [rules.<id>].
	Key string `json:"key"`
	// Default is the default value as written in TOML ("5", `"100ms"`).
	Default string `json:"default"`
	// Unit names what the value counts ("rows", "duration", "fraction").
	Unit string `json:"unit,omitempty"`
	// Description is one sentence for documentation and help output.
	Description string `json:"description"`
}

// EvidenceKey documents one key of a finding's Evidence map: its JSON type
// and unit. Keys ending in _ms are milliseconds (numbers, rounded to
// microseconds).
type EvidenceKey struct {
	// Key is the key in Finding.Evidence.
	Key string `json:"key"`
	// Type is the JSON type ("integer", "number", "string", "boolean",
	// "array of strings").
	Type string `json:"type"`
	// Unit is the unit of a number ("ms", "rows", "fraction"), if any.
	Unit string `json:"unit,omitempty"`
	// Description is one sentence for documentation.
	Description string `json:"description"`
}

// Rule is a rule's metadata: what docs/rules.md, `pgaudit lint` (SARIF rule
// descriptors) and the admin interface show. It is data only; the
// evaluation functions live beside it (EvaluateNPlusOne and friends).
type Rule struct {
	// ID is the rule id (IDNPlusOne, ...).
	ID string `json:"id"`
	// Severity is the default severity of the rule's findings.
	Severity Severity `json:"default_severity"`
	// Description is one line saying what the rule detects.
	Description string `json:"description"`
	// Thresholds are the rule's tunables in [rules.<id>], besides enabled
	// and severity which every rule has.
	Thresholds []Threshold `json:"thresholds,omitempty"`
	// Evidence documents the keys of the rule's Finding.Evidence.
	Evidence []EvidenceKey `json:"evidence"`
}

var registry = []Rule{
	{
		ID:          IDNPlusOne,
		Severity:    Warning,
		Description: "The same query shape runs once per row of a preceding query in one session (N+1): load the rows in one query instead.",
		Thresholds: []Threshold{
			{Key: "min_repeats", Default: "5", Unit: "executions", Description: "Minimum run length, and minimum number of distinct parameter sets in the run."},
			{Key: "max_gap", Default: `"100ms"`, Unit: "duration", Description: "Outside one transaction or trace, every gap between consecutive statements of the run (and between the source and the run) must be below this."},
		},
		Evidence: []EvidenceKey{
			{Key: "repeats", Type: "integer", Unit: "executions", Description: "Length of the run of the repeated shape."},
			{Key: "distinct_params", Type: "integer", Unit: "parameter sets", Description: "Distinct parameter values (bind parameters, or literal values for the simple protocol) in the run."},
			{Key: "total_ms", Type: "number", Unit: "ms", Description: "Time the repeated statements took together."},
			{Key: "mean_ms", Type: "number", Unit: "ms", Description: "Mean time per repeated statement."},
			{Key: "span_ms", Type: "number", Unit: "ms", Description: "Wall time from the start of the first repeat to the end of the last."},
			{Key: "source_query", Type: "string", Description: "Normalized text of the statement whose rows drive the loop."},
			{Key: "source_fingerprint", Type: "string", Description: "Fingerprint of the source statement."},
			{Key: "source_rows", Type: "integer", Unit: "rows", Description: "Rows the source statement returned; -1 when the log does not record row counts."},
			{Key: "column", Type: "string", Description: "Column looked up by the repeated statement (from the parse tree), when found."},
			{Key: "rewrite", Type: "string", Description: "The repeated statement rewritten to fetch every row at once (= ANY($n)), when one can be built."},
			{Key: "form", Type: "string", Description: `How the run was tied to its source: "row-count" (source row count known, confidence high), "in-transaction" or "after-select" (no row counts, confidence medium).`},
			{Key: "tie", Type: "string", Description: `What holds the run together: "transaction", "trace" or "gap".`},
			{Key: "session_id", Type: "string", Description: "Client session the last detected run came from, as a decimal string (ids from logs exceed JSON's exact integers; matches the session_id of statement records)."},
		},
	},
	{
		ID:          IDSeqScan,
		Severity:    Warning,
		Description: "EXPLAIN shows a sequential scan with a selective filter over a large table.",
		Thresholds: []Threshold{
			{Key: "min_table_rows", Default: "10000", Unit: "rows", Description: "Smallest estimated table size (pg_class.reltuples) worth a finding."},
			{Key: "max_selectivity", Default: "0.1", Unit: "fraction", Description: "The filter counts as selective when estimated rows returned / rows scanned is at most this."},
		},
		Evidence: []EvidenceKey{
			{Key: "table", Type: "string", Description: "Scanned table (schema-qualified outside public)."},
			{Key: "schema", Type: "string", Description: "Schema of the table."},
			{Key: "filter", Type: "string", Description: "The Seq Scan node's Filter, as EXPLAIN prints it."},
			{Key: "estimated_rows_scanned", Type: "number", Unit: "rows", Description: "Estimated rows the scan reads (pg_class.reltuples)."},
			{Key: "estimated_rows_returned", Type: "number", Unit: "rows", Description: "Estimated rows the filter keeps in total (Plan Rows; for a parallel scan scaled from per process to all processes)."},
			{Key: "estimated_rows_per_process", Type: "number", Unit: "rows", Description: "A parallel scan's Plan Rows as EXPLAIN prints it, per process (parallel scans only)."},
			{Key: "selectivity", Type: "number", Unit: "fraction", Description: "estimated_rows_returned / estimated_rows_scanned."},
			{Key: "scan_cost", Type: "number", Unit: "cost units", Description: "Total Cost of the scan node."},
			{Key: "plan_cost", Type: "number", Unit: "cost units", Description: "Total Cost of the whole plan."},
			{Key: "parallel", Type: "boolean", Description: "Whether the scan is a Parallel Seq Scan."},
			{Key: "generic_plan", Type: "boolean", Description: "Whether the plan was made without parameter values."},
			{Key: "calls", Type: "integer", Unit: "calls", Description: "How often the shape had run when it was explained."},
			{Key: "total_time_ms", Type: "number", Unit: "ms", Description: "Time the shape had taken altogether."},
			{Key: "mean_time_ms", Type: "number", Unit: "ms", Description: "Mean time per call."},
			{Key: "plan_excerpt", Type: "string", Description: "One-line rendering of the scan node, when available."},
		},
	},
	{
		ID:          IDMissingIndex,
		Severity:    Warning,
		Description: "An index on the scanned columns would cut the plan cost; validated with HypoPG where installed (unvalidated suggestions are info).",
		Thresholds: []Threshold{
			{Key: "min_cost_reduction", Default: "0.5", Unit: "fraction", Description: "Share of plan cost a hypothetical index must remove to be suggested."},
		},
		Evidence: []EvidenceKey{
			{Key: "table", Type: "string", Description: "Indexed table (schema-qualified outside public)."},
			{Key: "schema", Type: "string", Description: "Schema of the table."},
			{Key: "columns", Type: "array of strings", Description: "Index key columns in order."},
			{Key: "create_statement", Type: "string", Description: "The CREATE INDEX CONCURRENTLY statement (also the suggestion)."},
			{Key: "validated", Type: "boolean", Description: "True when HypoPG measured the plan with the hypothetical index."},
			{Key: "validation_note", Type: "string", Description: "Why the suggestion is unvalidated (unvalidated only)."},
			{Key: "cost_before", Type: "number", Unit: "cost units", Description: "Plan cost without the index."},
			{Key: "cost_after", Type: "number", Unit: "cost units", Description: "Plan cost with the hypothetical index (validated only)."},
			{Key: "cost_reduction", Type: "number", Unit: "fraction", Description: "1 - cost_after / cost_before (validated only)."},
			{Key: "table_rows", Type: "number", Unit: "rows", Description: "Estimated table size (pg_class.reltuples)."},
			{Key: "existing_indexes", Type: "integer", Unit: "indexes", Description: "Indexes the table already has."},
			{Key: "writes_per_s", Type: "number", Unit: "rows/s", Description: "Rows written (inserted + updated + deleted) on the table per second: each write must also update the new index. Measured between two readings of pg_stat_user_tables by this process at least 10 s apart (the last up to 10 minutes); before there are two, the counters' lifetime average when they cover at least an hour; absent otherwise (a bulk load is not a write rate)."},
			{Key: "write_rate_window_s", Type: "number", Unit: "s", Description: "The span writes_per_s was measured over."},
			{Key: "shape_calls_per_s", Type: "number", Unit: "calls/s", Description: "Executions per second of the shape (the statements that would use the index), between its first and last execution."},
			{Key: "rows_inserted", Type: "integer", Unit: "rows", Description: "pg_stat_user_tables.n_tup_ins."},
			{Key: "rows_updated", Type: "integer", Unit: "rows", Description: "pg_stat_user_tables.n_tup_upd."},
			{Key: "rows_deleted", Type: "integer", Unit: "rows", Description: "pg_stat_user_tables.n_tup_del."},
			{Key: "rows_read_seq", Type: "integer", Unit: "rows", Description: "pg_stat_user_tables.seq_tup_read."},
			{Key: "rows_fetched_idx", Type: "integer", Unit: "rows", Description: "pg_stat_user_tables.idx_tup_fetch."},
			{Key: "calls", Type: "integer", Unit: "calls", Description: "How often the shape had run."},
			{Key: "total_time_ms", Type: "number", Unit: "ms", Description: "Time the shape had taken altogether."},
			{Key: "mean_time_ms", Type: "number", Unit: "ms", Description: "Mean time per call."},
		},
	},
	{
		ID:          IDPoolSaturation,
		Severity:    Warning,
		Description: "A pool's servers are nearly all busy, or clients wait too long for one.",
		Thresholds: []Threshold{
			{Key: "utilization", Default: "0.8", Unit: "fraction", Description: "Fires when the share of pool capacity held over the window is at least this while clients queued for a server."},
			{Key: "p99_wait", Default: `"50ms"`, Unit: "duration", Description: "Fires when the p99 time clients queued for a server (connect time excluded) over the window is above this, with at least min_waits queued."},
			{Key: "min_waits", Default: "20", Unit: "acquisitions", Description: "Queued acquisitions in the window the p99 wait needs before it counts."},
		},
		Evidence: []EvidenceKey{
			{Key: "utilization", Type: "number", Unit: "fraction", Description: "Share of pool_size servers held by clients over the window (above 1 while the reserve pool is in use)."},
			{Key: "busy_servers", Type: "number", Unit: "servers", Description: "Mean servers held over the window (utilization × pool_size)."},
			{Key: "pool_size", Type: "integer", Unit: "servers", Description: "Configured pool size."},
			{Key: "suggested_pool_size", Type: "integer", Unit: "servers", Description: "Pool size that would bring utilization to 70% at the same load."},
			{Key: "p99_wait_ms", Type: "number", Unit: "ms", Description: "p99 time queued acquisitions waited behind busy servers in the window (never above max_wait_ms)."},
			{Key: "max_wait_ms", Type: "number", Unit: "ms", Description: "Longest time queued in the window."},
			{Key: "waits", Type: "integer", Unit: "acquisitions", Description: "Server acquisitions in the window that queued behind busy servers."},
			{Key: "acquires", Type: "integer", Unit: "acquisitions", Description: "Server acquisitions in the window."},
			{Key: "connects", Type: "integer", Unit: "connections", Description: "Server connections opened (or attempted) in the window."},
			{Key: "connect_p99_ms", Type: "number", Unit: "ms", Description: "p99 time opening a server connection took in the window (not counted as waiting)."},
			{Key: "connect_max_ms", Type: "number", Unit: "ms", Description: "Longest server connect in the window."},
			{Key: "clients_waiting", Type: "integer", Unit: "clients", Description: "Clients waiting for a server when the numbers were taken."},
			{Key: "clients_active", Type: "integer", Unit: "clients", Description: "Clients holding a server when the numbers were taken."},
			{Key: "pool_mode", Type: "string", Description: `"session" or "transaction".`},
			{Key: "window_s", Type: "number", Unit: "s", Description: "Time the figures cover: the last 60 s (less right after the pool started)."},
			{Key: "reason", Type: "string", Description: `Which threshold fired: "utilization", "p99_wait" or "utilization,p99_wait".`},
		},
	},
	{
		ID:          IDTxnPoolingUnsafe,
		Severity:    Error,
		Description: "A statement needs a session (LISTEN, session advisory lock, temp table, WITH HOLD cursor, SQL PREPARE) but runs through a transaction-mode pool.",
		Evidence: []EvidenceKey{
			{Key: "feature", Type: "string", Description: `The session feature: "listen", "advisory_lock", "temp_table", "with_hold" or "prepare".`},
			{Key: "user", Type: "string", Description: "Database user of the session."},
			{Key: "session_id", Type: "string", Description: "Client session of the latest occurrence, as a decimal string."},
		},
	},
	{
		ID:          IDSlowQuery,
		Severity:    Warning,
		Description: "A query shape's p99 latency is above the threshold.",
		Thresholds: []Threshold{
			{Key: "p99_threshold", Default: `"500ms"`, Unit: "duration", Description: "Fires when the shape's p99 latency is at or above this."},
			{Key: "min_calls", Default: "10", Unit: "calls", Description: "Calls a shape needs before its p99 is trusted."},
		},
		Evidence: []EvidenceKey{
			{Key: "calls", Type: "integer", Unit: "calls", Description: "Executions of the shape in the window (window_start to window_end)."},
			{Key: "total_calls", Type: "integer", Unit: "calls", Description: "Executions of the shape since the statistics began (the finding's count)."},
			{Key: "errors", Type: "integer", Unit: "calls", Description: "Executions that failed, since the statistics began."},
			{Key: "p50_ms", Type: "number", Unit: "ms", Description: "Median latency in the window."},
			{Key: "p90_ms", Type: "number", Unit: "ms", Description: "90th percentile latency in the window."},
			{Key: "p99_ms", Type: "number", Unit: "ms", Description: "99th percentile latency in the window (1% relative accuracy)."},
			{Key: "max_ms", Type: "number", Unit: "ms", Description: "Slowest execution in the window."},
			{Key: "mean_ms", Type: "number", Unit: "ms", Description: "Mean latency in the window."},
			{Key: "total_ms", Type: "number", Unit: "ms", Description: "Time spent in the shape in the window, summed over its executions."},
			{Key: "share", Type: "number", Unit: "fraction", Description: "The shape's share of all database time observed."},
			{Key: "rows_per_call", Type: "number", Unit: "rows", Description: "Mean rows per call."},
			{Key: "threshold_ms", Type: "number", Unit: "ms", Description: "The p99_threshold in force."},
		},
	},

	{
		ID:          IDCacheCandidate,
		Severity:    Info,
		Description: "A read shape runs again and again with the same parameter values and returns the same result from tables that are rarely written: a cache-aside layer would answer most calls (proxy only: it needs result hashes).",
		Thresholds: []Threshold{
			{Key: "min_calls", Default: "100", Unit: "calls", Description: "Executions of the shape in the window before it is judged."},
			{Key: "min_repeat_share", Default: "0.5", Unit: "fraction", Description: "Share of executions whose parameter values (keyed hash) were already seen in the window."},
			{Key: "min_same_result", Default: "0.95", Unit: "fraction", Description: "Share of repeats with the same row count, and of sampled repeats with the same result hash, as the previous execution with the same parameters."},
			{Key: "min_result_samples", Default: "2", Unit: "comparisons", Description: "Sampled result-hash comparisons (two sampled executions with the same parameters) needed."},
			{Key: "max_write_rate", Default: "0.1", Unit: "writes/s", Description: "Most statements per second writing rows to the tables read, over the window."},
			{Key: "min_hit_rate", Default: "0.5", Unit: "fraction", Description: "Simulated cache-aside hit rate with a 60s TTL."},
			{Key: "window", Default: `"10m"`, Unit: "duration", Description: "How long the facts accumulate before they start afresh."},
		},
		Evidence: []EvidenceKey{
			{Key: "calls", Type: "integer", Unit: "calls", Description: "Executions of the shape in the window (the finding's count)."},
			{Key: "repeat_share", Type: "number", Unit: "fraction", Description: "Share of executions whose parameter values were seen before in the window."},
			{Key: "distinct_params", Type: "integer", Unit: "parameter sets", Description: "Distinct parameter values tracked in the window (at most 4096 per shape)."},
			{Key: "same_rows_share", Type: "number", Unit: "fraction", Description: "Share of repeats that returned as many rows as the previous execution with the same parameters."},
			{Key: "result_samples", Type: "integer", Unit: "comparisons", Description: "Sampled result hashes compared with the previous sampled one of the same parameters."},
			{Key: "same_result_share", Type: "number", Unit: "fraction", Description: "Share of result_samples that were equal."},
			{Key: "tables", Type: "array of strings", Description: "Tables the shape reads (from the parse tree): a cache must be invalidated on writes to them."},
			{Key: "invalidating_writes", Type: "integer", Unit: "statements", Description: "Statements seen through the proxy that wrote rows to those tables in the window."},
			{Key: "writes_per_s", Type: "number", Unit: "writes/s", Description: "invalidating_writes per second of the window."},
			{Key: "hit_rate_1s", Type: "number", Unit: "fraction", Description: "Share of calls a cache-aside layer with a 1 s TTL (invalidated on every write to the tables) would have answered."},
			{Key: "hit_rate_10s", Type: "number", Unit: "fraction", Description: "The same with a 10 s TTL."},
			{Key: "hit_rate_60s", Type: "number", Unit: "fraction", Description: "The same with a 60 s TTL."},
			{Key: "saved_ms", Type: "number", Unit: "ms", Description: "Database time the 60 s cache would have saved (total_ms × hit_rate_60s)."},
			{Key: "total_ms", Type: "number", Unit: "ms", Description: "Time the executions in the window took together."},
			{Key: "window_s", Type: "number", Unit: "s", Description: "Time the figures cover: from the window's first execution of the shape to the evaluation."},
		},
	},
}

// Rules returns every rule's metadata in a fixed order (the order of
// docs/rules.md). The slice is a copy; its elements share their slices
// with the registry and must not be modified.
func Rules() []Rule { return slices.Clone(registry) }

// RuleIDs returns the id of every rule in the order of Rules.
func RuleIDs() []string {
	ids := make([]string, len(registry))
	for i, r := range registry {
		ids[i] = r.ID
	}
	return ids
}

// LookupRule returns the metadata of rule id.
func LookupRule(id string) (Rule, bool) {
	for _, r := range registry {
		if r.ID == id {
			return r, true
		}
	}
	return Rule{}, false
}

// DefaultSeverity returns rule id's default severity (Info for an unknown
// id).
func DefaultSeverity(id string) Severity {
	r, _ := LookupRule(id)
	return r.Severity
}
