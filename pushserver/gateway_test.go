package pushserver_test

import (
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/tidwall/gjson"

	"github.com/myelin-chat/myelin/config"
	"github.com/myelin-chat/myelin/internal/testserver"
)

// gateway is a push gateway in the test: it records every request and
// answers 200, or 500 for the next failNext requests, or rejects every
// pushkey when reject is set.
type gateway struct {
	srv      *httptest.Server
	mu       sync.Mutex
	got      []gjson.Result // guarded by mu
	failNext int            // guarded by mu
	reject   bool           // guarded by mu
}

func newGateway(t *testing.T) *gateway {
	g := &gateway{}
	g.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		g.mu.Lock()
		if r.URL.Path == "/_matrix/push/v1/notify" && r.Method == http.MethodPost {
			g.got = append(g.got, gjson.ParseBytes(body))
		}
		fail, reject := g.failNext > 0, g.reject
		if fail {
			g.failNext--
		}
		g.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		switch {
		case fail:
			w.WriteHeader(http.StatusInternalServerError)
			_, _ = w.Write([]byte(`{"errcode":"M_UNKNOWN"}`))
		case reject:
			pushkey := gjson.GetBytes(body, "notification.devices.0.pushkey").Str
			_, _ = w.Write([]byte(`{"rejected":["` + pushkey + `"]}`))
		default:
			_, _ = w.Write([]byte(`{"rejected":[]}`))
		}
	}))
	t.Cleanup(g.srv.Close)
	return g
}

func (g *gateway) set(failNext int, reject bool) {
	g.mu.Lock()
	g.failNext, g.reject = failNext, reject
	g.mu.Unlock()
}

func (g *gateway) url() string { return g.srv.URL + "/_matrix/push/v1/notify" }

// requests returns the requests received for eventID.
func (g *gateway) requests(eventID string) []gjson.Result {
	g.mu.Lock()
	defer g.mu.Unlock()
	var out []gjson.Result
	for _, r := range g.got {
		if r.Get("notification.event_id").Str == eventID {
			out = append(out, r)
		}
	}
	return out
}

// waitRequests waits until eventID has n requests, then a little longer
// to catch extra ones, and returns them.
func (g *gateway) waitRequests(t *testing.T, eventID string, n int) []gjson.Result {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for len(g.requests(eventID)) < n {
		if time.Now().After(deadline) {
			t.Fatalf("gateway got %d requests for %s, want %d", len(g.requests(eventID)), eventID, n)
		}
		time.Sleep(20 * time.Millisecond)
	}
	time.Sleep(400 * time.Millisecond) // several retry periods: nothing more may come
	return g.requests(eventID)
}

func pusher(url, pushkey string) map[string]any {
	return map[string]any{"kind": "http", "app_id": "org.example.app", "pushkey": pushkey,
		"app_display_name": "Example", "device_display_name": "Phone", "lang": "en",
		"data": map[string]any{"url": url, "format": "event_id_only", "custom": "kept"}}
}

// TestPushGateway delivers to a gateway in the test: once per event,
// again after a 500, and a rejected pushkey deletes the pusher.
func TestPushGateway(t *testing.T) {
	testserver.ForEachEngine(t, pushConfig, func(t *testing.T, srv *testserver.Server) {
		g := newGateway(t)
		alice, bob, carol := register(t, srv, "alice"), register(t, srv, "bob"), register(t, srv, "carol")
		roomID := room(t, alice, bob, carol)
		bob.must(t, http.MethodPost, "/_matrix/client/v3/pushers/set", pusher(g.url(), "bobkey"))

		first := alice.send(t, roomID, "m.room.message", map[string]any{"msgtype": "m.text", "body": "hi bob",
			"m.mentions": map[string]any{"user_ids": []string{bob.id}}})
		reqs := g.waitRequests(t, first, 1)
		if len(reqs) != 1 {
			t.Fatalf("gateway got %d requests for one event, want exactly 1", len(reqs))
		}
		n := reqs[0].Get("notification")
		dev := n.Get("devices.0")
		if n.Get("room_id").Str != roomID || n.Get("counts.unread").Int() != 1 || n.Get("prio").Str != "high" ||
			n.Get("sender").Exists() || n.Get("content").Exists() { // event_id_only
			t.Errorf("notification: %s", n.Raw)
		}
		if dev.Get("pushkey").Str != "bobkey" || dev.Get("app_id").Str != "org.example.app" ||
			dev.Get("data.url").Exists() || dev.Get("data.custom").Str != "kept" || dev.Get("data.format").Str != "event_id_only" ||
			!dev.Get("tweaks.highlight").Bool() || dev.Get("tweaks.sound").Str != "default" {
			t.Errorf("device: %s", dev.Raw)
		}

		// A 500 is retried with backoff; the notification arrives again.
		g.set(1, false)
		second := alice.text(t, roomID, "second")
		reqs = g.waitRequests(t, second, 2)
		if len(reqs) != 2 {
			t.Fatalf("gateway got %d requests for the retried event, want 2 (one 500, one 200)", len(reqs))
		}
		if reqs[1].Get("notification.counts.unread").Int() != 2 {
			t.Errorf("retry counts: %s", reqs[1].Get("notification.counts").Raw)
		}

		// A rejected pushkey removes the pusher.
		g.set(0, true)
		third := alice.text(t, roomID, "third")
		g.waitRequests(t, third, 1)
		deadline := time.Now().Add(20 * time.Second)
		for {
			if list := bob.must(t, http.MethodGet, "/_matrix/client/v3/pushers", nil); list.Get("pushers.#").Int() == 0 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatal("rejected pusher still listed")
			}
			time.Sleep(20 * time.Millisecond)
		}
		fourth := alice.text(t, roomID, "fourth")
		bob.wantCounts(t, roomID, 4, 1) // the consumer has seen fourth
		time.Sleep(300 * time.Millisecond)
		if got := g.requests(fourth); len(got) != 0 {
			t.Errorf("a deleted pusher still received %d requests", len(got))
		}
	})
}

// TestGatewayAddressPolicy checks that without push.outbound_ip_allow a
// gateway on loopback never receives anything.
func TestGatewayAddressPolicy(t *testing.T) {
	srv := testserver.Start(t, "sqlite", func(c *config.Config) {
		c.Push.MinBackoff = config.Duration(50 * time.Millisecond)
	})
	g := newGateway(t)
	alice, bob := register(t, srv, "alice"), register(t, srv, "bob")
	roomID := room(t, alice, bob)
	bob.must(t, http.MethodPost, "/_matrix/client/v3/pushers/set", pusher(g.url(), "k"))
	eventID := alice.text(t, roomID, "hi")
	bob.wantCounts(t, roomID, 1, 0)
	time.Sleep(500 * time.Millisecond)
	if got := g.requests(eventID); len(got) != 0 {
		t.Fatalf("a loopback gateway received %d requests without being allowed", len(got))
	}
}

// TestPushersAPI checks /pushers/set validation, kind null, append, and
// that a password change deletes pushers made by other sessions only
// (Complement TestChangePasswordPushers).
func TestPushersAPI(t *testing.T) {
	testserver.ForEachEngine(t, pushConfig, func(t *testing.T, srv *testserver.Server) {
		bob, carol := register(t, srv, "bob"), register(t, srv, "carol")
		const url = "https://push.example.org/_matrix/push/v1/notify"
		for _, tc := range []struct {
			name    string
			body    map[string]any
			errcode string
		}{
			{"wrong path", pusher("https://push.example.org/notify", "k"), "M_INVALID_PARAM"},
			{"not a URL", pusher("push.example.org", "k"), "M_INVALID_PARAM"},
			{"missing lang", without(pusher(url, "k"), "lang"), "M_MISSING_PARAM"},
			{"missing data", without(pusher(url, "k"), "data"), "M_MISSING_PARAM"},
			{"missing pushkey", without(pusher(url, "k"), "pushkey"), "M_MISSING_PARAM"},
			{"email kind", with(pusher(url, "k"), "kind", "email"), "M_INVALID_PARAM"},
			{"bad format", with(pusher(url, "k"), "data", map[string]any{"url": url, "format": "full"}), "M_INVALID_PARAM"},
		} {
			status, res := bob.call(t, http.MethodPost, "/_matrix/client/v3/pushers/set", tc.body)
			if status != http.StatusBadRequest || res.Get("errcode").Str != tc.errcode {
				t.Errorf("%s: %d %s, want 400 %s", tc.name, status, res.Raw, tc.errcode)
			}
		}
		bob.must(t, http.MethodPost, "/_matrix/client/v3/pushers/set", pusher(url, "shared"))
		list := bob.must(t, http.MethodGet, "/_matrix/client/v3/pushers", nil)
		if list.Get("pushers.#").Int() != 1 || list.Get("pushers.0.data.url").Str != url || list.Get("pushers.0.kind").Str != "http" {
			t.Fatalf("GET /pushers: %s", list.Raw)
		}
		// append=false by another user takes the pushkey over.
		carol.must(t, http.MethodPost, "/_matrix/client/v3/pushers/set", pusher(url, "shared"))
		if n := bob.must(t, http.MethodGet, "/_matrix/client/v3/pushers", nil).Get("pushers.#").Int(); n != 0 {
			t.Errorf("bob still has %d pushers after carol took the pushkey without append", n)
		}
		bob.must(t, http.MethodPost, "/_matrix/client/v3/pushers/set", with(pusher(url, "shared"), "append", true))
		if n := carol.must(t, http.MethodGet, "/_matrix/client/v3/pushers", nil).Get("pushers.#").Int(); n != 1 {
			t.Errorf("append=true removed carol's pusher (%d left)", n)
		}
		// kind null deletes.
		bob.must(t, http.MethodPost, "/_matrix/client/v3/pushers/set", map[string]any{"kind": nil, "app_id": "org.example.app", "pushkey": "shared"})
		if n := bob.must(t, http.MethodGet, "/_matrix/client/v3/pushers", nil).Get("pushers.#").Int(); n != 0 {
			t.Errorf("kind null left %d pushers", n)
		}

		// Password change: the other session's pusher goes, ours stays.
		other := bob.login(t)
		other.must(t, http.MethodPost, "/_matrix/client/v3/pushers/set", pusher(url, "other"))
		bob.must(t, http.MethodPost, "/_matrix/client/v3/pushers/set", pusher(url, "mine"))
		changePassword(t, bob, "a new password 123")
		list = bob.must(t, http.MethodGet, "/_matrix/client/v3/pushers", nil)
		if list.Get("pushers.#").Int() != 1 || list.Get("pushers.0.pushkey").Str != "mine" {
			t.Errorf("after the password change: %s", list.Raw)
		}
	})
}

// changePassword changes u's password with password UIA; other
// sessions are logged out (logout_devices defaults to true).
func changePassword(t *testing.T, u *user, newPassword string) {
	t.Helper()
	u.must(t, http.MethodPost, "/_matrix/client/v3/account/password", map[string]any{
		"new_password": newPassword,
		"auth": map[string]any{"type": "m.login.password", "password": testPassword,
			"identifier": map[string]any{"type": "m.id.user", "user": u.id}},
	})
}

func without(m map[string]any, key string) map[string]any {
	delete(m, key)
	return m
}

func with(m map[string]any, key string, v any) map[string]any {
	m[key] = v
	return m
}
