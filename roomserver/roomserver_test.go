package roomserver

import (
	"context"
	"encoding/json"
	"strings"
	"testing"

	"github.com/tidwall/gjson"

	"github.com/myelin-chat/myelin/internal/mxerr"
	"github.com/myelin-chat/myelin/storage"
	"github.com/myelin-chat/myelin/storage/storagetest"
)

func TestCreateRoomVersions(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		s, n := newTestServerNotify(t, db)
		ctx := context.Background()
		for _, v := range []string{"1", "6", "10", "11", "12"} {
			t.Run("v"+v, func(t *testing.T) {
				resp := mustCreate(t, s, CreateRoomRequest{
					Creator: alice, RoomVersion: v, Preset: PresetPrivateChat, Name: "Room " + v, Topic: "topic",
					Invite: []string{bob}, IsDirect: true, RoomAliasName: "room" + v,
				})
				// create, join, power levels, alias, join_rules, history_visibility,
				// guest_access, encryption, name, topic, invite.
				if len(resp.EventIDs) != 11 {
					t.Fatalf("got %d initial events, want 11", len(resp.EventIDs))
				}
				if got := stateContent(t, s, alice, resp.RoomID, "m.room.create", "")["room_version"]; got != v {
					t.Fatalf("room_version = %v, want %s", got, v)
				}
				if got := stateContent(t, s, alice, resp.RoomID, "m.room.join_rules", "")["join_rule"]; got != "invite" {
					t.Fatalf("join_rule = %v", got)
				}
				if got := stateContent(t, s, alice, resp.RoomID, "m.room.encryption", "")["algorithm"]; got != "m.megolm.v1.aes-sha2" {
					t.Fatalf("encryption = %v", got)
				}
				if got := stateContent(t, s, alice, resp.RoomID, "m.room.canonical_alias", "")["alias"]; got != "#room"+v+":test.local" {
					t.Fatalf("alias = %v", got)
				}
				inv := stateContent(t, s, alice, resp.RoomID, "m.room.member", bob)
				if inv["membership"] != "invite" || inv["is_direct"] != true {
					t.Fatalf("invite content = %v", inv)
				}
				mustMember(t, s, resp.RoomID, alice, "join")
				pl := stateContent(t, s, alice, resp.RoomID, "m.room.power_levels", "")
				users, _ := pl["users"].(map[string]any)
				create, err := s.Event(ctx, alice, resp.EventIDs[0])
				if err != nil {
					t.Fatal(err)
				}
				if v == "12" {
					// Spec: rooms/v12: the room ID is the create event's hash;
					// the create event has no room_id; creators are not in users.
					if resp.RoomID != "!"+resp.EventIDs[0][1:] {
						t.Fatalf("v12 room ID %s is not derived from create event %s", resp.RoomID, resp.EventIDs[0])
					}
					if gjson.GetBytes(create.JSON, "room_id").Exists() {
						t.Fatalf("v12 create event has room_id: %s", create.JSON)
					}
					if _, ok := users[alice]; ok {
						t.Fatalf("v12 power levels list the creator: %v", users)
					}
					if got := pl["events"].(map[string]any)["m.room.tombstone"]; got != float64(150) {
						t.Fatalf("tombstone level = %v, want 150", got)
					}
					// The creator is privileged: she can set any level, even above 100.
					mustSend(t, s, resp.RoomID, alice, "m.room.power_levels", ptr(""), `{"users":{"@bob:test.local":1000}}`)
				} else {
					if !strings.HasSuffix(resp.RoomID, ":test.local") {
						t.Fatalf("room ID %s has no server", resp.RoomID)
					}
					if users[alice] != float64(100) {
						t.Fatalf("creator level = %v", users[alice])
					}
					if _, err := s.SendEvent(ctx, SendEventRequest{RoomID: resp.RoomID, Sender: alice, Type: "m.room.power_levels",
						StateKey: ptr(""), Content: json.RawMessage(`{"users":{"@alice:test.local":100,"@bob:test.local":1000}}`)}); !mxerr.Is(err, mxerr.Forbidden) {
						t.Fatalf("raising bob above alice's level: %v, want M_FORBIDDEN", err)
					}
				}
				if gotCreator := gjson.GetBytes(create.Content, "creator").Exists(); gotCreator != (v == "1" || v == "6" || v == "10") {
					t.Fatalf("v%s create content creator present = %v", v, gotCreator)
				}
				pos, err := s.StreamPosition(ctx)
				if err != nil {
					t.Fatal(err)
				}
				if n.get() != pos {
					t.Fatalf("notified %d, stream at %d", n.get(), pos)
				}
			})
		}
	})
}

func TestCreateRoomErrors(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		s := newTestServer(t, db)
		ctx := context.Background()
		_, err := s.CreateRoom(ctx, CreateRoomRequest{Creator: alice, RoomVersion: "13"})
		wantCode(t, err, mxerr.UnsupportedRoomVersion)
		_, err = s.CreateRoom(ctx, CreateRoomRequest{Creator: alice, RoomVersion: "org.matrix.msc4014"})
		wantCode(t, err, mxerr.UnsupportedRoomVersion)
		_, err = s.CreateRoom(ctx, CreateRoomRequest{Creator: alice, RoomVersion: "10", CreationContent: map[string]any{"additional_creators": []any{bob}}})
		wantCode(t, err, mxerr.BadJSON)
		_, err = s.CreateRoom(ctx, CreateRoomRequest{Creator: alice, RoomVersion: "12", CreationContent: map[string]any{"additional_creators": []any{"not a user"}}})
		wantCode(t, err, mxerr.BadJSON)
		// v12: listing a creator in power levels is refused by the auth rules.
		_, err = s.CreateRoom(ctx, CreateRoomRequest{Creator: alice, RoomVersion: "12",
			PowerLevelContentOverride: map[string]any{"users": map[string]any{alice: 100}}})
		wantCode(t, err, mxerr.Forbidden)
		_, err = s.CreateRoom(ctx, CreateRoomRequest{Creator: "@eve:elsewhere.test"})
		wantCode(t, err, mxerr.Forbidden)
		if n := countRows(t, db, "roomserver_events"); n != 0 {
			t.Fatalf("failed creations stored %d events", n)
		}
	})
}

func TestTrustedPrivateChatV12AdditionalCreators(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		s := newTestServer(t, db)
		resp := mustCreate(t, s, CreateRoomRequest{Creator: alice, RoomVersion: "12", Preset: PresetTrustedPrivateChat, Invite: []string{bob}})
		create := stateContent(t, s, alice, resp.RoomID, "m.room.create", "")
		if list, _ := create["additional_creators"].([]any); len(list) != 1 || list[0] != bob {
			t.Fatalf("additional_creators = %v", create["additional_creators"])
		}
		if _, err := s.Join(context.Background(), MembershipRequest{RoomID: resp.RoomID, Sender: bob}); err != nil {
			t.Fatal(err)
		}
		// bob is a creator too, so he may change power levels freely.
		mustSend(t, s, resp.RoomID, bob, "m.room.power_levels", ptr(""), `{"users":{"@charlie:test.local":100}}`)
	})
}

func TestSendMessagesAndState(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		s := newTestServer(t, db)
		ctx := context.Background()
		room := mustCreate(t, s, CreateRoomRequest{Creator: alice, RoomVersion: "10", Preset: PresetPublicChat}).RoomID
		m1 := mustSend(t, s, room, alice, "m.room.message", nil, `{"msgtype":"m.text","body":"hello"}`)
		mustSend(t, s, room, alice, "m.room.name", ptr(""), `{"name":"Pub"}`)
		m2 := mustSend(t, s, room, alice, "m.room.message", nil, `{"msgtype":"m.text","body":"again"}`)
		if got := stateContent(t, s, alice, room, "m.room.name", "")["name"]; got != "Pub" {
			t.Fatalf("name = %v", got)
		}
		page, err := s.Messages(ctx, MessagesRequest{UserID: alice, RoomID: room, Dir: Backward, Limit: 2})
		if err != nil {
			t.Fatal(err)
		}
		if len(page.Events) != 2 || page.Events[0].EventID != m2 {
			t.Fatalf("first page = %v", ids(page.Events))
		}
		page2, err := s.Messages(ctx, MessagesRequest{UserID: alice, RoomID: room, From: page.End, Dir: Backward, Limit: 1})
		if err != nil {
			t.Fatal(err)
		}
		if len(page2.Events) != 1 || page2.Events[0].EventID != m1 {
			t.Fatalf("second page = %v", ids(page2.Events))
		}
		// State before/after the name change.
		nameEv, _ := s.CurrentStateEvent(ctx, alice, room, "m.room.name", "")
		at, err := s.StateAt(ctx, alice, nameEv.EventID)
		if err != nil {
			t.Fatal(err)
		}
		if len(at.After) != len(at.Before)+1 {
			t.Fatalf("state before %d events, after %d", len(at.Before), len(at.After))
		}
		// Stream reads.
		rng, err := s.EventsInRange(ctx, RangeRequest{UserID: alice, From: 0, Limit: 100})
		if err != nil {
			t.Fatal(err)
		}
		if last := rng.Events[len(rng.Events)-1]; last.EventID != m2 || rng.End != last.StreamPos {
			t.Fatalf("range ends at %s/%d", last.EventID, rng.End)
		}
		rooms, err := s.JoinedRooms(ctx, alice)
		if err != nil || len(rooms) != 1 || rooms[0] != room {
			t.Fatalf("JoinedRooms = %v, %v", rooms, err)
		}
		// Non-members cannot send.
		_, err = s.SendEvent(ctx, SendEventRequest{RoomID: room, Sender: bob, Type: "m.room.message", Content: json.RawMessage(`{"body":"x"}`)})
		wantCode(t, err, mxerr.Forbidden)
		// Members without power cannot set state.
		if _, err := s.Join(ctx, MembershipRequest{RoomID: room, Sender: bob}); err != nil {
			t.Fatal(err)
		}
		_, err = s.SendEvent(ctx, SendEventRequest{RoomID: room, Sender: bob, Type: "m.room.name", StateKey: ptr(""), Content: json.RawMessage(`{"name":"mine"}`)})
		wantCode(t, err, mxerr.Forbidden)
		// Raised events_default keeps bob quiet too.
		mustSend(t, s, room, alice, "m.room.power_levels", ptr(""), `{"users":{"@alice:test.local":100},"events_default":10}`)
		_, err = s.SendEvent(ctx, SendEventRequest{RoomID: room, Sender: bob, Type: "m.room.message", Content: json.RawMessage(`{"body":"x"}`)})
		wantCode(t, err, mxerr.Forbidden)
		_, err = s.SendEvent(ctx, SendEventRequest{RoomID: "!nope:test.local", Sender: alice, Type: "m.room.message", Content: json.RawMessage(`{}`)})
		wantCode(t, err, mxerr.NotFound)
	})
}

func ids(evs []*Event) []string {
	out := make([]string, len(evs))
	for i, e := range evs {
		out[i] = e.EventID
	}
	return out
}
