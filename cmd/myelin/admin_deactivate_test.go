package main

import (
	"net/http"
	"net/url"
	"testing"
	"time"

	"github.com/myelin-chat/myelin/internal/testserver"
)

// TestUserDeactivateLeavesRoomsThroughServer: `myelin user deactivate`
// runs in another process than the server, outside the roomserver's
// per-room serialisation and without the federation sender, so it does
// not build leave events itself: it queues the account in the
// deactivation's transaction (the same clientapi function as POST
// /account/deactivate), and a server leaves the rooms — at its start
// (shown here), and at its next poll while it runs (clientapi
// TestDeactivationQueueTakenUpByRunningServer). Bob is joined, invited
// and knocking; after the command and a restart he has left all three.
func TestUserDeactivateLeavesRoomsThroughServer(t *testing.T) {
	testserver.ForEachEngine(t, nil, func(t *testing.T, srv *testserver.Server) {
		configPath := cliConfigWithUsers(t, srv, "carol", "bob")
		const bobID = "@bob:localhost"
		carolToken, _ := loginDevice(t, srv, "carol", "s3cret-password")
		bobToken, _ := loginDevice(t, srv, "bob", "s3cret-password")
		create := func(body map[string]any) string {
			return mustCall(t, srv, carolToken, http.MethodPost, "/_matrix/client/v3/createRoom", body)["room_id"].(string)
		}
		joined := create(map[string]any{"preset": "public_chat"})
		mustCall(t, srv, bobToken, http.MethodPost, "/_matrix/client/v3/join/"+url.PathEscape(joined), map[string]any{})
		invited := create(map[string]any{"preset": "private_chat", "invite": []string{bobID}})
		knocked := create(map[string]any{"preset": "private_chat", "initial_state": []any{
			map[string]any{"type": "m.room.join_rules", "state_key": "", "content": map[string]any{"join_rule": "knock"}}}})
		mustCall(t, srv, bobToken, http.MethodPost, "/_matrix/client/v3/knock/"+url.PathEscape(knocked), map[string]any{})
		membership := func(roomID string) string {
			m, _ := mustCall(t, srv, carolToken, http.MethodGet, "/_matrix/client/v3/rooms/"+url.PathEscape(roomID)+
				"/state/m.room.member/"+url.PathEscape(bobID), nil)["membership"].(string)
			return m
		}
		for roomID, want := range map[string]string{joined: "join", invited: "invite", knocked: "knock"} {
			if got := membership(roomID); got != want {
				t.Fatalf("before: bob's membership in %s = %q, want %q", roomID, got, want)
			}
		}

		if _, err := runCLI(t, "", "user", "deactivate", "-config", configPath, "bob"); err != nil {
			t.Fatal(err)
		}
		srv.Restart(t)
		// The server's first pass over the queue runs in the background
		// as it starts (the next one a minute later).
		deadline := time.Now().Add(10 * time.Second)
		for _, roomID := range []string{joined, invited, knocked} {
			for membership(roomID) != "leave" && time.Now().Before(deadline) {
				time.Sleep(20 * time.Millisecond)
			}
			if got := membership(roomID); got != "leave" {
				t.Errorf("after user deactivate and a restart: bob's membership in %s = %q, want leave", roomID, got)
			}
		}
	})
}
