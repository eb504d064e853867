package syncapi_test

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/myelin-chat/myelin/internal/testserver"
	"github.com/myelin-chat/myelin/roomserver"
	"github.com/myelin-chat/myelin/storage"
)

// BenchmarkInitialSyncServerTime50 isolates the server's share of an
// initial /sync (no since token, no filter) of a user in 50 rooms with 10
// messages each (bench/run.sh's initialsync scenario, issue #6): the
// request is handed straight to the homeserver's HTTP handler (no socket,
// no client-side decoding). Metrics: ns/op is the handler's wall time,
// cpu-µs/sync the process's CPU time per sync (all cores), resp-KiB the
// response's size.
func BenchmarkInitialSyncServerTime50(b *testing.B) { benchmarkInitialSyncServerTime(b, 50, 10) }

// BenchmarkInitialSyncServerTime500 is BenchmarkInitialSyncServerTime50
// with 500 rooms.
func BenchmarkInitialSyncServerTime500(b *testing.B) { benchmarkInitialSyncServerTime(b, 500, 10) }

// BenchmarkInitialSyncServerTime500OnePart is
// BenchmarkInitialSyncServerTime500 with the timelines read in one part
// rather than in concurrent parts (initial_batch.go), to compare the two.
func BenchmarkInitialSyncServerTime500OnePart(b *testing.B) {
	benchmarkInitialSyncServerTime(b, 500, 10, func(srv *testserver.Server) { srv.HS.Sync.SplitTimelines(500) })
}

func benchmarkInitialSyncServerTime(b *testing.B, rooms, perRoom int, setup ...func(*testserver.Server)) {
	srv := testserver.Start(b, storage.SQLite, nil)
	for _, f := range setup {
		f(srv)
	}
	handler := srv.HS.Handler()
	alice := newUser(b, srv, "alice")
	// Rooms are prepared 8 at a time: sends to different rooms share
	// commits.
	var wg sync.WaitGroup
	work := make(chan int)
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range work {
				r := createRoom(b, srv, alice, roomserver.CreateRoomRequest{Preset: "private_chat", Name: fmt.Sprint("room ", i)})
				for j := 0; j < perRoom; j++ {
					sendText(b, srv, alice, r, fmt.Sprint("hello ", j))
				}
			}
		}()
	}
	for i := range rooms {
		work <- i
	}
	close(work)
	wg.Wait()
	serve := func() *httptest.ResponseRecorder {
		req := httptest.NewRequest(http.MethodGet, "/_matrix/client/v3/sync", nil)
		req.Header.Set("Authorization", "Bearer "+alice.token)
		rec := httptest.NewRecorder()
		handler.ServeHTTP(rec, req)
		if rec.Code != http.StatusOK {
			b.Fatalf("sync: %d %s", rec.Code, rec.Body)
		}
		return rec
	}
	serve() // warm caches the way a server that ran a while has them
	time.Sleep(100 * time.Millisecond)
	var size int
	b.ReportAllocs()
	b.ResetTimer()
	cpu0 := cpuTime(b)
	for i := 0; i < b.N; i++ {
		size = serve().Body.Len()
	}
	b.StopTimer()
	b.ReportMetric(float64((cpuTime(b)-cpu0).Microseconds())/float64(b.N), "cpu-µs/sync")
	b.ReportMetric(float64(size)/1024, "resp-KiB")
}
