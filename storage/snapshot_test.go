package storage_test

import (
	"context"
	"testing"

	"github.com/myelin-chat/myelin/storage"
	"github.com/myelin-chat/myelin/storage/storagetest"
)

// Every statement of one Read sees the same snapshot, on both engines
// (PostgreSQL's default READ COMMITTED would show a write committed
// between two statements).
func TestReadIsOneSnapshot(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		ctx := context.Background()
		exec(t, db, `CREATE TABLE snap (id BIGINT PRIMARY KEY)`)
		exec(t, db, `INSERT INTO snap (id) VALUES (1)`)
		err := db.Read(ctx, func(q storage.Querier) error {
			if got := int64s(t, q, `SELECT COUNT(*) FROM snap`); got[0] != 1 {
				t.Fatalf("first count = %d, want 1", got[0])
			}
			exec(t, db, `INSERT INTO snap (id) VALUES (2)`) // commits meanwhile
			if got := int64s(t, q, `SELECT COUNT(*) FROM snap`); got[0] != 1 {
				t.Errorf("second count in the same Read = %d, want 1 (one snapshot)", got[0])
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	})
}
