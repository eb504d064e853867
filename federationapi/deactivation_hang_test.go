package federationapi_test

import (
	"bytes"
	"context"
	"encoding/json"
	"net"
	"net/http"
	"sync"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/id"
)

// TestDeactivationDoesNotWaitOnUnreachableInviter: bob on B is invited
// to a room only A holds, then A stops answering (its port accepts
// connections and never replies). POST /account/deactivate must answer
// promptly: rejecting the invite through A is the background runner's
// work (clientapi/deactivation.go), not the request's.
// Spec: client-server-api, "POST /_matrix/client/v3/account/deactivate".
func TestDeactivationDoesNotWaitOnUnreachableInviter(t *testing.T) {
	// Serial: asserts the deactivation takes under 5 s.
	forEachEngine(t, func(t *testing.T, n *network) {
		ctx := context.Background()
		a, b := n.start(), n.start()
		alice, bob := a.register("alice"), b.register("bob")
		created, err := alice.cli.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "private_chat", Invite: []id.UserID{bob.id()}})
		if err != nil {
			t.Fatal(err)
		}
		bob.await("the invite", func() bool { return bob.invites[created.RoomID] })

		// A hangs: its address accepts and never answers.
		a.stop()
		var ln net.Listener
		for i := 0; i < 200; i++ {
			if ln, err = net.Listen("tcp", a.addr); err == nil {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		if err != nil {
			t.Fatal(err)
		}
		var mu sync.Mutex
		var conns []net.Conn
		t.Cleanup(func() {
			ln.Close()
			mu.Lock()
			defer mu.Unlock()
			for _, c := range conns {
				c.Close()
			}
		})
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				mu.Lock()
				conns = append(conns, c)
				mu.Unlock()
			}
		}()

		deactivate := func(body map[string]any) (int, map[string]any) {
			raw, _ := json.Marshal(body)
			rctx, cancel := context.WithTimeout(ctx, 8*time.Second)
			defer cancel()
			req, err := http.NewRequestWithContext(rctx, "POST", "https://"+b.Name+"/_matrix/client/v3/account/deactivate", bytes.NewReader(raw))
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
		start := time.Now()
		st, out = deactivate(map[string]any{"auth": map[string]any{
			"type": "m.login.password", "session": session, "password": e2ePassword,
			"identifier": map[string]any{"type": "m.id.user", "user": string(bob.id())},
		}})
		took := time.Since(start)
		if st != http.StatusOK {
			t.Fatalf("deactivate: %d %v", st, out)
		}
		if took > 5*time.Second {
			t.Fatalf("deactivate took %v with the inviter unreachable, want it prompt", took)
		}
	})
}
