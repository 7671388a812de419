package pooler

import (
	"container/list"
	"sync/atomic"
)

// stmtCache is the LRU of protocol-level prepared statements that exist on
// one server connection in transaction mode, keyed by server-side name.
// Owned by whoever holds the server; not synchronized, except len, which
// SHOW SERVERS may call at any time.
type stmtCache struct {
	n     atomic.Int32 // ll.Len(), for len
	max   int
	ll    *list.List
	items map[string]*list.Element
	// toClose lists names dropped from the cache that still exist on the
	// server; they are closed before the name is prepared again.
	toClose map[string]bool
	// shapes holds the result shape (see rowShape) of statements whose
	// shape the proxy learned on this server: a server statement's result
	// shape never changes (Postgres fails it with 0A000 instead).
	shapes map[string]string
}

func newStmtCache(max int) *stmtCache {
	if max <= 0 {
		max = 200
	}
	return &stmtCache{max: max, ll: list.New(), items: map[string]*list.Element{}, toClose: map[string]bool{}, shapes: map[string]string{}}
}

// has reports whether name is prepared and marks it recently used.
func (c *stmtCache) has(name string) bool {
	if e, ok := c.items[name]; ok {
		c.ll.MoveToFront(e)
		return true
	}
	return false
}

// add records name and returns a name evicted to make room ("" if none);
// the caller must close the evicted statement on the server.
func (c *stmtCache) add(name string) (evicted string) {
	if e, ok := c.items[name]; ok {
		c.ll.MoveToFront(e)
		return ""
	}
	c.items[name] = c.ll.PushFront(name)
	if c.ll.Len() > c.max {
		last := c.ll.Back()
		c.ll.Remove(last)
		evicted = last.Value.(string)
		delete(c.items, evicted)
		delete(c.shapes, evicted)
	}
	c.n.Store(int32(c.ll.Len()))
	return evicted
}

// remove forgets name; when stillOnServer, the name is queued to be closed.
func (c *stmtCache) remove(name string, stillOnServer bool) {
	if e, ok := c.items[name]; ok {
		c.ll.Remove(e)
		delete(c.items, name)
		c.n.Store(int32(c.ll.Len()))
	}
	delete(c.shapes, name)
	if stillOnServer {
		c.toClose[name] = true
	}
}

func (c *stmtCache) len() int { return int(c.n.Load()) }

// shape returns the result shape learned for name ("" if unknown).
func (c *stmtCache) shape(name string) string { return c.shapes[name] }

// setShape records the result shape of name, if it is prepared.
func (c *stmtCache) setShape(name, shape string) {
	if _, ok := c.items[name]; ok && shape != "" {
		c.shapes[name] = shape
	}
}

// clear forgets everything (after DISCARD ALL or DEALLOCATE ALL ran on the
// server).
func (c *stmtCache) clear() {
	c.ll.Init()
	c.n.Store(0)
	clear(c.items)
	clear(c.toClose)
	clear(c.shapes)
}
