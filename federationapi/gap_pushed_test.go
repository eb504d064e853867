package federationapi_test

import (
	"context"
	"encoding/json"
	"slices"
	"testing"

	"github.com/matrix-org/gomatrixserverlib"
)

// TestPushedPDUWithUnfetchablePrevEventsRefused: mallory's server pushes
// A a PDU (tip) whose prev event (hidden) A lacks, and its
// get_missing_events answer does not reach hidden (no events, then only
// an invalid event: a float in its content). The origin would serve the
// state at hidden (state_ids) and hidden itself, but A never asks: taking
// the pusher's word for that state would make it the room's state. The
// PDU is refused with an error in its /send result, nothing of it is
// stored and A's forward extremities do not move. When the origin later
// answers get_missing_events with hidden, the next PDU, and the refused
// one with it, are accepted: the room still converges.
// Spec: server-server-api, "PUT /_matrix/federation/v1/send/{txnId}"
// (PDU Processing Result), "Checks performed on receipt of a PDU";
// Complement TestOutboundFederationIgnoresMissingEventWithBadJSONForRoomVersion6.
func TestPushedPDUWithUnfetchablePrevEventsRefused(t *testing.T) {
	t.Parallel()
	forEachEngine(t, func(t *testing.T, n *network) {
		o := newGapOrigin(t, n)
		a, alice, roomID, mallory, join := o.a, o.alice, o.roomID, o.mallory, o.join
		ctx := context.Background()
		// hidden renames mallory: a state change A would take from the
		// origin's state_ids if it trusted it.
		hidden := o.build("m.room.member", &mallory,
			map[string]string{"membership": "join", "displayname": "Mallory unseen"}, childOf(join))
		tip := o.build("m.room.message", nil, map[string]string{"body": "after the unseen"}, childOf(hidden))
		state, err := a.HS.Rooms.CurrentState(ctx, alice, roomID)
		if err != nil {
			t.Fatal(err)
		}
		// An invalid copy of hidden: a float in its content, which no
		// room version since 6 allows (as in the Complement test).
		var forged map[string]any
		_ = json.Unmarshal(hidden.JSON(), &forged)
		forged["content"] = map[string]any{"membership": "join", "displayname": "Mallory unseen", "bad_val": 1.1}
		o.mu.Lock()
		o.served[hidden.EventID()] = hidden
		o.stateAt[hidden.EventID()] = true
		for _, e := range state {
			o.stateIDs = append(o.stateIDs, e.EventID) // the state before hidden: mallory's join
		}
		o.authIDs = o.stateIDs
		o.mu.Unlock()
		before, err := a.HS.Rooms.Extremities(ctx, roomID)
		if err != nil {
			t.Fatal(err)
		}

		for _, answer := range [][]json.RawMessage{nil, {mustJSON(forged)}} {
			o.mu.Lock()
			o.missing = answer
			o.asked = map[string]int{}
			o.mu.Unlock()
			errText, present := o.send(tip)
			if !present || errText == "" {
				t.Errorf("get_missing_events answered %d events: the PDU's result: present %v, error %q; want an error", len(answer), present, errText)
			}
			o.mu.Lock()
			if asked := o.asked; asked["get_missing_events"] != 1 || asked["state_ids"] != 0 || asked["event"] != 0 {
				t.Errorf("get_missing_events answered %d events: requests made %v; want one get_missing_events and nothing else", len(answer), asked)
			}
			o.mu.Unlock()
			if unknown, err := a.HS.Rooms.UnknownEvents(ctx, []string{tip.EventID(), hidden.EventID()}); err != nil || len(unknown) != 2 {
				t.Errorf("unknown after the refusal: %v, %v; want both the PDU and its prev event", unknown, err)
			}
			if ext, err := a.HS.Rooms.Extremities(ctx, roomID); err != nil || !slices.Equal(ext, before) {
				t.Errorf("forward extremities %v, %v; want them unchanged: %v", ext, err, before)
			}
			if m, err := a.HS.Rooms.CurrentStateEvent(ctx, alice, roomID, "m.room.member", mallory); err != nil || m.EventID != join.EventID() {
				t.Errorf("mallory's member event: %+v, %v; want the join", m, err)
			}
		}

		// The origin now divulges what lies before: the next PDU brings
		// hidden and tip through get_missing_events, without state_ids.
		next := o.build("m.room.message", nil, map[string]string{"body": "and now"}, childOf(tip))
		o.mu.Lock()
		o.missing = []json.RawMessage{hidden.JSON(), tip.JSON()}
		o.asked = map[string]int{}
		o.mu.Unlock()
		if e, present := o.send(next); !present || e != "" {
			t.Fatalf("the PDU after a divulged gap: present %v, error %q", present, e)
		}
		o.mu.Lock()
		if o.asked["state_ids"] != 0 {
			t.Errorf("state_ids asked for a gap get_missing_events closed: %v", o.asked)
		}
		o.mu.Unlock()
		for _, p := range []gomatrixserverlib.PDU{hidden, tip, next} {
			if !hasEvent(a, alice, p.EventID()) {
				t.Errorf("alice cannot see %s", p.EventID())
			}
		}
		if m, err := a.HS.Rooms.CurrentStateEvent(ctx, alice, roomID, "m.room.member", mallory); err != nil || m.EventID != hidden.EventID() {
			t.Errorf("mallory's member event: %+v, %v; want the rename %s", m, err, hidden.EventID())
		}
	})
}
