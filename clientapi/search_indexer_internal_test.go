package clientapi

import (
	"context"
	"slices"
	"testing"

	"github.com/myelin-chat/myelin/storage"
)

// resyncRooms is a Rooms whose only method in use is ResyncedAfter.
type resyncRooms struct {
	Rooms
	done map[string]int64
}

func (r resyncRooms) ResyncedAfter(context.Context, int64) (map[string]int64, error) {
	return r.done, nil
}

// TestResyncsAfterInStreamOrder: catchUpStream indexes a resync before the
// first event above its position, so resyncsAfter must list them by
// position, whatever order the map holding them iterates in.
func TestResyncsAfterInStreamOrder(t *testing.T) {
	done := map[string]int64{}
	var want []roomResync
	for i, id := range []string{"!g", "!c", "!a", "!f", "!b", "!h", "!e", "!d"} {
		pos := int64(100 - 10*i)
		done[id] = pos
		want = append(want, roomResync{id, pos})
	}
	slices.Reverse(want)
	ix := &streamIndexer{rooms: resyncRooms{done: done}}
	ix.resynced = func(context.Context, storage.Tx, string) error { return nil }
	for range 5 { // map iteration order differs from run to run
		got, err := ix.resyncsAfter(context.Background(), 0)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(got, want) {
			t.Fatalf("resyncsAfter = %v, want %v", got, want)
		}
	}
}
