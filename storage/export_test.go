package storage

import (
	"context"
	"time"
)

// Test hooks: the storage_test package reaches unexported internals only
// through these.

// RewriteForSQLite exposes the $N -> ?N rewrite.
var RewriteForSQLite = rewriteForSQLite

// QueuedWrites reports how many Write calls wait for the SQLite writer.
func (db *DB) QueuedWrites() int { return len(db.queue) }

// Closing reports whether Close has begun: from then on Write refuses.
func (db *DB) Closing() bool {
	select {
	case <-db.closed:
		return true
	default:
		return false
	}
}

// SQLiteCacheKiB is the page cache size the SQLite writer is opened with.
const SQLiteCacheKiB = sqliteCacheKiB

// SQLiteReaderCacheKiB is the page cache size every SQLite reader is opened with.
const SQLiteReaderCacheKiB = sqliteReaderCacheKiB

// SQLiteMemoryUsed reports SQLite's allocated bytes in this process.
var SQLiteMemoryUsed = sqliteMemoryUsed

// MaxCachedStatementArgs is the most arguments a cached SQLite statement takes.
const MaxCachedStatementArgs = maxCachedStatementArgs

// WrapRewrite wraps db's query rewrite (memo included); tests use it to
// see which texts reach it. Call it before the first query.
func (db *DB) WrapRewrite(wrap func(rewrite func(string) string) func(string) string) {
	db.rewrite = wrap(db.rewrite)
}

// NewRewriter exposes the memoising wrapper of a query rewrite.
var NewRewriter = newRewriter

// IdleCheckpoints reports how many WAL checkpoints ran after an idle
// spell.
func (db *DB) IdleCheckpoints() int64 { return db.idleCheckpoints.Load() }

// BusyCheckpoints reports how many WAL checkpoints ran under load.
func (db *DB) BusyCheckpoints() int64 { return db.busyCheckpoints.Load() }

// CheckpointIdle and CheckpointPages: when a WAL checkpoint runs;
// CheckpointBusyPages and WALAutocheckpointPages: when under load.
const (
	CheckpointIdle         = checkpointIdle
	CheckpointPages        = checkpointPages
	CheckpointBusyPages    = checkpointBusyPages
	WALAutocheckpointPages = walAutocheckpointPages
)

// SetBeforeCheckpoint makes every checkpoint of the checkpointer's (idle
// or busy) call fn once it holds its connection, before it checkpoints.
// Call it before the first write.
func (db *DB) SetBeforeCheckpoint(fn func()) { db.beforeCheckpoint = fn }

// SetHoldTimes replaces the commit hold's times (intent.go): how long a
// commit is held at most, how long an announcement counts, and the window
// in which the writes a commit answered count as coming back; the hold is
// then not bounded by how long commits take. Call it before the first
// write.
func (db *DB) SetHoldTimes(hold, fresh, window time.Duration) {
	db.holdTimes = holdTimes{hold: hold, fresh: fresh, window: window, fixed: true}
}

// SetBoundedHoldTimes is SetHoldTimes with the hold still bounded by how
// long commits have taken (as in production). Call it before the first
// write.
func (db *DB) SetBoundedHoldTimes(hold, fresh, window time.Duration) {
	db.holdTimes = holdTimes{hold: hold, fresh: fresh, window: window}
}

// CommitTime reports the writer's moving average of COMMIT durations;
// read it only while no write is in flight.
func (db *DB) CommitTime() time.Duration { return db.commitTime }

// RestartWAL queues the idle checkpointer's WAL-restart write.
func (db *DB) RestartWAL() { db.restartWAL() }

// WALBacklog reports how many of the WAL's pages are not yet in the
// database file (a NOOP checkpoint on a reader connection), and whether
// it could read them.
func (db *DB) WALBacklog() (int64, bool) {
	ctx := context.Background()
	conn, err := db.reader.Conn(ctx)
	if err != nil {
		return 0, false
	}
	defer conn.Close()
	var busy, walPages, copied int64
	if err := conn.QueryRowContext(ctx, "PRAGMA wal_checkpoint(NOOP)").Scan(&busy, &walPages, &copied); err != nil {
		return 0, false
	}
	return walPages - copied, true
}

// WALVFSStats reports, process-wide, the writes SQLite made to WAL files
// through the writer's VFS (appends) and the writes the VFS made to them
// (writes): one per held-back run.
var WALVFSStats = walVFSStats

// WALVFSFailWrites makes the next n held-back WAL runs fail to write
// (SQLITE_IOERR_WRITE), in every database of the process.
var WALVFSFailWrites = walVFSFailWrites

// WALBufMax is the most WAL bytes the writer's VFS holds back.
const WALBufMax = walBufMax
