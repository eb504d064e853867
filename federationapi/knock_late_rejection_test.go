package federationapi_test

import (
	"context"
	"encoding/json"
	"net/http"
	"testing"
	"time"

	"maunium.net/go/mautrix"
)

// TestLateKnockRejectionKeepsNewKnock: carol on B knocks on alice's room
// on A, alice rejects her (kicks), carol knocks again. A's kick reaching B
// only after the second knock (here: A sends it again, as a slow or
// retried transaction would) is about the first knock: carol's pending
// knock stays, and her /sync does not move the room to rooms.leave.
// Complement TestKnocking over federation hit this when the kick of one
// subtest was delivered after the next subtest's knock.
// Spec: server-server-api, "Auth events selection" (a member event's
// auth events hold the target's current membership).
func TestLateKnockRejectionKeepsNewKnock(t *testing.T) {
	forEachEngine(t, func(t *testing.T, n *network) {
		a, b := n.start(), n.start()
		ctx := context.Background()
		alice, carol := a.register("alice"), b.register("carol")
		roomID := knockRoom(t, alice, "knock knock")
		carol.syncOnce()

		knock := func(what string) {
			t.Helper()
			if _, err := carol.cli.KnockRoom(ctx, roomID.String(), &mautrix.ReqKnockRoom{Via: []string{a.Name}}); err != nil {
				t.Fatalf("carol knocking (%s): %v", what, err)
			}
		}
		knock("first")
		carol.await("carol's first knock", func() bool { return len(carol.knocks[roomID]) > 0 })
		_, err := alice.cli.KickUser(ctx, roomID, &mautrix.ReqKickUser{UserID: carol.id(), Reason: "no"})
		if err != nil {
			t.Fatalf("rejecting carol: %v", err)
		}
		carol.await("the rejection in rooms.leave", func() bool { return carol.left[roomID] })
		kickEv, err := a.HS.Rooms.CurrentStateEvent(ctx, string(alice.id()), string(roomID), "m.room.member", string(carol.id()))
		if err != nil || kickEv.Membership != "leave" {
			t.Fatalf("carol's membership on A after the kick: %+v, %v", kickEv, err)
		}
		rejection, _, err := a.HS.Rooms.FederationEvent(ctx, kickEv.EventID)
		if err != nil {
			t.Fatal(err)
		}

		knock("second")
		carol.await("carol's second knock", func() bool { return len(carol.knocks[roomID]) > 0 })
		pending := func() string {
			invs, err := b.HS.Federation.RemoteInvitesSince(ctx, string(carol.id()), -1, 0)
			if err != nil {
				t.Fatal(err)
			}
			for _, inv := range invs {
				if inv.RoomID == string(roomID) {
					return inv.Membership
				}
			}
			return ""
		}
		if m := pending(); m != "knock" {
			t.Fatalf("carol's pending membership on B after her second knock: %q, want knock", m)
		}

		// The first knock's rejection again, from A.
		status, body := n.request(b, a.Name, a.HS.Key, b.Name, http.MethodPut,
			"/_matrix/federation/v1/send/late"+time.Now().Format("150405.000000"),
			map[string]any{"origin": a.Name, "origin_server_ts": time.Now().UnixMilli(), "pdus": []json.RawMessage{rejection.JSON}})
		if status != http.StatusOK {
			t.Fatalf("send: %d %s", status, body)
		}
		if m := pending(); m != "knock" {
			t.Fatalf("carol's pending membership on B after the first knock's rejection came again: %q, want knock", m)
		}
	})
}
