package federationapi_test

import (
	"context"
	"errors"
	"net/http"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
)

// A second local user joining (or knocking on) a room this server holds
// with partial state goes through a resident server, as a first remote
// join does: the partial state may lack a ban or an earlier membership,
// so this server cannot authorise the join. Complement: msc3902
// TestPartialStateJoin "Leave during resync/works after a second partial
// join", "CanFastJoinDuringPartialStateJoin".
// Spec: server-server-api, "Joining Rooms"; MSC3706.

// sameCurrentState fails t unless a and b hold the same current state of
// roomID (as seen by the given members).
func sameCurrentState(t *testing.T, a, b *fedServer, roomID id.RoomID, onA, onB id.UserID) {
	t.Helper()
	ctx := context.Background()
	sa, err := a.HS.Rooms.CurrentState(ctx, string(onA), string(roomID))
	if err != nil {
		t.Fatal(err)
	}
	sb, err := b.HS.Rooms.CurrentState(ctx, string(onB), string(roomID))
	if err != nil {
		t.Fatal(err)
	}
	if len(sa) != len(sb) {
		t.Fatalf("state differs: A has %d events, B %d", len(sa), len(sb))
	}
	for i := range sa {
		if sa[i].EventID != sb[i].EventID {
			t.Fatalf("state differs at (%s, %v): %s vs %s", sa[i].Type, sa[i].StateKey, sa[i].EventID, sb[i].EventID)
		}
	}
}

// TestPartialStateSecondJoinThroughResident: while B's resync of a room
// joined with partial state is held, a second user of B joins through
// A's make_join/send_join: A holds the join when the client's /join
// returns (a local join would reach A later, through B's queue), B holds
// it too, and the resync then completes with both users joined and the
// same state on A and B.
func TestPartialStateSecondJoinThroughResident(t *testing.T) {
	t.Parallel()
	forEachEngine(t, func(t *testing.T, n *network) {
		a, b, c := n.start(), n.start(), n.start()
		ctx := context.Background()
		alice, bob, bob2, carol := a.register("alice"), b.register("bob"), b.register("bob2"), c.register("carol")
		roomID := namedPublicRoom(t, alice)
		if _, err := carol.cli.JoinRoom(ctx, string(roomID), &mautrix.ReqJoinRoom{Via: []string{a.Name}}); err != nil {
			t.Fatal(err)
		}
		eventually(t, "A to see carol", func() bool {
			m, _ := a.HS.Rooms.Membership(ctx, string(roomID), string(carol.id()))
			return m == "join"
		})
		release := partialJoin(t, a, b, bob, roomID)

		// bob2 names no server: the room's partial-state servers are used.
		if _, err := bob2.cli.JoinRoom(ctx, string(roomID), &mautrix.ReqJoinRoom{}); err != nil {
			t.Fatalf("bob2 joining during the resync: %v", err)
		}
		if m, _ := a.HS.Rooms.Membership(ctx, string(roomID), string(bob2.id())); m != "join" {
			t.Fatalf("A's membership of bob2 right after /join is %q: the join did not go through send_join", m)
		}
		if m, _ := b.HS.Rooms.Membership(ctx, string(roomID), string(bob2.id())); m != "join" {
			t.Fatalf("B's membership of bob2 is %q", m)
		}
		if partial, err := b.HS.Rooms.IsPartialState(ctx, string(roomID)); err != nil || !partial {
			t.Fatalf("B's room partial = %v, %v; the second join must leave the resync running", partial, err)
		}
		// A has the join and sends it on: B's sender must not send it
		// (Complement fails a resident server that gets it twice).
		join2, err := b.HS.Rooms.RoomStateEvent(ctx, string(roomID), "m.room.member", string(bob2.id()))
		if err != nil {
			t.Fatal(err)
		}
		if join2.StreamPos == 0 {
			t.Fatal("bob2's join has no stream position")
		}
		outbound, _, err := b.HS.Rooms.LocalEventsAfter(ctx, 0, 10000)
		if err != nil {
			t.Fatal(err)
		}
		for _, ev := range outbound {
			if ev.Pos == join2.StreamPos {
				t.Fatalf("B's sender would send bob2's join %s to %v", join2.EventID, ev.Destinations)
			}
		}

		release()
		for _, u := range []*syncer{bob, bob2, carol} {
			if m, _ := b.HS.Rooms.Membership(ctx, string(roomID), string(u.id())); m != "join" {
				t.Fatalf("after the resync B's membership of %s is %q", u.id(), m)
			}
		}
		for _, u := range []*syncer{bob, bob2} {
			joined, err := u.cli.JoinedRooms(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if len(joined.JoinedRooms) != 1 || joined.JoinedRooms[0] != roomID {
				t.Fatalf("%s's joined rooms: %v", u.id(), joined.JoinedRooms)
			}
			members, err := u.cli.JoinedMembers(ctx, roomID)
			if err != nil {
				t.Fatal(err)
			}
			for _, want := range []id.UserID{alice.id(), bob.id(), bob2.id(), carol.id()} {
				if _, ok := members.Joined[want]; !ok {
					t.Fatalf("%s's joined members lack %s: %v", u.id(), want, members.Joined)
				}
			}
		}
		sameCurrentState(t, a, b, roomID, alice.id(), bob.id())
	})
}

// TestPartialStateSecondJoinBanned: a user of B banned from the room
// before B joined it with partial state (a ban the partial state omits)
// is refused with M_FORBIDDEN by the resident server when joining during
// the resync, and B stores no join of theirs; a knock on a room that
// does not allow knocking is refused the same way. The resync still
// completes and shows the ban.
func TestPartialStateSecondJoinBanned(t *testing.T) {
	t.Parallel()
	forEachEngine(t, func(t *testing.T, n *network) {
		a, b := n.start(), n.start()
		ctx := context.Background()
		alice, bob, mallory := a.register("alice"), b.register("bob"), b.register("mallory")
		roomID := namedPublicRoom(t, alice)
		if _, err := alice.cli.BanUser(ctx, roomID, &mautrix.ReqBanUser{UserID: mallory.id(), Reason: "spam"}); err != nil {
			t.Fatal(err)
		}
		release := partialJoin(t, a, b, bob, roomID)
		if m, _ := b.HS.Rooms.Membership(ctx, string(roomID), string(mallory.id())); m != "" {
			t.Fatalf("B's partial state holds mallory's membership %q; the test needs it omitted", m)
		}

		_, err := mallory.cli.JoinRoom(ctx, string(roomID), &mautrix.ReqJoinRoom{Via: []string{a.Name}})
		var httpErr mautrix.HTTPError
		if !errors.As(err, &httpErr) || httpErr.RespError == nil || httpErr.RespError.ErrCode != "M_FORBIDDEN" ||
			httpErr.Response.StatusCode != http.StatusForbidden {
			t.Fatalf("banned mallory joining during the resync: %v, want 403 M_FORBIDDEN", err)
		}
		if m, _ := b.HS.Rooms.Membership(ctx, string(roomID), string(mallory.id())); m != "" {
			t.Fatalf("B stored mallory's membership %q", m)
		}
		_, err = mallory.cli.KnockRoom(ctx, string(roomID), &mautrix.ReqKnockRoom{Via: []string{a.Name}})
		if !errors.As(err, &httpErr) || httpErr.RespError == nil || httpErr.RespError.ErrCode != "M_FORBIDDEN" {
			t.Fatalf("mallory knocking during the resync: %v, want M_FORBIDDEN", err)
		}
		if m, _ := b.HS.Rooms.Membership(ctx, string(roomID), string(mallory.id())); m != "" {
			t.Fatalf("B stored mallory's membership %q after the knock", m)
		}

		release()
		if m, _ := b.HS.Rooms.Membership(ctx, string(roomID), string(mallory.id())); m != "ban" {
			t.Fatalf("after the resync B's membership of mallory is %q, want ban", m)
		}
		sameCurrentState(t, a, b, roomID, alice.id(), bob.id())
	})
}

// TestPartialStateJoinAfterLeaveDuringResync: the only user of B in a
// partial-state room leaves during the resync and another user of B
// joins through A, again with partial state. When the new join follows
// the leave (B missed nothing), the running resync keeps its join and
// its replay gives the new join the full state; when the room went on
// while B was out (alice spoke: B missed it), the room's partial-state
// join moves to the new join and the running resync starts over for it.
// Either way the resync completes and B ends with A's state. Complement:
// msc3902 "Leave during resync/succeeds, then another user can join
// without resync completing".
func TestPartialStateJoinAfterLeaveDuringResync(t *testing.T) {
	t.Parallel()
	for _, missed := range []bool{false, true} {
		name := "follows the leave"
		if missed {
			name = "after missed events"
		}
		t.Run(name, func(t *testing.T) {
			forEachEngine(t, func(t *testing.T, n *network) {
				a, b := n.start(), n.start()
				ctx := context.Background()
				alice, bob, bob2 := a.register("alice"), b.register("bob"), b.register("bob2")
				roomID := namedPublicRoom(t, alice)
				release := partialJoin(t, a, b, bob, roomID)
				first, err := b.HS.Rooms.PartialStateRooms(ctx)
				if err != nil || len(first) != 1 {
					t.Fatalf("partial-state rooms on B: %+v, %v", first, err)
				}
				if _, err := bob.cli.LeaveRoom(ctx, roomID); err != nil {
					t.Fatal(err)
				}
				leave, err := b.HS.Rooms.RoomStateEvent(ctx, string(roomID), "m.room.member", string(bob.id()))
				if err != nil {
					t.Fatal(err)
				}
				eventually(t, "A to see bob leave", func() bool {
					m, _ := a.HS.Rooms.Membership(ctx, string(roomID), string(bob.id()))
					return m == "leave"
				})
				if missed {
					sendText(t, a, string(roomID), string(alice.id()), "while B is out")
				}
				if _, err := bob2.cli.JoinRoom(ctx, string(roomID), &mautrix.ReqJoinRoom{Via: []string{a.Name}}); err != nil {
					t.Fatalf("bob2 joining during the resync: %v", err)
				}
				rooms, err := b.HS.Rooms.PartialStateRooms(ctx)
				if err != nil {
					t.Fatal(err)
				}
				if len(rooms) != 1 || rooms[0].RoomID != string(roomID) {
					t.Fatalf("partial-state rooms on B: %+v", rooms)
				}
				ev, err := b.HS.Rooms.RoomStateEvent(ctx, string(roomID), "m.room.member", string(bob2.id()))
				if err != nil {
					t.Fatal(err)
				}
				if want := first[0].JoinEventID; missed {
					want = ev.EventID
					if rooms[0].JoinEventID != want {
						t.Fatalf("the partial-state join is %s, want bob2's join %s", rooms[0].JoinEventID, want)
					}
				} else if rooms[0].JoinEventID != want {
					t.Fatalf("the partial-state join is %s, want bob's join %s still", rooms[0].JoinEventID, want)
				}

				release()
				if m, _ := b.HS.Rooms.Membership(ctx, string(roomID), string(bob2.id())); m != "join" {
					t.Fatalf("after the resync B's membership of bob2 is %q", m)
				}
				if m, _ := b.HS.Rooms.Membership(ctx, string(roomID), string(alice.id())); m != "join" {
					t.Fatalf("after the resync B's membership of alice is %q", m)
				}
				sameCurrentState(t, a, b, roomID, alice.id(), bob2.id())
				// The state at bob's leave: when bob2's join kept the
				// resync, its replay gave the leave the full state;
				// when the join moved, nothing completes the leave's
				// partial state, so A's /state_ids there is refused.
				want := http.StatusOK
				if missed {
					want = http.StatusForbidden
				}
				if status, body := n.request(b, a.Name, a.HS.Key, b.Name, http.MethodGet, "/_matrix/federation/v1/state_ids/"+
					pathEscape(string(roomID))+"?event_id="+pathEscape(leave.EventID), nil); status != want {
					t.Fatalf("/state_ids at bob's leave = %d %.200s, want %d", status, body, want)
				}
			})
		})
	}
}

// TestPartialStateRemoteKick: a resident server's kick of B's only
// member during the resync shows in the member's lazy-loading /sync as
// rooms.leave, and a ban makes a rejoin through the resident server fail
// with 403. With no user of B left in the room the resync is abandoned
// (as Synapse does): it stops, and the room stays partial. After a kick
// the user rejoins through the resident server, which starts a new
// resync that completes with A's state. Complement: msc3902 "Leave
// during resync/can be triggered by remote kick", "can be triggered by
// remote ban".
func TestPartialStateRemoteKick(t *testing.T) {
	t.Parallel()
	// Room version 11 too: there the kick lists the create event among
	// its auth events, as Complement's does (room version 12 forbids it:
	// rooms/v12, auth rule 3.2, so such a kick is rejected there).
	for _, tc := range []struct{ action, version string }{{"kick", "12"}, {"ban", "12"}, {"kick", "11"}, {"ban", "11"}} {
		action := tc.action
		t.Run(action+"/v"+tc.version, func(t *testing.T) {
			forEachEngine(t, func(t *testing.T, n *network) {
				a, b := n.start(), n.start()
				ctx := context.Background()
				alice, bob := a.register("alice"), b.register("bob")
				created, err := alice.cli.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "public_chat", Name: "partial state", RoomVersion: id.RoomVersion(tc.version)})
				if err != nil {
					t.Fatal(err)
				}
				roomID := created.RoomID
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
				if partial, err := b.HS.Rooms.IsPartialState(ctx, string(roomID)); err != nil || !partial {
					t.Fatalf("B's room partial = %v, %v; want partial", partial, err)
				}
				since := lazySync(t, bob, "").NextBatch
				if action == "kick" {
					_, err = alice.cli.KickUser(ctx, roomID, &mautrix.ReqKickUser{UserID: bob.id()})
				} else {
					_, err = alice.cli.BanUser(ctx, roomID, &mautrix.ReqBanUser{UserID: bob.id()})
				}
				if err != nil {
					t.Fatal(err)
				}
				left := false
				deadline := time.Now().Add(10 * time.Second)
				for !left && time.Now().Before(deadline) {
					resp := lazySync(t, bob, since)
					since = resp.NextBatch
					if lr, ok := resp.Rooms.Leave[roomID]; ok {
						for _, e := range lr.Timeline.Events {
							if e.Type == event.StateMember && e.GetStateKey() == string(bob.id()) {
								left = true
							}
						}
					}
				}
				if !left {
					t.Fatalf("bob's lazy-loading /sync never showed the %s in rooms.leave", action)
				}

				// No user of B is left in the room: the resync, released
				// now, is abandoned and the room's partial state purged.
				if !b.HS.Federation.ResyncRunning(string(roomID)) {
					t.Fatal("no resync runs before the release")
				}
				released = true
				close(hold)
				eventually(t, "B's resync to be abandoned and the partial state purged", func() bool {
					partial, err := b.HS.Rooms.IsPartialState(ctx, string(roomID))
					return !b.HS.Federation.ResyncRunning(string(roomID)) && err == nil && !partial
				})

				_, err = bob.cli.JoinRoom(ctx, string(roomID), &mautrix.ReqJoinRoom{Via: []string{a.Name}})
				if action == "ban" {
					var httpErr mautrix.HTTPError
					if !errors.As(err, &httpErr) || httpErr.Response.StatusCode != http.StatusForbidden {
						t.Fatalf("banned bob rejoining during the resync: %v, want 403", err)
					}
					if b.HS.Federation.ResyncRunning(string(roomID)) {
						t.Fatal("a refused rejoin started a resync")
					}
					return
				}
				if err != nil {
					t.Fatalf("kicked bob rejoining: %v", err)
				}
				// The rejoin starts a new resync, which completes.
				waitCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
				defer cancel()
				if err := b.HS.Rooms.AwaitFullState(waitCtx, string(roomID)); err != nil {
					t.Fatalf("the resync after bob's rejoin: %v", err)
				}
				if m, _ := b.HS.Rooms.Membership(ctx, string(roomID), string(bob.id())); m != "join" {
					t.Fatalf("after the resync B's membership of bob is %q", m)
				}
				sameCurrentState(t, a, b, roomID, alice.id(), bob.id())
			})
		})
	}
}

// TestPartialStateKnockRefusals: during a resync, a knock by a user of B
// whose membership B holds as join is refused at once with 403 (the knock
// auth rule), and a knock refused by the resident server (mallory, banned
// there, a ban B's partial state omits) answers the client with that
// server's 403 even when a later server tried (C, which does not hold the
// room) fails otherwise. Complement: TestKnocking "A user cannot knock on
// a room they are already in" over federation.
func TestPartialStateKnockRefusals(t *testing.T) {
	t.Parallel()
	forEachEngine(t, func(t *testing.T, n *network) {
		a, b, c := n.start(), n.start(), n.start()
		ctx := context.Background()
		alice, bob, mallory := a.register("alice"), b.register("bob"), b.register("mallory")
		roomID := namedPublicRoom(t, alice)
		if _, err := alice.cli.BanUser(ctx, roomID, &mautrix.ReqBanUser{UserID: mallory.id(), Reason: "spam"}); err != nil {
			t.Fatal(err)
		}
		release := partialJoin(t, a, b, bob, roomID)
		defer release()

		forbidden := func(who string, err error) {
			t.Helper()
			var httpErr mautrix.HTTPError
			if !errors.As(err, &httpErr) || httpErr.RespError == nil || httpErr.RespError.ErrCode != "M_FORBIDDEN" ||
				httpErr.Response.StatusCode != http.StatusForbidden {
				t.Fatalf("%s knocking during the resync: %v, want 403 M_FORBIDDEN", who, err)
			}
		}
		_, err := bob.cli.KnockRoom(ctx, string(roomID), &mautrix.ReqKnockRoom{Via: []string{c.Name}})
		forbidden("joined bob", err)
		if m, _ := b.HS.Rooms.Membership(ctx, string(roomID), string(bob.id())); m != "join" {
			t.Fatalf("B's membership of bob after his knock is %q", m)
		}
		_, err = mallory.cli.KnockRoom(ctx, string(roomID), &mautrix.ReqKnockRoom{Via: []string{c.Name}})
		forbidden("banned mallory", err)
		if m, _ := b.HS.Rooms.Membership(ctx, string(roomID), string(mallory.id())); m != "" {
			t.Fatalf("B stored mallory's membership %q after the knock", m)
		}
	})
}
