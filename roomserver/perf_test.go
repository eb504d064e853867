package roomserver

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/myelin-chat/myelin/storage"
	"github.com/myelin-chat/myelin/storage/storagetest"
)

// The snapshot key cache loads each (snapshot, key) once, remembers
// absent keys too, and never caches a failed load.
func TestSnapshotKeyCache(t *testing.T) {
	c := newSnapshotKeyCache(2)
	create, power, member := tuple{"m.room.create", ""}, tuple{"m.room.power_levels", ""}, tuple{"m.room.member", "@a:x"}
	var loads [][]tuple
	load := func(missing []tuple) (stateMap, error) {
		loads = append(loads, missing)
		out := stateMap{}
		for _, k := range missing {
			if k != member { // the member key is absent from the state
				out[k] = int64(len(k.Type))
			}
		}
		return out, nil
	}
	got, err := c.lookup(7, []tuple{create, member}, load)
	if err != nil || len(got) != 1 || got[create] == 0 {
		t.Fatalf("first lookup = %v, %v", got, err)
	}
	got, err = c.lookup(7, []tuple{create, power, member}, load)
	if err != nil || len(got) != 2 || got[power] == 0 {
		t.Fatalf("second lookup = %v, %v", got, err)
	}
	if len(loads) != 2 || len(loads[1]) != 1 || loads[1][0] != power {
		t.Fatalf("loads = %v, want the second to ask only for power levels", loads)
	}
	if _, err := c.lookup(8, []tuple{create}, func([]tuple) (stateMap, error) { return nil, errors.New("boom") }); err == nil {
		t.Fatal("a failed load returned no error")
	}
	if _, ok := c.byID[8]; ok {
		t.Fatal("a failed load was cached")
	}
	// Bounded: a third snapshot empties the cache first.
	_, _ = c.lookup(9, []tuple{create}, load)
	_, _ = c.lookup(10, []tuple{create}, load)
	if len(c.byID) > 2 {
		t.Fatalf("cache holds %d snapshots, bound is 2", len(c.byID))
	}
}

// Two identical room creations within one millisecond (a pinned clock)
// still get distinct v12 room IDs: the create event's hash is the ID.
func TestCreateSameMillisecond(t *testing.T) {
	db := storagetest.OpenSQLite(t)
	s := newTestServer(t, db)
	pinned := time.UnixMilli(1_700_000_000_000)
	s.now = func() time.Time { return pinned }
	a := mustCreate(t, s, CreateRoomRequest{Creator: alice, RoomVersion: "12", Preset: PresetPrivateChat}).RoomID
	b := mustCreate(t, s, CreateRoomRequest{Creator: alice, RoomVersion: "12", Preset: PresetPrivateChat}).RoomID
	if a == b {
		t.Fatalf("two creations got the same room ID %s", a)
	}
}

// A timeline read holds one pooled connection for its Read; visibility
// must not need a second (it would deadlock once every connection is held
// by a reader waiting for another). With a pool of one connection, a
// joined member's RecentEvents must still answer.
func TestRecentEventsOnOneConnection(t *testing.T) {
	opts := storagetest.SQLiteOptions(t)
	opts.MaxOpenConns = 1
	db, err := storage.Open(context.Background(), opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	s := newTestServer(t, db)
	room := mustCreate(t, s, CreateRoomRequest{Creator: alice, RoomVersion: "12", Preset: PresetPublicChat}).RoomID
	if _, err := s.SendEvent(context.Background(), benchSendRequest(room)); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := s.RecentEvents(ctx, RecentRequest{UserID: alice, RoomID: room, To: 1 << 62, Limit: 10})
	if err != nil {
		t.Fatalf("RecentEvents on one connection: %v", err)
	}
	if len(resp.Events) == 0 {
		t.Fatal("no events")
	}
}

// CurrentState of a joined member reads the indexed current state; it
// must equal the current snapshot's state, in (type, state_key) order.
func TestCurrentStateMatchesSnapshot(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		s := newTestServer(t, db)
		ctx := context.Background()
		room := mustCreate(t, s, CreateRoomRequest{Creator: alice, RoomVersion: "12", Preset: PresetPublicChat, Name: "n", Topic: "t"}).RoomID
		key := ""
		if _, err := s.SendEvent(ctx, SendEventRequest{RoomID: room, Sender: alice, Type: "m.room.topic", StateKey: &key,
			Content: []byte(`{"topic":"changed"}`)}); err != nil {
			t.Fatal(err)
		}
		got, err := s.CurrentState(ctx, alice, room)
		if err != nil {
			t.Fatal(err)
		}
		r, err := loadRoom(ctx, db.Reader(), room)
		if err != nil {
			t.Fatal(err)
		}
		want, err := s.snapshotEvents(ctx, db.Reader(), r.Version, r.CurrentSnapshot)
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != len(want) {
			t.Fatalf("CurrentState has %d events, the snapshot %d", len(got), len(want))
		}
		for i := range got {
			if got[i].EventID != want[i].EventID {
				t.Fatalf("event %d: %s (%s) vs snapshot %s (%s)", i, got[i].EventID, got[i].Type, want[i].EventID, want[i].Type)
			}
		}
	})
}
