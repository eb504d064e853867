package federationapi_test

import (
	"context"
	"errors"
	"testing"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
)

// TestForgetEndsLeftPendingMembership: bob on B has four pending
// memberships of rooms only A holds, and each ends in a leave a
// different way: he rejects an invite (make_leave/send_leave), alice
// withdraws another (a kick over federation), he withdraws a knock and
// alice rejects another (a kick). Each leave is kept (membership leave,
// for /sync's rooms.leave), and /forget is then accepted. Forgetting the
// room ends the row: it is deleted in Forget's transaction, so that B
// keeps nothing for a room the user has left and forgotten.
//
// Before, the leave stayed in federation_remote_invites for ever: one
// row per room ever rejected, kept after the user forgot it.
// Spec: client-server-api, "Leaving rooms" (forgotten rooms "will never
// appear in the response to the /sync API").
func TestForgetEndsLeftPendingMembership(t *testing.T) {
	t.Parallel()
	forEachEngine(t, func(t *testing.T, n *network) {
		a, b := n.start(), n.start()
		ctx := context.Background()
		alice, bob := a.register("alice"), b.register("bob")
		invite := func() id.RoomID {
			t.Helper()
			created, err := alice.cli.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "private_chat", Invite: []id.UserID{bob.id()}})
			if err != nil {
				t.Fatal(err)
			}
			return created.RoomID
		}
		rejected, withdrawn := invite(), invite()
		knockWithdrawn, knockRejected := knockRoom(t, alice, "withdrawn knock"), knockRoom(t, alice, "rejected knock")
		for _, roomID := range []id.RoomID{knockWithdrawn, knockRejected} {
			if _, err := bob.cli.KnockRoom(ctx, roomID.String(), &mautrix.ReqKnockRoom{Via: []string{a.Name}}); err != nil {
				t.Fatalf("knocking on %s: %v", roomID, err)
			}
		}
		bob.await("the invites and the knocks", func() bool {
			return bob.invites[rejected] && bob.invites[withdrawn] && len(bob.knocks[knockWithdrawn]) > 0 && len(bob.knocks[knockRejected]) > 0
		})
		for _, roomID := range []id.RoomID{rejected, knockWithdrawn} {
			if _, err := bob.cli.LeaveRoom(ctx, roomID); err != nil {
				t.Fatalf("bob leaving %s: %v", roomID, err)
			}
		}
		for _, roomID := range []id.RoomID{withdrawn, knockRejected} {
			if _, err := alice.cli.KickUser(ctx, roomID, &mautrix.ReqKickUser{UserID: bob.id(), Reason: "no"}); err != nil {
				t.Fatalf("alice kicking bob from %s: %v", roomID, err)
			}
		}
		all := map[id.RoomID]string{rejected: "rejected invite", withdrawn: "withdrawn invite",
			knockWithdrawn: "withdrawn knock", knockRejected: "rejected knock"}
		bob.await("the four leaves", func() bool {
			for roomID := range all {
				if !bob.left[roomID] {
					return false
				}
			}
			return true
		})
		for roomID, what := range all {
			if m := pendingMembership(t, b, bob, roomID); m != "leave" {
				t.Fatalf("%s: bob's pending membership of %s on B is %q, want leave", what, roomID, m)
			}
			if _, err := bob.cli.ForgetRoom(ctx, roomID); err != nil {
				t.Fatalf("%s: forgetting %s: %v", what, roomID, err)
			}
			if !forgotten(t, b, bob, roomID) {
				t.Fatalf("%s: %s is not recorded as forgotten", what, roomID)
			}
			if m := pendingMembership(t, b, bob, roomID); m != "" {
				t.Errorf("%s: B still keeps bob's pending membership %q of %s after he forgot it", what, m, roomID)
			}
		}
		if _, ok := initialSync(t, bob, includeLeave).Rooms.Leave[rejected]; ok {
			t.Errorf("an initial sync with include_leave shows the forgotten %s", rejected)
		}
	})
}

// TestLocalJoinEndsPendingInvite: alice on A invites bob on B to a room
// only A holds (B keeps the invite as pending). charlie on B then joins
// the room, so that B holds it, and bob joins it through B's own
// roomserver (no send_join). bob's join ends the pending invite in its
// commit. When bob and charlie have both left, so that B no longer
// holds the room, bob can forget it.
//
// Before, only a join through send_join deleted the pending invite: a
// join of a room held here left it, and once no local user was in the
// room again it counted as pending, so /forget was refused with 400
// although bob had joined and left.
// Spec: client-server-api, "POST /_matrix/client/v3/rooms/{roomId}/forget"
// (400 only when "the user has not left the room").
func TestLocalJoinEndsPendingInvite(t *testing.T) {
	t.Parallel()
	forEachEngine(t, func(t *testing.T, n *network) {
		a, b := n.start(), n.start()
		a.HS.Federation.ServeFullStateJoins(true) // charlie's join: B then holds the whole room
		ctx := context.Background()
		alice, bob, charlie := a.register("alice"), b.register("bob"), b.register("charlie")
		created, err := alice.cli.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "public_chat", Invite: []id.UserID{bob.id()}})
		if err != nil {
			t.Fatal(err)
		}
		roomID := created.RoomID
		bob.await("the invite", func() bool { return bob.invites[roomID] })
		if m := pendingMembership(t, b, bob, roomID); m != "invite" {
			t.Fatalf("bob's pending membership on B: %q, want invite", m)
		}
		if _, err := charlie.cli.JoinRoom(ctx, roomID.String(), &mautrix.ReqJoinRoom{Via: []string{a.Name}}); err != nil {
			t.Fatalf("charlie joining through A: %v", err)
		}
		if m, _ := b.HS.Rooms.Membership(ctx, string(roomID), string(bob.id())); m != "invite" {
			t.Fatalf("bob's membership in the room B now holds: %q, want invite", m)
		}
		if _, err := bob.cli.JoinRoom(ctx, roomID.String(), nil); err != nil {
			t.Fatalf("bob joining the room B holds: %v", err)
		}
		if m, _ := b.HS.Rooms.Membership(ctx, string(roomID), string(bob.id())); m != "join" {
			t.Fatalf("bob's membership on B after his join: %q, want join", m)
		}
		if m := pendingMembership(t, b, bob, roomID); m != "" {
			t.Errorf("B still keeps bob's pending membership %q after he joined", m)
		}
		for _, u := range []*syncer{bob, charlie} {
			if _, err := u.cli.LeaveRoom(ctx, roomID); err != nil {
				t.Fatalf("%s leaving: %v", u.id(), err)
			}
		}
		if _, err := bob.cli.ForgetRoom(ctx, roomID); err != nil {
			t.Fatalf("bob forgetting the room he joined and left: %v", err)
		}
		if !forgotten(t, b, bob, roomID) {
			t.Fatalf("%s is not recorded as forgotten", roomID)
		}
	})
}

// TestRemoteJoinEndsPendingInviteInItsCommit: alice on A invites bob on
// B to a room only A holds, then makes it public; bob joins through A
// (make_join/send_join, B imports the room) and B stops (a fault
// injected) in the join's commit, after the room is written and before
// the pending invite is deleted. After a restart of B both happened or
// neither did: never bob joined on B with the invite still pending, which
// would count as pending again once no local user is in the room (and
// refuse bob's /forget). bob then joins again and the invite is gone.
//
// Before, the invite was deleted in a transaction of its own after the
// join's, whose failure was only logged.
func TestRemoteJoinEndsPendingInviteInItsCommit(t *testing.T) {
	t.Parallel()
	forEachEngine(t, func(t *testing.T, n *network) {
		a, b := n.start(), n.start()
		ctx := context.Background()
		alice, bob := a.register("alice"), b.register("bob")
		created, err := alice.cli.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "private_chat", Invite: []id.UserID{bob.id()}})
		if err != nil {
			t.Fatal(err)
		}
		roomID := created.RoomID
		bob.await("the invite", func() bool { return bob.invites[roomID] })
		if _, err := alice.cli.SendStateEvent(ctx, roomID, event.StateJoinRules, "", map[string]any{"join_rule": "public"}); err != nil {
			t.Fatal(err)
		}

		faults := 0
		b.HS.Federation.BeforeEndPending(func(userID, room string) error {
			if userID != string(bob.id()) || room != string(roomID) {
				return nil
			}
			faults++
			return errors.New("injected crash in the join's commit")
		})
		_, err = bob.cli.JoinRoom(ctx, roomID.String(), &mautrix.ReqJoinRoom{Via: []string{a.Name}})
		if faults == 0 {
			t.Fatalf("bob's join did not reach the injected fault (join: %v)", err)
		}
		b.restart()

		m, _ := b.HS.Rooms.Membership(ctx, string(roomID), string(bob.id()))
		pending := pendingMembership(t, b, bob, roomID)
		if m == "join" && pending == "invite" {
			t.Fatalf("after the restart bob is joined on B and his invite is still pending")
		}
		if m == "join" || pending != "invite" {
			t.Fatalf("after the restart: membership %q, pending %q; want the join not stored and the invite still pending", m, pending)
		}

		eventually(t, "bob's join through A", func() bool {
			_, err := bob.cli.JoinRoom(ctx, roomID.String(), &mautrix.ReqJoinRoom{Via: []string{a.Name}})
			return err == nil
		})
		if m, _ := b.HS.Rooms.Membership(ctx, string(roomID), string(bob.id())); m != "join" {
			t.Fatalf("bob's membership on B after his join: %q, want join", m)
		}
		if pending := pendingMembership(t, b, bob, roomID); pending != "" {
			t.Fatalf("B still keeps bob's pending membership %q after his join", pending)
		}
	})
}

// TestDeactivationEndsPendingMemberships: bob on B is invited by alice
// to a room only A holds and knocks on another; dave on B likewise.
// `myelin user deactivate` (Accounts.Deactivate) queues each account's
// leaves, and B restarts before it runs them: its first pass then
// rejects bob's invite and withdraws his knock through A (A sees bob
// leave both rooms) and ends both rows. dave's account is deactivated
// the same way while A is down: his leaves cannot reach A, but his rows
// end all the same and his account is not left queued for ever.
//
// Before, the deactivation leaves covered only the rooms held here: the
// pending invites and knocks of a deactivated account were never
// answered nor deleted.
// Spec: client-server-api, "POST /_matrix/client/v3/account/deactivate"
// (the server leaves the rooms as Synapse does: deactivation.go).
func TestDeactivationEndsPendingMemberships(t *testing.T) {
	t.Parallel()
	forEachEngine(t, func(t *testing.T, n *network) {
		a, b := n.start(), n.start()
		ctx := context.Background()
		alice, bob, dave := a.register("alice"), b.register("bob"), b.register("dave")
		pendingOf := func(u *syncer) (invited, knocked id.RoomID) {
			t.Helper()
			created, err := alice.cli.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "private_chat", Invite: []id.UserID{u.id()}})
			if err != nil {
				t.Fatal(err)
			}
			invited, knocked = created.RoomID, knockRoom(t, alice, "knock "+u.id().String())
			if _, err := u.cli.KnockRoom(ctx, knocked.String(), &mautrix.ReqKnockRoom{Via: []string{a.Name}}); err != nil {
				t.Fatalf("%s knocking: %v", u.id(), err)
			}
			u.await("the invite and the knock", func() bool { return u.invites[invited] && len(u.knocks[knocked]) > 0 })
			return invited, knocked
		}
		bobInvited, bobKnocked := pendingOf(bob)
		daveInvited, daveKnocked := pendingOf(dave)
		accountQueued := func(local string) bool {
			t.Helper()
			var n int
			err := b.HS.DB.Reader().QueryRow(ctx, `SELECT COUNT(*) FROM deactivation_leaves WHERE localpart = $1`, local).Scan(&n)
			if err != nil {
				t.Fatal(err)
			}
			return n > 0
		}

		if err := b.HS.ClientAPI.Accounts().Deactivate(ctx, "bob"); err != nil {
			t.Fatal(err)
		}
		if !accountQueued("bob") {
			t.Fatal("bob's deactivation queued no leaves")
		}
		b.restart()
		eventually(t, "B to end bob's pending invite and knock", func() bool {
			return pendingMembership(t, b, bob, bobInvited) == "" && pendingMembership(t, b, bob, bobKnocked) == "" && !accountQueued("bob")
		})
		for _, roomID := range []id.RoomID{bobInvited, bobKnocked} {
			eventually(t, "A to see bob leave "+roomID.String(), func() bool {
				m, _ := a.HS.Rooms.Membership(ctx, string(roomID), string(bob.id()))
				return m == "leave"
			})
		}

		a.stop()
		if err := b.HS.ClientAPI.Accounts().Deactivate(ctx, "dave"); err != nil {
			t.Fatal(err)
		}
		b.restart()
		eventually(t, "B to end dave's pending invite and knock with A down", func() bool {
			return pendingMembership(t, b, dave, daveInvited) == "" && pendingMembership(t, b, dave, daveKnocked) == "" && !accountQueued("dave")
		})
	})
}
