package federationapi_test

import (
	"context"
	"encoding/json"
	"net/http"
	"sync"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/id"
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
	t.Parallel()
	forEachEngine(t, func(t *testing.T, n *network) {
		a, b, alice, carol, roomID := carolKnocked(t, n)
		ctx := context.Background()
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

		if _, err := carol.cli.KnockRoom(ctx, roomID.String(), &mautrix.ReqKnockRoom{Via: []string{a.Name}}); err != nil {
			t.Fatalf("carol knocking again: %v", err)
		}
		carol.await("carol's second knock", func() bool { return len(carol.knocks[roomID]) > 0 })
		pending := func() string { return pendingMembership(t, b, carol, roomID) }
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

// TestKnockRejectionRacingNewKnock: A's rejection of carol's first knock
// is read on B, then carol knocks again and B stores the new knock, then
// B writes the rejection: it must not replace the new knock (the check
// that it answers the pending knock and the write are one step).
func TestKnockRejectionRacingNewKnock(t *testing.T) {
	t.Parallel()
	forEachEngine(t, func(t *testing.T, n *network) {
		a, b, alice, carol, roomID := carolKnocked(t, n)
		ctx := context.Background()

		var once sync.Once
		secondKnock := make(chan error, 1)
		b.HS.Federation.BeforePendingAnswer(func() {
			once.Do(func() {
				_, err := carol.cli.KnockRoom(ctx, roomID.String(), &mautrix.ReqKnockRoom{Via: []string{a.Name}, Reason: "again"})
				secondKnock <- err
			})
		})
		if _, err := alice.cli.KickUser(ctx, roomID, &mautrix.ReqKickUser{UserID: carol.id(), Reason: "no"}); err != nil {
			t.Fatalf("rejecting carol: %v", err)
		}
		select {
		case err := <-secondKnock:
			if err != nil {
				t.Fatalf("carol's second knock: %v", err)
			}
		case <-time.After(20 * time.Second):
			t.Fatal("B never handled the rejection")
		}
		// The rejection's write follows the hook on B's /send handler at
		// once; give it its turn (on a slow machine a later write would
		// make this test pass without checking, never fail wrongly).
		time.Sleep(200 * time.Millisecond)
		if m := pendingMembership(t, b, carol, roomID); m != "knock" {
			t.Fatalf("carol's pending membership on B: %q, want her second knock", m)
		}
	})
}

// carolKnocked starts A and B, makes alice's knock room on A and has
// carol on B knock on it once (B holds the knock as pending).
func carolKnocked(t *testing.T, n *network) (a, b *fedServer, alice, carol *syncer, roomID id.RoomID) {
	t.Helper()
	a, b = n.start(), n.start()
	alice, carol = a.register("alice"), b.register("carol")
	roomID = knockRoom(t, alice, "knock knock")
	carol.syncOnce()
	if _, err := carol.cli.KnockRoom(context.Background(), roomID.String(), &mautrix.ReqKnockRoom{Via: []string{a.Name}}); err != nil {
		t.Fatalf("carol knocking: %v", err)
	}
	carol.await("carol's first knock", func() bool { return len(carol.knocks[roomID]) > 0 })
	return a, b, alice, carol, roomID
}

// pendingMembership is u's pending membership on s in roomID, as s's
// federation API lists it ("" when there is none).
func pendingMembership(t *testing.T, s *fedServer, u *syncer, roomID id.RoomID) string {
	t.Helper()
	invs, err := s.HS.Federation.RemoteInvitesSince(context.Background(), string(u.id()), -1, 0)
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
