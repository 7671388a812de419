package analyzer

import "sync"

// lru is a bounded least-recently-used map, safe for concurrent use. A hit
// costs one mutex acquisition, a map lookup and two pointer swaps.
type lru[K comparable, V any] struct {
	mu    sync.Mutex
	cap   int
	m     map[K]*lruEntry[K, V]
	head  lruEntry[K, V] // sentinel: head.next is most recent, head.prev least
	evict uint64
}

type lruEntry[K comparable, V any] struct {
	key        K
	val        V
	prev, next *lruEntry[K, V]
}

func newLRU[K comparable, V any](capacity int) *lru[K, V] {
	if capacity < 1 {
		capacity = 1
	}
	c := &lru[K, V]{cap: capacity, m: make(map[K]*lruEntry[K, V], min(capacity, 4096))}
	c.head.next = &c.head
	c.head.prev = &c.head
	return c
}

func (c *lru[K, V]) unlink(e *lruEntry[K, V]) {
	e.prev.next = e.next
	e.next.prev = e.prev
}

func (c *lru[K, V]) pushFront(e *lruEntry[K, V]) {
	e.prev = &c.head
	e.next = c.head.next
	c.head.next.prev = e
	c.head.next = e
}

// get returns the value stored under key and marks it most recently used.
func (c *lru[K, V]) get(key K) (V, bool) {
	c.mu.Lock()
	e, ok := c.m[key]
	if !ok {
		c.mu.Unlock()
		var zero V
		return zero, false
	}
	c.unlink(e)
	c.pushFront(e)
	v := e.val
	c.mu.Unlock()
	return v, true
}

// add stores val under key, replacing any previous value and evicting the
// least recently used entry when the cache is full.
func (c *lru[K, V]) add(key K, val V) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.m[key]; ok {
		e.val = val
		c.unlink(e)
		c.pushFront(e)
		return
	}
	var e *lruEntry[K, V]
	if len(c.m) >= c.cap {
		e = c.head.prev
		c.unlink(e)
		delete(c.m, e.key)
		c.evict++
		*e = lruEntry[K, V]{}
	} else {
		e = new(lruEntry[K, V])
	}
	e.key = key
	e.val = val
	c.m[key] = e
	c.pushFront(e)
}

// stats returns the number of entries and evictions so far.
func (c *lru[K, V]) stats() (entries int, evictions uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.m), c.evict
}
