package federationapi_test

import (
	"context"
	"encoding/json"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/matrix-org/gomatrixserverlib"
	"maunium.net/go/mautrix"

	"github.com/myelin-chat/myelin/federationapi"
)

// TestPartialStateReadsAfterRejoin: bob of B joins A's room with
// partial state, talks and leaves while B's resync is held, so B purges
// the room's partial state and keeps the stretch of events stored with
// it (TestPartialStateReadsAfterPurge). Bob then joins again, answered
// with the full state (A declines omit_members) or with partial state
// whose resync completes; or he joins again before the purge, answered
// with the full state. A's GET /state_ids and /state on B:
//   - at bob's new join and at a later event of A: served, the same
//     state A serves at them (B has the full state there);
//   - at the events of the purged stretch: refused (403 M_FORBIDDEN);
//   - at an event of A built on bob's leave (its prev event lies in the
//     stretch), at an event built on that one, and at bob's next event
//     on B (its prev events include them): refused, as their state
//     derives from the stretch's partial state.
//
// Spec: server-server-api, "GET /_matrix/federation/v1/state_ids/{roomId}",
// "PUT /_matrix/federation/v2/send_join" (omit_members); MSC3706.
func TestPartialStateReadsAfterRejoin(t *testing.T) {
	for _, tc := range []struct {
		name                   string
		fullRejoin, purgeFirst bool
	}{
		{"full state after the purge", true, true},
		{"partial state after the purge", false, true},
		// The rejoin comes while the resync is still held, before the
		// purge: a full-state answer ends the partial state at once
		// (ImportJoinedRoom), the earlier join's events keeping theirs.
		{"full state before the purge", true, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			forEachEngine(t, func(t *testing.T, n *network) {
				partialStateReadsAfterRejoin(t, n, tc.fullRejoin, tc.purgeFirst)
			})
		})
	}
}

func partialStateReadsAfterRejoin(t *testing.T, n *network, fullRejoin, purgeFirst bool) {
	a, b := n.start(), n.start()
	ctx := context.Background()
	alice, bob := a.register("alice"), b.register("bob")
	// No room name: alice is a hero, so B's partial state holds her
	// membership and her events built on the stretch pass auth on B.
	created, err := alice.cli.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "public_chat"})
	if err != nil {
		t.Fatal(err)
	}
	roomID := created.RoomID
	r := pathEscape(string(roomID))
	hold := make(chan struct{})
	b.HS.Federation.HoldResyncs(hold)
	var once sync.Once
	release := func() { once.Do(func() { close(hold) }) }
	t.Cleanup(release)
	if _, err := bob.cli.JoinRoom(ctx, string(roomID), &mautrix.ReqJoinRoom{Via: []string{a.Name}}); err != nil {
		t.Fatalf("bob joining: %v", err)
	}
	msg := bob.send(roomID, "said on partial state").String()
	if _, err := bob.cli.LeaveRoom(ctx, roomID); err != nil {
		t.Fatal(err)
	}
	leave, err := b.HS.Rooms.CurrentStateEvent(ctx, string(bob.id()), string(roomID), "m.room.member", string(bob.id()))
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, "A to get bob's leave", func() bool {
		m, _ := a.HS.Rooms.Membership(ctx, string(roomID), string(bob.id()))
		return m == "leave"
	})
	if purgeFirst {
		release()
		eventually(t, "B to purge the room's partial state", func() bool {
			partial, err := b.HS.Rooms.IsPartialState(ctx, string(roomID))
			return err == nil && !partial && !b.HS.Federation.ResyncRunning(string(roomID))
		})
	}

	var resyncs atomic.Int32
	federationapi.ObserveResyncs(t, func(server, room string) {
		if server == b.Name && room == string(roomID) {
			resyncs.Add(1)
		}
	})
	a.HS.Federation.ServeFullStateJoins(fullRejoin)
	if _, err := bob.cli.JoinRoom(ctx, string(roomID), &mautrix.ReqJoinRoom{Via: []string{a.Name}}); err != nil {
		t.Fatalf("bob joining again: %v", err)
	}
	if fullRejoin {
		if partial, err := b.HS.Rooms.IsPartialState(ctx, string(roomID)); err != nil || partial {
			t.Fatalf("after a rejoin answered with the full state the room is partial: %v %v", partial, err)
		}
	} else {
		waitCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		if err := b.HS.Rooms.AwaitFullState(waitCtx, string(roomID)); err != nil {
			t.Fatalf("the resync after bob's new join: %v", err)
		}
	}
	if !purgeFirst {
		release()
		eventually(t, "B's held resync to stop", func() bool { return !b.HS.Federation.ResyncRunning(string(roomID)) })
	}
	if got := resyncs.Load(); (got == 0) != fullRejoin {
		t.Fatalf("B fetched the room's full state %d times after the rejoin (full-state answer: %v)", got, fullRejoin)
	}
	join, err := b.HS.Rooms.CurrentStateEvent(ctx, string(bob.id()), string(roomID), "m.room.member", string(bob.id()))
	if err != nil {
		t.Fatal(err)
	}

	// stateIDs is the answer of dest's /state_ids at eventID, asked by
	// origin, with its ID lists sorted.
	stateIDs := func(dest, origin *fedServer, eventID string) (int, string) {
		t.Helper()
		status, raw := n.request(dest, origin.Name, origin.HS.Key, dest.Name, http.MethodGet,
			"/_matrix/federation/v1/state_ids/"+r+"?event_id="+pathEscape(eventID), nil)
		if status != http.StatusOK {
			return status, string(raw)
		}
		var body struct {
			PDUIDs       []string `json:"pdu_ids"`
			AuthChainIDs []string `json:"auth_chain_ids"`
		}
		if err := json.Unmarshal(raw, &body); err != nil {
			t.Fatalf("/state_ids at %s: %v", eventID, err)
		}
		slices.Sort(body.PDUIDs)
		slices.Sort(body.AuthChainIDs)
		return status, string(mustJSON(body))
	}
	served := func(what, eventID string) {
		t.Helper()
		status, got := stateIDs(b, a, eventID)
		wantStatus, want := stateIDs(a, b, eventID)
		if status != http.StatusOK || wantStatus != http.StatusOK || got != want {
			t.Errorf("/state_ids at %s: B answers %d %.300s; A answers %d %.300s; want both 200 and the same",
				what, status, got, wantStatus, want)
		}
		if status, raw := n.request(b, a.Name, a.HS.Key, b.Name, http.MethodGet,
			"/_matrix/federation/v1/state/"+r+"?event_id="+pathEscape(eventID), nil); status != http.StatusOK {
			t.Errorf("/state at %s: %d %.200s, want 200", what, status, raw)
		}
	}
	refused := func(what, eventID string) {
		t.Helper()
		for _, kind := range []string{"state", "state_ids"} {
			status, raw := n.request(b, a.Name, a.HS.Key, b.Name, http.MethodGet,
				"/_matrix/federation/v1/"+kind+"/"+r+"?event_id="+pathEscape(eventID), nil)
			var e struct {
				Errcode string `json:"errcode"`
			}
			_ = json.Unmarshal(raw, &e)
			if status != http.StatusForbidden || e.Errcode != "M_FORBIDDEN" {
				t.Errorf("/%s at %s = %d %.200s, want 403 M_FORBIDDEN (B has only partial state there)", kind, what, status, raw)
			}
		}
	}

	served("bob's new join", join.EventID)
	refused("bob's message of the purged stretch", msg)
	refused("bob's leave of the purged stretch", leave.EventID)
	later := alice.send(roomID, "after bob's return").String()
	eventually(t, "B to get alice's message", func() bool { return hasEvent(b, string(bob.id()), later) })
	served("alice's message after the rejoin", later)

	// An event of A built on bob's leave (a fork from before the
	// rejoin), then one built on it, pushed to B.
	leaveEv, _, err := b.HS.Rooms.FederationEvent(ctx, leave.EventID)
	if err != nil {
		t.Fatal(err)
	}
	onStretch := buildPDU(t, a, string(roomID), string(alice.id()), "m.room.message", nil,
		map[string]string{"msgtype": "m.text", "body": "built on bob's leave"}, a.Name, a.HS.Key,
		func(p *gomatrixserverlib.ProtoEvent) {
			p.PrevEvents, p.Depth = []string{leave.EventID}, leaveEv.Depth+1
		})
	afterIt := buildPDU(t, a, string(roomID), string(alice.id()), "m.room.message", nil,
		map[string]string{"msgtype": "m.text", "body": "built on that"}, a.Name, a.HS.Key,
		func(p *gomatrixserverlib.ProtoEvent) {
			p.PrevEvents, p.Depth = []string{onStretch.EventID()}, leaveEv.Depth+2
		})
	sendPDUs(t, n, b, a, "on-stretch-"+time.Now().Format("150405.000"), onStretch, afterIt)
	for _, ev := range []gomatrixserverlib.PDU{onStretch, afterIt} {
		eventually(t, "B to store "+ev.EventID(), func() bool { return hasEvent(b, string(bob.id()), ev.EventID()) })
	}
	refused("alice's event built on the stretch", onStretch.EventID())
	refused("alice's event built on that one", afterIt.EventID())
	// Bob's next event on B has them among its prev events.
	next := bob.send(roomID, "after the fork").String()
	refused("bob's event after the fork", next)
	// What came before stays as it was.
	served("bob's new join, after the fork", join.EventID)
	served("alice's message after the rejoin, after the fork", later)
}
