package pushserver_test

import (
	"context"
	"net/http"
	"net/url"
	"testing"

	"github.com/myelin-chat/myelin/internal/testserver"
	"github.com/myelin-chat/myelin/pushserver"
	"github.com/myelin-chat/myelin/storage"
)

// TestCountsFromBeforeCountingInTx: a database upgraded from a version
// that counted in the consumer, with events the consumer had not
// reached, gets those events counted by the consumer after the upgrade
// (up to the recorded room_events_in_tx position), and events written
// since are counted once, in their own transaction. The upgrade is
// simulated: the notifications of three messages are deleted, the
// consumer's position set back before them and room_events_in_tx set to
// the head, as the first start of this version would have recorded it.
func TestCountsFromBeforeCountingInTx(t *testing.T) {
	testserver.ForEachEngine(t, pushConfig, func(t *testing.T, srv *testserver.Server) {
		ctx := context.Background()
		alice, bob := register(t, srv, "alice"), register(t, srv, "bob")
		roomID := room(t, alice, bob)
		before, err := srv.HS.Rooms.StreamPosition(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, body := range []string{"one", "two", "three"} {
			alice.text(t, roomID, body)
		}
		bob.wantCounts(t, roomID, 3, 0)
		head, err := srv.HS.Rooms.StreamPosition(ctx)
		if err != nil {
			t.Fatal(err)
		}
		err = srv.HS.DB.Write(ctx, func(tx storage.Tx) error {
			if _, err := tx.Exec(ctx, `DELETE FROM push_notifications WHERE stream_pos > $1`, before); err != nil {
				return err
			}
			// The summary as it would stand without those notifications
			// (migration 004 fills it from the rows left): bob had
			// nothing unread in the room before them.
			if _, err := tx.Exec(ctx, `DELETE FROM push_unread WHERE room_id = $1`, roomID); err != nil {
				return err
			}
			if _, err := tx.Exec(ctx, `UPDATE push_positions SET position = $1 WHERE stream = 'room_events'`, before); err != nil {
				return err
			}
			_, err := tx.Exec(ctx, `UPDATE push_positions SET position = $1 WHERE stream = 'room_events_in_tx'`, head)
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		bob.wantCounts(t, roomID, 0, 0)

		srv.Restart(t)
		for _, u := range []*user{alice, bob} {
			if u.cli.HomeserverURL, err = url.Parse(srv.URL); err != nil {
				t.Fatal(err)
			}
		}
		bob.wantCounts(t, roomID, 3, 0)
		alice.text(t, roomID, "four")
		bob.wantCounts(t, roomID, 4, 0)
	})
}

// TestLocalJoinsCounted: CountInTx counts a local user's join once its
// transaction commits (the consumer then looks for joins promptly, and
// otherwise spaces its passes); messages, leaves and a rejected join do
// not count.
func TestLocalJoinsCounted(t *testing.T) {
	testserver.ForEachEngine(t, pushConfig, func(t *testing.T, srv *testserver.Server) {
		push := srv.HS.Push
		alice, bob := register(t, srv, "alice"), register(t, srv, "bob")
		start := pushserver.LocalJoins(push)
		roomID := room(t, alice) // alice's join
		if got := pushserver.LocalJoins(push) - start; got != 1 {
			t.Fatalf("%d joins counted after creating a room, want 1", got)
		}
		alice.text(t, roomID, "hello")
		alice.text(t, roomID, "again")
		if got := pushserver.LocalJoins(push) - start; got != 1 {
			t.Fatalf("%d joins counted after two messages, want still 1", got)
		}
		// bob is not invited to this private room: his join is refused.
		if status, _ := bob.call(t, http.MethodPost, "/_matrix/client/v3/join/"+esc(roomID), map[string]any{}); status != http.StatusForbidden {
			t.Fatalf("bob's uninvited join: status %d, want 403", status)
		}
		if got := pushserver.LocalJoins(push) - start; got != 1 {
			t.Fatalf("%d joins counted after a refused join, want still 1", got)
		}
		alice.must(t, http.MethodPost, "/_matrix/client/v3/rooms/"+esc(roomID)+"/invite", map[string]any{"user_id": bob.id})
		bob.must(t, http.MethodPost, "/_matrix/client/v3/join/"+esc(roomID), map[string]any{})
		if got := pushserver.LocalJoins(push) - start; got != 2 {
			t.Fatalf("%d joins counted after bob's join, want 2", got)
		}
		bob.must(t, http.MethodPost, "/_matrix/client/v3/rooms/"+esc(roomID)+"/leave", map[string]any{})
		if got := pushserver.LocalJoins(push) - start; got != 2 {
			t.Fatalf("%d joins counted after bob's leave, want still 2", got)
		}
	})
}
