package roomserver

import (
	"context"
	"testing"

	"github.com/myelin-chat/myelin/internal/mxerr"
	"github.com/myelin-chat/myelin/storage"
	"github.com/myelin-chat/myelin/storage/storagetest"
)

// TestRoomVersionCache: the sync reads that need a room's version
// (current state, lazy-loaded members, memberships at events) keep the
// version each room's committed row holds, per room; an unknown room is
// still NotFound and leaves nothing cached.
func TestRoomVersionCache(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		ctx := context.Background()
		s := newTestServer(t, db)
		rooms := map[string]string{}
		for _, v := range []string{"10", "12"} {
			r := mustCreate(t, s, CreateRoomRequest{Creator: alice, RoomVersion: v, Preset: PresetPublicChat})
			rooms[v] = r.RoomID
		}
		for round := 0; round < 2; round++ { // the second round answers from the cache
			for v, roomID := range rooms {
				evs, err := s.IndexedStateKeys(ctx, roomID, "m.room.member", []string{alice})
				if err != nil || len(evs) != 1 || evs[0].RoomID != roomID {
					t.Fatalf("room v%s: IndexedStateKeys = %v, %v", v, evs, err)
				}
				m, err := s.MembershipsAt(ctx, alice, []string{evs[0].EventID})
				if err != nil || m[evs[0].EventID] != "join" {
					t.Fatalf("room v%s: MembershipsAt = %v, %v", v, m, err)
				}
				got, _ := s.versions.get(roomID)
				if got != v {
					t.Fatalf("cached version of a v%s room: %q", v, got)
				}
			}
		}
		_, err := s.IndexedStateKeys(ctx, "!unknown:test.local", "m.room.member", []string{alice})
		wantCode(t, err, mxerr.NotFound)
		_, cached := s.versions.get("!unknown:test.local")
		s.versions.mu.Lock()
		n := len(s.versions.byID)
		s.versions.mu.Unlock()
		if cached || n != 2 {
			t.Fatalf("unknown room cached (%v), %d entries, want 2", cached, n)
		}
	})
}
