package federationapi_test

import (
	"context"
	"encoding/json"
	"testing"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/id"
)

// TestClientCreateRoomInvitesRemoteUser: alice on A creates a DM with
// invite: [bob on B]; the invite goes to B over federation (invite v2),
// reaches bob's /sync there, and bob joins through A.
func TestClientCreateRoomInvitesRemoteUser(t *testing.T) {
	forEachEngine(t, func(t *testing.T, n *network) {
		a, b := n.start(), n.start()
		ctx := context.Background()
		alice, bob := a.register("alice"), b.register("bob")
		carol := a.register("carol")
		bob.syncOnce()

		created, err := alice.cli.CreateRoom(ctx, &mautrix.ReqCreateRoom{
			Preset: "trusted_private_chat", IsDirect: true, Invite: []id.UserID{bob.id(), carol.id()}})
		if err != nil {
			t.Fatalf("createRoom: %v", err)
		}
		roomID := created.RoomID
		// The invite A holds is the one B countersigned.
		ev, err := a.HS.Rooms.CurrentStateEvent(ctx, string(alice.id()), string(roomID), "m.room.member", string(bob.id()))
		if err != nil || ev.Membership != "invite" {
			t.Fatalf("bob's membership on A: %+v, %v", ev, err)
		}
		if !containsSignatureOf(ev.JSON, b.Name) {
			t.Fatalf("bob's invite on A is not signed by %s: %s", b.Name, ev.JSON)
		}
		if m, _ := a.HS.Rooms.Membership(ctx, string(roomID), string(carol.id())); m != "invite" {
			t.Fatalf("carol (local) membership %q, want invite", m)
		}
		bob.await("the invite from createRoom", func() bool { return bob.invites[roomID] })

		if _, err := bob.cli.JoinRoomByID(ctx, roomID); err != nil {
			t.Fatalf("bob joining: %v", err)
		}
		bob.send(roomID, "joined from B")
		alice.await("bob's message", func() bool { return alice.sawMessage(roomID, bob.id(), "joined from B") })
	})
}

// containsSignatureOf reports whether an event's JSON carries a
// signature of server.
func containsSignatureOf(raw []byte, server string) bool {
	var ev struct {
		Signatures map[string]map[string]string `json:"signatures"`
	}
	if json.Unmarshal(raw, &ev) != nil {
		return false
	}
	return len(ev.Signatures[server]) > 0
}
