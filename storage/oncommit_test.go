package storage_test

import (
	"context"
	"errors"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/myelin-chat/myelin/storage"
	"github.com/myelin-chat/myelin/storage/storagetest"
)

// TestOnCommitHooks: a write's OnCommit hooks run once it has committed,
// before it is acknowledged and before its AfterCommit hooks. On SQLite
// the writer runs them itself, in the order the batch's writes ran, even
// for a write whose caller never waits; a write rolled back to its
// savepoint, or whose whole transaction fails, runs none.
func TestOnCommitHooks(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		ctx := context.Background()
		exec(t, db, `CREATE TABLE oc (id BIGINT PRIMARY KEY)`)
		var mu sync.Mutex
		var order []string
		record := func(s string) {
			mu.Lock()
			order = append(order, s)
			mu.Unlock()
		}
		var release chan struct{}
		if db.Engine() == storage.SQLite {
			running := make(chan struct{})
			release = make(chan struct{})
			go func() {
				_ = db.Write(ctx, func(storage.Tx) error { close(running); <-release; return nil })
			}()
			<-running
		}
		var first *storage.PendingWrite
		acknowledgedEarly := false
		write := func(id int, fail bool) func(storage.Tx) error {
			return func(tx storage.Tx) error {
				if _, err := tx.Exec(ctx, `INSERT INTO oc (id) VALUES ($1)`, id); err != nil {
					return err
				}
				name := string(rune('0' + id))
				tx.OnCommit(func() {
					if first != nil && first.Committed() {
						acknowledgedEarly = true // first's outcome was known before every hook ran
					}
					record("on" + name)
				})
				tx.AfterCommit(func() { record("after" + name) })
				if fail {
					return errors.New("refused")
				}
				return nil
			}
		}
		first = db.WriteQueued(ctx, write(1, false))
		bad := db.WriteQueued(ctx, write(2, true))
		third := db.WriteQueued(ctx, write(3, false))
		if release != nil {
			close(release)
		}
		within(t, 10*time.Second, "queued writes", func() {
			<-first.Done()
			<-bad.Done()
			<-third.Done()
		})
		mu.Lock()
		got := slices.Clone(order)
		mu.Unlock()
		if db.Engine() == storage.SQLite {
			// Nobody waited yet: only the writer has run hooks.
			if want := []string{"on1", "on3"}; !slices.Equal(got, want) {
				t.Fatalf("hooks run by the writer: %v, want %v", got, want)
			}
			if acknowledgedEarly {
				t.Fatal("a write was acknowledged before the batch's OnCommit hooks ran")
			}
		}
		if err := first.Wait(); err != nil {
			t.Fatal(err)
		}
		if err := bad.Wait(); err == nil {
			t.Fatal("the refused write succeeded")
		}
		if err := third.Wait(); err != nil {
			t.Fatal(err)
		}
		mu.Lock()
		got = slices.Clone(order)
		mu.Unlock()
		if want := []string{"on1", "after1", "on3", "after3"}; db.Engine() == storage.SQLite {
			want = []string{"on1", "on3", "after1", "after3"}
			if !slices.Equal(got, want) {
				t.Fatalf("hooks ran as %v, want %v", got, want)
			}
		} else if !slices.Equal(got, want) {
			t.Fatalf("hooks ran as %v, want %v", got, want)
		}

		// A transaction that does not commit runs no OnCommit hook.
		order = nil
		err := db.Write(ctx, func(tx storage.Tx) error {
			tx.OnCommit(func() { record("never") })
			_, err := tx.Exec(ctx, `INSERT INTO oc (id) VALUES (1)`) // duplicate key
			return err
		})
		if err == nil || len(order) != 0 {
			t.Fatalf("a failed write: err %v, hooks %v", err, order)
		}
	})
}
