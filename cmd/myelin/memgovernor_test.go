package main

import (
	"context"
	"math"
	"runtime"
	"runtime/debug"
	"testing"
	"time"

	"github.com/myelin-chat/myelin/config"
)

// TestMemoryGovernor: the configured limit holds through a burst shorter
// than the window, follows a need that lasts the whole window (its smallest
// value over the window), comes back down when a need more than an eighth
// lower lasts the window (its largest value), and never goes below the floor.
func TestMemoryGovernor(t *testing.T) {
	const mib = 1 << 20
	var set []int64
	g := newMemoryGovernor(64*mib, 3, func(v int64) int64 { set = append(set, v); return 0 })
	steps := []struct {
		need, want int64
	}{
		{10 * mib, 64 * mib},  // below the floor
		{200 * mib, 64 * mib}, // a burst: two samples, shorter than the window
		{300 * mib, 64 * mib},
		{20 * mib, 64 * mib},
		{100 * mib, 64 * mib},
		{120 * mib, 64 * mib},
		{110 * mib, 100 * mib}, // 100, 120, 110 lasted the window: its smallest
		{150 * mib, 110 * mib},
		{150 * mib, 110 * mib},
		{150 * mib, 150 * mib},
		{140 * mib, 150 * mib}, // lower, but not for the whole window
		{90 * mib, 150 * mib},  // a dip is not a lasting need
		{140 * mib, 150 * mib}, // 140, 90, 140: at most 140, less than an eighth below 150: kept
		{90 * mib, 150 * mib},
		{90 * mib, 150 * mib},
		{90 * mib, 90 * mib}, // 90 lasted the window, more than an eighth lower: followed down
		{10 * mib, 90 * mib},
		{30 * mib, 90 * mib},
		{10 * mib, 64 * mib}, // back to the floor, never below it
		{10 * mib, 64 * mib},
	}
	for i, s := range steps {
		if got := g.observe(s.need); got != s.want {
			t.Fatalf("step %d: observe(%d MiB) = %d MiB, want %d MiB", i, s.need/mib, got/mib, s.want/mib)
		}
	}
	want := []int64{100 * mib, 110 * mib, 150 * mib, 90 * mib, 64 * mib}
	if len(set) != len(want) {
		t.Fatalf("the runtime limit was set %d times (%v), want %d", len(set), set, len(want))
	}
	for i := range want {
		if set[i] != want[i] {
			t.Errorf("set #%d = %d MiB, want %d MiB", i, set[i]/mib, want[i]/mib)
		}
	}
}

// TestMemoryNeed: the need is GOGC's heap goal (GOGC counted at most as
// steadyGOGC) plus the runtime's memory outside the heap, and 0 (the floor
// holds) with the collector off.
func TestMemoryNeed(t *testing.T) {
	m := memoryStats{liveHeap: 30 << 20, gogc: 100, nonHeap: 8 << 20}
	if got := m.need(); got != 68<<20 {
		t.Errorf("need with GOGC=100 = %d, want %d", got, 68<<20)
	}
	m.gogc = 50
	if got := m.need(); got != 53<<20 {
		t.Errorf("need with GOGC=50 = %d, want %d", got, 53<<20)
	}
	// A GOGC above steadyGOGC (maxGOGC, or GOGC=400 from the
	// environment) is headroom the limit bounds: the need stays twice
	// the live heap, so the limit does not follow a five-fold goal.
	m.gogc = maxGOGC
	if got := m.need(); got != 68<<20 {
		t.Errorf("need with GOGC=%d = %d, want %d (GOGC=100's)", maxGOGC, got, 68<<20)
	}
	m.gogc = math.MaxUint64 // GOGC=off as runtime/metrics reports it
	if got := m.need(); got != 0 {
		t.Errorf("need with GOGC=off = %d, want 0", got)
	}
}

// TestReadMemoryStats: the metrics the governor reads exist in this Go
// version (an unknown name would read as 0 and the limit would never
// follow the heap).
func TestReadMemoryStats(t *testing.T) {
	keep := make([][]byte, 0, 64)
	for range 64 {
		keep = append(keep, make([]byte, 64<<10))
	}
	runtime.GC()
	m := readMemoryStats()
	runtime.KeepAlive(keep)
	if m.liveHeap < 4<<20 {
		t.Errorf("live heap %d bytes, want at least the 4 MiB this test keeps", m.liveHeap)
	}
	if m.gogc != 100 {
		t.Errorf("GOGC %d, want the default 100", m.gogc)
	}
	if m.nonHeap == 0 {
		t.Error("no memory outside the heap (stacks, metadata) was read")
	}
}

// TestDefaultMemoryLimit: a config without memory_limit_mb gets the
// documented default of 64 MiB.
func TestDefaultMemoryLimit(t *testing.T) {
	if got := config.Defaults().Global.MemoryLimitMB; got != 64 {
		t.Errorf("default global.memory_limit_mb = %d, want 64", got)
	}
}

// TestGOGCFor: GOGC is raised while the live heap is small, so that its
// goal fills what is left of half the limit after the runtime's memory
// outside the heap and the free space in partly used spans; never below
// 100, never above maxGOGC, in steps of 25.
func TestGOGCFor(t *testing.T) {
	const mib = 1 << 20
	limit := int64(64 * mib) // half: 32 MiB
	cases := []struct {
		name                  string
		live, nonHeap, unused uint64
		want                  int
	}{
		{"fresh server", 2 * mib, 4 * mib, 1 * mib, maxGOGC}, // 27 MiB for 2 live
		{"no live heap yet", 0, 4 * mib, 0, maxGOGC},
		{"small heap", 8 * mib, 4 * mib, 2 * mib, 225},                    // 26/8 = 3.25: 225
		{"in steps of 25", 10 * mib, 4 * mib, 2 * mib, 150},               // 26/10 = 2.6: 160, down to 150
		{"heap at a third of the budget", 9 * mib, 3 * mib, 2 * mib, 200}, // 27/9 = 3: 200
		{"large heap", 14 * mib, 6 * mib, 4 * mib, 100},                   // 22/14 = 1.57: below 100
		{"fragmented", 4 * mib, 6 * mib, 24 * mib, 100},                   // 2 MiB left: 100
		{"nothing left", 4 * mib, 40 * mib, 0, 100},
	}
	for _, c := range cases {
		m := memoryStats{liveHeap: c.live, gogc: 100, nonHeap: c.nonHeap, unused: c.unused}
		if got := m.gogcFor(limit); got != c.want {
			t.Errorf("%s: gogcFor = %d, want %d", c.name, got, c.want)
		}
	}
	// A raised limit (the steady heap needed more) gives a raised budget.
	m := memoryStats{liveHeap: 14 * mib, nonHeap: 6 * mib, unused: 4 * mib}
	if got := m.gogcFor(128 * mib); got != 275 { // 54/14 = 3.86: 285, down to 275
		t.Errorf("gogcFor with a 128 MiB limit = %d, want 275", got)
	}
}

// TestGovernorBoundsBurstGOGC: with GOGC at maxGOGC a steady live heap
// of 20 MiB (a five-fold goal of 100 MiB plus 8 MiB outside the heap)
// leaves the 64 MiB floor in place: the need at steadyGOGC is 48 MiB. A
// steady live heap of 40 MiB raises it to that need (88 MiB), not to 208.
func TestGovernorBoundsBurstGOGC(t *testing.T) {
	const mib = 1 << 20
	g := newMemoryGovernor(64*mib, 3, func(int64) int64 { return 0 })
	for range 5 {
		m := memoryStats{liveHeap: 20 * mib, gogc: maxGOGC, nonHeap: 8 * mib}
		if got := g.observe(m.need()); got != 64*mib {
			t.Fatalf("limit with 20 MiB live at GOGC=%d = %d MiB, want the 64 MiB floor", maxGOGC, got/mib)
		}
	}
	var got int64
	for range 3 {
		m := memoryStats{liveHeap: 40 * mib, gogc: maxGOGC, nonHeap: 8 * mib}
		got = g.observe(m.need())
	}
	if got != 88*mib {
		t.Errorf("limit with 40 MiB steady live heap = %d MiB, want 88", got/mib)
	}
}

// TestGovernMemoryLimitSetsGOGC: the governing loop raises GOGC for this
// test process's small heap when told to govern it, and leaves GOGC alone
// when GOGC came from the environment.
func TestGovernMemoryLimitSetsGOGC(t *testing.T) {
	before := debug.SetGCPercent(100)
	beforeLimit := debug.SetMemoryLimit(-1)
	t.Cleanup(func() {
		debug.SetGCPercent(before)
		debug.SetMemoryLimit(beforeLimit)
	})
	run := func(governGOGC bool, wait time.Duration) int {
		debug.SetGCPercent(100)
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { governMemoryLimit(ctx, 64<<20, time.Millisecond, 3, governGOGC); close(done) }()
		deadline := time.Now().Add(wait)
		got := 100
		for time.Now().Before(deadline) {
			if got = int(readMemoryStats().gogc); got != 100 {
				break
			}
			time.Sleep(time.Millisecond)
		}
		cancel()
		<-done
		return debug.SetGCPercent(100)
	}
	if got := run(true, 5*time.Second); got <= 100 {
		t.Errorf("GOGC with a small heap under a governed 64 MiB limit = %d, want above 100", got)
	}
	if got := run(false, 50*time.Millisecond); got != 100 {
		t.Errorf("GOGC when the environment sets it = %d, want it left at 100", got)
	}
}
