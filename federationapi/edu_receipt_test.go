package federationapi_test

import (
	"context"
	"net/http"
	"testing"
	"time"

	"github.com/myelin-chat/myelin/clientapi"
)

// TestRemoteReceiptForEventOfAnotherRoom: a receipt over federation that
// names, for one room, an event this server holds in another room is
// dropped: no receipt row, so nothing reaches the room's readers or its
// counts. The same EDU's valid receipt (another user key: a threaded one)
// is still stored. Spec: server-server-api, "Receipts"; client-server-api,
// "Receipts".
func TestRemoteReceiptForEventOfAnotherRoom(t *testing.T) {
	t.Parallel()
	forEachEngine(t, func(t *testing.T, n *network) {
		a, b := n.start(), n.start()
		ctx := context.Background()
		alice, bob := a.user("alice"), b.user("bob")
		room1, room2 := publicRoom(t, a, alice), publicRoom(t, a, alice)
		for _, r := range []string{room1, room2} {
			if _, err := b.HS.Federation.JoinRemote(ctx, r, bob, []string{a.Name}); err != nil {
				t.Fatalf("join %s: %v", r, err)
			}
		}
		in1, in2 := sendText(t, a, room1, alice, "one"), sendText(t, a, room2, alice, "two")
		eventually(t, "B to hold both messages", func() bool { return hasEvent(b, bob, in1) && hasEvent(b, bob, in2) })

		receipt := func(eventID, threadID string) map[string]any {
			data := map[string]any{"ts": 1436451550453}
			if threadID != "" {
				data["thread_id"] = threadID
			}
			return map[string]any{"event_ids": []string{eventID}, "data": data}
		}
		send := func(txn string, content map[string]any) {
			t.Helper()
			body := map[string]any{"origin": a.Name, "origin_server_ts": time.Now().UnixMilli(), "pdus": []any{},
				"edus": []any{map[string]any{"edu_type": "m.receipt", "content": content}}}
			status, resp := n.request(b, a.Name, a.HS.Key, b.Name, http.MethodPut, "/_matrix/federation/v1/send/"+txn, body)
			if status != http.StatusOK {
				t.Fatalf("send %s: %d %s", txn, status, resp)
			}
		}
		// Unthreaded in room1, naming room2's event: dropped. Threaded
		// ("main") in room1, naming room1's event: stored.
		send("wrong-room", map[string]any{room1: map[string]any{"m.read": map[string]any{alice: receipt(in2, "")}}})
		send("right-room", map[string]any{room1: map[string]any{"m.read": map[string]any{alice: receipt(in1, "main")}}})

		var got []clientapi.Receipt
		eventually(t, "B to store alice's valid receipt", func() bool {
			rs, _, err := b.HS.ClientAPI.ReceiptsSince(ctx, bob, []string{room1, room2}, 0)
			if err != nil {
				t.Fatal(err)
			}
			got = rs
			for _, r := range rs {
				if r.UserID == alice && r.ThreadID == "main" {
					return true
				}
			}
			return false
		})
		for _, r := range got {
			if r.UserID == alice && r.EventID != in1 {
				t.Fatalf("B stored a receipt for alice in %s naming %s (an event of %s): %+v", r.RoomID, r.EventID, room2, r)
			}
		}
		if len(got) != 1 || got[0].RoomID != room1 || got[0].EventID != in1 {
			t.Fatalf("B's receipts = %+v, want only alice's threaded one on %s", got, in1)
		}
	})
}
