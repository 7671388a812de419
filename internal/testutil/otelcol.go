package testutil

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"
)

// The test collector is internal/otelcol: its own Go module (the core otlp
// receiver and the contrib file exporter, at the release its go.mod pins),
// so the collector's dependencies stay out of pgaudit's go.mod. It is built
// from the Go module proxy once per machine and cached by the hash of its
// sources and the Go version.

var (
	collectorOnce sync.Once
	collectorBin  string
	collectorErr  error
)

// collectorDir is internal/otelcol of this source tree.
func collectorDir() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "otelcol")
}

// CollectorBinary returns the path of the test OpenTelemetry Collector,
// building it at the first call on this machine (minutes: it downloads and
// compiles the collector's modules; later runs reuse the binary cached
// under the user cache directory, keyed by the hash of internal/otelcol's
// go.mod, go.sum and main.go and the Go version, and work offline). The
// build runs with GOFLAGS="-mod=mod -buildvcs=false" and GOWORK=off. A failed build fails tb.
func CollectorBinary(tb testing.TB) string {
	tb.Helper()
	collectorOnce.Do(func() { collectorBin, collectorErr = buildCollector(tb) })
	if collectorErr != nil {
		tb.Fatalf("build the test OpenTelemetry Collector: %v", collectorErr)
	}
	return collectorBin
}

func buildCollector(tb testing.TB) (string, error) {
	dir := collectorDir()
	h := sha256.New()
	for _, name := range []string{"go.mod", "go.sum", "main.go"} {
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			return "", err
		}
		fmt.Fprintf(h, "%s %d\n", name, len(b))
		h.Write(b)
	}
	fmt.Fprintf(h, "%s %s/%s\n", runtime.Version(), runtime.GOOS, runtime.GOARCH)
	key := hex.EncodeToString(h.Sum(nil))[:16]
	cache, err := os.UserCacheDir()
	if err != nil {
		cache = os.TempDir()
	}
	outDir := filepath.Join(cache, "pgaudit-otelcol", key)
	bin := filepath.Join(outDir, "otelcol")
	if _, err := os.Stat(bin); err == nil {
		return bin, nil
	}
	if err := os.MkdirAll(outDir, 0o755); err != nil {
		return "", err
	}
	// Test binaries of several packages may build at once: one builds,
	// the others wait for it.
	lock, err := os.OpenFile(filepath.Join(outDir, "build.lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return "", err
	}
	defer lock.Close()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		return "", fmt.Errorf("lock %s: %w", lock.Name(), err)
	}
	defer func() { _ = syscall.Flock(int(lock.Fd()), syscall.LOCK_UN) }()
	if _, err := os.Stat(bin); err == nil {
		return bin, nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	tmp := bin + ".tmp"
	start := time.Now()
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-o", tmp, ".")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GOFLAGS=-mod=mod -buildvcs=false", "GOWORK=off", "CGO_ENABLED=0")
	out, err := cmd.CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("go build in %s: %w\n%s", dir, err, Tail(string(out), 4000))
	}
	tb.Logf("built the test OpenTelemetry Collector in %v (cached at %s)", time.Since(start).Round(time.Second), bin)
	return bin, os.Rename(tmp, bin)
}

// Collector is a running test OpenTelemetry Collector: an OTLP/HTTP
// receiver on a loopback port whose logs go to a JSON-lines file (the
// contrib file exporter, OTLP JSON).
type Collector struct {
	// Endpoint is the OTLP/HTTP base URL ("http://127.0.0.1:PORT").
	Endpoint string
	// Out is the file exporter's output file.
	Out string

	cmd    *exec.Cmd
	stderr bytes.Buffer
	done   chan struct{}
	once   sync.Once
}

// StartCollector builds (once) and starts a collector on a free loopback
// port, waiting until its receiver accepts connections. It is killed when
// the test ends, unless Kill was called first.
func StartCollector(tb testing.TB) *Collector {
	tb.Helper()
	bin := CollectorBinary(tb)
	dir := tb.TempDir()
	port := freePort(tb)
	c := &Collector{
		Endpoint: "http://127.0.0.1:" + strconv.Itoa(port),
		Out:      filepath.Join(dir, "logs.jsonl"),
		done:     make(chan struct{}),
	}
	cfg := fmt.Sprintf(`receivers:
  otlp:
    protocols:
      http:
        endpoint: 127.0.0.1:%d
exporters:
  file:
    path: %s
    flush_interval: 50ms
service:
  telemetry:
    metrics:
      level: none
    logs:
      level: warn
  pipelines:
    logs:
      receivers: [otlp]
      exporters: [file]
`, port, c.Out)
	cfgPath := filepath.Join(dir, "collector.yaml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
		tb.Fatal(err)
	}
	c.cmd = exec.Command(bin, "--config="+cfgPath)
	c.cmd.Stdout = &c.stderr
	c.cmd.Stderr = &c.stderr
	if err := c.cmd.Start(); err != nil {
		tb.Fatalf("start collector: %v", err)
	}
	go func() { defer close(c.done); _ = c.cmd.Wait() }()
	tb.Cleanup(c.Kill)
	deadline := time.Now().Add(30 * time.Second)
	for {
		conn, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", port), time.Second)
		if err == nil {
			_ = conn.Close()
			break
		}
		select {
		case <-c.done:
			tb.Fatalf("collector exited at start:\n%s", Tail(c.stderr.String(), 4000))
		default:
		}
		if time.Now().After(deadline) {
			c.Kill()
			tb.Fatalf("collector not listening after 30s:\n%s", Tail(c.stderr.String(), 4000))
		}
		time.Sleep(20 * time.Millisecond)
	}
	return c
}

// Kill stops the collector at once (SIGKILL: nothing flushed, as a crash)
// and waits for it. Safe to call more than once.
func (c *Collector) Kill() {
	c.once.Do(func() {
		_ = c.cmd.Process.Kill()
		<-c.done
	})
}

// freePort returns a loopback TCP port that was free a moment ago.
func freePort(tb testing.TB) int {
	tb.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// LogRecord is one log record as the collector wrote it, its attribute
// values decoded (string, int64, float64, bool, []any, map[string]any).
type LogRecord struct {
	EventName    string
	Time         time.Time
	Severity     int
	SeverityText string
	Body         any
	Attributes   map[string]any
	// Resource holds the resource attributes.
	Resource map[string]any
	// TraceID and SpanID are hex, empty when the record has none.
	TraceID, SpanID string
}

// Records reads every log record the collector has written so far. A
// last line the exporter is still writing is ignored.
func (c *Collector) Records(tb testing.TB) []LogRecord {
	tb.Helper()
	b, err := os.ReadFile(c.Out)
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		tb.Fatal(err)
	}
	var out []LogRecord
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(nil, 64<<20)
	for sc.Scan() {
		var doc otlpLogsJSON
		if err := json.Unmarshal(sc.Bytes(), &doc); err != nil {
			continue // a partial last line
		}
		for _, rl := range doc.ResourceLogs {
			res := attrMap(rl.Resource.Attributes)
			for _, sl := range rl.ScopeLogs {
				for _, lr := range sl.LogRecords {
					ns, _ := strconv.ParseInt(lr.TimeUnixNano, 10, 64)
					out = append(out, LogRecord{
						EventName: lr.EventName, Time: time.Unix(0, ns), Severity: lr.SeverityNumber,
						SeverityText: lr.SeverityText, Body: anyValue(lr.Body),
						Attributes: attrMap(lr.Attributes), Resource: res,
						TraceID: lr.TraceID, SpanID: lr.SpanID,
					})
				}
			}
		}
	}
	return out
}

// otlpLogsJSON is the OTLP/JSON logs document the file exporter writes.
type otlpLogsJSON struct {
	ResourceLogs []struct {
		Resource struct {
			Attributes []otlpKV `json:"attributes"`
		} `json:"resource"`
		ScopeLogs []struct {
			LogRecords []struct {
				TimeUnixNano   string          `json:"timeUnixNano"`
				SeverityNumber int             `json:"severityNumber"`
				SeverityText   string          `json:"severityText"`
				Body           json.RawMessage `json:"body"`
				Attributes     []otlpKV        `json:"attributes"`
				TraceID        string          `json:"traceId"`
				SpanID         string          `json:"spanId"`
				EventName      string          `json:"eventName"`
			} `json:"logRecords"`
		} `json:"scopeLogs"`
	} `json:"resourceLogs"`
}

type otlpKV struct {
	Key   string          `json:"key"`
	Value json.RawMessage `json:"value"`
}

func attrMap(kvs []otlpKV) map[string]any {
	m := make(map[string]any, len(kvs))
	for _, kv := range kvs {
		m[kv.Key] = anyValue(kv.Value)
	}
	return m
}

// anyValue decodes an OTLP/JSON AnyValue.
func anyValue(raw json.RawMessage) any {
	if len(raw) == 0 {
		return nil
	}
	var v struct {
		StringValue *string      `json:"stringValue"`
		IntValue    *json.Number `json:"intValue"`
		DoubleValue *float64     `json:"doubleValue"`
		BoolValue   *bool        `json:"boolValue"`
		ArrayValue  *struct {
			Values []json.RawMessage `json:"values"`
		} `json:"arrayValue"`
		KvlistValue *struct {
			Values []otlpKV `json:"values"`
		} `json:"kvlistValue"`
	}
	if err := json.Unmarshal(raw, &v); err != nil {
		return nil
	}
	switch {
	case v.StringValue != nil:
		return *v.StringValue
	case v.IntValue != nil:
		i, _ := strconv.ParseInt(v.IntValue.String(), 10, 64)
		return i
	case v.DoubleValue != nil:
		return *v.DoubleValue
	case v.BoolValue != nil:
		return *v.BoolValue
	case v.ArrayValue != nil:
		out := make([]any, len(v.ArrayValue.Values))
		for i, el := range v.ArrayValue.Values {
			out[i] = anyValue(el)
		}
		return out
	case v.KvlistValue != nil:
		return attrMap(v.KvlistValue.Values)
	}
	return nil
}
