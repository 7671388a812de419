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
type eventQueue struct {
	mu    sync.Mutex
	items []*Event
	max   int
	// ready holds a token when work arrived since the worker last looked.
	ready chan struct{}
	// space holds a token when the worker took events (Submit waits on it).
	space chan struct{}
}

func newEventQueue(max int) *eventQueue {
	return &eventQueue{max: max, ready: make(chan struct{}, 1), space: make(chan struct{}, 1)}
}

// push appends ev unless the queue is full; it never blocks.
func (q *eventQueue) push(ev *Event) bool {
	q.mu.Lock()
	n := len(q.items)
	if n >= q.max {
		q.mu.Unlock()
		return false
	}
	q.items = append(q.items, ev)
	q.mu.Unlock()
	if n == 0 || n+1 == max(q.max/2, 1) {
		signal(q.ready)
	}
	return true
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
