package syncapi

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/myelin-chat/myelin/internal/notifier"
	"github.com/myelin-chat/myelin/roomserver"
)

// TestWakerHoldsManyForCounts: a message that wakes holdMinWaiters or
// more waiters is held until the push consumer has committed its counts
// (then the waiters are woken once, for both, and the counts window is
// dispatched with it), or until holdMax; one that wakes fewer is not
// held; without a push consumer nothing is held.
func TestWakerHoldsManyForCounts(t *testing.T) {
	ctx := context.Background()
	n := notifier.New()
	w := newWaker(&touchRooms{}, n, slog.Default())
	w.holdCounts = true
	// A hold far longer than holdMax (30 ms): the test's sleeps and the
	// dispatch goroutine's start may each take tens of milliseconds on a
	// loaded machine, and a 30 ms hold then ran out while the test slept
	// (a loaded run: "a wake of many waiters was not held for the counts").
	hold := 2 * time.Second
	w.holdFor = hold
	var many []*waiter // in !r1: odd positions
	for i := 0; i < holdMinWaiters; i++ {
		many = append(many, w.register("@l:test", []string{"!r1"}))
	}
	few := w.register("@f:test", []string{"!r0"}) // even positions
	none := func(ws []*waiter) bool {
		for _, wt := range ws {
			if signalled(wt) {
				return false
			}
		}
		return true
	}
	all := func(ws []*waiter) bool {
		for _, wt := range ws {
			if !signalled(wt) {
				return false
			}
		}
		return true
	}
	dispatched := func() chan time.Duration {
		done := make(chan time.Duration, 1)
		start := time.Now()
		go func() { w.dispatch(ctx, n.Positions()); done <- time.Since(start) }()
		return done
	}

	// Position 1 (!r1) wakes many: held until the counts reach 1.
	n.Notify(roomserver.Stream, 1)
	done := dispatched()
	time.Sleep(hold / 10)
	select {
	case <-done:
		t.Fatal("a wake of many waiters was not held for the counts")
	default:
	}
	if !none(many) {
		t.Fatal("waiters woken before the counts were committed")
	}
	n.Notify(UnreadCountsStream, 1)
	<-done
	if !all(many) || signalled(few) {
		t.Fatal("the held waiters were not woken once the counts came (or others were)")
	}
	w.mu.Lock()
	roomDone, countsDone := w.roomDone, w.countsDone
	w.mu.Unlock()
	if roomDone != 1 || countsDone != 1 {
		t.Fatalf("dispatched room %d, counts %d; want 1, 1 (both in the held wake)", roomDone, countsDone)
	}

	// Position 2 (!r0) wakes one waiter: not held, counts or not.
	n.Notify(roomserver.Stream, 2)
	if took := <-dispatched(); took >= hold/2 || !signalled(few) {
		t.Fatalf("one waiter: woken %v after %v, want at once", false, took)
	}

	// Position 3 (!r1): the counts never come; woken after the hold.
	n.Notify(roomserver.Stream, 3)
	if took := <-dispatched(); took < hold || !all(many) {
		t.Fatalf("counts that never come: the wake took %v (want at least %v) or missed waiters", took, hold)
	}

	// Without a push consumer, no hold.
	w.holdCounts = false
	n.Notify(roomserver.Stream, 5) // 4 (!r0) and 5 (!r1, rejected)... 5%5 == 0
	n.Notify(roomserver.Stream, 7) // 7 (!r1) wakes many
	if took := <-dispatched(); took >= hold/2 || !all(many) {
		t.Fatalf("no push consumer: the wake took %v, want at once", took)
	}
}
