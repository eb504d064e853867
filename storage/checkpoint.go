package storage

import (
	"context"
	"database/sql"
	"fmt"
	"net/url"
	"time"
)

// WAL checkpoints off the commit path.
//
// In WAL mode a commit appends the transaction's pages to the -wal file
// and fsyncs it (synchronous=FULL); that fsync is what makes the commit
// durable. A checkpoint later copies committed pages from the WAL into
// the database file and fsyncs that file, so that the WAL can start over.
// By default SQLite runs a checkpoint inside whichever COMMIT takes the
// WAL past 1,000 pages: on the single writer, which then copies pages and
// waits for the database file's fsync while every queued write (and every
// caller waiting for its acknowledgement) waits too. Under 8 concurrent
// senders that was a 3–17 ms stall every ~40 ms (docs/benchmarks.md,
// "Concurrent senders, part 6").
//
// Here a connection of its own runs PRAGMA wal_checkpoint(PASSIVE) at
// most every checkpointEvery while commits happen; the writer keeps an
// automatic checkpoint only as a backstop at writerAutoCheckpointPages.
// Durability does not change: an acknowledged write is in the fsynced WAL
// before its caller is answered, whoever checkpoints it later, and
// SQLite's checkpoint is crash-safe on any connection (it records how far
// it copied only after the database file's fsync). A PASSIVE checkpoint
// takes no lock that blocks the writer or readers; it copies what no
// reader still needs, and the writer restarts the WAL from its beginning
// at its next commit once everything has been copied.

// checkpointEvery is the least time between two background checkpoints
// while writes keep coming. At ~3,000 sends/s (about 7 WAL pages each)
// 50 ms is ~1,000 pages, the size SQLite's own automatic checkpoint uses.
const checkpointEvery = 50 * time.Millisecond

// writerAutoCheckpointPages is the writer's own automatic checkpoint
// threshold (PRAGMA wal_autocheckpoint), a backstop should the background
// checkpointer fall behind: the WAL then stays under ~32 MiB as before.
const writerAutoCheckpointPages = 8000

// openCheckpointer opens the checkpoint connection (one, no page cache to
// speak of: a checkpoint reads WAL frames and writes database pages) and
// moves the writer's automatic checkpoint to the backstop threshold.
func (db *DB) openCheckpointer(ctx context.Context, path string, common url.Values) error {
	q := url.Values{}
	for k, v := range common {
		q[k] = v
	}
	q.Set("_cache_size", "-64")
	q.Set("_stmt_cache_size", "4")
	c, err := sql.Open("sqlite3", "file:"+path+"?"+q.Encode())
	if err != nil {
		return fmt.Errorf("storage: opening sqlite checkpointer: %w", err)
	}
	c.SetMaxOpenConns(1)
	c.SetMaxIdleConns(1)
	c.SetConnMaxLifetime(0)
	c.SetConnMaxIdleTime(0)
	if err := c.PingContext(ctx); err != nil {
		c.Close()
		return fmt.Errorf("storage: opening sqlite checkpointer: %w", err)
	}
	// The writer has one connection that is never closed while the
	// database is open (SetMaxOpenConns(1), no lifetime), so the pragma
	// stays in force; were the driver ever to reopen it, the new
	// connection would checkpoint at SQLite's default of 1,000 pages
	// itself, as before this change.
	if _, err := db.writer.ExecContext(ctx, fmt.Sprintf("PRAGMA wal_autocheckpoint=%d", writerAutoCheckpointPages)); err != nil {
		c.Close()
		return fmt.Errorf("storage: setting wal_autocheckpoint: %w", err)
	}
	db.checkpointer = c
	db.checkpointKick = make(chan struct{}, 1)
	db.checkpointDone = make(chan struct{})
	go db.checkpointLoop()
	return nil
}

// kickCheckpointer tells the checkpointer that a commit happened. It
// never blocks the writer.
func (db *DB) kickCheckpointer() {
	select {
	case db.checkpointKick <- struct{}{}:
	default:
	}
}

// checkpointLoop runs a PASSIVE checkpoint after commits, at most every
// checkpointEvery, until the database closes.
func (db *DB) checkpointLoop() {
	defer close(db.checkpointDone)
	timer := time.NewTimer(0)
	<-timer.C
	for {
		select {
		case <-db.checkpointKick:
		case <-db.closed:
			return
		}
		// A failure (SQLITE_BUSY cannot happen with PASSIVE; an I/O error
		// would fail the writer's next commit too) leaves the pages in
		// the WAL, where the next checkpoint or the writer's backstop
		// takes them.
		_, _ = db.checkpointer.Exec("PRAGMA wal_checkpoint(PASSIVE)")
		db.checkpoints.Add(1)
		timer.Reset(checkpointEvery)
		select {
		case <-timer.C:
		case <-db.closed:
			timer.Stop()
			return
		}
	}
}
