package pooler

import (
	"math"
	"testing"
	"time"
)

// TestNativeWaitIndex checks every wait lands in the native bucket whose
// bounds, (2^((i-1)/4), 2^(i/4)] seconds, hold it, up to the clamps.
func TestNativeWaitIndex(t *testing.T) {
	for _, w := range []time.Duration{0, time.Nanosecond, 953 * time.Nanosecond, 954 * time.Nanosecond,
		time.Microsecond, 3 * time.Microsecond, 100 * time.Microsecond, time.Millisecond, 12345 * time.Microsecond,
		time.Second, 2 * time.Second, 3 * time.Second, time.Hour, 3 * time.Hour} {
		n := nativeWaitIndex(w)
		v := w.Seconds()
		if v <= NativeWaitZeroThreshold {
			if n != -1 {
				t.Errorf("%v: index %d, want the zero bucket", w, n)
			}
			continue
		}
		i := n + NativeWaitFirst
		lo, hi := math.Pow(2, float64(i-1)/4), math.Pow(2, float64(i)/4)
		if i == nativeWaitLast && v > lo {
			continue // clamped into the last bucket
		}
		if n < 0 || n >= nativeWaitBuckets || !(v > lo && v <= hi) {
			t.Errorf("%v: bucket %d is (%g, %g]", w, i, lo, hi)
		}
	}
}

// TestNativeWaitIndexDense compares the index with ceil(4 log2 v) over a
// dense range of waits, away from the irrational bounds' rounding.
func TestNativeWaitIndexDense(t *testing.T) {
	for w := time.Duration(1); w < 5000*time.Second; w = w*21/20 + 1 {
		v := w.Seconds()
		if v <= NativeWaitZeroThreshold {
			continue
		}
		want := min(max(int(math.Ceil(4*math.Log2(v))), NativeWaitFirst), nativeWaitLast) - NativeWaitFirst
		if got := nativeWaitIndex(w); got != want {
			t.Errorf("%v: %d, want %d", w, got, want)
		}
	}
	for e := -19; e <= 12; e++ {
		w := time.Duration(math.Ldexp(1, e) * 1e9)
		if math.Ldexp(1, e)*1e9 != float64(w) {
			continue // not a whole number of nanoseconds
		}
		if got, want := nativeWaitIndex(w), min(4*e, nativeWaitLast)-NativeWaitFirst; got != want {
			t.Errorf("2^%d s: %d, want %d", e, got, want)
		}
	}
}
