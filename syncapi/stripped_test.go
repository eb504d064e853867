package syncapi_test

import (
	"context"
	"net/url"
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

// TestForgottenRoomLeaveInIncrementalSync: after leave then forget, an
// incremental sync from before the leave still reports the room under
// leave; an initial sync (even with include_leave) and a sync from after
// the leave do not.
// Spec: client-server-api, "Leaving rooms", POST /forget. Complement:
// TestRoomForget "Leave for forgotten room shows up in v2 incremental
// /sync" and "Forgetting room does not show up in v2 initial /sync".
func TestForgottenRoomLeaveInIncrementalSync(t *testing.T) {
	testserver.ForEachEngine(t, nil, func(t *testing.T, srv *testserver.Server) {
		alice, bob := newUser(t, srv, "alice"), newUser(t, srv, "bob")
		roomID := createRoom(t, srv, alice, roomserver.CreateRoomRequest{Preset: "public_chat"})
		membership(t, srv, "join", bob, bob.id, roomID)
		sendText(t, srv, alice, roomID, "Hello world!")
		_, body := rawSync(t, srv, alice, "timeout=0")
		before := body["next_batch"].(string)
		membership(t, srv, "leave", alice, alice.id, roomID)
		_, body = rawSync(t, srv, alice, "timeout=0&since="+before)
		afterLeave := body["next_batch"].(string)
		if err := srv.HS.Rooms.Forget(context.Background(), alice.id, roomID); err != nil {
			t.Fatalf("forget: %v", err)
		}
		sendText(t, srv, bob, roomID, "Hello again")

		inLeave := func(query string) bool {
			t.Helper()
			st, body := rawSync(t, srv, alice, "timeout=0&filter="+url.QueryEscape(`{"room":{"include_leave":true}}`)+query)
			if st != 200 {
				t.Fatalf("sync %s: %d %v", query, st, body)
			}
			_, ok := body["rooms"].(map[string]any)["leave"].(map[string]any)[roomID]
			return ok
		}
		if !inLeave("&since=" + before) {
			t.Fatal("incremental sync from before the leave does not show the forgotten room's leave")
		}
		if inLeave("") {
			t.Fatal("initial sync shows a forgotten room")
		}
		if inLeave("&since=" + afterLeave) {
			t.Fatal("incremental sync from after the leave shows a forgotten room")
		}
	})
}

// TestRejectedInviteLeavesSync: rejecting an invite moves the room from
// invite to leave in the next incremental sync, with the rejection in
// the timeline, even with history_visibility joined and the inviter
// gone; the room's state is not revealed with it.
// Spec: client-server-api, "Leaving rooms", "History visibility" (own
// membership events). Complement: TestRoomsInvite "Invited user can
// reject invite for empty room", TestLeaveEventInviteRejection.
func TestRejectedInviteLeavesSync(t *testing.T) {
	testserver.ForEachEngine(t, nil, func(t *testing.T, srv *testserver.Server) {
		alice, bob := newUser(t, srv, "alice"), newUser(t, srv, "bob")
		roomID := createRoom(t, srv, alice, roomserver.CreateRoomRequest{Preset: "private_chat"})
		sendState(t, srv, alice, roomID, "m.room.history_visibility", "", `{"history_visibility":"joined"}`)
		sendState(t, srv, alice, roomID, "m.room.topic", "", `{"topic":"secret"}`)
		_, body := rawSync(t, srv, bob, "timeout=0")
		since := body["next_batch"].(string)
		membership(t, srv, "invite", alice, bob.id, roomID)
		membership(t, srv, "leave", alice, alice.id, roomID)
		membership(t, srv, "leave", bob, bob.id, roomID)

		st, body := rawSync(t, srv, bob, "timeout=0&since="+since)
		if st != 200 {
			t.Fatalf("sync: %d %v", st, body)
		}
		rooms := body["rooms"].(map[string]any)
		if invites, _ := rooms["invite"].(map[string]any); invites[roomID] != nil {
			t.Fatal("rejected invite still under invite")
		}
		left, _ := rooms["leave"].(map[string]any)[roomID].(map[string]any)
		if left == nil {
			t.Fatalf("rejected invite not under leave: %v", rooms)
		}
		var sawLeave bool
		for _, e := range left["timeline"].(map[string]any)["events"].([]any) {
			ev := e.(map[string]any)
			if ev["type"] == "m.room.member" && ev["state_key"] == bob.id && ev["content"].(map[string]any)["membership"] == "leave" {
				sawLeave = true
			}
			if ev["type"] == "m.room.topic" {
				t.Fatalf("timeline of a rejected invite shows room history: %v", ev)
			}
		}
		if !sawLeave {
			t.Fatalf("rejection not in the leave timeline: %v", left)
		}
		if st, ok := left["state"].(map[string]any); ok {
			for _, e := range st["events"].([]any) {
				if e.(map[string]any)["type"] == "m.room.topic" {
					t.Fatalf("state of a rejected invite shows room state: %v", st)
				}
			}
		}
	})
}
