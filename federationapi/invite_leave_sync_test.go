package federationapi_test

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
)

// includeLeave is an inline filter asking /sync for left rooms.
const includeLeave = `{"room":{"include_leave":true}}`

// TestEndedRemoteInvitesInInitialSync: bob on B is invited by alice to
// two rooms only A holds; alice withdraws one invite (a kick of bob) and
// bob rejects the other. Once B has stored both leaves, an initial /sync
// with include_leave shows both rooms in rooms.leave with their leave
// events, as it does for a room left that this server holds; without
// include_leave it shows neither. A full_state /sync from a token taken
// before the leaves shows them without include_leave (news since the
// token). After bob forgets them, no initial sync shows them; once
// alice invites him again and the new invites end the same way, an
// initial sync with include_leave shows them again (the re-invite
// cleared the forgotten mark).
//
// Before, a remote invite that ended in a leave reached only incremental
// syncs, so Complement's TestFederationRoomsInvite "Inviter user can
// rescind invite over federation" failed whenever the kick reached B
// before the test's first /sync with include_leave (1 in 4 under load).
// Spec: client-server-api, "Leaving rooms" (include_leave; forgotten
// rooms never appear in /sync).
func TestEndedRemoteInvitesInInitialSync(t *testing.T) {
	t.Parallel()
	forEachEngine(t, func(t *testing.T, n *network) {
		a, b := n.start(), n.start()
		ctx := context.Background()
		alice, bob := a.register("alice"), b.register("bob")
		var rooms [2]id.RoomID
		for i := range rooms {
			created, err := alice.cli.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "private_chat", Invite: []id.UserID{bob.id()}})
			if err != nil {
				t.Fatal(err)
			}
			rooms[i] = created.RoomID
		}
		withdrawn, rejected := rooms[0], rooms[1]
		bob.await("both invites", func() bool { return bob.invites[withdrawn] && bob.invites[rejected] })
		before := bob.since
		if _, err := alice.cli.KickUser(ctx, withdrawn, &mautrix.ReqKickUser{UserID: bob.id(), Reason: "testing"}); err != nil {
			t.Fatalf("withdrawing the invite: %v", err)
		}
		if _, err := bob.cli.LeaveRoom(ctx, rejected); err != nil {
			t.Fatalf("rejecting the invite: %v", err)
		}
		bob.await("both leaves", func() bool { return bob.left[withdrawn] && bob.left[rejected] })

		sync := func(since, filter string, fullState bool) *mautrix.RespSync {
			t.Helper()
			sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			defer cancel()
			resp, err := bob.cli.SyncRequest(sctx, 0, since, filter, fullState, event.PresenceOnline)
			if err != nil {
				t.Fatalf("sync: %v", err)
			}
			return resp
		}
		wantLeft := func(what string, resp *mautrix.RespSync, want bool) {
			t.Helper()
			for roomID, sender := range map[id.RoomID]id.UserID{withdrawn: alice.id(), rejected: bob.id()} {
				if _, invited := resp.Rooms.Invite[roomID]; invited {
					t.Errorf("%s: %s is still in rooms.invite", what, roomID)
				}
				left, ok := resp.Rooms.Leave[roomID]
				if ok != want {
					t.Errorf("%s: %s in rooms.leave is %v, want %v", what, roomID, ok, want)
					continue
				}
				if !want {
					continue
				}
				var found bool
				for _, e := range left.Timeline.Events {
					var c struct {
						Membership string `json:"membership"`
					}
					_ = json.Unmarshal(e.Content.VeryRaw, &c)
					found = found || (e.Type == event.StateMember && e.GetStateKey() == string(bob.id()) &&
						e.Sender == sender && c.Membership == "leave")
				}
				if !found {
					t.Errorf("%s: %s in rooms.leave has no leave of %s sent by %s: %v", what, roomID, bob.id(), sender, left.Timeline.Events)
				}
			}
		}
		wantLeft("initial sync with include_leave", sync("", includeLeave, false), true)
		wantLeft("initial sync", sync("", "", false), false)
		wantLeft("full_state sync from before the leaves", sync(before, "", true), true)

		for _, roomID := range rooms {
			if _, err := bob.cli.ForgetRoom(ctx, roomID); err != nil {
				t.Fatalf("forgetting %s: %v", roomID, err)
			}
		}
		wantLeft("initial sync with include_leave after forgetting", sync("", includeLeave, false), false)
		wantLeft("full_state sync with include_leave after forgetting", sync(before, includeLeave, true), false)

		// Re-invited after forgetting: the rooms are no longer forgotten
		// (Spec: client-server-api, "Leaving rooms": forgotten rooms never
		// appear in /sync "until the user re-joins, is re-invited, or
		// knocks"), so the leaves ending the new invites show again.
		// Before, the forgotten mark stayed and hid them.
		for _, roomID := range rooms {
			delete(bob.left, roomID)
			if _, err := alice.cli.InviteUser(ctx, roomID, &mautrix.ReqInviteUser{UserID: bob.id()}); err != nil {
				t.Fatalf("re-inviting to %s: %v", roomID, err)
			}
		}
		bob.await("both new invites", func() bool { return bob.invites[withdrawn] && bob.invites[rejected] })
		if _, err := alice.cli.KickUser(ctx, withdrawn, &mautrix.ReqKickUser{UserID: bob.id(), Reason: "again"}); err != nil {
			t.Fatalf("withdrawing the new invite: %v", err)
		}
		if _, err := bob.cli.LeaveRoom(ctx, rejected); err != nil {
			t.Fatalf("rejecting the new invite: %v", err)
		}
		bob.await("both new leaves", func() bool { return bob.left[withdrawn] && bob.left[rejected] })
		wantLeft("initial sync with include_leave after a re-invite ended", sync("", includeLeave, false), true)
	})
}
