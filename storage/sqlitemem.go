//go:build cgo

package storage

/*
// SQLite's own declaration (sqlite3.h, which go-sqlite3 compiles in).
extern int sqlite3_status64(int op, long long *pCurrent, long long *pHighwater, int resetFlag);

static long long myelin_sqlite_memory_used(void) {
	long long current = 0, highwater = 0;
	sqlite3_status64(0, &current, &highwater, 0); // 0: SQLITE_STATUS_MEMORY_USED
	return current;
}
*/
import "C"

// sqliteMemoryUsed is the memory SQLite holds in this process, in bytes
// (SQLITE_STATUS_MEMORY_USED: page caches, schemas, prepared statements of
// every connection), and whether it could be read. Tests use it to show
// what a connection keeps.
func sqliteMemoryUsed() (int64, bool) { return int64(C.myelin_sqlite_memory_used()), true }
