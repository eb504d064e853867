package syncapi

import (
	"context"
	"log/slog"
	"maps"
	"testing"

	"github.com/myelin-chat/myelin/internal/notifier"
	"github.com/myelin-chat/myelin/roomserver"
)

// touchRooms is windowRooms with the same log behind StreamTouched:
// position p is in room "!r<p%2>", a state event when p%3 == 0, and
// rejected when p%5 == 0.
type touchRooms struct {
	windowRooms
	touchCalls int
}

func (r *touchRooms) StreamTouched(_ context.Context, from, to int64, limit int) ([]roomserver.StreamTouch, error) {
	r.touchCalls++
	var out []roomserver.StreamTouch
	for p := from + 1; p <= to && len(out) < limit; p++ {
		room := "!r0"
		if p%2 == 1 {
			room = "!r1"
		}
		out = append(out, roomserver.StreamTouch{StreamPos: p, RoomID: room, State: p%3 == 0, Accepted: p%5 != 0})
	}
	return out, nil
}

func signalled(wt *waiter) bool {
	select {
	case <-wt.wake:
		return true
	default:
		return false
	}
}

// TestWakerSeedsNewsWindow: the waker's read of a room stream window
// answers the woken requests' "which rooms have news" for the same
// window, so they do not read it again; the answer is RoomsWithEvents'
// (rejected events count there), while only accepted events wake. A
// window the waker reads in several batches is not seeded.
func TestWakerSeedsNewsWindow(t *testing.T) {
	ctx := context.Background()
	src := &touchRooms{}
	w := newWaker(src, notifier.New(), slog.Default())
	w.news = newNewsCache(src, 16)
	in0 := w.register("@a:test", []string{"!r0"})
	in1 := w.register("@b:test", []string{"!r1"})

	// (4, 5]: one event, rejected, in !r1.
	w.wakeTouched(ctx, 4, 5, true, &w.roomDone)
	if signalled(in0) || signalled(in1) {
		t.Fatal("a rejected event woke a waiter")
	}
	rooms, complete, err := w.news.roomsWithEvents(ctx, 4, 5, newsScanLimit)
	if err != nil || !complete || src.calls.Load() != 0 {
		t.Fatalf("seeded window: %v, complete %v, %d reads", err, complete, src.calls.Load())
	}
	if want := map[string]bool{"!r1": false}; !maps.Equal(rooms, want) {
		t.Fatalf("seeded window (4,5] = %v, want %v", rooms, want)
	}

	// (5, 9]: accepted events in both rooms, 6 and 9 state events.
	w.wakeTouched(ctx, 5, 9, true, &w.roomDone)
	if !signalled(in0) || !signalled(in1) {
		t.Fatal("accepted events did not wake their rooms' waiters")
	}
	rooms, _, _ = w.news.roomsWithEvents(ctx, 5, 9, newsScanLimit)
	want, _, _ := src.windowRooms.RoomsWithEvents(ctx, 5, 9, newsScanLimit)
	if !maps.Equal(rooms, want) || src.calls.Load() != 1 {
		t.Fatalf("seeded window (5,9] = %v, want %v (source read %d times, 1 by this test)", rooms, want, src.calls.Load())
	}

	// A window larger than one batch is read in parts: not seeded.
	w.wakeTouched(ctx, 9, 9+2*touchBatch, true, &w.roomDone)
	if src.touchCalls != 2+2 {
		t.Fatalf("StreamTouched called %d times, want 4", src.touchCalls)
	}
	if _, _, err := w.news.roomsWithEvents(ctx, 9, 9+2*touchBatch, newsScanLimit); err != nil {
		t.Fatal(err)
	}
	if n := src.calls.Load(); n != 2 {
		t.Fatalf("a window read in batches was answered from the waker's reads (source read %d times, want 2)", n)
	}
}
