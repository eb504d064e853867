package roomserver

import (
	"context"
	"encoding/json"
	"testing"

	"github.com/myelin-chat/myelin/internal/mxerr"
	"github.com/myelin-chat/myelin/storage"
	"github.com/myelin-chat/myelin/storage/storagetest"
)

// TestGapStateWithForeignCreate: a gap's state (what a server answers
// to /state_ids and /event, given to InputWithState) whose create event
// is not the room's own — a second m.room.create with the room's ID, in
// a room version where the room ID does not derive from it — is refused
// whole: the forged create, the events built on it and the event after
// the gap are not stored. The same state with the room's own create
// event is taken. An answer holding an event of another room is refused
// too.
// Spec: server-server-api, "Checks performed on receipt of a PDU";
// rooms/v1, "Authorization rules" (the create event is the room's only
// one).
func TestGapStateWithForeignCreate(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		ctx := context.Background()
		s, d := promotionRoom(t, db)
		// A second create event with the room's ID, and a history on it
		// in which bob holds all power.
		d.add("create2", alice, "m.room.create", ptr(""), `{"room_version":"10","creator":"@alice:test.local","m.federate":false}`)
		d.add("alice-join2", alice, "m.room.member", ptr(alice), `{"membership":"join"}`, "create2")
		d.add("pl2", alice, "m.room.power_levels", ptr(""), `{"users":{"@alice:test.local":100,"@bob:test.local":100}}`, "alice-join2")
		d.add("y2", alice, "m.room.message", nil, `{"msgtype":"m.text","body":"missing"}`, "pl2")
		d.add("x2", alice, "m.room.message", nil, `{"msgtype":"m.text","body":"after the gap"}`, "y2")
		// The same shape on the room's own create event.
		d.add("y", alice, "m.room.message", nil, `{"msgtype":"m.text","body":"missing"}`, "bob-join")
		d.add("x", alice, "m.room.message", nil, `{"msgtype":"m.text","body":"after the gap"}`, "y")
		raws := func(names ...string) []json.RawMessage {
			var out []json.RawMessage
			for _, n := range names {
				out = append(out, d.byName[n].JSON())
			}
			return out
		}
		held := func(name string) bool {
			var n int
			if err := db.Reader().QueryRow(ctx, `SELECT COUNT(*) FROM roomserver_events WHERE event_id = $1`,
				d.byName[name].EventID()).Scan(&n); err != nil {
				t.Fatal(err)
			}
			return n > 0
		}

		_, err := s.InputWithState(ctx, InputWithStateRequest{RoomVersion: "10", JSON: d.byName["x2"].JSON(),
			PrevStates: [][]json.RawMessage{raws("create2", "alice-join2", "pl2")}, AuthEvents: raws("create2", "alice-join2", "pl2")})
		if !mxerr.Is(err, mxerr.BadJSON) {
			t.Fatalf("a gap state with another create event: %v, want M_BAD_JSON", err)
		}
		for _, name := range []string{"create2", "alice-join2", "pl2", "x2"} {
			if held(name) {
				t.Errorf("%s was stored from the refused gap state", name)
			}
		}
		// The forged create alone among the auth events, the state
		// naming the room's own: refused too.
		_, err = s.InputWithState(ctx, InputWithStateRequest{RoomVersion: "10", JSON: d.byName["x"].JSON(),
			PrevStates: [][]json.RawMessage{raws("create", "alice-join", "pl0", "jr", "bob-join")}, AuthEvents: raws("create2")})
		if !mxerr.Is(err, mxerr.BadJSON) || held("create2") {
			t.Fatalf("a gap's auth events with another create event: %v (stored: %v), want M_BAD_JSON", err, held("create2"))
		}

		// An event of another room in the state: refused.
		other := newDAG(t, "10")
		other.roomID = "!other:test.local"
		other.add("create", alice, "m.room.create", ptr(""), `{"room_version":"10","creator":"@alice:test.local"}`)
		other.add("alice-join", alice, "m.room.member", ptr(alice), `{"membership":"join"}`, "create")
		other.add("topic", alice, "m.room.topic", ptr(""), `{"topic":"elsewhere"}`, "alice-join")
		_, err = s.InputWithState(ctx, InputWithStateRequest{RoomVersion: "10", JSON: d.byName["x"].JSON(),
			PrevStates: [][]json.RawMessage{append(raws("create", "alice-join", "pl0", "jr", "bob-join"), other.byName["topic"].JSON())}})
		if !mxerr.Is(err, mxerr.BadJSON) {
			t.Fatalf("a gap state with an event of another room: %v, want M_BAD_JSON", err)
		}

		// The room's own create: taken.
		r, err := s.InputWithState(ctx, InputWithStateRequest{RoomVersion: "10", JSON: d.byName["x"].JSON(),
			PrevStates: [][]json.RawMessage{raws("create", "alice-join", "pl0", "jr", "bob-join")}})
		if err != nil || r.Outcome != Accepted {
			t.Fatalf("the gap state with the room's create event: %+v, %v", r, err)
		}
	})
}
