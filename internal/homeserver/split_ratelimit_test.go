package homeserver_test

import (
	"net/url"
	"testing"

	"github.com/myelin-chat/myelin/config"
	"github.com/myelin-chat/myelin/internal/testserver"
)

// Two client API processes behind one balancer count a client's requests
// together: the login burst is spent across both (docs/split.md), and a
// sender's messages likewise. Without Redis each process would allow the
// whole burst on its own.
func TestSplitRateLimitsShared(t *testing.T) {
	limits := func(c *config.Config) {
		c.ClientAPI.RateLimits.Enabled = true
		c.ClientAPI.RateLimits.Register = config.RateLimit{PerSecond: 100, Burst: 100}
		c.ClientAPI.RateLimits.Login = config.RateLimit{PerSecond: 0.01, Burst: 3}
		c.ClientAPI.RateLimits.Message = config.RateLimit{PerSecond: 0.01, Burst: 4}
	}
	a, b := testserver.StartSplitWith(t, limits, limits)
	st, body := splitCall(t, "POST", a.URL+"/_matrix/client/v3/register", "", map[string]any{"username": "alice", "password": "alice's long password", "auth": map[string]any{"type": "m.login.dummy"}})
	if st != 200 {
		t.Fatalf("register: %d %v", st, body)
	}
	token := body["access_token"].(string)

	login := map[string]any{"type": "m.login.password", "identifier": map[string]any{"type": "m.id.user", "user": "alice"}, "password": "alice's long password"}
	for i, srv := range []*testserver.Server{a, b, a} {
		if st, body := splitCall(t, "POST", srv.URL+"/_matrix/client/v3/login", "", login); st != 200 {
			t.Fatalf("login %d (within the burst of 3): %d %v", i+1, st, body)
		}
	}
	for _, srv := range []*testserver.Server{b, a} {
		st, body := splitCall(t, "POST", srv.URL+"/_matrix/client/v3/login", "", login)
		if st != 429 || body["errcode"] != "M_LIMIT_EXCEEDED" || body["retry_after_ms"] == nil {
			t.Fatalf("login past the burst, spent across both processes: %d %v, want 429 M_LIMIT_EXCEEDED with retry_after_ms", st, body)
		}
	}

	st, body = splitCall(t, "POST", a.URL+"/_matrix/client/v3/createRoom", token, map[string]any{"preset": "private_chat"})
	if st != 200 {
		t.Fatalf("createRoom: %d %v", st, body)
	}
	roomID := url.PathEscape(body["room_id"].(string))
	sent := 0
	for i, srv := range []*testserver.Server{a, b, a, b, a, b} {
		st, body := splitCall(t, "PUT", srv.URL+"/_matrix/client/v3/rooms/"+roomID+"/send/m.room.message/m"+string(rune('0'+i)), token, map[string]any{"msgtype": "m.text", "body": "hi"})
		switch {
		case st == 200:
			sent++
		case st == 429 && body["errcode"] == "M_LIMIT_EXCEEDED":
		default:
			t.Fatalf("send %d: %d %v", i+1, st, body)
		}
	}
	// createRoom's own events are not rate-limited sends; the message
	// burst of 4 is shared: exactly 4 of the 6 went through (each process
	// alone would have taken its 3).
	if sent != 4 {
		t.Fatalf("%d of 6 messages alternating between the processes were accepted, want the shared burst of 4", sent)
	}
}
