package storage

// Test hooks: the storage_test package reaches unexported internals only
// through these.

// RewriteForSQLite exposes the $N -> ?N rewrite.
var RewriteForSQLite = rewriteForSQLite

// QueuedWrites reports how many Write calls wait for the SQLite writer.
func (db *DB) QueuedWrites() int { return len(db.queue) }

// SQLiteCacheKiB is the page cache size the SQLite writer is opened with.
const SQLiteCacheKiB = sqliteCacheKiB

// SQLiteReaderCacheKiB is the page cache size every SQLite reader is opened with.
const SQLiteReaderCacheKiB = sqliteReaderCacheKiB
