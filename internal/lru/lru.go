// Package lru is pgaudit's one least-recently-used map. Cache is the bounded,
// concurrency-safe form the analyzer's caches use; List is the unbounded,
// unsynchronised core for callers that already hold a lock and decide
// themselves what to evict (the N+1 detector's sessions).
package lru

import (
	"iter"
	"sync"
)

// List is a map that remembers the order in which its keys were last used.
// It is not safe for concurrent use; the zero value is not ready, use
// NewList. Get, Add, Remove and Oldest cost O(1).
type List[K comparable, V any] struct {
	m    map[K]*entry[K, V]
	head entry[K, V] // sentinel: head.next is most recent, head.prev least
}

type entry[K comparable, V any] struct {
	key        K
	val        V
	prev, next *entry[K, V]
}

// NewList returns an empty List; sizeHint presizes its map.
func NewList[K comparable, V any](sizeHint int) *List[K, V] {
	l := &List[K, V]{m: make(map[K]*entry[K, V], max(sizeHint, 0))}
	l.head.next = &l.head
	l.head.prev = &l.head
	return l
}

func (l *List[K, V]) unlink(e *entry[K, V]) {
	e.prev.next = e.next
	e.next.prev = e.prev
}

func (l *List[K, V]) pushFront(e *entry[K, V]) {
	e.prev = &l.head
	e.next = l.head.next
	l.head.next.prev = e
	l.head.next = e
}

// Len returns the number of entries.
func (l *List[K, V]) Len() int { return len(l.m) }

// Get returns the value stored under key and marks it most recently used.
func (l *List[K, V]) Get(key K) (V, bool) {
	e, ok := l.m[key]
	if !ok {
		var zero V
		return zero, false
	}
	if l.head.next != e {
		l.unlink(e)
		l.pushFront(e)
	}
	return e.val, true
}

// Contains reports whether key is present, without marking it used.
func (l *List[K, V]) Contains(key K) bool {
	_, ok := l.m[key]
	return ok
}

// Add stores val under key as the most recently used entry, replacing any
// previous value. It never evicts.
func (l *List[K, V]) Add(key K, val V) {
	if e, ok := l.m[key]; ok {
		e.val = val
		l.unlink(e)
		l.pushFront(e)
		return
	}
	e := &entry[K, V]{key: key, val: val}
	l.m[key] = e
	l.pushFront(e)
}

// Remove deletes key; it reports whether key was present.
func (l *List[K, V]) Remove(key K) bool {
	e, ok := l.m[key]
	if !ok {
		return false
	}
	l.unlink(e)
	delete(l.m, key)
	return true
}

// Oldest returns the least recently used entry without marking it used;
// ok is false when the list is empty.
func (l *List[K, V]) Oldest() (key K, val V, ok bool) {
	if len(l.m) == 0 {
		return key, val, false
	}
	e := l.head.prev
	return e.key, e.val, true
}

// All yields every entry from least to most recently used. The caller may
// Remove the yielded key during the iteration, but must not Add or Get.
func (l *List[K, V]) All() iter.Seq2[K, V] {
	return func(yield func(K, V) bool) {
		for e := l.head.prev; e != &l.head; {
			prev := e.prev
			if !yield(e.key, e.val) {
				return
			}
			e = prev
		}
	}
}

// Cache is a bounded List, safe for concurrent use: Add evicts the least
// recently used entry when the cache is full. A hit costs one mutex
// acquisition, a map lookup and two pointer swaps.
type Cache[K comparable, V any] struct {
	mu    sync.Mutex
	cap   int
	l     *List[K, V]
	evict uint64
}

// New returns an empty Cache holding at most capacity entries (at least 1).
func New[K comparable, V any](capacity int) *Cache[K, V] {
	capacity = max(capacity, 1)
	return &Cache[K, V]{cap: capacity, l: NewList[K, V](min(capacity, 4096))}
}

// Get returns the value stored under key and marks it most recently used.
func (c *Cache[K, V]) Get(key K) (V, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.l.Get(key)
}

// Add stores val under key, replacing any previous value and evicting the
// least recently used entry when the cache is full.
func (c *Cache[K, V]) Add(key K, val V) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.l.m[key]; !ok && c.l.Len() >= c.cap {
		k, _, _ := c.l.Oldest()
		c.l.Remove(k)
		c.evict++
	}
	c.l.Add(key, val)
}

// Stats returns the number of entries and evictions so far.
func (c *Cache[K, V]) Stats() (entries int, evictions uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.l.Len(), c.evict
}
