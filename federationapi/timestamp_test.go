package federationapi_test

import (
	"context"
	"testing"

	"github.com/myelin-chat/myelin/internal/mxerr"
	"github.com/myelin-chat/myelin/roomserver"
)

// TestTimestampToEventPromotesOutlier: bob on B joins alice's room on A,
// so B holds the room's first events (create, power levels, ...) only as
// outliers: the state and auth chain the join brought. Asked backwards
// from the create event's timestamp, A answers with an event B holds
// that way; B backfills it (promotes the outlier into the history) and
// answers with it rather than 404. This is the lookup Complement's
// "when looking backwards before the room was created" makes when the
// room is created in the millisecond of its "before" timestamp.
// Spec: server-server-api, "GET /timestamp_to_event" ("it should try to
// backfill this event ... so that it is available for a client to query").
func TestTimestampToEventPromotesOutlier(t *testing.T) {
	t.Parallel()
	forEachEngine(t, func(t *testing.T, n *network) {
		ctx := context.Background()
		a, b := n.start(), n.start()
		alice, bob := a.user("alice"), b.user("bob")
		roomID := publicRoom(t, a, alice)
		sendText(t, a, roomID, alice, "after the creation")
		if _, err := b.HS.Federation.JoinRemote(ctx, roomID, bob, []string{a.Name}); err != nil {
			t.Fatal(err)
		}
		create, err := a.HS.Rooms.RoomStateEvent(ctx, roomID, "m.room.create", "")
		if err != nil {
			t.Fatal(err)
		}
		want, err := a.HS.Rooms.EventNearTimestamp(ctx, b.Name, roomID, create.OriginServerTS, roomserver.Backward)
		if err != nil {
			t.Fatalf("A backwards from the create event's ts: %v", err)
		}
		if !hasEventStored(t, b, want.EventID) || hasEvent(b, bob, want.EventID) {
			t.Fatalf("B should hold %s (%s) as an outlier only", want.EventID, want.Type)
		}
		got, err := b.HS.Rooms.EventAtTimestamp(ctx, bob, roomID, create.OriginServerTS, roomserver.Backward)
		if err != nil || got.EventID != want.EventID {
			t.Fatalf("B backwards from the create event's ts: %s %v, want %s (%s)", eventName(got), err, want.EventID, want.Type)
		}
		if !hasEvent(b, bob, want.EventID) {
			t.Fatalf("bob cannot read %s on B after the lookup", want.EventID)
		}
		// The create event now leads B's history, yet B still knows it
		// lacks the events between it and bob's join: forwards from just
		// after it, A's message is closer than bob's join.
		msg, err := a.HS.Rooms.EventNearTimestamp(ctx, b.Name, roomID, create.OriginServerTS+1, roomserver.Forward)
		if err != nil {
			t.Fatal(err)
		}
		got, err = b.HS.Rooms.EventAtTimestamp(ctx, bob, roomID, create.OriginServerTS+1, roomserver.Forward)
		if err != nil || got.EventID != msg.EventID {
			t.Fatalf("B forwards from after the create event: %s %v, want %s (%s)", eventName(got), err, msg.EventID, msg.Type)
		}
	})
}

// TestTimestampToEventHistoryVisibility: neither endpoint names an event
// its asker may not see. Alice's message m is sent before bob (on B)
// and carol (on A) join. Under "shared" history both find m backwards
// from its timestamp; under "joined" (and "invited": nobody was invited)
// neither A's federation answer to B, nor B's client answer to bob (which
// asks A), nor A's client answer to carol is m, and forwards from m's
// timestamp each finds an event after m instead.
// Spec: client-server-api, "History visibility"; server-server-api,
// "GET /timestamp_to_event" and "Retrieving events" (a server sees
// what its users may see).
func TestTimestampToEventHistoryVisibility(t *testing.T) {
	t.Parallel()
	forEachEngine(t, func(t *testing.T, n *network) {
		ctx := context.Background()
		a, b := n.start(), n.start()
		alice, bob, carol := a.user("alice"), b.user("bob"), a.user("carol")
		for _, vis := range []string{"shared", "invited", "joined"} {
			t.Run(vis, func(t *testing.T) {
				roomID := publicRoom(t, a, alice)
				empty := ""
				if _, err := a.HS.Rooms.SendEvent(ctx, roomserver.SendEventRequest{RoomID: roomID, Sender: alice,
					Type: "m.room.history_visibility", StateKey: &empty, Content: mustJSON(map[string]string{"history_visibility": vis})}); err != nil {
					t.Fatal(err)
				}
				m := sendText(t, a, roomID, alice, "before bob and carol")
				mEvent, err := a.HS.Rooms.Event(ctx, alice, m)
				if err != nil {
					t.Fatal(err)
				}
				if _, err := b.HS.Federation.JoinRemote(ctx, roomID, bob, []string{a.Name}); err != nil {
					t.Fatal(err)
				}
				if _, err := a.HS.Rooms.Join(ctx, roomserver.MembershipRequest{RoomID: roomID, Sender: carol, Target: carol}); err != nil {
					t.Fatal(err)
				}
				ts := mEvent.OriginServerTS
				answers := map[string]func(dir roomserver.Direction) (*roomserver.Event, error){
					"A to server B": func(dir roomserver.Direction) (*roomserver.Event, error) {
						return a.HS.Rooms.EventNearTimestamp(ctx, b.Name, roomID, ts, dir)
					},
					"B to bob": func(dir roomserver.Direction) (*roomserver.Event, error) {
						return b.HS.Rooms.EventAtTimestamp(ctx, bob, roomID, ts, dir)
					},
					"A to carol": func(dir roomserver.Direction) (*roomserver.Event, error) {
						return a.HS.Rooms.EventAtTimestamp(ctx, carol, roomID, ts, dir)
					},
				}
				for who, answer := range answers {
					back, err := answer(roomserver.Backward)
					if vis == "shared" {
						if err != nil || back.EventID != m {
							t.Fatalf("%s backwards: %s %v, want m %s", who, eventName(back), err, m)
						}
						continue
					}
					if err == nil && back.EventID == m {
						t.Fatalf("%s backwards names m under %s history", who, vis)
					}
					if err != nil && !mxerr.Is(err, mxerr.NotFound) {
						t.Fatalf("%s backwards: %v", who, err)
					}
					fwd, err := answer(roomserver.Forward)
					if err != nil || fwd.EventID == m || fwd.OriginServerTS < ts {
						t.Fatalf("%s forwards: %s %v, want an event after m", who, eventName(fwd), err)
					}
				}
			})
		}
	})
}

// eventName names ev (nil when a lookup failed) in a failure message.
func eventName(ev *roomserver.Event) string {
	if ev == nil {
		return "no event"
	}
	return ev.EventID + " (" + ev.Type + ")"
}
