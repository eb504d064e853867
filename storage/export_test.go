package storage

// Test hooks: the storage_test package reaches unexported internals only
// through these.

// RewriteForSQLite exposes the $N -> ?N rewrite.
var RewriteForSQLite = rewriteForSQLite

// QueuedWrites reports how many Write calls wait for the SQLite writer.
func (db *DB) QueuedWrites() int { return len(db.queue) }

// SQLiteCacheKiB is the page cache size every SQLite connection is opened with.
const SQLiteCacheKiB = sqliteCacheKiB
