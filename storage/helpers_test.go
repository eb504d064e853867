package storage_test

import (
	"context"
	"testing"
	"time"

	"github.com/myelin-chat/myelin/storage"
)

// exec runs one statement in its own Write and fails the test on error.
func exec(t testing.TB, db *storage.DB, query string, args ...any) {
	t.Helper()
	err := db.Write(context.Background(), func(tx storage.Tx) error {
		_, err := tx.Exec(context.Background(), query, args...)
		return err
	})
	if err != nil {
		t.Fatalf("%s: %v", query, err)
	}
}

// int64s returns the single int column of every row query yields.
func int64s(t testing.TB, q storage.Querier, query string, args ...any) []int64 {
	t.Helper()
	out, err := storage.QueryColumn[int64](context.Background(), q, query, args...)
	if err != nil {
		t.Fatalf("%s: %v", query, err)
	}
	return out
}

// within fails the test if fn has not returned after d: the storage layer's
// worst failure mode is a caller waiting forever.
func within(t *testing.T, d time.Duration, what string, fn func()) {
	t.Helper()
	done := make(chan struct{})
	go func() { defer close(done); fn() }()
	select {
	case <-done:
	case <-time.After(d):
		t.Fatalf("%s did not finish within %v", what, d)
	}
}

// commitsOf is db's commit count less the commits of the idle
// checkpointer's own WAL-restart writes, which may come at any idle
// moment: the commits of the test's writes.
func commitsOf(db *storage.DB) int64 { return db.CommitCount() - db.WALRestarts() }
