package federationapi_test

import (
	"context"
	"slices"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
)

// TestStretchCompletionToldToSync: completing the state of an event that
// is a forward extremity, built on a stretch of partial state, can
// change the room's current state; a client's /sync must learn it.
//
// In alice's room on A, charlie (power 50) kicked eve before bob of B
// joined with partial state: eve is no hero, so B's partial state lacks
// her membership. Bob talks, leaves, B purges the partial state, bob
// rejoins with the full state (eve kicked), then alice demotes charlie.
// A's events built on bob's leave (a fork) reach B: their state derives
// from the partial state, where eve's membership is missing, so
// resolving it with the full state re-checks charlie's kick against the
// demotion and drops it — the current state on B puts eve back as
// joined (a state reset, of an old event). Bob syncs then. Once B has
// fetched the state at bob's leave again, the fork's state is complete,
// the kick is in every state again and eve is kicked in B's current
// state: bob's long poll waiting meanwhile must be woken and say so
// (eve's membership is the kick in its state), once, and so must an
// incremental /sync from his earlier token made afterwards.
//
// The completion (roomserver.CompleteStretchState, recomputeCurrentState)
// moves the current state back to an event older than bob's token and
// stores no event: the change takes a room stream position of its own
// (updateCurrentState), which wakes the long poll and puts the kick in
// the state delta (issue 7).
//
// Spec: client-server-api, "GET /_matrix/client/v3/sync" (state: the
// state updates since the token); MSC3706.
func TestStretchCompletionToldToSync(t *testing.T) {
	// Serial: the completion must wake a 10 s long poll in time.
	forEachEngine(t, func(t *testing.T, n *network) {
		ctx := context.Background()
		a, b := n.start(), n.start()
		var charlie, eve *syncer
		kicked := func(alice *syncer) id.RoomID {
			charlie = a.register("charlie")
			eve = a.register("eve")
			created, err := alice.cli.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "public_chat",
				PowerLevelOverride: &event.PowerLevelsEventContent{Users: map[id.UserID]int{charlie.id(): 50}}})
			if err != nil {
				t.Fatal(err)
			}
			// Five members joined before eve's kick: the heroes, which
			// leave her out.
			members := []*syncer{charlie, a.register("u1"), a.register("u2"), a.register("u3"), eve}
			for _, u := range members {
				if _, err := u.cli.JoinRoom(ctx, string(created.RoomID), nil); err != nil {
					t.Fatal(err)
				}
			}
			if _, err := charlie.cli.KickUser(ctx, created.RoomID, &mautrix.ReqKickUser{UserID: eve.id()}); err != nil {
				t.Fatal(err)
			}
			return created.RoomID
		}
		p := leftWhilePartial(t, n, a, b, kicked)
		roomID, bobID, eveID := string(p.roomID), string(p.bob.id()), string(eve.id())
		kick, err := a.HS.Rooms.CurrentStateEvent(ctx, string(p.alice.id()), roomID, "m.room.member", eveID)
		if err != nil {
			t.Fatal(err)
		}
		rejoinAfterPurge(t, p)
		if m, err := b.HS.Rooms.CurrentStateEvent(ctx, bobID, roomID, "m.room.member", eveID); err != nil || m.EventID != kick.EventID {
			t.Fatalf("eve's membership on B after the full rejoin: %+v %v; want the kick %s", m, err, kick.EventID)
		}
		demote, err := p.alice.cli.SendStateEvent(ctx, p.roomID, event.StatePowerLevels, "",
			&event.PowerLevelsEventContent{Users: map[id.UserID]int{}})
		if err != nil {
			t.Fatal(err)
		}
		eventually(t, "B to get charlie's demotion", func() bool { return hasEvent(b, bobID, demote.EventID.String()) })

		refetch := make(chan struct{})
		b.HS.Federation.HoldStretchRefetches(refetch, nil, nil)
		fork := forkOnLeave(t, p, demote.EventID.String())
		m, err := b.HS.Rooms.CurrentStateEvent(ctx, bobID, roomID, "m.room.member", eveID)
		if err != nil {
			t.Fatal(err)
		}
		if m.EventID == kick.EventID {
			t.Fatalf("B kept eve kicked with the fork's partial state; the test needs the reset it expects")
		}
		first, err := p.bob.cli.FullSyncRequest(ctx, mautrix.ReqSync{})
		if err != nil {
			t.Fatal(err)
		}
		givesKick := func(resp *mautrix.RespSync) bool {
			room := resp.Rooms.Join[p.roomID]
			if room == nil {
				return false
			}
			isKick := func(e *event.Event) bool { return e.ID.String() == kick.EventID }
			return slices.ContainsFunc(room.State.Events, isKick) || slices.ContainsFunc(room.Timeline.Events, isKick)
		}

		// A long poll from bob's token waits while B completes the state:
		// the completion must wake it with the kick. One woken by anything
		// else waits on from its next token; one that times out was not
		// woken.
		const pollTimeout = 10 * time.Second
		type polled struct {
			resp *mautrix.RespSync
			took time.Duration
			err  error
		}
		woken := make(chan polled, 1)
		go func() {
			since := first.NextBatch
			for {
				start := time.Now()
				resp, err := p.bob.cli.FullSyncRequest(ctx, mautrix.ReqSync{Since: since, Timeout: int(pollTimeout.Milliseconds())})
				took := time.Since(start)
				if err != nil || givesKick(resp) || took >= pollTimeout {
					woken <- polled{resp, took, err}
					return
				}
				since = resp.NextBatch
			}
		}()
		time.Sleep(300 * time.Millisecond) // the long poll waits

		close(refetch)
		for _, e := range []string{fork.onStretch.EventID(), fork.afterIt.EventID(), fork.merge.EventID()} {
			eventually(t, "B to serve the state at "+e, func() bool {
				ok, _, _ := p.servedNow(t, e)
				return ok
			})
		}
		eventually(t, "eve kicked again in B's current state", func() bool {
			m, err := b.HS.Rooms.CurrentStateEvent(ctx, bobID, roomID, "m.room.member", eveID)
			return err == nil && m.EventID == kick.EventID
		})
		poll := <-woken
		if poll.err != nil {
			t.Fatal(poll.err)
		}
		if !givesKick(poll.resp) {
			t.Fatalf("bob's long poll was not woken by the completion (answered after %v without eve's kick %s); eve's membership on B was %s when bob last synced",
				poll.took.Round(time.Millisecond), kick.EventID, m.EventID)
		}
		// Told once: not again after the token that told it.
		again, err := p.bob.cli.FullSyncRequest(ctx, mautrix.ReqSync{Since: poll.resp.NextBatch})
		if err != nil {
			t.Fatal(err)
		}
		if givesKick(again) {
			t.Errorf("eve's kick given again after the token that gave it")
		}
		// A client that syncs from the old token after the completion
		// learns it too.
		next, err := p.bob.cli.FullSyncRequest(ctx, mautrix.ReqSync{Since: first.NextBatch})
		if err != nil {
			t.Fatal(err)
		}
		if !givesKick(next) {
			t.Errorf("bob's /sync from his token before the completion does not give eve's kick %s", kick.EventID)
		}
	})
}
