package analyzer

import (
	"math"
	"math/bits"
)

// distinctSet counts the distinct parameter keys of an N+1 run. The first
// distinctExact keys are kept exactly in an inline array (most runs stay
// below it and cost no allocation); beyond that the keys go into a
// 4096-bit linear-counting sketch (512 bytes), whose estimate is within a
// few percent up to about 20,000 distinct keys and exact in practice for
// small counts (a collision among n keys has probability about n²/8192).
// A map per run cost the detector more than everything else it does when
// long runs (a pgbench -S client, a polling loop) kept adding keys.
//
// The zero value is an empty set. Not safe for concurrent use.
type distinctSet struct {
	n     int
	adds  int // keys added, repeats included: an upper bound of the count
	exact [distinctExact]uint64
	bits  *[distinctWords]uint64
}

const (
	distinctExact = 8
	distinctWords = 64 // 4096 bits
	distinctBits  = distinctWords * 64
)

// add records key.
func (d *distinctSet) add(key uint64) {
	d.adds++
	if d.bits == nil {
		for _, k := range d.exact[:d.n] {
			if k == key {
				return
			}
		}
		if d.n < distinctExact {
			d.exact[d.n] = key
			d.n++
			return
		}
		d.bits = new([distinctWords]uint64)
		for _, k := range d.exact {
			d.setBit(k)
		}
	}
	d.setBit(key)
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
// 81 that rounding the linear-counting estimate (80.8) would say.
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
	return min(max(n, distinctExact), d.adds)
}
