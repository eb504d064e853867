package federationapi_test

import (
	"context"
	"encoding/json"
	"math"
	"slices"
	"testing"

	"github.com/matrix-org/gomatrixserverlib"

	"github.com/myelin-chat/myelin/roomserver"
)

// TestInboundGapFilledFromState: a server sends A a PDU whose prev events
// lie 40 events back in a history A never received, beyond what one
// get_missing_events (limit 20) returns. A then asks for the state at
// the missing prev event of the oldest event get_missing_events returned
// (state_ids; never at the pushed PDU's own prev event, which the
// returned events connect), fetches what it lacks of it (a display name
// change made inside the gap), and accepts the returned events and the
// PDU: they are in the timeline and the gap's member event is in A's
// current state.
func TestInboundGapFilledFromState(t *testing.T) {
	t.Parallel()
	forEachEngine(t, func(t *testing.T, n *network) {
		o := newGapOrigin(t, n)
		a, alice, roomID, mallory := o.a, o.alice, o.roomID, o.mallory
		ctx := context.Background()

		// The gap: 40 events A never gets, a display name change among
		// them, then the PDU that reaches A.
		prev := o.join
		var rename gomatrixserverlib.PDU
		var gap []gomatrixserverlib.PDU // oldest first
		o.mu.Lock()
		for i := 0; i < 40; i++ {
			if i == 5 {
				prev = o.build("m.room.member", &mallory,
					map[string]string{"membership": "join", "displayname": "Mallory in the gap"}, childOf(prev))
				rename = prev
			} else {
				prev = o.build("m.room.message", nil, map[string]any{"body": "unseen", "n": i}, childOf(prev))
			}
			gap = append(gap, prev)
			o.served[prev.EventID()] = prev
			o.missing = append(o.missing, prev.JSON())
			// state_ids at the gap events after the rename; 404 before.
			o.stateAt[prev.EventID()] = i >= 5
		}
		state, err := a.HS.Rooms.CurrentState(ctx, alice, roomID)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range state {
			if e.Type == "m.room.member" && e.StateKey != nil && *e.StateKey == mallory {
				o.stateIDs = append(o.stateIDs, rename.EventID())
				continue
			}
			o.stateIDs = append(o.stateIDs, e.EventID)
		}
		o.authIDs = o.stateIDs
		o.mu.Unlock()
		tip := o.build("m.room.message", nil, map[string]string{"body": "after the gap"}, childOf(prev))

		// A message here just before the PDU: a /sync batch holding it
		// and what closes the gap starts at the first event after the gap
		// and is limited (Complement's TestSyncTimelineGap).
		before := sendText(t, a, roomID, alice, "before the gap closes")
		beforeEv, err := a.HS.Rooms.Event(ctx, alice, before)
		if err != nil {
			t.Fatal(err)
		}

		if e, _ := o.send(tip); e != "" {
			t.Fatalf("the PDU after the gap: %s", e)
		}
		o.mu.Lock()
		if asked := o.asked; asked["get_missing_events"] == 0 || asked["state_ids"] == 0 || asked["event"] == 0 {
			t.Errorf("requests made: %v", asked)
		}
		o.mu.Unlock()
		// get_missing_events returned gap[20:]: the state asked for is
		// the state at gap[19], the prev event of the oldest of them.
		if stateAt, want := o.stateIDsAsked(), []string{gap[len(gap)-21].EventID()}; !slices.Equal(stateAt, want) {
			t.Errorf("state_ids asked at %v; want %v (the prev event of the oldest returned event)", stateAt, want)
		}
		pulled := gap[len(gap)-20:]
		if !hasEvent(a, alice, tip.EventID()) {
			t.Fatal("alice cannot see the PDU after the gap")
		}
		for _, e := range pulled {
			if !hasEvent(a, alice, e.EventID()) {
				t.Fatalf("alice cannot see %s, returned by get_missing_events", e.EventID())
			}
		}
		ev, err := a.HS.Rooms.CurrentStateEvent(ctx, alice, roomID, "m.room.member", mallory)
		if err != nil || ev.EventID != rename.EventID() {
			t.Fatalf("mallory's member event on A: %+v, %v; want the gap's %s", ev, err, rename.EventID())
		}
		// The room goes on: alice's next message builds on the new tip.
		msg := sendText(t, a, roomID, alice, "welcome back")
		if !hasEvent(a, alice, msg) {
			t.Fatal("alice's message after the gap is missing")
		}
		rr, err := a.HS.Rooms.RecentEvents(ctx, roomserver.RecentRequest{UserID: alice, RoomID: roomID,
			From: beforeEv.StreamPos - 1, To: math.MaxInt64, Limit: 30})
		if err != nil {
			t.Fatal(err)
		}
		var got, want []string
		for _, e := range rr.Events {
			got = append(got, e.EventID)
		}
		// The batch starts at the first event after the gap: the oldest
		// event get_missing_events returned.
		for _, e := range pulled {
			want = append(want, e.EventID())
		}
		want = append(want, tip.EventID(), msg)
		if !rr.Limited || !slices.Equal(got, want) {
			t.Fatalf("sync batch across the gap: limited=%v %v; want limited, %v", rr.Limited, got, want)
		}
	})
}

// TestGapWithUnobtainableAuthEvent follows Complement's
// TestCorruptedAuthChain: mallory's server sends A a PDU after a gap.
// The state at the gap names mallory's member event E, the last of a
// chain of display name changes A←B←C←D←E (each the auth event of the
// next), and the origin cannot serve B. C, D and E cannot be authorised,
// so the PDU (whose auth events name E) is rejected: it is not stored,
// mallory keeps the member event A held, and the /send answer carries no
// error for it, as for any rejected PDU.
// Spec: server-server-api, "Checks performed on receipt of a PDU",
// "Rejection", "PUT /_matrix/federation/v1/send/{txnId}".
func TestGapWithUnobtainableAuthEvent(t *testing.T) {
	t.Parallel()
	forEachEngine(t, func(t *testing.T, n *network) {
		o := newGapOrigin(t, n)
		a, alice, roomID, mallory, join := o.a, o.alice, o.roomID, o.mallory, o.join
		ctx := context.Background()
		// after builds on prev, with member (mallory's member event) in
		// place of the join among its auth events.
		after := func(prev gomatrixserverlib.PDU, member string) func(*gomatrixserverlib.ProtoEvent) {
			return func(pe *gomatrixserverlib.ProtoEvent) {
				childOf(prev)(pe)
				var auth []string
				if ids, ok := pe.AuthEvents.([]string); ok {
					auth = ids
				} else {
					_ = json.Unmarshal(mustJSON(pe.AuthEvents), &auth)
				}
				for i, id := range auth {
					if id == join.EventID() {
						auth[i] = member
					}
				}
				pe.AuthEvents = auth
			}
		}
		o.mu.Lock()
		chain := []gomatrixserverlib.PDU{join}
		for _, dn := range []string{"A", "B", "C", "D", "E"} {
			last := chain[len(chain)-1]
			chain = append(chain, o.build("m.room.member", &mallory,
				map[string]string{"membership": "join", "displayname": dn}, after(last, last.EventID())))
		}
		e := chain[5]
		bID := chain[2].EventID()
		atGap := o.build("m.room.message", nil, map[string]string{"body": "for state_ids"}, after(e, e.EventID()))
		gme := o.build("m.room.message", nil, map[string]string{"body": "for get_missing_events"}, after(atGap, e.EventID()))
		tip := o.build("m.room.message", nil, map[string]string{"body": "for send"}, after(gme, e.EventID()))
		for _, p := range []gomatrixserverlib.PDU{chain[1], chain[3], chain[4], e, atGap, gme, tip} {
			o.served[p.EventID()] = p // not B
		}
		o.missing = []json.RawMessage{gme.JSON()}
		// The state before gme and before atGap: both are messages after E.
		o.stateAt[atGap.EventID()], o.stateAt[gme.EventID()] = true, true
		state, err := a.HS.Rooms.CurrentState(ctx, alice, roomID)
		if err != nil {
			t.Fatal(err)
		}
		for _, ev := range state {
			if ev.Type == "m.room.member" && ev.StateKey != nil && *ev.StateKey == mallory {
				continue
			}
			o.stateIDs = append(o.stateIDs, ev.EventID)
		}
		o.stateIDs = append(o.stateIDs, e.EventID())
		o.authIDs = append(append([]string{}, o.stateIDs...), chain[1].EventID(), bID, chain[3].EventID(), chain[4].EventID())
		o.mu.Unlock()

		errText, present := o.send(tip)
		if !present || errText != "" {
			t.Errorf("the PDU after the gap: present %v, error %q; want handled (rejected) without an error", present, errText)
		}
		o.mu.Lock()
		if !slices.Contains(o.eventAsked, bID) {
			t.Errorf("A never asked for B")
		}
		o.mu.Unlock()
		if hasEvent(a, alice, tip.EventID()) {
			t.Errorf("the PDU whose auth chain is broken reached alice")
		}
		for _, p := range chain[3:] {
			if ev, _, err := a.HS.Rooms.FederationEvent(ctx, p.EventID()); err == nil && ev != nil {
				if m, _ := a.HS.Rooms.CurrentStateEvent(ctx, alice, roomID, "m.room.member", mallory); m != nil && m.EventID == p.EventID() {
					t.Errorf("mallory's member event is %s, which B should authorise", p.EventID())
				}
			}
		}
		m, err := a.HS.Rooms.CurrentStateEvent(ctx, alice, roomID, "m.room.member", mallory)
		if err != nil || m.EventID != join.EventID() {
			t.Fatalf("mallory's member event on A: %+v, %v; want the join %s", m, err, join.EventID())
		}
	})
}
