package pushserver_test

import (
	"net/http"
	"sync"
	"testing"

	"github.com/myelin-chat/myelin/internal/testserver"
)

// TestPushersReadPerTransaction: the consumer reads each member's
// pushers once per write, not once per event, and never keeps them
// longer: a pusher added between two events receives the second, and
// every event of a burst (one consumer batch or several) reaches every
// pusher exactly once.
func TestPushersReadPerTransaction(t *testing.T) {
	testserver.ForEachEngine(t, pushConfig, func(t *testing.T, srv *testserver.Server) {
		g := newGateway(t)
		alice, bob, carol := register(t, srv, "alice"), register(t, srv, "bob"), register(t, srv, "carol")
		roomID := room(t, alice, bob, carol)
		bob.must(t, http.MethodPost, "/_matrix/client/v3/pushers/set", pusher(g.url(), "bob-a"))

		first := alice.text(t, roomID, "first")
		if reqs := g.waitRequests(t, first, 1); len(reqs) != 1 {
			t.Fatalf("first: %d requests, want 1", len(reqs))
		}
		bob.must(t, http.MethodPost, "/_matrix/client/v3/pushers/set", pusher(g.url(), "bob-b"))
		carol.must(t, http.MethodPost, "/_matrix/client/v3/pushers/set", pusher(g.url(), "carol-a"))
		second := alice.text(t, roomID, "second")
		keys := map[string]int{}
		for _, r := range g.waitRequests(t, second, 3) {
			keys[r.Get("notification.devices.0.pushkey").Str]++
		}
		if len(keys) != 3 || keys["bob-a"] != 1 || keys["bob-b"] != 1 || keys["carol-a"] != 1 {
			t.Fatalf("second reached %v, want bob-a, bob-b and carol-a once each", keys)
		}

		// A burst from two senders at once: the consumer takes several
		// events per write.
		var mu sync.Mutex
		burst := map[string]*user{} // event ID -> sender
		var wg sync.WaitGroup
		for _, sender := range []*user{alice, carol} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for range 6 {
					id := sender.text(t, roomID, "burst")
					mu.Lock()
					burst[id] = sender
					mu.Unlock()
				}
			}()
		}
		wg.Wait()
		for id, sender := range burst {
			// bob's two pushers, and carol's when alice sent it.
			want := map[string]int{"bob-a": 1, "bob-b": 1}
			if sender == alice {
				want["carol-a"] = 1
			}
			got := map[string]int{}
			for _, r := range g.waitRequests(t, id, len(want)) {
				got[r.Get("notification.devices.0.pushkey").Str]++
			}
			if len(got) != len(want) || got["bob-a"] != 1 || got["bob-b"] != 1 || got["carol-a"] != want["carol-a"] {
				t.Errorf("event %s reached %v, want %v", id, got, want)
			}
		}
	})
}
