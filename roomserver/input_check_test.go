package roomserver

import (
	"context"
	"testing"

	"github.com/myelin-chat/myelin/internal/mxerr"
	"github.com/myelin-chat/myelin/storage"
	"github.com/myelin-chat/myelin/storage/storagetest"
)

// TestCheckInputEvent: CheckInputEvent gives the outcome InputEvent then
// gives (accepted, rejected, unknown prev event), and writes nothing.
func TestCheckInputEvent(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		ctx := context.Background()
		s := newTestServer(t, db)
		d := baseRoom(t, "10")
		for _, name := range []string{"create", "alice-join", "pl0", "jr", "bob-join"} {
			d.input(t, s, name)
		}
		d.add("msg", bob, "m.room.message", nil, `{"body":"hi"}`, "bob-join")
		d.add("charlie-msg", charlie, "m.room.message", nil, `{"body":"not joined"}`, "bob-join")
		d.add("orphan", bob, "m.room.message", nil, `{"body":"after msg"}`, "msg")
		before := countRows(t, db, "roomserver_events")
		check := func(name string) (*InputEventResponse, error) {
			return s.CheckInputEvent(ctx, InputEventRequest{RoomVersion: d.version, JSON: d.byName[name].JSON()})
		}
		if r, err := check("msg"); err != nil || r.Outcome != Accepted {
			t.Fatalf("msg: %+v, %v", r, err)
		}
		if r, err := check("charlie-msg"); err != nil || r.Outcome != Rejected {
			t.Fatalf("charlie-msg: %+v, %v", r, err)
		}
		if _, err := check("orphan"); !mxerr.Is(err, mxerr.NotFound) {
			t.Fatalf("orphan: %v, want M_NOT_FOUND", err)
		}
		if n := countRows(t, db, "roomserver_events"); n != before {
			t.Fatalf("CheckInputEvent stored events: %d rows, was %d", n, before)
		}
		for name, want := range map[string]InputOutcome{"msg": Accepted, "charlie-msg": Rejected} {
			if r := d.input(t, s, name); r.Outcome != want {
				t.Fatalf("InputEvent(%s) = %s, CheckInputEvent said %s", name, r.Outcome, want)
			}
		}
		if r, err := check("msg"); err != nil || r.Outcome != Duplicate {
			t.Fatalf("msg after input: %+v, %v", r, err)
		}
	})
}
