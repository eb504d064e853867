package clientapi

import (
	"context"
	"encoding/json"
	"fmt"
	"io/fs"
	"strings"
	"testing"

	"github.com/myelin-chat/myelin/roomserver"
	"github.com/myelin-chat/myelin/storage"
	"github.com/myelin-chat/myelin/storage/storagetest"
)

// streamRooms serves RelationCandidatesAfter from a fixed stream, every
// event a candidate (the roomserver may return more than the index
// needs) unless onlyCandidates, and records the limits asked for; the
// rest of Rooms is not used by the indexer.
type streamRooms struct {
	Rooms
	stream         []*roomserver.Event // StreamPos 1..len
	onlyCandidates bool                // only redactions and events with "m.relates_to"
	limits         []int
}

func (r *streamRooms) RelationCandidatesAfter(_ context.Context, after int64, limit int) (int64, []*roomserver.Event, error) {
	r.limits = append(r.limits, limit)
	var out []*roomserver.Event
	for _, ev := range r.stream[min(int(after), len(r.stream)):] {
		if len(out) == limit {
			break
		}
		if !r.onlyCandidates || ev.Type == "m.room.redaction" || strings.Contains(string(ev.Content), "m.relates_to") {
			out = append(out, ev)
		}
	}
	return int64(len(r.stream)), out, nil
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
				t.Fatalf("RelationCandidatesAfter asked for %d events, batch is %d", l, relationsIndexerBatch)
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

// TestRelationsCatchUpStoresPositionLazily: a stretch of the stream with
// nothing to index is passed without a write (the first /sync after a
// burst of sends makes none), the next relation is still indexed and
// stores the position, and a stretch of relationsPositionLag events
// without any stores it too, so a restart reads no more than that again.
func TestRelationsCatchUpStoresPositionLazily(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		ctx := context.Background()
		newUserDataServer(t, db, nil) // clientapi's migrations
		sub, err := fs.Sub(roomMigrations, "rooms_migrations")
		if err != nil {
			t.Fatal(err)
		}
		if err := db.Migrate(ctx, roomsComponent, sub); err != nil {
			t.Fatal(err)
		}
		rooms := &streamRooms{onlyCandidates: true}
		add := func(n int, relation bool) {
			for range n {
				pos := int64(len(rooms.stream) + 1)
				content := map[string]any{"msgtype": "m.text", "body": "x"}
				if relation {
					content["m.relates_to"] = map[string]any{"rel_type": "m.thread", "event_id": "$e1"}
				}
				ev := &roomserver.Event{EventID: fmt.Sprintf("$e%d", pos), RoomID: "!r:test", Type: "m.room.message",
					Sender: "@a:test", StreamPos: pos, OriginServerTS: 1000 + pos}
				ev.Content, _ = json.Marshal(content)
				rooms.stream = append(rooms.stream, ev)
			}
		}
		stored := func() int64 {
			t.Helper()
			var pos int64
			err := db.Reader().QueryRow(ctx, `SELECT position FROM room_indexer_positions WHERE name = $1`,
				relationsIndexerName).Scan(&pos)
			if err != nil && !storage.IsNoRows(err) {
				t.Fatal(err)
			}
			return pos
		}
		relations := func() int {
			t.Helper()
			got, err := storage.QueryColumn[string](ctx, db.Reader(), `SELECT event_id FROM room_relations`)
			if err != nil {
				t.Fatal(err)
			}
			return len(got)
		}
		ix := &relationsIndexer{db: db, rooms: rooms}
		add(300, false)
		if err := ix.catchUp(ctx); err != nil {
			t.Fatal(err)
		}
		if p := stored(); p != 0 || ix.indexed != 300 {
			t.Fatalf("after 300 plain events: stored %d, indexed %d; want nothing stored, 300 indexed", p, ix.indexed)
		}
		add(1, true)
		add(5, false)
		rooms.limits = nil
		if err := ix.catchUp(ctx); err != nil {
			t.Fatal(err)
		}
		if p, n := stored(), relations(); p != 306 || n != 1 {
			t.Fatalf("after a relation: stored %d, %d relations; want 306 and 1", p, n)
		}
		add(relationsPositionLag-1, false)
		if err := ix.catchUp(ctx); err != nil {
			t.Fatal(err)
		}
		if p := stored(); p != 306 {
			t.Fatalf("stored %d after a stretch short of the lag, want 306", p)
		}
		add(1, false)
		if err := ix.catchUp(ctx); err != nil {
			t.Fatal(err)
		}
		if p := stored(); p != 306+relationsPositionLag {
			t.Fatalf("stored %d after a stretch of the lag, want %d", p, 306+relationsPositionLag)
		}
		// A restarted indexer goes on from the stored position.
		add(1, true)
		again := &relationsIndexer{db: db, rooms: rooms}
		rooms.limits = nil
		if err := again.catchUp(ctx); err != nil {
			t.Fatal(err)
		}
		if n := relations(); n != 2 || again.indexed != int64(len(rooms.stream)) {
			t.Fatalf("after a restart: %d relations, indexed %d; want 2 and %d", n, again.indexed, len(rooms.stream))
		}
	})
}
