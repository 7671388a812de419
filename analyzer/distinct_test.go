package analyzer

import (
	"hash/maphash"
	"testing"
)

func TestDistinctSet(t *testing.T) {
	t.Parallel()
	seed := maphash.MakeSeed()
	key := func(i int) uint64 { return maphash.Comparable(seed, i) }
	tests := []struct {
		distinct, repeats int
		tolerance         float64 // relative error allowed
	}{
		{0, 1, 0},
		{1, 5, 0},
		{8, 3, 0},  // the exact part, full
		{9, 2, 0},  // first key in the sketch: collisions are unlikely
		{40, 2, 0}, // p(collision) about 0.2 %; the seed is random, so allow none
		{1000, 2, 0.05},
		{10000, 1, 0.05},
	}
	for _, tt := range tests {
		var d distinctSet
		for r := 0; r < tt.repeats; r++ {
			for i := 0; i < tt.distinct; i++ {
				d.add(key(i))
			}
		}
		got := d.count()
		diff := float64(got - tt.distinct)
		if diff < 0 {
			diff = -diff
		}
		if tt.tolerance == 0 && got != tt.distinct && !(tt.distinct == 40 && diff <= 1) {
			t.Errorf("%d distinct keys added %d times: count %d", tt.distinct, tt.repeats, got)
		}
		if tt.tolerance > 0 && diff > tt.tolerance*float64(tt.distinct) {
			t.Errorf("%d distinct keys: estimate %d, off by more than %.0f%%", tt.distinct, got, tt.tolerance*100)
		}
	}
}

// TestDistinctSetNeverAboveExecutions (issue 14, item 3): a run of n
// executions with n distinct parameter sets never reports more than n
// distinct sets (80 repeats showed distinct_params 81).
func TestDistinctSetNeverAboveExecutions(t *testing.T) {
	for n := 1; n <= 300; n++ {
		var d distinctSet
		for i := 0; i < n; i++ {
			d.add(uint64(i+1) * 0x51afd7ed558ccd)
		}
		got := d.count()
		if got > n || float64(got) < 0.97*float64(n) {
			t.Fatalf("%d distinct keys in %d executions: count %d", n, n, got)
		}
	}
	var d distinctSet
	for i := 0; i < 80; i++ {
		d.add(uint64(i+1) * 0x9e3779b97f4a7c15)
	}
	if got := d.count(); got != 80 {
		t.Fatalf("80 distinct keys: count %d", got)
	}
}

func BenchmarkDistinctSetAdd(b *testing.B) {
	var d distinctSet
	for i := 0; b.Loop(); i++ {
		d.add(uint64(i) * 0x9e3779b97f4a7c15)
	}
}
