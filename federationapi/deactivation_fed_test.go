package federationapi_test

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"testing"
	"time"

	"maunium.net/go/mautrix/event"
)

// TestDeactivationLeaveReachesOtherServer: bob on B joins a room only A
// created, then deactivates his account. B makes him leave the room
// (clientapi's deactivation leaves) and the leave goes to A: alice, on A,
// reads bob's membership as leave in the room's state, sent by bob.
// Spec: client-server-api, "POST /_matrix/client/v3/account/deactivate";
// server-server-api, "Leaving Rooms (Rejecting Invites)" (a member's
// leave is sent to the room's servers as any event is).
func TestDeactivationLeaveReachesOtherServer(t *testing.T) {
	t.Parallel()
	forEachEngine(t, func(t *testing.T, n *network) {
		ctx := context.Background()
		a, b := n.start(), n.start()
		alice, bob := a.register("alice"), b.register("bob")
		roomID := alice.publicAliasedRoom("deact")
		if _, err := bob.cli.JoinRoom(ctx, "#deact:"+a.Name, nil); err != nil {
			t.Fatalf("bob joining: %v", err)
		}
		membership := func() string {
			var c struct {
				Membership string `json:"membership"`
			}
			if err := alice.cli.StateEvent(ctx, roomID, event.StateMember, string(bob.id()), &c); err != nil {
				return ""
			}
			return c.Membership
		}
		deadline := time.Now().Add(20 * time.Second)
		for membership() != "join" {
			if time.Now().After(deadline) {
				t.Fatalf("A never saw bob's join")
			}
			time.Sleep(50 * time.Millisecond)
		}

		// POST /account/deactivate: first the 401 with a session, then
		// the password stage.
		deactivate := func(body map[string]any) (int, map[string]any) {
			raw, _ := json.Marshal(body)
			req, err := http.NewRequestWithContext(ctx, "POST", "https://"+b.Name+"/_matrix/client/v3/account/deactivate", bytes.NewReader(raw))
			if err != nil {
				t.Fatal(err)
			}
			req.Header.Set("Authorization", "Bearer "+bob.cli.AccessToken)
			req.Header.Set("Content-Type", "application/json")
			resp, err := bob.cli.Client.Do(req)
			if err != nil {
				t.Fatalf("deactivate: %v", err)
			}
			defer resp.Body.Close()
			var out map[string]any
			_ = json.NewDecoder(resp.Body).Decode(&out)
			return resp.StatusCode, out
		}
		st, out := deactivate(map[string]any{})
		session, _ := out["session"].(string)
		if st != http.StatusUnauthorized || session == "" {
			t.Fatalf("deactivate without auth: %d %v", st, out)
		}
		st, out = deactivate(map[string]any{"auth": map[string]any{
			"type": "m.login.password", "session": session, "password": e2ePassword,
			"identifier": map[string]any{"type": "m.id.user", "user": string(bob.id())},
		}})
		if st != http.StatusOK {
			t.Fatalf("deactivate: %d %v", st, out)
		}

		deadline = time.Now().Add(20 * time.Second)
		for {
			got := membership()
			if got == "leave" {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("bob's membership on A is %q 20 s after his deactivation, want leave", got)
			}
			time.Sleep(50 * time.Millisecond)
		}
		ev, err := a.HS.Rooms.RoomStateEvent(ctx, roomID.String(), "m.room.member", string(bob.id()))
		if err != nil {
			t.Fatal(err)
		}
		if ev.Sender != string(bob.id()) || ev.Membership != "leave" {
			t.Errorf("bob's member event on A: sender %s membership %q, want a leave sent by %s", ev.Sender, ev.Membership, bob.id())
		}
	})
}
