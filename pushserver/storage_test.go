package pushserver

import (
	"context"
	"errors"
	"io/fs"
	"testing"

	"github.com/myelin-chat/myelin/storage"
	"github.com/myelin-chat/myelin/storage/storagetest"
)

// TestConsumerPosition checks the guard that keeps two consumers (or a
// consumer and its restarted self) from applying the same batch twice:
// a position only moves from the value the batch was read at, and it is
// what a restarted server resumes from.
func TestConsumerPosition(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		ctx := context.Background()
		sub, _ := fs.Sub(migrations, "migrations")
		if err := db.Migrate(ctx, "pushserver", sub); err != nil {
			t.Fatal(err)
		}
		advance := func(from, to int64) error {
			return db.Write(ctx, func(tx storage.Tx) error { return advancePosition(ctx, tx, eventsStream, from, to) })
		}
		if err := advance(0, 5); err != nil {
			t.Fatalf("first advance: %v", err)
		}
		if err := advance(0, 7); !errors.Is(err, errMoved) {
			t.Fatalf("a second batch from 0 was applied: %v", err)
		}
		if err := advance(5, 9); err != nil {
			t.Fatalf("advance 5 -> 9: %v", err)
		}
		if err := advance(5, 12); !errors.Is(err, errMoved) {
			t.Fatalf("a stale batch from 5 was applied: %v", err)
		}
		s := &Server{db: db}
		events, receipts, err := s.loadPositions(ctx)
		if err != nil || events != 9 || receipts != 0 {
			t.Fatalf("resume positions: events %d receipts %d err %v; want 9, 0", events, receipts, err)
		}
	})
}
