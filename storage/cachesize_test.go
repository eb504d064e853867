package storage_test

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/myelin-chat/myelin/storage"
)

// TestSQLitePageCacheSize pins the page cache every SQLite connection runs
// with, the writer's and the readers': the memory figures in
// docs/benchmarks.md ("SQLite page caches sized to the load") were measured
// with it, and a DSN parameter the driver ignored would silently bring back
// SQLite's own default.
func TestSQLitePageCacheSize(t *testing.T) {
	ctx := context.Background()
	db, err := storage.Open(ctx, storage.Options{Engine: storage.SQLite, SQLitePath: filepath.Join(t.TempDir(), "db.sqlite")})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	want := int64(-storage.SQLiteCacheKiB) // negative: KiB, not pages
	var got int64
	if err := db.Write(ctx, func(tx storage.Tx) error {
		return tx.QueryRow(ctx, `PRAGMA cache_size`).Scan(&got)
	}); err != nil {
		t.Fatal(err)
	}
	if got != want {
		t.Errorf("writer: cache_size = %d, want %d", got, want)
	}
	// Several readers at once, so that more than one pooled connection is checked.
	const readers = 3
	errc := make(chan error, readers)
	hold := make(chan struct{})
	vals := make(chan int64, readers)
	for range readers {
		go func() {
			errc <- db.Read(ctx, func(q storage.Querier) error {
				var v int64
				if err := q.QueryRow(ctx, `PRAGMA cache_size`).Scan(&v); err != nil {
					return err
				}
				vals <- v
				<-hold
				return nil
			})
		}()
	}
	for range readers {
		if v := <-vals; v != int64(-storage.SQLiteReaderCacheKiB) {
			t.Errorf("reader: cache_size = %d, want %d", v, -storage.SQLiteReaderCacheKiB)
		}
	}
	close(hold)
	for range readers {
		if err := <-errc; err != nil {
			t.Fatal(err)
		}
	}
}
