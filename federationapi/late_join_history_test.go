//go:build goolm

package federationapi_test

import (
	"context"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/id"

	"github.com/myelin-chat/myelin/config"
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
	t.Parallel()
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
		// B's sender fans the hello out after the send has returned; it
		// must do so while B still knows nothing of carol's join (else
		// it sends the hello to C directly and the test shows nothing).
		// B's own requests still go out: once A has it, B has fanned it
		// out, to A only.
		eventually(t, "A to accept bob's hello", func() bool { return hasEvent(a, string(alice.id()), hellos[bob.id()]) })
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

// TestJoinPulledByMissingEventsCatchesUpJoinedServer: a server that
// first hears of another server's join through get_missing_events (not
// the resident server's relay) still sends the joined server its own
// events the joined server could not have been sent. B is cut off while
// carol on C joins through A and bob on B says hello, which B sends only
// to A (the servers it knows). A backs off from B for a minute, so after
// the cut heals carol's hello, retried by C, reaches B first: B pulls
// carol's join from C (get_missing_events) and must then send bob's
// hello to C, which nothing else would ever make C fetch.
func TestJoinPulledByMissingEventsCatchesUpJoinedServer(t *testing.T) {
	t.Parallel()
	forEachEngine(t, func(t *testing.T, n *network) {
		ctx := context.Background()
		cut := partitionable(n)
		n.editEachConfig = func(cfg *config.Config) {
			cfg.Federation.MinBackoff = config.Duration(time.Minute)
			cfg.Federation.MaxBackoff = config.Duration(time.Minute)
		}
		a := n.start()
		n.editEachConfig = nil
		b, c := n.start(), n.start()
		alice, bob, carol := a.register("alice"), b.register("bob"), c.register("carol")
		room := alice.publicAliasedRoom("pulled")
		if _, err := bob.cli.JoinRoom(ctx, "#pulled:"+a.Name, nil); err != nil {
			t.Fatalf("bob's join: %v", err)
		}

		// C learns B's key now: while B is cut off, C could not fetch
		// it, and would refuse B's get_missing_events for a while after.
		if _, err := bob.cli.GetProfile(ctx, carol.id()); err != nil {
			t.Fatalf("bob reading carol's profile: %v", err)
		}

		cut(true, b)
		if _, err := carol.cli.JoinRoom(ctx, string(room), &mautrix.ReqJoinRoom{Via: []string{a.Name}}); err != nil {
			t.Fatalf("carol's join through A: %v", err)
		}
		carolHello := string(carol.send(room, "hello from "+string(carol.id())))
		// B's own requests still go out: its hello reaches A, not C.
		bobHello := sendText(t, b, string(room), string(bob.id()), "hello from "+string(bob.id()))
		eventually(t, "A to accept bob's hello", func() bool { return hasEvent(a, string(alice.id()), bobHello) })
		// A's relay of carol's join and C's hello have both failed to
		// reach B: A waits a minute before retrying, C at most a second.
		eventually(t, "A and C to back off from B", func() bool {
			return destinationFailures(t, a, b.Name) > 0 && destinationFailures(t, c, b.Name) > 0
		})
		cut(false, b)

		eventually(t, "B to accept carol's hello", func() bool { return hasEvent(b, string(bob.id()), carolHello) })
		eventually(t, "C to accept bob's hello", func() bool { return hasEvent(c, string(carol.id()), bobHello) })
		// B had carol's join from C: A's relay of it still waits.
		if destinationFailures(t, a, b.Name) == 0 {
			t.Fatal("A reached B again: B may have had carol's join from A, not through get_missing_events")
		}
	})
}
