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
// binaries before session 18 left them — bob's invite to a room B now
// holds, where bob's own member event (his join) is committed — are
// deleted at the first start after migration 009, and only those: dave's
// row in the same room (no member event of his there) and bob's knock
// on a room B knows but no longer holds (he left it) are kept. The
// cleanup runs once: a stale row written after it stays.
func TestStalePendingRowsCleanedOnce(t *testing.T) {
	forEachEngine(t, func(t *testing.T, n *network) {
		ctx := context.Background()
		a, b := n.start(), n.start()
		alice, bob := a.register("alice"), b.register("bob")
		dave := b.user("dave")
		created, err := alice.cli.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "private_chat", Invite: []id.UserID{bob.id()}})
		if err != nil {
			t.Fatal(err)
		}
		held := string(created.RoomID)
		bob.await("the invite", func() bool { return bob.invites[created.RoomID] })
		if _, err := bob.cli.JoinRoom(ctx, held, &mautrix.ReqJoinRoom{Via: []string{a.Name}}); err != nil {
			t.Fatalf("bob joining: %v", err)
		}
		public := alice.publicAliasedRoom("lobby")
		if _, err := bob.cli.JoinRoom(ctx, string(public), &mautrix.ReqJoinRoom{Via: []string{a.Name}}); err != nil {
			t.Fatalf("bob joining the public room: %v", err)
		}
		if _, err := bob.cli.LeaveRoom(ctx, public); err != nil {
			t.Fatalf("bob leaving the public room: %v", err)
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
		row := func(userID, roomID, eventID, membership string) {
			exec(`INSERT INTO federation_remote_invites (user_id, room_id, event_id, room_version, event, invite_room_state,
				received_ts, stream_pos, membership, via_server) VALUES ($1, $2, $3, '12', '{}', '[]', 1, 0, $4, '')`,
				userID, roomID, eventID, membership)
		}
		has := func(userID, roomID string) bool {
			var count int
			if err := b.HS.DB.Reader().QueryRow(ctx, `SELECT COUNT(*) FROM federation_remote_invites WHERE user_id = $1 AND room_id = $2`,
				userID, roomID).Scan(&count); err != nil {
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
		// What an older binary left, and the migration's mark.
		row(string(bob.id()), held, "$old-invite", "invite")
		row(dave, held, "$dave-invite", "invite")
		row(string(bob.id()), string(public), "$bob-knock", "knock")
		exec(`INSERT INTO federation_pending_cleanup (id) VALUES (1)`)

		b.restart()
		eventually(t, "the cleanup to run", func() bool { return !due() })
		if has(string(bob.id()), held) {
			t.Errorf("bob's ended invite to %s is still pending", held)
		}
		if !has(dave, held) {
			t.Errorf("dave's row in %s (no member event of his there) was deleted", held)
		}
		if !has(string(bob.id()), string(public)) {
			t.Errorf("bob's knock on %s (a room B does not hold) was deleted", public)
		}

		row(string(bob.id()), held, "$older-invite", "invite")
		b.restart()
		if _, err := bob.cli.Whoami(ctx); err != nil { // B is up and started
			t.Fatal(err)
		}
		for range 10 { // the cleanup would run within this second
			if !has(string(bob.id()), held) {
				t.Fatalf("the cleanup ran again at a later start")
			}
			time.Sleep(100 * time.Millisecond)
		}
	})
}
