package querylog

import (
	"bytes"
	"compress/gzip"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// genRec is one log entry of a synthetic log, written in each format the
// way Postgres writes it (elog.c, csvlog.c, jsonlog.c). The synthetic logs
// are for unit tests that need volume or damage (chunking, malformed lines,
// the benchmark); the behavior against real servers is covered by
// TestPostgresLogs.
type genRec struct {
	t         time.Time
	pid       int
	sessStart time.Time
	line      int
	ps        string
	vxid      string
	sev       string
	state     string
	msg       string
	detail    string
	query     string
	user, db  string
	app, host string
	port      int
}

// genSessions builds sessions*perSession statements of several kinds,
// sessions interleaved as concurrent clients are.
func genSessions(sessions, perSession int, seed uint64) []genRec {
	rng := rand.New(rand.NewPCG(seed, 1))
	t0 := time.Date(2025, 3, 4, 5, 6, 7, 0, time.UTC)
	type sess struct {
		pid, line, lx, j int
		start            time.Time
		user, db, app    string
	}
	ss := make([]*sess, sessions)
	for i := range ss {
		ss[i] = &sess{pid: 1000 + i, start: t0.Add(time.Duration(i) * time.Second), lx: 1,
			user: fmt.Sprintf("user%d", i%3), db: "shop", app: fmt.Sprintf("app %d", i%4)}
	}
	var out []genRec
	now := t0.Add(time.Duration(sessions) * time.Second)
	add := func(s *sess, r genRec) {
		s.line++
		now = now.Add(time.Duration(rng.IntN(3000)) * time.Microsecond)
		r.t, r.pid, r.sessStart, r.line = now, s.pid, s.start, s.line
		r.user, r.db, r.app, r.host, r.port = s.user, s.db, s.app, "10.0.0.7", 40000+s.pid
		if r.sev == "" {
			r.sev = "LOG"
		}
		if r.state == "" && r.sev == "LOG" {
			r.state = "00000"
		}
		out = append(out, r)
	}
	dur := func() string { return fmt.Sprintf("%d.%03d", rng.IntN(50), rng.IntN(1000)) }
	vx := func(s *sess) string { return fmt.Sprintf("%d/%d", s.pid%100, s.lx) }
	for _, s := range ss {
		add(s, genRec{msg: "connection received: host=10.0.0.7 port=5000", ps: ""})
		add(s, genRec{msg: fmt.Sprintf("connection authorized: user=%s database=%s application_name=%s", s.user, s.db, s.app), ps: "authentication", vxid: vx(s)})
	}
	live := append([]*sess(nil), ss...)
	for len(live) > 0 {
		k := rng.IntN(len(live))
		s := live[k]
		if s.j == perSession {
			add(s, genRec{msg: "disconnection: session time: 0:00:01.000 user=x database=y host=10.0.0.7 port=5000", ps: "idle"})
			live = append(live[:k], live[k+1:]...)
			continue
		}
		s.lx++
		switch s.j % 6 {
		case 0:
			add(s, genRec{ps: "SELECT", vxid: fmt.Sprintf("%d/0", s.pid%100), msg: fmt.Sprintf("duration: %s ms  statement: SELECT * FROM users WHERE id = %d", dur(), rng.IntN(1000))})
		case 1:
			p := fmt.Sprintf("parameters: $1 = '%d', $2 = 'it''s \"q\"', $3 = NULL", rng.IntN(100))
			add(s, genRec{ps: "PARSE", vxid: vx(s), msg: "duration: " + dur() + " ms  parse <unnamed>: SELECT * FROM orders WHERE user_id = $1 AND note = $2 AND x = $3"})
			add(s, genRec{ps: "BIND", vxid: vx(s), msg: "duration: " + dur() + " ms  bind <unnamed>: SELECT * FROM orders WHERE user_id = $1 AND note = $2 AND x = $3", detail: p})
			add(s, genRec{ps: "SELECT", vxid: vx(s), msg: "duration: " + dur() + " ms  execute <unnamed>: SELECT * FROM orders WHERE user_id = $1 AND note = $2 AND x = $3", detail: p})
		case 2:
			add(s, genRec{ps: "SELECT", vxid: fmt.Sprintf("%d/0", s.pid%100), msg: "duration: " + dur() + " ms  statement: SELECT name,\n       \"total\"\n  FROM accounts\n WHERE note = 'a,b\n\"c\"'"})
		case 3:
			add(s, genRec{ps: "BEGIN", vxid: vx(s), msg: "duration: " + dur() + " ms  statement: BEGIN"})
			add(s, genRec{ps: "UPDATE", vxid: vx(s), msg: fmt.Sprintf("duration: %s ms  statement: UPDATE accounts SET total = total + %d WHERE id = 7", dur(), rng.IntN(9))})
			add(s, genRec{ps: "COMMIT", vxid: fmt.Sprintf("%d/0", s.pid%100), msg: "duration: " + dur() + " ms  statement: COMMIT"})
		case 4:
			add(s, genRec{ps: "SELECT", vxid: vx(s), sev: "ERROR", state: "42P01", msg: `relation "missing" does not exist`, query: "SELECT * FROM missing"})
		case 5:
			add(s, genRec{ps: "idle", vxid: vx(s), msg: "statement: INSERT INTO audit VALUES (1, 'x')"})
			add(s, genRec{ps: "INSERT", vxid: fmt.Sprintf("%d/0", s.pid%100), msg: "duration: " + dur() + " ms"})
		}
		s.j++
	}
	return out
}

func csvQuote(b *bytes.Buffer, s string) {
	b.WriteByte('"')
	b.WriteString(strings.ReplaceAll(s, `"`, `""`))
	b.WriteByte('"')
}

func csvOpt(b *bytes.Buffer, s string) {
	if s != "" {
		csvQuote(b, s)
	}
}

const genTime = "2006-01-02 15:04:05.000 MST"

func sessionHex(r *genRec) string { return fmt.Sprintf("%x.%x", r.sessStart.Unix(), r.pid) }

// writeCSV writes records as csvlog (PostgreSQL 15 columns).
func writeCSV(w io.Writer, recs []genRec) {
	var b bytes.Buffer
	for i := range recs {
		r := &recs[i]
		b.Reset()
		b.WriteString(r.t.Format(genTime))
		b.WriteByte(',')
		csvQuote(&b, r.user)
		b.WriteByte(',')
		csvQuote(&b, r.db)
		fmt.Fprintf(&b, ",%d,", r.pid)
		csvQuote(&b, fmt.Sprintf("%s:%d", r.host, r.port))
		fmt.Fprintf(&b, ",%s,%d,", sessionHex(r), r.line)
		csvQuote(&b, r.ps)
		fmt.Fprintf(&b, ",%s,%s,0,%s,%s,", r.sessStart.Format("2006-01-02 15:04:05 MST"), r.vxid, r.sev, r.state)
		csvQuote(&b, r.msg)
		b.WriteByte(',')
		csvOpt(&b, r.detail)
		b.WriteString(",,,,,")
		csvOpt(&b, r.query)
		b.WriteString(",,,")
		csvQuote(&b, r.app)
		b.WriteString(`,"client backend",,0`)
		b.WriteByte('\n')
		w.Write(b.Bytes())
	}
}

// genPrefix is the log_line_prefix writeStderr uses.
const genPrefix = "%m [%p] %q%u@%d "

// writeStderr writes records as a stderr log with genPrefix.
func writeStderr(w io.Writer, recs []genRec) {
	var b bytes.Buffer
	line := func(r *genRec, sev, msg string) {
		fmt.Fprintf(&b, "%s [%d] %s@%s %s:  %s\n", r.t.Format(genTime), r.pid, r.user, r.db, sev, strings.ReplaceAll(msg, "\n", "\n\t"))
	}
	for i := range recs {
		r := &recs[i]
		b.Reset()
		line(r, r.sev, r.msg)
		if r.detail != "" {
			line(r, "DETAIL", r.detail)
		}
		if r.query != "" {
			line(r, "STATEMENT", r.query)
		}
		w.Write(b.Bytes())
	}
}

// writeJSON writes records as jsonlog.
func writeJSON(w io.Writer, recs []genRec) {
	for i := range recs {
		r := &recs[i]
		m := map[string]any{
			"timestamp": r.t.Format(genTime), "user": r.user, "dbname": r.db, "pid": r.pid,
			"remote_host": r.host, "remote_port": r.port, "session_id": sessionHex(r), "line_num": r.line,
			"ps": r.ps, "session_start": r.sessStart.Format("2006-01-02 15:04:05 MST"), "txid": 0,
			"error_severity": r.sev, "message": r.msg, "application_name": r.app, "backend_type": "client backend", "query_id": 0,
		}
		if r.vxid != "" {
			m["vxid"] = r.vxid
		}
		if r.state != "" {
			m["state_code"] = r.state
		}
		if r.detail != "" {
			m["detail"] = r.detail
		}
		if r.query != "" {
			m["statement"] = r.query
		}
		b, _ := json.Marshal(m)
		w.Write(append(b, '\n'))
	}
}

func genBytes(write func(io.Writer, []genRec), recs []genRec) []byte {
	var b bytes.Buffer
	write(&b, recs)
	return b.Bytes()
}

// gzipFile writes name.gz next to name and returns its path.
func gzipFile(t testing.TB, name string) string {
	t.Helper()
	data, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), filepath.Base(name)+".gz")
	if err := os.WriteFile(out, gzipBytes(data), 0o644); err != nil {
		t.Fatal(err)
	}
	return out
}

func gzipBytes(data []byte) []byte {
	var b bytes.Buffer
	zw := gzip.NewWriter(&b)
	zw.Write(data)
	zw.Close()
	return b.Bytes()
}
