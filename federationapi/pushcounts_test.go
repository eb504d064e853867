package federationapi_test

import (
	"context"
	"fmt"
	"testing"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/id"
)

// TestFederatedCountsNotBackfill: unread counts are written with each new
// timeline event (pushserver.CountInTx), for events received over
// federation too, but never for history: bob on B joins alice's room on
// A, which has 5 messages from before; paginating /messages backwards
// backfills them from A, and bob's count on B stays 0. A new message
// from alice then arrives over federation and counts 1.
func TestFederatedCountsNotBackfill(t *testing.T) {
	t.Parallel()
	forEachEngine(t, func(t *testing.T, n *network) {
		ctx := context.Background()
		a, b := n.start(), n.start()
		alice, bob := a.register("alice"), b.register("bob")
		roomID := alice.publicAliasedRoom("counted")
		for i := 0; i < 5; i++ {
			alice.send(roomID, fmt.Sprintf("old message %d", i))
		}
		if _, err := bob.cli.JoinRoom(ctx, "#counted:"+a.Name, nil); err != nil {
			t.Fatalf("bob joining: %v", err)
		}
		counts := func() (int, int) {
			t.Helper()
			resp, err := bob.cli.FullSyncRequest(ctx, mautrix.ReqSync{})
			if err != nil {
				t.Fatalf("/sync on B: %v", err)
			}
			room := resp.Rooms.Join[id.RoomID(roomID)]
			if room == nil || room.UnreadNotifications == nil {
				t.Fatalf("/sync on B: no unread_notifications for the room")
			}
			return room.UnreadNotifications.NotificationCount, room.UnreadNotifications.HighlightCount
		}
		from, old := "", 0
		for page := 0; page < 10; page++ {
			resp, err := bob.cli.Messages(ctx, id.RoomID(roomID), from, "", mautrix.DirectionBackward, nil, 3)
			if err != nil {
				t.Fatalf("/messages on B: %v", err)
			}
			for _, ev := range resp.Chunk {
				if ev.Type.Type == "m.room.message" {
					old++
				}
			}
			if resp.End == "" {
				break
			}
			from = resp.End
		}
		if old != 5 {
			t.Fatalf("bob paginated %d old messages, want 5", old)
		}
		// B's /sync leaves a room out until its partial-state join is
		// resynced (syncapi/joined.go); on a loaded machine the resync may
		// outlast the pagination.
		eventually(t, "B to resync the room", func() bool {
			partial, err := b.HS.Rooms.IsPartialState(ctx, string(roomID))
			return err == nil && !partial
		})
		if n, h := counts(); n != 0 || h != 0 {
			t.Fatalf("after backfill: counts %d/%d, want 0/0", n, h)
		}
		alice.send(roomID, "new message")
		bob.await("the new message", func() bool { return bob.sawMessage(roomID, alice.id(), "new message") })
		if n, h := counts(); n != 1 || h != 0 {
			t.Fatalf("after a new federated message: counts %d/%d, want 1/0", n, h)
		}
	})
}
