package lru

import (
	"slices"
	"testing"
)

func keys[K comparable, V any](l *List[K, V]) []K {
	var ks []K
	for k := range l.All() {
		ks = append(ks, k)
	}
	return ks
}

// TestList drives a List through a table of operations and checks the
// order (least to most recently used) after each.
func TestList(t *testing.T) {
	l := NewList[string, int](0)
	steps := []struct {
		op, key string
		want    []string
	}{
		{"add", "a", []string{"a"}},
		{"add", "b", []string{"a", "b"}},
		{"add", "c", []string{"a", "b", "c"}},
		{"get", "a", []string{"b", "c", "a"}},
		{"get", "zz", []string{"b", "c", "a"}},
		{"add", "b", []string{"c", "a", "b"}},
		{"remove", "a", []string{"c", "b"}},
		{"remove", "zz", []string{"c", "b"}},
	}
	for i, s := range steps {
		switch s.op {
		case "add":
			l.Add(s.key, i)
		case "get":
			l.Get(s.key)
		case "remove":
			l.Remove(s.key)
		}
		if got := keys(l); !slices.Equal(got, s.want) {
			t.Fatalf("step %d (%s %s): order %v, want %v", i, s.op, s.key, got, s.want)
		}
		if l.Len() != len(s.want) {
			t.Fatalf("step %d: Len %d, want %d", i, l.Len(), len(s.want))
		}
	}
	if !l.Contains("c") || l.Contains("a") || keys(l)[0] != "c" {
		t.Fatalf("Contains: c %v, a %v, order %v (c must stay oldest)", l.Contains("c"), l.Contains("a"), keys(l))
	}
	if k, v, ok := l.Oldest(); !ok || k != "c" || v != 2 {
		t.Fatalf("Oldest = %q %d %v, want c 2 true", k, v, ok)
	}
	if v, ok := l.Get("b"); !ok || v != 5 {
		t.Fatalf("Get(b) = %d %v, want the replaced value 5", v, ok)
	}
	for k := range l.All() {
		l.Remove(k)
	}
	if _, _, ok := l.Oldest(); ok || l.Len() != 0 {
		t.Fatalf("removing during All left %v", keys(l))
	}
}

// TestCacheEvicts checks that a full Cache evicts the least recently used
// entry, counts it, and that a hit protects an entry.
func TestCacheEvicts(t *testing.T) {
	c := New[int, string](2)
	c.Add(1, "one")
	c.Add(2, "two")
	c.Get(1) // 2 is now the oldest
	c.Add(3, "three")
	if _, ok := c.Get(2); ok {
		t.Fatal("2 should have been evicted")
	}
	for _, k := range []int{1, 3} {
		if _, ok := c.Get(k); !ok {
			t.Fatalf("%d evicted, want kept", k)
		}
	}
	c.Add(3, "THREE") // replacing is no eviction
	if n, ev := c.Stats(); n != 2 || ev != 1 {
		t.Fatalf("Stats = %d entries %d evictions, want 2 1", n, ev)
	}
	if v, _ := c.Get(3); v != "THREE" {
		t.Fatalf("Get(3) = %q", v)
	}
	if New[int, int](0).cap != 1 {
		t.Fatal("capacity below 1 not raised to 1")
	}
}
