package syncapi

import (
	"context"
	"sync"
)

// concurrently runs a few independent reads of one request at the same
// time, so a woken /sync waits for the longest of them rather than for
// their sum. Each read writes only its own variables, which the caller
// reads after wait: wait returns only once every read has returned.
// The first error cancels the others' context and is returned.
//
// Use: do for each read, then wait; or start, other work on the calling
// goroutine, then wait. A concurrently is used by one goroutine and
// once; waiting again returns nil at once.
//
// Every woken response runs one (the key counts, beside the rest of the
// response), so what it costs is kept small: the goroutines report
// through a WaitGroup and one error field of the struct (no channel),
// and a context of their own is made only when there is another read
// to cancel — one read alone on its goroutine runs under the caller's.
type concurrently struct {
	reads []func(context.Context) error
	// first holds the first reads, so that adding them allocates no
	// slice (a woken request uses a few concurrentlys of 1–5 reads).
	first   [4]func(context.Context) error
	started bool
	waited  bool
	running sync.WaitGroup // the reads on goroutines of their own
	mu      sync.Mutex
	err     error              // the first error; guarded by mu
	cancel  context.CancelFunc // nil while no read can cancel another
}

// do adds a read.
func (c *concurrently) do(read func(context.Context) error) {
	if c.reads == nil {
		c.reads = c.first[:0]
	}
	c.reads = append(c.reads, read)
}

// start runs every read in its own goroutine.
func (c *concurrently) start(ctx context.Context) {
	if c.started {
		return
	}
	c.started = true
	if len(c.reads) > 1 {
		ctx, c.cancel = context.WithCancel(ctx)
	}
	c.goAll(ctx, c.reads)
}

// goAll runs each of reads on a goroutine of its own.
func (c *concurrently) goAll(ctx context.Context, reads []func(context.Context) error) {
	c.running.Add(len(reads))
	for _, read := range reads {
		go c.run(ctx, read)
	}
}

// run runs one read and records its error.
func (c *concurrently) run(ctx context.Context, read func(context.Context) error) {
	defer c.running.Done()
	c.fail(read(ctx))
}

// fail records err if it is the first and cancels the other reads.
func (c *concurrently) fail(err error) {
	if err == nil {
		return
	}
	c.mu.Lock()
	first := c.err == nil
	if first {
		c.err = err
	}
	c.mu.Unlock()
	if first && c.cancel != nil {
		c.cancel()
	}
}

// wait runs the reads not started yet (the first on the calling
// goroutine) and returns when all have returned.
func (c *concurrently) wait(ctx context.Context) error {
	if c.waited {
		return nil
	}
	c.waited = true
	if !c.started {
		c.started = true
		switch len(c.reads) {
		case 0:
			return nil
		case 1:
			return c.reads[0](ctx)
		}
		ctx, c.cancel = context.WithCancel(ctx)
		c.goAll(ctx, c.reads[1:])
		c.fail(c.reads[0](ctx))
	}
	c.running.Wait()
	if c.cancel != nil {
		c.cancel()
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}
