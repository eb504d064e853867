package syncapi_test

import (
	"testing"

	"github.com/myelin-chat/myelin/internal/testserver"
	"github.com/myelin-chat/myelin/roomserver"
)

// TestStrippedStateCarriesFullCreateEvent: invite_state and knock_state
// hold the m.room.create event with its event_id, origin_server_ts and
// room_id; the other entries stay stripped.
// Spec: client-server-api, "Stripped state" (v1.16: m.room.create is
// required in invite_state and knock_state); MSC4311. Complement:
// TestMSC4311FullCreateEventOnStrippedState.
func TestStrippedStateCarriesFullCreateEvent(t *testing.T) {
	testserver.ForEachEngine(t, nil, func(t *testing.T, srv *testserver.Server) {
		alice, bob, carol := newUser(t, srv, "alice"), newUser(t, srv, "bob"), newUser(t, srv, "carol")
		invited := createRoom(t, srv, alice, roomserver.CreateRoomRequest{Preset: "private_chat", Name: "invite"})
		membership(t, srv, "invite", alice, bob.id, invited)
		knocked := createRoom(t, srv, alice, roomserver.CreateRoomRequest{Preset: "private_chat", Name: "knock"})
		sendState(t, srv, alice, knocked, "m.room.join_rules", "", `{"join_rule":"knock"}`)
		membership(t, srv, "knock", carol, carol.id, knocked)

		check := func(who *user, section, list, roomID string) {
			t.Helper()
			st, body := rawSync(t, srv, who, "timeout=0")
			if st != 200 {
				t.Fatalf("sync: %d %v", st, body)
			}
			room, _ := body["rooms"].(map[string]any)[section].(map[string]any)[roomID].(map[string]any)
			if room == nil {
				t.Fatalf("%s has no %s room %s: %v", who.id, section, roomID, body["rooms"])
			}
			var sawCreate bool
			for _, e := range room[list].(map[string]any)["events"].([]any) {
				ev := e.(map[string]any)
				if ev["type"] == "m.room.create" {
					sawCreate = true
					if ev["origin_server_ts"] == nil || ev["event_id"] == nil || ev["room_id"] != roomID || ev["content"] == nil {
						t.Fatalf("%s: create event not whole: %v", list, ev)
					}
				} else if _, has := ev["event_id"]; has {
					t.Fatalf("%s: %s is not stripped: %v", list, ev["type"], ev)
				}
			}
			if !sawCreate {
				t.Fatalf("%s without m.room.create: %v", list, room)
			}
		}
		check(bob, "invite", "invite_state", invited)
		check(carol, "knock", "knock_state", knocked)
	})
}
