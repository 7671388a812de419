// Package otlplog exports pgaudit's audit log records (statement, finding,
// pool and stats; docs/audit-log.md) as OpenTelemetry log records over
// OTLP/HTTP, with the OpenTelemetry Go SDK's batching log processor. The
// attributes follow the OpenTelemetry database semantic conventions
// (db.system.name, db.namespace, db.query.text, db.query.summary,
// db.response.status_code, ...); audit fields without a convention keep
// their audit log name under "pgaudit.". The mapping is documented in
// docs/audit-log.md.
//
// An Exporter is an auditlog.Mirror: the audit log hands it each record
// after writing it to the file, on an analyzer worker or timer. It never
// blocks there: a record that finds the bounded queue full (a slow or dead
// collector) is dropped and counted, and the file keeps every record.
package otlplog

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlplog/otlploghttp"
	"go.opentelemetry.io/otel/log"
	sdklog "go.opentelemetry.io/otel/sdk/log"
	"go.opentelemetry.io/otel/sdk/resource"

	"github.com/pgaudit-proxy/pgaudit/internal/auditlog"
)

// Config configures an Exporter.
type Config struct {
	// Endpoint is the collector's OTLP/HTTP base URL, e.g.
	// "http://127.0.0.1:4318" (http: plain text, https: TLS). Records are
	// posted to its path with "/v1/logs" appended, unless the path already
	// ends with it.
	Endpoint string
	// Headers are sent with every export request (an API key, a tenant).
	// They are secrets: never logged. When nil, the SDK reads
	// OTEL_EXPORTER_OTLP_LOGS_HEADERS / OTEL_EXPORTER_OTLP_HEADERS.
	Headers map[string]string
	// QueueSize bounds the records waiting for export; a record that
	// finds it full is dropped and counted. Default 4096.
	QueueSize int
	// BatchSize is the most records per export request. Default 512.
	BatchSize int
	// ExportInterval is how long a record may wait for a batch to fill.
	// Default 1s.
	ExportInterval time.Duration
	// ExportTimeout bounds one export request, retries included. Default
	// 10s.
	ExportTimeout time.Duration
	// ServiceVersion is the resource's service.version.
	ServiceVersion string
	// Server returns the upstream Postgres address of a database, for
	// server.address and server.port; nil or ok false leaves them out.
	Server func(database string) (host string, port int, ok bool)
	// Logger receives export failures (throttled; never headers). The zero
	// Logger discards.
	Logger zerolog.Logger
}

// DefaultQueueSize is Config.QueueSize when it is not set.
const DefaultQueueSize = 4096

const (
	defaultBatchSize      = 512
	defaultExportInterval = time.Second
	defaultExportTimeout  = 10 * time.Second
	scopeName             = "github.com/pgaudit-proxy/pgaudit"
)

// Event names of the exported log records.
const (
	EventStatement = "pgaudit.statement"
	EventFinding   = "pgaudit.finding"
	EventPool      = "pgaudit.pool"
	EventStats     = "pgaudit.stats.shape"
)

// Counters are an Exporter's cumulative record counts.
type Counters struct {
	// Exported records were accepted by the collector.
	Exported uint64
	// Failed records were sent but the export failed (collector down or
	// refusing, after retries).
	Failed uint64
	// Dropped records found the queue full and were never sent.
	Dropped uint64
	// Queued records wait for export now.
	Queued int64
}

// Exporter sends audit records to an OTLP/HTTP collector. Create it with
// New; its methods are safe for concurrent use. Shut it down once, after
// the audit log that mirrors into it is closed.
type Exporter struct {
	cfg      Config
	provider *sdklog.LoggerProvider
	logger   log.Logger

	// inflight counts records handed to the batch processor and not yet
	// taken for export; admission keeps it at most queueCap, so the
	// processor's own queue (of the same size) never overwrites a record
	// uncounted.
	inflight atomic.Int64
	queueCap int64
	exported atomic.Uint64
	failed   atomic.Uint64
	dropped  atomic.Uint64
	failures atomic.Uint64 // failed export requests, for log throttling
	closed   atomic.Bool
}

// New builds an Exporter for cfg. It does not connect: the first batch
// does, and a collector that is down costs dropped records, never an error
// here.
func New(cfg Config) (*Exporter, error) {
	if cfg.QueueSize <= 0 {
		cfg.QueueSize = DefaultQueueSize
	}
	if cfg.BatchSize <= 0 {
		cfg.BatchSize = defaultBatchSize
	}
	cfg.BatchSize = min(cfg.BatchSize, cfg.QueueSize)
	if cfg.ExportInterval <= 0 {
		cfg.ExportInterval = defaultExportInterval
	}
	if cfg.ExportTimeout <= 0 {
		cfg.ExportTimeout = defaultExportTimeout
	}
	opts, err := endpointOptions(cfg.Endpoint)
	if err != nil {
		return nil, err
	}
	if cfg.Headers != nil {
		opts = append(opts, otlploghttp.WithHeaders(cfg.Headers))
	}
	opts = append(opts,
		otlploghttp.WithTimeout(cfg.ExportTimeout),
		otlploghttp.WithRetry(otlploghttp.RetryConfig{
			Enabled:         true,
			InitialInterval: 500 * time.Millisecond,
			MaxInterval:     2 * time.Second,
			MaxElapsedTime:  cfg.ExportTimeout,
		}))
	exp, err := otlploghttp.New(context.Background(), opts...)
	if err != nil {
		return nil, fmt.Errorf("otlp logs exporter: %w", err)
	}
	e := &Exporter{cfg: cfg, queueCap: int64(cfg.QueueSize)}
	res := resource.NewSchemaless(
		attribute.String("service.name", "pgaudit"),
		attribute.String("service.version", cfg.ServiceVersion),
	)
	bp := sdklog.NewBatchProcessor(&countingExporter{e: e, next: exp},
		sdklog.WithMaxQueueSize(cfg.QueueSize),
		sdklog.WithExportMaxBatchSize(cfg.BatchSize),
		sdklog.WithExportInterval(cfg.ExportInterval),
		// The exporter's own timeout and retries bound a request; this
		// bounds the whole export call a little later.
		sdklog.WithExportTimeout(cfg.ExportTimeout+time.Second),
	)
	e.provider = sdklog.NewLoggerProvider(sdklog.WithResource(res), sdklog.WithProcessor(bp),
		// Every record is built here with distinct keys; the SDK's
		// deduplication (a map per record) cost 40% of a record's CPU
		// time (BenchmarkMirrorStatement).
		sdklog.WithAllowKeyDuplication())
	e.logger = e.provider.Logger(scopeName, log.WithInstrumentationVersion(cfg.ServiceVersion))
	return e, nil
}

// CheckEndpoint reports whether endpoint is a valid Config.Endpoint (an
// http or https URL with a host and no credentials).
func CheckEndpoint(endpoint string) error {
	_, err := endpointOptions(endpoint)
	return err
}

// endpointOptions turns an endpoint URL into exporter options.
func endpointOptions(endpoint string) ([]otlploghttp.Option, error) {
	u, err := url.Parse(endpoint)
	if err != nil {
		// url.Error repeats the text, which may hold a password.
		return nil, errors.New("otlp_logs_endpoint: not a URL: want http://host:port or https://host:port")
	}
	if u.Host == "" || (u.Scheme != "http" && u.Scheme != "https") {
		return nil, fmt.Errorf("otlp_logs_endpoint %q: want http://host:port or https://host:port", redactURL(u))
	}
	if u.User != nil {
		return nil, errors.New("otlp_logs_endpoint: credentials in the URL are not accepted; use otlp_logs_headers_file or otlp_logs_headers_env")
	}
	path := strings.TrimRight(u.Path, "/")
	if !strings.HasSuffix(path, "/v1/logs") {
		path += "/v1/logs"
	}
	opts := []otlploghttp.Option{otlploghttp.WithEndpoint(u.Host), otlploghttp.WithURLPath(path)}
	if u.Scheme == "http" {
		opts = append(opts, otlploghttp.WithInsecure())
	}
	return opts, nil
}

// redactURL prints u without user info or query (they may hold secrets).
func redactURL(u *url.URL) string {
	c := *u
	c.User, c.RawQuery = nil, ""
	return c.String()
}

// Counters returns the cumulative counts.
func (e *Exporter) Counters() Counters {
	return Counters{
		Exported: e.exported.Load(),
		Failed:   e.failed.Load(),
		Dropped:  e.dropped.Load(),
		// inflight passes the capacity for a moment while a record that
		// will be dropped is being admitted.
		Queued: min(max(e.inflight.Load(), 0), e.queueCap),
	}
}

// Shutdown exports what is queued (within ctx) and stops the exporter.
// Records mirrored afterwards are dropped and counted. Call it once.
func (e *Exporter) Shutdown(ctx context.Context) error {
	e.closed.Store(true)
	if err := e.provider.Shutdown(ctx); err != nil {
		return fmt.Errorf("otlp logs exporter shutdown: %w", err)
	}
	return nil
}

// ForceFlush exports what is queued now, within ctx.
func (e *Exporter) ForceFlush(ctx context.Context) error {
	if err := e.provider.ForceFlush(ctx); err != nil {
		return fmt.Errorf("otlp logs exporter flush: %w", err)
	}
	return nil
}

// emit queues r, or drops and counts it when the queue is full. It never
// blocks: the batch processor's enqueue only takes a short lock.
func (e *Exporter) emit(ctx context.Context, r *log.Record) {
	if e.closed.Load() {
		e.dropped.Add(1)
		return
	}
	if e.inflight.Add(1) > e.queueCap {
		e.inflight.Add(-1)
		e.dropped.Add(1)
		return
	}
	e.logger.Emit(ctx, *r)
}

// countingExporter counts what the batch processor exports and frees
// queue room as soon as a batch is taken.
type countingExporter struct {
	e    *Exporter
	next sdklog.Exporter
}

func (c *countingExporter) Export(ctx context.Context, records []sdklog.Record) error {
	if len(records) == 0 {
		return nil
	}
	n := len(records)
	c.e.inflight.Add(-int64(n))
	if err := c.next.Export(ctx, records); err != nil {
		c.e.failed.Add(uint64(n))
		if k := c.e.failures.Add(1); k <= 3 || k&(k-1) == 0 {
			c.e.cfg.Logger.Warn().Err(err).Int("records", n).Uint64("failed_exports", k).
				Msg("OTLP log export failed; records counted in pgaudit_otlp_log_records_failed_total")
		}
		// The failure is counted and logged here; returning it would only
		// send it to the OpenTelemetry global error handler (stderr).
		return nil
	}
	c.e.exported.Add(uint64(n))
	return nil
}

func (c *countingExporter) Shutdown(ctx context.Context) error   { return c.next.Shutdown(ctx) }
func (c *countingExporter) ForceFlush(ctx context.Context) error { return c.next.ForceFlush(ctx) }

var _ auditlog.Mirror = (*Exporter)(nil)

var (
	descExported = prometheus.NewDesc("pgaudit_otlp_log_records_exported_total",
		"Audit records exported as OTLP log records and accepted by the collector.", nil, nil)
	descFailed = prometheus.NewDesc("pgaudit_otlp_log_records_failed_total",
		"Audit records sent as OTLP log records whose export failed (collector down or refusing, after retries).", nil, nil)
	descDropped = prometheus.NewDesc("pgaudit_otlp_log_records_dropped_total",
		"Audit records not sent as OTLP log records because the export queue was full (slow or dead collector); the audit file still has them.", nil, nil)
	descQueued = prometheus.NewDesc("pgaudit_otlp_log_queue_records",
		"Audit records waiting in the OTLP log export queue.", nil, nil)
	descQueueCap = prometheus.NewDesc("pgaudit_otlp_log_queue_capacity",
		"Capacity of the OTLP log export queue (otlp_logs_queue).", nil, nil)
)

// Describe implements prometheus.Collector.
func (e *Exporter) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descExported, descFailed, descDropped, descQueued, descQueueCap} {
		ch <- d
	}
}

// Collect implements prometheus.Collector: the counters of Counters.
func (e *Exporter) Collect(ch chan<- prometheus.Metric) {
	c := e.Counters()
	ch <- prometheus.MustNewConstMetric(descExported, prometheus.CounterValue, float64(c.Exported))
	ch <- prometheus.MustNewConstMetric(descFailed, prometheus.CounterValue, float64(c.Failed))
	ch <- prometheus.MustNewConstMetric(descDropped, prometheus.CounterValue, float64(c.Dropped))
	ch <- prometheus.MustNewConstMetric(descQueued, prometheus.GaugeValue, float64(c.Queued))
	ch <- prometheus.MustNewConstMetric(descQueueCap, prometheus.GaugeValue, float64(e.queueCap))
}
