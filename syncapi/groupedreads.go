package syncapi

import (
	"context"
	"runtime"
	"sync"
)

// groupedReads is the concurrency shared by the batchers of this
// package (countsBatcher, keyCountsBatcher, memberBatcher): a request
// reads at once, alone, when no read of its key is under way; the
// requests that arrive while one runs join the key's next group, which
// one read answers when the running read ends. The next group's read
// starts on its own goroutine, so the members of the group just
// answered are not kept waiting for it, and it outlives any one
// request (its context is detached from theirs by the caller of
// finish).
//
// Why it is exact: a request joins only a group whose read has not
// started, so the read it gets begins after it asked — as fresh as the
// read the request would have made alone at that moment. What a group
// is (G: the union of its requests' queries) and how its answer (A) is
// split between them is the batcher's.
//
// The zero value is ready for use. K is the grouping key: a batcher
// that groups all requests together uses struct{}.
//
// Concurrency: guarded by mu; a group's answer and err are set before
// its done is closed and never written after.
type groupedReads[K comparable, G, A any] struct {
	mu sync.Mutex
	// byKey holds the keys with a read under way and, for each, the
	// group collecting behind it (nil until a request waits); guarded
	// by mu.
	byKey map[K]*readGroup[G, A]
}

// readGroup is the requests one read answers.
type readGroup[G, A any] struct {
	q    G             // the requests' queries, as the batcher merged them
	n    int           // how many requests add took into q; guarded by mu
	done chan struct{} // closed once a and err are set
	a    A
	err  error
}

// join enters a request for key. lead: no read of key was under way —
// the caller reads alone, now, and then must call finish. Otherwise the
// request joins the key's next group through add, which merges the
// request's query into the group's (under mu) and reports false when
// the group is full: join then returns a nil group and the caller reads
// alone (and does not call finish).
func (r *groupedReads[K, G, A]) join(key K, add func(q *G) bool) (g *readGroup[G, A], lead bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	next, running := r.byKey[key]
	if !running {
		if r.byKey == nil {
			r.byKey = map[K]*readGroup[G, A]{}
		}
		r.byKey[key] = nil
		return nil, true
	}
	if next == nil {
		// The group is stored only once add has taken the request: a
		// group refused by its first request would be read for nobody.
		fresh := &readGroup[G, A]{done: make(chan struct{})}
		if !add(&fresh.q) {
			return nil, false
		}
		fresh.n = 1
		r.byKey[key] = fresh
		return fresh, false
	}
	if !add(&next.q) {
		return nil, false
	}
	next.n++
	return next, false
}

// maxGatherYields bounds the yields of joinGathering: each lets every
// goroutine then runnable run until it blocks, so a few are enough for
// the long polls that one message woke (several hundred) to ask.
const maxGatherYields = 16

// joinGathering is join for a read that requests made runnable at the
// same moment all make: the long polls one message wakes. With join,
// the first of them reads at once, alone, and only those that ask
// during that read (~30 µs) share the next one; on two cores most of
// the rest come later and read alone too (in a 20-listener fan-out,
// 13 to 15 of a message's 20 woken responses each made its own
// timeline and its own unread counts read: docs/benchmarks.md,
// "wakefan"). So a request that finds no read of key under way does
// not read at once: it opens key's next group with its own query and
// yields the processor (runtime.Gosched) for as long as the group
// grows, at most maxGatherYields times. The requests woken with it run
// meanwhile up to this read and join the group. Then the group is
// closed, and:
//
//   - lead and g == nil: nobody joined; the caller reads alone and then
//     calls finish, as the lead of join does.
//   - lead and g != nil: the caller reads g with readLed and takes its
//     answer from g like any member (its own query is g's first).
//   - !lead: as join (a member of g, or g == nil: read alone).
//
// Exact as join is: every member asked before the read began. The
// lead's read begins a little later than it would alone, never
// earlier than it asked.
func (r *groupedReads[K, G, A]) joinGathering(key K, add func(q *G) bool) (g *readGroup[G, A], lead bool) {
	r.mu.Lock()
	if _, running := r.byKey[key]; running {
		r.mu.Unlock()
		return r.join(key, add)
	}
	g = &readGroup[G, A]{done: make(chan struct{})}
	if r.byKey == nil {
		r.byKey = map[K]*readGroup[G, A]{}
	}
	if !add(&g.q) {
		// Never for a fresh group; as join's lead if it were.
		r.byKey[key] = nil
		r.mu.Unlock()
		return nil, true
	}
	g.n = 1
	// Stored as the group behind a read: join adds to it. Nobody calls
	// finish meanwhile, as no read of key runs.
	r.byKey[key] = g
	r.mu.Unlock()
	// Two yields in a row without growth end the gathering: one can
	// return at once, as the scheduler takes a goroutine from the
	// global queue (where Gosched puts this one) first every 61st time.
	for i, n, still := 0, 1, 0; i < maxGatherYields && still < 2; i++ {
		runtime.Gosched()
		r.mu.Lock()
		if g.n > n {
			n, still = g.n, 0
		} else {
			still++
		}
		r.mu.Unlock()
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.byKey[key] = nil // g's read is under way; later requests form the next group
	if g.n == 1 {
		return nil, true
	}
	return g, true
}

// readLed reads g, the group joinGathering gave its lead, on the
// caller's goroutine, answers its members and then finishes key's read
// as finish does. ctx must not be a request's (see finish).
func (r *groupedReads[K, G, A]) readLed(ctx context.Context, key K, g *readGroup[G, A], read func(context.Context, K, *G) (A, error)) {
	g.a, g.err = read(ctx, key, &g.q)
	close(g.done)
	r.finish(ctx, key, read)
}

// wait is the answer of g, the group a request joined, or ctx's error
// if the request ends first (the group's read goes on for the others).
func (r *groupedReads[K, G, A]) wait(ctx context.Context, g *readGroup[G, A]) (A, error) {
	select {
	case <-g.done:
	case <-ctx.Done():
		var zero A
		return zero, ctx.Err()
	}
	return g.a, g.err
}

// finish ends key's running read: the group that collected behind it,
// if any, is read next by read, on its own goroutine; else key is idle.
// ctx must not be a request's (context.WithoutCancel): the reads that
// follow answer other requests.
func (r *groupedReads[K, G, A]) finish(ctx context.Context, key K, read func(context.Context, K, *G) (A, error)) {
	r.mu.Lock()
	g := r.byKey[key]
	if g == nil {
		delete(r.byKey, key)
	} else {
		r.byKey[key] = nil // g's read is under way; nobody else joins g
	}
	r.mu.Unlock()
	if g != nil {
		go func() {
			g.a, g.err = read(ctx, key, &g.q)
			close(g.done)
			r.finish(ctx, key, read)
		}()
	}
}
