package syncapi_test

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"syscall"
	"testing"
	"time"

	"maunium.net/go/mautrix/id"

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

// BenchmarkFanout20: 20 members of one room each long-poll /sync (HTTP,
// keep-alive); one message is sent; the figure is the time from the
// send starting to each listener's response carrying it, as p50 and p99
// over every delivery (fanout-p50-µs, fanout-p99-µs; the send itself,
// one fsync, is in them).
func BenchmarkFanout20(b *testing.B) { benchmarkFanout(b, 20) }

// BenchmarkFanout200 is BenchmarkFanout20 with 200 listeners.
func BenchmarkFanout200(b *testing.B) { benchmarkFanout(b, 200) }

func benchmarkFanout(b *testing.B, listeners int) {
	srv := testserver.Start(b, storage.SQLite, nil)
	alice := newUser(b, srv, "alice")
	roomID := createRoom(b, srv, alice, roomserver.CreateRoomRequest{Preset: "public_chat"})
	ctx := context.Background()
	users := make([]*user, listeners)
	since := make([]string, listeners)
	// Keep-alive for every listener, as a real client (and myelin-bench)
	// has: the default transport keeps only 2 idle connections per host.
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.MaxIdleConnsPerHost = listeners + 1
	for i := range users {
		users[i] = newUser(b, srv, fmt.Sprintf("listener%d", i))
		users[i].client.Client = &http.Client{Transport: tr}
		membership(b, srv, "join", users[i], users[i].id, roomID)
	}
	for i, u := range users {
		resp, err := u.client.SyncRequest(ctx, 0, "", "", false, "")
		if err != nil {
			b.Fatal(err)
		}
		since[i] = resp.NextBatch
	}
	var lat []time.Duration
	b.ResetTimer()
	cpu0 := cpuTime(b)
	for n := 0; n < b.N; n++ {
		body := fmt.Sprint("ping ", n)
		got := make(chan time.Time, listeners)
		for i, u := range users {
			go func() {
				// Poll until the message arrives: other news (presence)
				// may end a poll first.
				for {
					resp, err := u.client.SyncRequest(ctx, 30000, since[i], "", false, "")
					if err != nil {
						b.Error(err)
						got <- time.Now()
						return
					}
					since[i] = resp.NextBatch
					if jr, ok := resp.Rooms.Join[id.RoomID(roomID)]; ok {
						for _, ev := range jr.Timeline.Events {
							if ev.Content.Raw["body"] == body {
								got <- time.Now()
								return
							}
						}
					}
				}
			}()
		}
		time.Sleep(20 * time.Millisecond) // every request is now waiting
		start := time.Now()
		sendText(b, srv, alice, roomID, body)
		for range users {
			lat = append(lat, (<-got).Sub(start))
		}
	}
	b.StopTimer()
	// Server and test client share the process, so this is both sides'
	// CPU (HTTP, /sync computation, JSON both ways) per delivery.
	b.ReportMetric(float64((cpuTime(b)-cpu0).Microseconds())/float64(len(lat)), "cpu-µs/delivery")
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "fanout-p50-µs")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "fanout-p99-µs")
}

// cpuTime is the process's user+system CPU time so far.
func cpuTime(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
