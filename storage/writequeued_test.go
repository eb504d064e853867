package storage_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/myelin-chat/myelin/storage"
	"github.com/myelin-chat/myelin/storage/storagetest"
)

// TestWriteQueuedFailed: a write function queued after others learns
// whether each earlier one will commit with it (Failed), whether the
// earlier one ran in the same transaction or an earlier one, and sees
// the rows of those that will.
func TestWriteQueuedFailed(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		ctx := context.Background()
		exec(t, db, `CREATE TABLE wq (id BIGINT PRIMARY KEY)`)
		var release chan struct{}
		if db.Engine() == storage.SQLite {
			// Hold the writer so that the writes below queue up and run
			// in one transaction.
			running := make(chan struct{})
			release = make(chan struct{})
			go func() {
				_ = db.Write(ctx, func(storage.Tx) error { close(running); <-release; return nil })
			}()
			<-running
		}
		insert := func(id int) func(storage.Tx) error {
			return func(tx storage.Tx) error {
				_, err := tx.Exec(ctx, `INSERT INTO wq (id) VALUES ($1)`, id)
				return err
			}
		}
		ok := db.WriteQueued(ctx, insert(1))
		bad := db.WriteQueued(ctx, func(tx storage.Tx) error {
			if err := insert(2)(tx); err != nil {
				return err
			}
			return errors.New("refused")
		})
		cancelled, cancel := context.WithCancel(ctx)
		cancel()
		never := db.WriteQueued(cancelled, insert(3))
		type seen struct{ okFailed, badFailed, neverFailed bool }
		var got seen
		var rows []int64
		check := db.WriteQueued(ctx, func(tx storage.Tx) error {
			got = seen{ok.Failed(), bad.Failed(), never.Failed()}
			var err error
			rows, err = storage.QueryColumn[int64](ctx, tx, `SELECT id FROM wq ORDER BY id`)
			return err
		})
		if release != nil {
			select {
			case <-check.Done():
				t.Fatal("a queued write finished while the writer was held")
			default:
			}
			close(release)
		}
		within(t, 10*time.Second, "queued writes", func() {
			if err := ok.Wait(); err != nil {
				t.Errorf("ok: %v", err)
			}
			if err := bad.Wait(); err == nil || err.Error() != "refused" {
				t.Errorf("bad: %v, want refused", err)
			}
			if err := never.Wait(); !errors.Is(err, context.Canceled) {
				t.Errorf("never: %v, want context.Canceled", err)
			}
			if err := check.Wait(); err != nil {
				t.Errorf("check: %v", err)
			}
		})
		if want := (seen{false, true, true}); got != want {
			t.Fatalf("Failed() seen by a later write = %+v, want %+v", got, want)
		}
		if len(rows) != 1 || rows[0] != 1 {
			t.Fatalf("later write saw rows %v, want [1]", rows)
		}
		// An earlier write in an earlier, committed transaction.
		if err := db.Write(ctx, func(storage.Tx) error {
			if ok.Failed() || !bad.Failed() {
				return errors.New("outcomes changed after commit")
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		select {
		case <-ok.Done():
		default:
			t.Fatal("Done not closed after Wait")
		}
	})
}

// TestWriteRunsToItsEnd: once a write function runs, the end of its
// request's context does not interrupt its statements; it commits.
func TestWriteRunsToItsEnd(t *testing.T) {
	db := storagetest.OpenSQLite(t)
	exec(t, db, `CREATE TABLE wend (id BIGINT PRIMARY KEY)`)
	ctx, cancel := context.WithCancel(context.Background())
	err := db.Write(ctx, func(tx storage.Tx) error {
		cancel()
		_, err := tx.Exec(ctx, `INSERT INTO wend (id) VALUES (1)`)
		return err
	})
	if err != nil {
		t.Fatalf("write whose context ended while it ran: %v", err)
	}
	if got := int64s(t, db.Reader(), `SELECT id FROM wend`); len(got) != 1 {
		t.Fatalf("rows %v, want [1]", got)
	}
	p := db.WriteQueued(context.Background(), func(storage.Tx) error { return nil })
	if err := p.Wait(); err != nil || !p.Committed() {
		t.Fatalf("Wait %v, Committed %v", err, p.Committed())
	}
	f := db.WriteQueued(context.Background(), func(storage.Tx) error { return errors.New("no") })
	if err := f.Wait(); err == nil || f.Committed() {
		t.Fatalf("failed write: Wait %v, Committed %v", err, f.Committed())
	}
}

// TestWriteQueuedWhileBatchRunsJoinsIt: a write queued while the writer
// is running a batch's functions joins that batch (one COMMIT for both)
// instead of waiting for its commit and then a commit of its own, runs
// after the batch's earlier functions, and neither is acknowledged before
// the commit: when Wait returns, a reader sees both rows. A joiner whose
// function fails rolls back only its own savepoint.
func TestWriteQueuedWhileBatchRunsJoinsIt(t *testing.T) {
	db := storagetest.OpenSQLite(t)
	ctx := context.Background()
	exec(t, db, `CREATE TABLE wj (id BIGINT PRIMARY KEY)`)
	insert := func(id int) func(storage.Tx) error {
		return func(tx storage.Tx) error {
			_, err := tx.Exec(ctx, `INSERT INTO wj (id) VALUES ($1)`, id)
			return err
		}
	}
	before := commitsOf(db)
	running := make(chan struct{})
	release := make(chan struct{})
	first := db.WriteQueued(ctx, func(tx storage.Tx) error {
		close(running)
		<-release
		return insert(1)(tx)
	})
	<-running
	var sawFirst []int64
	joiner := db.WriteQueued(ctx, func(tx storage.Tx) error {
		var err error
		sawFirst, err = storage.QueryColumn[int64](ctx, tx, `SELECT id FROM wj`)
		if err != nil {
			return err
		}
		return insert(2)(tx)
	})
	refused := db.WriteQueued(ctx, func(tx storage.Tx) error {
		if err := insert(3)(tx); err != nil {
			return err
		}
		return errors.New("refused")
	})
	select {
	case <-joiner.Done():
		t.Fatal("a write finished before the batch it joined committed")
	case <-time.After(20 * time.Millisecond):
	}
	close(release)
	within(t, 10*time.Second, "batch", func() {
		if err := first.Wait(); err != nil {
			t.Errorf("first: %v", err)
		}
		if err := joiner.Wait(); err != nil {
			t.Errorf("joiner: %v", err)
		}
		if err := refused.Wait(); err == nil || err.Error() != "refused" {
			t.Errorf("refused: %v, want refused", err)
		}
	})
	if got := int64s(t, db.Reader(), `SELECT id FROM wj ORDER BY id`); len(got) != 2 || got[0] != 1 || got[1] != 2 {
		t.Fatalf("rows after the acknowledgements %v, want [1 2]", got)
	}
	if len(sawFirst) != 1 || sawFirst[0] != 1 {
		t.Fatalf("the joiner saw rows %v, want [1] (it runs after the batch's earlier functions)", sawFirst)
	}
	if commits := commitsOf(db) - before; commits != 1 {
		t.Fatalf("%d commits for a batch and the writes queued while it ran, want 1", commits)
	}
}
