//go:build goolm

package federationapi_test

import (
	"context"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/id"
)

// TestLateKnownJoinerSeesEveryHello is TestThreeServerScenario's hello
// round with its race made certain: carol on C joins alice's room
// through A while B is unreachable, so bob on B sends his hello without
// knowing C is in the room (it names bob's join, which C holds only as
// an outlier from the send_join state). Once B is reachable again and
// hears of carol's join, it sends C its forward extremities; C fetches
// the room's history with get_missing_events and promotes it to stream
// positions after the hellos. Carol's first /sync must still show
// every hello, not only the room's creation (roomserver
// TestPromotedHistoryDoesNotHideNewerEvents).
func TestLateKnownJoinerSeesEveryHello(t *testing.T) {
	forEachEngine(t, func(t *testing.T, n *network) {
		ctx := context.Background()
		cut := partitionable(n)
		a, b, c := n.start(), n.start(), n.start()
		alice, bob, carol := a.register("alice"), b.register("bob"), c.register("carol")
		room := alice.publicAliasedRoom("late")
		if _, err := bob.cli.JoinRoom(ctx, "#late:"+a.Name, nil); err != nil {
			t.Fatalf("bob's join: %v", err)
		}

		cut(true, b)
		if _, err := carol.cli.JoinRoom(ctx, string(room), &mautrix.ReqJoinRoom{Via: []string{a.Name}}); err != nil {
			t.Fatalf("carol's join through A: %v", err)
		}
		hellos := map[id.UserID]string{}
		for _, u := range []*syncer{carol, alice} {
			hellos[u.id()] = string(u.send(room, "hello from "+string(u.id())))
		}
		// B's listener also serves its clients: bob's hello is sent
		// through its roomserver.
		hellos[bob.id()] = sendText(t, b, string(room), string(bob.id()), "hello from "+string(bob.id()))
		cut(false, b)

		// C gets bob's hello only once B has heard of carol's join.
		eventually(t, "C to accept bob's hello", func() bool { return hasEvent(c, string(carol.id()), hellos[bob.id()]) })
		// A sync leaves a room out while its partial state resyncs.
		wait, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		if err := c.HS.Rooms.AwaitFullState(wait, string(room)); err != nil {
			t.Fatalf("C's resync: %v", err)
		}
		carol.syncOnce() // her first: an initial sync
		for _, from := range []*syncer{carol, alice, bob} {
			if !carol.sawMessage(room, from.id(), "hello from "+string(from.id())) {
				var got []string
				for _, e := range carol.timeline[room] {
					got = append(got, e.Type.Type+" "+string(e.Sender))
				}
				t.Errorf("carol's initial sync lacks the hello of %s; timeline %v", from.id(), got)
			}
		}
	})
}
