package syncapi

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"testing"
	"time"
)

// gatedRead is one read of a gatedReads under way: the test answers it
// (or fails it) through release.
type gatedRead struct {
	n       int // the read's number, in start order
	key     string
	qs      []int
	release chan error
}

// gatedReads runs requests through a groupedReads as the batchers do:
// the key's first request reads alone, requests made meanwhile join the
// next group (at most max queries), a request finding it full reads
// alone. Each read blocks until the test releases it, and answers query
// q with "read n, key, q", so the test sees which read answered whom.
type gatedReads struct {
	r   groupedReads[string, []int, []string]
	max int
	// gather: requests join through joinGathering, as the timeline and
	// unread counts batchers' do.
	gather  bool
	started chan *gatedRead
	n       chan int // the next read's number
}

func newGatedReads(max int) *gatedReads {
	n := make(chan int, 1)
	n <- 1
	return &gatedReads{max: max, started: make(chan *gatedRead, 10), n: n}
}

func (s *gatedReads) read(_ context.Context, key string, qs *[]int) ([]string, error) {
	n := <-s.n
	s.n <- n + 1
	g := &gatedRead{n: n, key: key, qs: append([]int(nil), *qs...), release: make(chan error)}
	s.started <- g
	if err := <-g.release; err != nil {
		return nil, err
	}
	out := make([]string, len(g.qs))
	for i, q := range g.qs {
		out[i] = fmt.Sprintf("read %d %s %d", n, key, q)
	}
	return out, nil
}

func (s *gatedReads) ask(ctx context.Context, key string, q int) (string, error) {
	var i int
	add := func(g *[]int) bool {
		if len(*g) >= s.max {
			return false
		}
		i = len(*g)
		*g = append(*g, q)
		return true
	}
	var g *readGroup[[]int, []string]
	var lead bool
	if s.gather {
		g, lead = s.r.joinGathering(key, add)
	} else {
		g, lead = s.r.join(key, add)
	}
	if lead && g != nil {
		s.r.readLed(context.WithoutCancel(ctx), key, g, s.read)
	} else if lead || g == nil {
		rctx := ctx
		if lead {
			rctx = context.WithoutCancel(ctx)
		}
		out, err := s.read(rctx, key, &[]int{q})
		if lead {
			s.r.finish(rctx, key, s.read)
		}
		if err != nil {
			return "", err
		}
		return out[0], nil
	}
	out, err := s.r.wait(ctx, g)
	if err != nil {
		return "", err
	}
	if i >= len(out) {
		return "", fmt.Errorf("query %d of a read that answered %d", i, len(out))
	}
	return out[i], nil
}

type gatedAnswer struct {
	a   string
	err error
}

func (s *gatedReads) askAsync(ctx context.Context, key string, q int) chan gatedAnswer {
	ch := make(chan gatedAnswer, 1)
	go func() {
		a, err := s.ask(ctx, key, q)
		ch <- gatedAnswer{a, err}
	}()
	return ch
}

// waiting is the queries of the group waiting behind key's running read.
func (s *gatedReads) waiting(key string) []int {
	var qs []int
	s.r.inspect(key, func(_ bool, next *[]int) {
		if next != nil {
			qs = append(qs, *next...)
		}
	})
	return qs
}

func (s *gatedReads) next(t *testing.T) *gatedRead {
	t.Helper()
	select {
	case g := <-s.started:
		return g
	case <-time.After(5 * time.Second):
		t.Fatal("no read started")
		return nil
	}
}

func (s *gatedReads) noRead(t *testing.T) {
	t.Helper()
	select {
	case g := <-s.started:
		t.Fatalf("unexpected read %d of %s %v", g.n, g.key, g.qs)
	case <-time.After(20 * time.Millisecond):
	}
}

func wantAnswer(t *testing.T, ch chan gatedAnswer, want string) {
	t.Helper()
	select {
	case a := <-ch:
		if a.err != nil || a.a != want {
			t.Fatalf("answer %q, %v; want %q", a.a, a.err, want)
		}
	case <-time.After(5 * time.Second):
		t.Fatalf("no answer; want %q", want)
	}
}

// TestGroupedReadsGathering: requests made runnable at the same moment
// (the long polls one message wakes) share one read through
// joinGathering, the first of them reading for all; on one processor,
// so that "runnable together" is exact: with join, each would read
// alone, one after the other. A request alone reads alone; one asked
// while the gathered read runs waits for the next read.
func TestGroupedReadsGathering(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))
	bg := context.Background()
	s := newGatedReads(100)
	s.gather = true
	const woken = 20
	answers := make([]chan gatedAnswer, woken)
	for q := range woken {
		answers[q] = s.askAsync(bg, "a", q)
	}
	r1 := s.next(t)
	if len(r1.qs) != woken {
		t.Fatalf("first read of %d woken requests answers %v", woken, r1.qs)
	}
	// A request made while the gathered read runs is not in it.
	late := s.askAsync(bg, "a", 99)
	waitFor(t, func() bool { return slices.Equal(s.waiting("a"), []int{99}) })
	r1.release <- nil
	for q, ch := range answers {
		wantAnswer(t, ch, fmt.Sprintf("read %d a %d", r1.n, q))
	}
	r2 := s.next(t)
	if fmt.Sprint(r2.qs) != "[99]" {
		t.Fatalf("read after the gathered one: %+v", r2)
	}
	r2.release <- nil
	wantAnswer(t, late, fmt.Sprintf("read %d a 99", r2.n))

	// Alone: the request reads its own query, and the key is idle after.
	lone := s.askAsync(bg, "b", 7)
	rb := s.next(t)
	if fmt.Sprint(rb.qs) != "[7]" {
		t.Fatalf("lone read: %+v", rb)
	}
	rb.release <- nil
	wantAnswer(t, lone, fmt.Sprintf("read %d b 7", rb.n))
	s.noRead(t)
	for _, key := range []string{"a", "b"} {
		waitFor(t, func() bool {
			idle := false
			s.r.inspect(key, func(running bool, next *[]int) { idle = !running && next == nil })
			return idle
		})
	}
}

// TestGroupedReads: requests made while a key's read runs share the
// next read of that key, and never one that started before they asked
// (freshness); keys do not share reads; a full group sends a request to
// read alone; a waiter that ends does not end the read; a read's error
// reaches every request of its group; the key is idle afterwards.
func TestGroupedReads(t *testing.T) {
	bg := context.Background()
	s := newGatedReads(3)

	// Grouping: read 1 of a runs; 1 and 2 join a's next group; b is
	// another key and reads at once.
	lead := s.askAsync(bg, "a", 0)
	r1 := s.next(t)
	if r1.key != "a" || len(r1.qs) != 1 || r1.qs[0] != 0 {
		t.Fatalf("read 1: %+v", r1)
	}
	cancelled, cancel := context.WithCancel(bg)
	w1 := s.askAsync(bg, "a", 1)
	waitFor(t, func() bool { return len(s.waiting("a")) == 1 })
	w2 := s.askAsync(cancelled, "a", 2)
	waitFor(t, func() bool { return len(s.waiting("a")) == 2 })
	other := s.askAsync(bg, "b", 9)
	rb := s.next(t)
	if rb.key != "b" || len(rb.qs) != 1 {
		t.Fatalf("read of b: %+v", rb)
	}
	rb.release <- nil
	wantAnswer(t, other, fmt.Sprintf("read %d b 9", rb.n))

	// Cap: the group of a holds 3; the 4th request reads alone, now.
	w3 := s.askAsync(bg, "a", 3)
	waitFor(t, func() bool { return len(s.waiting("a")) == 3 })
	alone := s.askAsync(bg, "a", 4)
	ra := s.next(t)
	if ra.key != "a" || len(ra.qs) != 1 || ra.qs[0] != 4 {
		t.Fatalf("read alone: %+v", ra)
	}
	ra.release <- nil
	wantAnswer(t, alone, fmt.Sprintf("read %d a 4", ra.n))

	// A waiter ending gets its context's error at once; nothing reads.
	cancel()
	select {
	case a := <-w2:
		if !errors.Is(a.err, context.Canceled) {
			t.Fatalf("cancelled waiter: %q, %v", a.a, a.err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("cancelled waiter still waiting")
	}
	s.noRead(t)

	// Freshness: read 1 of c ends, its group's read (of 1) starts; 2,
	// asked while that read runs, does not join its group but waits for
	// the read after it.
	c0 := s.askAsync(bg, "c", 0)
	rc := s.next(t)
	c1 := s.askAsync(bg, "c", 1)
	waitFor(t, func() bool { return len(s.waiting("c")) == 1 })
	rc.release <- nil
	wantAnswer(t, c0, fmt.Sprintf("read %d c 0", rc.n))
	rc = s.next(t)
	if fmt.Sprint(rc.qs) != "[1]" {
		t.Fatalf("group read of c: %+v", rc)
	}
	c2 := s.askAsync(bg, "c", 2)
	waitFor(t, func() bool { return slices.Contains(s.waiting("c"), 2) })
	if got := s.waiting("c"); !slices.Equal(got, []int{2}) {
		t.Fatalf("2 joined a group whose read had started: %v waiting", got)
	}
	rc.release <- nil
	wantAnswer(t, c1, fmt.Sprintf("read %d c 1", rc.n))
	rc2 := s.next(t)
	if fmt.Sprint(rc2.qs) != "[2]" || rc2.n <= rc.n {
		t.Fatalf("read after c's group: %+v", rc2)
	}
	rc2.release <- nil
	wantAnswer(t, c2, fmt.Sprintf("read %d c 2", rc2.n))

	// Read 1 of a ends: its group is read next, in one read, 2 included.
	r1.release <- nil
	wantAnswer(t, lead, "read 1 a 0")
	rg := s.next(t)
	if rg.key != "a" || fmt.Sprint(rg.qs) != "[1 2 3]" {
		t.Fatalf("group read: %+v", rg)
	}

	// Asked while the group's read runs (the group is full anyway), 5
	// waits for the read after it.
	late := s.askAsync(bg, "a", 5)
	waitFor(t, func() bool { return slices.Contains(s.waiting("a"), 5) })
	if got := s.waiting("a"); !slices.Equal(got, []int{5}) {
		t.Fatalf("5 joined a group whose read had started: %v waiting", got)
	}
	rg.release <- nil
	wantAnswer(t, w1, fmt.Sprintf("read %d a 1", rg.n))
	wantAnswer(t, w3, fmt.Sprintf("read %d a 3", rg.n))
	rl := s.next(t)
	if rl.key != "a" || fmt.Sprint(rl.qs) != "[5]" || rl.n <= rg.n {
		t.Fatalf("read after the group: %+v", rl)
	}

	// Errors: a group's failed read gives its error to its requests.
	w6 := s.askAsync(bg, "a", 6)
	waitFor(t, func() bool { return fmt.Sprint(s.waiting("a")) == "[6]" })
	failed := errors.New("read failed")
	rl.release <- nil
	wantAnswer(t, late, fmt.Sprintf("read %d a 5", rl.n))
	r6 := s.next(t)
	w7 := s.askAsync(bg, "a", 7)
	waitFor(t, func() bool { return fmt.Sprint(s.waiting("a")) == "[7]" })
	r6.release <- nil
	wantAnswer(t, w6, fmt.Sprintf("read %d a 6", r6.n))
	r7 := s.next(t)
	r7.release <- failed
	select {
	case a := <-w7:
		if !errors.Is(a.err, failed) {
			t.Fatalf("failed read answered %q, %v", a.a, a.err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no answer from the failed read")
	}

	// Idle: nothing runs, the next request reads at once, alone.
	waitFor(t, func() bool {
		s.r.mu.Lock()
		defer s.r.mu.Unlock()
		return len(s.r.byKey) == 0
	})
	s.noRead(t)
	again := s.askAsync(bg, "a", 8)
	r8 := s.next(t)
	if fmt.Sprint(r8.qs) != "[8]" {
		t.Fatalf("idle read: %+v", r8)
	}
	r8.release <- failed
	select {
	case a := <-again:
		if !errors.Is(a.err, failed) {
			t.Fatalf("lead's failed read answered %q, %v", a.a, a.err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no answer from the lead's failed read")
	}
}

// TestGroupedReadsRefusedFirstJoinLeavesNoGroup: when the first request
// to queue behind a running read is refused by the group (it would pass
// the bound) and reads alone, no empty group is left behind to be read
// for nobody once the running read ends.
func TestGroupedReadsRefusedFirstJoinLeavesNoGroup(t *testing.T) {
	bg := context.Background()
	s := newGatedReads(0) // every join is refused

	lead := s.askAsync(bg, "a", 0)
	r1 := s.next(t)
	alone := s.askAsync(bg, "a", 1)
	r2 := s.next(t)
	if r2.key != "a" || len(r2.qs) != 1 || r2.qs[0] != 1 {
		t.Fatalf("the refused request's own read: %+v", r2)
	}
	if qs := s.waiting("a"); len(qs) != 0 {
		t.Fatalf("queued behind the running read: %v", qs)
	}
	r2.release <- nil
	wantAnswer(t, alone, fmt.Sprintf("read %d a 1", r2.n))
	r1.release <- nil
	wantAnswer(t, lead, fmt.Sprintf("read %d a 0", r1.n))
	s.noRead(t)
	var running bool
	s.r.inspect("a", func(r bool, _ *[]int) { running = r })
	if running {
		t.Fatal("key a still marked running after its read ended")
	}
}
