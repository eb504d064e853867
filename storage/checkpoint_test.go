package storage_test

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/myelin-chat/myelin/storage"
	"github.com/myelin-chat/myelin/storage/storagetest"
)

// Committed pages reach the database file while the database is open,
// copied by the background checkpointer, although the WAL never reaches
// the writer's own (backstop) automatic checkpoint threshold nor SQLite's
// default 1,000 pages: with the checkpoint left to the writer, the file
// would hold only the schema until Close. Every committed row is read
// back, and the WAL starts over instead of growing.
func TestBackgroundCheckpointCopiesCommittedPages(t *testing.T) {
	opts := storagetest.SQLiteOptions(t)
	db, err := storage.Open(context.Background(), opts)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	exec(t, db, `CREATE TABLE blobs (id BIGINT PRIMARY KEY, body TEXT NOT NULL)`)
	body := strings.Repeat("x", 2000)
	const rows = 300 // ~150 pages of 4 KiB in all
	for i := range rows {
		exec(t, db, `INSERT INTO blobs (id, body) VALUES ($1, $2)`, i, body)
	}
	deadline := time.Now().Add(5 * time.Second)
	var size int64
	for {
		st, err := os.Stat(opts.SQLitePath)
		if err != nil {
			t.Fatal(err)
		}
		if size = st.Size(); size >= rows*2000 || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if size < rows*2000 {
		t.Fatalf("database file is %d bytes after %d commits of 2 KB rows: no checkpoint copied them (background checkpoints run: %d)",
			size, rows, db.BackgroundCheckpoints())
	}
	if db.BackgroundCheckpoints() == 0 {
		t.Fatal("the pages reached the file without a background checkpoint")
	}
	if got := int64s(t, db.Reader(), `SELECT COUNT(*) FROM blobs`); got[0] != rows {
		t.Fatalf("%d rows, want %d", got[0], rows)
	}
	// Once everything is copied, the next commit restarts the WAL, so it
	// stops growing: more commits of the same size leave it no larger.
	walBefore := fileSize(t, opts.SQLitePath+"-wal")
	for round := 0; round < 3; round++ {
		time.Sleep(100 * time.Millisecond) // > checkpointEvery: a checkpoint ran
		for i := range rows {
			exec(t, db, `UPDATE blobs SET body = $1 WHERE id = $2`, body+string(rune('a'+round)), i)
		}
	}
	if walAfter := fileSize(t, opts.SQLitePath+"-wal"); walAfter > walBefore+walBefore/2 {
		t.Errorf("WAL grew from %d to %d bytes over three more rounds: it does not restart", walBefore, walAfter)
	}
}

func fileSize(t *testing.T, path string) int64 {
	t.Helper()
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return st.Size()
}
