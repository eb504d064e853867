package federationapi_test

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/matrix-org/gomatrixserverlib"
	"maunium.net/go/mautrix"

	"github.com/myelin-chat/myelin/federationapi"
	"github.com/myelin-chat/myelin/roomserver"
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
//   - at the events of the purged stretch: refused (403 M_FORBIDDEN),
//     for good;
//   - at an event of A built on bob's leave (its prev event lies in the
//     stretch), at an event built on that one, at a merge event of A
//     whose prev events are bob's leave and a later event, and at bob's
//     next event on B (its prev events include them): refused while B
//     has not fetched the state at bob's leave again (held here), as
//     their state derives from the stretch's partial state; then, once
//     B has fetched it from A, served, with the state A serves at them.
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
	p := leftWhilePartial(t, n, a, b, unnamedPublicRoom(t))
	roomID, alice, bob := p.roomID, p.alice, p.bob
	// B fetches the state at the stretch again only when the test says.
	refetch := make(chan struct{})
	b.HS.Federation.HoldStretchRefetches(refetch, nil, nil)
	if purgeFirst {
		p.purge(t)
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
		p.releaseHeld()
		eventually(t, "B's held resync to stop", func() bool { return !b.HS.Federation.ResyncRunning(string(roomID)) })
	}
	if got := resyncs.Load(); (got == 0) != fullRejoin {
		t.Fatalf("B fetched the room's full state %d times after the rejoin (full-state answer: %v)", got, fullRejoin)
	}
	join, err := b.HS.Rooms.CurrentStateEvent(ctx, string(bob.id()), string(roomID), "m.room.member", string(bob.id()))
	if err != nil {
		t.Fatal(err)
	}

	p.served(t, "bob's new join", join.EventID)
	p.refused(t, "bob's message of the purged stretch", p.msg)
	p.refused(t, "bob's leave of the purged stretch", p.leave)
	later := alice.send(roomID, "after bob's return").String()
	eventually(t, "B to get alice's message", func() bool { return hasEvent(b, string(bob.id()), later) })
	p.served(t, "alice's message after the rejoin", later)

	// Events of A built on bob's leave (a fork from before the rejoin):
	// one on it, one built on that, and a merge of the leave and alice's
	// later message. A stores them (so it answers /state_ids at them)
	// and they are pushed to B.
	fork := forkOnLeave(t, p, later)
	refusedUntilRefetch := map[string]string{
		"alice's event built on the stretch":   fork.onStretch.EventID(),
		"alice's event built on that one":      fork.afterIt.EventID(),
		"alice's merge of the stretch and now": fork.merge.EventID(),
	}
	for what, id := range refusedUntilRefetch {
		p.refused(t, what, id)
	}
	// Bob's next event on B has them among its prev events.
	next := bob.send(roomID, "after the fork").String()
	eventually(t, "A to get bob's event", func() bool { return hasEvent(a, string(alice.id()), next) })
	refusedUntilRefetch["bob's event after the fork"] = next
	p.refused(t, "bob's event after the fork", next)
	// What came before stays as it was.
	p.served(t, "bob's new join, after the fork", join.EventID)
	p.served(t, "alice's message after the rejoin, after the fork", later)

	// B fetches the state at bob's leave from A: the events built on the
	// stretch get their full state, the stretch itself stays refused.
	close(refetch)
	for what, id := range refusedUntilRefetch {
		eventually(t, "B to serve the state at "+what, func() bool {
			ok, _, _ := p.servedNow(t, id)
			return ok
		})
		p.served(t, what, id)
	}
	p.refused(t, "bob's message of the purged stretch, after the refetch", p.msg)
	p.refused(t, "bob's leave of the purged stretch, after the refetch", p.leave)
	p.served(t, "bob's new join, after the refetch", join.EventID)
}

// stretchFork is events of A built on bob's leave, of the stretch.
type stretchFork struct {
	onStretch, afterIt, merge gomatrixserverlib.PDU
}

// forkOnLeave has A store events built on bob's leave (onStretch, then
// afterIt on it, and merge of the leave and later) and pushes them to B,
// waiting until B holds them.
func forkOnLeave(t *testing.T, p *partialStretch, later string) stretchFork {
	t.Helper()
	ctx := context.Background()
	a, b, roomID, alice := p.a, p.b, string(p.roomID), string(p.alice.id())
	leaveEv, _, err := b.HS.Rooms.FederationEvent(ctx, p.leave)
	if err != nil {
		t.Fatal(err)
	}
	laterEv, _, err := a.HS.Rooms.FederationEvent(ctx, later)
	if err != nil {
		t.Fatal(err)
	}
	text := func(body string) map[string]string { return map[string]string{"msgtype": "m.text", "body": body} }
	var f stretchFork
	f.onStretch = buildPDU(t, a, roomID, alice, "m.room.message", nil, text("built on bob's leave"), a.Name, a.HS.Key,
		func(pe *gomatrixserverlib.ProtoEvent) {
			pe.PrevEvents, pe.Depth = []string{p.leave}, leaveEv.Depth+1
		})
	f.afterIt = buildPDU(t, a, roomID, alice, "m.room.message", nil, text("built on that"), a.Name, a.HS.Key,
		func(pe *gomatrixserverlib.ProtoEvent) {
			pe.PrevEvents, pe.Depth = []string{f.onStretch.EventID()}, leaveEv.Depth+2
		})
	f.merge = buildPDU(t, a, roomID, alice, "m.room.message", nil, text("a merge of bob's leave and now"), a.Name, a.HS.Key,
		func(pe *gomatrixserverlib.ProtoEvent) {
			pe.PrevEvents, pe.Depth = []string{p.leave, later}, max(leaveEv.Depth, laterEv.Depth)+1
		})
	pdus := []gomatrixserverlib.PDU{f.onStretch, f.afterIt, f.merge}
	for _, ev := range pdus {
		res, err := a.HS.Rooms.InputEvent(ctx, roomserver.InputEventRequest{RoomVersion: string(ev.Version()), JSON: ev.JSON()})
		if err != nil || res.Outcome != roomserver.Accepted {
			t.Fatalf("A storing %s: %+v %v", ev.EventID(), res, err)
		}
	}
	sendPDUs(t, p.n, b, a, "on-stretch-"+time.Now().Format("150405.000"), pdus...)
	for _, ev := range pdus {
		eventually(t, "B to store "+ev.EventID(), func() bool { return hasEvent(b, string(p.bob.id()), ev.EventID()) })
	}
	return f
}
