package querylog

import (
	"bytes"
	"fmt"
	"strings"
	"time"
)

// Prefix is a compiled log_line_prefix: it splits a Postgres stderr log line
// into the fields its escapes carry and the message that follows. A Prefix
// is immutable and safe for concurrent use.
type Prefix struct {
	src  string
	toks []ptok
	has  [128]bool
}

type ptok struct {
	lit  string // literal text when esc == 0
	esc  byte   // the escape letter
	pad  int    // padding width (%-10u gives -10)
	next string // the literal that follows this escape, if any

	litb, nextb []byte
}

// supportedEscapes lists the escapes CompilePrefix understands; all other
// letters are rejected.
const supportedEscapes = "mtnpclsuvxedahriqbPQ"

// CompilePrefix compiles a log_line_prefix setting such as
// "%m [%p] %q%u@%d ". Surrounding single quotes, as in postgresql.conf, are
// removed. It understands %m %t %n %p %c %l %s %u %d %a %h %r %v %x %e %i
// %b %P %Q %q and %% with optional padding (%-10u). The prefix must include
// a time (%m, %t or %n) and a process or session id (%p or %c), because
// statements can be put back in order and into sessions only with them.
func CompilePrefix(s string) (*Prefix, error) {
	src := s
	if len(s) >= 2 && s[0] == '\'' && s[len(s)-1] == '\'' {
		s = strings.ReplaceAll(s[1:len(s)-1], "''", "'")
		src = s
	}
	p := &Prefix{src: src}
	var lit strings.Builder
	flush := func() {
		if lit.Len() > 0 {
			p.toks = append(p.toks, ptok{lit: lit.String()})
			lit.Reset()
		}
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c != '%' {
			lit.WriteByte(c)
			continue
		}
		i++
		if i >= len(s) {
			return nil, fmt.Errorf("log_line_prefix %q: trailing %%", src)
		}
		if s[i] == '%' {
			lit.WriteByte('%')
			continue
		}
		pad, sign := 0, 1
		if s[i] == '-' {
			sign = -1
			i++
		}
		for i < len(s) && s[i] >= '0' && s[i] <= '9' {
			pad = pad*10 + int(s[i]-'0')
			i++
		}
		if i >= len(s) {
			return nil, fmt.Errorf("log_line_prefix %q: trailing %%", src)
		}
		e := s[i]
		if strings.IndexByte(supportedEscapes, e) < 0 {
			return nil, fmt.Errorf("log_line_prefix %q: unknown escape %%%c (known: %%m %%t %%n %%p %%c %%l %%s %%u %%d %%a %%h %%r %%v %%x %%e %%i %%b %%P %%Q %%q %%%%)", src, e)
		}
		flush()
		p.toks = append(p.toks, ptok{esc: e, pad: sign * pad})
		p.has[e] = true
	}
	flush()
	for i := range p.toks {
		tk := &p.toks[i]
		tk.litb = []byte(tk.lit)
		if tk.esc != 0 && i+1 < len(p.toks) && p.toks[i+1].esc == 0 {
			tk.next = p.toks[i+1].lit
			tk.nextb = []byte(tk.next)
		}
	}
	if !p.has['m'] && !p.has['t'] && !p.has['n'] {
		return nil, fmt.Errorf("log_line_prefix %q has no time (%%m, %%t or %%n): lint needs one to order statements; add %%m to log_line_prefix", src)
	}
	if !p.has['p'] && !p.has['c'] {
		return nil, fmt.Errorf("log_line_prefix %q has no process or session id (%%p or %%c): lint needs one to tell sessions apart; add [%%p] to log_line_prefix", src)
	}
	return p, nil
}

// MustCompilePrefix is CompilePrefix for known-good prefixes; it panics on
// error.
func MustCompilePrefix(s string) *Prefix {
	p, err := CompilePrefix(s)
	if err != nil {
		panic(err)
	}
	return p
}

// escapes counts the escapes among the prefix's first n tokens.
func (p *Prefix) escapes(n int) int {
	c := 0
	for _, t := range p.toks[:n] {
		if t.esc != 0 && t.esc != 'q' {
			c++
		}
	}
	return c
}

// String returns the log_line_prefix the Prefix was compiled from.
func (p *Prefix) String() string { return p.src }

// Has reports whether the prefix contains the escape %c (for example
// p.Has('e') for the SQLSTATE).
func (p *Prefix) Has(c byte) bool { return c < 128 && p.has[c] }

// KnownPrefixes are the log_line_prefix settings detection tries on a
// stderr log when no prefix is given: the Postgres default, Debian's and
// Ubuntu's, the ones pgBadger's documentation recommends, and Amazon RDS's.
// The one that reads the most of the first lines wins (on a tie, the one
// that reads more fields). The list is compiled at init: treat it as read
// only and pass any other prefix in Options.Prefix.
var KnownPrefixes = []string{
	"%m [%p] ",                       // PostgreSQL 10+ default
	"%m [%p] %q%u@%d ",               // Debian / Ubuntu default
	"%t [%p] %q%u@%d ",               // older Debian
	"%t [%p-%l] %q%u@%d ",            // older Ubuntu
	"%t [%p]: [%l-1] ",               // pgBadger
	"%t [%p]: [%l-1] user=%u,db=%d ", // pgBadger
	"%t [%p]: [%l-1] user=%u,db=%d,app=%a,client=%h ",    // pgBadger
	"%m [%p]: [%l-1] user=%u,db=%d,app=%a,client=%h ",    // pgBadger with ms
	"%t [%p]: user=%u,db=%d,app=%a,client=%h ",           // pgBadger
	"%m [%p]: user=%u,db=%d,app=%a,client=%h ",           // pgBadger with ms
	"%t [%p]: db=%d,user=%u,app=%a,client=%h ",           // pgBadger
	"%m [%p] %q[user=%u,db=%d,app=%a] ",                  // common custom
	"%m [%p] %q%u@%d %a ",                                // Debian with app
	"%m [%p] %u@%d ",                                     // without %q
	"%t:%r:%u@%d:[%p]:",                                  // Amazon RDS
	"%m:%r:%u@%d:[%p]:",                                  // Amazon RDS with ms
	"%m [%p] %e ",                                        // with SQLSTATE
	"%m [%p]: [%l-1] db=%d,user=%u,app=%a,client=%h ",    // pgBadger variant
	"%m [%p]: [%l-1] user=%u,db=%d,app=%a,client=%h %e ", // pgBadger with SQLSTATE
	"%m [%c] ", // session id instead of pid
}

var knownCompiled = func() []*Prefix {
	out := make([]*Prefix, len(KnownPrefixes))
	for i, s := range KnownPrefixes {
		out[i] = MustCompilePrefix(s)
	}
	return out
}()

// prefixFields holds the values of one line's prefix. Byte slices point
// into the line.
type prefixFields struct {
	time     time.Time
	hasTime  bool
	pid      int64
	sessHex  []byte // %c
	sessTime time.Time
	hasSess  bool // %s parsed
	lineNum  int64
	user     []byte
	db       []byte
	app      []byte
	host     []byte
	ps       []byte
	state    []byte
	vxid     []byte
	upto     int // the prefix's tokens before this index were read
}

// severities are the message levels Postgres writes after the prefix.
var severities = [...]string{"LOG", "ERROR", "DETAIL", "STATEMENT", "HINT", "CONTEXT", "QUERY", "LOCATION", "WARNING", "NOTICE", "INFO", "FATAL", "PANIC", "DEBUG"}

// severityAt returns the severity at the start of b ("LOG" in "LOG:  x")
// and the length of "LOG:  ", or 0.
func severityAt(b []byte) (string, int) {
	if len(b) < 5 {
		return "", 0
	}
	switch b[0] {
	case 'L', 'E', 'D', 'S', 'H', 'C', 'Q', 'W', 'N', 'I', 'F', 'P':
	default:
		return "", 0
	}
	for _, s := range severities {
		if len(b) >= len(s)+3 && string(b[:len(s)]) == s && b[len(s)] == ':' && b[len(s)+1] == ' ' && b[len(s)+2] == ' ' {
			return s, len(s) + 3
		}
	}
	return "", 0
}

// maxTries bounds backtracking over where a free-text field ends.
const maxTries = 16

// parse splits line into prefix fields and the rest, which starts with a
// severity ("LOG:  "). It reports false when the line does not have this
// prefix.
func (p *Prefix) parse(line []byte, tp *timeParser, f *prefixFields) (rest []byte, ok bool) {
	*f = prefixFields{}
	tries := 0
	end, ok := p.match(line, 0, 0, tp, f, &tries)
	if !ok {
		return nil, false
	}
	return line[end:], true
}

// match matches tokens from ti at pos and returns where the message starts.
func (p *Prefix) match(line []byte, ti, pos int, tp *timeParser, f *prefixFields, tries *int) (int, bool) {
	for ; ti < len(p.toks); ti++ {
		tk := &p.toks[ti]
		if tk.esc == 0 {
			if !bytes.HasPrefix(line[pos:], tk.litb) {
				return 0, false
			}
			pos += len(tk.lit)
			continue
		}
		if tk.esc == 'q' {
			// Non-session processes stop the prefix here.
			if sev, _ := severityAt(line[pos:]); sev != "" {
				f.upto = ti
				return pos, true
			}
			continue
		}
		if tk.pad > 0 {
			for pos < len(line) && line[pos] == ' ' {
				pos++
			}
		}
		if isTextEscape(tk.esc) {
			return p.matchText(line, ti, pos, tp, f, tries)
		}
		n, ok := p.field(tk.esc, line[pos:], tp, f)
		if !ok {
			return 0, false
		}
		pos = padTo(line, pos, n, tk.pad)
	}
	if sev, _ := severityAt(line[pos:]); sev == "" {
		return 0, false
	}
	f.upto = len(p.toks)
	return pos, true
}

// padTo returns the end of a field of n bytes at pos, skipping the spaces of
// left-justified padding.
func padTo(line []byte, pos, n, pad int) int {
	end := pos + n
	for pad < 0 && end-pos < -pad && end < len(line) && line[end] == ' ' {
		end++
	}
	return end
}

func noSpaces(c byte) bool { return c == 'u' || c == 'd' || c == 'h' || c == 'r' }

func isTextEscape(c byte) bool {
	switch c {
	case 'u', 'd', 'a', 'h', 'i', 'b', 'r':
		return true
	}
	return false
}

// matchText matches a free-text field, trying each place where the literal
// after it occurs, and the rest of the prefix after that.
func (p *Prefix) matchText(line []byte, ti, pos int, tp *timeParser, f *prefixFields, tries *int) (int, bool) {
	tk := &p.toks[ti]
	sep := tk.next
	from := pos
	for {
		*tries++
		if *tries > maxTries {
			return 0, false
		}
		var end int
		switch {
		case sep != "":
			i := bytes.Index(line[from:], tk.nextb)
			if i < 0 {
				return 0, false
			}
			end = from + i
		case ti+1 == len(p.toks):
			// The last token: the value runs to the severity.
			end = -1
			for j := from; j < len(line); j++ {
				if sev, _ := severityAt(line[j:]); sev != "" {
					end = j
					break
				}
			}
			if end < 0 {
				return 0, false
			}
		default:
			// Followed by another escape: up to the next space.
			i := bytes.IndexByte(line[from:], ' ')
			if i < 0 {
				return 0, false
			}
			end = from + i
		}
		val := line[pos:end]
		if tk.pad < 0 {
			val = bytes.TrimRight(val, " ")
		}
		if noSpaces(tk.esc) && bytes.IndexByte(val, ' ') >= 0 {
			// User, database and host names are taken to have no spaces,
			// or a prefix could swallow the fields of a longer one.
			return 0, false
		}
		if p.setText(tk.esc, val, f) {
			save := *f
			if r, ok := p.match(line, ti+1, end, tp, f, tries); ok {
				return r, true
			}
			*f = save
		}
		if sep == "" || ti+1 == len(p.toks) {
			return 0, false
		}
		from = end + 1
	}
}

// setText stores a free-text field; it reports false when the value cannot
// be that field (a %r that is not host(port)).
func (p *Prefix) setText(esc byte, v []byte, f *prefixFields) bool {
	switch esc {
	case 'u':
		f.user = v
	case 'd':
		f.db = v
	case 'a':
		f.app = v
	case 'h':
		f.host = v
	case 'i':
		f.ps = v
	case 'b':
	case 'r':
		switch {
		case len(v) == 0:
		case string(v) == "[local]":
			f.host = v
		default:
			i := bytes.LastIndexByte(v, '(')
			if i <= 0 || v[len(v)-1] != ')' || !allDigits(v[i+1:len(v)-1]) {
				return false
			}
			f.host = v[:i]
		}
	}
	return true
}

func allDigits(b []byte) bool {
	for _, c := range b {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}

// field matches a structured escape at the start of b and returns its
// length.
func (p *Prefix) field(esc byte, b []byte, tp *timeParser, f *prefixFields) (int, bool) {
	switch esc {
	case 'm', 't':
		t, n, ok := tp.parse(b, esc == 'm')
		if !ok {
			return 0, false
		}
		if !f.hasTime {
			f.time, f.hasTime = t, true
		}
		return n, true
	case 'n':
		t, n, ok := parseEpoch(b)
		if !ok {
			return 0, false
		}
		if !f.hasTime {
			f.time, f.hasTime = t, true
		}
		return n, true
	case 's':
		t, n, ok := tp.parse(b, false)
		if !ok {
			return 0, false
		}
		f.sessTime, f.hasSess = t, true
		return n, true
	case 'p', 'l', 'x', 'P', 'Q':
		i := 0
		if i < len(b) && b[i] == '-' {
			i++
		}
		var v int64
		st := i
		for i < len(b) && b[i] >= '0' && b[i] <= '9' {
			v = v*10 + int64(b[i]-'0')
			i++
		}
		if i == st {
			if esc == 'p' || esc == 'l' {
				return 0, false
			}
			return 0, true // %P is empty outside parallel workers
		}
		switch esc {
		case 'p':
			f.pid = v
		case 'l':
			f.lineNum = v
		}
		return i, true
	case 'c':
		i := 0
		for i < len(b) && isHex(b[i]) {
			i++
		}
		if i == 0 || i >= len(b) || b[i] != '.' {
			return 0, false
		}
		j := i + 1
		for j < len(b) && isHex(b[j]) {
			j++
		}
		if j == i+1 {
			return 0, false
		}
		f.sessHex = b[:j]
		return j, true
	case 'v':
		i := 0
		for i < len(b) && b[i] >= '0' && b[i] <= '9' {
			i++
		}
		if i == 0 {
			return 0, true // empty outside a backend
		}
		if i >= len(b) || b[i] != '/' {
			return 0, false
		}
		j := i + 1
		for j < len(b) && b[j] >= '0' && b[j] <= '9' {
			j++
		}
		if j == i+1 {
			return 0, false
		}
		f.vxid = b[:j]
		return j, true
	case 'e':
		if len(b) < 5 {
			return 0, false
		}
		for _, c := range b[:5] {
			if !(c >= '0' && c <= '9' || c >= 'A' && c <= 'Z') {
				return 0, false
			}
		}
		f.state = b[:5]
		return 5, true
	}
	return 0, false
}

func isHex(c byte) bool {
	return c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F'
}
