package roomserver

import (
	"context"
	"testing"

	"github.com/myelin-chat/myelin/storage"
	"github.com/myelin-chat/myelin/storage/storagetest"
)

// TestSnapshotHistoryVisibilityCache: the history visibility shared by
// every reader of a snapshot is cached per snapshot, never per room:
// after the room's visibility changes (joined, then world_readable,
// then an unknown value, which means shared; a visibility event is
// seen under the state before or after it), every event's snapshots
// answer from the cache what a server with empty caches reads from the
// database, and visibility decisions (checked twice, the second time
// from the cache) stay those of TestHistoryVisibility's rules.
// Spec: client-server-api, "Room History Visibility".
func TestSnapshotHistoryVisibilityCache(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		s := newTestServer(t, db)
		ctx := context.Background()
		room := mustCreate(t, s, CreateRoomRequest{Creator: alice, RoomVersion: "10", Preset: PresetPublicChat}).RoomID
		var ids []string
		ids = append(ids, mustSend(t, s, room, alice, "m.room.message", nil, `{"body":"shared"}`))
		ids = append(ids, mustSend(t, s, room, alice, "m.room.history_visibility", ptr(""), `{"history_visibility":"joined"}`))
		ids = append(ids, mustSend(t, s, room, alice, "m.room.message", nil, `{"body":"joined"}`))
		ids = append(ids, mustSend(t, s, room, alice, "m.room.history_visibility", ptr(""), `{"history_visibility":"world_readable"}`))
		ids = append(ids, mustSend(t, s, room, alice, "m.room.message", nil, `{"body":"world"}`))
		ids = append(ids, mustSend(t, s, room, alice, "m.room.history_visibility", ptr(""), `{"history_visibility":"sometimes"}`))
		ids = append(ids, mustSend(t, s, room, alice, "m.room.message", nil, `{"body":"unknown means shared"}`))
		want := map[string]bool{ids[0]: false, ids[1]: false, ids[2]: false, ids[3]: true, ids[4]: true, ids[5]: true, ids[6]: false}
		for round := 0; round < 2; round++ {
			for _, id := range ids {
				got, err := s.CanSee(ctx, charlie, id) // never joined
				if err != nil {
					t.Fatal(err)
				}
				if got != want[id] {
					t.Errorf("round %d: charlie sees %s: %v, want %v", round, id, got, want[id])
				}
			}
		}
		fresh := newTestServer(t, db)
		vis, freshVis := s.newVisibility(db.Reader(), charlie), fresh.newVisibility(db.Reader(), charlie)
		for _, id := range ids {
			e, version, err := s.loadByID(ctx, db.Reader(), id)
			if err != nil {
				t.Fatal(err)
			}
			for _, nid := range []int64{e.row.StateBefore, e.row.StateAfter} {
				cached, ok := s.snapHV.get(nid)
				if !ok {
					t.Errorf("snapshot %d of %s not cached", nid, id)
				}
				got, err := vis.historyVisibilityAt(ctx, version, nid)
				if err != nil {
					t.Fatal(err)
				}
				read, err := freshVis.historyVisibilityAt(ctx, version, nid)
				if err != nil {
					t.Fatal(err)
				}
				if got != read || cached != read {
					t.Errorf("snapshot %d of %s: cached %q, answered %q, read %q", nid, id, cached, got, read)
				}
			}
		}
	})
}
