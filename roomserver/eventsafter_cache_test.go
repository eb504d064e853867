package roomserver

import (
	"context"
	"encoding/json"
	"math"
	"testing"

	"github.com/myelin-chat/myelin/storage"
	"github.com/myelin-chat/myelin/storage/storagetest"
)

// EventsAfter serves freshly sent events from the parsed-event cache, and
// must answer exactly what a cold read answers. A cache entry parsed from
// other bytes than the stored ones (here: the event before its redaction,
// put back on purpose) is never used: the redacted form is returned.
func TestEventsAfterCacheMatchesStore(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		ctx := context.Background()
		s := newTestServer(t, db)
		room := mustCreate(t, s, CreateRoomRequest{Creator: alice, RoomVersion: "12", Preset: PresetPrivateChat}).RoomID
		start, err := s.StreamPosition(ctx)
		if err != nil {
			t.Fatal(err)
		}
		target := mustSend(t, s, room, alice, "m.room.message", nil, `{"msgtype":"m.text","body":"secret"}`)
		mustSend(t, s, room, alice, "m.room.message", nil, `{"msgtype":"m.text","body":"two"}`)

		// The unredacted parse of the target, as the send cached it.
		stale := s.events.getID(target, math.MaxUint64)
		if stale == nil {
			t.Fatal("the target is not cached after its send")
		}
		warm, err := s.EventsAfter(ctx, start, 100)
		if err != nil {
			t.Fatal(err)
		}
		s.events = newEventCache(4096)
		s.versions = newVersionCache(16)
		cold, err := s.EventsAfter(ctx, start, 100)
		if err != nil {
			t.Fatal(err)
		}
		if len(warm) != 2 || len(cold) != 2 {
			t.Fatalf("got %d warm and %d cold events, want 2 each", len(warm), len(cold))
		}
		for i := range warm {
			w, _ := json.Marshal(warm[i])
			c, _ := json.Marshal(cold[i])
			if string(w) != string(c) {
				t.Fatalf("event %d from the cache differs from the stored one:\n%s\n%s", i, w, c)
			}
		}

		// An entry under the second event's NID and ID whose bytes are
		// another event's is not used either.
		second := *warm[1]
		forged := *stale.row
		forged.NID, forged.EventID = second.StreamPos, second.EventID
		s.events.put(&loadedEvent{row: &forged, pdu: stale.pdu})
		got, err := s.EventsAfter(ctx, start, 100)
		if err != nil {
			t.Fatal(err)
		}
		if string(got[1].Content) != string(second.Content) {
			t.Fatalf("second event read as %s, want %s: an entry with other bytes was used", got[1].Content, second.Content)
		}

		// Redact the target and put its stale parse back into the cache.
		if _, err := s.SendEvent(ctx, SendEventRequest{RoomID: room, Sender: alice, Type: "m.room.redaction",
			Content: json.RawMessage(`{"reason":"oops"}`), Redacts: target}); err != nil {
			t.Fatal(err)
		}
		s.events.put(stale)
		after, err := s.EventsAfter(ctx, start, 100)
		if err != nil {
			t.Fatal(err)
		}
		if after[0].EventID != target {
			t.Fatalf("first event is %s, want %s", after[0].EventID, target)
		}
		if string(after[0].Content) != "{}" || after[0].RedactedBecause == "" {
			t.Fatalf("redacted event read as content %s, redacted_because %q: the stale cache entry was used",
				after[0].Content, after[0].RedactedBecause)
		}
	})
}
