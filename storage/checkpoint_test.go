package storage_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/myelin-chat/myelin/storage"
)

// TestIdleCheckpoint: once CheckpointAfterCommits commits have
// accumulated, the SQLite writer copies the WAL into the database file
// when no write has come for CheckpointIdle, not inside a write's COMMIT:
// the write that reaches the count is answered with nothing
// checkpointed, writes that keep coming sooner than CheckpointIdle put
// the checkpoint off, and the first idle spell runs it (the database
// file then holds the rows, which SQLite's own checkpoint, at 1000 WAL
// pages, would not have copied yet).
func TestIdleCheckpoint(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "db.sqlite")
	db, err := storage.Open(ctx, storage.Options{Engine: storage.SQLite, SQLitePath: path})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	exec(t, db, `CREATE TABLE cp (id BIGINT PRIMARY KEY, body TEXT NOT NULL)`)
	time.Sleep(2 * storage.CheckpointIdle) // nothing due yet: one commit
	if n := db.IdleCheckpoints(); n != 0 {
		t.Fatalf("%d idle checkpoints after one commit", n)
	}
	size := func() int64 {
		t.Helper()
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		return fi.Size()
	}
	before := size()
	body := strings.Repeat("x", 3000) // a page of its own per row
	write := func(id int) {
		t.Helper()
		err := db.Write(ctx, func(tx storage.Tx) error {
			_, err := tx.Exec(ctx, `INSERT INTO cp (id, body) VALUES ($1, $2)`, id, body)
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	// Writes back to back, closer together than CheckpointIdle: no
	// checkpoint while they come, though the count is reached half-way.
	// (A phase in which the machine stalled the test for CheckpointIdle
	// between two writes proves nothing and is run again.)
	id := 0
	for attempt := 0; ; attempt++ {
		if attempt == 3 {
			t.Fatal("three phases of writes stalled for CheckpointIdle")
		}
		checkpoints, grown := db.IdleCheckpoints(), size()
		var maxGap time.Duration
		last := time.Now()
		for range 2 * storage.CheckpointAfterCommits {
			write(id)
			id++
			maxGap, last = max(maxGap, time.Since(last)), time.Now()
		}
		if maxGap >= storage.CheckpointIdle {
			t.Logf("a write took %v; again", maxGap)
			continue
		}
		if n := db.IdleCheckpoints() - checkpoints; n != 0 {
			t.Fatalf("%d checkpoints while writes kept coming (at most %v apart)", n, maxGap)
		}
		if got := size(); got != grown {
			t.Fatalf("the database file grew from %d to %d bytes while writes kept coming", grown, got)
		}
		break
	}
	checkpoints := db.IdleCheckpoints()
	deadline := time.Now().Add(5 * time.Second)
	for db.IdleCheckpoints() == checkpoints {
		if time.Now().After(deadline) {
			t.Fatal("no checkpoint after the writes stopped")
		}
		time.Sleep(time.Millisecond)
	}
	if got, want := size(), before+int64(id)*3000; got < want {
		t.Fatalf("the database file is %d bytes after the idle checkpoint, want at least %d (from %d)", got, want, before)
	}
	// Counted afresh: the next checkpoint waits for as many commits.
	checkpoints = db.IdleCheckpoints()
	write(id)
	id++
	time.Sleep(3 * storage.CheckpointIdle)
	if n := db.IdleCheckpoints() - checkpoints; n != 0 {
		t.Fatalf("%d more idle checkpoints after one more commit, want none", n)
	}
	var n int
	if err := db.Reader().QueryRow(ctx, `SELECT COUNT(*) FROM cp`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != id {
		t.Fatalf("%d rows, want %d", n, id)
	}
}
