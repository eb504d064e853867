//go:build !cgo

package storage

// Without cgo there is no SQLite (go-sqlite3 needs cgo), so no VFS to
// register: the writer's DSN names none.
func registerWALVFS() (string, error) { return "", nil }

// walVFSStats: no VFS, no writes.
func walVFSStats() (appends, writes int64) { return 0, 0 }

// walVFSFailWrites: no VFS to fail.
func walVFSFailWrites(int) {}
