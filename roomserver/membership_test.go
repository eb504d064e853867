package roomserver

import (
	"context"
	"encoding/json"
	"testing"

	"github.com/myelin-chat/myelin/internal/mxerr"
	"github.com/myelin-chat/myelin/storage"
	"github.com/myelin-chat/myelin/storage/storagetest"
)

func TestMembershipTransitions(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		s := newTestServer(t, db)
		ctx := context.Background()
		for _, v := range []string{"7", "12"} {
			t.Run("v"+v, func(t *testing.T) {
				room := mustCreate(t, s, CreateRoomRequest{Creator: alice, RoomVersion: v, Preset: PresetPrivateChat}).RoomID
				m := func(sender, target string) MembershipRequest {
					return MembershipRequest{RoomID: room, Sender: sender, Target: target}
				}
				// Invite-only: bob cannot join uninvited.
				_, err := s.Join(ctx, m(bob, ""))
				wantCode(t, err, mxerr.Forbidden)
				// A member with power 0 cannot invite when invite needs... 0: allowed;
				// but a non-member cannot invite.
				_, err = s.Invite(ctx, m(charlie, bob))
				wantCode(t, err, mxerr.Forbidden)
				if _, err := s.Invite(ctx, m(alice, bob)); err != nil {
					t.Fatal(err)
				}
				mustMember(t, s, room, bob, "invite")
				if rooms, _ := s.RoomsForUser(ctx, bob, "invite"); !contains(rooms, room) {
					t.Fatalf("bob's invites = %v", rooms)
				}
				if _, err := s.Join(ctx, m(bob, "")); err != nil {
					t.Fatal(err)
				}
				mustMember(t, s, room, bob, "join")
				// bob (power 0) cannot kick or ban alice.
				_, err = s.Kick(ctx, m(bob, alice))
				wantCode(t, err, mxerr.Forbidden)
				_, err = s.Ban(ctx, m(bob, alice))
				wantCode(t, err, mxerr.Forbidden)
				// alice kicks bob; he cannot rejoin uninvited.
				if _, err := s.Kick(ctx, MembershipRequest{RoomID: room, Sender: alice, Target: bob, Reason: "bye"}); err != nil {
					t.Fatal(err)
				}
				mustMember(t, s, room, bob, "leave")
				if c := stateContent(t, s, alice, room, "m.room.member", bob); c["reason"] != "bye" {
					t.Fatalf("kick content = %v", c)
				}
				_, err = s.Join(ctx, m(bob, ""))
				wantCode(t, err, mxerr.Forbidden)
				// Ban; invite of a banned user fails; unban; kick of a banned user fails.
				if _, err := s.Ban(ctx, m(alice, bob)); err != nil {
					t.Fatal(err)
				}
				mustMember(t, s, room, bob, "ban")
				_, err = s.Invite(ctx, m(alice, bob))
				wantCode(t, err, mxerr.Forbidden)
				_, err = s.Kick(ctx, m(alice, bob))
				wantCode(t, err, mxerr.Forbidden)
				if _, err := s.Unban(ctx, m(alice, bob)); err != nil {
					t.Fatal(err)
				}
				mustMember(t, s, room, bob, "leave")
				_, err = s.Unban(ctx, m(alice, bob))
				wantCode(t, err, mxerr.Forbidden)
				// Forget: only after leaving.
				err = s.Forget(ctx, alice, room)
				wantCode(t, err, mxerr.Unknown)
				if err := s.Forget(ctx, bob, room); err != nil {
					t.Fatal(err)
				}
				if rooms, _ := s.RoomsForUser(ctx, bob, "leave"); contains(rooms, room) {
					t.Fatalf("forgotten room still listed: %v", rooms)
				}
				// Knocking: refused under "invite", allowed under "knock"; a
				// re-invite un-forgets.
				_, err = s.Knock(ctx, m(bob, ""))
				wantCode(t, err, mxerr.Forbidden)
				mustSend(t, s, room, alice, "m.room.join_rules", ptr(""), `{"join_rule":"knock"}`)
				if _, err := s.Knock(ctx, MembershipRequest{RoomID: room, Sender: bob, Reason: "let me in"}); err != nil {
					t.Fatal(err)
				}
				mustMember(t, s, room, bob, "knock")
				if rooms, _ := s.RoomsForUser(ctx, bob, "knock"); !contains(rooms, room) {
					t.Fatalf("knocked room not listed: %v", rooms)
				}
				if _, err := s.Invite(ctx, m(alice, bob)); err != nil {
					t.Fatal(err)
				}
				if _, err := s.Join(ctx, m(bob, "")); err != nil {
					t.Fatal(err)
				}
				if _, err := s.Leave(ctx, m(bob, "")); err != nil {
					t.Fatal(err)
				}
				mustMember(t, s, room, bob, "leave")
				members, err := s.Members(ctx, alice, room, "join")
				if err != nil || len(members) != 1 || *members[0].StateKey != alice {
					t.Fatalf("joined members = %v, %v", members, err)
				}
			})
		}
	})
}

func TestKnockRefusedInOldRooms(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		s := newTestServer(t, db)
		room := mustCreate(t, s, CreateRoomRequest{Creator: alice, RoomVersion: "6"}).RoomID
		_, err := s.SendEvent(context.Background(), SendEventRequest{RoomID: room, Sender: alice, Type: "m.room.join_rules",
			StateKey: ptr(""), Content: json.RawMessage(`{"join_rule":"knock"}`)})
		if err != nil {
			t.Fatal(err)
		}
		// Knocking arrived in room version 7.
		_, err = s.Knock(context.Background(), MembershipRequest{RoomID: room, Sender: bob})
		wantCode(t, err, mxerr.Forbidden)
	})
}

// Spec: rooms/v8, restricted join rules with m.room_membership.
func TestRestrictedJoin(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		s := newTestServer(t, db)
		ctx := context.Background()
		space := mustCreate(t, s, CreateRoomRequest{Creator: alice, RoomVersion: "10", Preset: PresetPublicChat}).RoomID
		if _, err := s.Join(ctx, MembershipRequest{RoomID: space, Sender: bob}); err != nil {
			t.Fatal(err)
		}
		jr, _ := json.Marshal(map[string]any{"join_rule": "restricted", "allow": []any{map[string]any{"type": "m.room_membership", "room_id": space}}})
		room := mustCreate(t, s, CreateRoomRequest{Creator: alice, RoomVersion: "10", Preset: PresetPrivateChat,
			InitialState: []StateEvent{{Type: "m.room.join_rules", Content: jr}}}).RoomID
		resp, err := s.Join(ctx, MembershipRequest{RoomID: room, Sender: bob})
		if err != nil {
			t.Fatal(err)
		}
		ev, err := s.Event(ctx, bob, resp.EventID)
		if err != nil {
			t.Fatal(err)
		}
		var c map[string]any
		_ = json.Unmarshal(ev.Content, &c)
		if c["join_authorised_via_users_server"] != alice {
			t.Fatalf("join content = %v", c)
		}
		// charlie is not in the space.
		_, err = s.Join(ctx, MembershipRequest{RoomID: room, Sender: charlie})
		wantCode(t, err, mxerr.Forbidden)
		// Restricted rooms do not exist before v8.
		room6 := mustCreate(t, s, CreateRoomRequest{Creator: alice, RoomVersion: "6", Preset: PresetPrivateChat}).RoomID
		_, err = s.SendEvent(ctx, SendEventRequest{RoomID: room6, Sender: alice, Type: "m.room.join_rules", StateKey: ptr(""), Content: jr})
		if err != nil {
			t.Fatal(err) // the event is allowed; the rule just does not open the room
		}
		_, err = s.Join(ctx, MembershipRequest{RoomID: room6, Sender: bob})
		wantCode(t, err, mxerr.Forbidden)
	})
}
