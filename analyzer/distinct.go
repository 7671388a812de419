package analyzer

import (
	"math"
	"math/bits"
)

// distinctSet counts the distinct parameter keys of an N+1 run. The first
// distinctExact keys are counted exactly: the first distinctInline of them
// in an inline array (most runs stay below it and cost no allocation), the
// rest in one allocated array of the sketch's size. Beyond distinctExact
// the keys go into a 4096-bit linear-counting sketch (512 bytes), whose
// estimate has a standard error of about 1 % at 1,000 distinct keys, 1.8 %
// at 10,000 and 3.6 % at 20,000 (sqrt(m(e^t-t-1))/n, t = n/m).
//
// The sketch is not exact even for small counts: among n keys in 4096
// bits, some pair shares a bit with probability about n²/8192 (20 % for
// 40 keys, 40 % for 57), and a hidden key is not added back by the
// estimate, which rounds down (see count). That is why the exact part is
// as large as the sketch's memory allows: the counts an N+1 message most
// often shows (tens of executions) are exact, not exact "in practice".
// A map per run cost the detector more than everything else it does when
// long runs (a pgbench -S client, a polling loop) kept adding keys.
//
// The zero value is an empty set. Not safe for concurrent use.
type distinctSet struct {
	n      int // keys held exactly (inline, then more)
	adds   int // keys added, repeats included: an upper bound of the count
	inline [distinctInline]uint64
	more   *[distinctExact - distinctInline]uint64
	bits   *[distinctWords]uint64
}

const (
	distinctInline = 8
	distinctExact  = 64 // inline + more: 8 + 56 keys, 512 bytes in all
	distinctWords  = 64 // 4096 bits
	distinctBits   = distinctWords * 64
)

// add records key.
func (d *distinctSet) add(key uint64) {
	d.adds++
	if d.bits == nil {
		if d.has(key) {
			return
		}
		switch {
		case d.n < distinctInline:
			d.inline[d.n] = key
			d.n++
			return
		case d.n < distinctExact:
			if d.more == nil {
				d.more = new([distinctExact - distinctInline]uint64)
			}
			d.more[d.n-distinctInline] = key
			d.n++
			return
		}
		d.bits = new([distinctWords]uint64)
		for _, k := range d.inline {
			d.setBit(k)
		}
		for _, k := range d.more {
			d.setBit(k)
		}
		d.more = nil
	}
	d.setBit(key)
}

// has reports whether key is among the keys held exactly.
func (d *distinctSet) has(key uint64) bool {
	for _, k := range d.inline[:min(d.n, distinctInline)] {
		if k == key {
			return true
		}
	}
	if d.n > distinctInline {
		for _, k := range d.more[:d.n-distinctInline] {
			if k == key {
				return true
			}
		}
	}
	return false
}

func (d *distinctSet) setBit(key uint64) {
	// The keys are hashes already; the multiply spreads low-entropy ones.
	b := (key * 0x9e3779b97f4a7c15) >> (64 - 12)
	d.bits[b/64] |= 1 << (b % 64)
}

// count returns the number of distinct keys added: exact up to
// distinctExact, estimated above. The estimate is never above the number of
// keys added nor below the bits set (each set bit is at least one key), and
// it adds to the bits set only whole keys that collisions are expected to
// hide (rounded down): 80 distinct keys in 80 executions count 80, not the
// 81 that rounding the linear-counting estimate (80.8) would say. Above
// distinctExact it is never below distinctExact+1: the set held that many
// distinct keys when it switched to the sketch.
func (d *distinctSet) count() int {
	if d.bits == nil {
		return d.n
	}
	set := 0
	for _, w := range d.bits {
		set += bits.OnesCount64(w)
	}
	zeros := distinctBits - set
	if zeros == 0 {
		zeros = 1 // saturated: report the sketch's ceiling
	}
	est := -float64(distinctBits) * math.Log(float64(zeros)/distinctBits)
	n := set + int(math.Floor(est-float64(set)+1e-9))
	return min(max(n, distinctExact+1), d.adds)
}
