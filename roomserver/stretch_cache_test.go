package roomserver

import (
	"context"
	"errors"
	"testing"

	"github.com/myelin-chat/myelin/storage"
	"github.com/myelin-chat/myelin/storage/storagetest"
)

// TestStretchCacheNeverHidesAStretch: the per-room "has stretches of
// partial state" knowledge that spares markAfterPartialStretch a query
// per stored event may say a room has one when it has none, never the
// reverse: not after a write that added one and rolled back, not when a
// read raced with an add, not in split mode when another process adds
// one, not after a restart.
func TestStretchCacheNeverHidesAStretch(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		ctx := context.Background()
		s := newTestServer(t, db)
		roomID := mustCreate(t, s, CreateRoomRequest{Creator: "@alice:" + testServer, Preset: "public_chat"}).RoomID
		has := func(s *Server) bool {
			t.Helper()
			got, err := s.roomHasStretches(ctx, db.Reader(), roomID)
			if err != nil {
				t.Fatal(err)
			}
			return got
		}
		addStretch := func(tx storage.Tx, s *Server, from int64) error {
			s.stretches.added(roomID)
			_, err := tx.Exec(ctx, `INSERT INTO roomserver_partial_state_left (room_id, from_nid, through_nid, servers)
				VALUES ($1, $2, $2, '[]')`, roomID, from)
			return err
		}
		if has(s) {
			t.Fatal("a new room has a stretch")
		}

		// A write that adds a stretch and rolls back: "has" is safe.
		errRollback := errors.New("roll back")
		if err := db.Write(ctx, func(tx storage.Tx) error {
			if err := addStretch(tx, s, 1); err != nil {
				return err
			}
			return errRollback
		}); !errors.Is(err, errRollback) {
			t.Fatal(err)
		}
		if !has(s) {
			t.Error("after an add that rolled back the cache says none (safe answer: has)")
		}
		s.stretches.removed(roomID)
		if has(s) {
			t.Error("after the rollback and a reread, the room has a stretch")
		}

		// A read that began before an add (and found none) is not
		// remembered over the add.
		_, _, gen := s.stretches.lookup("!other:" + testServer)
		s.stretches.added(roomID)
		s.stretches.remember(roomID, false, gen)
		if !has(s) {
			t.Error("a read older than an add hid the add")
		}
		s.stretches.removed(roomID)

		// Split mode: another process adds a stretch this one never
		// hears of.
		shared := newTestServer(t, db)
		shared.shared = true
		if has(shared) {
			t.Fatal("the room has a stretch")
		}
		other := newTestServer(t, db) // the other process
		if err := db.Write(ctx, func(tx storage.Tx) error { return addStretch(tx, other, 2) }); err != nil {
			t.Fatal(err)
		}
		if !has(shared) {
			t.Error("in split mode a stretch another process added is hidden")
		}
		// A restart: nothing remembered, the table is read.
		if !has(newTestServer(t, db)) {
			t.Error("after a restart a stored stretch is hidden")
		}
	})
}
