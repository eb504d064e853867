package lease_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"io"
	"log/slog"
	"os"
	"runtime/pprof"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/myelin-chat/myelin/internal/lease"
)

// testRedis returns a client of the test Redis and a key of the test's
// own, or skips the test.
func testRedis(t *testing.T) (*redis.Client, string) {
	t.Helper()
	u := os.Getenv("MYELIN_TEST_REDIS")
	if u == "" {
		t.Skip("lease test skipped: set MYELIN_TEST_REDIS to a Redis URL (e.g. redis://127.0.0.1:6379/0) to run it")
	}
	o, err := redis.ParseURL(u)
	if err != nil {
		t.Fatal(err)
	}
	c := redis.NewClient(o)
	var b [6]byte
	_, _ = rand.Read(b[:])
	key := "myelin-test:" + hex.EncodeToString(b[:]) + ":lease"
	t.Cleanup(func() {
		c.Del(context.Background(), key)
		c.Close()
	})
	return c, key
}

// worker counts how many holders run at once.
type worker struct {
	running, maxRunning, starts atomic.Int32
	mu                          sync.Mutex
	who                         string
}

func (w *worker) run(name string) func(ctx context.Context) {
	return func(ctx context.Context) {
		n := w.running.Add(1)
		w.starts.Add(1)
		for {
			m := w.maxRunning.Load()
			if n <= m || w.maxRunning.CompareAndSwap(m, n) {
				break
			}
		}
		w.mu.Lock()
		w.who = name
		w.mu.Unlock()
		<-ctx.Done()
		w.running.Add(-1)
	}
}

func (w *worker) holder() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.running.Load() == 0 {
		return ""
	}
	return w.who
}

func waitFor(t *testing.T, what string, within time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s", what, within)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// TestOneHolderAndTakeover: of two competitors one runs the work; when
// it stops, the other takes over.
func TestOneHolderAndTakeover(t *testing.T) {
	c, key := testRedis(t)
	opts := lease.Options{TTL: 600 * time.Millisecond, Poll: 20 * time.Millisecond, Logger: quiet}
	w := &worker{}
	ctxA, stopA := context.WithCancel(context.Background())
	ctxB, stopB := context.WithCancel(context.Background())
	defer stopB()
	doneA, doneB := make(chan struct{}), make(chan struct{})
	go func() { lease.Run(ctxA, c, key, opts, w.run("a")); close(doneA) }()
	waitFor(t, "a takes the lease", 2*time.Second, func() bool { return w.holder() == "a" })
	go func() { lease.Run(ctxB, c, key, opts, w.run("b")); close(doneB) }()
	time.Sleep(3 * opts.TTL) // several renewals
	if w.holder() != "a" || w.maxRunning.Load() != 1 {
		t.Fatalf("holder %q, most at once %d; want a alone", w.holder(), w.maxRunning.Load())
	}
	stopA()
	<-doneA
	// A released the lease: B takes it within its poll, not after TTL.
	waitFor(t, "b takes over", opts.TTL/2, func() bool { return w.holder() == "b" })
	if w.maxRunning.Load() != 1 {
		t.Fatalf("%d ran at once", w.maxRunning.Load())
	}
	stopB()
	<-doneB
	if n, _ := c.Exists(context.Background(), key).Result(); n != 0 {
		t.Fatal("the lease is still held after both stopped")
	}
}

// TestLostLeaseStopsWork: a holder whose key is taken from it stops its
// work at its next renewal, and one that cannot renew (Redis paused)
// stops it before the key could expire.
func TestLostLeaseStopsWork(t *testing.T) {
	c, key := testRedis(t)
	opts := lease.Options{TTL: 900 * time.Millisecond, Poll: 20 * time.Millisecond, Logger: quiet}
	w := &worker{}
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { lease.Run(ctx, c, key, opts, w.run("a")); close(done) }()
	defer func() { stop(); <-done }()
	waitFor(t, "a takes the lease", 2*time.Second, func() bool { return w.holder() == "a" })

	// Another process's token replaces it.
	if err := c.Set(context.Background(), key, "someone-else", opts.TTL).Err(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "a stops after its key was taken", opts.TTL/5+300*time.Millisecond, func() bool { return w.running.Load() == 0 })
	// The other "process" lets it go; a takes it again.
	c.Del(context.Background(), key)
	waitFor(t, "a takes the lease again", 2*time.Second, func() bool { return w.holder() == "a" })

	// Redis stops answering writes: the renewals hang. The work must
	// stop before the key's TTL runs out, counted from the last renewal.
	ttl, err := c.PTTL(context.Background(), key).Result()
	if err != nil {
		t.Fatal(err)
	}
	pausedAt := time.Now()
	if err := c.Do(context.Background(), "CLIENT", "PAUSE", (3 * opts.TTL).Milliseconds(), "WRITE").Err(); err != nil {
		t.Fatal(err)
	}
	defer c.Do(context.Background(), "CLIENT", "UNPAUSE")
	waitFor(t, "a stops without renewals", ttl, func() bool { return w.running.Load() == 0 })
	if since := time.Since(pausedAt); since >= ttl {
		t.Fatalf("work stopped %s after the pause, the key had %s left", since, ttl)
	}
}

// TestLeaseKeptWhileWorkStops: a holder whose work takes several TTLs
// to return once cancelled (a shutdown) keeps renewing its lease until
// it has returned, so that a standby never runs the work beside it.
func TestLeaseKeptWhileWorkStops(t *testing.T) {
	c, key := testRedis(t)
	opts := lease.Options{TTL: 300 * time.Millisecond, Poll: 20 * time.Millisecond, Logger: quiet}
	var running, maxRunning atomic.Int32
	work := func(slow bool) func(ctx context.Context) {
		return func(ctx context.Context) {
			n := running.Add(1)
			for m := maxRunning.Load(); n > m && !maxRunning.CompareAndSwap(m, n); m = maxRunning.Load() {
			}
			<-ctx.Done()
			if slow {
				time.Sleep(3 * opts.TTL)
			}
			running.Add(-1)
		}
	}
	ctxA, stopA := context.WithCancel(context.Background())
	doneA := make(chan struct{})
	go func() { lease.Run(ctxA, c, key, opts, work(true)); close(doneA) }()
	waitFor(t, "a takes the lease", 2*time.Second, func() bool { return running.Load() == 1 })
	ctxB, stopB := context.WithCancel(context.Background())
	doneB := make(chan struct{})
	go func() { lease.Run(ctxB, c, key, opts, work(false)); close(doneB) }()
	time.Sleep(opts.TTL)
	stopA() // a's work now takes 3 TTLs to return
	<-doneA
	waitFor(t, "b takes over once a has stopped", 2*time.Second, func() bool { return running.Load() == 1 })
	stopB()
	<-doneB
	if m := maxRunning.Load(); m != 1 {
		t.Fatalf("%d ran the work at once, want 1", m)
	}
}

// TestLostLeaseLeftToItsNewHolder: a holder whose key another process
// now holds stops, and neither its release nor its renewals touch that
// process's key: the key keeps the other's token and its TTL runs on, and
// the old holder does not run the work again until the key is free.
func TestLostLeaseLeftToItsNewHolder(t *testing.T) {
	c, key := testRedis(t)
	opts := lease.Options{TTL: 600 * time.Millisecond, Poll: 20 * time.Millisecond, Logger: quiet}
	w := &worker{}
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { lease.Run(ctx, c, key, opts, w.run("a")); close(done) }()
	defer func() { stop(); <-done }()
	waitFor(t, "a takes the lease", 2*time.Second, func() bool { return w.holder() == "a" })

	// Another process's token replaces a's (as after an expiry a missed).
	other := 4 * opts.TTL
	if err := c.Set(context.Background(), key, "someone-else", other).Err(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "a stops after its key was taken", opts.TTL/5+300*time.Millisecond, func() bool { return w.running.Load() == 0 })
	// Several of a's polls (and any renewal or release it still sends).
	time.Sleep(opts.TTL)
	got, err := c.Get(context.Background(), key).Result()
	if err != nil || got != "someone-else" {
		t.Fatalf("the other process's key reads %q (%v) after a lost it, want its token kept", got, err)
	}
	if ttl, err := c.PTTL(context.Background(), key).Result(); err != nil || ttl > other-opts.TTL+100*time.Millisecond {
		t.Fatalf("the other process's key has %s (%v) left: a extended it", ttl, err)
	}
	if s := w.starts.Load(); s != 1 {
		t.Fatalf("a started the work %d times while the other held the key, want 1", s)
	}
	c.Del(context.Background(), key)
	waitFor(t, "a takes the lease once it is free", 2*time.Second, func() bool { return w.holder() == "a" })
}

// renewLoops counts the goroutines renewing a lease.
func renewLoops() int {
	var b strings.Builder
	_ = pprof.Lookup("goroutine").WriteTo(&b, 2)
	return strings.Count(b.String(), "internal/lease.renewLoop(")
}

// TestNothingLeftPerHold: a holder that loses and takes its lease again
// and again leaves no renewal goroutine behind from the holds that
// ended, and none once Run returns.
func TestNothingLeftPerHold(t *testing.T) {
	c, key := testRedis(t)
	opts := lease.Options{TTL: 300 * time.Millisecond, Poll: 20 * time.Millisecond, Logger: quiet}
	w := &worker{}
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { lease.Run(ctx, c, key, opts, w.run("a")); close(done) }()
	defer func() { stop(); <-done }()
	for i := range 5 {
		waitFor(t, "a takes the lease", 2*time.Second, func() bool { return w.holder() == "a" && w.starts.Load() == int32(i+1) })
		if err := c.Set(context.Background(), key, "someone-else", time.Minute).Err(); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "a stops after its key was taken", 2*time.Second, func() bool { return w.running.Load() == 0 })
		c.Del(context.Background(), key)
	}
	waitFor(t, "a takes the lease a sixth time", 2*time.Second, func() bool { return w.starts.Load() == 6 && w.holder() == "a" })
	waitFor(t, "one renewal goroutine, the current hold's", 2*time.Second, func() bool { return renewLoops() == 1 })
	stop()
	<-done
	waitFor(t, "no renewal goroutine once Run returned", 2*time.Second, func() bool { return renewLoops() == 0 })
}
