package federationapi_test

import (
	"context"
	"encoding/json"
	"net/http"
	"net/url"
	"testing"
	"time"
)

// TestAuthEventFromAnotherServer is the TestPartialStateRejectedStaysRejected
// failure under load, made deterministic: carol on C and then bob on B
// joined A's room (partial state each, so B's state lacks carol's
// membership). C sends B a message of carol's before C has heard of bob's
// join (here: C is unreachable, as if A's relay of the join to C were
// late). B lacks the message's auth event, carol's join, and cannot get
// it from C; A, which B joined through, has it and knows B is in the
// room. B takes it from A and accepts the message, where it used to
// answer the PDU with an error and lose it (C does not send it again).
func TestAuthEventFromAnotherServer(t *testing.T) {
	t.Parallel()
	forEachEngine(t, func(t *testing.T, n *network) {
		cut := partitionable(n)
		a, b, c := n.start(), n.start(), n.start()
		ctx := context.Background()
		alice, bob, carol := a.user("alice"), b.user("bob"), c.user("carol")
		roomID := publicRoom(t, a, alice)
		if _, err := c.HS.Federation.JoinRemote(ctx, roomID, carol, []string{a.Name}); err != nil {
			t.Fatal(err)
		}
		// B learns C's signing key now (it checks this request's
		// signature), so that it can verify carol's message while C is cut.
		q := url.Values{"user_id": {bob}, "field": {"displayname"}}
		n.request(b, c.Name, c.HS.Key, b.Name, http.MethodGet, "/_matrix/federation/v1/query/profile?"+q.Encode(), nil)
		cut(true, c)
		release := make(chan struct{})
		defer close(release)
		b.HS.Federation.HoldResyncs(release) // the full state would bring carol's join
		if _, err := b.HS.Federation.JoinRemote(ctx, roomID, bob, []string{a.Name}); err != nil {
			t.Fatal(err)
		}
		msg := buildPDU(t, a, roomID, carol, "m.room.message", nil, map[string]string{"msgtype": "m.text", "body": "hi bob"},
			c.Name, c.HS.Key, nil)
		status, body := n.request(b, c.Name, c.HS.Key, b.Name, http.MethodPut, "/_matrix/federation/v1/send/fallback1",
			map[string]any{"origin": c.Name, "origin_server_ts": time.Now().UnixMilli(), "pdus": []json.RawMessage{msg.JSON()}})
		var resp sendResponse
		if status != http.StatusOK || json.Unmarshal(body, &resp) != nil {
			t.Fatalf("send: %d %s", status, body)
		}
		if r, ok := resp.PDUs[msg.EventID()]; !ok || r.Error != "" {
			t.Fatalf("/send answer: %s, want the message accepted", body)
		}
		if !hasEvent(b, bob, msg.EventID()) {
			t.Fatal("bob cannot see carol's message")
		}
	})
}
