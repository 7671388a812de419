package main

import (
	"bufio"
	"bytes"
	"fmt"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"

	"github.com/pgaudit-proxy/pgaudit/admin"
	"github.com/pgaudit-proxy/pgaudit/internal/otlplog"
)

// otlpLogsFile holds the [pgaudit] settings that export audit records as
// OpenTelemetry logs (docs/audit-log.md, "OpenTelemetry logs").
type otlpLogsFile struct {
	// OTLPLogsEndpoint is the collector's OTLP/HTTP base URL
	// ("http://127.0.0.1:4318"); empty: no export.
	OTLPLogsEndpoint string `toml:"otlp_logs_endpoint"`
	// OTLPLogsHeadersFile holds request headers, one "Name: value" a line
	// (an API key): kept out of the config file and the command line.
	OTLPLogsHeadersFile string `toml:"otlp_logs_headers_file"`
	// OTLPLogsHeadersEnv names an environment variable holding headers as
	// OTEL_EXPORTER_OTLP_HEADERS does ("name=value,name2=value2", values
	// URL-encoded). Without either, the OpenTelemetry SDK reads
	// OTEL_EXPORTER_OTLP_LOGS_HEADERS / OTEL_EXPORTER_OTLP_HEADERS.
	OTLPLogsHeadersEnv string `toml:"otlp_logs_headers_env"`
	// OTLPLogsQueue bounds the records waiting for export (default 4096);
	// records that find it full are dropped and counted.
	OTLPLogsQueue int `toml:"otlp_logs_queue"`
}

// applyOTLPLogs: audit records as OTLP logs (otlp_logs_*,
// --otlp-logs-endpoint).
func (l *settingsLoader) applyOTLPLogs() error {
	g := &l.g.otlpLogsFile
	endpoint := firstNonEmpty(l.fl.otlpLogsEndpoint, g.OTLPLogsEndpoint)
	if endpoint == "" {
		if g.OTLPLogsHeadersFile != "" || g.OTLPLogsHeadersEnv != "" || g.OTLPLogsQueue != 0 {
			return fmt.Errorf("otlp_logs_headers_file, otlp_logs_headers_env and otlp_logs_queue need otlp_logs_endpoint")
		}
		return nil
	}
	if g.OTLPLogsQueue < 0 {
		return fmt.Errorf("otlp_logs_queue: %d is negative", g.OTLPLogsQueue)
	}
	headers, err := otlpLogsHeaders(g.OTLPLogsHeadersFile, g.OTLPLogsHeadersEnv)
	if err != nil {
		return err
	}
	databases := l.cfg.Databases
	l.st.otlpLogs = &otlplog.Config{
		Endpoint:       endpoint,
		Headers:        headers,
		QueueSize:      g.OTLPLogsQueue,
		ServiceVersion: version,
		Server: func(database string) (string, int, bool) {
			db, ok := databases[database]
			if !ok || db.Upstream == nil {
				return "", 0, false
			}
			return db.Upstream.Host, int(db.Upstream.Port), true
		},
	}
	// Checked now, so a typo fails at start rather than at the first
	// export.
	return otlplog.CheckEndpoint(endpoint)
}

// otlpLogsSettingRows are the SHOW CONFIG rows of the otlp_logs_* keys:
// the header names, never their values.
func otlpLogsSettingRows(st *settings) []admin.Setting {
	endpoint, queue, headers := "", otlplog.DefaultQueueSize, []string{}
	if o := st.otlpLogs; o != nil {
		endpoint = o.Endpoint
		if o.QueueSize > 0 {
			queue = o.QueueSize
		}
		for name := range o.Headers {
			headers = append(headers, name)
		}
		slices.Sort(headers)
	}
	return []admin.Setting{
		{Key: "otlp_logs_endpoint", Value: endpoint, Default: "", Changeable: "no"},
		{Key: "otlp_logs_headers", Value: strings.Join(headers, ","), Default: "", Changeable: "no"},
		{Key: "otlp_logs_queue", Value: strconv.Itoa(queue), Default: strconv.Itoa(otlplog.DefaultQueueSize), Changeable: "no"},
	}
}

// otlpLogsHeaders reads the export request headers from file (one
// "Name: value" a line; blank lines and # comments skipped) or from the
// environment variable env ("name=value,..." with URL-encoded values).
// Error messages name the line or entry, never a value. Nil: neither set.
func otlpLogsHeaders(file, env string) (map[string]string, error) {
	switch {
	case file != "" && env != "":
		return nil, fmt.Errorf("set otlp_logs_headers_file or otlp_logs_headers_env, not both")
	case file != "":
		b, err := os.ReadFile(file)
		if err != nil {
			return nil, fmt.Errorf("otlp_logs_headers_file: %w", err)
		}
		h := map[string]string{}
		sc := bufio.NewScanner(bytes.NewReader(b))
		for n := 1; sc.Scan(); n++ {
			line := strings.TrimSpace(sc.Text())
			if line == "" || strings.HasPrefix(line, "#") {
				continue
			}
			name, value, ok := strings.Cut(line, ":")
			name = strings.TrimSpace(name)
			if !ok || !validHeaderName(name) {
				return nil, fmt.Errorf("otlp_logs_headers_file %s line %d: want Name: value", file, n)
			}
			h[name] = strings.TrimSpace(value)
		}
		if err := sc.Err(); err != nil {
			return nil, fmt.Errorf("otlp_logs_headers_file: %w", err)
		}
		return h, nil
	case env != "":
		raw, ok := os.LookupEnv(env)
		if !ok {
			return nil, fmt.Errorf("otlp_logs_headers_env: variable %s is not set", env)
		}
		h := map[string]string{}
		for i, part := range strings.Split(raw, ",") {
			if strings.TrimSpace(part) == "" {
				continue
			}
			name, value, ok := strings.Cut(part, "=")
			name = strings.TrimSpace(name)
			v, err := url.PathUnescape(strings.TrimSpace(value))
			if !ok || !validHeaderName(name) || err != nil {
				return nil, fmt.Errorf("otlp_logs_headers_env %s entry %s: want name=value", env, strconv.Itoa(i+1))
			}
			h[name] = v
		}
		return h, nil
	}
	return nil, nil
}

// validHeaderName reports whether s is an HTTP header name (RFC 9110
// token).
func validHeaderName(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c <= ' ' || c >= 0x7f || strings.IndexByte(`"(),/:;<=>?@[\]{}`, c) >= 0 {
			return false
		}
	}
	return true
}
