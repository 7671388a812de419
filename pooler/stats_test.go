package pooler

import (
	"testing"
	"time"
)

// TestRecentWaitsWindow checks the windowed queue-wait figures: connect
// time is kept apart from queueing, p99 never exceeds the max, and
// acquisitions older than RecentWindow age out.
func TestRecentWaitsWindow(t *testing.T) {
	var s poolStats
	s.init()
	t0 := time.Unix(1_800_000_000, 0)
	// One connect of 300 ms and ten acquisitions that did not queue: an
	// idle pool with a slow server login.
	s.recordConnect(t0, 300*time.Millisecond, false)
	for i := 0; i < 10; i++ {
		s.recordAcquire(t0.Add(time.Duration(i)*time.Second), time.Millisecond, 0)
	}
	var st PoolStats
	s.recentLocked(t0.Add(10*time.Second), &st)
	if st.RecentAcquires != 10 || st.RecentWaits != 0 || st.RecentWaitP99 != 0 {
		t.Fatalf("idle pool: acquires %d waits %d p99 %s, want 10, 0, 0", st.RecentAcquires, st.RecentWaits, st.RecentWaitP99)
	}
	if st.Connects != 1 || st.ConnectMax != 300*time.Millisecond || st.ConnectP99 != 300*time.Millisecond {
		t.Fatalf("connect: %d p99 %s max %s", st.Connects, st.ConnectP99, st.ConnectMax)
	}
	// Queued acquisitions: p99 within 19% and never above the max.
	for i := 0; i < 100; i++ {
		s.recordAcquire(t0.Add(20*time.Second), time.Duration(100+i)*time.Millisecond, time.Duration(100+i)*time.Millisecond)
	}
	st = PoolStats{}
	s.recentLocked(t0.Add(21*time.Second), &st)
	if st.RecentWaits != 100 || st.RecentMaxWait != 199*time.Millisecond {
		t.Fatalf("waits %d max %s", st.RecentWaits, st.RecentMaxWait)
	}
	if st.RecentWaitP99 > st.RecentMaxWait || st.RecentWaitP99 < 198*time.Millisecond*81/100 {
		t.Fatalf("p99 %s, max %s", st.RecentWaitP99, st.RecentMaxWait)
	}
	// A minute later everything has aged out.
	st = PoolStats{}
	s.recentLocked(t0.Add(20*time.Second+RecentWindow+recentSlotLen*time.Second), &st)
	if st.RecentAcquires != 0 || st.RecentWaits != 0 || st.RecentWaitP99 != 0 || st.Connects != 0 {
		t.Fatalf("after the window: %+v", st)
	}
}

// TestFineBuckets checks the log-linear histogram bounds.
func TestFineBuckets(t *testing.T) {
	prev := time.Duration(0)
	for us := int64(0); us < 1<<22; us = us*9/8 + 1 {
		d := time.Duration(us) * time.Microsecond
		b := fineBucket(d)
		up := fineUpper(b)
		if up <= d || (b > 0 && fineUpper(b-1) > d) {
			t.Fatalf("%s in bucket %d with upper bound %s (previous %s)", d, b, up, fineUpper(b-1))
		}
		if up > d*5/4+time.Microsecond {
			t.Fatalf("%s: upper bound %s more than 25%% above", d, up)
		}
		if up < prev {
			t.Fatalf("bounds not monotonic")
		}
		prev = up
	}
}
