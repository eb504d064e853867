package syncapi_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"sync"
	"sync/atomic"
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

// BenchmarkDeliveryServerTime isolates the server's share of delivering a
// committed event to waiting /sync requests (issue #4): L listeners'
// requests are handed straight to the homeserver's HTTP handler (no
// socket, no client-side HTTP or JSON decoding) and are all waiting in
// the waker when one message is sent. The clock starts when the commit's
// notification is out (the earlier of SendEvent returning — the room
// stream is notified after the commit, before SendEvent returns — and a
// goroutine blocked on Notifier.Changed running) and stops, per
// listener, when the handler has written the whole response. Delivery
// is the notifier waking the waiters: there is no polling loop on the
// server (the waker's fallback poll runs every 10 s).
//
// Metrics: server-µs/delivery is the time until the last listener's
// response was written, divided by L (for L=1, the wake latency itself);
// wake-p50-µs and wake-max-µs are per-listener latencies from the
// notification; cpu-µs/delivery is the process's CPU time from the send
// to the last response, divided by L (it includes the one send);
// cycle-cpu-µs/delivery adds the CPU time of starting the L requests
// until they all wait (authentication, filter, the first look at the
// streams), the whole long-poll cycle a client's delivery costs.
func BenchmarkDeliveryServerTime1(b *testing.B)   { benchmarkDeliveryServerTime(b, 1) }
func BenchmarkDeliveryServerTime20(b *testing.B)  { benchmarkDeliveryServerTime(b, 20) }
func BenchmarkDeliveryServerTime200(b *testing.B) { benchmarkDeliveryServerTime(b, 200) }

func benchmarkDeliveryServerTime(b *testing.B, listeners int) {
	srv := testserver.Start(b, storage.SQLite, nil)
	handler := srv.HS.Handler()
	alice := newUser(b, srv, "alice")
	roomID := createRoom(b, srv, alice, roomserver.CreateRoomRequest{Preset: "public_chat"})
	// What myelin-bench's fanout listeners ask for: this room's messages,
	// no presence, account data or ephemeral events.
	filter := url.QueryEscape(`{"presence":{"not_types":["*"]},"account_data":{"not_types":["*"]},` +
		`"room":{"rooms":["` + roomID + `"],"timeline":{"limit":100,"types":["m.room.message"]},` +
		`"state":{"lazy_load_members":true},"ephemeral":{"not_types":["*"]},"account_data":{"not_types":["*"]}}}`)
	users := make([]*user, listeners)
	since := make([]string, listeners)
	for i := range users {
		users[i] = newUser(b, srv, fmt.Sprintf("listener%d", i))
		membership(b, srv, "join", users[i], users[i].id, roomID)
	}
	serve := func(u *user, query string) *httptest.ResponseRecorder {
		req := httptest.NewRequest(http.MethodGet, "/_matrix/client/v3/sync?filter="+filter+query, nil)
		req.Header.Set("Authorization", "Bearer "+u.token)
		rec := httptest.NewRecorder()
		handler.ServeHTTP(rec, req)
		return rec
	}
	type syncBody struct {
		NextBatch string `json:"next_batch"`
		Rooms     struct {
			Join map[string]struct {
				Timeline struct {
					Events []struct {
						Content struct {
							Body string `json:"body"`
						} `json:"content"`
					} `json:"events"`
				} `json:"timeline"`
			} `json:"join"`
		} `json:"rooms"`
	}
	decode := func(rec *httptest.ResponseRecorder) syncBody {
		var body syncBody
		if rec.Code != http.StatusOK {
			b.Fatalf("sync: %d %s", rec.Code, rec.Body)
		}
		if err := json.Unmarshal(rec.Body.Bytes(), &body); err != nil {
			b.Fatal(err)
		}
		return body
	}
	for i, u := range users {
		since[i] = decode(serve(u, "")).NextBatch
	}
	var lat []time.Duration
	var perDelivery time.Duration
	var cpu, cycle, follow time.Duration
	recs := make([]*httptest.ResponseRecorder, listeners)
	done := make([]time.Time, listeners)
	b.ResetTimer()
	for n := 0; n < b.N; n++ {
		b.StopTimer()
		if n > 0 {
			// The woken responses may carry counts that trail the
			// message (the push consumer commits after it): take them
			// with a sync that waits for the consumer, so the long polls
			// below have nothing left to answer before the send. A real
			// client gets them in the long poll the consumer's commit
			// wakes; followup-cpu-µs/delivery is that extra response's
			// CPU, per listener.
			followCPU := cpuTime(b)
			for i, u := range users {
				since[i] = decode(serve(u, "&since="+url.QueryEscape(since[i]))).NextBatch
			}
			follow += cpuTime(b) - followCPU
		}
		body := fmt.Sprint("ping ", n)
		var wg sync.WaitGroup
		var early atomic.Int32
		setupCPU := cpuTime(b)
		for i, u := range users {
			wg.Add(1)
			go func() {
				defer wg.Done()
				recs[i] = serve(u, "&timeout=30000&since="+url.QueryEscape(since[i]))
				done[i] = time.Now()
				early.Add(1)
			}()
		}
		// Setup, not the measured path: wait until every request sits in
		// the waker.
		for srv.HS.Sync.Waiting() < listeners {
			if early.Load() > 0 {
				wg.Wait()
				for _, rec := range recs {
					if rec != nil {
						b.Fatalf("a /sync returned before the send: %d %s", rec.Code, rec.Body)
					}
				}
			}
			time.Sleep(100 * time.Microsecond)
		}
		cycle += cpuTime(b) - setupCPU
		changed := srv.HS.Notifier.Changed()
		notified := make(chan time.Time, 1)
		go func() { <-changed; notified <- time.Now() }()
		b.StartTimer()
		cpu0 := cpuTime(b)
		sendText(b, srv, alice, roomID, body)
		returned := time.Now()
		wg.Wait()
		cpu += cpuTime(b) - cpu0
		cycle += cpuTime(b) - cpu0
		b.StopTimer()
		t0 := returned
		if woke := <-notified; woke.Before(t0) {
			t0 = woke
		}
		last := t0
		for i, rec := range recs {
			got := decode(rec)
			found := false
			for _, ev := range got.Rooms.Join[roomID].Timeline.Events {
				found = found || ev.Content.Body == body
			}
			if !found {
				b.Fatalf("listener %d woke without the message: %s", i, rec.Body)
			}
			since[i] = got.NextBatch
			lat = append(lat, done[i].Sub(t0))
			if done[i].After(last) {
				last = done[i]
			}
		}
		perDelivery += last.Sub(t0) / time.Duration(listeners)
		b.StartTimer()
	}
	b.StopTimer()
	slices.Sort(lat)
	b.ReportMetric(float64(perDelivery.Nanoseconds())/1e3/float64(b.N), "server-µs/delivery")
	b.ReportMetric(float64(lat[len(lat)/2].Nanoseconds())/1e3, "wake-p50-µs")
	b.ReportMetric(float64(lat[len(lat)-1].Nanoseconds())/1e3, "wake-max-µs")
	b.ReportMetric(float64(cpu.Nanoseconds())/1e3/float64(len(lat)), "cpu-µs/delivery")
	b.ReportMetric(float64(cycle.Nanoseconds())/1e3/float64(len(lat)), "cycle-cpu-µs/delivery")
	if b.N > 1 {
		b.ReportMetric(float64(follow.Nanoseconds())/1e3/float64((b.N-1)*listeners), "followup-cpu-µs/delivery")
	}
}
