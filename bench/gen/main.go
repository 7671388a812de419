// Command gen writes a synthetic PostgreSQL 15 csvlog for bench/lint.sh: a
// busy server logging with log_min_duration_statement = 0, log_connections
// and log_disconnections on, as csvlog (26 columns).
//
// The lines mimic what Postgres 15 writes (checked against real logs, see
// bench/README.md): "duration: X ms  statement: ..." for the simple
// protocol, "duration: X ms  parse|bind|execute <unnamed>|S_n: ..." with
// "parameters: $1 = '...'" in DETAIL for the extended protocol, session ids,
// session line numbers, virtual transaction ids that follow BEGIN/COMMIT,
// transaction ids on writes, ERRORs with their statement, and background
// noise (checkpoints, autovacuum, temporary files).
//
// The workload: a few hundred query shapes (30 tables times 9 templates plus
// hand-written ones) picked with a Zipf distribution and varying literals and
// parameters; web sessions (extended protocol, unnamed or named prepared
// statements), workers (simple protocol, batches in transactions), reports
// (slow queries), psql sessions (ad-hoc queries, typos), health checks; N+1
// loops (a SELECT followed by one lookup per row); errors (unique
// violations, syntax errors, undefined columns, statement timeouts,
// deadlocks).
//
// The output is a function of the flags only (the seed drives everything),
// so a file can be rebuilt from the parameters printed in the summary.
//
//	go run ./bench/gen -size-mb 1024 -seed 1 -o /tmp/big.csv
package main

import (
	"bufio"
	"container/heap"
	"flag"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"strconv"
	"strings"
	"time"
)

// ---------------------------------------------------------------- shapes

type pkind uint8

const (
	pInt pkind = iota
	pBigID
	pStatus
	pTime
	pName
	pEmail
	pMoney
	pText
	pBool
	pPattern
	pList // an IN list of 1..12 ints
)

// shape is one query shape: text pieces around its parameters.
type shape struct {
	id     int
	parts  []string // len(params)+1
	params []pkind
	tag    string // command tag (ps display) of its execute / statement lines
	write  bool
	durMu  float64 // median duration, ms
	durSig float64 // log-normal sigma
	table  string
}

var statuses = []string{"new", "paid", "shipped", "cancelled", "refunded", "active", "pending"}
var firstNames = []string{"Anna", "Bob", "Chloé", "Dmitri", "Eve", "Fatima", "Günter", "Hiro", "Ines", "Jack", "O'Brien", "D'Arcy", "Zoë", "Mei", "Lars"}
var words = []string{"red", "blue", "small", "large", "cotton", "steel", "organic", "vintage", "deluxe", "basic", "pro", "eco", "smart", "classic"}

type table struct {
	name  string
	cols  []string // besides id
	fk    string   // a foreign key column
	text  string   // a text column
	other string   // the table fk points to
}

var tableNames = []string{"users", "accounts", "orders", "order_items", "products", "categories", "carts", "cart_items",
	"payments", "invoices", "shipments", "addresses", "reviews", "user_sessions", "events", "notifications", "messages",
	"comments", "posts", "tags", "post_tags", "inventory", "warehouses", "suppliers", "coupons", "refunds",
	"subscriptions", "plans", "audit_events", "feature_flags"}

var colPool = []string{"status", "created_at", "updated_at", "name", "email", "amount", "quantity", "price", "sku",
	"title", "body", "kind", "score", "currency", "note", "deleted_at", "priority", "country", "total", "label"}

func paramKind(col string) pkind {
	switch {
	case col == "id" || strings.HasSuffix(col, "_id"):
		return pBigID
	case col == "status" || col == "kind" || col == "currency" || col == "country" || col == "label":
		return pStatus
	case strings.HasSuffix(col, "_at"):
		return pTime
	case col == "name" || col == "title" || col == "sku":
		return pName
	case col == "email":
		return pEmail
	case col == "amount" || col == "price" || col == "total":
		return pMoney
	case col == "body" || col == "note":
		return pText
	}
	return pInt
}

// buildShapes makes the shape catalogue; it depends on nothing but its own
// fixed seed, so every run has the same shapes.
func buildShapes() (all []*shape, byTable map[string][]*shape, special map[string]*shape) {
	r := rand.New(rand.NewPCG(42, 42))
	var tables []*table
	for i, n := range tableNames {
		t := &table{name: n}
		perm := r.Perm(len(colPool))
		k := 4 + r.IntN(4)
		for _, p := range perm[:k] {
			t.cols = append(t.cols, colPool[p])
		}
		t.other = tableNames[(i+1+r.IntN(len(tableNames)-1))%len(tableNames)]
		t.fk = strings.TrimSuffix(t.other, "s") + "_id"
		t.cols = append(t.cols, t.fk)
		t.text = "name"
		for _, c := range t.cols {
			if c == "title" || c == "name" || c == "note" || c == "body" || c == "email" {
				t.text = c
				break
			}
		}
		if !contains(t.cols, t.text) {
			t.cols = append(t.cols, t.text)
		}
		if !contains(t.cols, "created_at") {
			t.cols = append(t.cols, "created_at")
		}
		tables = append(tables, t)
	}
	byTable = map[string][]*shape{}
	special = map[string]*shape{}
	add := func(t *table, tag string, write bool, mu, sig float64, pieces ...any) *shape {
		s := &shape{tag: tag, write: write, durMu: mu, durSig: sig}
		if t != nil {
			s.table = t.name
		}
		var cur strings.Builder
		for _, p := range pieces {
			switch v := p.(type) {
			case string:
				cur.WriteString(v)
			case pkind:
				s.parts = append(s.parts, cur.String())
				cur.Reset()
				s.params = append(s.params, v)
			}
		}
		s.parts = append(s.parts, cur.String())
		s.id = len(all)
		all = append(all, s)
		if t != nil {
			byTable[t.name] = append(byTable[t.name], s)
		}
		return s
	}
	for _, t := range tables {
		cols := strings.Join(t.cols[:3], ", ")
		c1, c2 := t.cols[0], t.cols[1]
		// 1 primary key lookup (also the N+1 target)
		add(t, "SELECT", false, 0.06, 0.7, "SELECT id, "+strings.Join(t.cols, ", ")+" FROM "+t.name+" WHERE id = ", pBigID)
		// 2 list by foreign key (also the N+1 source)
		add(t, "SELECT", false, 0.4, 0.9, "SELECT id, "+cols+" FROM "+t.name+" WHERE "+t.fk+" = ", pBigID, " ORDER BY created_at DESC LIMIT 20")
		// 3 count
		add(t, "SELECT", false, 3, 1.0, "SELECT count(*) FROM "+t.name+" WHERE "+c1+" = ", paramKind(c1), " AND created_at > ", pTime)
		// 4 update
		add(t, "UPDATE", true, 0.3, 0.8, "UPDATE "+t.name+" SET "+c2+" = ", paramKind(c2), ", updated_at = now() WHERE id = ", pBigID)
		// 5 insert
		add(t, "INSERT", true, 0.25, 0.8, "INSERT INTO "+t.name+" ("+cols+") VALUES (", paramKind(t.cols[0]), ", ", paramKind(t.cols[1]), ", ", paramKind(t.cols[2]), ") RETURNING id")
		// 6 delete
		add(t, "DELETE", true, 0.2, 0.8, "DELETE FROM "+t.name+" WHERE id = ", pBigID)
		// 7 join
		add(t, "SELECT", false, 1.5, 1.0, "SELECT a.id, a."+c1+", b.id AS "+strings.TrimSuffix(t.other, "s")+"_ref\n  FROM "+t.name+" a\n  JOIN "+t.other+" b ON b.id = a."+t.fk+"\n WHERE a."+c1+" = ", paramKind(c1), "\n LIMIT 100")
		// 8 IN list
		add(t, "SELECT", false, 0.5, 0.9, "SELECT id, "+cols+" FROM "+t.name+" WHERE id IN (", pList, ")")
		// 9 search
		add(t, "SELECT", false, 8, 1.1, "SELECT id, "+t.text+" FROM "+t.name+" WHERE "+t.text+" ILIKE ", pPattern, " ORDER BY id LIMIT 25")
	}
	// Hand-written shapes: reports (slow), CTEs, window functions, upserts,
	// sqlcommenter comments, quoted identifiers, literals with commas,
	// quotes and newlines, tool queries.
	special["health"] = add(nil, "SELECT", false, 0.02, 0.5, "SELECT 1")
	special["report_sales"] = add(nil, "SELECT", false, 700, 0.6, "SELECT date_trunc('day', o.created_at) AS day,\n       count(*) AS orders,\n       sum(oi.quantity * oi.price) AS revenue\n  FROM orders o\n  JOIN order_items oi ON oi.order_id = o.id\n WHERE o.created_at >= ", pTime, "\n   AND o.status <> 'cancelled'\n GROUP BY 1\n ORDER BY 1")
	special["report_top"] = add(nil, "SELECT", false, 450, 0.7, "WITH ranked AS (\n  SELECT p.id, p.name, sum(oi.quantity) AS sold,\n         rank() OVER (PARTITION BY p.category_id ORDER BY sum(oi.quantity) DESC) AS r\n    FROM products p\n    JOIN order_items oi ON oi.product_id = p.id\n   WHERE oi.created_at > ", pTime, "\n   GROUP BY p.id, p.name, p.category_id\n)\nSELECT * FROM ranked WHERE r <= ", pInt)
	special["report_cohort"] = add(nil, "SELECT", false, 1200, 0.5, "SELECT u.country, date_trunc('month', u.created_at) AS cohort,\n       count(DISTINCT o.user_id) FILTER (WHERE o.status = 'paid') AS buyers\n  FROM users u LEFT JOIN orders o ON o.user_id = u.id\n WHERE u.created_at BETWEEN ", pTime, " AND ", pTime, "\n GROUP BY 1, 2")
	special["upsert"] = add(nil, "INSERT", true, 0.4, 0.8, "INSERT INTO inventory (product_id, warehouse_id, quantity) VALUES (", pBigID, ", ", pInt, ", ", pInt, ")\nON CONFLICT (product_id, warehouse_id) DO UPDATE SET quantity = inventory.quantity + EXCLUDED.quantity")
	special["commented"] = add(nil, "SELECT", false, 0.3, 0.8, "SELECT \"Order\".\"id\", \"Order\".\"status\" FROM \"orders\" AS \"Order\" WHERE \"Order\".\"user_id\" = ", pBigID, " /*controller='orders',action='index',framework='rails'*/")
	special["note"] = add(nil, "UPDATE", true, 0.4, 0.8, "UPDATE orders SET note = ", pText, " WHERE id = ", pBigID)
	special["lock"] = add(nil, "SELECT", false, 0.2, 0.8, "SELECT id, balance FROM accounts WHERE id = ", pBigID, " FOR UPDATE")
	special["balance"] = add(nil, "UPDATE", true, 0.3, 0.8, "UPDATE accounts SET balance = balance - ", pMoney, " WHERE id = ", pBigID)
	special["ledger"] = add(nil, "INSERT", true, 0.3, 0.8, "INSERT INTO ledger (account_id, amount, memo, created_at) VALUES (", pBigID, ", ", pMoney, ", ", pText, ", now())")
	special["queue_pop"] = add(nil, "UPDATE", true, 0.8, 0.9, "UPDATE jobs SET state = 'running', locked_at = now()\n WHERE id = (SELECT id FROM jobs WHERE state = 'queued' AND queue = ", pStatus, "\n             ORDER BY priority DESC, id LIMIT 1 FOR UPDATE SKIP LOCKED)\nRETURNING id, payload")
	special["queue_done"] = add(nil, "UPDATE", true, 0.3, 0.8, "UPDATE jobs SET state = 'done', finished_at = now() WHERE id = ", pBigID)
	special["exists"] = add(nil, "SELECT", false, 0.1, 0.7, "SELECT EXISTS (SELECT 1 FROM feature_flags WHERE name = ", pName, " AND enabled)")
	special["catalog"] = add(nil, "SELECT", false, 1.2, 0.6, "SELECT c.relname, c.reltuples::bigint, pg_total_relation_size(c.oid)\n  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace\n WHERE n.nspname = 'public' AND c.relkind = 'r'\n ORDER BY 3 DESC LIMIT ", pInt)
	special["adhoc"] = add(nil, "SELECT", false, 25, 1.2, "select * from orders where status = ", pStatus, " and total > ", pMoney, " order by created_at desc limit 50")
	special["set_tz"] = add(nil, "SET", false, 0.02, 0.5, "SET TIME ZONE 'UTC'")
	special["set_timeout"] = add(nil, "SET", false, 0.02, 0.5, "SET statement_timeout = '5s'")
	special["show"] = add(nil, "SHOW", false, 0.02, 0.5, "SHOW transaction_isolation")
	special["begin"] = add(nil, "BEGIN", false, 0.01, 0.5, "BEGIN")
	special["commit"] = add(nil, "COMMIT", false, 0.5, 1.0, "COMMIT")
	special["rollback"] = add(nil, "ROLLBACK", false, 0.05, 0.6, "ROLLBACK")
	return all, byTable, special
}

func contains(ss []string, s string) bool {
	for _, x := range ss {
		if x == s {
			return true
		}
	}
	return false
}

// ---------------------------------------------------------------- values

type gen struct {
	r   *rand.Rand
	t0  int64 // log start, µs since the epoch
	now int64
}

func (g *gen) value(k pkind) (lit, param string, null bool) {
	r := g.r
	switch k {
	case pInt:
		v := strconv.Itoa(1 + r.IntN(100))
		return v, v, false
	case pBigID:
		v := strconv.Itoa(1 + r.IntN(5_000_000))
		return v, v, false
	case pStatus:
		v := statuses[r.IntN(len(statuses))]
		return "'" + v + "'", v, false
	case pTime:
		ts := time.UnixMicro(g.t0 - int64(r.IntN(90*86400))*1_000_000).UTC().Format("2006-01-02 15:04:05")
		return "'" + ts + "'", ts, false
	case pName:
		v := firstNames[r.IntN(len(firstNames))] + " " + words[r.IntN(len(words))]
		return quoteLit(v), v, false
	case pEmail:
		v := strings.ToLower(strings.ReplaceAll(firstNames[r.IntN(len(firstNames))], "'", "")) + strconv.Itoa(r.IntN(100000)) + "@example.com"
		return "'" + v + "'", v, false
	case pMoney:
		v := strconv.Itoa(r.IntN(1000)) + "." + fmt.Sprintf("%02d", r.IntN(100))
		return v, v, false
	case pText:
		if r.IntN(20) == 0 {
			return "NULL", "", true
		}
		var b strings.Builder
		n := 2 + r.IntN(8)
		for i := 0; i < n; i++ {
			if i > 0 {
				switch r.IntN(12) {
				case 0:
					b.WriteString(", ")
				case 1:
					b.WriteString("\n")
				case 2:
					b.WriteString(" \"quoted\" ")
				default:
					b.WriteByte(' ')
				}
			}
			b.WriteString(words[r.IntN(len(words))])
		}
		if r.IntN(6) == 0 {
			b.WriteString(" it's fine")
		}
		v := b.String()
		return quoteLit(v), v, false
	case pBool:
		if r.IntN(2) == 0 {
			return "true", "t", false
		}
		return "false", "f", false
	case pPattern:
		v := "%" + words[r.IntN(len(words))] + "%"
		return "'" + v + "'", v, false
	}
	panic("unreachable")
}

func quoteLit(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }

// stmt is one statement ready to log: its text for the simple protocol
// (literals inline) and for the extended one ($n), and the DETAIL of its
// bind and execute lines.
type stmt struct {
	sh     *shape
	simple string
	ext    string
	detail string
	nps    int
}

func (g *gen) render(sh *shape, fixed map[int]string) stmt {
	var simple, ext, detail strings.Builder
	n := 0
	addParam := func(lit, param string, null bool) {
		n++
		simple.WriteString(lit)
		ext.WriteString("$" + strconv.Itoa(n))
		if n == 1 {
			detail.WriteString("parameters: ")
		} else {
			detail.WriteString(", ")
		}
		detail.WriteString("$" + strconv.Itoa(n) + " = ")
		if null {
			detail.WriteString("NULL")
		} else {
			detail.WriteString(quoteLit(param))
		}
	}
	for i, p := range sh.params {
		simple.WriteString(sh.parts[i])
		ext.WriteString(sh.parts[i])
		if v, ok := fixed[i]; ok {
			addParam(v, v, false)
			continue
		}
		if p == pList {
			k := 1 + g.r.IntN(12)
			for j := 0; j < k; j++ {
				if j > 0 {
					simple.WriteString(", ")
					ext.WriteString(", ")
				}
				addParam(g.value(pBigID))
			}
			continue
		}
		addParam(g.value(p))
	}
	simple.WriteString(sh.parts[len(sh.parts)-1])
	ext.WriteString(sh.parts[len(sh.parts)-1])
	return stmt{sh: sh, simple: simple.String(), ext: ext.String(), detail: detail.String(), nps: n}
}

// ---------------------------------------------------------------- sessions

type proto uint8

const (
	protoSimple proto = iota
	protoUnnamed
	protoNamed
)

type profile struct {
	name    string
	user    string
	db      string
	app     string
	proto   proto
	weight  int
	units   [2]int  // units of work per session, min..max
	thinkMs float64 // mean think time between units
}

var profiles = []profile{
	{name: "web", user: "shop_app", db: "shop", app: "shop-web", proto: protoUnnamed, weight: 40, units: [2]int{200, 3000}, thinkMs: 150},
	{name: "api", user: "shop_app", db: "shop", app: "PostgreSQL JDBC Driver", proto: protoNamed, weight: 25, units: [2]int{300, 4000}, thinkMs: 150},
	{name: "worker", user: "shop_worker", db: "shop", app: "sidekiq", proto: protoSimple, weight: 15, units: [2]int{100, 2000}, thinkMs: 200},
	{name: "rails", user: "shop_app", db: "shop", app: "rails", proto: protoSimple, weight: 10, units: [2]int{50, 1500}, thinkMs: 150},
	{name: "report", user: "analyst", db: "shop", app: "Metabase", proto: protoUnnamed, weight: 3, units: [2]int{3, 40}, thinkMs: 2000},
	{name: "psql", user: "dba", db: "shop", app: "psql", proto: protoSimple, weight: 2, units: [2]int{2, 25}, thinkMs: 4000},
	{name: "health", user: "monitor", db: "postgres", app: "pg_isready-check", proto: protoSimple, weight: 5, units: [2]int{1, 3}, thinkMs: 5},
}

// step is one log entry a session will write.
type stepKind uint8

const (
	stParse stepKind = iota
	stBind
	stExec   // extended execute
	stSimple // simple-protocol statement
	stError
	stConnRecv
	stConnAuth
	stDisconnect
	stTempFile
)

type errSpec struct {
	state, msg, detail, hint, context, query string
	qpos                                     int
	tag                                      string
}

type step struct {
	kind  stepKind
	gapUs int64 // think time before the step starts
	durUs int64
	st    *stmt
	name  string // prepared statement name
	err   *errSpec
	extra string // temp file message
}

type session struct {
	id        int
	prof      *profile
	pid       int
	slot      int
	start     int64 // µs
	line      int
	port      int
	host      string
	unitsLeft int
	script    []step
	at        int64 // when the head of script is logged
	lastLog   int64
	inTx      bool
	lx        uint32 // current local xid, 0 when none
	xid       uint32
	prepared  map[int]string // shape id -> statement name
	heapIdx   int
}

type sessHeap []*session

func (h sessHeap) Len() int           { return len(h) }
func (h sessHeap) Less(i, j int) bool { return h[i].at < h[j].at }
func (h sessHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].heapIdx, h[j].heapIdx = i, j
}
func (h *sessHeap) Push(x any) { s := x.(*session); s.heapIdx = len(*h); *h = append(*h, s) }
func (h *sessHeap) Pop() any {
	old := *h
	s := old[len(old)-1]
	*h = old[:len(old)-1]
	return s
}

// ---------------------------------------------------------------- writer

type stats struct {
	lines, bytes                      int64
	statements, errors, errorEvents   int64
	parseBind, sessions, transactions int64
	nplus1Loops, rollbacks, noise     int64
}

type writer struct {
	w       *bufio.Writer
	buf     []byte
	st      stats
	slotLx  []uint32
	nextXid uint32
}

func (w *writer) quoted(s string) {
	w.buf = append(w.buf, '"')
	for i := 0; i < len(s); i++ {
		if s[i] == '"' {
			w.buf = append(w.buf, '"')
		}
		w.buf = append(w.buf, s[i])
	}
	w.buf = append(w.buf, '"')
}

func (w *writer) opt(s string) {
	if s != "" {
		w.quoted(s)
	}
}

// row is one csvlog record (PostgreSQL 15: 26 columns).
type row struct {
	t                 int64
	user, db          string
	pid               int
	from              string
	sessStart         int64
	line              int
	tag               string
	tagSet            bool // write tag even when empty ("")
	vxid              string
	xid               uint32
	sev, state        string
	msg, detail, hint string
	context, query    string
	qpos              int
	app               string
	appSet            bool
	backend           string
}

func (w *writer) write(r *row) error {
	b := w.buf[:0]
	b = time.UnixMicro(r.t).UTC().AppendFormat(b, "2006-01-02 15:04:05.000 UTC")
	b = append(b, ',')
	w.buf = b
	w.opt(r.user)
	w.buf = append(w.buf, ',')
	w.opt(r.db)
	w.buf = append(w.buf, ',')
	w.buf = strconv.AppendInt(w.buf, int64(r.pid), 10)
	w.buf = append(w.buf, ',')
	w.opt(r.from)
	w.buf = append(w.buf, ',')
	w.buf = strconv.AppendInt(w.buf, r.sessStart/1_000_000, 16)
	w.buf = append(w.buf, '.')
	w.buf = strconv.AppendInt(w.buf, int64(r.pid), 16)
	w.buf = append(w.buf, ',')
	w.buf = strconv.AppendInt(w.buf, int64(r.line), 10)
	w.buf = append(w.buf, ',')
	if r.tag != "" || r.tagSet {
		w.quoted(r.tag)
	}
	w.buf = append(w.buf, ',')
	w.buf = time.UnixMicro(r.sessStart).UTC().AppendFormat(w.buf, "2006-01-02 15:04:05 UTC")
	w.buf = append(w.buf, ',')
	w.buf = append(w.buf, r.vxid...)
	w.buf = append(w.buf, ',')
	w.buf = strconv.AppendUint(w.buf, uint64(r.xid), 10)
	w.buf = append(w.buf, ',')
	w.buf = append(w.buf, r.sev...)
	w.buf = append(w.buf, ',')
	w.buf = append(w.buf, r.state...)
	w.buf = append(w.buf, ',')
	w.quoted(r.msg)
	w.buf = append(w.buf, ',')
	w.opt(r.detail)
	w.buf = append(w.buf, ',')
	w.opt(r.hint)
	w.buf = append(w.buf, ",,,"...) // internal_query, internal_query_pos
	w.opt(r.context)
	w.buf = append(w.buf, ',')
	w.opt(r.query)
	w.buf = append(w.buf, ',')
	if r.qpos > 0 {
		w.buf = strconv.AppendInt(w.buf, int64(r.qpos), 10)
	}
	w.buf = append(w.buf, ",,"...) // location
	if r.app != "" || r.appSet {
		w.quoted(r.app)
	}
	w.buf = append(w.buf, ',')
	w.quoted(r.backend)
	w.buf = append(w.buf, ",,0\n"...) // leader_pid, query_id
	w.st.lines++
	w.st.bytes += int64(len(w.buf))
	_, err := w.w.Write(w.buf)
	return err
}

func fmtMs(us int64) string {
	return strconv.FormatInt(us/1000, 10) + "." + fmt.Sprintf("%03d", us%1000)
}

// ---------------------------------------------------------------- workload

type sim struct {
	g          *gen
	w          *writer
	shapes     []*shape
	byTable    map[string][]*shape
	special    map[string]*shape
	zipf       *rand.Zipf
	perm       []int // shape popularity order
	heap       sessHeap
	nextPid    int
	slots      []bool
	sessSeq    int
	profSum    int
	checkpAt   int64
	checkpOpen bool
	checkpLine int
	avAt       int64
}

func (s *sim) pickShape() *shape {
	for {
		sh := s.shapes[s.perm[int(s.zipf.Uint64())]]
		if sh.tag == "BEGIN" || sh.tag == "COMMIT" || sh.tag == "ROLLBACK" || sh.durMu >= 100 {
			continue
		}
		return sh
	}
}

func (s *sim) dur(sh *shape) int64 {
	d := sh.durMu * math.Exp(s.g.r.NormFloat64()*sh.durSig)
	us := int64(d * 1000)
	if us < 2 {
		us = 2
	}
	return us
}

func (s *sim) think(meanMs float64) int64 {
	return int64(s.g.r.ExpFloat64() * meanMs * 1000)
}

// stmtSteps appends the steps that log one statement in the session's
// protocol.
func (s *sim) stmtSteps(ss *session, sh *shape, fixed map[int]string, gapUs int64) {
	st := s.g.render(sh, fixed)
	d := s.dur(sh)
	switch ss.prof.proto {
	case protoSimple:
		ss.script = append(ss.script, step{kind: stSimple, gapUs: gapUs, durUs: d, st: &st})
	case protoUnnamed, protoNamed:
		name := "<unnamed>"
		parse := true
		if ss.prof.proto == protoNamed {
			if n, ok := ss.prepared[sh.id]; ok {
				name, parse = n, false
			} else {
				name = "S_" + strconv.Itoa(len(ss.prepared)+1)
				ss.prepared[sh.id] = name
			}
		}
		if parse {
			ss.script = append(ss.script, step{kind: stParse, gapUs: gapUs, durUs: 20 + int64(s.g.r.IntN(400)), st: &st, name: name})
			gapUs = 5
		}
		ss.script = append(ss.script, step{kind: stBind, gapUs: gapUs, durUs: 5 + int64(s.g.r.IntN(100)), st: &st, name: name})
		ss.script = append(ss.script, step{kind: stExec, gapUs: 5, durUs: d, st: &st, name: name})
	}
}

func (s *sim) errorStep(ss *session, e *errSpec, gapUs int64) {
	ss.script = append(ss.script, step{kind: stError, gapUs: gapUs, durUs: 50 + int64(s.g.r.IntN(500)), err: e})
}

// unit appends one unit of work (a request, a job, a report, ...).
func (s *sim) unit(ss *session) {
	r := s.g.r
	p := ss.prof
	gap := s.think(p.thinkMs)
	small := func() int64 { return 30 + s.think(0.3) }
	switch p.name {
	case "health":
		s.stmtSteps(ss, s.special["health"], nil, gap)
		return
	case "report":
		if r.IntN(10) == 0 {
			s.stmtSteps(ss, s.special["set_timeout"], nil, gap)
			gap = small()
		}
		rep := []string{"report_sales", "report_top", "report_cohort", "catalog"}[r.IntN(4)]
		if r.IntN(25) == 0 && rep != "catalog" {
			// statement_timeout: no duration line, an ERROR with the statement
			st := s.g.render(s.special[rep], nil)
			s.stmtSteps(ss, s.special[rep], nil, gap)
			ss.script = ss.script[:len(ss.script)-1] // parse and bind logged, the execute is cancelled
			s.errorStep(ss, &errSpec{state: "57014", msg: "canceling statement due to statement timeout", query: st.ext, tag: "SELECT"}, 5_000_000)
			return
		}
		s.stmtSteps(ss, s.special[rep], nil, gap)
		return
	case "psql":
		switch r.IntN(8) {
		case 0:
			s.errorStep(ss, &errSpec{state: "42601", msg: `syntax error at or near "form"`, query: "select * form orders where id = " + strconv.Itoa(r.IntN(100000)), qpos: 10, tag: "idle"}, gap)
		case 1:
			s.errorStep(ss, &errSpec{state: "42703", msg: `column "stauts" does not exist`, hint: `Perhaps you meant to reference the column "orders.status".`, query: "select id, stauts from orders where user_id = " + strconv.Itoa(r.IntN(100000)), qpos: 12, tag: "SELECT"}, gap)
		case 2:
			s.stmtSteps(ss, s.special["catalog"], nil, gap)
		default:
			s.stmtSteps(ss, s.special["adhoc"], nil, gap)
		}
		return
	}
	// web, api, worker, rails
	switch x := r.IntN(100); {
	case x < 4: // N+1: a list, then one lookup per row
		s.w.st.nplus1Loops++
		tn := tableNames[r.IntN(len(tableNames))]
		src := s.byTable[tn][1]
		child := s.byTable[tableNames[(indexOf(tableNames, tn)+1)%len(tableNames)]][0]
		inTx := r.IntN(2) == 0
		if inTx {
			s.stmtSteps(ss, s.special["begin"], nil, gap)
			gap = small()
		}
		s.stmtSteps(ss, src, nil, gap)
		k := 5 + r.IntN(25)
		base := 1 + r.IntN(4_000_000)
		for i := 0; i < k; i++ {
			s.stmtSteps(ss, child, map[int]string{0: strconv.Itoa(base + i*7 + r.IntN(5))}, small())
		}
		if inTx {
			s.stmtSteps(ss, s.special["commit"], nil, small())
		}
	case x < 30: // a transaction
		s.stmtSteps(ss, s.special["begin"], nil, gap)
		n := 2 + r.IntN(5)
		failed := false
		for i := 0; i < n; i++ {
			var sh *shape
			switch r.IntN(4) {
			case 0:
				sh = s.special[[]string{"lock", "balance", "ledger", "upsert", "note", "queue_pop", "queue_done"}[r.IntN(7)]]
			case 1:
				tn := tableNames[r.IntN(len(tableNames))]
				sh = s.byTable[tn][3+r.IntN(3)] // update, insert, delete
			default:
				sh = s.pickShape()
			}
			if sh.tag == "INSERT" && r.IntN(60) == 0 {
				st := s.g.render(sh, nil)
				q := st.simple
				if p.proto != protoSimple {
					q = st.ext
					s.stmtSteps(ss, sh, nil, small())
					ss.script = ss.script[:len(ss.script)-1] // keep parse/bind, the execute fails
				}
				tname := sh.table
				if tname == "" {
					tname = "inventory"
				}
				s.errorStep(ss, &errSpec{state: "23505", msg: fmt.Sprintf("duplicate key value violates unique constraint \"%s_pkey\"", tname),
					detail: fmt.Sprintf("Key (id)=(%d) already exists.", 1+r.IntN(5_000_000)), query: q, tag: "INSERT"}, small())
				failed = true
				break
			}
			if sh.tag == "UPDATE" && r.IntN(400) == 0 {
				st := s.g.render(sh, nil)
				q := st.simple
				if p.proto != protoSimple {
					q = st.ext
				}
				p1, p2 := ss.pid, 1000+r.IntN(60000)
				x1, x2 := 100000+r.IntN(900000), 100000+r.IntN(900000)
				s.errorStep(ss, &errSpec{state: "40P01", msg: "deadlock detected",
					detail: fmt.Sprintf("Process %d waits for ShareLock on transaction %d; blocked by process %d.\nProcess %d waits for ShareLock on transaction %d; blocked by process %d.\nProcess %d: %s\nProcess %d: UPDATE accounts SET balance = balance + 1 WHERE id = 7", p1, x1, p2, p2, x2, p1, p1, q, p2),
					hint:   "See server log for query details.", context: fmt.Sprintf("while updating tuple (%d,%d) in relation \"%s\"", r.IntN(5000), 1+r.IntN(80), orDefault(sh.table, "accounts")),
					query: q, tag: "UPDATE"}, small()+int64(1_000_000))
				failed = true
				break
			}
			s.stmtSteps(ss, sh, nil, small())
		}
		if failed || r.IntN(40) == 0 {
			s.w.st.rollbacks++
			s.stmtSteps(ss, s.special["rollback"], nil, small())
		} else {
			s.stmtSteps(ss, s.special["commit"], nil, small())
		}
	default: // a request: a few autocommit statements
		n := 1 + r.IntN(6)
		for i := 0; i < n; i++ {
			var sh *shape
			switch r.IntN(20) {
			case 0:
				sh = s.special[[]string{"commented", "exists", "set_tz", "show"}[r.IntN(4)]]
			default:
				sh = s.pickShape()
			}
			if i == 0 && r.IntN(300) == 0 && p.proto != protoSimple {
				// a parse error on the extended protocol (command tag PARSE)
				s.errorStep(ss, &errSpec{state: "42P01", msg: `relation "order_archive" does not exist`, query: "SELECT id, status, total FROM order_archive WHERE user_id = $1 ORDER BY id DESC LIMIT 50", qpos: 31, tag: "PARSE"}, gap)
				gap = small()
				continue
			}
			s.stmtSteps(ss, sh, nil, gap)
			gap = small()
			if sh.durMu > 5 && r.IntN(50) == 0 {
				ss.script = append(ss.script, step{kind: stTempFile, gapUs: 0, durUs: 0, st: ss.script[len(ss.script)-1].st,
					extra: fmt.Sprintf("temporary file: path \"base/pgsql_tmp/pgsql_tmp%d.%d\", size %d", ss.pid, r.IntN(5), 1<<(20+r.IntN(8)))})
			}
		}
	}
}

func indexOf(ss []string, s string) int {
	for i, x := range ss {
		if x == s {
			return i
		}
	}
	return -1
}

func orDefault(s, d string) string {
	if s == "" {
		return d
	}
	return s
}

func (s *sim) newSession(at int64) *session {
	r := s.g.r
	x := r.IntN(s.profSum)
	var p *profile
	for i := range profiles {
		if x < profiles[i].weight {
			p = &profiles[i]
			break
		}
		x -= profiles[i].weight
	}
	slot := -1
	for i, used := range s.slots {
		if !used {
			slot = i
			break
		}
	}
	if slot < 0 {
		slot = len(s.slots)
		s.slots = append(s.slots, false)
		s.w.slotLx = append(s.w.slotLx, 0)
	}
	s.slots[slot] = true
	s.nextPid += 1 + r.IntN(40)
	if s.nextPid > 4_000_000 {
		s.nextPid = 1000
	}
	s.sessSeq++
	ss := &session{id: s.sessSeq, prof: p, pid: s.nextPid, slot: slot + 3, start: at, port: 30000 + r.IntN(30000),
		host: fmt.Sprintf("10.0.%d.%d", 1+r.IntN(4), 10+r.IntN(200)), prepared: map[int]string{}}
	ss.unitsLeft = p.units[0] + r.IntN(p.units[1]-p.units[0]+1)
	ss.script = append(ss.script, step{kind: stConnRecv, gapUs: 0, durUs: 100 + int64(r.IntN(400))},
		step{kind: stConnAuth, gapUs: 500 + int64(r.IntN(3000)), durUs: 100})
	ss.lastLog = at
	ss.at = at + ss.script[0].gapUs + ss.script[0].durUs
	s.w.st.sessions++
	return ss
}

func (s *sim) newLx(ss *session) uint32 {
	s.w.slotLx[ss.slot-3]++
	return s.w.slotLx[ss.slot-3]
}

func (s *sim) vx(ss *session, lx uint32) string {
	return strconv.Itoa(ss.slot) + "/" + strconv.FormatUint(uint64(lx), 10)
}

// emit writes the head of the session's script at ss.at.
func (s *sim) emit(ss *session) error {
	stp := ss.script[0]
	ss.script = ss.script[1:]
	ss.line++
	from := ss.host + ":" + strconv.Itoa(ss.port)
	rw := row{t: ss.at, user: ss.prof.user, db: ss.prof.db, pid: ss.pid, from: from, sessStart: ss.start, line: ss.line,
		sev: "LOG", state: "00000", app: ss.prof.app, appSet: true, backend: "client backend"}
	endTx := func() { ss.inTx, ss.lx, ss.xid = false, 0, 0 }
	useLx := func() string {
		if ss.lx == 0 {
			ss.lx = s.newLx(ss)
		}
		return s.vx(ss, ss.lx)
	}
	w := s.w
	switch stp.kind {
	case stConnRecv:
		rw.user, rw.db, rw.app, rw.backend, rw.tagSet = "", "", "", "not initialized", true
		rw.msg = "connection received: host=" + ss.host + " port=" + strconv.Itoa(ss.port)
	case stConnAuth:
		rw.tag = "authentication"
		rw.vxid = s.vx(ss, s.newLx(ss))
		rw.app, rw.appSet = "", true
		rw.msg = "connection authorized: user=" + ss.prof.user + " database=" + ss.prof.db + " application_name=" + ss.prof.app
	case stDisconnect:
		rw.tag = "idle"
		d := ss.at - ss.start
		rw.msg = fmt.Sprintf("disconnection: session time: %d:%02d:%02d.%03d user=%s database=%s host=%s port=%d",
			d/3_600_000_000, d/60_000_000%60, d/1_000_000%60, d/1000%1000, ss.prof.user, ss.prof.db, ss.host, ss.port)
	case stParse, stBind:
		w.st.parseBind++
		verb := "parse"
		rw.tag = "PARSE"
		if stp.kind == stBind {
			verb, rw.tag = "bind", "BIND"
			rw.detail = stp.st.detail
		}
		rw.vxid = useLx()
		rw.xid = ss.xid
		rw.msg = "duration: " + fmtMs(stp.durUs) + " ms  " + verb + " " + stp.name + ": " + stp.st.ext
	case stExec, stSimple:
		w.st.statements++
		sh := stp.st.sh
		rw.tag = sh.tag
		text := stp.st.simple
		if stp.kind == stExec {
			text = stp.st.ext
			rw.detail = stp.st.detail
			rw.msg = "duration: " + fmtMs(stp.durUs) + " ms  execute " + stp.name + ": " + text
		} else {
			rw.msg = "duration: " + fmtMs(stp.durUs) + " ms  statement: " + text
		}
		switch sh.tag {
		case "BEGIN":
			w.st.transactions++
			rw.vxid = useLx()
			ss.inTx = true
		case "COMMIT", "ROLLBACK":
			useLx()
			rw.vxid = s.vx(ss, 0)
			endTx()
		default:
			if stp.kind == stSimple && !ss.inTx {
				useLx()
				rw.vxid = s.vx(ss, 0) // logged after the implicit commit
				endTx()
			} else {
				rw.vxid = useLx()
				if sh.write && ss.xid == 0 {
					w.nextXid++
					ss.xid = w.nextXid
				}
				rw.xid = ss.xid
				if !ss.inTx {
					endTx() // Sync commits
				}
			}
		}
	case stError:
		w.st.errors++
		if stp.err.query != "" {
			w.st.errorEvents++
		}
		e := stp.err
		rw.sev, rw.state, rw.msg, rw.detail, rw.hint, rw.context, rw.query, rw.qpos = "ERROR", e.state, e.msg, e.detail, e.hint, e.context, e.query, e.qpos
		rw.tag = e.tag
		rw.vxid = useLx()
		rw.xid = ss.xid
		if !ss.inTx {
			endTx()
		}
	case stTempFile:
		w.st.noise++
		rw.tag = stp.st.sh.tag
		rw.vxid = s.vx(ss, 0)
		rw.msg = stp.extra
		rw.query = stp.st.simple
		if ss.prof.proto != protoSimple {
			rw.query = stp.st.ext
		}
	}
	ss.lastLog = ss.at
	return w.write(&rw)
}

// noise writes background lines (checkpointer, autovacuum) due by t.
func (s *sim) noise(t int64) error {
	r := s.g.r
	for s.checkpAt <= t {
		var msg string
		if !s.checkpOpen {
			msg = "checkpoint starting: time"
		} else {
			msg = fmt.Sprintf("checkpoint complete: wrote %d buffers (%.1f%%); 0 WAL file(s) added, 0 removed, %d recycled; write=%d.%03d s, sync=0.%03d s, total=%d.%03d s; sync files=%d, longest=0.%03d s, average=0.%03d s; distance=%d kB, estimate=%d kB",
				1000+r.IntN(20000), r.Float64()*20, r.IntN(10), 100+r.IntN(50), r.IntN(1000), r.IntN(1000), 100+r.IntN(50), r.IntN(1000), r.IntN(300), r.IntN(1000), r.IntN(100), 50000+r.IntN(500000), 50000+r.IntN(500000))
		}
		s.w.st.noise++
		s.checkpLine++
		rw := row{t: s.checkpAt, pid: 812, sessStart: s.g.t0 - 86400_000_000, line: s.checkpLine, sev: "LOG", state: "00000", msg: msg, appSet: true, backend: "checkpointer"}
		if err := s.w.write(&rw); err != nil {
			return err
		}
		s.checkpOpen = !s.checkpOpen
		s.checkpAt += 150_000_000
	}
	for s.avAt <= t {
		s.w.st.noise++
		tn := tableNames[r.IntN(len(tableNames))]
		pid := 5000 + r.IntN(900000)
		msg := fmt.Sprintf("automatic vacuum of table \"shop.public.%s\": index scans: 1\npages: 0 removed, %d remain, %d scanned (%.2f%% of total)\ntuples: %d removed, %d remain, 0 are dead but not yet removable\nremovable cutoff: %d, which was 0 XIDs old when operation ended\nindex scan needed: %d pages from table (%.2f%% of total) had %d dead item identifiers removed\navg read rate: %.3f MB/s, avg write rate: %.3f MB/s\nbuffer usage: %d hits, %d misses, %d dirtied\nWAL usage: %d records, %d full page images, %d bytes\nsystem usage: CPU: user: %d.%02d s, system: %d.%02d s, elapsed: %d.%02d s",
			tn, 1000+r.IntN(100000), r.IntN(1000), r.Float64()*10, r.IntN(10000), 10000+r.IntN(1000000), s.w.nextXid, r.IntN(500), r.Float64()*5, r.IntN(10000),
			r.Float64()*50, r.Float64()*20, r.IntN(100000), r.IntN(1000), r.IntN(1000), r.IntN(10000), r.IntN(100), r.IntN(1000000), r.IntN(3), r.IntN(100), r.IntN(2), r.IntN(100), r.IntN(10), r.IntN(100))
		rw := row{t: s.avAt, pid: pid, sessStart: s.avAt - 1_000_000, line: 1, vxid: fmt.Sprintf("%d/%d", 40+r.IntN(3), 1+r.IntN(100000)), sev: "LOG", state: "00000", msg: msg, appSet: true, backend: "autovacuum worker"}
		if err := s.w.write(&rw); err != nil {
			return err
		}
		s.avAt += 2_000_000 + int64(r.IntN(20_000_000))
	}
	return nil
}

func main() {
	sizeMB := flag.Int("size-mb", 16, "stop once this many MiB are written")
	seed := flag.Uint64("seed", 1, "random seed")
	conc := flag.Int("sessions", 80, "concurrent client sessions")
	startS := flag.String("start", "2025-03-04T08:00:00Z", "time of the first line (RFC 3339)")
	out := flag.String("o", "-", "output file (- for stdout)")
	flag.Parse()
	t0, err := time.Parse(time.RFC3339, *startS)
	if err != nil {
		fmt.Fprintln(os.Stderr, "gen: -start:", err)
		os.Exit(2)
	}
	f := os.Stdout
	if *out != "-" {
		if f, err = os.Create(*out); err != nil {
			fmt.Fprintln(os.Stderr, "gen:", err)
			os.Exit(1)
		}
	}
	g := &gen{r: rand.New(rand.NewPCG(*seed, 0x9e3779b97f4a7c15)), t0: t0.UnixMicro()}
	shapes, byTable, special := buildShapes()
	s := &sim{g: g, w: &writer{w: bufio.NewWriterSize(f, 1<<20), nextXid: 1_000_000}, shapes: shapes, byTable: byTable, special: special, nextPid: 20000}
	s.perm = g.r.Perm(len(shapes))
	s.zipf = rand.NewZipf(g.r, 1.15, 2, uint64(len(shapes)-1))
	for _, p := range profiles {
		s.profSum += p.weight
	}
	s.checkpAt = g.t0 + 60_000_000
	s.avAt = g.t0 + 5_000_000
	for i := 0; i < *conc; i++ {
		heap.Push(&s.heap, s.newSession(g.t0+int64(i)*3000))
	}
	limit := int64(*sizeMB) << 20
	for s.w.st.bytes < limit {
		ss := s.heap[0]
		if err := s.noise(ss.at); err != nil {
			fmt.Fprintln(os.Stderr, "gen:", err)
			os.Exit(1)
		}
		if err := s.emit(ss); err != nil {
			fmt.Fprintln(os.Stderr, "gen:", err)
			os.Exit(1)
		}
		if len(ss.script) == 0 {
			switch {
			case ss.unitsLeft > 0:
				ss.unitsLeft--
				s.unit(ss)
			case ss.unitsLeft == 0:
				ss.unitsLeft = -1
				ss.script = append(ss.script, step{kind: stDisconnect, gapUs: s.think(ss.prof.thinkMs), durUs: 0})
			default: // disconnected: a new client takes the slot
				s.slots[ss.slot-3] = false
				next := s.newSession(ss.at + s.think(20))
				s.heap[0] = next
				next.heapIdx = 0
				heap.Fix(&s.heap, 0)
				continue
			}
		}
		nx := ss.script[0]
		ss.at = ss.lastLog + nx.gapUs + nx.durUs
		heap.Fix(&s.heap, 0)
	}
	if err := s.w.w.Flush(); err != nil {
		fmt.Fprintln(os.Stderr, "gen:", err)
		os.Exit(1)
	}
	if f != os.Stdout {
		if err := f.Close(); err != nil {
			fmt.Fprintln(os.Stderr, "gen:", err)
			os.Exit(1)
		}
	}
	st := s.w.st
	last := s.heap[0].lastLog
	fmt.Fprintf(os.Stderr, "gen: size_mb=%d seed=%d sessions=%d start=%s shapes=%d\n", *sizeMB, *seed, *conc, *startS, len(shapes))
	fmt.Fprintf(os.Stderr, "gen: bytes=%d lines=%d statements=%d error_entries=%d error_statements=%d expected_lint_statements=%d parse_bind=%d sessions_started=%d transactions=%d rollbacks=%d nplus1_loops=%d noise=%d log_span=%s\n",
		st.bytes, st.lines, st.statements, st.errors, st.errorEvents, st.statements+st.errorEvents, st.parseBind, st.sessions, st.transactions, st.rollbacks, st.nplus1Loops, st.noise,
		time.Duration(last-g.t0)*time.Microsecond)
}
