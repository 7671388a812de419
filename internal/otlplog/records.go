package otlplog

import (
	"bytes"
	"context"
	"encoding/json"
	"maps"
	"slices"
	"strconv"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/log"
	"go.opentelemetry.io/otel/propagation"

	"github.com/pgaudit-proxy/pgaudit/internal/auditlog"
	"github.com/pgaudit-proxy/pgaudit/internal/event"
)

// Attribute keys of the OpenTelemetry semantic conventions used here.
const (
	attrDBSystem     = "db.system.name"
	attrDBNamespace  = "db.namespace"
	attrQueryText    = "db.query.text"
	attrQuerySummary = "db.query.summary"
	attrOperation    = "db.operation.name"
	attrCollection   = "db.collection.name"
	attrStatusCode   = "db.response.status_code"
	attrReturnedRows = "db.response.returned_rows"
	attrErrorType    = "error.type"
	attrServerAddr   = "server.address"
	attrServerPort   = "server.port"
	attrClientAddr   = "client.address"
	attrUserName     = "user.name"
	dbSystemPostgres = "postgresql"
)

var traceContext = propagation.TraceContext{}

// spanContext returns ctx carrying the span context of a W3C traceparent
// (the SDK copies it onto the log record), or ctx when there is none.
func spanContext(ctx context.Context, traceparent string) context.Context {
	if traceparent == "" {
		return ctx
	}
	return traceContext.Extract(ctx, propagation.MapCarrier{"traceparent": traceparent})
}

// newRecord starts a log record with the fields every record has.
func newRecord(name string, h auditlog.Header, sev log.Severity) log.Record {
	var r log.Record
	r.SetEventName(name)
	r.SetTimestamp(h.Time)
	r.SetObservedTimestamp(time.Now())
	r.SetSeverity(sev)
	r.SetSeverityText(severityText(sev))
	r.AddAttributes(attribute.String(attrDBSystem, dbSystemPostgres), attribute.String("pgaudit.run_id", h.RunID))
	return r
}

func severityText(s log.Severity) string {
	switch {
	case s >= log.SeverityError:
		return "ERROR"
	case s >= log.SeverityWarn:
		return "WARN"
	default:
		return "INFO"
	}
}

// addQuery adds db.query.text and what derives from it: summary,
// operation (unless op is given) and the collection (unless table is).
func addQuery(r *log.Record, query, op, table string) {
	if query == "" {
		if op != "" {
			r.AddAttributes(attribute.String(attrOperation, op))
		}
		if table != "" {
			r.AddAttributes(attribute.String(attrCollection, table))
		}
		return
	}
	summary, op, coll := querySummary(query, op)
	if table == "" {
		table = coll
	}
	r.AddAttributes(attribute.String(attrQueryText, query))
	if summary != "" {
		r.AddAttributes(attribute.String(attrQuerySummary, summary))
	}
	if op != "" {
		r.AddAttributes(attribute.String(attrOperation, op))
	}
	if table != "" {
		r.AddAttributes(attribute.String(attrCollection, table))
	}
}

// addServer adds server.address and server.port for database.
func (e *Exporter) addServer(r *log.Record, database string) {
	if e.cfg.Server == nil || database == "" {
		return
	}
	if host, port, ok := e.cfg.Server(database); ok {
		r.AddAttributes(attribute.String(attrServerAddr, host))
		if port > 0 {
			r.AddAttributes(attribute.Int(attrServerPort, port))
		}
	}
}

// MirrorStatement exports a statement record (event pgaudit.statement).
// It reads the normalized text only, never the statement's raw text or
// parameter values.
func (e *Exporter) MirrorStatement(h auditlog.Header, st *auditlog.Statement) {
	ev := st.Event
	sev := log.SeverityInfo
	if ev.SQLState != "" {
		sev = log.SeverityError
	}
	r := newRecord(EventStatement, h, sev)
	r.AddAttributes(
		attribute.String(attrDBNamespace, ev.Database),
		attribute.String(attrUserName, ev.User),
		attribute.String("pgaudit.kind", ev.Kind.String()),
		attribute.String("pgaudit.application_name", ev.ApplicationName),
		attribute.Int64("pgaudit.session_id", int64(ev.SessionID)),
		attribute.Int64("pgaudit.tx_seq", int64(ev.TxSeq)),
		attribute.Bool("pgaudit.in_transaction", ev.InTransaction),
		attribute.Int64("pgaudit.duration_us", ev.Duration.Microseconds()),
		attribute.Int64("pgaudit.wait_us", ev.Wait.Microseconds()),
		attribute.String("pgaudit.protocol", ev.Protocol.String()),
	)
	if ev.ClientAddr != "" {
		r.AddAttributes(attribute.String(attrClientAddr, ev.ClientAddr))
	}
	if !ev.Start.IsZero() {
		r.AddAttributes(attribute.String("pgaudit.start", ev.Start.UTC().Format(time.RFC3339Nano)))
	}
	if ev.Rows >= 0 {
		r.AddAttributes(attribute.Int64(attrReturnedRows, ev.Rows))
	}
	if ev.SQLState != "" {
		r.AddAttributes(attribute.String(attrStatusCode, ev.SQLState), attribute.String(attrErrorType, ev.SQLState))
	}
	query := ""
	if st.HasShape {
		query = st.Query
		var fp [16]byte
		r.AddAttributes(attribute.String("pgaudit.fingerprint", string(st.Fingerprint.AppendHex(fp[:0]))))
		if st.Fallback {
			r.AddAttributes(attribute.Bool("pgaudit.fallback", true))
		}
	}
	addQuery(&r, query, ev.Command, "")
	if ev.ParamHash != 0 {
		var b [16]byte
		r.AddAttributes(attribute.String("pgaudit.param_hash", string(event.Fingerprint(ev.ParamHash).AppendHex(b[:0]))))
	}
	if ev.NumParams != 0 {
		r.AddAttributes(attribute.Int("pgaudit.num_params", ev.NumParams))
	}
	if ev.Detail != "" {
		r.AddAttributes(attribute.String("pgaudit.detail", ev.Detail))
	}
	for _, k := range slices.Sorted(maps.Keys(st.Tags)) {
		r.AddAttributes(attribute.String("pgaudit.tags."+k, st.Tags[k]))
	}
	if len(st.Ignore) > 0 {
		vals := make([]attribute.Value, len(st.Ignore))
		for i, s := range st.Ignore {
			vals[i] = attribute.StringValue(s)
		}
		r.AddAttributes(attribute.Slice("pgaudit.ignore", vals...))
	}
	e.addServer(&r, ev.Database)
	if query != "" {
		r.SetBody(attribute.StringValue(query))
	} else {
		r.SetBody(attribute.StringValue(ev.Command))
	}
	e.emit(spanContext(context.Background(), st.TraceParent), &r)
}

// MirrorFinding exports a finding record (event pgaudit.finding).
func (e *Exporter) MirrorFinding(h auditlog.Header, body []byte) {
	obj, ok := decodeObject(body)
	if !ok {
		e.dropped.Add(1)
		return
	}
	sev := log.SeverityInfo
	switch str(obj, "severity") {
	case "warning":
		sev = log.SeverityWarn
	case "error":
		sev = log.SeverityError
	}
	r := newRecord(EventFinding, h, sev)
	database := str(obj, "database")
	if database != "" {
		r.AddAttributes(attribute.String(attrDBNamespace, database))
	}
	addQuery(&r, str(obj, "query"), "", str(obj, "table"))
	if v := str(obj, "client_addr"); v != "" {
		r.AddAttributes(attribute.String(attrClientAddr, v))
	}
	if v := str(obj, "fingerprint"); v != "" {
		r.AddAttributes(attribute.String("pgaudit.fingerprint", v))
	}
	if v := str(obj, "application_name"); v != "" {
		r.AddAttributes(attribute.String("pgaudit.application_name", v))
	}
	skip := []string{"database", "query", "table", "client_addr", "fingerprint", "application_name", "traceparent", "tags"}
	r.AddAttributes(flatten("pgaudit.finding.", obj, skip)...)
	if tags, ok := obj["tags"].(map[string]any); ok {
		r.AddAttributes(flatten("pgaudit.tags.", tags, nil)...)
	}
	e.addServer(&r, database)
	r.SetBody(attribute.StringValue(str(obj, "message")))
	e.emit(spanContext(context.Background(), str(obj, "traceparent")), &r)
}

// MirrorPool exports a pool record (event pgaudit.pool).
func (e *Exporter) MirrorPool(h auditlog.Header, body []byte) {
	obj, ok := decodeObject(body)
	if !ok {
		e.dropped.Add(1)
		return
	}
	r := newRecord(EventPool, h, log.SeverityInfo)
	database := str(obj, "database")
	r.AddAttributes(attribute.String(attrDBNamespace, database), attribute.String(attrUserName, str(obj, "user")))
	r.AddAttributes(flatten("pgaudit.pool.", obj, []string{"database", "user"})...)
	e.addServer(&r, database)
	r.SetBody(attribute.StringValue("pool " + database + "/" + str(obj, "user")))
	e.emit(context.Background(), &r)
}

// MirrorStats exports a stats record as one log record per shape (event
// pgaudit.stats.shape), the "other" bucket included with
// pgaudit.stats.other = true. Latency sketches and application lists stay
// in the file.
func (e *Exporter) MirrorStats(h auditlog.Header, seq uint64, final bool, body []byte) {
	var snap struct {
		Taken  string            `json:"taken"`
		Since  string            `json:"since"`
		Shapes []json.RawMessage `json:"shapes"`
		Other  json.RawMessage   `json:"other"`
	}
	if err := json.Unmarshal(body, &snap); err != nil {
		e.dropped.Add(1)
		return
	}
	shapes := snap.Shapes
	if len(snap.Other) > 0 && !bytes.Equal(snap.Other, []byte("null")) {
		shapes = append(shapes, snap.Other)
	}
	for i, raw := range shapes {
		obj, ok := decodeObject(raw)
		if !ok {
			e.dropped.Add(1)
			continue
		}
		r := newRecord(EventStats, h, log.SeverityInfo)
		r.AddAttributes(
			attribute.Int64("pgaudit.stats.seq", int64(seq)),
			attribute.Bool("pgaudit.stats.final", final),
			attribute.Int("pgaudit.stats.rank", i+1),
		)
		if snap.Since != "" {
			r.AddAttributes(attribute.String("pgaudit.stats.since", snap.Since))
		}
		other := len(snap.Other) > 0 && i == len(shapes)-1 && len(shapes) > len(snap.Shapes)
		if other {
			r.AddAttributes(attribute.Bool("pgaudit.stats.other", true))
		}
		addQuery(&r, str(obj, "query"), "", "")
		if v := fingerprintString(obj["fingerprint"]); v != "" {
			r.AddAttributes(attribute.String("pgaudit.fingerprint", v))
		}
		r.AddAttributes(flatten("pgaudit.stats.", obj, []string{"query", "fingerprint", "sketch", "apps"})...)
		if other {
			r.SetBody(attribute.StringValue("other shapes"))
		} else {
			r.SetBody(attribute.StringValue(str(obj, "query")))
		}
		e.emit(context.Background(), &r)
	}
}

// fingerprintString renders a stats shape's fingerprint (a JSON string in
// the audit log) as text.
func fingerprintString(v any) string {
	switch f := v.(type) {
	case string:
		return f
	case json.Number:
		return f.String()
	}
	return ""
}

// decodeObject decodes a JSON object keeping numbers exact.
func decodeObject(b []byte) (map[string]any, bool) {
	d := json.NewDecoder(bytes.NewReader(b))
	d.UseNumber()
	var m map[string]any
	if err := d.Decode(&m); err != nil || m == nil {
		return nil, false
	}
	return m, true
}

func str(m map[string]any, k string) string {
	s, _ := m[k].(string)
	return s
}

// flatten turns a decoded JSON object into attributes: prefix+key for
// scalars and arrays, nested objects joined with dots, keys in skip left
// out (at the top level), null values omitted.
func flatten(prefix string, m map[string]any, skip []string) []attribute.KeyValue {
	keys := make([]string, 0, len(m))
	for k := range m {
		if !slices.Contains(skip, k) {
			keys = append(keys, k)
		}
	}
	slices.Sort(keys)
	out := make([]attribute.KeyValue, 0, len(keys))
	for _, k := range keys {
		if sub, ok := m[k].(map[string]any); ok {
			out = append(out, flatten(prefix+k+".", sub, nil)...)
			continue
		}
		if v, ok := logValue(m[k]); ok {
			out = append(out, attribute.KeyValue{Key: attribute.Key(prefix + k), Value: v})
		}
	}
	return out
}

// logValue converts a decoded JSON value (numbers as json.Number).
func logValue(v any) (attribute.Value, bool) {
	switch x := v.(type) {
	case nil:
		return attribute.Value{}, false
	case string:
		return attribute.StringValue(x), true
	case bool:
		return attribute.BoolValue(x), true
	case json.Number:
		if i, err := strconv.ParseInt(x.String(), 10, 64); err == nil {
			return attribute.Int64Value(i), true
		}
		f, err := x.Float64()
		if err != nil {
			return attribute.StringValue(x.String()), true
		}
		return attribute.Float64Value(f), true
	case []any:
		vals := make([]attribute.Value, 0, len(x))
		for _, el := range x {
			if lv, ok := logValue(el); ok {
				vals = append(vals, lv)
			}
		}
		return attribute.SliceValue(vals...), true
	case map[string]any:
		keys := make([]string, 0, len(x))
		for k := range x {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		kvs := make([]attribute.KeyValue, 0, len(keys))
		for _, k := range keys {
			if lv, ok := logValue(x[k]); ok {
				kvs = append(kvs, attribute.KeyValue{Key: attribute.Key(k), Value: lv})
			}
		}
		return attribute.MapValue(kvs...), true
	}
	return attribute.Value{}, false
}
