package clientapi

import (
	"context"
	"encoding/json"
	"fmt"
	"io/fs"
	"testing"

	"github.com/myelin-chat/myelin/roomserver"
	"github.com/myelin-chat/myelin/storage"
	"github.com/myelin-chat/myelin/storage/storagetest"
)

// streamRooms serves EventsAfter from a fixed stream and records the
// limits asked for; the rest of Rooms is not used by the indexer.
type streamRooms struct {
	Rooms
	stream []*roomserver.Event // StreamPos 1..len
	limits []int
}

func (r *streamRooms) EventsAfter(_ context.Context, after int64, limit int) ([]*roomserver.Event, error) {
	r.limits = append(r.limits, limit)
	if after >= int64(len(r.stream)) {
		return nil, nil
	}
	return r.stream[after:min(int(after)+limit, len(r.stream))], nil
}

// TestRelationsCatchUpInBatches: a catch-up over several batches (the
// first read after a burst of sends) reads at most relationsIndexerBatch
// events at a time and still indexes every relation, those on batch
// boundaries included, and a redaction in a later batch removes one from
// an earlier batch.
func TestRelationsCatchUpInBatches(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		newUserDataServer(t, db, nil) // clientapi's migrations
		sub, err := fs.Sub(roomMigrations, "rooms_migrations")
		if err != nil {
			t.Fatal(err)
		}
		if err := db.Migrate(context.Background(), roomsComponent, sub); err != nil {
			t.Fatal(err)
		}
		const n = 2*relationsIndexerBatch + 57
		rooms := &streamRooms{}
		want := map[string]bool{}
		for pos := int64(1); pos <= n; pos++ {
			ev := &roomserver.Event{EventID: fmt.Sprintf("$e%d", pos), RoomID: "!r:test", Type: "m.room.message",
				Sender: "@a:test", StreamPos: pos, OriginServerTS: 1000 + pos}
			content := map[string]any{"msgtype": "m.text", "body": "x"}
			// Relations at the first and last event of every batch and
			// every 37th in between.
			if off := (pos - 1) % relationsIndexerBatch; pos > 1 && (off == 0 || off == relationsIndexerBatch-1 || pos%37 == 0) {
				content["m.relates_to"] = map[string]any{"rel_type": "m.thread", "event_id": "$e1"}
				want[ev.EventID] = true
			}
			if pos == n {
				// Redacts the relation at the second batch's first event.
				ev.Type, ev.Redacts = "m.room.redaction", fmt.Sprintf("$e%d", relationsIndexerBatch+1)
				content = map[string]any{}
				delete(want, ev.Redacts)
				delete(want, ev.EventID)
			}
			ev.Content, _ = json.Marshal(content)
			rooms.stream = append(rooms.stream, ev)
		}
		ix := &relationsIndexer{db: db, rooms: rooms}
		if err := ix.catchUp(context.Background()); err != nil {
			t.Fatal(err)
		}
		for _, l := range rooms.limits {
			if l > relationsIndexerBatch {
				t.Fatalf("EventsAfter asked for %d events, batch is %d", l, relationsIndexerBatch)
			}
		}
		if len(rooms.limits) != 4 { // three batches with events, one empty read
			t.Errorf("%d reads, want 4", len(rooms.limits))
		}
		got, err := storage.QueryColumn[string](context.Background(), db.Reader(),
			`SELECT event_id FROM room_relations WHERE relates_to = $1`, "$e1")
		if err != nil {
			t.Fatal(err)
		}
		gotSet := map[string]bool{}
		for _, id := range got {
			gotSet[id] = true
		}
		if len(gotSet) != len(want) {
			t.Errorf("%d relations indexed, want %d", len(gotSet), len(want))
		}
		for id := range want {
			if !gotSet[id] {
				t.Errorf("relation %s not indexed", id)
			}
		}
		var pos int64
		if err := db.Reader().QueryRow(context.Background(), `SELECT position FROM room_indexer_positions WHERE name = $1`,
			relationsIndexerName).Scan(&pos); err != nil || pos != n {
			t.Errorf("stored position %d (%v), want %d", pos, err, n)
		}
	})
}
