package federationapi_test

import (
	"context"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/id"

	"github.com/myelin-chat/myelin/storage"
)

// TestStalePendingRowsCleanedOnce: rows of federation_remote_invites as
// binaries before session 18 left them, in a room B now holds (bob is
// joined), are deleted at the first start after migration 009 only when
// the user's current member event was built on the row's event: bob's
// invite, which his join followed, goes; dave's invite that is still his
// current membership stays, and so does carol's row for an invite newer
// than her current membership (a leave the state holds). The cleanup
// runs once: a stale row written after it stays.
func TestStalePendingRowsCleanedOnce(t *testing.T) {
	t.Parallel()
	forEachEngine(t, func(t *testing.T, n *network) {
		ctx := context.Background()
		a, b := n.start(), n.start()
		alice, bob := a.register("alice"), b.register("bob")
		carol, dave := b.user("carol"), b.user("dave")
		created, err := alice.cli.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "private_chat", Invite: []id.UserID{bob.id()}})
		if err != nil {
			t.Fatal(err)
		}
		room := string(created.RoomID)
		bob.await("the invite", func() bool { return bob.invites[created.RoomID] })
		var bobInvite string
		if err := b.HS.DB.Reader().QueryRow(ctx, `SELECT event_id FROM federation_remote_invites WHERE user_id = $1 AND room_id = $2`,
			string(bob.id()), room).Scan(&bobInvite); err != nil {
			t.Fatal(err)
		}
		if _, err := bob.cli.JoinRoom(ctx, room, &mautrix.ReqJoinRoom{Via: []string{a.Name}}); err != nil {
			t.Fatalf("bob joining: %v", err)
		}
		for _, u := range []string{carol, dave} {
			if _, err := alice.cli.InviteUser(ctx, created.RoomID, &mautrix.ReqInviteUser{UserID: id.UserID(u)}); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := alice.cli.KickUser(ctx, created.RoomID, &mautrix.ReqKickUser{UserID: id.UserID(carol)}); err != nil {
			t.Fatal(err)
		}
		member := func(userID string) (eventID, membership string) {
			err := b.HS.DB.Reader().QueryRow(ctx, `SELECT event_id, COALESCE(membership, '') FROM roomserver_current_state
				WHERE room_id = $1 AND type = 'm.room.member' AND state_key = $2`, room, userID).Scan(&eventID, &membership)
			if err != nil && !storage.IsNoRows(err) {
				t.Fatal(err)
			}
			return eventID, membership
		}
		eventually(t, "B to see dave invited and carol's invite withdrawn", func() bool {
			_, dm := member(dave)
			_, cm := member(carol)
			return dm == "invite" && cm == "leave"
		})
		daveInvite, _ := member(dave)

		exec := func(query string, args ...any) {
			t.Helper()
			if err := b.HS.DB.Write(ctx, func(tx storage.Tx) error {
				_, err := tx.Exec(ctx, query, args...)
				return err
			}); err != nil {
				t.Fatal(err)
			}
		}
		row := func(userID, eventID, membership string) {
			exec(`INSERT INTO federation_remote_invites (user_id, room_id, event_id, room_version, event, invite_room_state,
				received_ts, stream_pos, membership, via_server) VALUES ($1, $2, $3, '12', '{}', '[]', 1, 0, $4, '')`,
				userID, room, eventID, membership)
		}
		has := func(userID string) bool {
			var count int
			if err := b.HS.DB.Reader().QueryRow(ctx, `SELECT COUNT(*) FROM federation_remote_invites WHERE user_id = $1 AND room_id = $2`,
				userID, room).Scan(&count); err != nil {
				t.Fatal(err)
			}
			return count == 1
		}
		due := func() bool {
			var count int
			if err := b.HS.DB.Reader().QueryRow(ctx, `SELECT COUNT(*) FROM federation_pending_cleanup`).Scan(&count); err != nil {
				t.Fatal(err)
			}
			return count > 0
		}
		if due() {
			t.Fatal("the cleanup is still due after B's start")
		}
		if has(string(bob.id())) {
			t.Fatal("bob's join did not end his pending invite")
		}
		// What an older binary left, and the migration's mark.
		row(string(bob.id()), bobInvite, "invite")
		row(dave, daveInvite, "invite")
		row(carol, "$a-later-invite", "invite")
		exec(`INSERT INTO federation_pending_cleanup (id) VALUES (1)`)
		// /sync never listed bob's stale row as an invite: the room is
		// one he has a membership of here (syncapi addRemoteInvites).
		syncShows := func() (invited, joined bool) {
			t.Helper()
			resp, err := bob.cli.FullSyncRequest(ctx, mautrix.ReqSync{})
			if err != nil {
				t.Fatal(err)
			}
			_, invited = resp.Rooms.Invite[created.RoomID]
			_, joined = resp.Rooms.Join[created.RoomID]
			return invited, joined
		}
		if invited, joined := syncShows(); invited || !joined {
			t.Fatalf("before the cleanup bob's /sync: invited %v, joined %v", invited, joined)
		}

		b.restart()
		eventually(t, "the cleanup to run", func() bool { return !due() })
		if has(string(bob.id())) {
			t.Errorf("bob's invite, which his join followed, is still pending")
		}
		if !has(dave) {
			t.Errorf("dave's invite, his current membership, was deleted")
		}
		if !has(carol) {
			t.Errorf("carol's invite newer than her current membership was deleted")
		}
		if invited, joined := syncShows(); invited || !joined {
			t.Fatalf("after the cleanup bob's /sync: invited %v, joined %v", invited, joined)
		}

		row(string(bob.id()), bobInvite, "invite")
		b.restart()
		if _, err := bob.cli.Whoami(ctx); err != nil { // B is up and started
			t.Fatal(err)
		}
		for range 10 { // the cleanup would run within this second
			if !has(string(bob.id())) {
				t.Fatalf("the cleanup ran again at a later start")
			}
			time.Sleep(100 * time.Millisecond)
		}
	})
}

// TestStalePendingRowKeptWhilePartial: bob's pending invite, which his
// join followed, is kept while B holds the room with partial state (its
// state is not yet the room's), and removed once the state is full.
func TestStalePendingRowKeptWhilePartial(t *testing.T) {
	t.Parallel()
	forEachEngine(t, func(t *testing.T, n *network) {
		ctx := context.Background()
		a, b := n.start(), n.start()
		alice, bob := a.register("alice"), b.register("bob")
		roomID := publicRoom(t, a, string(alice.id()))
		if _, err := alice.cli.InviteUser(ctx, id.RoomID(roomID), &mautrix.ReqInviteUser{UserID: bob.id()}); err != nil {
			t.Fatal(err)
		}
		bob.await("the invite", func() bool { return bob.invites[id.RoomID(roomID)] })
		var invite string
		if err := b.HS.DB.Reader().QueryRow(ctx, `SELECT event_id FROM federation_remote_invites WHERE user_id = $1 AND room_id = $2`,
			string(bob.id()), roomID).Scan(&invite); err != nil {
			t.Fatal(err)
		}
		release := make(chan struct{})
		b.HS.Federation.HoldResyncs(release)
		if _, err := b.HS.Federation.JoinRemote(ctx, roomID, string(bob.id()), []string{a.Name}); err != nil {
			t.Fatal(err)
		}
		if partial, err := b.HS.Rooms.IsPartialState(ctx, roomID); err != nil || !partial {
			t.Fatalf("B's room partial = %v, %v; want partial", partial, err)
		}
		exec := func(query string, args ...any) {
			t.Helper()
			if err := b.HS.DB.Write(ctx, func(tx storage.Tx) error {
				_, err := tx.Exec(ctx, query, args...)
				return err
			}); err != nil {
				t.Fatal(err)
			}
		}
		has := func() bool {
			var count int
			if err := b.HS.DB.Reader().QueryRow(ctx, `SELECT COUNT(*) FROM federation_remote_invites WHERE user_id = $1 AND room_id = $2`,
				string(bob.id()), roomID).Scan(&count); err != nil {
				t.Fatal(err)
			}
			return count == 1
		}
		exec(`INSERT INTO federation_remote_invites (user_id, room_id, event_id, room_version, event, invite_room_state,
			received_ts, stream_pos, membership, via_server) VALUES ($1, $2, $3, '12', '{}', '[]', 1, 0, 'invite', '')`,
			string(bob.id()), roomID, invite)
		exec(`INSERT INTO federation_pending_cleanup (id) VALUES (1)`)
		if err := b.HS.Federation.CleanStalePending(ctx); err != nil {
			t.Fatal(err)
		}
		if !has() {
			t.Fatal("bob's row was deleted while the room's state is partial")
		}
		close(release)
		if err := b.HS.Rooms.AwaitFullState(ctx, roomID); err != nil {
			t.Fatal(err)
		}
		exec(`INSERT INTO federation_pending_cleanup (id) VALUES (1)`)
		if err := b.HS.Federation.CleanStalePending(ctx); err != nil {
			t.Fatal(err)
		}
		if has() {
			t.Fatal("bob's row, which his join followed, is kept with the room's state full")
		}
	})
}
