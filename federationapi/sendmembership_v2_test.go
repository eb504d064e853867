package federationapi_test

import (
	"context"
	"encoding/json"
	"net/http"
	"testing"

	"github.com/matrix-org/gomatrixserverlib"

	"github.com/myelin-chat/myelin/roomserver"
)

// TestSendLeaveAndKnockV2Validation: v2 send_leave and send_knock refuse
// with 400 anything but the named membership of the sender itself
// (security case 12, which TestSendJoinValidation and
// TestSendMembershipV1 drive for send_join and v1), and with 403 such an
// event sent by another server than the sender's; nothing refused is
// stored. A good leave and a good knock are then accepted, so the
// refusals come from the event alone.
// Spec: server-server-api, "PUT /_matrix/federation/v2/send_leave/...",
// "PUT /_matrix/federation/v1/send_knock/...".
func TestSendLeaveAndKnockV2Validation(t *testing.T) {
	t.Parallel()
	forEachEngine(t, func(t *testing.T, n *network) {
		ctx := context.Background()
		a, b := n.start(), n.start()
		c := n.start()
		alice := a.user("alice")
		roomID := publicRoom(t, a, alice)
		empty := ""
		if _, err := a.HS.Rooms.SendEvent(ctx, roomserver.SendEventRequest{RoomID: roomID, Sender: alice,
			Type: "m.room.join_rules", StateKey: &empty, Content: mustJSON(map[string]string{"join_rule": "knock"})}); err != nil {
			t.Fatal(err)
		}
		bob := b.user("bob")
		paths := map[string]string{"leave": "/_matrix/federation/v2/send_leave/", "knock": "/_matrix/federation/v1/send_knock/"}
		put := func(origin *fedServer, kind string, pdu gomatrixserverlib.PDU) (int, []byte) {
			return n.request(a, origin.Name, origin.HS.Key, a.Name, http.MethodPut,
				paths[kind]+pathEscape(roomID)+"/"+pathEscape(pdu.EventID()), json.RawMessage(pdu.JSON()))
		}
		stored := func(pdu gomatrixserverlib.PDU) bool {
			_, _, err := a.HS.Rooms.FederationEvent(ctx, pdu.EventID())
			return err == nil
		}
		member := func(stateKey, membership string) gomatrixserverlib.PDU {
			return buildPDU(t, a, roomID, bob, "m.room.member", &stateKey, map[string]string{"membership": membership}, b.Name, b.HS.Key, nil)
		}
		for _, kind := range []string{"leave", "knock"} {
			bad := map[string]gomatrixserverlib.PDU{
				"message":       buildPDU(t, a, roomID, bob, "m.room.message", nil, map[string]string{"body": "x"}, b.Name, b.HS.Key, nil),
				"non-state":     buildPDU(t, a, roomID, bob, "m.room.member", nil, map[string]string{"membership": kind}, b.Name, b.HS.Key, nil),
				"join":          member(bob, "join"),
				"invite":        member(bob, "invite"),
				"other's state": member(b.user("doris"), kind),
			}
			if kind == "leave" {
				bad["knock"] = member(bob, "knock")
			} else {
				bad["leave"] = member(bob, "leave")
			}
			for name, pdu := range bad {
				if status, body := put(b, kind, pdu); status != http.StatusBadRequest {
					t.Errorf("send_%s of %s: %d %s, want 400", kind, name, status, body)
				}
				if stored(pdu) {
					t.Errorf("send_%s of %s: stored", kind, name)
				}
			}
			// Bob's own event, sent by C.
			good := member(bob, kind)
			if status, body := put(c, kind, good); status != http.StatusForbidden {
				t.Errorf("send_%s of B's user sent by C: %d %s, want 403", kind, status, body)
			}
			if stored(good) {
				t.Errorf("send_%s of B's user sent by C: stored", kind)
			}
		}

		// The good ones: bob knocks, then withdraws the knock.
		knock := member(bob, "knock")
		if status, body := put(b, "knock", knock); status != http.StatusOK {
			t.Fatalf("good send_knock: %d %s", status, body)
		}
		if m, _ := a.HS.Rooms.Membership(ctx, roomID, bob); m != "knock" {
			t.Fatalf("after send_knock bob is %q", m)
		}
		leave := member(bob, "leave")
		if status, body := put(b, "leave", leave); status != http.StatusOK {
			t.Fatalf("good send_leave: %d %s", status, body)
		}
		if m, _ := a.HS.Rooms.Membership(ctx, roomID, bob); m != "leave" {
			t.Fatalf("after send_leave bob is %q", m)
		}
	})
}
