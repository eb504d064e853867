package roomserver

import (
	"context"
	"encoding/json"
	"strings"
	"testing"

	"github.com/matrix-org/gomatrixserverlib"

	"github.com/myelin-chat/myelin/internal/mxerr"
	"github.com/myelin-chat/myelin/storage"
	"github.com/myelin-chat/myelin/storage/storagetest"
)

// TestAuthDecisionCacheFollowsState sends messages between changes of the
// state the auth rules read (power levels, membership) and requires each
// send to be decided against the state of the moment: a remembered
// "allowed" must never outlive the auth events it was decided on.
func TestAuthDecisionCacheFollowsState(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		for _, version := range []string{"10", "12"} {
			s := newTestServer(t, db)
			ctx := context.Background()
			room := mustCreate(t, s, CreateRoomRequest{Creator: alice, RoomVersion: version, Preset: PresetPublicChat}).RoomID
			if _, err := s.Join(ctx, MembershipRequest{RoomID: room, Sender: bob}); err != nil {
				t.Fatal(err)
			}
			send := func(eventType string) error {
				_, err := s.SendEvent(ctx, SendEventRequest{RoomID: room, Sender: bob, Type: eventType, Content: json.RawMessage(`{"body":"hi"}`)})
				return err
			}
			allow := func(step, eventType string) {
				t.Helper()
				for range 2 { // the second send is decided from the cache
					if err := send(eventType); err != nil {
						t.Fatalf("v%s %s: %s refused: %v", version, step, eventType, err)
					}
				}
			}
			refuse := func(step, eventType string) {
				t.Helper()
				if err := send(eventType); !mxerr.Is(err, mxerr.Forbidden) {
					t.Fatalf("v%s %s: %s: got %v, want M_FORBIDDEN", version, step, eventType, err)
				}
			}
			// Room v12 creators have unlimited power and are not listed.
			admin := `"` + alice + `":100`
			if version == "12" {
				admin = `"@carol:test.local":100`
			}
			powerLevels := func(content string) {
				t.Helper()
				mustSend(t, s, room, alice, "m.room.power_levels", ptr(""), strings.ReplaceAll(content, "ADMIN", admin))
			}
			allow("joined", "m.room.message")
			allow("joined", "m.custom")
			if !authCacheHolds(room, bob) {
				t.Fatalf("v%s: no decision remembered for bob's messages", version)
			}
			powerLevels(`{"users":{ADMIN},"events":{"m.room.message":50,"m.room.power_levels":100}}`)
			allow("message level raised", "m.custom") // other types keep their level
			refuse("message level raised", "m.room.message")
			powerLevels(`{"users":{ADMIN,"` + bob + `":50},"events":{"m.room.message":50,"m.room.power_levels":100}}`)
			allow("bob raised", "m.room.message")
			powerLevels(`{"users":{ADMIN},"events":{"m.room.message":50,"m.room.power_levels":100}}`)
			refuse("bob lowered again", "m.room.message")
			powerLevels(`{"users":{ADMIN},"events_default":10,"events":{"m.room.power_levels":100}}`)
			refuse("events_default raised", "m.custom")
			refuse("events_default raised", "m.room.message")
			powerLevels(`{"users":{ADMIN},"events":{"m.room.power_levels":100}}`)
			allow("levels back to 0", "m.room.message")
			if _, err := s.Leave(ctx, MembershipRequest{RoomID: room, Sender: bob}); err != nil {
				t.Fatal(err)
			}
			refuse("left", "m.room.message")
			refuse("left", "m.custom")
			if _, err := s.Join(ctx, MembershipRequest{RoomID: room, Sender: bob}); err != nil {
				t.Fatal(err)
			}
			allow("rejoined", "m.room.message")
			if _, err := s.Ban(ctx, MembershipRequest{RoomID: room, Sender: alice, Target: bob}); err != nil {
				t.Fatal(err)
			}
			refuse("banned", "m.room.message")
		}
	})
}

func toPDUs(events []*loadedEvent) []gomatrixserverlib.PDU {
	out := make([]gomatrixserverlib.PDU, len(events))
	for i, e := range events {
		out[i] = e.pdu
	}
	return out
}

// authCacheHolds reports whether some remembered decision is bob's in room.
func authCacheHolds(roomID, sender string) bool {
	authDecisions.mu.Lock()
	defer authDecisions.mu.Unlock()
	for k := range authDecisions.allowed {
		if k.roomID == roomID && k.sender == sender {
			return true
		}
	}
	return false
}

// TestAuthDecisionKey checks what is and is not remembered, and that an
// auth event redacted in place is another key.
func TestAuthDecisionKey(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		s := newTestServer(t, db)
		ctx := context.Background()
		room := mustCreate(t, s, CreateRoomRequest{Creator: alice, RoomVersion: "10", Preset: PresetPublicChat}).RoomID
		msgID := mustSend(t, s, room, alice, "m.room.message", nil, `{"body":"x"}`)
		topicID := mustSend(t, s, room, alice, "m.room.topic", ptr(""), `{"topic":"x"}`)
		loaded, err := s.loadEventsByID(ctx, db.Reader(), nil, []string{msgID, topicID})
		if err != nil {
			t.Fatal(err)
		}
		msg, topic := loaded[msgID].pdu, loaded[topicID].pdu
		authOf := func(ids []string) []*loadedEvent {
			m, err := s.loadEventsByID(ctx, db.Reader(), nil, ids)
			if err != nil {
				t.Fatal(err)
			}
			var out []*loadedEvent
			for _, id := range ids {
				out = append(out, m[id])
			}
			return out
		}
		authPDUs := toPDUs(authOf(msg.AuthEventIDs()))
		k1, ok := authDecisionKeyFor(msg, authPDUs)
		if !ok {
			t.Fatal("a message's decision is not remembered")
		}
		if _, ok := authDecisionKeyFor(topic, toPDUs(authOf(topic.AuthEventIDs()))); ok {
			t.Fatal("a state event's decision is remembered")
		}
		if err := allowed(msg, authPDUs); err != nil {
			t.Fatal(err)
		}
		if !authDecisions.isAllowed(k1) {
			t.Fatal("an allowed message's decision was not remembered")
		}
		// Redacting an auth event in place changes its content: another key.
		for _, ae := range authPDUs {
			if ae.Type() == "m.room.power_levels" {
				ae.Redact()
			}
		}
		k2, _ := authDecisionKeyFor(msg, authPDUs)
		if k1 == k2 {
			t.Fatal("an auth event redacted in place keeps the key")
		}
	})
}
