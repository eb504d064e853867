//go:build !cgo

package storage

// sqliteMemoryUsed: without cgo there is no SQLite to ask.
func sqliteMemoryUsed() (int64, bool) { return 0, false }
