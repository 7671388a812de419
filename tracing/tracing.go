// Package tracing turns statements that carry a W3C traceparent (from a
// sqlcommenter comment) into OpenTelemetry spans in the application's own
// trace: one span for the statement, with a child span for the time it
// waited for a pooled server connection, so the pool's queueing shows up in
// the application's distributed traces.
package tracing

import (
	"context"
	"fmt"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"

	"github.com/pgaudit-proxy/pgaudit/internal/event"
)

// Statement is what a statement's spans are made of. It is filled from the
// analyzer's result by the caller (cmd/pgaudit wires Observer to the
// analysis pipeline), so this package depends on the event contract only,
// never on the analyzer.
type Statement struct {
	// Event is the executed statement.
	Event *event.Event
	// TraceParent is the W3C traceparent the statement carried (in the
	// event or in a sqlcommenter comment); "" means no spans.
	TraceParent string
	// Normalized is the statement's normalized text (no literal values) and
	// Fingerprint its shape; "" and 0 when unknown, and then no text is
	// attached to the span.
	Normalized  string
	Fingerprint event.Fingerprint
}

// Observer emits the spans of statements. It is safe for concurrent use,
// as pipeline workers require.
type Observer struct {
	tracer trace.Tracer
}

// New returns an Observer that creates spans with tp.
func New(tp trace.TracerProvider) *Observer {
	return &Observer{tracer: tp.Tracer("github.com/pgaudit-proxy/pgaudit")}
}

// Record creates the spans of one statement when it carries a valid
// traceparent; other events are ignored. Span times are the statement's
// measured times, not the time of the call.
func (o *Observer) Record(a Statement) {
	ev := a.Event
	if ev == nil || ev.Kind != event.KindStatement || a.TraceParent == "" {
		return
	}
	ctx := propagation.TraceContext{}.Extract(context.Background(), propagation.MapCarrier{"traceparent": a.TraceParent})
	if !trace.SpanContextFromContext(ctx).IsValid() {
		return
	}
	start := ev.Start
	name := "postgres"
	if ev.Command != "" {
		name = ev.Command
	}
	attrs := []attribute.KeyValue{
		attribute.String("db.system", "postgresql"),
		attribute.String("db.namespace", ev.Database),
		attribute.String("db.user", ev.User),
		attribute.Int64("pgaudit.session_id", int64(ev.SessionID)),
		attribute.Float64("pgaudit.wait_ms", float64(ev.Wait)/float64(time.Millisecond)),
	}
	if a.Normalized != "" {
		// Normalized text only: literal values never leave the proxy.
		attrs = append(attrs, attribute.String("db.query.text", a.Normalized),
			attribute.String("pgaudit.fingerprint", a.Fingerprint.String()))
	}
	if ev.Rows >= 0 {
		attrs = append(attrs, attribute.Int64("db.response.returned_rows", ev.Rows))
	}
	if ev.ApplicationName != "" {
		attrs = append(attrs, attribute.String("pgaudit.application_name", ev.ApplicationName))
	}
	ctx, span := o.tracer.Start(ctx, name, trace.WithTimestamp(start), trace.WithSpanKind(trace.SpanKindClient), trace.WithAttributes(attrs...))
	if ev.Wait > 0 {
		_, wait := o.tracer.Start(ctx, "pgaudit pool wait", trace.WithTimestamp(start),
			trace.WithAttributes(attribute.Float64("pgaudit.wait_ms", float64(ev.Wait)/float64(time.Millisecond))))
		wait.End(trace.WithTimestamp(start.Add(ev.Wait)))
	}
	if ev.SQLState != "" {
		span.SetAttributes(attribute.String("db.response.status_code", ev.SQLState))
		span.SetStatus(codes.Error, "SQLSTATE "+ev.SQLState)
	}
	span.End(trace.WithTimestamp(start.Add(ev.Duration)))
}

// StartOTLP returns a TracerProvider exporting to an OTLP/HTTP endpoint
// ("host:4318", plain HTTP when insecure) in batches, and its shutdown
// function, which flushes what is queued.
func StartOTLP(ctx context.Context, endpoint string, insecure bool, serviceVersion string) (*sdktrace.TracerProvider, func(context.Context) error, error) {
	opts := []otlptracehttp.Option{otlptracehttp.WithEndpoint(endpoint)}
	if insecure {
		opts = append(opts, otlptracehttp.WithInsecure())
	}
	exp, err := otlptracehttp.New(ctx, opts...)
	if err != nil {
		return nil, nil, fmt.Errorf("otlp exporter: %w", err)
	}
	res := resource.NewSchemaless(attribute.String("service.name", "pgaudit"), attribute.String("service.version", serviceVersion))
	tp := sdktrace.NewTracerProvider(sdktrace.WithBatcher(exp), sdktrace.WithResource(res))
	return tp, tp.Shutdown, nil
}
