package rules

import (
	"testing"
	"time"
)

// TestMergeSeen: two records of one finding from different sources add
// their counts, widen first/last seen to span both, and take the rest
// from the record last seen (the second on a tie).
func TestMergeSeen(t *testing.T) {
	t0 := time.Date(2026, 12, 2, 10, 0, 0, 0, time.UTC)
	at := func(m int) time.Time { return t0.Add(time.Duration(m) * time.Minute) }
	rec := func(title string, count int64, first, last time.Time, status string) Finding {
		return Finding{ID: "seq-scan:abc", Message: title, Count: count, FirstSeen: first, LastSeen: last, Status: status}
	}
	for _, tc := range []struct {
		name string
		a, b Finding
		want Finding
	}{
		{"b newer", rec("old", 3, at(0), at(10), StatusResolved), rec("new", 4, at(5), at(20), StatusOpen),
			rec("new", 7, at(0), at(20), StatusOpen)},
		{"a newer", rec("new", 3, at(5), at(30), StatusOpen), rec("old", 4, at(1), at(20), StatusResolved),
			rec("new", 7, at(1), at(30), StatusOpen)},
		{"tie takes b", rec("a", 1, at(0), at(10), ""), rec("b", 1, at(0), at(10), ""),
			rec("b", 2, at(0), at(10), "")},
		{"zero first seen ignored", rec("a", 1, time.Time{}, at(10), ""), rec("b", 2, at(3), at(4), ""),
			rec("a", 3, at(3), at(10), "")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := MergeSeen(tc.a, tc.b)
			if got.Message != tc.want.Message || got.Count != tc.want.Count || got.Status != tc.want.Status ||
				!got.FirstSeen.Equal(tc.want.FirstSeen) || !got.LastSeen.Equal(tc.want.LastSeen) {
				t.Errorf("MergeSeen = %s count %d %v..%v %q, want %s count %d %v..%v %q",
					got.Message, got.Count, got.FirstSeen, got.LastSeen, got.Status,
					tc.want.Message, tc.want.Count, tc.want.FirstSeen, tc.want.LastSeen, tc.want.Status)
			}
		})
	}
}
