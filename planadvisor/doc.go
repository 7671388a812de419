// Package planadvisor plans the statements the analyzer has seen and
// advises on them: the EXPLAIN sampler (Sampler) picks the heaviest query
// shapes from analyzer.Stats, the Explainer runs plain EXPLAIN (FORMAT JSON),
// never ANALYZE, on its own small per-role connection pool inside a
// read-only, timed-out transaction, plan reading (Plan, SeqScans) finds
// sequential scans, and the index advisor proposes a CREATE INDEX
// CONCURRENTLY, validated with HypoPG where it is installed. It imports
// analyzer (for shapes and statistics); analyzer never imports it.
package planadvisor
