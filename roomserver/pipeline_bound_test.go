package roomserver

import (
	"context"
	"fmt"
	"testing"

	"github.com/myelin-chat/myelin/storage"
	"github.com/myelin-chat/myelin/storage/storagetest"
)

// TestRoomTailsBounded: the per-room tails of finished writes do not grow
// without bound, and a room whose write is still in flight keeps its
// entry (lockRoom must wait for it). Only SQLite queues writes; on
// PostgreSQL a write has its outcome when WriteQueued returns.
func TestRoomTailsBounded(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		ctx := context.Background()
		done := db.WriteQueued(ctx, func(storage.Tx) error { return nil })
		if err := done.Wait(); err != nil {
			t.Fatal(err)
		}
		var tails roomTails
		for i := range maxRoomTails - 1 {
			tails.set(fmt.Sprintf("!old%d:x", i), &roomTail{write: done})
		}
		var busy *storage.PendingWrite
		release := make(chan struct{})
		if db.Engine() == storage.SQLite {
			busy = db.WriteQueued(ctx, func(storage.Tx) error { <-release; return nil })
			tails.set("!busy:x", &roomTail{write: busy})
		}
		for i := range 2 * maxRoomTails {
			tails.set(fmt.Sprintf("!new%d:x", i), &roomTail{write: done})
		}
		tails.mu.Lock()
		n := len(tails.m)
		_, busyKept := tails.m["!busy:x"]
		tails.mu.Unlock()
		close(release)
		if busy != nil {
			if err := busy.Wait(); err != nil {
				t.Fatal(err)
			}
			if !busyKept {
				t.Error("the tail of a write still in flight was dropped")
			}
		}
		if n > maxRoomTails+1 {
			t.Fatalf("%d room tails kept, want at most %d", n, maxRoomTails+1)
		}
	})
}
