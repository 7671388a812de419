package analyzer

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/pgaudit-proxy/pgaudit/internal/auditlog"
	"github.com/pgaudit-proxy/pgaudit/internal/testutil"
)

// auditEvents is a small, fixed workload touching every statement field.
func auditEvents() []*Event {
	return []*Event{
		{
			Kind: KindStatement, Protocol: ProtocolSimple,
			Text:      "SELECT * FROM users WHERE email = 'alice@example.com' /*traceparent='00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01',route='%2Fusers'*/",
			SessionID: 1, TxSeq: 1, Database: "shop", User: "app", ApplicationName: "web", ClientAddr: "127.0.0.1:50000",
			Start: t0, Duration: 1500 * time.Microsecond, Command: "SELECT", Rows: 1,
		},
		{
			Kind: KindStatement, Protocol: ProtocolExtended,
			Text:      "UPDATE accounts SET password_hash = $1 WHERE id = $2",
			SessionID: 1, TxSeq: 2, InTransaction: true, Database: "shop", User: "app", ApplicationName: "web", ClientAddr: "127.0.0.1:50000",
			Start: t0.Add(time.Second), Duration: 2 * time.Millisecond, Wait: 300 * time.Microsecond, Command: "UPDATE", Rows: 1,
			ParamHash: 0xfeedface, NumParams: 2, Params: []string{"$2b$12$SECRETHASH", "42"},
		},
		{
			Kind: KindStatement, Protocol: ProtocolSimple,
			Text:      "INSERT INTO users (email) VALUES ('bob@example.com') -- pgaudit:ignore n-plus-one",
			SessionID: 2, TxSeq: 1, Database: "shop", User: "app", ApplicationName: "worker",
			Start: t0.Add(2 * time.Second), Duration: 800 * time.Microsecond, Command: "INSERT", Rows: 0, SQLState: "23505",
		},
		{
			Kind: KindSessionState, Protocol: ProtocolSimple, Detail: "listen",
			Text:      "LISTEN jobs",
			SessionID: 2, TxSeq: 2, Database: "shop", User: "app", ApplicationName: "worker",
			Start: t0.Add(3 * time.Second), Duration: 100 * time.Microsecond, Command: "LISTEN", Rows: -1,
		},
	}
}

// testLiteralKey makes literal_hash reproducible in golden files.
var testLiteralKey = []byte("pgaudit test literal key")

func testAuditLog(t *testing.T, w *testutil.Buffer, mod func(*auditlog.Config)) *auditlog.Log {
	t.Helper()
	cfg := auditlog.Config{Writer: w, FlushInterval: -1, RunID: "run-1", Now: fixedClock, LiteralKey: testLiteralKey}
	if mod != nil {
		mod(&cfg)
	}
	al, err := auditlog.Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { al.Close() })
	return al
}

// runPipeline sends evs through a one-worker pipeline writing to al and
// stops it (which writes the final stats record).
func runPipeline(t *testing.T, al *auditlog.Log, evs []*Event, logger zerolog.Logger) *Pipeline {
	t.Helper()
	p := NewPipeline(PipelineConfig{Workers: 1, AuditLog: al, Logger: logger, Stats: StatsConfig{Now: fixedClock}})
	if err := p.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	for _, ev := range evs {
		if err := p.Submit(context.Background(), ev); err != nil {
			t.Fatal(err)
		}
	}
	stop(t, p)
	return p
}

func TestAuditLogGolden(t *testing.T) {
	var out testutil.Buffer
	al := testAuditLog(t, &out, nil)
	runPipeline(t, al, auditEvents(), zerolog.Nop())
	if err := al.WriteFinding(map[string]any{"rule": "n-plus-one", "severity": "warning", "fingerprint": "a0ead580058af585"}); err != nil {
		t.Fatal(err)
	}
	if err := al.WritePool(struct {
		Database string `json:"database"`
		Active   int    `json:"active"`
	}{"shop", 3}); err != nil {
		t.Fatal(err)
	}
	al.WriteDrops(5, 12)
	if err := al.WriteFinding(func() {}); err == nil {
		t.Error("WriteFinding accepted an unmarshalable value")
	}
	testutil.Golden(t, "auditlog.golden.jsonl", out.Bytes())

	// Every line is a JSON object with schema, ts and record.
	sc := bufio.NewScanner(bytes.NewReader(out.Bytes()))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var m map[string]any
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Fatalf("invalid line %q: %v", sc.Text(), err)
		}
		if m["schema"] != float64(1) || m["ts"] == nil || m["record"] == nil {
			t.Errorf("line lacks schema/ts/record: %s", sc.Text())
		}
	}
}

var secrets = []string{"alice@example.com", "bob@example.com", "SECRETHASH", "hunter2", "4111111111111111"}

func redactionEvents() []*Event {
	evs := auditEvents()
	evs = append(evs,
		&Event{Kind: KindStatement, Text: "ALTER ROLE app PASSWORD 'hunter2'", Start: t0, Rows: -1},
		&Event{Kind: KindStatement, Text: "SELEC card FROM WHERE n = '4111111111111111'", Start: t0, Rows: -1, SQLState: "42601"},
		&Event{Kind: KindStatement, Protocol: ProtocolExtended, Text: "SELECT $1::text", Params: []string{"hunter2"}, NumParams: 1, Start: t0},
	)
	return evs
}

func TestAuditLogRedaction(t *testing.T) {
	t.Parallel()
	for _, logParams := range []bool{false, true} {
		t.Run(fmt.Sprintf("LogParameters=%v", logParams), func(t *testing.T) {
			var out, logs testutil.Buffer
			al := testAuditLog(t, &out, func(c *auditlog.Config) { c.LogParameters = logParams })
			runPipeline(t, al, redactionEvents(), zerolog.New(&logs))
			for _, s := range secrets {
				if got := strings.Contains(out.String(), s); got != logParams {
					t.Errorf("audit log contains %q: %v, want %v", s, got, logParams)
				}
				if strings.Contains(logs.String(), s) {
					t.Errorf("operational log contains %q", s)
				}
			}
		})
	}
}

// TestAuditLogReadBack writes events through a pipeline, reads the log
// back, and checks the events and the statistics survive the round trip.
func TestAuditLogReadBack(t *testing.T) {
	t.Parallel()
	var out testutil.Buffer
	al := testAuditLog(t, &out, nil)
	evs, _ := randomEvents(600, 5, 9)
	for i, ev := range evs {
		// Whole microseconds: statement records carry duration_us.
		ev.Duration = ev.Duration.Truncate(time.Microsecond)
		ev.Wait = ev.Wait.Truncate(time.Microsecond)
		ev.Text = fmt.Sprintf("SELECT * FROM t%d WHERE id = %d", i%5, i)
		ev.Start = ev.Start.Add(123 * time.Nanosecond)
	}
	evs = append(evs, auditEvents()...)
	orig := runPipeline(t, al, evs, zerolog.Nop())
	if err := al.Close(); err != nil {
		t.Fatal(err)
	}

	// Corrupt the stream a little: bad lines are reported, not fatal.
	log := out.String() + "not json\n{\"schema\":2,\"record\":\"statement\"}\n\n{\"truncated\":\n" +
		`{"schema":1,"ts":"x","record":"future_kind","run_id":"run-1"}` + "\n"
	var back []*Event
	sum, err := auditlog.Read(strings.NewReader(log), func(ev *Event) error {
		back = append(back, ev)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(back) != len(evs) || sum.Statements != len(evs) {
		t.Fatalf("read %d events (%d statements), wrote %d", len(back), sum.Statements, len(evs))
	}
	nLines := strings.Count(out.String(), "\n")
	wantBad := []auditlog.BadLine{
		{Line: nLines + 1, Err: "invalid JSON"},
		{Line: nLines + 2, Err: "unsupported schema version 2"},
		{Line: nLines + 4, Err: "invalid JSON"},
	}
	if sum.BadLineCount != 3 || len(sum.BadLines) != 3 || sum.Unknown != 1 {
		t.Fatalf("bad lines %+v (count %d), unknown %d", sum.BadLines, sum.BadLineCount, sum.Unknown)
	}
	for i, w := range wantBad {
		if sum.BadLines[i].Line != w.Line || !strings.HasPrefix(sum.BadLines[i].Err, w.Err) {
			t.Errorf("bad line %d: %+v, want %+v", i, sum.BadLines[i], w)
		}
	}

	for i, ev := range back {
		want := *evs[i]
		got := *ev
		if got.Protocol != ProtocolLog || got.Fingerprint == 0 {
			t.Errorf("event %d: protocol %v fingerprint %s", i, got.Protocol, got.Fingerprint)
		}
		if strings.Contains(got.Text, "@example.com") {
			t.Errorf("event %d: literal in rebuilt text %q", i, got.Text)
		}
		// Fields that are rebuilt differently by design.
		got.Protocol, want.Protocol = 0, 0
		got.Text, want.Text = "", ""
		got.Fingerprint = 0
		want.Params = nil // not logged without LogParameters
		if want.NumParams == 0 {
			// Simple protocol: the keyed hash of the literals stands
			// for the parameters (internal/auditlog tests its values).
			if (got.ParamHash == 0) != (i == len(evs)-1) { // LISTEN jobs has no literal
				t.Errorf("event %d: literal hash %x", i, got.ParamHash)
			}
			want.ParamHash = got.ParamHash
		}
		if want.TraceParent == "" { // taken from the sqlcommenter comment
			want.TraceParent = ParseAnnotations(evs[i].Text).TraceParent
		}
		got.Start, want.Start = got.Start.UTC(), want.Start.UTC()
		if !reflect.DeepEqual(got, want) {
			t.Errorf("event %d:\n got %+v\nwant %+v", i, got, want)
		}
	}

	// Re-analyzing the rebuilt events gives the same statistics, shapes
	// and fingerprints included, as the proxy's pipeline had; and the stats
	// record read back equals both.
	re := runPipeline(t, testAuditLog(t, &testutil.Buffer{}, func(c *auditlog.Config) { c.Sample = auditlog.SampleNone }), back, zerolog.Nop())
	want := comparableSnap(t, orig.Stats().Snapshot())
	if got := comparableSnap(t, re.Stats().Snapshot()); !reflect.DeepEqual(got, want) {
		t.Errorf("stats rebuilt from events differ:\n got %+v\nwant %+v", got, want)
	}
	stats, err := MergeAuditStats(sum.RunStats)
	if err != nil || stats == nil {
		t.Fatalf("no stats read back: %v", err)
	}
	if got := comparableSnap(t, stats); !reflect.DeepEqual(got.Shapes, want.Shapes) || got.Calls != want.Calls {
		t.Errorf("stats record read back differs:\n got %+v\nwant %+v", got, want)
	}

	// Annotations survive: the ignore directive and sqlcommenter tags.
	var ignored, tagged bool
	re2 := NewPipeline(PipelineConfig{Workers: 1})
	_ = re2.AddObserver(ObserverFunc(func(a *Analyzed) {
		if a.Annotations.Ignores("n-plus-one") {
			ignored = true
		}
		if a.Annotations.Tags["route"] == "/users" && a.TraceParent != "" {
			tagged = true
		}
	}))
	_ = re2.Start(context.Background())
	for _, ev := range back {
		_ = re2.Submit(context.Background(), ev)
	}
	stop(t, re2)
	if !ignored || !tagged {
		t.Errorf("annotations lost in the round trip: ignore %v, tags %v", ignored, tagged)
	}
}

// TestAuditLogReaderRuns: two runs appended to one file keep their sessions
// apart, and their latest stats records are merged.
func TestAuditLogReaderRuns(t *testing.T) {
	t.Parallel()
	var out testutil.Buffer
	for run := range 2 {
		al := testAuditLog(t, &out, func(c *auditlog.Config) { c.RunID = fmt.Sprintf("run-%d", run) })
		p := NewPipeline(PipelineConfig{Workers: 1, AuditLog: al, Stats: StatsConfig{Now: fixedClock}})
		_ = p.Start(context.Background())
		for range 3 {
			ev := stmt("SELECT 1")
			ev.SessionID = 7
			_ = p.Submit(context.Background(), ev)
			// A periodic snapshot in between: only the latest counts.
			_ = writeAuditStats(al, p.Stats().Snapshot(), false)
		}
		stop(t, p)
		al.Close()
	}
	sessions := map[uint64]int{}
	r := &auditlog.Reader{OnEvent: func(ev *Event) error { sessions[ev.SessionID]++; return nil }}
	if err := r.Read("audit.log", strings.NewReader(out.String())); err != nil {
		t.Fatal(err)
	}
	sum := r.Summary()
	stats, err := MergeAuditStats(sum.RunStats)
	if err != nil {
		t.Fatal(err)
	}
	if len(sessions) != 2 || sessions[7] != 3 || sessions[7|1<<48] != 3 {
		t.Errorf("sessions %v", sessions)
	}
	if stats == nil || stats.Calls != 6 || sum.StatsRecords != 8 || !reflect.DeepEqual(sum.Runs, []string{"run-0", "run-1"}) {
		t.Errorf("summary %+v stats %+v", sum, stats)
	}
	// A callback error stops reading.
	r2 := &auditlog.Reader{OnEvent: func(*Event) error { return fmt.Errorf("enough") }}
	if err := r2.Read("audit.log", strings.NewReader(out.String())); err == nil || !strings.Contains(err.Error(), "enough") {
		t.Errorf("Read = %v", err)
	}
}

// TestAuditIgnoreDirective: the audit log reader writes the directive back
// into rebuilt statements, so both packages must spell it alike.
func TestAuditIgnoreDirective(t *testing.T) {
	if IgnoreDirective != auditlog.IgnoreDirective {
		t.Errorf("analyzer %q, auditlog %q", IgnoreDirective, auditlog.IgnoreDirective)
	}
}
