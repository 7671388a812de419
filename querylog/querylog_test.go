package querylog

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pgaudit-proxy/pgaudit/internal/auditlog"
	"github.com/pgaudit-proxy/pgaudit/internal/event"
	"github.com/pgaudit-proxy/pgaudit/internal/testutil"
)

func TestMain(m *testing.M) { testutil.Main(m) }

func TestCompilePrefixErrors(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ prefix, want string }{
		{"[%p] ", "no time"},
		{"%m ", "no process or session id"},
		{"%m %u@%d ", "no process or session id"},
		{"", "no time"},
		{"%m [%p] %z ", "unknown escape %z"},
		{"%m [%p] %", "trailing %"},
		{"%m [%p] %-", "trailing %"},
	} {
		_, err := CompilePrefix(tc.prefix)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("CompilePrefix(%q) = %v, want an error with %q", tc.prefix, err, tc.want)
		}
	}
	for _, ok := range []string{"%m [%p] ", "'%m [%p] '", "%n %c ", "%t [%p]: [%l-1] %%user=%u ", "%m [%-8p] %10u "} {
		if _, err := CompilePrefix(ok); err != nil {
			t.Errorf("CompilePrefix(%q): %v", ok, err)
		}
	}
	_, err := Read(context.Background(), []Input{{Name: "x", R: strings.NewReader("")}}, Options{Prefix: "%u "}, nil)
	if err == nil || !strings.Contains(err.Error(), "no time") {
		t.Errorf("Read with a prefix without time: %v", err)
	}
}

// sampleValues are what formatPrefix puts for each escape.
var sampleValues = map[byte]string{
	'm': "2025-03-04 05:06:07.123 UTC", 't': "2025-03-04 05:06:07 UTC", 'n': "1741064767.123",
	'p': "4242", 'c': "67c68b1f.1092", 'l': "7", 's': "2025-03-04 05:00:00 UTC", 'u': "alice",
	'd': "shop", 'a': "my app", 'h': "10.1.2.3", 'r': "10.1.2.3(5432)", 'v': "3/17", 'x': "0",
	'e': "42P01", 'i': "idle in transaction", 'b': "client backend", 'P': "", 'Q': "0", 'q': "",
}

// formatPrefix expands a log_line_prefix as Postgres does for a client
// backend (padding included).
func formatPrefix(prefix string, vals map[byte]string) string {
	var b strings.Builder
	for i := 0; i < len(prefix); i++ {
		if prefix[i] != '%' {
			b.WriteByte(prefix[i])
			continue
		}
		i++
		if prefix[i] == '%' {
			b.WriteByte('%')
			continue
		}
		pad, left := 0, false
		if prefix[i] == '-' {
			left = true
			i++
		}
		for prefix[i] >= '0' && prefix[i] <= '9' {
			pad = pad*10 + int(prefix[i]-'0')
			i++
		}
		v := vals[prefix[i]]
		switch {
		case left:
			fmt.Fprintf(&b, "%-*s", pad, v)
		case pad > 0:
			fmt.Fprintf(&b, "%*s", pad, v)
		default:
			b.WriteString(v)
		}
	}
	return b.String()
}

func TestPrefixParse(t *testing.T) {
	t.Parallel()
	tp := newTimeParser(nil)
	want := time.Date(2025, 3, 4, 5, 6, 7, 123e6, time.UTC)
	for _, prefix := range append(append([]string(nil), KnownPrefixes...),
		"%n %c %l %s %x %i %r %a|", "%m [%-8p] %-10u %10d ", "%m [%p] %b %P %Q %v %e ", "%m [%p] %a|%i: ") {
		p := MustCompilePrefix(prefix)
		line := formatPrefix(prefix, sampleValues) + "LOG:  statement: select 1"
		var f prefixFields
		rest, ok := p.parse([]byte(line), tp, &f)
		if !ok {
			t.Errorf("%q does not parse %q", prefix, line)
			continue
		}
		if string(rest) != "LOG:  statement: select 1" {
			t.Errorf("%q: rest %q", prefix, rest)
		}
		wt := want
		if p.Has('t') {
			wt = want.Truncate(time.Second)
		}
		if !f.time.Equal(wt) {
			t.Errorf("%q: time %v, want %v", prefix, f.time, wt)
		}
		check := func(esc byte, got []byte, wantV string) {
			if p.Has(esc) && string(got) != wantV {
				t.Errorf("%q: %%%c = %q, want %q", prefix, esc, got, wantV)
			}
		}
		check('u', f.user, "alice")
		check('d', f.db, "shop")
		check('a', f.app, "my app")
		check('h', f.host, "10.1.2.3")
		check('r', f.host, "10.1.2.3")
		check('i', f.ps, "idle in transaction")
		check('e', f.state, "42P01")
		check('v', f.vxid, "3/17")
		check('c', f.sessHex, "67c68b1f.1092")
		if p.Has('p') && f.pid != 4242 {
			t.Errorf("%q: pid %d", prefix, f.pid)
		}
		if p.Has('l') && f.lineNum != 7 {
			t.Errorf("%q: line %d", prefix, f.lineNum)
		}

		// Detection finds a prefix that reads the line the same way.
		r := &reader{}
		best, n := r.scoreStderr([]byte(line + "\n"))
		if known := slices.Contains(KnownPrefixes, prefix); known {
			var g prefixFields
			if n != 1 {
				t.Errorf("%q: not detected", prefix)
			} else if _, ok := best.parse([]byte(line), tp, &g); !ok || string(g.user) != string(f.user) || string(g.db) != string(f.db) || string(g.app) != string(f.app) || g.pid != f.pid {
				t.Errorf("%q: detected as %q, which reads %+v", prefix, best.src, g)
			}
		}
	}

	// %q stops the prefix of background processes.
	p := MustCompilePrefix("%m [%p] %q%u@%d ")
	var f prefixFields
	rest, ok := p.parse([]byte("2025-03-04 05:06:07.123 UTC [77] LOG:  checkpoint starting: time"), tp, &f)
	if !ok || string(rest) != "LOG:  checkpoint starting: time" || f.pid != 77 || f.user != nil {
		t.Errorf("%%q: %q %v %+v", rest, ok, f)
	}
	// Lines that are not this prefix.
	for _, l := range []string{
		"2025-03-04 05:06:07.123 UTC [77] alice@shop garbage",
		"2025-03-04 05:06:07 UTC [77] alice@shop LOG:  x",
		"2025-13-04 05:06:07.123 UTC [77] alice@shop LOG:  x",
		"2025-03-04 05:06:07.123 UTC [x] alice@shop LOG:  x",
		"waiting for server to start....",
		"",
	} {
		if _, ok := p.parse([]byte(l), tp, &f); ok {
			t.Errorf("parsed %q", l)
		}
	}
}

func TestTimeZones(t *testing.T) {
	t.Parallel()
	tp := newTimeParser(time.FixedZone("X", 3600))
	for in, off := range map[string]int{
		"2025-03-04 05:06:07.123 UTC": 0, "2025-03-04 05:06:07.123 CET": 3600, "2025-03-04 05:06:07.123 +03": 3 * 3600,
		"2025-03-04 05:06:07.123 -0530": -(5*3600 + 1800), "2025-03-04 05:06:07.123 PDT": -7 * 3600, "2025-03-04 05:06:07.123 XYZT": 3600,
	} {
		got, _, ok := tp.parse([]byte(in), true)
		if !ok {
			t.Errorf("%q does not parse", in)
			continue
		}
		want := time.Date(2025, 3, 4, 5, 6, 7, 123e6, time.FixedZone("", off))
		if !got.Equal(want) {
			t.Errorf("%q = %v, want %v", in, got, want)
		}
	}
	if got, _, ok := parseEpoch([]byte("1741064767.123 ")); !ok || got.UnixMilli() != 1741064767123 {
		t.Errorf("epoch: %v %v", got, ok)
	}
}

func TestParseParams(t *testing.T) {
	t.Parallel()
	n, h, vals, ok := parseParams([]byte(`parameters: $1 = '1', $2 = 'it''s, $3 = x', $3 = NULL`), true)
	if !ok || n != 3 || h == 0 || fmt.Sprint(vals) != "[1 it's, $3 = x ]" {
		t.Errorf("got %d %x %q %v", n, h, vals, ok)
	}
	_, h2, _, _ := parseParams([]byte(`parameters: $1 = '1', $2 = 'it''s, $3 = x', $3 = ''`), false)
	if h2 == h {
		t.Error("NULL and '' hash the same")
	}
	for _, bad := range []string{"parameters: $1 = 'x", "parameters: 1 = 'x'", "Key (id)=(1) already exists.", "parameters: $1 = 'a' $2 = 'b'"} {
		if _, _, _, ok := parseParams([]byte(bad), false); ok {
			t.Errorf("parsed %q", bad)
		}
	}
}

func TestClassifyTx(t *testing.T) {
	for text, want := range map[string]string{
		"begin":                          "1 BEGIN",
		"  /* c */ START TRANSACTION":    "1 START TRANSACTION",
		"commit":                         "2 COMMIT",
		"END":                            "2 COMMIT",
		"rollback to savepoint a":        "0 ROLLBACK",
		"ROLLBACK":                       "2 ROLLBACK",
		"commit prepared 'x'":            "0 COMMIT PREPARED",
		"prepare transaction 'x'":        "2 PREPARE TRANSACTION",
		"-- x\nselect 1":                 "0 SELECT",
		"with a as (select 1) select *":  "0 ",
		"create unique index i on t (a)": "0 CREATE INDEX",
		"create or replace function f()": "0 CREATE FUNCTION",
		"CREATE MATERIALIZED VIEW v AS":  "0 CREATE MATERIALIZED VIEW",
		"drop table t":                   "0 DROP TABLE",
		"(select 1)":                     "0 ",
	} {
		w, v := classifyTx(text)
		if got := fmt.Sprintf("%d %s", w, v); got != want {
			t.Errorf("%q: %s, want %s", text, got, want)
		}
	}
}

// TestSyntheticFormatsAgree reads the same synthetic workload written as
// stderr, csvlog and jsonlog.
func TestSyntheticFormatsAgree(t *testing.T) {
	t.Parallel()
	recs := genSessions(7, 24, 1)
	var skel []string
	for _, f := range []struct {
		name  string
		write func(io.Writer, []genRec)
		want  Format
	}{{"stderr", writeStderr, FormatStderr}, {"csvlog", writeCSV, FormatCSV}, {"jsonlog", writeJSON, FormatJSON}} {
		data := genBytes(f.write, recs)
		evs, sum := readAll(t, []Input{{Name: f.name, R: bytes.NewReader(data)}}, Options{})
		if sum.Format != f.want || sum.MalformedCount != 0 || sum.Sessions != 7 || (f.want == FormatStderr) != (sum.ErrorsWithoutSQLState == 7*4) {
			t.Errorf("%s: %+v", f.name, sum)
		}
		// 24 units per session: 4 of each kind; a transaction is 3
		// statements, the rest 1.
		if want := 7 * (4*5 + 4*3); len(evs) != want {
			t.Errorf("%s: %d events, want %d", f.name, len(evs), want)
		}
		if f.want == FormatStderr && sum.Prefix != genPrefix {
			t.Errorf("stderr prefix detected as %q", sum.Prefix)
		}
		skel = append(skel, skeleton(evs))
		for _, ev := range evs {
			if ev.ApplicationName == "" || ev.User == "" || ev.Database != "shop" || ev.ClientAddr != "10.0.0.7" {
				t.Fatalf("%s: names missing: %+v", f.name, ev)
			}
			// genPrefix has no %e: stderr logs do not say the SQLSTATE.
			if f.want != FormatStderr && strings.HasPrefix(ev.Text, "SELECT * FROM missing") != (ev.SQLState == "42P01") {
				t.Fatalf("%s: %q state %q", f.name, ev.Text, ev.SQLState)
			}
		}
		for _, opts := range []Options{{ChunkSize: 37, Workers: 1}, {ChunkSize: 100, Workers: 4}, {ChunkSize: 4096, Workers: 2}} {
			evs2, _ := readAll(t, []Input{{Name: f.name, R: bytes.NewReader(data)}}, opts)
			if render(evs2) != render(evs) {
				t.Errorf("%s: chunk size %d, %d workers: events differ", f.name, opts.ChunkSize, opts.Workers)
			}
		}
	}
	if skel[0] != skel[1] || skel[1] != skel[2] {
		t.Errorf("formats disagree:\n--- stderr\n%s\n--- csvlog\n%s\n--- jsonlog\n%s", skel[0], skel[1], skel[2])
	}
}

// insertLines inserts a junk line before each record starting at or after
// the given 1-based line numbers of data, and returns the damaged data and
// the junk's line numbers in it.
func insertLines(data []byte, junk string, at ...int) ([]byte, []int) {
	lines := strings.SplitAfter(string(data), "\n")
	var b strings.Builder
	var pos []int
	out := 0
	k := 0
	for i, l := range lines {
		if k < len(at) && i+1 >= at[k] && (strings.HasPrefix(l, "2025-") || strings.HasPrefix(l, "{")) {
			b.WriteString(junk + "\n")
			out++
			pos = append(pos, out)
			k++
		}
		b.WriteString(l)
		if l != "" {
			out++
		}
	}
	return []byte(b.String()), pos
}

func TestMalformed(t *testing.T) {
	t.Parallel()
	recs := genSessions(3, 12, 2)
	for _, f := range []struct {
		name  string
		write func(io.Writer, []genRec)
		junk  string
		want  string
	}{
		{"stderr", writeStderr, "cp: cannot stat 'pg_wal/000000010000000000000001': No such file", "does not match log_line_prefix"},
		{"csvlog", writeCSV, "2025-03-04 05:06:07.123 UTC,only,three", "csvlog record has 3 fields"},
		{"jsonlog", writeJSON, `{"timestamp": "2025-03-04 05:06:07.123 UTC", broken`, "invalid JSON"},
	} {
		clean := genBytes(f.write, recs)
		want, _ := readAll(t, []Input{{Name: "clean", R: bytes.NewReader(clean)}}, Options{})
		// Junk at the start, in the middle and at the end (line numbers are
		// of the damaged file: each insert shifts the later ones).
		dirty, at := insertLines(clean, f.junk, 3, 5, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30)
		if len(at) != 13 {
			t.Fatalf("inserted %d junk lines", len(at))
		}
		dirty = append(dirty, []byte(f.junk+"\n")...)
		got, sum := readAll(t, []Input{{Name: f.name, R: bytes.NewReader(dirty)}}, Options{ChunkSize: 64})
		if render(got) != render(want) {
			t.Errorf("%s: junk changed the events", f.name)
		}
		if sum.MalformedCount != int64(len(at)+1) || len(sum.Malformed) != MaxMalformed {
			t.Errorf("%s: %d malformed, kept %d", f.name, sum.MalformedCount, len(sum.Malformed))
		}
		for i, m := range sum.Malformed {
			if want := int64(at[i]); m.Line != want || m.File != f.name || !strings.Contains(m.Err, f.want) {
				t.Errorf("%s: malformed[%d] = %v, want line %d with %q", f.name, i, m, want, f.want)
			}
		}
		if !strings.Contains(sum.Malformed[0].Error(), fmt.Sprintf("%s:%d: ", f.name, at[0])) {
			t.Errorf("LineError.Error() = %q", sum.Malformed[0].Error())
		}
	}

	// Damaged csvlog records: a bad time, a stray quote, an unterminated
	// quoted field at the end.
	clean := genBytes(writeCSV, recs[:10])
	lines := strings.SplitAfter(string(clean), "\n")
	lines[2] = "yesterday" + lines[2][len("2025-03-04 05:06:07.123 UTC"):]
	lines[4] = strings.Replace(lines[4], `,"`, `,x"`, 1)
	data := strings.Join(lines, "") + `2025-03-04 05:06:07.123 UTC,"alice","shop",1,"x",67c68b1f.1,1,"",2025-03-04 05:06:07 UTC,,0,LOG,00000,"statement: select 'never closed`
	_, sum := readAll(t, []Input{{Name: "damaged.csv", R: strings.NewReader(data)}}, Options{})
	var errs []string
	for _, m := range sum.Malformed {
		errs = append(errs, m.Error())
	}
	want := []string{
		"damaged.csv:3: csvlog record: bad log_time \"yesterday\"",
		"damaged.csv:5: unexpected '\"' in csv field 2",
		"damaged.csv:11: unterminated quoted field",
	}
	if strings.Join(errs, "\n") != strings.Join(want, "\n") {
		t.Errorf("malformed:\n%s\nwant:\n%s", strings.Join(errs, "\n"), strings.Join(want, "\n"))
	}
}

func TestUnknownFormat(t *testing.T) {
	t.Parallel()
	read := func(data string, opts Options) error {
		_, err := Read(context.Background(), []Input{{Name: "in", R: strings.NewReader(data)}}, opts, nil)
		return err
	}
	junk := "hello\nworld\n\x00\x01\x02 binary\n"
	err := read(junk, Options{})
	if !errors.Is(err, ErrUnknownFormat) || !strings.Contains(err.Error(), "csvlog, jsonlog, audit") {
		t.Errorf("junk: %v", err)
	}
	csv := string(genBytes(writeCSV, genSessions(1, 2, 3)))
	json := string(genBytes(writeJSON, genSessions(1, 2, 3)))
	stderr := string(genBytes(writeStderr, genSessions(1, 2, 3)))
	for _, tc := range []struct {
		data string
		opts Options
		want string
	}{
		{json, Options{Format: FormatCSV}, "no line reads as csvlog"},
		{csv, Options{Format: FormatJSON}, "no line reads as jsonlog"},
		{csv, Options{Format: FormatAudit}, "no line reads as audit"},
		{json, Options{Format: FormatStderr}, "no line reads as a stderr log"},
		{stderr, Options{Prefix: "%t [%p] "}, "not stderr with log_line_prefix '%t [%p] '"},
		{stderr, Options{Format: FormatStderr, Prefix: "%m %c "}, "no line reads as a stderr log with log_line_prefix '%m %c '"},
		// A custom prefix not given: the lines are not recognized.
		{strings.ReplaceAll(stderr, " [", " <"), Options{}, "give any other prefix explicitly"},
	} {
		err := read(tc.data, tc.opts)
		if !errors.Is(err, ErrUnknownFormat) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: %v, want %q", tc.opts, err, tc.want)
		}
	}
	// Empty input is no error.
	evs, sum := readAll(t, []Input{{Name: "empty", R: strings.NewReader("")}, {Name: "blank", R: strings.NewReader("\n\n")}}, Options{})
	if len(evs) != 0 || sum.Lines != 2 {
		t.Errorf("empty: %d events, %+v", len(evs), sum)
	}
	if _, err := Read(context.Background(), Files(filepath.Join(t.TempDir(), "nope.log")), Options{}, nil); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file: %v", err)
	}
}

func TestGzipAndStdin(t *testing.T) {
	t.Parallel()
	data := genBytes(writeCSV, genSessions(4, 12, 4))
	want, _ := readAll(t, []Input{{Name: "plain", R: bytes.NewReader(data)}}, Options{})
	dir := t.TempDir()
	plain := filepath.Join(dir, "postgresql.csv")
	if err := os.WriteFile(plain, data, 0o644); err != nil {
		t.Fatal(err)
	}
	gz := gzipFile(t, plain)
	got, sum := readAll(t, Files(gz), Options{})
	if render(got) != render(want) || !sum.Files[0].Gzip || sum.Files[0].Format != FormatCSV {
		t.Errorf("gzip: %+v", sum.Files)
	}
	if st, _ := os.Stat(gz); sum.Files[0].Bytes != st.Size() {
		t.Errorf("gzip bytes %d, file %d", sum.Files[0].Bytes, st.Size())
	}
	// A multi-member gzip file (as from cat a.gz b.gz), on stdin.
	half := bytes.Index(data[len(data)/2:], []byte("\n2025-")) + len(data)/2 + 1
	multi := append(gzipBytes(data[:half]), gzipBytes(data[half:])...)
	got, _ = readAll(t, Files("-"), Options{Stdin: bytes.NewReader(multi)})
	if render(got) != render(want) {
		t.Error("multi-member gzip on stdin: events differ")
	}
	// A damaged gzip file is an error.
	bad := append([]byte(nil), multi[:len(multi)/2]...)
	if _, err := Read(context.Background(), []Input{{Name: "bad.gz", R: bytes.NewReader(bad)}}, Options{}, nil); err == nil || !strings.Contains(err.Error(), "bad.gz") {
		t.Errorf("truncated gzip: %v", err)
	}
}

func TestOversizeRecord(t *testing.T) {
	t.Parallel()
	recs := genSessions(2, 6, 5)
	huge := "SELECT '" + strings.Repeat("x", 5000) + "\n" + strings.Repeat("y", 5000) + "'"
	for _, f := range []struct {
		name  string
		write func(io.Writer, []genRec)
	}{{"stderr", writeStderr}, {"csvlog", writeCSV}, {"jsonlog", writeJSON}} {
		want, _ := readAll(t, []Input{{Name: "ok", R: bytes.NewReader(genBytes(f.write, recs))}}, Options{})
		big := append([]genRec(nil), recs[:5]...)
		big = append(big, genRec{t: recs[4].t, pid: 1, sessStart: recs[4].sessStart, line: 1, sev: "LOG", state: "00000", msg: "duration: 1.000 ms  statement: " + huge, user: "u", db: "d"})
		big = append(big, recs[5:]...)
		data := genBytes(f.write, big)
		got, sum := readAll(t, []Input{{Name: f.name, R: bytes.NewReader(data)}}, Options{ChunkSize: 512, MaxRecordBytes: 2048})
		if render(got) != render(want) {
			t.Errorf("%s: events around the long record differ:\n%s\nwant\n%s", f.name, render(got), render(want))
		}
		if sum.MalformedCount != 1 || !strings.Contains(sum.Malformed[0].Err, "longer than") {
			t.Errorf("%s: %+v", f.name, sum.Malformed)
		}
		lines := int64(bytes.Count(data, []byte{'\n'}))
		if sum.Lines != lines {
			t.Errorf("%s: %d lines, file has %d", f.name, sum.Lines, lines)
		}
		// Within the limit the statement is read whole.
		got, _ = readAll(t, []Input{{Name: f.name, R: bytes.NewReader(data)}}, Options{ChunkSize: 512})
		found := false
		for _, ev := range got {
			found = found || ev.Text == huge
		}
		if !found {
			t.Errorf("%s: long statement not read whole", f.name)
		}
	}
}

func TestCancelAndProgress(t *testing.T) {
	t.Parallel()
	data := genBytes(writeJSON, genSessions(10, 30, 6))
	ctx, cancel := context.WithCancel(context.Background())
	n := 0
	_, err := Read(ctx, []Input{{Name: "j", R: bytes.NewReader(data), Size: int64(len(data))}}, Options{ChunkSize: 1024, Workers: 3},
		func(*event.Event) {
			if n++; n == 10 {
				cancel()
			}
		})
	if !errors.Is(err, context.Canceled) {
		t.Errorf("cancel: %v", err)
	}

	var calls []int64
	total := int64(-2)
	_, err = Read(context.Background(), []Input{{Name: "j", R: bytes.NewReader(data), Size: int64(len(data))}, {Name: "j2", R: bytes.NewReader(data), Size: int64(len(data))}},
		Options{ChunkSize: 4096, Progress: func(read, tot int64) { calls = append(calls, read); total = tot }}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if total != int64(2*len(data)) || len(calls) < 4 || calls[len(calls)-1] != total {
		t.Fatalf("progress: total %d, %d calls, last %v", total, len(calls), calls[len(calls)-1])
	}
	for i := 1; i < len(calls); i++ {
		if calls[i] < calls[i-1] {
			t.Fatalf("progress goes back: %v", calls)
		}
	}
}

// TestAuditLog writes events read from a log to a pgaudit audit log with
// internal/auditlog's writer and reads them back through Read, which detects the
// format and delegates to auditlog.Reader.
func TestAuditLog(t *testing.T) {
	t.Parallel()
	evs, _ := readAll(t, []Input{{Name: "csv", R: bytes.NewReader(genBytes(writeCSV, genSessions(3, 6, 7)))}}, Options{KeepParams: true})
	var buf bytes.Buffer
	al, err := auditlog.Open(auditlog.Config{Writer: &buf, FlushInterval: -1, RunID: "r1", LogParameters: true})
	if err != nil {
		t.Fatal(err)
	}
	for _, ev := range evs {
		al.WriteStatement(&auditlog.Statement{Event: ev})
	}
	if err := al.Close(); err != nil {
		t.Fatal(err)
	}
	data := buf.String() + "not json\n"
	got, sum := readAll(t, []Input{{Name: "audit.log", R: strings.NewReader(data)}}, Options{})
	if sum.Format != FormatAudit || sum.Audit == nil || sum.Audit.Statements != len(evs) {
		t.Fatalf("summary %+v", sum)
	}
	if sum.MalformedCount != 1 || sum.Malformed[0].Line != int64(strings.Count(data, "\n")) {
		t.Errorf("malformed %+v", sum.Malformed)
	}
	// Simple-protocol records carry a keyed hash of their literals, which
	// the reader puts in ParamHash (issue 14, item 9); the source events
	// have none.
	withHash := 0
	for _, ev := range got {
		if ev.NumParams == 0 && ev.ParamHash != 0 {
			withHash++
			ev.ParamHash = 0
		}
	}
	if withHash == 0 {
		t.Error("no literal_hash read back")
	}
	if skeleton(got) != skeleton(evs) || sum.Sessions != 3 || int(sum.Statements) != len(evs) {
		t.Errorf("round trip differs:\n%s\nwant\n%s", skeleton(got), skeleton(evs))
	}
	if _, err := Read(context.Background(), []Input{{Name: "x", R: strings.NewReader(`{"schema": 99, "record": "statement"}` + "\n")}}, Options{}, nil); !errors.Is(err, ErrUnknownFormat) {
		t.Errorf("unsupported schema only: %v", err)
	}
}

func TestSessionsByPID(t *testing.T) {
	t.Parallel()
	// '%m [%p] ' has no session id: a pid reused by a new backend is a new
	// session, found by its connection line or a line number going back.
	p := "%m [%p] "
	l := func(ts string, pid int, msg string) string {
		return fmt.Sprintf("2025-03-04 05:06:%s UTC [%d] LOG:  %s\n", ts, pid, msg)
	}
	log := l("01.000", 9, "connection received: host=10.1.1.1 port=1") +
		l("01.001", 9, "connection authorized: user=a database=d application_name=x") +
		l("01.002", 9, "duration: 1.000 ms  statement: select 1") +
		l("01.003", 9, "disconnection: session time: 0:00:00.002 user=a database=d host=10.1.1.1 port=1") +
		l("02.000", 9, "duration: 1.000 ms  statement: select 2") +
		l("03.000", 9, "connection received: host=10.1.1.2 port=1") +
		l("03.001", 9, "duration: 1.000 ms  statement: select 3")
	evs, sum := readAll(t, []Input{{Name: "x", R: strings.NewReader(log)}}, Options{Prefix: p})
	if sum.Sessions != 3 || len(evs) != 3 || evs[0].ClientAddr != "10.1.1.1" || evs[0].User != "a" || evs[2].ClientAddr != "10.1.1.2" {
		t.Errorf("%d sessions:\n%s", sum.Sessions, render(evs))
	}
	for _, ev := range evs {
		if ev.TxSeq != 1 {
			t.Errorf("%q: tx %d", ev.Text, ev.TxSeq)
		}
	}
}

func TestEvictSessions(t *testing.T) {
	defer func(n int) { maxLiveSessions = n }(maxLiveSessions)
	maxLiveSessions = 4
	data := genBytes(writeCSV, genSessions(30, 6, 8))
	want, _ := readAll(t, []Input{{Name: "x", R: bytes.NewReader(data)}}, Options{})
	maxLiveSessions = 1 << 15
	got, sum := readAll(t, []Input{{Name: "x", R: bytes.NewReader(data)}}, Options{})
	if len(got) != len(want) || sum.Sessions != 30 {
		t.Errorf("%d events with eviction, %d without", len(want), len(got))
	}
}

var benchCSV = sync.OnceValue(func() []byte {
	var data bytes.Buffer
	for seed := uint64(0); data.Len() < 32<<20; seed++ {
		writeCSV(&data, genSessions(50, 60, seed))
	}
	return data.Bytes()
})

// BenchmarkReadCSV reads a generated csvlog of about 32 MB.
func BenchmarkReadCSV(b *testing.B) {
	data := benchCSV()
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	b.ResetTimer()
	cpu0 := cpuTime()
	for range b.N {
		n := 0
		_, err := Read(context.Background(), []Input{{Name: "bench.csv", R: bytes.NewReader(data)}}, Options{}, func(*event.Event) { n++ })
		if err != nil || n == 0 {
			b.Fatal(err, n)
		}
	}
	// MB per CPU second does not depend on what else the machine runs.
	if cpu := cpuTime() - cpu0; cpu > 0 {
		b.ReportMetric(float64(len(data))*float64(b.N)/1e6/cpu.Seconds(), "MB/cpu-s")
	}
}

// genReader produces a csvlog of n bytes lazily.
type genReader struct {
	left int64
	seed uint64
	buf  bytes.Buffer
}

func (g *genReader) Read(p []byte) (int, error) {
	if g.left <= 0 {
		return 0, io.EOF
	}
	if g.buf.Len() == 0 {
		writeCSV(&g.buf, genSessions(50, 60, g.seed))
		g.seed++
	}
	if int64(len(p)) > g.left {
		p = p[:g.left]
	}
	n, _ := g.buf.Read(p)
	g.left -= int64(n)
	return n, nil
}

// TestBoundedMemory streams a large log and checks the heap stays far below
// its size.
func TestBoundedMemory(t *testing.T) {
	if testing.Short() || raceEnabled {
		t.Skip("reads 256 MB")
	}
	const size = 256 << 20
	var peak uint64
	var ms runtime.MemStats
	n := 0
	sum, err := Read(context.Background(), []Input{{Name: "big.csv", R: &genReader{left: size}}}, Options{}, func(*event.Event) {
		if n++; n%20000 == 0 {
			runtime.ReadMemStats(&ms)
			peak = max(peak, ms.HeapAlloc)
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%d statements, %d MB read, peak heap %d MB", sum.Statements, size>>20, peak>>20)
	if peak > 64<<20 {
		t.Errorf("peak heap %d MB while reading %d MB", peak>>20, size>>20)
	}
}
