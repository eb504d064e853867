package federationapi_test

import (
	"context"
	"encoding/json"
	"net/http"
	"slices"
	"testing"
	"time"

	"github.com/myelin-chat/myelin/roomserver"
)

// TestSoftFailOverSend: a PDU (bob's display name change) that passes the
// auth checks against its auth events and the state before it, but not
// against the current state (bob was banned on another branch
// meanwhile), is soft-failed
// when it arrives in /send: answered without an error, kept out of the
// timeline and the forward extremities, and the current state unchanged
// by it. Spec: server-server-api, "Soft failure".
func TestSoftFailOverSend(t *testing.T) {
	t.Parallel()
	forEachEngine(t, func(t *testing.T, n *network) {
		ctx := context.Background()
		a, b, roomID := joinedPair(t, n)
		alice, bob := a.user("alice"), b.user("bob")
		// Built while bob is a member: its auth events and prev events
		// are from before the ban.
		late := buildPDU(t, a, roomID, bob, "m.room.member", &bob, map[string]string{"membership": "join", "displayname": "bob, late"}, b.Name, b.HS.Key, nil)
		if _, err := a.HS.Rooms.SendEvent(ctx, roomserver.SendEventRequest{RoomID: roomID, Sender: alice,
			Type: "m.room.member", StateKey: &bob, Content: mustJSON(map[string]string{"membership": "ban"})}); err != nil {
			t.Fatal(err)
		}
		txn := map[string]any{"origin": b.Name, "origin_server_ts": time.Now().UnixMilli(), "pdus": []json.RawMessage{late.JSON()}}
		status, body := n.request(a, b.Name, b.HS.Key, a.Name, http.MethodPut, "/_matrix/federation/v1/send/softfail1", txn)
		if status != http.StatusOK {
			t.Fatalf("send: %d %s", status, body)
		}
		var resp sendResponse
		if err := json.Unmarshal(body, &resp); err != nil {
			t.Fatal(err)
		}
		if r, ok := resp.PDUs[late.EventID()]; !ok || r.Error != "" {
			t.Errorf("soft-failed PDU answered %+v (present %v), want no error", r, ok)
		}
		for _, e := range timeline(t, a, alice, roomID) {
			if e.EventID == late.EventID() {
				t.Errorf("the soft-failed event is in the timeline")
			}
		}
		ext, err := a.HS.Rooms.Extremities(ctx, roomID)
		if err != nil {
			t.Fatal(err)
		}
		if slices.Contains(ext, late.EventID()) {
			t.Errorf("the soft-failed event is a forward extremity")
		}
		if m, err := a.HS.Rooms.CurrentStateEvent(ctx, alice, roomID, "m.room.member", bob); err != nil || m.EventID == late.EventID() {
			t.Errorf("bob's member event in the current state: %v (%v), want the ban", m, err)
		}
		if m, _ := a.HS.Rooms.Membership(ctx, roomID, bob); m != "ban" {
			t.Errorf("bob is %q after the soft-failed event, want ban", m)
		}
		// Stored and not rejected (a rejected event is not served to
		// other servers; a soft-failed one is): what tells the two apart.
		if unknown, err := a.HS.Rooms.UnknownEvents(ctx, []string{late.EventID()}); err != nil || len(unknown) != 0 {
			t.Errorf("the soft-failed event was not stored: %v %v", unknown, err)
		}
		if isRejected(a, late.EventID()) {
			t.Errorf("the event was rejected, not soft-failed")
		}
	})
}
