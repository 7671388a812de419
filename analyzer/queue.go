package analyzer

import "sync"

// eventQueue is one worker's bounded FIFO of events.
//
// It exists because a channel wakes its receiver on every send: with one
// event per statement that is one goroutine wake-up (and often a thread
// wake-up) per statement on the proxy's hot path. Here push wakes the worker
// only when the queue goes from empty to non-empty or reaches half its
// capacity, and the worker lets a batch accumulate (Pipeline batchDelay)
// before it drains the queue. Under load that is a few hundred wake-ups a
// second instead of thousands.
//
// A push is the only thing the relay does per event: one uncontended lock
// of this worker's queue. Whether the pipeline still takes events is the
// queue's own closed flag, checked under the same lock, so Offer touches
// no counter or state shared by every session (an atomic add on a cache
// line all cores write costs more than the lock it guarded).
type eventQueue struct {
	mu    sync.Mutex
	items []*Event
	max   int
	// closed is set by close: push refuses everything after it.
	closed bool
	// ready holds a token when work arrived since the worker last looked.
	ready chan struct{}
	// space holds a token when the worker took events (Submit waits on it).
	space chan struct{}
}

func newEventQueue(max int) *eventQueue {
	return &eventQueue{max: max, ready: make(chan struct{}, 1), space: make(chan struct{}, 1)}
}

// push appends ev unless the queue is full or closed; it never blocks.
// It returns whether ev was queued and, if not, whether the queue was
// closed.
func (q *eventQueue) push(ev *Event) (ok, closed bool) {
	q.mu.Lock()
	if q.closed {
		q.mu.Unlock()
		return false, true
	}
	n := len(q.items)
	if n >= q.max {
		q.mu.Unlock()
		return false, false
	}
	q.items = append(q.items, ev)
	q.mu.Unlock()
	if n == 0 || n+1 == max(q.max/2, 1) {
		signal(q.ready)
	}
	return true, false
}

// close makes every later push fail; a push that returned before it
// stays queued. Idempotent.
func (q *eventQueue) close() {
	q.mu.Lock()
	q.closed = true
	q.mu.Unlock()
	// Wake a Submit waiting for space: it sees the queue closed.
	signal(q.space)
}

// take removes and returns every queued event, leaving spare (emptied) as
// the new backing array, so that two slices alternate without allocating.
func (q *eventQueue) take(spare []*Event) []*Event {
	q.mu.Lock()
	items := q.items
	q.items = spare[:0]
	q.mu.Unlock()
	if len(items) > 0 {
		signal(q.space)
	}
	return items
}

// len returns the number of queued events.
func (q *eventQueue) len() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.items)
}

// signal leaves a token in c unless one is there.
func signal(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}
