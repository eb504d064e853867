package federationapi_test

import (
	"context"
	"encoding/json"
	"net/http"
	"slices"
	"testing"
	"time"

	"maunium.net/go/mautrix/id"

	"github.com/myelin-chat/myelin/roomserver"
)

// TestPartialStateRejectedStaysRejected is Complement's TestPartialStateJoin
// "Rejected events remain rejected after resync": while B's state is
// partial, carol (joined, power 0) sends a state event that needs power
// 50. B rejects it (its auth events say so), answers /send without an
// error for it (a rejected PDU was handled), goes on accepting carol's
// messages, and after the resync the event is still rejected and out of
// the state.
func TestPartialStateRejectedStaysRejected(t *testing.T) {
	t.Parallel()
	forEachEngine(t, func(t *testing.T, n *network) {
		a, b, c := n.start(), n.start(), n.start()
		ctx := context.Background()
		alice, bob, carol := a.user("alice"), b.user("bob"), c.user("carol")
		roomID := publicRoom(t, a, alice)
		if _, err := c.HS.Federation.JoinRemote(ctx, roomID, carol, []string{a.Name}); err != nil {
			t.Fatal(err)
		}
		eventually(t, "A to see carol join", func() bool {
			m, _ := a.HS.Rooms.Membership(ctx, roomID, carol)
			return m == "join"
		})
		release := make(chan struct{})
		b.HS.Federation.HoldResyncs(release)
		if _, err := b.HS.Federation.JoinRemote(ctx, roomID, bob, []string{a.Name}); err != nil {
			t.Fatal(err)
		}
		if partial, err := b.HS.Rooms.IsPartialState(ctx, roomID); err != nil || !partial {
			t.Fatalf("B's room partial = %v, %v; want partial", partial, err)
		}

		empty := ""
		bad := buildPDU(t, a, roomID, carol, "m.room.test", &empty, map[string]string{"body": "bad state event"}, c.Name, c.HS.Key, nil)
		sentinel := buildPDU(t, a, roomID, carol, "m.room.message", nil, map[string]string{"msgtype": "m.text", "body": "sentinel"},
			c.Name, c.HS.Key, nil)
		status, body := n.request(b, c.Name, c.HS.Key, b.Name, http.MethodPut, "/_matrix/federation/v1/send/rejected1",
			map[string]any{"origin": c.Name, "origin_server_ts": time.Now().UnixMilli(), "pdus": []json.RawMessage{bad.JSON(), sentinel.JSON()}})
		var resp sendResponse
		if status != http.StatusOK || json.Unmarshal(body, &resp) != nil {
			t.Fatalf("send: %d %s", status, body)
		}
		for _, id := range []string{bad.EventID(), sentinel.EventID()} {
			if r, ok := resp.PDUs[id]; !ok || r.Error != "" {
				t.Fatalf("/send answer for %s: %s, want a result without error", id, body)
			}
		}
		if !hasEvent(b, bob, sentinel.EventID()) {
			t.Fatal("bob cannot see carol's message")
		}
		if !isRejected(b, bad.EventID()) || hasEvent(b, bob, bad.EventID()) {
			t.Fatal("carol's state event without the power for it was not rejected on partial state")
		}

		close(release)
		if err := b.HS.Rooms.AwaitFullState(ctx, roomID); err != nil {
			t.Fatal(err)
		}
		if !isRejected(b, bad.EventID()) || hasEvent(b, bob, bad.EventID()) {
			t.Fatal("the rejected state event was accepted by the resync")
		}
		if ev, err := b.HS.Rooms.RoomStateEvent(ctx, roomID, "m.room.test", ""); err == nil {
			t.Fatalf("after the resync the room state holds m.room.test %s", ev.EventID)
		}
		if !hasEvent(b, bob, sentinel.EventID()) {
			t.Fatal("carol's message is gone after the resync")
		}
	})
}

// TestPartialStateAliasServers is Complement's TestPartialStateJoin "Room
// aliases can be added and queried during a resync": while B's state is
// partial, bob adds an alias on B for the room; resolving it on B names
// B and the servers send_join said are in the room (A), which a client
// can join through. After the resync the servers come from the state.
// Spec: client-server-api, "GET /_matrix/client/v3/directory/room/{roomAlias}".
func TestPartialStateAliasServers(t *testing.T) {
	t.Parallel()
	forEachEngine(t, func(t *testing.T, n *network) {
		a, b := n.start(), n.start()
		ctx := context.Background()
		alice := a.user("alice")
		roomID := publicRoom(t, a, alice)
		bob := b.register("bob")
		release := make(chan struct{})
		b.HS.Federation.HoldResyncs(release)
		if _, err := b.HS.Federation.JoinRemote(ctx, roomID, bob.cli.UserID.String(), []string{a.Name}); err != nil {
			t.Fatal(err)
		}
		if partial, err := b.HS.Rooms.IsPartialState(ctx, roomID); err != nil || !partial {
			t.Fatalf("B's room partial = %v, %v; want partial", partial, err)
		}
		alias := id.RoomAlias("#partial:" + b.Name)
		if _, err := bob.cli.CreateAlias(ctx, alias, id.RoomID(roomID)); err != nil {
			t.Fatalf("creating an alias during the resync: %v", err)
		}
		check := func(when string) {
			t.Helper()
			res, err := bob.cli.ResolveAlias(ctx, alias)
			if err != nil {
				t.Fatalf("%s: resolving the alias: %v", when, err)
			}
			if res.RoomID.String() != roomID || len(res.Servers) == 0 || res.Servers[0] != b.Name || !slices.Contains(res.Servers, a.Name) {
				t.Fatalf("%s: alias resolves to %s via %v; want %s via [%s ... %s]", when, res.RoomID, res.Servers, roomID, b.Name, a.Name)
			}
		}
		check("during the resync")
		close(release)
		if err := b.HS.Rooms.AwaitFullState(ctx, roomID); err != nil {
			t.Fatal(err)
		}
		check("after the resync")
		// A server with no member left is not named.
		if _, err := a.HS.Rooms.Leave(ctx, roomserver.MembershipRequest{RoomID: roomID, Sender: alice}); err != nil {
			t.Fatal(err)
		}
		eventually(t, "B to see alice leave", func() bool {
			m, _ := b.HS.Rooms.Membership(ctx, roomID, alice)
			return m == "leave"
		})
		res, err := bob.cli.ResolveAlias(ctx, alias)
		if err != nil || !slices.Equal(res.Servers, []string{b.Name}) {
			t.Fatalf("after alice left: %v, %v; want only %s", res, err, b.Name)
		}
	})
}
