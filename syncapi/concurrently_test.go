package syncapi

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"
)

// TestConcurrently: the reads run at the same time (each waits for all
// to have started); wait returns only after every read has returned,
// with the first error, and that error cancels the others' context; a
// started group runs beside the caller; a second wait returns at once.
func TestConcurrently(t *testing.T) {
	ctx := context.Background()
	for _, started := range []bool{false, true} {
		var c concurrently
		var running, finished atomic.Int32
		all := make(chan struct{})
		results := make([]int, 3)
		for i := range results {
			c.do(func(ctx context.Context) error {
				if running.Add(1) == 3 {
					close(all)
				}
				select {
				case <-all:
				case <-time.After(5 * time.Second):
					return errors.New("the reads did not run at the same time")
				}
				results[i] = i + 1
				finished.Add(1)
				return nil
			})
		}
		if started {
			c.start(ctx)
		}
		if err := c.wait(ctx); err != nil {
			t.Fatalf("started=%v: %v", started, err)
		}
		if finished.Load() != 3 || results[0] != 1 || results[1] != 2 || results[2] != 3 {
			t.Fatalf("started=%v: wait returned with %d reads finished, results %v", started, finished.Load(), results)
		}
		if err := c.wait(ctx); err != nil {
			t.Fatalf("second wait: %v", err)
		}
	}

	var c concurrently
	boom := errors.New("boom")
	var cancelled atomic.Bool
	c.do(func(context.Context) error { return boom })
	c.do(func(ctx context.Context) error {
		select {
		case <-ctx.Done():
			cancelled.Store(true)
			return ctx.Err()
		case <-time.After(5 * time.Second):
			return nil
		}
	})
	if err := c.wait(ctx); !errors.Is(err, boom) {
		t.Fatalf("wait = %v, want the first error", err)
	}
	if !cancelled.Load() {
		t.Fatal("the first error did not cancel the other read")
	}

	var none concurrently
	if err := none.wait(ctx); err != nil {
		t.Fatal(err)
	}
}

// Adding a request's few reads allocates nothing: a woken /sync adds up
// to five to one concurrently, and does so for every response.
func TestConcurrentlyDoAllocations(t *testing.T) {
	read := func(context.Context) error { return nil }
	var sink *concurrently
	n := testing.AllocsPerRun(100, func() {
		c := &concurrently{}
		for range 4 {
			c.do(read)
		}
		sink = c
	})
	if n != 1 { // c itself
		t.Errorf("four reads added: %v allocations, want 1 (the concurrently)", n)
	}
	if len(sink.reads) != 4 {
		t.Errorf("%d reads kept, want 4", len(sink.reads))
	}
}

// One read started beside the caller (a woken response's key counts)
// costs the concurrently and its goroutine: no channel, and no context
// of its own, as there is no other read to cancel.
func TestConcurrentlyStartOneAllocations(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background()) // as a request's
	defer cancel()
	var ran atomic.Int32
	read := func(context.Context) error { ran.Add(1); return nil }
	n := testing.AllocsPerRun(200, func() {
		c := &concurrently{}
		c.do(read)
		c.start(ctx)
		if err := c.wait(ctx); err != nil {
			t.Fatal(err)
		}
	})
	if n > 2 { // c itself and the goroutine's function value
		t.Errorf("one read started and waited for: %v allocations, want at most 2", n)
	}
	if ran.Load() < 200 {
		t.Errorf("the read ran %d times, want at least 200", ran.Load())
	}
}

// A started read's error is returned, and with several reads started
// the first error cancels the others.
func TestConcurrentlyStartedError(t *testing.T) {
	ctx := context.Background()
	boom := errors.New("boom")
	var one concurrently
	one.do(func(context.Context) error { return boom })
	one.start(ctx)
	if err := one.wait(ctx); !errors.Is(err, boom) {
		t.Fatalf("wait = %v, want the read's error", err)
	}
	if err := one.wait(ctx); err != nil {
		t.Fatalf("second wait = %v, want nil", err)
	}

	var c concurrently
	c.do(func(context.Context) error { return boom })
	c.do(func(ctx context.Context) error {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(5 * time.Second):
			return errors.New("not cancelled")
		}
	})
	c.start(ctx)
	if err := c.wait(ctx); !errors.Is(err, boom) {
		t.Fatalf("wait = %v, want the first error", err)
	}
}
