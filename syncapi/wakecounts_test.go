package syncapi

import (
	"context"
	"log/slog"
	"testing"

	"github.com/myelin-chat/myelin/internal/notifier"
	"github.com/myelin-chat/myelin/roomserver"
)

// TestWakerCountsWindowInRoomWindow: a counts window that lies within
// the room window dispatched with it (counts written in the event's
// transaction: the same window) is not read again; its waiters were
// woken by the room window. A counts window behind the room stream
// (the push consumer committing later) is still read and wakes the
// waiters of its rooms.
func TestWakerCountsWindowInRoomWindow(t *testing.T) {
	ctx := context.Background()
	n := notifier.New()
	src := &touchRooms{}
	w := newWaker(src, n, slog.Default())
	in1 := w.register("@a:test", []string{"!r1"}) // odd positions
	in0 := w.register("@b:test", []string{"!r0"}) // even positions

	// Both streams at 1: one read, !r1's waiter woken once.
	n.Notify(roomserver.Stream, 1)
	n.Notify(UnreadCountsStream, 1)
	w.dispatch(ctx, n.Positions())
	if src.touchCalls != 1 {
		t.Fatalf("%d reads of the room stream for one window of both streams; want 1", src.touchCalls)
	}
	if !signalled(in1) || signalled(in0) {
		t.Fatal("the message's room waiter was not woken (or another was)")
	}
	if w.roomDone != 1 || w.countsDone != 1 {
		t.Fatalf("dispatched room %d, counts %d; want 1, 1", w.roomDone, w.countsDone)
	}

	// The room stream alone to 3, then the counts alone to 3: the
	// counts window (1, 3] is read on its own and wakes !r1 (3) again.
	n.Notify(roomserver.Stream, 3)
	w.dispatch(ctx, n.Positions())
	if !signalled(in1) || !signalled(in0) {
		t.Fatal("the room window (1, 3] did not wake both rooms' waiters")
	}
	calls := src.touchCalls
	n.Notify(UnreadCountsStream, 3)
	w.dispatch(ctx, n.Positions())
	if src.touchCalls != calls+1 {
		t.Fatalf("a counts window behind the room stream was read %d times; want 1", src.touchCalls-calls)
	}
	if !signalled(in1) || !signalled(in0) || w.countsDone != 3 {
		t.Fatalf("the counts window (1, 3] did not wake its rooms' waiters (counts dispatched to %d)", w.countsDone)
	}
}
