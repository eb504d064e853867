package pushserver_test

import (
	"context"
	"net/http"
	"testing"

	"github.com/myelin-chat/myelin/internal/testserver"
	"github.com/myelin-chat/myelin/storage"
)

// TestReceiptRowOfAnotherRoomReadsNothing: the push consumer moves a read
// marker only for a receipt whose event is in the receipt's room, on its
// own, whatever wrote the row. The HTTP handlers refuse such a receipt
// (clientapi TestReceiptForEventOfAnotherRoom), so the row is written
// directly, as an older binary (before those checks) could have left it:
// bob's m.read in room A naming a later event of room B must not mark
// A's message read. Spec: client-server-api, "Receipts" (the event
// acknowledged is one of {roomId}).
func TestReceiptRowOfAnotherRoomReadsNothing(t *testing.T) {
	testserver.ForEachEngine(t, pushConfig, func(t *testing.T, srv *testserver.Server) {
		alice, bob := register(t, srv, "alice"), register(t, srv, "bob")
		roomA, roomB := room(t, alice, bob), room(t, alice, bob)
		alice.text(t, roomA, "in A")
		inB := alice.text(t, roomB, "in B") // later than A's message
		bob.wantCounts(t, roomA, 1, 0)
		bob.wantCounts(t, roomB, 1, 0)

		err := srv.HS.DB.Write(context.Background(), func(tx storage.Tx) error {
			_, err := tx.Exec(context.Background(), `INSERT INTO receipts (room_id, user_id, receipt_type, thread_id, event_id, ts)
				VALUES ($1, $2, 'm.read', '', $3, 1)`, roomA, bob.id, inB)
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		// A valid receipt after it: once B reads as read, the consumer
		// has passed the row above too.
		bob.must(t, http.MethodPost, "/_matrix/client/v3/rooms/"+esc(roomB)+"/receipt/m.read/"+esc(inB), map[string]any{})
		bob.wantCounts(t, roomB, 0, 0)
		bob.wantCounts(t, roomA, 1, 0)
	})
}
