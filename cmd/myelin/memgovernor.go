package main

import (
	"context"
	"math"
	"runtime/debug"
	"runtime/metrics"
	"time"
)

// The soft memory limit that global.memory_limit_mb sets is a floor, not a
// fixed value: a limit below what the collector needs for the server's
// steady live heap (twice the live heap, plus stacks and runtime data)
// would make it run almost continuously, so the governor raises the limit
// to that need once it has lasted a whole window. A short burst (one large
// initial sync, a fan-out to hundreds of listeners) does not raise it:
// that is where the limit is meant to bind, making the collector run
// sooner and the scavenger hand freed pages back at once instead of
// letting the heap overshoot. GOMEMLIMIT, when set, is fixed and not
// governed.
//
// While the limit is governed and GOGC is not set in the environment, the
// governor also raises GOGC while the live heap is small (gogcFor): with
// the default of 100 the heap goal is twice the live heap however far
// below the limit that is, so a fan-out burst collected about once per
// message, each collection costing the woken requests mark assists
// (docs/benchmarks.md, "memory"). The raised goal is kept within half the
// limit, net of the runtime's memory outside the heap and of the free
// space inside partly used spans: a goal that reached the limit itself
// made the collector run back to back (the same section). The need the
// limit follows is still measured at GOGC=100 (steadyGOGC): a raised GOGC
// is headroom under the limit, it never moves the limit.

// memoryNeedSamples are the runtime/metrics the governor reads.
var memoryNeedSamples = []string{
	"/gc/heap/live:bytes",
	"/gc/gogc:percent",
	"/memory/classes/total:bytes",
	"/memory/classes/heap/objects:bytes",
	"/memory/classes/heap/unused:bytes",
	"/memory/classes/heap/free:bytes",
	"/memory/classes/heap/released:bytes",
}

// memoryStats is what the governor reads from the runtime.
type memoryStats struct {
	liveHeap uint64 // heap marked live by the last collection
	gogc     uint64 // GOGC in percent (0: collector off)
	nonHeap  uint64 // stacks, runtime metadata and other runtime memory
	unused   uint64 // free space in heap spans that hold live objects
}

func readMemoryStats() memoryStats {
	s := make([]metrics.Sample, len(memoryNeedSamples))
	for i, name := range memoryNeedSamples {
		s[i].Name = name
	}
	metrics.Read(s)
	v := func(i int) uint64 {
		if s[i].Value.Kind() != metrics.KindUint64 {
			return 0
		}
		return s[i].Value.Uint64()
	}
	heap := v(3) + v(4) + v(5) + v(6)
	var nonHeap uint64
	if total := v(2); total > heap {
		nonHeap = total - heap
	}
	return memoryStats{liveHeap: v(0), gogc: v(1), nonHeap: nonHeap, unused: v(4)}
}

// maxGOGC is the highest GOGC the governor sets: a heap goal of five
// times the live heap.
const maxGOGC = 400

// steadyGOGC is the GOGC whose heap goal a steady live heap is given room
// for: the governor's need counts at most this much, so a higher GOGC
// (the governor's, or one set in the environment) is bounded by the limit
// instead of raising it.
const steadyGOGC = 100

// gogcFor returns the GOGC that lets the heap grow, before the next
// collection, to what is left of half the limit once the runtime's memory
// outside the heap and the free space in partly used spans are counted:
// at least steadyGOGC, at most maxGOGC, in steps of 25 so that small
// changes of the live heap do not reset it every second.
func (m memoryStats) gogcFor(limit int64) int {
	budget := limit/2 - int64(min(m.nonHeap+m.unused, math.MaxInt64/2))
	if m.liveHeap == 0 {
		return maxGOGC
	}
	if budget <= int64(min(m.liveHeap, math.MaxInt64/2)) {
		return steadyGOGC
	}
	g := float64(budget)/float64(m.liveHeap)*100 - 100
	if g >= maxGOGC {
		return maxGOGC
	}
	return max(steadyGOGC, int(g)/25*25)
}

// need is the memory the collector's pacing needs for this live heap: the
// heap goal at GOGC (at most steadyGOGC) plus everything else the runtime
// holds. With GOGC=off the limit is the collector's only trigger and the
// need is 0: the limit stays at the floor.
func (m memoryStats) need() int64 {
	if m.gogc > math.MaxInt32 {
		return 0
	}
	goal := float64(m.liveHeap) * (1 + float64(min(m.gogc, steadyGOGC))/100)
	n := goal + float64(m.nonHeap)
	if n >= math.MaxInt64 {
		return math.MaxInt64
	}
	return int64(n)
}

// memoryGovernor keeps the runtime's soft limit at the floor, or at the
// need that lasted the last window of samples when that is larger.
type memoryGovernor struct {
	floor  int64
	window int // samples a need must last before the limit follows it
	needs  []int64
	limit  int64 // the limit last set
	set    func(int64) int64
}

func newMemoryGovernor(floor int64, window int, set func(int64) int64) *memoryGovernor {
	return &memoryGovernor{floor: floor, window: window, limit: floor, set: set}
}

// observe records one sample's need and returns the limit now in effect.
// The limit rises to a need that lasted the whole window (the window's
// smallest sample) and falls, never below the floor, to a lower need that
// lasted the window (its largest sample) when that is more than an eighth
// lower, so that it does not move with every collection.
func (g *memoryGovernor) observe(need int64) int64 {
	g.needs = append(g.needs, need)
	if len(g.needs) > g.window {
		g.needs = g.needs[len(g.needs)-g.window:]
	}
	if len(g.needs) < g.window {
		return g.limit
	}
	lo, hi := g.needs[0], g.needs[0]
	for _, n := range g.needs[1:] {
		lo, hi = min(lo, n), max(hi, n)
	}
	want := g.limit
	switch {
	case lo > g.limit:
		want = lo
	case hi < g.limit-g.limit/8:
		want = max(g.floor, hi)
	}
	if want != g.limit {
		g.limit = want
		g.set(want)
	}
	return g.limit
}

// governMemoryLimit samples the runtime every interval until ctx ends,
// setting the soft limit and, when governGOGC is set, GOGC (gogcFor).
func governMemoryLimit(ctx context.Context, floor int64, interval time.Duration, window int, governGOGC bool) {
	g := newMemoryGovernor(floor, window, debug.SetMemoryLimit)
	gogc := -1
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			m := readMemoryStats()
			limit := g.observe(m.need())
			if governGOGC {
				if want := m.gogcFor(limit); want != gogc {
					debug.SetGCPercent(want)
					gogc = want
				}
			}
		}
	}
}
