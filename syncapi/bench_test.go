package syncapi_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/myelin-chat/myelin/internal/testserver"
	"github.com/myelin-chat/myelin/roomserver"
	"github.com/myelin-chat/myelin/storage"
)

// BenchmarkInitialSync100Rooms: an initial /sync (HTTP, default filter)
// of a user in 100 rooms with a few messages each.
func BenchmarkInitialSync100Rooms(b *testing.B) {
	srv := testserver.Start(b, storage.SQLite, nil)
	alice := newUser(b, srv, "alice")
	for i := 0; i < 100; i++ {
		r := createRoom(b, srv, alice, roomserver.CreateRoomRequest{Preset: "private_chat", Name: fmt.Sprint("room ", i)})
		for j := 0; j < 5; j++ {
			sendText(b, srv, alice, r, "hello")
		}
	}
	ctx := context.Background()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		resp, err := alice.client.SyncRequest(ctx, 0, "", "", false, "")
		if err != nil || len(resp.Rooms.Join) != 100 {
			b.Fatalf("sync: %v, %d rooms", err, len(resp.Rooms.Join))
		}
	}
}

// BenchmarkWakeLatency: the time from SendEvent returning (the event is
// committed) to a waiting /sync's response arriving at the client, over
// loopback HTTP. Reported as wake-µs.
func BenchmarkWakeLatency(b *testing.B) {
	srv := testserver.Start(b, storage.SQLite, nil)
	alice := newUser(b, srv, "alice")
	roomID := createRoom(b, srv, alice, roomserver.CreateRoomRequest{Preset: "private_chat"})
	ctx := context.Background()
	first, err := alice.client.SyncRequest(ctx, 0, "", "", false, "")
	if err != nil {
		b.Fatal(err)
	}
	since := first.NextBatch
	var total time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		got := make(chan time.Time, 1)
		var next string
		go func() {
			resp, err := alice.client.SyncRequest(ctx, 30000, since, "", false, "")
			if err == nil {
				next = resp.NextBatch
			}
			got <- time.Now()
		}()
		time.Sleep(5 * time.Millisecond) // the request is now waiting
		sendText(b, srv, alice, roomID, "ping")
		sent := time.Now()
		total += (<-got).Sub(sent)
		since = next
	}
	b.ReportMetric(float64(total.Microseconds())/float64(b.N), "wake-µs")
}
