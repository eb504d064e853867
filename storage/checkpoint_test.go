package storage_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/myelin-chat/myelin/storage"
)

// openCheckpointDB opens a fresh SQLite database with a table of rows
// big enough to take a page each, and returns it, its path and a
// function that inserts rows [from, from+n) in one write.
func openCheckpointDB(t *testing.T) (*storage.DB, string, func(from, n int)) {
	t.Helper()
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "db.sqlite")
	db, err := storage.Open(ctx, storage.Options{Engine: storage.SQLite, SQLitePath: path})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	exec(t, db, `CREATE TABLE cp (id BIGINT PRIMARY KEY, body TEXT NOT NULL)`)
	body := strings.Repeat("x", 3000) // a page of its own per row
	insert := func(from, n int) {
		t.Helper()
		err := db.Write(ctx, func(tx storage.Tx) error {
			for id := from; id < from+n; id++ {
				if _, err := tx.Exec(ctx, `INSERT INTO cp (id, body) VALUES ($1, $2)`, id, body); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	return db, path, insert
}

// awaitWALBacklogBelow waits until fewer than pages of db's WAL pages are
// not yet in the database file, failing after limit.
func awaitWALBacklogBelow(t *testing.T, db *storage.DB, pages int64, limit time.Duration) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for {
		backlog, ok := db.WALBacklog()
		if ok && backlog < pages {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the WAL still holds %d pages not checkpointed (read: %v) %v after the last write, want fewer than %d", backlog, ok, limit, pages)
		}
		time.Sleep(storage.CheckpointIdle)
	}
}

func fileSize(t *testing.T, path string) int64 {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Size()
}

// waitCheckpoints waits up to 5 s for the idle checkpoint count to pass
// after.
func waitCheckpoints(t *testing.T, db *storage.DB, after int64, what string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for db.IdleCheckpoints() <= after {
		if time.Now().After(deadline) {
			t.Fatalf("no checkpoint %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// TestIdleCheckpoint: the WAL is copied into the database file once no
// commit has come for CheckpointIdle and it holds CheckpointPages pages
// not copied yet — not inside a write's COMMIT, not while commits keep
// coming sooner than CheckpointIdle, and not for an idle spell after a
// few pages.
func TestIdleCheckpoint(t *testing.T) {
	ctx := context.Background()
	db, path, insert := openCheckpointDB(t)
	insert(0, 10) // ~10 pages
	id := 10
	time.Sleep(5 * storage.CheckpointIdle)
	if n := db.IdleCheckpoints(); n != 0 {
		t.Fatalf("%d idle checkpoints with ~10 pages in the WAL, want none before %d", n, storage.CheckpointPages)
	}
	before := fileSize(t, path)
	// Writes back to back, closer together than CheckpointIdle, of more
	// pages than CheckpointPages (and fewer than SQLite's 1000): no
	// checkpoint while they come. (A phase in which the machine stalled
	// the test for CheckpointIdle between two writes proves nothing and
	// is run again.)
	const writes, rows = 30, 10
	for attempt := 0; ; attempt++ {
		if attempt == 3 {
			t.Fatal("three phases of writes stalled for CheckpointIdle")
		}
		checkpoints, grown := db.IdleCheckpoints(), fileSize(t, path)
		var maxGap time.Duration
		last := time.Now()
		for range writes {
			insert(id, rows)
			id += rows
			maxGap, last = max(maxGap, time.Since(last)), time.Now()
		}
		if maxGap >= storage.CheckpointIdle {
			t.Logf("a write took %v; again", maxGap)
			continue
		}
		if n := db.IdleCheckpoints() - checkpoints; n != 0 {
			t.Fatalf("%d checkpoints while writes kept coming (at most %v apart)", n, maxGap)
		}
		if got := fileSize(t, path); got != grown {
			t.Fatalf("the database file grew from %d to %d bytes while writes kept coming", grown, got)
		}
		break
	}
	checkpoints := db.IdleCheckpoints()
	waitCheckpoints(t, db, checkpoints, "after the writes stopped")
	if got, want := fileSize(t, path), before+int64(id)*3000; got < want {
		t.Fatalf("the database file is %d bytes after the idle checkpoint, want at least %d (from %d)", got, want, before)
	}
	time.Sleep(5 * storage.CheckpointIdle)
	if n := db.IdleCheckpoints() - checkpoints; n != 1 {
		t.Fatalf("%d idle checkpoints after the writes stopped, want 1", n)
	}
	var n int
	if err := db.Reader().QueryRow(ctx, `SELECT COUNT(*) FROM cp`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != id {
		t.Fatalf("%d rows, want %d", n, id)
	}
}

// TestIdleCheckpointsKeepWALShort: writes of ~40 pages each with a pause
// after each — what a message to a room of a few dozen members writes at
// a few messages a second. The first pause after the WAL reaches
// CheckpointPages checkpoints, the next write restarts the WAL from its
// beginning, and the WAL file stays far from the 1000 pages at which
// SQLite checkpoints inside a write's COMMIT. (Counting commits instead,
// 32 of them, let the WAL reach SQLite's threshold after 25 such writes.)
func TestIdleCheckpointsKeepWALShort(t *testing.T) {
	db, path, insert := openCheckpointDB(t)
	const writes, rows = 30, 40
	for i := range writes {
		insert(i*rows, rows)
		time.Sleep(3 * storage.CheckpointIdle)
		// On a loaded machine the checkpointer may not have run within
		// those idle spells: wait until the one due has (a WAL holding
		// CheckpointPages or more is what makes one due), so that the
		// size below measures the checkpoints, not the machine's load.
		awaitWALBacklogBelow(t, db, storage.CheckpointPages, 10*time.Second)
	}
	// Pages are 4 KiB, each framed by a 24-byte header; the WAL may reach
	// CheckpointPages and one write more (SQLite's own threshold,
	// WALAutocheckpointPages, is far above).
	const limit = 500 * (4096 + 24)
	got := fileSize(t, path+"-wal")
	t.Logf("WAL file %d bytes, %d idle checkpoints", got, db.IdleCheckpoints())
	if got > limit {
		t.Fatalf("the WAL file is %d bytes after %d writes of %d pages with pauses, want at most %d", got, writes, rows, limit)
	}
	if n := db.IdleCheckpoints(); n < writes*rows/500 {
		t.Fatalf("%d idle checkpoints after %d writes with pauses", n, writes)
	}
}

// TestCheckpointDoesNotHoldUpWrites: a write that comes while an idle
// checkpoint runs commits without waiting for it, and reads go on too.
func TestCheckpointDoesNotHoldUpWrites(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "db.sqlite")
	db, err := storage.Open(ctx, storage.Options{Engine: storage.SQLite, SQLitePath: path})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	started, release := make(chan struct{}, 1), make(chan struct{})
	db.SetBeforeCheckpoint(func() {
		select {
		case started <- struct{}{}:
		default:
		}
		<-release
	})
	released := false
	defer func() {
		if !released {
			close(release)
		}
	}()
	// A first write of more than CheckpointPages pages.
	err = db.Write(ctx, func(tx storage.Tx) error {
		if _, err := tx.Exec(ctx, `CREATE TABLE cp (id BIGINT PRIMARY KEY, body TEXT NOT NULL)`); err != nil {
			return err
		}
		for id := range storage.CheckpointPages + 50 {
			if _, err := tx.Exec(ctx, `INSERT INTO cp (id, body) VALUES ($1, $2)`, 1000+id, strings.Repeat("x", 3000)); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-started:
	case <-time.After(5 * time.Second):
		t.Fatal("no idle checkpoint began after the first commit")
	}
	// The checkpoint is under way (and held there): a write and a read.
	wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() {
		done <- db.Write(wctx, func(tx storage.Tx) error {
			_, err := tx.Exec(wctx, `INSERT INTO cp (id, body) VALUES (1, '')`)
			return err
		})
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("write during the checkpoint: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a write waited for the checkpoint that was running")
	}
	var n int
	if err := db.Reader().QueryRow(wctx, `SELECT COUNT(*) FROM cp`).Scan(&n); err != nil || n != storage.CheckpointPages+51 {
		t.Fatalf("read during the checkpoint: %d rows, %v", n, err)
	}
	checkpoints := db.IdleCheckpoints()
	close(release)
	released = true
	waitCheckpoints(t, db, checkpoints, "once released")
}

// TestIdleCheckpointRestartsWAL: once an idle checkpoint has copied the
// whole WAL, the WAL is restarted in the same idle spell (a write of
// storage's own), so the next caller's commit does not pay for the
// restart: the WAL then holds only that write's few frames, not the
// hundreds the checkpoint copied.
func TestIdleCheckpointRestartsWAL(t *testing.T) {
	ctx := context.Background()
	db, _, insert := openCheckpointDB(t)
	insert(0, storage.CheckpointPages+50)
	waitCheckpoints(t, db, 0, "after a write of more than CheckpointPages pages")
	deadline := time.Now().Add(5 * time.Second)
	for {
		var busy, walPages, copied int64
		if err := db.Reader().QueryRow(ctx, `PRAGMA wal_checkpoint(NOOP)`).Scan(&busy, &walPages, &copied); err != nil {
			t.Fatal(err)
		}
		if walPages > 0 && walPages < 10 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the WAL holds %d frames (%d copied) after the idle checkpoint, want it restarted with a few", walPages, copied)
		}
		time.Sleep(5 * time.Millisecond)
	}
	insert(1000, 1)
	var n int
	if err := db.Reader().QueryRow(ctx, `SELECT COUNT(*) FROM cp`).Scan(&n); err != nil || n != storage.CheckpointPages+51 {
		t.Fatalf("%d rows, %v", n, err)
	}
}

// walState is what a NOOP checkpoint reports: the WAL's frames since its
// last restart and how many of them are in the database file.
func walState(t *testing.T, db *storage.DB) (walPages, copied int64) {
	t.Helper()
	var busy int64
	if err := db.Reader().QueryRow(context.Background(), `PRAGMA wal_checkpoint(NOOP)`).Scan(&busy, &walPages, &copied); err != nil {
		t.Fatal(err)
	}
	return walPages, copied
}

// TestBusyCheckpointsUnderLoad: while writes keep coming (never
// CheckpointIdle apart), SQLite's own checkpoint, which runs inside a
// write's COMMIT and restarts the WAL, waits for WALAutocheckpointPages
// pages (not SQLite's default 1000), and the checkpointer starts copying
// the WAL into the database file from CheckpointBusyPages on, before
// SQLite's threshold, without restarting it, so that the COMMIT that does
// checkpoint finds most of the WAL copied. The WAL restarts after that
// COMMIT (or, while the checkpointer's copy holds SQLite's off, a later
// one).
//
// The checkpointer is a goroutine the writes do not wait for: on a busy
// machine it can start late, after the WAL passed WALAutocheckpointPages,
// and a phase in which the machine stalled the writes for CheckpointIdle
// (so that the idle checkpoint ran) proves nothing either. Such phases
// are run again, five in all.
func TestBusyCheckpointsUnderLoad(t *testing.T) {
	const rows = 40 // pages per write
	var late []string
	for attempt := 0; attempt < 5; attempt++ {
		db, _, insert := openCheckpointDB(t)
		// seen: the WAL's pages after the last write that returned;
		// startedAt: seen when the checkpointer's first checkpoint began.
		var seen, startedAt atomic.Int64
		startedAt.Store(-1)
		db.SetBeforeCheckpoint(func() { startedAt.CompareAndSwap(-1, seen.Load()) })
		var (
			prev, restartedAt int64         = 0, -1 // WAL pages at the last write; where it restarted
			maxGap            time.Duration         // between writes before the restart
			idle              int64                 // idle checkpoints before the restart
		)
		last := time.Now()
		for i := 0; restartedAt < 0; i++ {
			if i*rows > 3*storage.WALAutocheckpointPages {
				t.Fatalf("the WAL did not restart in %d writes of %d pages (%d pages now)", i, rows, prev)
			}
			idleBefore := db.IdleCheckpoints()
			insert(i*rows, rows)
			walPages, _ := walState(t, db)
			seen.Store(walPages)
			if walPages < prev {
				restartedAt = prev
				break
			}
			maxGap, last, idle = max(maxGap, time.Since(last)), time.Now(), idleBefore
			prev = walPages
		}
		if idle != 0 {
			t.Logf("a write took %v (%d idle checkpoints); again", maxGap, idle)
			continue
		}
		// The WAL held began pages and at most a write more when the
		// checkpointer's first checkpoint began.
		began := startedAt.Load()
		t.Logf("WAL restarted after %d pages; the checkpointer began at %d pages; %d busy checkpoints; writes at most %v apart",
			restartedAt, began, db.BusyCheckpoints(), maxGap)
		if restartedAt < storage.WALAutocheckpointPages {
			t.Fatalf("the WAL restarted after %d pages while writes kept coming, want at least %d", restartedAt, storage.WALAutocheckpointPages)
		}
		if db.BusyCheckpoints() == 0 || began < 0 || began+2*rows >= storage.WALAutocheckpointPages {
			late = append(late, fmt.Sprintf("%d busy checkpoints, the first began at %d pages", db.BusyCheckpoints(), began))
			continue
		}
		return
	}
	t.Fatalf("in no phase did the checkpointer begin copying before the WAL reached %d pages (%s)",
		storage.WALAutocheckpointPages, strings.Join(late, "; "))
}
