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
