package roomserver

import (
	"context"
	"slices"
	"testing"

	"github.com/myelin-chat/myelin/storage"
	"github.com/myelin-chat/myelin/storage/storagetest"
)

// TestSendJoinAuthChainHasCreate: the auth chain answered with the state
// before an event (send_join, /state) holds the create event although
// the create event is also part of that state: servers that check the
// chain on its own (Dendrite's sanityCheckAuthChain) refuse it otherwise.
func TestSendJoinAuthChainHasCreate(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		s := newTestServer(t, db)
		ctx := context.Background()
		room := mustCreate(t, s, CreateRoomRequest{Creator: alice, Preset: "public_chat"})
		msg := mustSend(t, s, room.RoomID, alice, "m.room.message", nil, `{"msgtype":"m.text","body":"hi"}`)
		create, err := s.RoomStateEvent(ctx, room.RoomID, "m.room.create", "")
		if err != nil {
			t.Fatal(err)
		}
		state, chain, err := s.StateAndAuthChainBefore(ctx, msg)
		if err != nil {
			t.Fatal(err)
		}
		has := func(evs []*Event, id string) bool {
			return slices.ContainsFunc(evs, func(e *Event) bool { return e.EventID == id })
		}
		if !has(state, create.EventID) || !has(chain, create.EventID) {
			t.Fatalf("create event %s in state: %v, in auth chain: %v", create.EventID, has(state, create.EventID), has(chain, create.EventID))
		}
		seen := map[string]bool{}
		for _, e := range chain {
			if seen[e.EventID] {
				t.Fatalf("event %s twice in the auth chain", e.EventID)
			}
			seen[e.EventID] = true
		}
		if has(chain, msg) {
			t.Fatal("the event itself is in its auth chain")
		}
	})
}
