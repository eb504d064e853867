package roomserver

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"sync"
	"testing"

	"github.com/myelin-chat/myelin/storage"
	"github.com/myelin-chat/myelin/storage/storagetest"
)

// TestSendStreamPosIsStoredRow: the stream position a send answers with
// (and keeps in the event cache) is the event_nid of the row it stored,
// on both engines — on SQLite the event's insert reads it as the last
// insert rowid (insertEventQuery), also for writes that share one
// group commit, each in its own savepoint, with a refused write among
// them whose savepoint is rolled back.
func TestSendStreamPosIsStoredRow(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		s := newTestServer(t, db)
		ctx := context.Background()
		var rooms []string
		for range 3 {
			rooms = append(rooms, mustCreate(t, s, CreateRoomRequest{Creator: alice, RoomVersion: "12", Preset: PresetPublicChat}).RoomID)
		}
		type sent struct {
			resp *SendEventResponse
			err  error
		}
		const perSender = 10
		results := make([][]sent, 6)
		var wg sync.WaitGroup
		for w := range results {
			wg.Go(func() {
				for i := range perSender {
					req := SendEventRequest{RoomID: rooms[w%len(rooms)], Sender: alice, Type: "m.room.message",
						Content: json.RawMessage(fmt.Sprintf(`{"msgtype":"m.text","body":"%d/%d"}`, w, i)),
						TxnID:   &TxnID{DeviceID: "D", TxnID: fmt.Sprintf("t%d-%d", w, i)}}
					if w == 0 && i%3 == 2 {
						// A retry of the previous transaction ID: its write
						// is refused by the primary key and rolled back.
						req.TxnID.TxnID = fmt.Sprintf("t%d-%d", w, i-1)
					}
					resp, err := s.SendEvent(ctx, req)
					results[w] = append(results[w], sent{resp, err})
				}
			})
		}
		wg.Wait()
		seen := map[int64]string{}
		for w, list := range results {
			for i, r := range list {
				if r.err != nil {
					t.Fatalf("sender %d message %d: %v", w, i, r.err)
				}
				row, err := eventRowByID(ctx, db.Reader(), r.resp.EventID)
				if err != nil {
					t.Fatalf("sender %d message %d: %v", w, i, err)
				}
				if row.NID != r.resp.StreamPos {
					t.Errorf("sender %d message %d: answered stream position %d, stored row has event_nid %d", w, i, r.resp.StreamPos, row.NID)
				}
				if prev, dup := seen[row.NID]; dup && prev != r.resp.EventID {
					t.Errorf("event_nid %d answered for %s and %s", row.NID, prev, r.resp.EventID)
				}
				seen[row.NID] = r.resp.EventID
				if cached := s.events.getID(r.resp.EventID, math.MaxUint64); cached != nil && cached.row.NID != row.NID {
					t.Errorf("sender %d message %d: cached row has event_nid %d, stored %d", w, i, cached.row.NID, row.NID)
				}
			}
		}
		// 6 senders × 10 messages, sender 0's 3 retries answered with the
		// event their first request created.
		if want := 6*perSender - 3; len(seen) != want {
			t.Errorf("%d distinct events, want %d", len(seen), want)
		}
	})
}
