package main

import (
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/rs/zerolog"

	"github.com/pgaudit-proxy/pgaudit/internal/otlplog"
)

// TestOTLPLogsSettings checks the otlp_logs_* keys: the endpoint, the
// headers from a file or an environment variable (never echoed in an
// error), the queue size and the combinations that are refused.
func TestOTLPLogsSettings(t *testing.T) {
	dir := t.TempDir()
	headers := filepath.Join(dir, "otlp-headers")
	if err := os.WriteFile(headers, []byte("# tenant credentials\nAuthorization: Bearer s3cret-token\n\nX-Scope-OrgID: shop\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	bad := filepath.Join(dir, "bad-headers")
	if err := os.WriteFile(bad, []byte("Authorization Bearer s3cret-token\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PGAUDIT_TEST_OTLP_HEADERS", "authorization=Bearer%20s3cret-token,x-scope-orgid=shop")
	t.Setenv("PGAUDIT_TEST_OTLP_BAD", "authorization:s3cret-token")
	tests := []struct {
		name, section string
		wantErr       string // substring; "" for success
		headers       map[string]string
		queue         int
	}{
		{name: "off", section: ""},
		{name: "endpoint only", section: `otlp_logs_endpoint = "http://127.0.0.1:4318"`},
		{name: "headers file and queue", section: `otlp_logs_endpoint = "https://otel.example:4318"
otlp_logs_headers_file = "` + headers + `"
otlp_logs_queue = 100`,
			headers: map[string]string{"Authorization": "Bearer s3cret-token", "X-Scope-OrgID": "shop"}, queue: 100},
		{name: "headers env", section: `otlp_logs_endpoint = "http://127.0.0.1:4318"
otlp_logs_headers_env = "PGAUDIT_TEST_OTLP_HEADERS"`,
			headers: map[string]string{"authorization": "Bearer s3cret-token", "x-scope-orgid": "shop"}},
		{name: "bad header line", section: `otlp_logs_endpoint = "http://127.0.0.1:4318"
otlp_logs_headers_file = "` + bad + `"`, wantErr: "line 1"},
		{name: "bad header env", section: `otlp_logs_endpoint = "http://127.0.0.1:4318"
otlp_logs_headers_env = "PGAUDIT_TEST_OTLP_BAD"`, wantErr: "entry 1"},
		{name: "unset env", section: `otlp_logs_endpoint = "http://127.0.0.1:4318"
otlp_logs_headers_env = "PGAUDIT_TEST_OTLP_UNSET"`, wantErr: "not set"},
		{name: "both sources", section: `otlp_logs_endpoint = "http://127.0.0.1:4318"
otlp_logs_headers_file = "` + headers + `"
otlp_logs_headers_env = "PGAUDIT_TEST_OTLP_HEADERS"`, wantErr: "not both"},
		{name: "headers without endpoint", section: `otlp_logs_headers_file = "` + headers + `"`, wantErr: "need otlp_logs_endpoint"},
		{name: "no scheme", section: `otlp_logs_endpoint = "127.0.0.1:4318"`, wantErr: "want http://"},
		{name: "password in URL", section: `otlp_logs_endpoint = "http://u:s3cret-token@127.0.0.1:4318"`, wantErr: "credentials in the URL"},
		{name: "negative queue", section: `otlp_logs_endpoint = "http://127.0.0.1:4318"
otlp_logs_queue = -1`, wantErr: "negative"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st, err := loadConfig(t, tt.section)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error %v, want one containing %q", err, tt.wantErr)
				}
				if strings.Contains(err.Error(), "s3cret") {
					t.Errorf("error reveals a secret: %v", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			o := st.otlpLogs
			if tt.section == "" {
				if o != nil {
					t.Fatalf("OTLP logs on without otlp_logs_endpoint: %+v", o)
				}
				return
			}
			if o == nil {
				t.Fatal("OTLP logs off")
			}
			if !maps.Equal(o.Headers, tt.headers) || o.QueueSize != tt.queue {
				t.Errorf("headers %v queue %d, want %v %d", o.Headers, o.QueueSize, tt.headers, tt.queue)
			}
			if host, port, ok := o.Server("app"); !ok || host != "127.0.0.1" || port != 5432 {
				t.Errorf("server of database app = %q %d %v", host, port, ok)
			}
			if _, _, ok := o.Server("other"); ok {
				t.Error("server of an unknown database")
			}
			if st.auditorOptions(zerolog.Nop()).OTLPLogs != o {
				t.Error("auditor options do not carry the OTLP logs config")
			}
			rows := map[string]string{}
			for _, r := range otlpLogsSettingRows(st) {
				rows[r.Key] = r.Value
				if strings.Contains(r.Value, "s3cret") {
					t.Errorf("SHOW CONFIG row %s reveals a secret: %q", r.Key, r.Value)
				}
			}
			names := slices.Sorted(maps.Keys(tt.headers))
			wantQueue := tt.queue
			if wantQueue == 0 {
				wantQueue = otlplog.DefaultQueueSize
			}
			if rows["otlp_logs_endpoint"] != o.Endpoint || rows["otlp_logs_headers"] != strings.Join(names, ",") ||
				rows["otlp_logs_queue"] != strconv.Itoa(wantQueue) {
				t.Errorf("SHOW CONFIG rows %v", rows)
			}
		})
	}
}
