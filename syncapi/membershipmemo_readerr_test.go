package syncapi

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"testing"

	"github.com/myelin-chat/myelin/internal/notifier"
	"github.com/myelin-chat/myelin/roomserver"
)

// failingTouchRooms fails every read of the room stream; nothing else
// is called (the nil embedded interface would panic).
type failingTouchRooms struct{ Rooms }

func (failingTouchRooms) StreamTouched(context.Context, int64, int64, int) ([]roomserver.StreamTouch, error) {
	return nil, errors.New("injected read failure")
}

// TestMembershipMemoDroppedOnReadError: a window the waker fails to read
// may hold a membership change of any user, so every memo entry goes
// (membershipMemo's doc: "A window the waker ... fails to read drops
// every entry"), and everyone is woken to read for themselves. Kept, an
// entry would answer an incremental sync with memberships from before a
// change it never heard of.
func TestMembershipMemoDroppedOnReadError(t *testing.T) {
	ctx := context.Background()
	w := newWaker(failingTouchRooms{}, notifier.New(), slog.New(slog.NewTextHandler(io.Discard, nil)))
	w.memo.start(10)
	w.roomDone = 10
	bobs := []roomserver.MembershipEntry{{RoomID: "!a:x", Membership: "join", StreamPos: 7}}
	w.memo.put(w.memo.begin(), []string{"@bob:x"}, map[string][]roomserver.MembershipEntry{"@bob:x": bobs})
	if _, ok := w.memo.get("@bob:x", 10); !ok {
		t.Fatal("memo did not keep bob's memberships")
	}
	wt := w.register("@carol:x", []string{"!b:x"}) // in no room of the window

	w.wakeTouched(ctx, 10, 15, true, &w.roomDone)

	if !signalled(wt) {
		t.Fatal("a failed read of the room stream did not wake every waiter")
	}
	if w.roomDone != 15 {
		t.Fatalf("waker's room position = %d after the failed window, want 15", w.roomDone)
	}
	if ms, ok := w.memo.get("@bob:x", 15); ok {
		t.Fatalf("memo answered for bob at 15 after a window it could not read: %v", ms)
	}
	if ms, ok := w.memo.get("@bob:x", -1); ok {
		t.Fatalf("memo answered for bob's registration after a window it could not read: %v", ms)
	}
}
