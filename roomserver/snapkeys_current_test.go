package roomserver

import (
	"context"
	"testing"

	"github.com/myelin-chat/myelin/storage"
	"github.com/myelin-chat/myelin/storage/storagetest"
)

// TestSnapshotKeysNotTakenFromMovedCurrentState: a reader outside the
// room's lock holds a room row whose current snapshot a write has since
// replaced. What stateEventsFor remembers for that (old) snapshot must be
// the old snapshot's entry, not the newer current state's, or every later
// auth and visibility check on that snapshot would see the wrong event.
func TestSnapshotKeysNotTakenFromMovedCurrentState(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		s := newTestServer(t, db)
		ctx := context.Background()
		roomID := mustCreate(t, s, CreateRoomRequest{Creator: alice, Preset: "public_chat"}).RoomID
		oldTopic := mustSend(t, s, roomID, alice, "m.room.topic", ptr(""), `{"topic":"old"}`)
		old, err := loadRoom(ctx, db.Reader(), roomID)
		if err != nil {
			t.Fatal(err)
		}
		newTopic := mustSend(t, s, roomID, alice, "m.room.topic", ptr(""), `{"topic":"new"}`)
		key := []tuple{{Type: "m.room.topic", StateKey: ""}}
		for round := range 2 { // the second round answers from the cache
			got, err := s.stateEventsFor(ctx, db.Reader(), nil, old, old.CurrentSnapshot, nil, key)
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != 1 || got[0].EventID() != oldTopic {
				var ids []string
				for _, e := range got {
					ids = append(ids, e.EventID())
				}
				t.Fatalf("round %d: snapshot %d's topic = %v, want %s (not the later %s)", round, old.CurrentSnapshot, ids, oldTopic, newTopic)
			}
		}
	})
}
