package federationapi

import (
	"context"
	"io/fs"
	"slices"
	"testing"
	"testing/fstest"

	"github.com/myelin-chat/myelin/storage"
	"github.com/myelin-chat/myelin/storage/storagetest"
)

// TestQueueMarksMigrationKeepsTheTransactionInFlight: a transaction that
// a binary bounding transactions by position (migrations 001–003) left in
// flight is, after migration 004, marked as exactly the rows that binary
// would have resent under its txnId — the first 50 PDUs up to
// pending_pdu_max and the first 100 EDUs up to pending_edu_max — so the
// upgraded sender resends it unchanged. Rows above the maxima, and the
// queues of destinations with no transaction in flight, stay unmarked.
// Spec: server-server-api, "Transactions".
func TestQueueMarksMigrationKeepsTheTransactionInFlight(t *testing.T) {
	t.Parallel()
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		ctx := context.Background()
		all, err := fs.Sub(migrationFiles, "migrations")
		if err != nil {
			t.Fatal(err)
		}
		names, err := fs.Glob(all, "*.sql")
		if err != nil {
			t.Fatal(err)
		}
		before := fstest.MapFS{}
		for _, name := range names {
			if name < "004" {
				data, err := fs.ReadFile(all, name)
				if err != nil {
					t.Fatal(err)
				}
				before[name] = &fstest.MapFile{Data: data}
			}
		}
		if err := db.Migrate(ctx, "federationapi", before); err != nil {
			t.Fatal(err)
		}

		const inFlight, idle, cleared = "old.example", "idle.example", "cleared.example"
		var eduIDs []int64 // inFlight's, in queue order
		err = db.Write(ctx, func(tx storage.Tx) error {
			for _, dest := range []string{inFlight, idle, cleared} {
				for nid := int64(1); nid <= 70; nid++ {
					if _, err := tx.Exec(ctx, `INSERT INTO federation_queue_pdus (destination, event_nid) VALUES ($1, $2)`, dest, nid); err != nil {
						return err
					}
				}
				for i := 0; i < 130; i++ {
					var id int64
					if err := tx.QueryRow(ctx, `INSERT INTO federation_queue_edus (destination, edu, created_ts) VALUES ($1, '{}', 0)
						RETURNING edu_nid`, dest).Scan(&id); err != nil {
						return err
					}
					if dest == inFlight {
						eduIDs = append(eduIDs, id)
					}
				}
			}
			// In flight: PDUs up to 60 (more than 50 rows: the old
			// binary read only the first 50), EDUs up to the 120th.
			if _, err := tx.Exec(ctx, `INSERT INTO federation_destinations (server_name, txn_seq, txn_id, pending_pdu_max, pending_edu_max)
				VALUES ($1, 7, 'm1.7', 60, $2), ($3, 0, NULL, 0, 0), ($4, 3, '', 70, $2)`, inFlight, eduIDs[119], idle, cleared); err != nil {
				return err
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}

		if err := db.Migrate(ctx, "federationapi", all); err != nil {
			t.Fatal(err)
		}
		nids, edus, err := markedRows(ctx, db.Reader(), inFlight, "m1.7")
		if err != nil {
			t.Fatal(err)
		}
		var wantNIDs []int64
		for nid := int64(1); nid <= 50; nid++ {
			wantNIDs = append(wantNIDs, nid)
		}
		if !slices.Equal(nids, wantNIDs) {
			t.Errorf("the transaction in flight holds PDUs %v, want 1..50", nids)
		}
		marked, err := storage.QueryColumn[int64](ctx, db.Reader(),
			`SELECT edu_nid FROM federation_queue_edus WHERE txn_id = 'm1.7' ORDER BY edu_nid`)
		if err != nil {
			t.Fatal(err)
		}
		if len(edus) != 100 || !slices.Equal(marked, eduIDs[:100]) {
			t.Errorf("the transaction in flight holds %d EDUs (ids %v), want the first 100 queued", len(edus), marked)
		}
		var others int
		if err := db.Reader().QueryRow(ctx, `SELECT (SELECT COUNT(*) FROM federation_queue_pdus WHERE txn_id IS NOT NULL AND txn_id <> 'm1.7')
			+ (SELECT COUNT(*) FROM federation_queue_edus WHERE txn_id IS NOT NULL AND txn_id <> 'm1.7')
			+ (SELECT COUNT(*) FROM federation_queue_pdus WHERE txn_id = 'm1.7' AND destination <> $1)
			+ (SELECT COUNT(*) FROM federation_queue_edus WHERE txn_id = 'm1.7' AND destination <> $1)`, inFlight).Scan(&others); err != nil {
			t.Fatal(err)
		}
		if others != 0 {
			t.Errorf("%d rows outside the transaction in flight are marked", others)
		}
		for _, dest := range []string{idle, cleared} {
			var unmarked int
			if err := db.Reader().QueryRow(ctx, `SELECT (SELECT COUNT(*) FROM federation_queue_pdus WHERE destination = $1 AND txn_id IS NULL)
				+ (SELECT COUNT(*) FROM federation_queue_edus WHERE destination = $1 AND txn_id IS NULL)`, dest).Scan(&unmarked); err != nil {
				t.Fatal(err)
			}
			if unmarked != 200 {
				t.Errorf("%s: %d of its 200 queued rows unmarked, want all", dest, unmarked)
			}
		}
	})
}
