package storage_test

import (
	"context"
	"testing"
	"time"

	"github.com/myelin-chat/myelin/storage"
)

// openHeld opens a SQLite database whose commit hold is long (hold) so
// that the tests below assert on outcomes, not on the machine's speed.
func openHeld(t *testing.T, hold, fresh, window time.Duration) *storage.DB {
	t.Helper()
	db, err := storage.Open(context.Background(), storage.Options{Engine: storage.SQLite, SQLitePath: t.TempDir() + "/held.db"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	db.SetHoldTimes(hold, fresh, window)
	exec(t, db, `CREATE TABLE t (v INTEGER)`)
	return db
}

func insert(v int) func(storage.Tx) error {
	return func(tx storage.Tx) error {
		_, err := tx.Exec(context.Background(), `INSERT INTO t (v) VALUES ($1)`, v)
		return err
	}
}

// An announced write that queues while a batch is being held shares its
// commit: the first write is answered only with it.
func TestCommitHeldForAnnouncedWrite(t *testing.T) {
	db := openHeld(t, 5*time.Second, 5*time.Second, 0)
	ctx := context.Background()
	before := db.CommitCount()
	actx, done := db.ExpectWrite(ctx)
	defer done()
	first := db.WriteQueued(ctx, insert(1))
	time.Sleep(50 * time.Millisecond)
	select {
	case <-first.Done():
		t.Fatal("the first write was answered while an announced write was still on its way")
	default:
	}
	second := db.WriteQueued(actx, insert(2))
	within(t, 3*time.Second, "the held batch", func() {
		if err := first.Wait(); err != nil {
			t.Error(err)
		}
		if err := second.Wait(); err != nil {
			t.Error(err)
		}
	})
	if n := db.CommitCount() - before; n != 1 {
		t.Fatalf("%d commits for the write and the announced one, want 1", n)
	}
}

// An announcement that ends without a write releases the held commit at
// once, not after the hold's limit.
func TestAbandonedAnnouncementReleasesCommit(t *testing.T) {
	db := openHeld(t, 10*time.Second, 10*time.Second, 0)
	ctx := context.Background()
	_, done := db.ExpectWrite(ctx)
	w := db.WriteQueued(ctx, insert(1))
	time.Sleep(20 * time.Millisecond)
	select {
	case <-w.Done():
		t.Fatal("the write was answered while an announced write was still on its way")
	default:
	}
	done()
	done() // a second call changes nothing
	within(t, 3*time.Second, "the write after the announcement ended", func() {
		if err := w.Wait(); err != nil {
			t.Error(err)
		}
	})
}

// A stale announcement (older than its freshness) holds no commit.
func TestStaleAnnouncementHoldsNothing(t *testing.T) {
	db := openHeld(t, 10*time.Second, 20*time.Millisecond, 0)
	ctx := context.Background()
	_, done := db.ExpectWrite(ctx)
	defer done()
	w := db.WriteQueued(ctx, insert(1))
	within(t, 3*time.Second, "a write beside a stale announcement", func() {
		if err := w.Wait(); err != nil {
			t.Error(err)
		}
	})
}

// Writes nobody announced, and one client's announced writes one after
// the other, are never held: each commits as soon as it has run.
func TestLoneWritesNotHeld(t *testing.T) {
	db := openHeld(t, 10*time.Second, 10*time.Second, 10*time.Second)
	ctx := context.Background()
	within(t, 5*time.Second, "10 writes, announced and not", func() {
		for i := range 5 {
			exec(t, db, `INSERT INTO t (v) VALUES ($1)`, i)
		}
		for i := range 5 {
			actx, done := db.ExpectWrite(ctx)
			if err := db.Write(actx, insert(i)); err != nil {
				t.Error(err)
			}
			done()
		}
	})
}

// After a commit that answered 3 announced writes, the next batch is held
// until 3 announced writes are in it (their clients sending again), then
// commits at once: one commit for the second round, none held longer.
func TestCommitHeldForAnsweredWritesComingBack(t *testing.T) {
	db := openHeld(t, 10*time.Second, 10*time.Second, 10*time.Second)
	ctx := context.Background()
	round := func(gap time.Duration) {
		var ctxs []context.Context
		for range 3 {
			actx, done := db.ExpectWrite(ctx)
			defer done()
			ctxs = append(ctxs, actx)
		}
		var ws []*storage.PendingWrite
		for i, actx := range ctxs {
			if i > 0 {
				time.Sleep(gap)
			}
			ws = append(ws, db.WriteQueued(actx, insert(i)))
		}
		for _, w := range ws {
			if err := w.Wait(); err != nil {
				t.Fatal(err)
			}
		}
	}
	within(t, 5*time.Second, "the first round", func() { round(0) })
	before := db.CommitCount()
	// The second round's writes are announced one by one, each just
	// before it queues: only the count the last commit answered holds
	// the first of them.
	within(t, 5*time.Second, "the second round", func() {
		var ws []*storage.PendingWrite
		for i := range 3 {
			if i > 0 {
				time.Sleep(30 * time.Millisecond)
			}
			actx, done := db.ExpectWrite(ctx)
			ws = append(ws, db.WriteQueued(actx, insert(10+i)))
			done()
		}
		for _, w := range ws {
			if err := w.Wait(); err != nil {
				t.Error(err)
			}
		}
	})
	if n := db.CommitCount() - before; n != 1 {
		t.Fatalf("%d commits for 3 answered writes coming back, want 1", n)
	}
}
