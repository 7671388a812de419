package wire

import (
	"fmt"
	"sync/atomic"
)

// DefaultClientBufferBudget is the default limit of a MemoryBudget shared
// by client connections (256 MiB).
const DefaultClientBufferBudget = 256 << 20

// MemoryBudget bounds the bytes that the Readers sharing it hold in message
// buffers beyond their fixed per-connection buffers: a Reader charges the
// budget as a large message's bytes arrive and releases the charge when it
// drops the buffer (see Reader). It is safe for concurrent use. A nil
// *MemoryBudget has no limit and counts nothing.
type MemoryBudget struct {
	limit atomic.Int64
	used  atomic.Int64
}

// NewMemoryBudget returns a budget of limit bytes (DefaultClientBufferBudget
// when limit <= 0).
func NewMemoryBudget(limit int64) *MemoryBudget {
	b := &MemoryBudget{}
	b.SetLimit(limit)
	return b
}

// SetLimit changes the limit (DefaultClientBufferBudget when limit <= 0).
// Bytes already reserved stay reserved; only later reservations see the new
// limit.
func (b *MemoryBudget) SetLimit(limit int64) {
	if limit <= 0 {
		limit = DefaultClientBufferBudget
	}
	b.limit.Store(limit)
}

// Limit returns the limit in bytes (0 for a nil budget).
func (b *MemoryBudget) Limit() int64 {
	if b == nil {
		return 0
	}
	return b.limit.Load()
}

// Used returns the bytes reserved now.
func (b *MemoryBudget) Used() int64 {
	if b == nil {
		return 0
	}
	return b.used.Load()
}

// Reserve takes n bytes from the budget and reports whether they fit. On
// false nothing was taken. Reserve on a nil budget always succeeds.
func (b *MemoryBudget) Reserve(n int64) bool {
	if b == nil || n <= 0 {
		return true
	}
	limit := b.limit.Load()
	for {
		used := b.used.Load()
		if used+n > limit {
			return false
		}
		if b.used.CompareAndSwap(used, used+n) {
			return true
		}
	}
}

// Release returns n bytes taken by Reserve.
func (b *MemoryBudget) Release(n int64) {
	if b == nil || n <= 0 {
		return
	}
	b.used.Add(-n)
}

// BufferBudgetError reports that a Reader could not grow its buffer for a
// message because the shared MemoryBudget is spent. The message was read
// only in part, so the stream is out of sync and the connection must be
// closed (Postgres would answer 53200 out_of_memory).
type BufferBudgetError struct {
	// Type and Size are the message's type byte and declared body size.
	Type byte
	Size int
	// Budget is the budget that was spent; Limit is its limit in bytes.
	Budget *MemoryBudget
	Limit  int64
}

func (e *BufferBudgetError) Error() string {
	return fmt.Sprintf("message of type %q (%d bytes): buffered client bytes exceed the budget of %s",
		e.Type, e.Size, FormatBytes(e.Limit))
}

// FormatBytes writes n as "256 MiB", "64 KiB" or "1000 bytes": in the
// largest binary unit that divides it.
func FormatBytes(n int64) string {
	switch {
	case n > 0 && n%(1<<30) == 0:
		return fmt.Sprintf("%d GiB", n>>30)
	case n > 0 && n%(1<<20) == 0:
		return fmt.Sprintf("%d MiB", n>>20)
	case n > 0 && n%(1<<10) == 0:
		return fmt.Sprintf("%d KiB", n>>10)
	}
	return fmt.Sprintf("%d bytes", n)
}
