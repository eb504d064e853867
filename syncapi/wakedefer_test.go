package syncapi

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/myelin-chat/myelin/internal/notifier"
	"github.com/myelin-chat/myelin/roomserver"
)

// TestWakerDefersCountsWhileDelivering: a counts window that arrives
// while requests woken by a room window have not answered waits until
// every one of them has computed (or ended), at most countsDeferMax;
// then it wakes its rooms' waiters as before. A pass that wakes a room
// window dispatches the counts with it. countsWillWake says a poll may
// wait only for counts that are notified and not dispatched yet.
func TestWakerDefersCountsWhileDelivering(t *testing.T) {
	ctx := context.Background()
	n := notifier.New()
	w := newWaker(&touchRooms{}, n, slog.Default())
	w.holdCounts = true
	a := w.register("@a:test", []string{"!r1"}) // odd positions
	b := w.register("@b:test", []string{"!r1"})
	other := w.register("@o:test", []string{"!r0"}) // even positions
	countsDone := func() int64 {
		w.mu.Lock()
		defer w.mu.Unlock()
		return w.countsDone
	}
	isClosed := func(ch <-chan struct{}) bool {
		select {
		case <-ch:
			return true
		default:
			return false
		}
	}

	// Position 1 (!r1) wakes a and b at once; they are in flight.
	n.Notify(roomserver.Stream, 1)
	if idle, _ := w.dispatch(ctx, n.Positions()); idle != nil {
		t.Fatal("a room window was deferred")
	}
	if !signalled(a) || !signalled(b) || signalled(other) {
		t.Fatal("position 1 did not wake exactly !r1's waiters")
	}

	// Its counts come while a and b compute: deferred, nobody woken.
	n.Notify(UnreadCountsStream, 1)
	idle, left := w.dispatch(ctx, n.Positions())
	if idle == nil || left <= 0 || left > countsDeferMax {
		t.Fatalf("counts during the deliveries: deferred %v for %v, want deferred at most %v", idle != nil, left, countsDeferMax)
	}
	if countsDone() != 0 || signalled(a) || signalled(b) {
		t.Fatal("a deferred counts window was dispatched")
	}
	// A poll whose counts are complete up to 0, which read the counts
	// head at 1, will be woken by that dispatch; one that read a head
	// not notified yet (2) is not promised a wake.
	if !w.countsWillWake(0, 1) || w.countsWillWake(0, 2) {
		t.Fatal("countsWillWake: want true for a notified, undispatched window only")
	}

	w.answered(a)
	if isClosed(idle) {
		t.Fatal("idle while b has not answered")
	}
	if again, _ := w.dispatch(ctx, n.Positions()); again == nil {
		t.Fatal("counts dispatched while b was in flight")
	}
	w.unregister(b) // b's request ended without computing
	if !isClosed(idle) {
		t.Fatal("not idle once every woken request answered or ended")
	}
	b = w.register("@b:test", []string{"!r1"}) // b's next poll
	if idle, _ := w.dispatch(ctx, n.Positions()); idle != nil {
		t.Fatal("counts still deferred with nothing in flight")
	}
	if !signalled(a) || !signalled(b) || signalled(other) || countsDone() != 1 {
		t.Fatalf("the counts window woke a %v, b %v, other %v, dispatched to %d; want !r1's waiters, 1",
			signalled(a), signalled(b), signalled(other), countsDone())
	}
	if w.countsWillWake(0, 1) {
		t.Fatal("countsWillWake true for a window already dispatched")
	}

	// A woken request that never answers defers counts countsDeferMax only.
	n.Notify(roomserver.Stream, 3) // 2 (!r0), 3 (!r1): everyone in flight
	if idle, _ := w.dispatch(ctx, n.Positions()); idle != nil {
		t.Fatal("a room window was deferred")
	}
	n.Notify(UnreadCountsStream, 3)
	start := time.Now()
	for {
		idle, left := w.dispatch(ctx, n.Positions())
		if idle == nil {
			break
		}
		select {
		case <-idle:
			t.Fatal("idle although nobody answered")
		case <-time.After(left):
		}
	}
	if took := time.Since(start); took < countsDeferMax || countsDone() != 3 {
		t.Fatalf("counts deferred %v (want at least %v), dispatched to %d (want 3)", took, countsDeferMax, countsDone())
	}
	for _, wt := range []*waiter{a, b, other} {
		signalled(wt)
		w.answered(wt)
	}

	// Room and counts windows in one pass: the counts are not deferred.
	n.Notify(roomserver.Stream, 5)
	n.Notify(UnreadCountsStream, 5)
	if idle, _ := w.dispatch(ctx, n.Positions()); idle != nil || countsDone() != 5 {
		t.Fatalf("room and counts in one pass: deferred %v, counts dispatched to %d, want 5", idle != nil, countsDone())
	}
}

// streamRooms is touchRooms with a stream head, for the waker's run loop.
type streamRooms struct{ touchRooms }

func (*streamRooms) StreamPosition(context.Context) (int64, error) { return 0, nil }

// TestWakerRunDispatchesDeferredCounts: the run loop dispatches a
// deferred counts window as soon as the last woken request answers,
// without waiting for another notification or for the deferral's limit
// (lengthened here, and the fallback poll with it, so that only the
// answer can end it).
func TestWakerRunDispatchesDeferredCounts(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	n := notifier.New()
	w := newWaker(&streamRooms{}, n, slog.Default())
	w.holdCounts = true
	w.countsDefer = time.Minute
	w.pollEvery = time.Hour // no fallback poll either
	a := w.register("@a:test", []string{"!r1"})
	go w.run(ctx)
	woken := func(within time.Duration) bool {
		select {
		case <-a.wake:
			return true
		case <-time.After(within):
			return false
		}
	}
	// run may read the (fake) stream head after the first notification:
	// give it a moment to start.
	time.Sleep(10 * time.Millisecond)
	n.Notify(roomserver.Stream, 1)
	if !woken(time.Second) {
		t.Fatal("the message did not wake the waiter")
	}
	n.Notify(UnreadCountsStream, 1)
	if woken(100 * time.Millisecond) {
		t.Fatal("the counts woke the waiter before it answered the message")
	}
	w.answered(a)
	if !woken(10 * time.Second) {
		t.Fatal("the counts did not wake the waiter once it answered")
	}
}
