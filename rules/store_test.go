package rules

import (
	"fmt"
	"sync"
	"testing"
	"time"
)

var t0 = time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)

func nPlusOne(repeats int, at time.Time) Finding {
	f := EvaluateNPlusOne(NPlusOneFacts{
		Fingerprint: "4cfd56da01cf1718", Query: "SELECT * FROM authors WHERE id = $1",
		Repeats: repeats, DistinctParams: repeats, Total: time.Duration(repeats) * time.Millisecond,
		SourceFingerprint: "82bc0ddfb1f7b28c", SourceQuery: "SELECT * FROM books", SourceRows: int64(repeats),
		Table: "authors", Column: "id", Form: FormRowCount, Tie: TieGap, SessionID: uint64(repeats),
		First: at, Last: at.Add(time.Millisecond),
	}, NPlusOneConfig{})
	return *f
}

func TestStoreDedupe(t *testing.T) {
	t.Parallel()
	s := NewStore(StoreConfig{})
	f1, ch := s.Add(nPlusOne(20, t0))
	if ch != New || f1.Count != 1 {
		t.Fatalf("first add: %v %+v", ch, f1)
	}
	// Repeats with the same numbers are counted; they are reported only as
	// the count doubles (1, 2, 4, 8, ...).
	want := []Change{Changed, Unchanged, Changed, Unchanged}
	for i, w := range want {
		at := t0.Add(time.Duration(i+1) * time.Minute)
		f, ch := s.Add(nPlusOne(20, at))
		if ch != w || f.Count != int64(i+2) || !f.FirstSeen.Equal(t0) || !f.LastSeen.Equal(at.Add(time.Millisecond)) {
			t.Fatalf("repeat %d: %v (want %v) %+v", i+2, ch, w, f)
		}
	}
	if s.Len() != 1 {
		t.Fatalf("len %d", s.Len())
	}
	// Evidence moving by the change ratio is significant; session_id is an
	// identifier and never is.
	f, ch := s.Add(nPlusOne(45, t0.Add(9*time.Minute)))
	if ch != Changed || f.Evidence["repeats"] != int64(45) {
		t.Errorf("repeats 20 -> 45: %v, evidence %v", ch, f.Evidence)
	}
	got, ok := s.Get(f.ID)
	if !ok || got.Count != f.Count {
		t.Errorf("Get %+v %v", got, ok)
	}
	// Returned findings are copies.
	got.Evidence["repeats"] = int64(-1)
	if again, _ := s.Get(f.ID); again.Evidence["repeats"] != int64(45) {
		t.Error("Get shares the evidence map")
	}
}

func TestStoreSignificance(t *testing.T) {
	t.Parallel()
	base := Finding{ID: "x", Rule: IDSlowQuery, Severity: Warning, Count: 10, LastSeen: t0,
		Evidence: map[string]any{"p99_ms": 600.0, "session_id": uint64(1), "query": "a"}}
	tests := []struct {
		name   string
		mutate func(*Finding)
		want   Change
	}{
		{"same", func(*Finding) {}, Unchanged},
		{"count up a little", func(f *Finding) { f.Count = 15 }, Unchanged},
		{"count doubled", func(f *Finding) { f.Count = 20 }, Changed},
		{"p99 up 50%", func(f *Finding) { f.Evidence["p99_ms"] = 900.0 }, Unchanged},
		{"p99 doubled", func(f *Finding) { f.Evidence["p99_ms"] = 1200.0 }, Changed},
		{"p99 halved", func(f *Finding) { f.Evidence["p99_ms"] = 300.0 }, Changed},
		{"identifier changed", func(f *Finding) { f.Evidence["session_id"] = uint64(1000) }, Unchanged},
		{"string changed", func(f *Finding) { f.Evidence["query"] = "b" }, Unchanged},
		{"severity changed", func(f *Finding) { f.Severity = Error }, Changed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := NewStore(StoreConfig{})
			if _, ch := s.Set(base.Clone()); ch != New {
				t.Fatal(ch)
			}
			f := base.Clone()
			tt.mutate(&f)
			if _, ch := s.Set(f); ch != tt.want {
				t.Errorf("change %v, want %v", ch, tt.want)
			}
		})
	}
	// After a report the baseline moves: the same numbers again are quiet.
	s := NewStore(StoreConfig{})
	s.Set(base.Clone())
	f := base.Clone()
	f.Count = 40
	if _, ch := s.Set(f); ch != Changed {
		t.Fatal(ch)
	}
	if _, ch := s.Set(f.Clone()); ch != Unchanged {
		t.Errorf("repeat after report: %v", ch)
	}
}

func TestStoreSetKeepsCumulativeCount(t *testing.T) {
	t.Parallel()
	s := NewStore(StoreConfig{})
	f := Finding{ID: "slow-query:1", Rule: IDSlowQuery, Count: 100, FirstSeen: t0, LastSeen: t0.Add(time.Minute)}
	s.Set(f)
	f.Count, f.FirstSeen, f.LastSeen = 150, t0.Add(time.Second), t0.Add(2*time.Minute)
	got, _ := s.Set(f)
	if got.Count != 150 || !got.FirstSeen.Equal(t0) || !got.LastSeen.Equal(t0.Add(2*time.Minute)) {
		t.Errorf("%+v", got)
	}
}

func TestStoreEvictionAndOrder(t *testing.T) {
	t.Parallel()
	s := NewStore(StoreConfig{MaxFindings: 3})
	s.Add(Finding{ID: "a", Severity: Error, Count: 1, LastSeen: t0})
	s.Add(Finding{ID: "b", Severity: Info, Count: 9, LastSeen: t0.Add(time.Second)})
	s.Add(Finding{ID: "c", Severity: Info, Count: 2, LastSeen: t0})
	s.Add(Finding{ID: "d", Severity: Warning, Count: 5, LastSeen: t0})
	if s.Evicted() != 1 {
		t.Errorf("evicted %d", s.Evicted())
	}
	var ids []string
	for _, f := range s.Findings() {
		ids = append(ids, f.ID)
	}
	// c (info, seen longest ago) went; order: severity, then count.
	if fmt.Sprint(ids) != "[a d b]" {
		t.Errorf("order %v", ids)
	}
}

func TestStoreConcurrent(t *testing.T) {
	t.Parallel()
	s := NewStore(StoreConfig{})
	var wg sync.WaitGroup
	var mu sync.Mutex
	reported := 0
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 500 {
				_, ch := s.Add(Finding{ID: fmt.Sprintf("f%d", i%10), Rule: IDNPlusOne, Count: 1, LastSeen: t0.Add(time.Duration(g*i) * time.Millisecond)})
				if ch.Report() {
					mu.Lock()
					reported++
					mu.Unlock()
				}
				if i%100 == 0 {
					_ = s.Findings()
				}
			}
		}()
	}
	wg.Wait()
	total := int64(0)
	for _, f := range s.Findings() {
		total += f.Count
	}
	if s.Len() != 10 || total != 8*500 {
		t.Errorf("len %d total %d", s.Len(), total)
	}
	// Reports grow with the log of the count, not with the count.
	if reported > 10*13 {
		t.Errorf("%d reports for 4000 occurrences of 10 findings", reported)
	}
}
