package roomserver

import (
	"bytes"
	"context"
	"math"
	"testing"
	"unsafe"

	"github.com/myelin-chat/myelin/storage"
	"github.com/myelin-chat/myelin/storage/storagetest"
)

// TestEventReadsShareCachedJSON: two reads of one cached event hand out the
// same JSON bytes (the parsed event's), equal to the stored row, and
// converting a cached event allocates only the Event itself, not a copy of
// its JSON. A woken /sync renders the same events for every listener, so a
// per-read copy multiplies by the number of listeners (docs/benchmarks.md,
// "Memory at idle and peak").
func TestEventReadsShareCachedJSON(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		s := newTestServer(t, db)
		ctx := context.Background()
		room := mustCreate(t, s, CreateRoomRequest{Creator: alice, RoomVersion: "10", Preset: PresetPublicChat}).RoomID
		id := mustSend(t, s, room, alice, "m.room.message", nil, `{"body":"read me twice","msgtype":"m.text"}`)

		first, err := s.Event(ctx, alice, id)
		if err != nil {
			t.Fatal(err)
		}
		second, err := s.Event(ctx, alice, id)
		if err != nil {
			t.Fatal(err)
		}
		var stored string
		if err := db.Reader().QueryRow(ctx, `SELECT json FROM roomserver_events WHERE event_id = $1`, id).Scan(&stored); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(first.JSON, []byte(stored)) || !bytes.Equal(second.JSON, []byte(stored)) {
			t.Fatalf("JSON differs from the stored row:\n first  %s\n second %s\n stored %s", first.JSON, second.JSON, stored)
		}
		if unsafe.SliceData(first.JSON) != unsafe.SliceData(second.JSON) {
			t.Error("two reads of a cached event returned separate copies of its JSON")
		}

		cached := s.events.getID(id, math.MaxUint64)
		if cached == nil {
			t.Fatal("the event is not in the event cache after a read")
		}
		if allocs := testing.AllocsPerRun(100, func() { _ = toEvent(cached) }); allocs != 1 {
			t.Errorf("toEvent allocates %v times per call, want 1 (the Event; JSON and content are shared)", allocs)
		}
	})
}
