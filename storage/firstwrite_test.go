package storage_test

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/myelin-chat/myelin/storage"
	"github.com/myelin-chat/myelin/storage/storagetest"
)

// TestFirstWriteOfBatchFails: the first write of a transaction runs
// without a savepoint of its own. When it fails after writing, none of
// its rows are kept, it runs no hook, the writes queued behind it learn
// that it failed (Failed), see none of its rows and commit as usual, and
// a later write that fails first in its own transaction is undone too.
func TestFirstWriteOfBatchFails(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		ctx := context.Background()
		exec(t, db, `CREATE TABLE fw (id BIGINT PRIMARY KEY)`)
		exec(t, db, `INSERT INTO fw (id) VALUES (0)`)
		hooks := 0
		failing := func(id int, sqlErr bool) func(storage.Tx) error {
			return func(tx storage.Tx) error {
				if _, err := tx.Exec(ctx, `INSERT INTO fw (id) VALUES ($1)`, id); err != nil {
					return err
				}
				tx.OnCommit(func() { hooks++ })
				tx.AfterCommit(func() { hooks++ })
				if sqlErr {
					_, err := tx.Exec(ctx, `INSERT INTO fw (id) VALUES (0)`) // duplicate key
					if err == nil {
						return errors.New("duplicate insert succeeded")
					}
					return err
				}
				return errors.New("refused")
			}
		}
		var seen []int64
		var firstFailed bool
		var bad, good *storage.PendingWrite
		if db.Engine() == storage.SQLite {
			// Hold the writer with a failing first write, so that it and
			// the write queued behind it meet in the writer.
			running := make(chan struct{})
			release := make(chan struct{})
			bad = db.WriteQueued(ctx, func(tx storage.Tx) error {
				close(running)
				<-release
				return failing(1, false)(tx)
			})
			<-running
			good = db.WriteQueued(ctx, func(tx storage.Tx) error {
				firstFailed = bad.Failed()
				var err error
				seen, err = storage.QueryColumn[int64](ctx, tx, `SELECT id FROM fw ORDER BY id`)
				if err != nil {
					return err
				}
				_, err = tx.Exec(ctx, `INSERT INTO fw (id) VALUES (2)`)
				return err
			})
			close(release)
		} else {
			bad = db.WriteQueued(ctx, failing(1, false))
			good = db.WriteQueued(ctx, func(tx storage.Tx) error {
				firstFailed = bad.Failed()
				var err error
				seen, err = storage.QueryColumn[int64](ctx, tx, `SELECT id FROM fw ORDER BY id`)
				if err != nil {
					return err
				}
				_, err = tx.Exec(ctx, `INSERT INTO fw (id) VALUES (2)`)
				return err
			})
		}
		within(t, 10*time.Second, "writes", func() {
			if err := bad.Wait(); err == nil || err.Error() != "refused" {
				t.Errorf("failing first write: %v, want refused", err)
			}
			if err := good.Wait(); err != nil {
				t.Errorf("write behind it: %v", err)
			}
		})
		if !firstFailed || !slices.Equal(seen, []int64{0}) {
			t.Fatalf("the write behind the failed one saw Failed()=%v and rows %v, want true and [0]", firstFailed, seen)
		}
		// A lone write that fails on an SQL error after writing.
		if err := db.Write(ctx, failing(3, true)); err == nil {
			t.Fatal("the duplicate insert was accepted")
		}
		if err := db.Write(ctx, func(tx storage.Tx) error {
			_, err := tx.Exec(ctx, `INSERT INTO fw (id) VALUES (4)`)
			return err
		}); err != nil {
			t.Fatal(err)
		}
		if got := int64s(t, db.Reader(), `SELECT id FROM fw ORDER BY id`); !slices.Equal(got, []int64{0, 2, 4}) {
			t.Fatalf("rows %v, want [0 2 4]: a failed write's rows were kept or a good one's lost", got)
		}
		if hooks != 0 {
			t.Fatalf("failed writes ran %d hooks", hooks)
		}
	})
}
