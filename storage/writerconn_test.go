package storage_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"runtime/metrics"
	"strings"
	"testing"
	"time"

	"github.com/myelin-chat/myelin/storage"
	"github.com/myelin-chat/myelin/storage/storagetest"
)

// goroutinesCreated is the process's count of goroutines started so far.
func goroutinesCreated() uint64 {
	s := []metrics.Sample{{Name: "/sched/goroutines-created:goroutines"}}
	metrics.Read(s)
	return s[0].Value.Uint64()
}

// TestWriterStartsNoGoroutinePerQuery: the SQLite writer runs a write's
// queries without database/sql starting a goroutine for each (it does for
// every query inside a *sql.Tx: commitBatch runs the transaction on a
// *sql.Conn), nor one per transaction.
func TestWriterStartsNoGoroutinePerQuery(t *testing.T) {
	db := storagetest.OpenSQLite(t)
	ctx := context.Background()
	exec(t, db, `CREATE TABLE t (id BIGINT PRIMARY KEY)`)
	const queries = 50
	write := func() {
		err := db.Write(ctx, func(tx storage.Tx) error {
			for i := range queries {
				if _, err := tx.Exec(ctx, `INSERT INTO t (id) VALUES ($1) ON CONFLICT (id) DO NOTHING`, i); err != nil {
					return err
				}
				rows, err := tx.Query(ctx, `SELECT id FROM t WHERE id = $1`, i)
				if err != nil {
					return err
				}
				for rows.Next() {
				}
				if err := rows.Close(); err != nil {
					return err
				}
				var id int64
				if err := tx.QueryRow(ctx, `SELECT id FROM t WHERE id = $1`, i).Scan(&id); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	write() // the statements prepared, the connection warm
	before := goroutinesCreated()
	write()
	write()
	// Other goroutines of the process (the checkpointer's timers, the
	// test's own) may start a few; a goroutine per query would be 200.
	if n := goroutinesCreated() - before; n > 10 {
		t.Errorf("%d goroutines started by two writes of %d queries each", n, 2*queries)
	}
}

// TestWriterSurvivesTransactionEndedByWrite: a write function that ends
// the transaction itself (its own ROLLBACK) fails its write, and so do
// the COMMIT or ROLLBACK that follow; the writer's connection is then
// replaced, and the next writes commit as usual (a leaked connection
// would leave them waiting forever: the writer has one).
func TestWriterSurvivesTransactionEndedByWrite(t *testing.T) {
	db := storagetest.OpenSQLite(t)
	ctx := context.Background()
	exec(t, db, `CREATE TABLE t (id BIGINT PRIMARY KEY)`)
	errBoom := errors.New("boom")
	for _, fail := range []bool{false, true} {
		var err error
		within(t, 10*time.Second, "a write ending its own transaction", func() {
			err = db.Write(ctx, func(tx storage.Tx) error {
				if _, err := tx.Exec(ctx, `INSERT INTO t (id) VALUES (100)`); err != nil {
					return err
				}
				if _, err := tx.Exec(ctx, `ROLLBACK`); err != nil {
					return err
				}
				if fail {
					return errBoom // rollbackWrite's ROLLBACK fails
				}
				return nil // the COMMIT fails
			})
		})
		if err == nil {
			t.Fatalf("fail=%v: a write whose transaction was gone was acknowledged", fail)
		}
		if fail && !errors.Is(err, errBoom) {
			t.Errorf("fail=%v: Write returned %v, want the function's error", fail, err)
		}
		within(t, 10*time.Second, "the next write", func() {
			exec(t, db, `INSERT INTO t (id) VALUES ($1)`, map[bool]int{false: 1, true: 2}[fail])
		})
	}
	if got := int64s(t, db.Reader(), `SELECT id FROM t ORDER BY id`); len(got) != 2 || got[0] != 1 || got[1] != 2 {
		t.Errorf("rows %v, want [1 2]", got)
	}
}

// TestWriterClosesRowsLeftOpen: rows a write function leaves open (a
// missing rows.Close) are closed by the writer once the function
// returns, so its connection goes back for the next batch: the next
// writes commit.
func TestWriterClosesRowsLeftOpen(t *testing.T) {
	db := storagetest.OpenSQLite(t)
	ctx := context.Background()
	exec(t, db, `CREATE TABLE t (id BIGINT PRIMARY KEY)`)
	exec(t, db, `INSERT INTO t (id) VALUES (1), (2), (3)`)
	for i, fail := range []bool{false, true} {
		var err error
		within(t, 10*time.Second, "a write leaving rows open", func() {
			err = db.Write(ctx, func(tx storage.Tx) error {
				rows, err := tx.Query(ctx, `SELECT id FROM t`)
				if err != nil {
					return err
				}
				rows.Next() // and never closed
				if _, err := tx.Exec(ctx, `INSERT INTO t (id) VALUES ($1)`, 10+i); err != nil {
					return err
				}
				if fail {
					return errors.New("boom")
				}
				return nil
			})
		})
		if (err != nil) != fail {
			t.Fatalf("fail=%v: Write returned %v", fail, err)
		}
		within(t, 10*time.Second, "the next write", func() {
			exec(t, db, `INSERT INTO t (id) VALUES ($1)`, 20+i)
		})
	}
	if got := int64s(t, db.Reader(), `SELECT id FROM t ORDER BY id`); len(got) != 6 || got[3] != 10 || got[4] != 20 || got[5] != 21 {
		t.Errorf("rows %v, want [1 2 3 10 20 21]", got)
	}
}

// TestWriterOutcomeMatchesRowsAfterSQLiteRollback: when SQLite ends a
// batch's transaction by itself (after a disk-full or I/O error, say) and
// the write function does not pass the error on — simulated here by a
// write that runs ROLLBACK and returns nil — every write is answered as
// it ended: a write reported done has its row, a write reported failed
// has none. Without the check, a SAVEPOINT after the rollback began a
// transaction of its own, RELEASE committed it, and the batch's COMMIT
// then failed: the later writes were reported failed with their rows
// committed.
func TestWriterOutcomeMatchesRowsAfterSQLiteRollback(t *testing.T) {
	ctx := context.Background()
	insert := func(id int) func(tx storage.Tx) error {
		return func(tx storage.Tx) error {
			_, err := tx.Exec(ctx, `INSERT INTO t (id) VALUES ($1)`, id)
			return err
		}
	}
	rolledBack := func(id int, wait func()) func(tx storage.Tx) error {
		return func(tx storage.Tx) error {
			if err := insert(id)(tx); err != nil {
				return err
			}
			if _, err := tx.Exec(ctx, `ROLLBACK`); err != nil {
				return err
			}
			wait()
			return nil // the error SQLite rolled back for, swallowed
		}
	}
	check := func(t *testing.T, db *storage.DB, pending map[int]*storage.PendingWrite) {
		t.Helper()
		outcome := map[int]error{}
		for id, p := range pending {
			within(t, 10*time.Second, fmt.Sprintf("write %d's outcome", id), func() { outcome[id] = p.Wait() })
		}
		present := map[int64]bool{}
		for _, id := range int64s(t, db.Reader(), `SELECT id FROM t`) {
			present[id] = true
		}
		for id, err := range outcome {
			if (err == nil) != present[int64(id)] {
				t.Errorf("write %d: reported %v, row present: %v", id, err, present[int64(id)])
			}
		}
	}
	t.Run("first write of the batch", func(t *testing.T) {
		db := storagetest.OpenSQLite(t)
		exec(t, db, `CREATE TABLE t (id BIGINT PRIMARY KEY)`)
		queued := make(chan struct{})
		pending := map[int]*storage.PendingWrite{}
		// Write 1 waits, after the rollback, until write 2 is queued, so
		// that write 2 joins its batch.
		pending[1] = db.WriteQueued(ctx, rolledBack(1, func() { <-queued }))
		pending[2] = db.WriteQueued(ctx, insert(2))
		close(queued)
		check(t, db, pending)
		if err := pending[2].Wait(); err != nil {
			t.Errorf("write 2, after the rolled-back one, failed: %v", err)
		}
	})
	t.Run("write in a savepoint", func(t *testing.T) {
		db := storagetest.OpenSQLite(t)
		exec(t, db, `CREATE TABLE t (id BIGINT PRIMARY KEY)`)
		gate, queued := make(chan struct{}), make(chan struct{})
		pending := map[int]*storage.PendingWrite{}
		// Write 0 holds the batch open until 1, 2 and 3 are queued; they
		// join it, each in its own savepoint. (Write 3, taken in but not
		// run when the transaction is found gone, fails with the batch.)
		pending[0] = db.WriteQueued(ctx, func(tx storage.Tx) error { <-gate; return insert(0)(tx) })
		pending[1] = db.WriteQueued(ctx, insert(1))
		pending[2] = db.WriteQueued(ctx, rolledBack(2, func() { <-queued }))
		pending[3] = db.WriteQueued(ctx, insert(3))
		close(gate)
		close(queued)
		check(t, db, pending)
	})
}

// TestWriterSurvivesBusyBegin: when BEGIN IMMEDIATE fails (another
// process — a `myelin user` command, a second server on the file —
// holds SQLite's write lock past busy_timeout), the writes of that batch
// fail and the writer's one connection goes back to its pool, so the
// writes after the lock is released commit (a connection kept would
// leave them waiting forever). Takes busy_timeout (10 s), run in
// parallel.
func TestWriterSurvivesBusyBegin(t *testing.T) {
	t.Parallel()
	opts := storagetest.SQLiteOptions(t)
	db, err := storage.Open(context.Background(), opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	ctx := context.Background()
	exec(t, db, `CREATE TABLE t (id BIGINT PRIMARY KEY)`)

	other, err := sql.Open("sqlite3", "file:"+opts.SQLitePath+"?_journal_mode=WAL")
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	lock, err := other.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Close()
	if _, err := lock.ExecContext(ctx, `BEGIN IMMEDIATE`); err != nil {
		t.Fatal(err)
	}
	within(t, 30*time.Second, "a write while another process holds the write lock", func() {
		err = db.Write(ctx, func(tx storage.Tx) error {
			_, err := tx.Exec(ctx, `INSERT INTO t (id) VALUES (1)`)
			return err
		})
	})
	if err == nil || !strings.Contains(err.Error(), "begin write") {
		t.Fatalf("a write that could not begin: %v, want a begin error", err)
	}
	if _, err := lock.ExecContext(ctx, `ROLLBACK`); err != nil {
		t.Fatal(err)
	}
	within(t, 10*time.Second, "the next write", func() {
		exec(t, db, `INSERT INTO t (id) VALUES (2)`)
	})
	if got := int64s(t, db.Reader(), `SELECT id FROM t`); len(got) != 1 || got[0] != 2 {
		t.Errorf("rows %v, want [2]", got)
	}
}
