package federationapi_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"slices"
	"testing"

	"github.com/myelin-chat/myelin/config"
	"github.com/myelin-chat/myelin/internal/homeserver"
	"github.com/myelin-chat/myelin/internal/testserver"
)

// TestSplitComponentsFederation: B is a split deployment of two
// processes (global.components): b runs every component but the client
// API and serves federation; clients reaches the client API only, with
// no federation sender of its own. bob joins A's room and sends a
// message and a typing notification through clients: the event, and the
// m.typing EDU queued by clients, reach A through b's sender (the EDU
// without any event to carry it, found by the sender's read of the
// queues).
func TestSplitComponentsFederation(t *testing.T) {
	t.Parallel()
	n := postgresNetwork(t)
	a := n.start()
	useRedis := testserver.UseRedis(t)
	edit := n.editEachConfig
	n.editEachConfig = func(c *config.Config) {
		if edit != nil {
			edit(c)
		}
		useRedis(c)
		c.Global.Components = []string{"syncapi", "federationapi", "keyserver", "mediaapi", "pushserver", "appservice"}
	}
	b := n.start()
	n.editEachConfig = edit
	cfg := b.cfg
	cfg.Global.Components = []string{"clientapi"}
	hs, err := homeserver.New(context.Background(), &cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatalf("starting B's client API process: %v", err)
	}
	clients := httptest.NewServer(hs.Handler())
	t.Cleanup(func() {
		clients.Close()
		hs.Close()
	})
	call := func(method, path, token string, body any) map[string]any {
		t.Helper()
		raw, _ := json.Marshal(body)
		req, _ := http.NewRequest(method, clients.URL+path, bytes.NewReader(raw))
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		out := map[string]any{}
		_ = json.NewDecoder(resp.Body).Decode(&out)
		if resp.StatusCode != 200 {
			t.Fatalf("%s %s: %d %v", method, path, resp.StatusCode, out)
		}
		return out
	}

	alice := a.user("alice")
	roomID := publicRoom(t, a, alice)
	reg := call("POST", "/_matrix/client/v3/register", "", map[string]any{"username": "bob", "password": "bob's long password", "auth": map[string]any{"type": "m.login.dummy"}})
	token, bob := reg["access_token"].(string), reg["user_id"].(string)
	call("POST", "/_matrix/client/v3/join/"+pathEscape(roomID)+"?server_name="+a.Name, token, map[string]any{})

	sent := call("PUT", "/_matrix/client/v3/rooms/"+pathEscape(roomID)+"/send/m.room.message/t1", token, map[string]any{"msgtype": "m.text", "body": "from the client API process"})
	eventID := sent["event_id"].(string)
	eventually(t, "A to receive bob's message through B's federation process", func() bool { return hasEvent(a, alice, eventID) })

	call("PUT", "/_matrix/client/v3/rooms/"+pathEscape(roomID)+"/typing/"+pathEscape(bob), token, map[string]any{"typing": true, "timeout": 30000})
	eventually(t, "A to receive bob's typing through B's federation process", func() bool {
		users, _, _ := a.HS.ClientAPI.TypingFor(roomID)
		return slices.Contains(users, bob)
	})
}
