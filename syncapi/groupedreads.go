package syncapi

import (
	"context"
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
		r.byKey[key] = fresh
		return fresh, false
	}
	if !add(&next.q) {
		return nil, false
	}
	return next, false
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
