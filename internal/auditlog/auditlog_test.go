package auditlog

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/pgaudit-proxy/pgaudit/internal/event"
	"github.com/pgaudit-proxy/pgaudit/internal/testutil"
)

// The records a pipeline writes (shapes, stats, annotations, the golden
// file and the read-back round trip) are tested in analyzer/audit_test.go;
// these tests cover the log itself with hand-made records.

func TestMain(m *testing.M) { testutil.Main(m) }

var t0 = time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)

func fixedClock() time.Time { return t0.Add(time.Hour) }

func stmt(text string) *event.Event {
	return &event.Event{Kind: event.KindStatement, Text: text, Duration: time.Millisecond, Start: t0, Command: "SELECT", Rows: 1}
}

func testLog(t *testing.T, w *testutil.Buffer, mod func(*Config)) *Log {
	t.Helper()
	cfg := Config{Writer: w, FlushInterval: -1, RunID: "run-1", Now: fixedClock, LiteralKey: []byte("pgaudit test literal key")}
	if mod != nil {
		mod(&cfg)
	}
	al, err := Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { al.Close() })
	return al
}

// TestStatementRoundTrip writes hand-made statement records and reads them
// back: fields, the keyed literal hash and the annotation comments.
func TestStatementRoundTrip(t *testing.T) {
	t.Parallel()
	var out testutil.Buffer
	al := testLog(t, &out, nil)
	a := stmt("SELECT * FROM t WHERE id = 1 AND name = 'x'")
	b := stmt("SELECT * FROM t WHERE id = 2 AND name = 'x'")
	c := stmt("SELECT now()")
	for _, ev := range []*event.Event{a, b, c} {
		al.WriteStatement(&Statement{Event: ev, HasShape: true, Fingerprint: 0xabc, Query: "SELECT * FROM t WHERE id = $1 AND name = $2",
			Tags: map[string]string{"route": "/a b"}, Ignore: []string{"n-plus-one"}})
	}
	bin := stmt("SELECT $1")
	bin.NumParams, bin.Params = 1, []string{event.BinaryParamPrefix + "\x00\x2a"}
	al.WriteStatement(&Statement{Event: bin})
	if err := al.Close(); err != nil {
		t.Fatal(err)
	}
	var back []*event.Event
	sum, err := Read(strings.NewReader(out.String()), func(ev *event.Event) error { back = append(back, ev); return nil })
	if err != nil || sum.Statements != 4 || len(back) != 4 {
		t.Fatalf("read %d events, summary %+v: %v", len(back), sum, err)
	}
	if back[0].ParamHash == 0 || back[0].ParamHash == back[1].ParamHash || back[2].ParamHash != 0 {
		t.Errorf("literal hashes %x %x %x: want distinct values, 0 without literals", back[0].ParamHash, back[1].ParamHash, back[2].ParamHash)
	}
	if back[0].Fingerprint != 0xabc || back[0].Protocol != event.ProtocolLog ||
		back[0].Text != "SELECT * FROM t WHERE id = $1 AND name = $2 /* pgaudit:ignore n-plus-one */ /*route='%2Fa%20b'*/" {
		t.Errorf("rebuilt %+v", back[0])
	}
	if back[3].Params != nil || strings.Contains(out.String(), `"text"`) {
		t.Errorf("parameters logged without LogParameters")
	}
	if got := loggableParams(bin.Params); !slices.Equal(got, []string{`\x002a`}) {
		t.Errorf("loggable %q", got)
	}
}

func countStatements(s string) int { return strings.Count(s, `"record":"statement"`) }

func TestAuditLogSampling(t *testing.T) {
	t.Parallel()
	evs := make([]*event.Event, 0, 2000)
	for i := range 2000 {
		ev := stmt("SELECT 1")
		ev.Duration = time.Duration(i) * time.Microsecond
		if i%100 == 0 {
			ev.SQLState = "57014"
		}
		evs = append(evs, ev)
	}
	cases := []struct {
		name     string
		cfg      func(*Config)
		min, max int
	}{
		{"all", nil, 2000, 2000},
		{"none", func(c *Config) { c.Sample = SampleNone }, 0, 0},
		{"none+errors", func(c *Config) { c.Sample = SampleNone; c.LogErrors = true }, 20, 20},
		{"rate0", func(c *Config) { c.Sample = SampleRate }, 0, 0},
		{"rate1", func(c *Config) { c.Sample = SampleRate; c.SampleRate = 1 }, 2000, 2000},
		// Binomial(2000, 0.5): 800..1200 is over 8 standard deviations.
		{"rate0.5", func(c *Config) { c.Sample = SampleRate; c.SampleRate = 0.5 }, 800, 1200},
		{"slow", func(c *Config) { c.Sample = SampleSlow; c.SlowThreshold = 1500 * time.Microsecond }, 500, 500},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var out testutil.Buffer
			al := testLog(t, &out, c.cfg)
			for _, ev := range evs {
				if al.Sampled(ev) {
					al.WriteStatement(&Statement{Event: ev})
				}
			}
			if n := countStatements(out.String()); n < c.min || n > c.max {
				t.Errorf("%d statement records, want %d..%d", n, c.min, c.max)
			}
		})
	}
	if _, err := Open(Config{Path: "-", Sample: "bogus"}); err == nil {
		t.Error("accepted a bogus sample mode")
	}
	if _, err := Open(Config{Path: "-", SampleRate: 2}); err == nil {
		t.Error("accepted sample rate 2")
	}
	if _, err := Open(Config{}); err == nil {
		t.Error("accepted an empty path")
	}
}

func TestAuditLogRotationAndReopen(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	path := filepath.Join(dir, "audit.log")
	al, err := Open(Config{Path: path, MaxSize: 4096, MaxBackups: 2, RunID: "r", Now: fixedClock})
	if err != nil {
		t.Fatal(err)
	}
	an := &Statement{Event: stmt("SELECT 1"), HasShape: true, Fingerprint: 1, Query: "SELECT $1"}
	an.Event.Text = "SELECT now()" // no literal: records keep the size the boundaries below assume
	for range 200 {
		al.WriteStatement(an)
	}
	if err := al.Flush(); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"audit.log", "audit.log.1", "audit.log.2"} {
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if len(b) > 4096 || len(b) == 0 || b[len(b)-1] != '\n' {
			t.Errorf("%s: %d bytes, want 1..4096 ending in a newline", name, len(b))
		}
		for i, line := range strings.Split(strings.TrimSuffix(string(b), "\n"), "\n") {
			if !json.Valid([]byte(line)) {
				t.Errorf("%s:%d: split or invalid line %q", name, i+1, line)
			}
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "audit.log.3")); !os.IsNotExist(err) {
		t.Errorf("audit.log.3 exists: %v (only 2 backups kept)", err)
	}
	if st, _ := os.Stat(path); st.Mode().Perm() != 0o600 {
		t.Errorf("mode %v, want 0600", st.Mode().Perm())
	}

	// logrotate: move the file, signal, and the log starts a new file.
	moved := filepath.Join(dir, "moved.log")
	if err := os.Rename(path, moved); err != nil {
		t.Fatal(err)
	}
	al.WriteStatement(an) // buffered: still goes to the moved file
	if err := al.Reopen(); err != nil {
		t.Fatal(err)
	}
	al.WriteStatement(an)
	if err := al.Close(); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("no new file after Reopen: %v", err)
	}
	if n := countStatements(string(b)); n != 1 {
		t.Errorf("new file has %d records, want 1", n)
	}
	al.WriteStatement(an) // after Close: counted, not written
	if al.WriteErrors() != 1 {
		t.Errorf("WriteErrors = %d, want 1", al.WriteErrors())
	}
	if err := al.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

func TestAuditLogLongLine(t *testing.T) {
	defer func(n int) { maxAuditLine = n }(maxAuditLine)
	maxAuditLine = 1000
	ok := `{"schema":1,"record":"statement","query":"` + strings.Repeat("y", 900) + `"}` + "\n"
	long := `{"schema":1,"record":"statement","query":"` + strings.Repeat("x", 600<<10) + `"}` + "\n"
	sum, err := Read(strings.NewReader(long+ok+long[:1001]+"\n"+`{"schema":1,"record":"drops","dropped":3}`), nil)
	if err != nil {
		t.Fatal(err)
	}
	if sum.BadLineCount != 2 || sum.BadLines[0].Line != 1 || sum.BadLines[1].Line != 3 ||
		sum.Statements != 1 || sum.Dropped != 3 || sum.DropRecords != 1 {
		t.Errorf("summary %+v", sum)
	}
}

// TestAuditLogPartialLastLine (issue 14, item 15): after a crash left a
// partial last line, reopening the log ends that line first, so the next
// record is valid JSON on a line of its own and a reader counts exactly
// one malformed line instead of losing the new record too.
func TestAuditLogPartialLastLine(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	writeOne := func(run string) {
		al, err := Open(Config{Path: path, RunID: run, FlushInterval: -1, Now: fixedClock})
		if err != nil {
			t.Fatal(err)
		}
		al.WriteDrops(1, 1)
		if err := al.Close(); err != nil {
			t.Fatal(err)
		}
	}
	writeOne("run-a")
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	// kill -9 in the middle of the next record.
	if err := os.WriteFile(path, append(b, b[:len(b)/2]...), 0o600); err != nil {
		t.Fatal(err)
	}
	writeOne("run-b")
	b, _ = os.ReadFile(path)
	lines := strings.Split(strings.TrimSuffix(string(b), "\n"), "\n")
	if len(lines) != 3 || !json.Valid([]byte(lines[0])) || json.Valid([]byte(lines[1])) || !json.Valid([]byte(lines[2])) ||
		!strings.Contains(lines[2], `"run-b"`) {
		t.Fatalf("lines:\n%s", b)
	}
	r := &Reader{}
	if err := r.Read(path, strings.NewReader(string(b))); err != nil {
		t.Fatal(err)
	}
	sum := r.Summary()
	if sum.BadLineCount != 1 || len(sum.Runs) != 2 || sum.Dropped != 2 {
		t.Errorf("summary: bad lines %d runs %v dropped %d", sum.BadLineCount, sum.Runs, sum.Dropped)
	}
}
