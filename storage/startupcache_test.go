package storage_test

import (
	"context"
	"path/filepath"
	"strings"
	"testing"

	"github.com/myelin-chat/myelin/storage"
	"github.com/myelin-chat/myelin/storage/storagetest"
)

// TestReleaseStartupCache: after a start-up's writes (here ~1.5 MB of rows,
// as the migrations write a fresh database) the writer's page cache holds
// every page written; ReleaseStartupCache gives them back to SQLite's
// allocator (SQLite's allocated bytes fall by most of what was written),
// and the database keeps working: the rows read back, and a later write
// updates them and is read back.
func TestReleaseStartupCache(t *testing.T) {
	ctx := context.Background()
	db, err := storage.Open(ctx, storage.Options{Engine: storage.SQLite,
		SQLitePath: filepath.Join(t.TempDir(), "db.sqlite"), MaxOpenConns: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if _, ok := storage.SQLiteMemoryUsed(); !ok {
		t.Fatal("SQLite's memory status cannot be read in this build")
	}
	const rows, size = 750, 2000 // ~1.5 MB, under the writer's 4 MB cache
	pad := strings.Repeat("x", size)
	if err := db.Write(ctx, func(tx storage.Tx) error {
		if _, err := tx.Exec(ctx, `CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT NOT NULL)`); err != nil {
			return err
		}
		for i := 1; i <= rows; i++ {
			if _, err := tx.Exec(ctx, `INSERT INTO t (id, v) VALUES ($1, $2)`, i, pad); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	before, _ := storage.SQLiteMemoryUsed()
	if err := db.ReleaseStartupCache(ctx); err != nil {
		t.Fatal(err)
	}
	after, _ := storage.SQLiteMemoryUsed()
	if freed := before - after; freed < rows*size*3/4 {
		t.Errorf("SQLite memory %d -> %d bytes: %d freed, want at least %d (the written pages)",
			before, after, freed, rows*size*3/4)
	}

	var n, total int64
	if err := db.Reader().QueryRow(ctx, `SELECT COUNT(*), SUM(LENGTH(v)) FROM t`).Scan(&n, &total); err != nil {
		t.Fatal(err)
	}
	if n != rows || total != rows*size {
		t.Fatalf("after release: %d rows, %d bytes; want %d, %d", n, total, rows, rows*size)
	}
	exec(t, db, `UPDATE t SET v = 'y' WHERE id <= $1`, 10)
	if got := int64s(t, db.Reader(), `SELECT id FROM t WHERE v = 'y' ORDER BY id`); len(got) != 10 || got[0] != 1 || got[9] != 10 {
		t.Fatalf("after release, updated rows: %v", got)
	}
}

// TestReleaseStartupCachePostgres: on PostgreSQL there is no page cache in
// the process; ReleaseStartupCache does nothing and the database works on.
func TestReleaseStartupCachePostgres(t *testing.T) {
	ctx := context.Background()
	db := storagetest.OpenPostgres(t)
	exec(t, db, `CREATE TABLE t (id BIGINT PRIMARY KEY)`)
	if err := db.ReleaseStartupCache(ctx); err != nil {
		t.Fatal(err)
	}
	exec(t, db, `INSERT INTO t (id) VALUES ($1)`, 7)
	if got := int64s(t, db.Reader(), `SELECT id FROM t`); len(got) != 1 || got[0] != 7 {
		t.Fatalf("after ReleaseStartupCache: %v", got)
	}
}
