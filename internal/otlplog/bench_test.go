package otlplog

import (
	"io"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/pgaudit-proxy/pgaudit/internal/auditlog"
	"github.com/pgaudit-proxy/pgaudit/internal/event"
)

// BenchmarkMirrorStatement measures the exporter's whole cost per
// statement record: building the log record on the caller (an analyzer
// worker) and, on the batch processor's goroutine, encoding and posting it
// to a local HTTP server that accepts everything. It flushes every 2048
// records so that none is dropped (the queue holds 4096) and the time per
// op includes the export; it reports the records exported and dropped.
func BenchmarkMirrorStatement(b *testing.B) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "application/x-protobuf")
		w.WriteHeader(http.StatusOK)
	}))
	defer srv.Close()
	exp, err := New(Config{Endpoint: srv.URL, ServiceVersion: "bench",
		Server: func(string) (string, int, bool) { return "db.internal", 5432, true }})
	if err != nil {
		b.Fatal(err)
	}
	st := &auditlog.Statement{
		Event: &event.Event{Database: "shop", User: "app", ApplicationName: "api", ClientAddr: "10.1.2.3:5000",
			Start: time.Now(), Duration: 1500 * time.Microsecond, Command: "SELECT", Rows: 1, SessionID: 7,
			Protocol: event.ProtocolExtended, NumParams: 1, ParamHash: 0x1234},
		HasShape: true, Fingerprint: 0xabc, Query: "SELECT id, email, name FROM users WHERE email = $1",
	}
	h := auditlog.Header{Time: time.Now(), RunID: "run1"}
	b.ReportAllocs()
	b.ResetTimer()
	n := 0
	for b.Loop() {
		exp.MirrorStatement(h, st)
		if n++; n%2048 == 0 {
			if err := exp.ForceFlush(b.Context()); err != nil {
				b.Fatal(err)
			}
		}
	}
	b.StopTimer()
	if err := exp.Shutdown(b.Context()); err != nil {
		b.Fatal(err)
	}
	c := exp.Counters()
	b.ReportMetric(float64(c.Exported), "exported")
	b.ReportMetric(float64(c.Dropped), "dropped")
}
