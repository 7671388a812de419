package querylog

import (
	"bytes"
	"strconv"
	"time"
)

// timeParser parses the timestamps Postgres writes in its logs
// ("2006-01-02 15:04:05.000 MST" for %m and csvlog/jsonlog, the same without
// milliseconds for %t and %s, and epoch seconds with milliseconds for %n).
// It caches the last second it parsed, since consecutive lines share it. A
// timeParser is used by one goroutine.
type timeParser struct {
	// loc is used for zone abbreviations this package does not know.
	loc *time.Location

	lastKey  []byte // "2006-01-02 15:04:05 ZONE" of the last parse
	lastBase time.Time
	zones    map[string]*time.Location
}

func newTimeParser(loc *time.Location) *timeParser {
	if loc == nil {
		loc = time.UTC
	}
	return &timeParser{loc: loc, zones: make(map[string]*time.Location)}
}

// knownZones maps common log_timezone abbreviations to fixed offsets (in
// minutes east of UTC). Postgres writes the abbreviation of log_timezone;
// anything else falls back to Options.Location.
var knownZones = map[string]int{
	"UTC": 0, "GMT": 0, "Z": 0, "UCT": 0,
	"EST": -5 * 60, "EDT": -4 * 60, "CST": -6 * 60, "CDT": -5 * 60,
	"MST": -7 * 60, "MDT": -6 * 60, "PST": -8 * 60, "PDT": -7 * 60,
	"AKST": -9 * 60, "AKDT": -8 * 60, "HST": -10 * 60,
	"WET": 0, "WEST": 60, "BST": 60, "CET": 60, "CEST": 120, "MET": 60, "MEST": 120,
	"EET": 120, "EEST": 180, "MSK": 180, "IST": 330, "SGT": 480, "HKT": 480,
	"JST": 540, "KST": 540, "AWST": 480, "ACST": 570, "ACDT": 630,
	"AEST": 600, "AEDT": 660, "NZST": 720, "NZDT": 780,
}

// zone returns the location of a zone abbreviation or numeric offset
// ("+03", "-0530", "+05:30").
func (p *timeParser) zone(z []byte) *time.Location {
	if len(z) == 3 && string(z) == "UTC" {
		return time.UTC
	}
	if loc, ok := p.zones[string(z)]; ok {
		return loc
	}
	name := string(z)
	loc := p.loc
	if off, ok := knownZones[name]; ok {
		if off == 0 {
			loc = time.UTC
		} else {
			loc = time.FixedZone(name, off*60)
		}
	} else if off, ok := numericZone(name); ok {
		loc = time.FixedZone(name, off)
	}
	if len(p.zones) > 64 {
		clear(p.zones)
	}
	p.zones[name] = loc
	return loc
}

// numericZone parses "+03" or "-0530" into seconds east of UTC.
func numericZone(s string) (int, bool) {
	if len(s) < 3 || (s[0] != '+' && s[0] != '-') {
		return 0, false
	}
	sign := 1
	if s[0] == '-' {
		sign = -1
	}
	digits := make([]byte, 0, 4)
	for i := 1; i < len(s); i++ {
		switch c := s[i]; {
		case c >= '0' && c <= '9':
			digits = append(digits, c)
		case c == ':':
		default:
			return 0, false
		}
	}
	var h, m int
	switch len(digits) {
	case 1, 2:
		h, _ = strconv.Atoi(string(digits))
	case 4:
		h, _ = strconv.Atoi(string(digits[:2]))
		m, _ = strconv.Atoi(string(digits[2:]))
	default:
		return 0, false
	}
	return sign * (h*3600 + m*60), true
}

func digits2(b []byte) (int, bool) {
	if b[0] < '0' || b[0] > '9' || b[1] < '0' || b[1] > '9' {
		return 0, false
	}
	return int(b[0]-'0')*10 + int(b[1]-'0'), true
}

// parse parses "2006-01-02 15:04:05[.000] ZONE" at the start of b. withMS
// says whether the milliseconds are there. It returns the time and the
// number of bytes used; ok is false when b does not start with such a
// timestamp.
func (p *timeParser) parse(b []byte, withMS bool) (t time.Time, n int, ok bool) {
	const dt = len("2006-01-02 15:04:05")
	n = dt
	if withMS {
		n += 4
	}
	if len(b) < n+2 || b[4] != '-' || b[7] != '-' || b[10] != ' ' || b[13] != ':' || b[16] != ':' || b[n] != ' ' {
		return time.Time{}, 0, false
	}
	ms := 0
	if withMS {
		if b[19] != '.' {
			return time.Time{}, 0, false
		}
		for _, c := range b[20:23] {
			if c < '0' || c > '9' {
				return time.Time{}, 0, false
			}
			ms = ms*10 + int(c-'0')
		}
	}
	zs := n + 1
	ze := zs
	for ze < len(b) && (b[ze] >= 'A' && b[ze] <= 'Z' || b[ze] >= 'a' && b[ze] <= 'z' || b[ze] >= '0' && b[ze] <= '9' || b[ze] == '+' || b[ze] == '-') {
		ze++
	}
	if ze == zs {
		return time.Time{}, 0, false
	}
	zone := b[zs:ze]
	if len(p.lastKey) == dt+1+len(zone) && bytes.Equal(p.lastKey[:dt], b[:dt]) && bytes.Equal(p.lastKey[dt+1:], zone) {
		return p.lastBase.Add(time.Duration(ms) * time.Millisecond), ze, true
	}
	y1, ok1 := digits2(b[0:2])
	y2, ok2 := digits2(b[2:4])
	mo, ok3 := digits2(b[5:7])
	d, ok4 := digits2(b[8:10])
	h, ok5 := digits2(b[11:13])
	mi, ok6 := digits2(b[14:16])
	s, ok7 := digits2(b[17:19])
	if !(ok1 && ok2 && ok3 && ok4 && ok5 && ok6 && ok7) || mo < 1 || mo > 12 || d < 1 || d > 31 || h > 24 || mi > 59 || s > 60 {
		return time.Time{}, 0, false
	}
	base := time.Date(y1*100+y2, time.Month(mo), d, h, mi, s, 0, p.zone(zone))
	p.lastKey = append(append(append(p.lastKey[:0], b[:dt]...), ' '), zone...)
	p.lastBase = base
	return base.Add(time.Duration(ms) * time.Millisecond), ze, true
}

// parseEpoch parses %n: "1700000000.123" at the start of b.
func parseEpoch(b []byte) (t time.Time, n int, ok bool) {
	var sec int64
	i := 0
	for i < len(b) && b[i] >= '0' && b[i] <= '9' && i < 12 {
		sec = sec*10 + int64(b[i]-'0')
		i++
	}
	if i == 0 || i >= len(b) || b[i] != '.' {
		return time.Time{}, 0, false
	}
	i++
	ms, nd := 0, 0
	for i < len(b) && b[i] >= '0' && b[i] <= '9' && nd < 3 {
		ms = ms*10 + int(b[i]-'0')
		i++
		nd++
	}
	if nd != 3 {
		return time.Time{}, 0, false
	}
	return time.Unix(sec, int64(ms)*int64(time.Millisecond)).UTC(), i, true
}
