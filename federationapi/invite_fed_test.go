package federationapi_test

import (
	"context"
	"testing"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
)

// TestClientRejectRemoteInviteToEmptyRoom: alice invites bob and leaves, so
// the room has no member left; bob can still reject the invite through
// A, and his /sync on B then shows the room as left.
// Complement: TestFederationRoomsInvite "Invited user can reject invite
// over federation for empty room".
func TestClientRejectRemoteInviteToEmptyRoom(t *testing.T) {
	t.Parallel()
	n := newNetwork(t, "sqlite")
	a, b := n.start(), n.start()
	ctx := context.Background()
	alice, bob := a.register("alice"), b.register("bob")
	created, err := alice.cli.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "private_chat", Invite: []id.UserID{bob.id()}})
	if err != nil {
		t.Fatal(err)
	}
	bob.await("the invite", func() bool { return bob.invites[created.RoomID] })
	if _, err := alice.cli.LeaveRoom(ctx, created.RoomID); err != nil {
		t.Fatal(err)
	}
	if _, err := bob.cli.LeaveRoom(ctx, created.RoomID); err != nil {
		t.Fatalf("rejecting: %v", err)
	}
	bob.await("the room in rooms.leave", func() bool { return bob.left[created.RoomID] })
	if bob.invites[created.RoomID] {
		t.Fatal("the invite is still pending")
	}
	if m, _ := a.HS.Rooms.Membership(ctx, string(created.RoomID), string(bob.id())); m != "leave" {
		t.Fatalf("bob's membership on A is %q, want leave", m)
	}
}

// TestRescindByOtherMemberIgnored: alice2 invites bob to a room on A and
// alice (not the inviter) kicks him. B cannot check the kick against the
// room's state, so it believes only the inviter: bob stays invited.
// Complement: TestFederationRoomsInvite "Non-invitee user cannot rescind
// invite over federation".
func TestRescindByOtherMemberIgnored(t *testing.T) {
	t.Parallel()
	n := newNetwork(t, "sqlite")
	a, b := n.start(), n.start()
	ctx := context.Background()
	alice, alice2, bob := a.register("alice"), a.register("alice2"), b.register("bob")
	shared, err := alice.cli.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "private_chat", Invite: []id.UserID{bob.id()}})
	if err != nil {
		t.Fatal(err)
	}
	bob.await("the first invite", func() bool { return bob.invites[shared.RoomID] })
	if _, err := bob.cli.JoinRoomByID(ctx, shared.RoomID); err != nil {
		t.Fatal(err)
	}
	room, err := alice.cli.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "private_chat", Invite: []id.UserID{alice2.id()}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := alice2.cli.JoinRoomByID(ctx, room.RoomID); err != nil {
		t.Fatal(err)
	}
	if _, err := alice2.cli.InviteUser(ctx, room.RoomID, &mautrix.ReqInviteUser{UserID: bob.id()}); err != nil {
		t.Fatal(err)
	}
	bob.await("alice2's invite", func() bool { return bob.invites[room.RoomID] })
	if _, err := alice.cli.KickUser(ctx, room.RoomID, &mautrix.ReqKickUser{UserID: bob.id(), Reason: "testing"}); err != nil {
		t.Fatalf("kick: %v", err)
	}
	// A sends in order: once bob has a later message, B has had the kick.
	alice.send(shared.RoomID, "after the kick")
	bob.await("the message", func() bool { return bob.sawMessage(shared.RoomID, alice.id(), "after the kick") })
	if bob.left[room.RoomID] {
		t.Fatal("bob saw the rescission of a member who did not invite him")
	}
	fresh := &syncer{t: t, cli: bob.cli, invites: map[id.RoomID]bool{}, left: map[id.RoomID]bool{}}
	fresh.timeline, fresh.ephemeral, fresh.knocks = bob.timeline, bob.ephemeral, bob.knocks
	fresh.syncOnce()
	if !fresh.invites[room.RoomID] {
		t.Fatal("an initial sync does not show bob invited any more")
	}
}

// TestRemoteJoinPrevContent: bob joins, through A, a DM alice invited him
// to; the join in his /sync on B carries the invite as
// unsigned.prev_content (is_direct included) and prev_sender.
// Complement: TestFederationRoomsInvite "Invited user has 'is_direct'
// flag in prev_content after joining".
func TestRemoteJoinPrevContent(t *testing.T) {
	t.Parallel()
	n := newNetwork(t, "sqlite")
	a, b := n.start(), n.start()
	ctx := context.Background()
	alice, bob := a.register("alice"), b.register("bob")
	created, err := alice.cli.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "private_chat", Invite: []id.UserID{bob.id()}, IsDirect: true})
	if err != nil {
		t.Fatal(err)
	}
	bob.await("the invite", func() bool { return bob.invites[created.RoomID] })
	if _, err := bob.cli.JoinRoomByID(ctx, created.RoomID); err != nil {
		t.Fatal(err)
	}
	var join *event.Event
	bob.await("his join", func() bool {
		for _, e := range bob.timeline[created.RoomID] {
			if e.Type == event.StateMember && e.GetStateKey() == string(bob.id()) {
				join = e
				return true
			}
		}
		return false
	})
	prev := join.Unsigned.PrevContent
	if prev == nil {
		t.Fatalf("no unsigned.prev_content on bob's join: %+v", join.Unsigned)
	}
	if m := prev.Raw["membership"]; m != "invite" {
		t.Errorf("prev_content.membership = %v, want invite", m)
	}
	if d := prev.Raw["is_direct"]; d != true {
		t.Errorf("prev_content.is_direct = %v, want true", d)
	}
	if join.Unsigned.PrevSender != alice.id() {
		t.Errorf("prev_sender = %q, want %s", join.Unsigned.PrevSender, alice.id())
	}
}
