package main

import (
	"context"
	"io"
	"math"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"strings"
	"testing"
	"time"

	"github.com/myelin-chat/myelin/config"
)

const mib = 1 << 20

// idleRun drives an idleCollector with a fake clock that advances one
// idleGCInterval per step, a fake activity count and a fake heap: a live
// heap of 10 MiB and a goal of 22 MiB (a quarter of the way: 3 MiB), as a
// fresh server has during a fan-out.
type idleRun struct {
	t        *testing.T
	c        *idleCollector
	now      time.Time
	activity uint64
	heap     heapSample
	started  int // collections the collector asked for
}

func newIdleRun(t *testing.T) *idleRun {
	r := &idleRun{t: t, c: newIdleCollector(), now: time.Unix(1_800_000_000, 0),
		heap: heapSample{allocs: 500 * mib, cycles: 40, live: 10 * mib, goal: 22 * mib, gogc: 100}}
	r.step()
	return r
}

// step advances the clock one tick and observes; it reports whether the
// collector asked for a collection, and if so runs a fake one: the runtime
// then counts a cycle and the heap's growth is gone.
func (r *idleRun) step() bool {
	r.now = r.now.Add(idleGCInterval)
	if !r.c.observe(r.now, r.activity, r.heap) {
		return false
	}
	r.started++
	r.heap.cycles++
	return true
}

// steps runs n ticks and returns how many asked for a collection.
func (r *idleRun) steps(n int) int {
	k := 0
	for range n {
		if r.step() {
			k++
		}
	}
	return k
}

// burst is a delivery burst: requests start and end and the heap grows
// by b bytes over a few ticks.
func (r *idleRun) burst(b uint64) {
	for range 4 {
		r.activity += 50
		r.heap.allocs += b / 4
		if r.step() {
			r.t.Fatalf("a collection was started during a burst (tick at %v)", r.now)
		}
	}
}

// quietTicks is how many ticks after a burst's last one the quiet spell
// takes to be noticed.
var quietTicks = int(idleGCQuiet / idleGCInterval)

// TestIdleGCStartsAfterQuietSpellWithGrowth: after a burst that grew the
// heap a quarter of the way to its goal, a collection starts once the
// server has been quiet for idleGCQuiet, and not before.
func TestIdleGCStartsAfterQuietSpellWithGrowth(t *testing.T) {
	r := newIdleRun(t)
	r.burst(4 * mib)
	for i := 1; i < quietTicks; i++ {
		if r.step() {
			t.Fatalf("a collection started after %d quiet ticks, before the %v quiet spell", i, idleGCQuiet)
		}
	}
	if !r.step() {
		t.Fatalf("no collection after %v quiet with 4 MiB grown (runway 12 MiB)", idleGCQuiet+idleGCInterval)
	}
}

// TestIdleGCNotWhileBusy: neither requests starting and ending nor a heap
// that keeps growing without requests (a long request, background work)
// leave a quiet spell; once they stop, the collection comes.
func TestIdleGCNotWhileBusy(t *testing.T) {
	r := newIdleRun(t)
	for range 100 {
		r.activity++
		r.heap.allocs += 64 << 10
		if r.step() {
			t.Fatal("a collection started while requests came and went")
		}
	}
	for range 100 {
		r.heap.allocs += idleGCBusyAlloc + 1
		if r.step() {
			t.Fatal("a collection started while the heap grew by more than idleGCBusyAlloc per tick")
		}
	}
	if got := r.steps(quietTicks); got != 1 {
		t.Fatalf("%d collections once quiet after the busy period, want 1", got)
	}
}

// TestIdleGCNotRepeatedWithoutAllocation: an idle server collects once,
// then not again however long it stays idle, until it allocates again.
func TestIdleGCNotRepeatedWithoutAllocation(t *testing.T) {
	r := newIdleRun(t)
	r.burst(4 * mib)
	if got := r.steps(quietTicks); got != 1 {
		t.Fatalf("%d collections after the first burst, want 1", got)
	}
	// An hour idle, with a trickle of allocation (4 KiB a second) and the
	// runtime's own collection every two minutes (forcegcperiod).
	for i := range int(time.Hour / idleGCInterval) {
		if i%20 == 0 {
			r.heap.allocs += 4 << 10
		}
		if i%int(2*time.Minute/idleGCInterval) == 0 {
			r.heap.cycles++
		}
		if r.step() {
			t.Fatalf("a second collection after %v idle, with no burst since the first", time.Duration(i+1)*idleGCInterval)
		}
	}
	r.burst(4 * mib)
	if got := r.steps(quietTicks); got != 1 {
		t.Fatalf("%d collections after the second burst, want 1", got)
	}
}

// TestIdleGCSettles: between bursts the loop looks at the normal pace;
// after idleGCSettleAfter without activity it may look less often, until
// the next request.
func TestIdleGCSettles(t *testing.T) {
	r := newIdleRun(t)
	r.burst(4 * mib)
	if got := r.steps(quietTicks); got != 1 || r.c.settled {
		t.Fatalf("after the quiet spell: %d collections, settled %v; want 1, false", got, r.c.settled)
	}
	r.steps(int(idleGCSettleAfter/idleGCInterval) - quietTicks - 1)
	if r.c.settled {
		t.Fatalf("settled before %v without activity", idleGCSettleAfter)
	}
	r.step()
	if !r.c.settled {
		t.Fatalf("not settled after %v without activity", idleGCSettleAfter)
	}
	r.activity++
	r.step()
	if r.c.settled {
		t.Fatal("still settled after a request")
	}
}

// TestIdleGCWaitsForMeaningfulGrowth: growth under a quarter of the way
// from the live heap to the goal (or under idleGCMinGrowth) does not start
// one; bursts that add up to it do.
func TestIdleGCWaitsForMeaningfulGrowth(t *testing.T) {
	r := newIdleRun(t)
	r.burst(2 * mib) // 2 of 12 MiB
	if got := r.steps(3 * quietTicks); got != 0 {
		t.Fatalf("%d collections with the heap a sixth of the way to its goal", got)
	}
	r.burst(2 * mib) // 4 of 12 MiB
	if got := r.steps(quietTicks); got != 1 {
		t.Fatalf("%d collections with the heap a third of the way to its goal, want 1", got)
	}

	// A tiny heap: a quarter of its runway is under idleGCMinGrowth.
	r = newIdleRun(t)
	r.heap.live, r.heap.goal = 1*mib, 4*mib
	r.burst(mib - 4096)
	if got := r.steps(3 * quietTicks); got != 0 {
		t.Fatalf("%d collections for less than idleGCMinGrowth allocated", got)
	}
	r.burst(8192)
	if got := r.steps(quietTicks); got != 1 {
		t.Fatalf("%d collections for idleGCMinGrowth allocated, want 1", got)
	}
}

// TestIdleGCCountsFromTheRuntimesLastCycle: what was allocated before a
// cycle the runtime ran by itself is not growth.
func TestIdleGCCountsFromTheRuntimesLastCycle(t *testing.T) {
	r := newIdleRun(t)
	r.burst(2 * mib)
	r.heap.cycles++ // the runtime collected during this burst
	r.burst(2 * mib)
	if got := r.steps(3 * quietTicks); got != 0 {
		t.Fatalf("%d collections: growth from before the runtime's cycle was counted", got)
	}
	r.burst(2 * mib)
	if got := r.steps(quietTicks); got != 1 {
		t.Fatalf("%d collections with 4 MiB grown since the runtime's cycle, want 1", got)
	}
}

// TestIdleGCOffWithGOGCOff: with GOGC=off only the memory limit starts
// collections; when GOGC comes back, so does idle-time collection.
func TestIdleGCOffWithGOGCOff(t *testing.T) {
	r := newIdleRun(t)
	r.heap.gogc = math.MaxUint64 // what the runtime reports for GOGC=off (-1)
	r.burst(8 * mib)
	if got := r.steps(3 * quietTicks); got != 0 {
		t.Fatalf("%d collections with GOGC=off", got)
	}
	r.heap.gogc = 100
	if got := r.steps(1); got != 1 {
		t.Fatalf("%d collections once GOGC=100 again, want 1", got)
	}
}

// TestCollectWhenIdleRunsGC: the loop reads the activity count and the
// heap and calls gc when the collector says so. It waits a minute for a
// call that should come within ~0.1 s, so load cannot make it fail.
func TestCollectWhenIdleRunsGC(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	heap := heapSample{allocs: 100 * mib, cycles: 1, live: 10 * mib, goal: 22 * mib, gogc: 100}
	reads := 0
	read := func() heapSample {
		reads++
		if reads == 2 { // a burst right after the first observation
			heap.allocs += 4 * mib
		}
		return heap
	}
	called := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		collectWhenIdle(ctx, time.Millisecond, time.Millisecond, func() uint64 { return 7 }, read, func() {
			select {
			case called <- struct{}{}:
			default:
			}
		})
	}()
	select {
	case <-called:
	case <-time.After(time.Minute):
		t.Fatal("gc was not called within a minute of 1 ms ticks, with 4 MiB grown and no activity")
	}
	cancel()
	<-done
}

// TestReadHeapSample: the metric names exist in this Go version and read
// what they say.
func TestReadHeapSample(t *testing.T) {
	buf := newHeapSampleBuf()
	defer debug.SetGCPercent(debug.SetGCPercent(150))
	before := readHeapSample(buf)
	sink := make([][]byte, 0, 64)
	for range 64 {
		sink = append(sink, make([]byte, 16<<10))
	}
	runtime.KeepAlive(sink)
	runtime.GC()
	after := readHeapSample(buf)
	for i, s := range buf {
		if s.Value.Kind() != metrics.KindUint64 {
			t.Errorf("%s: kind %v, want uint64", heapSamples[i], s.Value.Kind())
		}
	}
	if after.allocs < before.allocs+1<<20 {
		t.Errorf("allocs %d -> %d after allocating 1 MiB", before.allocs, after.allocs)
	}
	if after.cycles <= before.cycles {
		t.Errorf("cycles %d -> %d across runtime.GC", before.cycles, after.cycles)
	}
	if after.goal <= after.live || after.live == 0 {
		t.Errorf("live %d, goal %d", after.live, after.goal)
	}
	if after.gogc != 150 {
		t.Errorf("gogc %d, want 150", after.gogc)
	}
}

// TestIdleGCConfig: on by default, documented, and off through the
// environment.
func TestIdleGCConfig(t *testing.T) {
	if !config.Defaults().Global.IdleGC {
		t.Error("global.idle_gc is off by default")
	}
	if !strings.Contains(string(config.Sample(config.Defaults())), "# env: MYELIN_GLOBAL_IDLE_GC") {
		t.Error("the sample config does not document global.idle_gc")
	}
	cfg, err := loadConfig(t.TempDir()+"/myelin.yaml", true, io.Discard, "MYELIN_GLOBAL_IDLE_GC=false")
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Global.IdleGC {
		t.Error("MYELIN_GLOBAL_IDLE_GC=false left it on")
	}
}
