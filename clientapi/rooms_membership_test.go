package clientapi_test

import (
	"slices"
	"testing"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/myelin-chat/myelin/internal/testserver"
)

// TestRoomsPrivateChat walks two users through a private room: invite,
// join, messages both ways, leave, ban, and what each may see on the way.
func TestRoomsPrivateChat(t *testing.T) {
	testserver.ForEachEngine(t, nil, func(t *testing.T, srv *testserver.Server) {
		alice, bob := newUser(t, srv, "alice"), newUser(t, srv, "bob")
		err := alice.SetDisplayName(bg, "Alice")
		ok(t, "displayname", err)

		created, err := alice.CreateRoom(bg, &mautrix.ReqCreateRoom{Preset: "private_chat", Name: "Secret", Topic: "shh"})
		ok(t, "createRoom", err)
		room := created.RoomID

		var name event.RoomNameEventContent
		ok(t, "get name", alice.StateEvent(bg, room, event.StateRoomName, "", &name))
		if name.Name != "Secret" {
			t.Fatalf("name = %q", name.Name)
		}
		// private_chat rooms are encrypted by default and invite-only.
		var enc event.EncryptionEventContent
		ok(t, "get encryption", alice.StateEvent(bg, room, event.StateEncryption, "", &enc))
		if enc.Algorithm != id.AlgorithmMegolmV1 {
			t.Fatalf("encryption = %+v", enc)
		}

		// Bob cannot join before he is invited, nor read the room.
		_, err = bob.JoinRoomByID(bg, room)
		wantErrcode(t, "join uninvited", err, 403, "M_FORBIDDEN")
		_, err = bob.State(bg, room)
		wantErrcode(t, "state as stranger", err, 403, "M_FORBIDDEN")

		_, err = alice.InviteUser(bg, room, &mautrix.ReqInviteUser{UserID: bob.id, Reason: "come"})
		ok(t, "invite", err)
		invited, err := alice.Members(bg, room, mautrix.ReqMembers{Membership: event.MembershipInvite})
		ok(t, "members?membership=invite", err)
		if len(invited.Chunk) != 1 || invited.Chunk[0].GetStateKey() != bob.id.String() {
			t.Fatalf("invited members = %v", invited.Chunk)
		}

		joined, err := bob.JoinRoom(bg, room.String(), nil)
		ok(t, "join", err)
		if joined.RoomID != room {
			t.Fatalf("join answered room %s", joined.RoomID)
		}
		rooms, err := bob.JoinedRooms(bg)
		ok(t, "joined_rooms", err)
		if !slices.Contains(rooms.JoinedRooms, room) {
			t.Fatalf("joined_rooms = %v", rooms.JoinedRooms)
		}
		jm, err := bob.JoinedMembers(bg, room)
		ok(t, "joined_members", err)
		if len(jm.Joined) != 2 || jm.Joined[alice.id].DisplayName != "Alice" {
			t.Fatalf("joined_members = %+v", jm.Joined)
		}

		_, err = alice.SendText(bg, room, "hi bob")
		ok(t, "alice sends", err)
		_, err = bob.SendText(bg, room, "hi alice")
		ok(t, "bob sends", err)
		msgs, err := alice.Messages(bg, room, "", "", mautrix.DirectionBackward, nil, 2)
		ok(t, "messages", err)
		if len(msgs.Chunk) != 2 || msgs.Chunk[0].Sender != bob.id || msgs.Chunk[1].Sender != alice.id {
			t.Fatalf("latest messages = %v", msgs.Chunk)
		}
		if err := msgs.Chunk[0].Content.ParseRaw(event.EventMessage); err != nil || msgs.Chunk[0].Content.AsMessage().Body != "hi alice" {
			t.Fatalf("message body = %v (%v)", msgs.Chunk[0].Content.Raw, err)
		}
		if msgs.End == "" {
			t.Fatal("a page in the middle of the room has no end token")
		}

		// Bob leaves: he no longer appears as joined, and can still read
		// the room up to his leave, but not what follows.
		_, err = bob.LeaveRoom(bg, room)
		ok(t, "leave", err)
		_, err = alice.SendText(bg, room, "after bob left")
		ok(t, "send after leave", err)
		notJoined, err := alice.Members(bg, room, mautrix.ReqMembers{NotMembership: event.MembershipJoin})
		ok(t, "members?not_membership=join", err)
		if len(notJoined.Chunk) != 1 || notJoined.Chunk[0].Content.AsMember().Membership != event.MembershipLeave {
			t.Fatalf("non-joined members = %v", notJoined.Chunk)
		}
		bobView, err := bob.Messages(bg, room, "", "", mautrix.DirectionBackward, nil, 5)
		ok(t, "messages after leave", err)
		for _, e := range bobView.Chunk {
			if e.Type == event.EventMessage && e.Content.Raw["body"] == "after bob left" {
				t.Fatal("bob sees a message sent after he left")
			}
		}
		_, err = bob.SendText(bg, room, "still here?")
		wantErrcode(t, "send after leaving", err, 403, "M_FORBIDDEN")

		// Banned: he cannot come back even when invited.
		_, err = alice.BanUser(bg, room, &mautrix.ReqBanUser{UserID: bob.id, Reason: "spam"})
		ok(t, "ban", err)
		_, err = alice.InviteUser(bg, room, &mautrix.ReqInviteUser{UserID: bob.id})
		wantErrcode(t, "invite banned", err, 403, "M_FORBIDDEN")
		_, err = bob.JoinRoomByID(bg, room)
		wantErrcode(t, "join banned", err, 403, "M_FORBIDDEN")
		banned, err := alice.Members(bg, room, mautrix.ReqMembers{Membership: event.MembershipBan})
		ok(t, "members?membership=ban", err)
		if len(banned.Chunk) != 1 || banned.Chunk[0].Content.AsMember().Reason != "spam" {
			t.Fatalf("banned = %v", banned.Chunk)
		}
		_, err = alice.UnbanUser(bg, room, &mautrix.ReqUnbanUser{UserID: bob.id})
		ok(t, "unban", err)
		_, err = alice.UnbanUser(bg, room, &mautrix.ReqUnbanUser{UserID: bob.id})
		wantErrcode(t, "unban someone not banned", err, 403, "M_FORBIDDEN")

		// Forget: alice cannot forget a room she is in; bob can.
		_, err = alice.ForgetRoom(bg, room)
		wantErrcode(t, "forget while joined", err, 400, "M_UNKNOWN")
		_, err = bob.ForgetRoom(bg, room)
		ok(t, "forget", err)

		// Kick: carol joins a public room and is kicked.
		carol := newUser(t, srv, "carol")
		pub, err := alice.CreateRoom(bg, &mautrix.ReqCreateRoom{Preset: "public_chat", RoomAliasName: "town"})
		ok(t, "create public", err)
		_, err = carol.JoinRoom(bg, "#town:localhost", nil)
		ok(t, "join by alias", err)
		_, err = carol.KickUser(bg, pub.RoomID, &mautrix.ReqKickUser{UserID: alice.id})
		wantErrcode(t, "kick without power", err, 403, "M_FORBIDDEN")
		_, err = alice.KickUser(bg, pub.RoomID, &mautrix.ReqKickUser{UserID: carol.id, Reason: "bye"})
		ok(t, "kick", err)
		m, err := alice.Members(bg, pub.RoomID, mautrix.ReqMembers{Membership: event.MembershipLeave})
		ok(t, "members after kick", err)
		if len(m.Chunk) != 1 || m.Chunk[0].Sender != alice.id || m.Chunk[0].GetStateKey() != carol.id.String() {
			t.Fatalf("kicked member = %v", m.Chunk)
		}
	})
}

// TestRoomsRestrictedJoin: a room whose join rule is restricted to the
// members of another room admits those members only.
// Spec: client-server-api, "Restricted rooms".
func TestRoomsRestrictedJoin(t *testing.T) {
	testserver.ForEachEngine(t, nil, func(t *testing.T, srv *testserver.Server) {
		alice, bob := newUser(t, srv, "alice"), newUser(t, srv, "bob")
		space, err := alice.CreateRoom(bg, &mautrix.ReqCreateRoom{Preset: "public_chat", Name: "Space",
			CreationContent: map[string]any{"type": "m.space"}})
		ok(t, "create space", err)
		restricted, err := alice.CreateRoom(bg, &mautrix.ReqCreateRoom{
			Preset: "private_chat",
			InitialState: []*event.Event{{
				Type: event.StateJoinRules, StateKey: ptr(""),
				Content: event.Content{Raw: map[string]any{
					"join_rule": "restricted",
					"allow":     []any{map[string]any{"type": "m.room_membership", "room_id": space.RoomID.String()}},
				}},
			}},
		})
		ok(t, "create restricted", err)

		_, err = bob.JoinRoomByID(bg, restricted.RoomID)
		wantErrcode(t, "join before joining the space", err, 403, "M_FORBIDDEN")
		_, err = bob.JoinRoomByID(bg, space.RoomID)
		ok(t, "join space", err)
		_, err = bob.JoinRoomByID(bg, restricted.RoomID)
		ok(t, "join restricted", err)
		member, err := bob.FullStateEvent(bg, restricted.RoomID, event.StateMember, bob.id.String())
		ok(t, "own member event", err)
		if member.Content.Raw["join_authorised_via_users_server"] != alice.id.String() {
			t.Fatalf("join not authorised via alice: %v", member.Content.Raw)
		}
	})
}

// TestRoomsKnock: knocking on a knock room, then being let in.
// Spec: client-server-api, "Knocking on rooms".
func TestRoomsKnock(t *testing.T) {
	testserver.ForEachEngine(t, nil, func(t *testing.T, srv *testserver.Server) {
		alice, bob := newUser(t, srv, "alice"), newUser(t, srv, "bob")
		room, err := alice.CreateRoom(bg, &mautrix.ReqCreateRoom{
			Preset: "private_chat", RoomAliasName: "door",
			InitialState: []*event.Event{{Type: event.StateJoinRules, StateKey: ptr(""),
				Content: event.Content{Raw: map[string]any{"join_rule": "knock"}}}},
		})
		ok(t, "create", err)
		invite, err := alice.CreateRoom(bg, &mautrix.ReqCreateRoom{Preset: "private_chat"})
		ok(t, "create invite-only", err)

		_, err = bob.KnockRoom(bg, invite.RoomID.String(), &mautrix.ReqKnockRoom{})
		wantErrcode(t, "knock on invite-only", err, 403, "M_FORBIDDEN")
		resp, err := bob.KnockRoom(bg, "#door:localhost", &mautrix.ReqKnockRoom{Reason: "let me in"})
		ok(t, "knock by alias", err)
		if resp.RoomID != room.RoomID {
			t.Fatalf("knock answered %s", resp.RoomID)
		}
		knocks, err := alice.Members(bg, room.RoomID, mautrix.ReqMembers{Membership: event.MembershipKnock})
		ok(t, "members?membership=knock", err)
		if len(knocks.Chunk) != 1 || knocks.Chunk[0].Content.AsMember().Reason != "let me in" {
			t.Fatalf("knocks = %v", knocks.Chunk)
		}
		_, err = alice.InviteUser(bg, room.RoomID, &mautrix.ReqInviteUser{UserID: bob.id})
		ok(t, "accept knock", err)
		_, err = bob.JoinRoomByID(bg, room.RoomID)
		ok(t, "join after knock", err)
		m, err := alice.Members(bg, room.RoomID, mautrix.ReqMembers{Membership: event.MembershipJoin})
		ok(t, "members", err)
		if len(m.Chunk) != 2 {
			t.Fatalf("joined = %v", m.Chunk)
		}
	})
}

func ptr[T any](v T) *T { return &v }
