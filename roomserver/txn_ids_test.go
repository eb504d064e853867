package roomserver

import (
	"context"
	"encoding/json"
	"io/fs"
	"strings"
	"testing"
	"testing/fstest"

	"github.com/myelin-chat/myelin/storage"
	"github.com/myelin-chat/myelin/storage/storagetest"
)

// migrationsUpTo is the roomserver's migrations numbered at most last,
// as an older binary shipped them.
func migrationsUpTo(t *testing.T, last string) fs.FS {
	t.Helper()
	sub, err := fs.Sub(migrationFiles, "migrations")
	if err != nil {
		t.Fatal(err)
	}
	entries, err := fs.ReadDir(sub, ".")
	if err != nil {
		t.Fatal(err)
	}
	out := fstest.MapFS{}
	for _, e := range entries {
		if e.Name()[:3] > last {
			continue
		}
		body, err := fs.ReadFile(sub, e.Name())
		if err != nil {
			t.Fatal(err)
		}
		out[e.Name()] = &fstest.MapFile{Data: body}
	}
	return out
}

// Migration 008 rebuilds roomserver_txn_ids on SQLite as a WITHOUT ROWID
// table (one B-tree written per send instead of two). The transaction IDs
// recorded before it still answer retries afterwards, the key still
// refuses a second row for the same (room, user, device, txnId), and the
// queries by event ID (sync's unsigned.transaction_id) still find them.
func TestTxnIDsSurviveWithoutRowidMigration(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		ctx := context.Background()
		if err := db.Migrate(ctx, "roomserver", migrationsUpTo(t, "007")); err != nil {
			t.Fatal(err)
		}
		old := []struct{ room, user, device, txn, event string }{
			{"!a:test", alice, "DEV", "t1", "$old1"},
			{"!a:test", alice, "DEV", "t2", "$old2"},
			{"!a:test", alice, "DEV2", "t1", "$old3"},
			{"!b:test", alice, "DEV", "t1", "$old4"},
			{"!a:test", bob, "DEV", "t1", "$old5"},
		}
		if err := db.Write(ctx, func(tx storage.Tx) error {
			for _, r := range old {
				if err := insertTxn(ctx, tx, r.room, r.user, &TxnID{DeviceID: r.device, TxnID: r.txn}, r.event, 1); err != nil {
					return err
				}
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}

		s := newTestServer(t, db) // runs the remaining migrations
		for _, r := range old {
			got, err := lookupTxn(ctx, db.Reader(), r.room, r.user, &TxnID{DeviceID: r.device, TxnID: r.txn})
			if err != nil || got != r.event {
				t.Fatalf("after the migration %v maps to %q, %v; want %s", r, got, err, r.event)
			}
		}
		if got, err := lookupTxn(ctx, db.Reader(), "!a:test", alice, &TxnID{DeviceID: "DEV", TxnID: "t3"}); err != nil || got != "" {
			t.Fatalf("an unrecorded txnId maps to %q, %v", got, err)
		}
		err := db.Write(ctx, func(tx storage.Tx) error {
			return insertTxn(ctx, tx, "!a:test", alice, &TxnID{DeviceID: "DEV", TxnID: "t1"}, "$dup", 2)
		})
		if !storage.IsUniqueViolation(err) {
			t.Fatalf("a second row for the same txnId gave %v, want a unique violation", err)
		}
		got, err := s.TxnIDs(ctx, "!a:test", alice, "DEV", []string{"$old1", "$old2", "$old3", "$old5"})
		if err != nil || len(got) != 2 || got["$old1"] != "t1" || got["$old2"] != "t2" {
			t.Fatalf("TxnIDs after the migration: %v, %v", got, err)
		}

		if db.Engine() == storage.SQLite {
			var ddl string
			if err := db.Reader().QueryRow(ctx, `SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'roomserver_txn_ids'`).Scan(&ddl); err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(ddl, "WITHOUT ROWID") {
				t.Fatalf("roomserver_txn_ids is still a rowid table: %s", ddl)
			}
			// The rowid table's separate key index is gone with it.
			var n int
			if err := db.Reader().QueryRow(ctx, `SELECT COUNT(*) FROM sqlite_master WHERE tbl_name = 'roomserver_txn_ids'`).Scan(&n); err != nil {
				t.Fatal(err)
			}
			if n != 1 {
				t.Fatalf("roomserver_txn_ids has %d schema objects, want the table alone", n)
			}
		}

		// Sends with transaction IDs work on the new table: a retry
		// returns the first event and stores nothing.
		room := mustCreate(t, s, CreateRoomRequest{Creator: alice, Preset: PresetPublicChat}).RoomID
		req := SendEventRequest{RoomID: room, Sender: alice, Type: "m.room.message",
			Content: json.RawMessage(`{"body":"once"}`), TxnID: &TxnID{DeviceID: "DEV", TxnID: "t1"}}
		first, err := s.SendEvent(ctx, req)
		if err != nil {
			t.Fatal(err)
		}
		n := countRows(t, db, "roomserver_events")
		again, err := s.SendEvent(ctx, req)
		if err != nil || again.EventID != first.EventID || countRows(t, db, "roomserver_events") != n {
			t.Fatalf("retry gave %+v, %v; want %s and nothing stored", again, err, first.EventID)
		}
	})
}
