package federationapi_test

import (
	"context"
	"encoding/json"
	"slices"
	"sync"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/myelin-chat/myelin/federationapi"
)

// A room joined with partial state whose local users all leave before
// the resync completes: the resync stops and the room's partial-state
// bookkeeping is purged (roomserver/partial_state_purge.go), while the
// users' history, leaves included, stays. Complement: msc3902
// TestPartialStateJoin "Leave during resync".

// eagerSync is one /sync of u from since without lazy-loaded members,
// with left rooms (an initial sync leaves them out by default).
// Spec: client-server-api, "Filtering" (include_leave).
func eagerSync(t *testing.T, u *syncer, since string) *mautrix.RespSync {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := u.cli.SyncRequest(ctx, 0, since, `{"room":{"include_leave":true}}`, false, event.PresenceOnline)
	if err != nil {
		t.Fatalf("sync for %s: %v", u.id(), err)
	}
	return resp
}

// leftIn reports whether resp lists roomID in rooms.leave with userID's
// leave in its timeline.
func leftIn(resp *mautrix.RespSync, roomID id.RoomID, userID id.UserID) bool {
	lr, ok := resp.Rooms.Leave[roomID]
	if !ok {
		return false
	}
	for _, e := range lr.Timeline.Events {
		if e.Type == event.StateMember && e.GetStateKey() == string(userID) {
			return true
		}
	}
	return false
}

// deliveredRows counts roomID's events marked delivered on s (events a
// resident server sent for s: roomserver_delivered_events).
func deliveredRows(t *testing.T, s *fedServer, roomID id.RoomID) int {
	t.Helper()
	var n int
	if err := s.HS.DB.Reader().QueryRow(context.Background(), `SELECT COUNT(*) FROM roomserver_delivered_events d
		JOIN roomserver_events e ON e.event_nid = d.event_nid WHERE e.room_id = $1`, string(roomID)).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// TestPartialStatePurgedAfterLastLocalLeave: bob and carol of B join A's
// room (bob with partial state, carol through A's send_join during the
// resync) and both leave while B's resync is held. Released, the resync
// stops and B purges the room's partial state: the room is no longer
// partial nor listed for a resync, its delivered marks are gone, and B
// no longer counts A among the room's servers (the partial-state record
// named it; no user of B shares the room with A's users now). What the
// users saw stays: eager and lazy /syncs show the leaves, /members
// answers at once. A later join of bob goes through make_join/send_join
// again, starts a new resync for that join, which completes.
func TestPartialStatePurgedAfterLastLocalLeave(t *testing.T) {
	t.Parallel()
	forEachEngine(t, func(t *testing.T, n *network) {
		a, b := n.start(), n.start()
		ctx := context.Background()
		alice, bob, carol := a.register("alice"), b.register("bob"), b.register("carol")
		roomID := namedPublicRoom(t, alice)
		hold := make(chan struct{})
		b.HS.Federation.HoldResyncs(hold)
		released := false
		t.Cleanup(func() {
			if !released {
				close(hold)
			}
		})
		if _, err := bob.cli.JoinRoom(ctx, string(roomID), &mautrix.ReqJoinRoom{Via: []string{a.Name}}); err != nil {
			t.Fatalf("bob joining: %v", err)
		}
		if _, err := carol.cli.JoinRoom(ctx, string(roomID), &mautrix.ReqJoinRoom{Via: []string{a.Name}}); err != nil {
			t.Fatalf("carol joining: %v", err)
		}
		sendText(t, a, string(roomID), alice.id().String(), "hello while B is partial")
		bobSince := eagerSync(t, bob, "").NextBatch
		for _, u := range []*syncer{bob, carol} {
			if _, err := u.cli.LeaveRoom(ctx, roomID); err != nil {
				t.Fatalf("%s leaving: %v", u.id(), err)
			}
		}
		// Before the release: still partial, with the bookkeeping the
		// purge is to remove (so the checks below can fail).
		if partial, err := b.HS.Rooms.IsPartialState(ctx, string(roomID)); err != nil || !partial {
			t.Fatalf("before the release B's room partial = %v, %v; want partial", partial, err)
		}
		if deliveredRows(t, b, roomID) == 0 {
			t.Fatal("carol's join through A is not marked delivered on B")
		}
		if servers, err := b.HS.Rooms.JoinedServers(ctx, string(roomID)); err != nil || !slices.Contains(servers, a.Name) {
			t.Fatalf("before the release B's servers of the room = %v, %v; want A among them", servers, err)
		}

		released = true
		close(hold)
		eventually(t, "B to purge the room's partial state", func() bool {
			partial, err := b.HS.Rooms.IsPartialState(ctx, string(roomID))
			return err == nil && !partial
		})
		if b.HS.Federation.ResyncRunning(string(roomID)) {
			t.Fatal("a resync still runs for the purged room")
		}
		rooms, err := b.HS.Rooms.PartialStateRooms(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range rooms {
			if r.RoomID == string(roomID) {
				t.Fatal("the purged room is still listed for a resync")
			}
		}
		if n := deliveredRows(t, b, roomID); n != 0 {
			t.Fatalf("%d delivered marks of the purged room remain", n)
		}
		if servers, err := b.HS.Rooms.JoinedServers(ctx, string(roomID)); err != nil || slices.Contains(servers, a.Name) {
			t.Fatalf("after the purge B's servers of the room = %v, %v; want A gone", servers, err)
		}
		// A has both leaves (sent before the purge).
		for _, u := range []*syncer{bob, carol} {
			eventually(t, "A to see "+string(u.id())+"'s leave", func() bool {
				m, _ := a.HS.Rooms.Membership(ctx, string(roomID), string(u.id()))
				return m == "leave"
			})
		}

		// The users' history stays: the leave in eager /syncs (initial
		// and incremental), /members at once.
		if resp := eagerSync(t, bob, bobSince); !leftIn(resp, roomID, bob.id()) {
			t.Fatal("bob's incremental eager /sync does not show his leave")
		}
		if resp := eagerSync(t, carol, ""); !leftIn(resp, roomID, carol.id()) {
			t.Fatal("carol's initial eager /sync with include_leave does not show her leave")
		}
		membersCtx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		if _, err := bob.cli.Members(membersCtx, roomID); err != nil {
			t.Fatalf("bob's /members of the room he left: %v", err)
		}

		// A new join starts afresh: a partial-state record for that join,
		// whose resync completes.
		hold2 := make(chan struct{})
		b.HS.Federation.HoldResyncs(hold2)
		var once sync.Once
		t.Cleanup(func() { once.Do(func() { close(hold2) }) })
		if _, err := bob.cli.JoinRoom(ctx, string(roomID), &mautrix.ReqJoinRoom{Via: []string{a.Name}}); err != nil {
			t.Fatalf("bob joining again: %v", err)
		}
		join, err := b.HS.Rooms.CurrentStateEvent(ctx, string(bob.id()), string(roomID), "m.room.member", string(bob.id()))
		if err != nil {
			t.Fatal(err)
		}
		rooms, err = b.HS.Rooms.PartialStateRooms(ctx)
		if err != nil {
			t.Fatal(err)
		}
		found := false
		for _, r := range rooms {
			if r.RoomID == string(roomID) {
				found = true
				if r.JoinEventID != join.EventID {
					t.Fatalf("the new partial-state record is for join %s, want bob's new join %s", r.JoinEventID, join.EventID)
				}
			}
		}
		if !found {
			t.Fatal("bob's new join left no partial-state record")
		}
		once.Do(func() { close(hold2) })
		waitCtx, cancel2 := context.WithTimeout(ctx, 30*time.Second)
		defer cancel2()
		if err := b.HS.Rooms.AwaitFullState(waitCtx, string(roomID)); err != nil {
			t.Fatalf("the resync after bob's new join: %v", err)
		}
		if m, _ := b.HS.Rooms.Membership(ctx, string(roomID), string(carol.id())); m != "leave" {
			t.Fatalf("after the resync B's membership of carol is %q, want leave", m)
		}
		sameCurrentState(t, a, b, roomID, alice.id(), bob.id())
		// The room works: a message of bob reaches A.
		sent, err := bob.cli.SendText(ctx, roomID, "back again")
		if err != nil {
			t.Fatal(err)
		}
		eventually(t, "A to get bob's message", func() bool { return hasEvent(a, alice.id().String(), sent.EventID.String()) })
	})
}

// TestPartialStateLeftBeforeRestart: B holds two rooms of A with partial
// state, their resyncs held. In the first bob stays; the only user of B
// in the second, carol, leaves, and B restarts at once. After the
// restart B resumes the first room's resync, which completes, and does
// not resync the second: it purges its partial state without fetching
// anything for it.
func TestPartialStateLeftBeforeRestart(t *testing.T) {
	forEachEngine(t, func(t *testing.T, n *network) {
		a, b := n.start(), n.start()
		ctx := context.Background()
		alice, bob, carol := a.register("alice"), b.register("bob"), b.register("carol")
		kept, left := namedPublicRoom(t, alice), namedPublicRoom(t, alice)
		hold := make(chan struct{})
		b.HS.Federation.HoldResyncs(hold)
		var once sync.Once
		release := func() { once.Do(func() { close(hold) }) }
		t.Cleanup(release)
		for _, j := range []struct {
			u    *syncer
			room id.RoomID
		}{{bob, kept}, {carol, left}} {
			if _, err := j.u.cli.JoinRoom(ctx, string(j.room), &mautrix.ReqJoinRoom{Via: []string{a.Name}}); err != nil {
				t.Fatalf("%s joining: %v", j.u.id(), err)
			}
		}
		if _, err := carol.cli.LeaveRoom(ctx, left); err != nil {
			t.Fatal(err)
		}
		for _, room := range []id.RoomID{kept, left} {
			if partial, err := b.HS.Rooms.IsPartialState(ctx, string(room)); err != nil || !partial {
				t.Fatalf("before the restart B's room %s partial = %v, %v; want partial", room, partial, err)
			}
		}

		var mu sync.Mutex
		attempts := map[string]int{}
		federationapi.ObserveResyncs(t, func(server, roomID string) {
			if server == b.Name {
				mu.Lock()
				attempts[roomID]++
				mu.Unlock()
			}
		})
		b.restart()
		release()

		waitCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		if err := b.HS.Rooms.AwaitFullState(waitCtx, string(kept)); err != nil {
			t.Fatalf("the resumed resync of the room bob is in: %v", err)
		}
		eventually(t, "B to purge the partial state of the room carol left", func() bool {
			partial, err := b.HS.Rooms.IsPartialState(ctx, string(left))
			return err == nil && !partial
		})
		mu.Lock()
		keptTries, leftTries := attempts[string(kept)], attempts[string(left)]
		mu.Unlock()
		if keptTries == 0 {
			t.Fatal("no resync attempt for the room bob is in after the restart")
		}
		if leftTries != 0 {
			t.Fatalf("%d resync attempts after the restart for the room every user of B left", leftTries)
		}
		if b.HS.Federation.ResyncRunning(string(left)) {
			t.Fatal("a resync runs for the room carol left")
		}
		sameCurrentState(t, a, b, kept, alice.id(), bob.id())
		if resp := eagerSync(t, carol, ""); !leftIn(resp, left, carol.id()) {
			t.Fatal("after the restart carol's /sync does not show her leave")
		}
		eventually(t, "A to see carol's leave", func() bool {
			m, _ := a.HS.Rooms.Membership(ctx, string(left), string(carol.id()))
			return m == "leave"
		})
	})
}

// TestPartialStateJoinGivenUp: bob of B joins A's room with partial
// state, and A, the only server of the room, goes down before B's resync
// starts. Once the resync has failed long enough (shortened here), B
// gives the join up: bob leaves the room with a reason saying why, his
// /sync shows it, the resync stops and the room's partial state is
// purged. When A is back, it gets bob's leave. Complement: msc3902
// "Device list no longer tracked when failing to complete partial state
// join" (the room is no longer shared with A's users).
func TestPartialStateJoinGivenUp(t *testing.T) {
	t.Parallel()
	forEachEngine(t, func(t *testing.T, n *network) {
		a, b := n.start(), n.start()
		ctx := context.Background()
		alice, bob := a.register("alice"), b.register("bob")
		roomID := namedPublicRoom(t, alice)
		hold := make(chan struct{})
		b.HS.Federation.HoldResyncs(hold)
		var once sync.Once
		release := func() { once.Do(func() { close(hold) }) }
		t.Cleanup(release)
		if _, err := bob.cli.JoinRoom(ctx, string(roomID), &mautrix.ReqJoinRoom{Via: []string{a.Name}}); err != nil {
			t.Fatalf("bob joining: %v", err)
		}
		if partial, err := b.HS.Rooms.IsPartialState(ctx, string(roomID)); err != nil || !partial {
			t.Fatalf("B's room partial = %v, %v; want partial", partial, err)
		}
		since := eagerSync(t, bob, "").NextBatch
		b.HS.Federation.SetResyncGiveUp(500*time.Millisecond, 2)
		a.stop()
		release() // the resync starts and fails: A is down

		eventually(t, "B to give bob's partial join up", func() bool {
			m, _ := b.HS.Rooms.Membership(ctx, string(roomID), string(bob.id()))
			return m == "leave"
		})
		eventually(t, "B to purge the room's partial state", func() bool {
			partial, err := b.HS.Rooms.IsPartialState(ctx, string(roomID))
			return err == nil && !partial && !b.HS.Federation.ResyncRunning(string(roomID))
		})
		leave, err := b.HS.Rooms.CurrentStateEvent(ctx, string(bob.id()), string(roomID), "m.room.member", string(bob.id()))
		if err != nil {
			t.Fatal(err)
		}
		var content struct {
			Membership string `json:"membership"`
			Reason     string `json:"reason"`
		}
		if err := json.Unmarshal(leave.Content, &content); err != nil || content.Membership != "leave" || content.Reason == "" {
			t.Fatalf("bob's membership on B = %s (%v), want a leave with a reason", leave.Content, err)
		}
		if resp := eagerSync(t, bob, since); !leftIn(resp, roomID, bob.id()) {
			t.Fatal("bob's /sync does not show the leave")
		}
		if servers, err := b.HS.Rooms.JoinedServers(ctx, string(roomID)); err != nil || slices.Contains(servers, a.Name) {
			t.Fatalf("after giving up B's servers of the room = %v, %v; want A gone", servers, err)
		}

		a.restart()
		eventually(t, "A to get bob's leave once back", func() bool {
			m, _ := a.HS.Rooms.Membership(ctx, string(roomID), string(bob.id()))
			return m == "leave"
		})
	})
}
