package syncapi

import "context"

// concurrently runs a few independent reads of one request at the same
// time, so a woken /sync waits for the longest of them rather than for
// their sum. Each read writes only its own variables, which the caller
// reads after wait: wait returns only once every read has returned.
// The first error cancels the others' context and is returned.
//
// Use: do for each read, then wait; or start, other work on the calling
// goroutine, then wait. A concurrently is used by one goroutine and
// once; waiting again returns nil at once.
type concurrently struct {
	reads []func(context.Context) error
	// first holds the first reads, so that adding them allocates no
	// slice (a woken request uses a few concurrentlys of 1–5 reads).
	first   [4]func(context.Context) error
	started bool
	done    chan error // one result per read, once started
	cancel  context.CancelFunc
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
	if len(c.reads) == 0 {
		return
	}
	ctx, c.cancel = context.WithCancel(ctx)
	c.done = make(chan error, len(c.reads))
	for _, read := range c.reads {
		go func() { c.done <- read(ctx) }()
	}
}

// wait runs the reads not started yet (the first on the calling
// goroutine) and returns when all have returned.
func (c *concurrently) wait(ctx context.Context) error {
	var err error
	pending := len(c.reads)
	if !c.started {
		c.started = true
		switch len(c.reads) {
		case 0:
			return nil
		case 1:
			return c.reads[0](ctx)
		}
		ctx, c.cancel = context.WithCancel(ctx)
		c.done = make(chan error, len(c.reads)-1)
		for _, read := range c.reads[1:] {
			go func() { c.done <- read(ctx) }()
		}
		if err = c.reads[0](ctx); err != nil {
			c.cancel()
		}
		pending--
	}
	c.reads = nil // a second wait returns at once
	if c.done == nil {
		return err
	}
	defer c.cancel()
	for range pending {
		if e := <-c.done; e != nil && err == nil {
			err = e
			c.cancel()
		}
	}
	return err
}
