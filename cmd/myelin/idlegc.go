package main

import (
	"context"
	"math"
	"runtime"
	"runtime/metrics"
	"time"
)

// Idle-time collection. A message fanned out to 200 long polls allocates
// ~2.3 MB while its responses are built; with the heap goal of a small
// server 10–15 MB above its live heap, the runtime starts a cycle every few
// messages, usually in the middle of a delivery burst, where its mark
// workers and assists take CPU from the woken responses (on two cores, 9 of
// the 10 slowest messages of a run had one: docs/benchmarks.md, "idlegc").
// Starting the cycle in the quiet spell before the burst instead gives the
// burst the whole budget up to the goal. The collector does only what the
// runtime would have done a little later; it never runs while requests
// come and go, and never twice without allocation in between.

// Idle-time collection's tuning. The quiet spell is long enough that a
// server answering requests back to back never sees one, and short
// against the gaps between bursts it is meant for (at 2 messages a second
// a delivery burst takes ~50 ms of every 500).
const (
	idleGCQuiet    = 100 * time.Millisecond
	idleGCInterval = 50 * time.Millisecond
	// After this long without activity the server is idle, not between
	// bursts: the loop then looks only every idleGCSettledInterval (20
	// wake-ups a second cost an idle server ~3 ms of CPU a second), so the
	// first burst after an idle time is followed by its collection up to
	// that much later; bursts that come more often are each followed by it.
	idleGCSettleAfter     = 2 * time.Second
	idleGCSettledInterval = time.Second
	// A spell in which the heap grew by more than this is not quiet, even
	// with no request starting or ending (a long request, background work).
	idleGCBusyAlloc = 256 << 10
	// A cycle is started once the allocation since the last cycle reaches
	// a quarter of the way from the live heap to the goal (the runtime
	// itself starts one at 70–95 % of the way), and at least this much.
	idleGCMinGrowth    = 1 << 20
	idleGCShareDivisor = 4
)

// heapSamples are the runtime/metrics idle-time collection reads.
var heapSamples = []string{
	"/gc/heap/allocs:bytes",
	"/gc/cycles/total:gc-cycles",
	"/gc/heap/live:bytes",
	"/gc/heap/goal:bytes",
	"/gc/gogc:percent",
}

// heapSample is what idle-time collection reads from the runtime.
type heapSample struct {
	allocs uint64 // bytes allocated since the process started
	cycles uint64 // collections completed
	live   uint64 // heap marked live by the last collection
	goal   uint64 // the heap size at which the current cycle should end
	gogc   uint64 // GOGC in percent (above MaxInt32: off)
}

// readHeapSample reads a heapSample into s, reusing buf (len(heapSamples)).
func readHeapSample(buf []metrics.Sample) heapSample {
	metrics.Read(buf)
	v := func(i int) uint64 {
		if buf[i].Value.Kind() != metrics.KindUint64 {
			return 0
		}
		return buf[i].Value.Uint64()
	}
	return heapSample{allocs: v(0), cycles: v(1), live: v(2), goal: v(3), gogc: v(4)}
}

func newHeapSampleBuf() []metrics.Sample {
	buf := make([]metrics.Sample, len(heapSamples))
	for i, name := range heapSamples {
		buf[i].Name = name
	}
	return buf
}

// idleCollector decides, from one observation per tick, when to start a
// collection. It is not safe for concurrent use.
type idleCollector struct {
	quiet     time.Duration // how long nothing must happen before a cycle
	busyAlloc uint64        // allocation between two observations that is activity
	minGrowth uint64        // allocation since the last cycle below which none starts

	observed    bool
	activity    uint64    // the activity count last observed
	allocs      uint64    // heapSample.allocs last observed
	cycles      uint64    // heapSample.cycles last observed
	cycleAllocs uint64    // heapSample.allocs when the last cycle was seen or started
	quietSince  time.Time // when the current quiet spell began
	// settled: the last observation was idleGCSettleAfter into a quiet
	// spell; the spell has been judged and the server is idle.
	settled bool
}

func newIdleCollector() *idleCollector {
	return &idleCollector{quiet: idleGCQuiet, busyAlloc: idleGCBusyAlloc, minGrowth: idleGCMinGrowth}
}

// observe records the activity count and the runtime's heap at now and
// reports whether to start a collection. After it reports true the caller
// must start one: the allocation so far counts as collected.
func (c *idleCollector) observe(now time.Time, activity uint64, s heapSample) bool {
	if !c.observed {
		c.observed = true
		c.activity, c.allocs, c.cycles, c.cycleAllocs, c.quietSince = activity, s.allocs, s.cycles, s.allocs, now
		return false
	}
	if s.cycles != c.cycles {
		// The runtime collected since the last observation: what was
		// allocated before now is (at most) that cycle's business.
		c.cycles, c.cycleAllocs = s.cycles, s.allocs
	}
	busy := activity != c.activity || s.allocs-c.allocs > c.busyAlloc
	c.activity, c.allocs = activity, s.allocs
	c.settled = false
	if busy {
		c.quietSince = now
		return false
	}
	if now.Sub(c.quietSince) < c.quiet {
		return false
	}
	c.settled = now.Sub(c.quietSince) >= idleGCSettleAfter
	if s.gogc > math.MaxInt32 || s.goal <= s.live {
		// GOGC=off: collections are left to the memory limit alone.
		return false
	}
	growth := s.allocs - c.cycleAllocs
	if growth < c.minGrowth || growth < (s.goal-s.live)/idleGCShareDivisor {
		return false
	}
	c.cycleAllocs = s.allocs
	return true
}

// collectWhenIdle observes every interval (every settledInterval while
// the server stays quiet after a spell was judged) until ctx ends, and runs
// gc when the collector says so. gc runs on this goroutine, never a
// request's, and the next observation comes an interval after it returns.
func collectWhenIdle(ctx context.Context, interval, settledInterval time.Duration, activity func() uint64, read func() heapSample, gc func()) {
	c := newIdleCollector()
	t := time.NewTimer(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			if c.observe(now, activity(), read()) {
				gc()
			}
			next := interval
			if c.settled {
				next = settledInterval
			}
			t.Reset(next)
		}
	}
}

// startIdleGC starts idle-time collection for the activity count.
func startIdleGC(ctx context.Context, activity func() uint64) {
	buf := newHeapSampleBuf()
	go collectWhenIdle(ctx, idleGCInterval, idleGCSettledInterval, activity, func() heapSample { return readHeapSample(buf) }, runtime.GC)
}
