package roomserver

import (
	"context"
	"testing"
	"time"

	"github.com/matrix-org/gomatrixserverlib"

	"github.com/myelin-chat/myelin/storage"
	"github.com/myelin-chat/myelin/storage/storagetest"
)

// TestV12CreateInAuthEventsRejected: in room version 12 the create event
// is implied by the room ID and "MUST NOT be selected" for auth_events
// (rooms/v12, authorization rules 3.2). An event that lists it anyway
// (as Complement tests written for older versions do) is rejected with
// that reason, not as one with two create events (gomatrixserverlib's
// AuthEventIDs adds the implied one); the same event without it is
// accepted.
func TestV12CreateInAuthEventsRejected(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		s := newTestServer(t, db)
		d := newDAG(t, "12")
		d.add("create", alice, "m.room.create", ptr(""), `{"room_version":"12"}`)
		d.add("alice-join", alice, "m.room.member", ptr(alice), `{"membership":"join"}`, "create")
		d.add("pl", alice, "m.room.power_levels", ptr(""), `{"users":{}}`, "alice-join")
		for _, name := range []string{"create", "alice-join", "pl"} {
			if r := d.input(t, s, name); r.Outcome != Accepted {
				t.Fatalf("%s: %s %s", name, r.Outcome, r.Reason)
			}
		}
		build := func(body string, auth []string) gomatrixserverlib.PDU {
			impl := gomatrixserverlib.MustGetRoomVersion("12")
			proto := &gomatrixserverlib.ProtoEvent{SenderID: alice, RoomID: d.roomID, Type: "m.room.message",
				Content: []byte(`{"msgtype":"m.text","body":"` + body + `"}`), PrevEvents: []string{d.byName["pl"].EventID()},
				AuthEvents: auth, Depth: d.byName["pl"].Depth() + 1, Version: impl}
			key := testKey()
			pdu, err := impl.NewEventBuilderFromProtoEvent(proto).Build(time.UnixMilli(1_700_000_100_000), testServer,
				gomatrixserverlib.KeyID(key.ID), key.PrivateKey)
			if err != nil {
				t.Fatal(err)
			}
			return pdu
		}
		pl, join := d.byName["pl"].EventID(), d.byName["alice-join"].EventID()
		listed := build("lists the create event", []string{d.byName["create"].EventID(), pl, join})
		r, err := s.InputEvent(context.Background(), InputEventRequest{RoomVersion: "12", JSON: listed.JSON()})
		if err != nil {
			t.Fatal(err)
		}
		if r.Outcome != Rejected || r.Reason != impliedCreateReason {
			t.Fatalf("event listing the create event: %s %q, want rejected %q", r.Outcome, r.Reason, impliedCreateReason)
		}
		fine := build("implies the create event", []string{pl, join})
		if r, err = s.InputEvent(context.Background(), InputEventRequest{RoomVersion: "12", JSON: fine.JSON()}); err != nil {
			t.Fatal(err)
		}
		if r.Outcome != Accepted {
			t.Fatalf("event without the create event: %s %s", r.Outcome, r.Reason)
		}
	})
}
