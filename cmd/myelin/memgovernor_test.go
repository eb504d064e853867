package main

import (
	"math"
	"runtime"
	"testing"

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

// TestMemoryNeed: the need is GOGC's heap goal plus the runtime's memory
// outside the heap, and 0 (the floor holds) with the collector off.
func TestMemoryNeed(t *testing.T) {
	m := memoryStats{liveHeap: 30 << 20, gogc: 100, nonHeap: 8 << 20}
	if got := m.need(); got != 68<<20 {
		t.Errorf("need with GOGC=100 = %d, want %d", got, 68<<20)
	}
	m.gogc = 50
	if got := m.need(); got != 53<<20 {
		t.Errorf("need with GOGC=50 = %d, want %d", got, 53<<20)
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
