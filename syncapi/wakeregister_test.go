package syncapi

import (
	"context"
	"log/slog"
	"testing"

	"github.com/myelin-chat/myelin/internal/notifier"
	"github.com/myelin-chat/myelin/roomserver"
)

// memberTouchRooms answers every window with one accepted membership
// event of member in room "!elsewhere".
type memberTouchRooms struct {
	touchRooms
	member string
}

func (r *memberTouchRooms) StreamTouched(_ context.Context, from, to int64, limit int) ([]roomserver.StreamTouch, error) {
	return []roomserver.StreamTouch{{StreamPos: to, RoomID: "!elsewhere", Member: r.member, Accepted: true}}, nil
}

// TestWakerUserSetsReused: a user's set of waiters that unregister
// empties is reused by the next registration, of any user, and carries
// nothing of its former user: a membership change of the former user
// wakes nobody, of the new one its waiter only. A register and
// unregister then allocate the waiter and its channel only (main: 4,
// the user's set made afresh each time).
func TestWakerUserSetsReused(t *testing.T) {
	ctx := context.Background()
	src := &memberTouchRooms{}
	w := newWaker(src, notifier.New(), slog.Default())
	stays := w.register("@stays:test", []string{"!r0"}) // keeps the room's set
	a := w.register("@a:test", []string{"!r0"})
	w.unregister(a)
	if len(w.spareSets) != 1 {
		t.Fatalf("%d spare sets after the only waiter of @a left, want 1", len(w.spareSets))
	}
	b := w.register("@b:test", []string{"!r0"})
	if len(w.spareSets) != 0 || len(w.byUser["@b:test"]) != 1 {
		t.Fatalf("spare sets %d, @b's set %v", len(w.spareSets), w.byUser["@b:test"])
	}
	if _, ok := w.byUser["@a:test"]; ok {
		t.Fatal("@a still has a set")
	}
	src.member = "@a:test"
	w.wakeTouched(ctx, 0, 1, true, &w.roomDone)
	if signalled(b) || signalled(stays) {
		t.Fatal("a membership change of @a woke a waiter of another user")
	}
	src.member = "@b:test"
	w.wakeTouched(ctx, 1, 2, true, &w.roomDone)
	if !signalled(b) || signalled(stays) {
		t.Fatal("a membership change of @b did not wake @b's waiter alone")
	}
	// Two long polls of one user share the set, which is spared only
	// when both have left.
	b2 := w.register("@b:test", nil)
	w.unregister(b)
	if got := w.byUser["@b:test"]; len(got) != 1 || len(w.spareSets) != 0 {
		t.Fatalf("after one of @b's two waiters left: set %v, %d spare", got, len(w.spareSets))
	}
	w.unregister(b2)

	rooms := []string{"!r0"}
	allocs := testing.AllocsPerRun(100, func() { w.unregister(w.register("@c:test", rooms)) })
	if allocs > 2 {
		t.Errorf("register and unregister: %.0f allocations, want at most 2", allocs)
	}
}
