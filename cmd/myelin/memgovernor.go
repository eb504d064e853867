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
// steady live heap (twice the live heap with the default GOGC, plus
// stacks and runtime data) would make it run almost continuously, so the
// governor raises the limit to that need once it has lasted a whole
// window. A short burst (one large initial sync, a fan-out to hundreds of
// listeners) does not raise it: that is where the limit is meant to bind,
// making the collector run sooner and the scavenger hand freed pages back
// at once instead of letting the heap overshoot. GOMEMLIMIT, when set, is
// fixed and not governed.

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
	return memoryStats{liveHeap: v(0), gogc: v(1), nonHeap: nonHeap}
}

// need is the memory the collector's GOGC pacing needs for this live heap:
// the heap goal plus everything else the runtime holds.
// With GOGC=off the limit is the collector's only trigger and the need is
// 0: the limit stays at the floor.
func (m memoryStats) need() int64 {
	if m.gogc > math.MaxInt32 {
		return 0
	}
	goal := float64(m.liveHeap) * (1 + float64(m.gogc)/100)
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

// governMemoryLimit samples the runtime every interval until ctx ends.
func governMemoryLimit(ctx context.Context, floor int64, interval time.Duration, window int) {
	g := newMemoryGovernor(floor, window, debug.SetMemoryLimit)
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			g.observe(readMemoryStats().need())
		}
	}
}
