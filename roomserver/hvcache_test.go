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

// TestVisibilityAtSharedHistoryVisibility: visibility.at (a user's
// history visibility and membership at a snapshot, asked for every
// timeline event of every woken listener) takes the history visibility
// from the cache shared by all users, filling it, and answers what a
// server with empty caches answers, membership included.
// Spec: client-server-api, "Room History Visibility".
func TestVisibilityAtSharedHistoryVisibility(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		s := newTestServer(t, db)
		ctx := context.Background()
		room := mustCreate(t, s, CreateRoomRequest{Creator: alice, RoomVersion: "10", Preset: PresetPublicChat}).RoomID
		type step struct {
			id            string
			hv, bob, carl string // want: history visibility, bob's and charlie's memberships after it
		}
		steps := []step{
			{mustSend(t, s, room, bob, "m.room.member", ptr(bob), `{"membership":"join"}`), "shared", "join", ""},
			{mustSend(t, s, room, alice, "m.room.message", nil, `{"body":"one"}`), "shared", "join", ""},
			{mustSend(t, s, room, alice, "m.room.history_visibility", ptr(""), `{"history_visibility":"joined"}`), "joined", "join", ""},
			{mustSend(t, s, room, bob, "m.room.member", ptr(bob), `{"membership":"leave"}`), "joined", "leave", ""},
			{mustSend(t, s, room, alice, "m.room.history_visibility", ptr(""), `{"history_visibility":"sometimes"}`), "shared", "leave", ""},
			{mustSend(t, s, room, alice, "m.room.message", nil, `{"body":"two"}`), "shared", "leave", ""},
		}
		s.snapHV = newSnapshotHVCache(100) // as after a restart
		for _, st := range steps {
			e, version, err := s.loadByID(ctx, db.Reader(), st.id)
			if err != nil {
				t.Fatal(err)
			}
			nid := e.row.StateAfter
			for _, who := range []struct{ user, want string }{{bob, st.bob}, {charlie, st.carl}} {
				hv, m, err := s.newVisibility(db.Reader(), who.user).at(ctx, version, nid)
				if err != nil {
					t.Fatal(err)
				}
				if hv != st.hv || m != who.want {
					t.Errorf("after %s, %s: at = %q, %q; want %q, %q", st.id, who.user, hv, m, st.hv, who.want)
				}
				if cached, ok := s.snapHV.get(nid); !ok || cached != st.hv {
					t.Errorf("after %s: the shared cache holds %q, %v; want %q", st.id, cached, ok, st.hv)
				}
			}
			fresh := newTestServer(t, db)
			hv, m, err := fresh.newVisibility(db.Reader(), bob).at(ctx, version, nid)
			if err != nil || hv != st.hv || m != st.bob {
				t.Errorf("after %s, empty caches: at = %q, %q, %v; want %q, %q", st.id, hv, m, err, st.hv, st.bob)
			}
		}
	})
}
