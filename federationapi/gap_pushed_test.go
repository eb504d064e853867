package federationapi_test

import (
	"context"
	"encoding/json"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

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
	forEachEngine(t, func(t *testing.T, n *network) {
		a := n.start()
		ctx := context.Background()
		alice := a.user("alice")
		roomID := publicRoom(t, a, alice)

		var (
			mu       sync.Mutex
			byID     = map[string]gomatrixserverlib.PDU{}
			missing  []json.RawMessage // what get_missing_events answers
			stateAt  string
			stateIDs []string
			asked    = map[string]int{}
		)
		name, key := n.fakeServer(t, func(name string, mux *http.ServeMux) {
			mux.HandleFunc("/_matrix/federation/v1/get_missing_events/", func(w http.ResponseWriter, r *http.Request) {
				mu.Lock()
				defer mu.Unlock()
				asked["get_missing_events"]++
				_, _ = w.Write(mustJSON(map[string]any{"events": append([]json.RawMessage{}, missing...)}))
			})
			mux.HandleFunc("/_matrix/federation/v1/state_ids/", func(w http.ResponseWriter, r *http.Request) {
				mu.Lock()
				defer mu.Unlock()
				asked["state_ids"]++
				if r.URL.Query().Get("event_id") != stateAt {
					http.NotFound(w, r)
					return
				}
				_, _ = w.Write(mustJSON(map[string]any{"pdu_ids": stateIDs, "auth_chain_ids": stateIDs}))
			})
			mux.HandleFunc("/_matrix/federation/v1/event/", func(w http.ResponseWriter, r *http.Request) {
				mu.Lock()
				defer mu.Unlock()
				asked["event"]++
				id, _ := unescape(strings.TrimPrefix(r.URL.EscapedPath(), "/_matrix/federation/v1/event/"))
				e, ok := byID[id]
				if !ok {
					http.NotFound(w, r)
					return
				}
				_, _ = w.Write(mustJSON(map[string]any{"origin": name, "origin_server_ts": time.Now().UnixMilli(),
					"pdus": []json.RawMessage{e.JSON()}}))
			})
		})
		mallory := "@mallory:" + name
		txn := 0
		send := func(p gomatrixserverlib.PDU) (string, bool) {
			t.Helper()
			txn++
			status, body := n.request(a, name, key, a.Name, http.MethodPut,
				"/_matrix/federation/v1/send/pushed"+string(rune('a'+txn)),
				map[string]any{"origin": name, "origin_server_ts": time.Now().UnixMilli(), "pdus": []json.RawMessage{p.JSON()}})
			if status != http.StatusOK {
				t.Fatalf("send: %d %s", status, body)
			}
			var resp sendResponse
			_ = json.Unmarshal(body, &resp)
			r, ok := resp.PDUs[p.EventID()]
			return r.Error, ok
		}
		after := func(prev gomatrixserverlib.PDU) func(*gomatrixserverlib.ProtoEvent) {
			return func(pe *gomatrixserverlib.ProtoEvent) {
				pe.PrevEvents, pe.Depth = []string{prev.EventID()}, prev.Depth()+1
			}
		}
		join := buildPDU(t, a, roomID, mallory, "m.room.member", &mallory, map[string]string{"membership": "join"}, name, key, nil)
		if e, _ := send(join); e != "" {
			t.Fatalf("mallory's join: %s", e)
		}
		// hidden renames mallory: a state change A would take from the
		// origin's state_ids if it trusted it.
		hidden := buildPDU(t, a, roomID, mallory, "m.room.member", &mallory,
			map[string]string{"membership": "join", "displayname": "Mallory unseen"}, name, key, after(join))
		tip := buildPDU(t, a, roomID, mallory, "m.room.message", nil, map[string]string{"body": "after the unseen"}, name, key, after(hidden))
		state, err := a.HS.Rooms.CurrentState(ctx, alice, roomID)
		if err != nil {
			t.Fatal(err)
		}
		// An invalid copy of hidden: a float in its content, which no
		// room version since 6 allows (as in the Complement test).
		var forged map[string]any
		_ = json.Unmarshal(hidden.JSON(), &forged)
		forged["content"] = map[string]any{"membership": "join", "displayname": "Mallory unseen", "bad_val": 1.1}
		mu.Lock()
		byID[hidden.EventID()] = hidden
		stateAt = hidden.EventID()
		for _, e := range state {
			stateIDs = append(stateIDs, e.EventID) // the state before hidden: mallory's join
		}
		mu.Unlock()
		before, err := a.HS.Rooms.Extremities(ctx, roomID)
		if err != nil {
			t.Fatal(err)
		}

		for _, answer := range [][]json.RawMessage{nil, {mustJSON(forged)}} {
			mu.Lock()
			missing = answer
			asked = map[string]int{}
			mu.Unlock()
			errText, present := send(tip)
			if !present || errText == "" {
				t.Errorf("get_missing_events answered %d events: the PDU's result: present %v, error %q; want an error", len(answer), present, errText)
			}
			mu.Lock()
			if asked["get_missing_events"] != 1 || asked["state_ids"] != 0 || asked["event"] != 0 {
				t.Errorf("get_missing_events answered %d events: requests made %v; want one get_missing_events and nothing else", len(answer), asked)
			}
			mu.Unlock()
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
		next := buildPDU(t, a, roomID, mallory, "m.room.message", nil, map[string]string{"body": "and now"}, name, key, after(tip))
		mu.Lock()
		missing = []json.RawMessage{hidden.JSON(), tip.JSON()}
		asked = map[string]int{}
		mu.Unlock()
		if e, present := send(next); !present || e != "" {
			t.Fatalf("the PDU after a divulged gap: present %v, error %q", present, e)
		}
		mu.Lock()
		if asked["state_ids"] != 0 {
			t.Errorf("state_ids asked for a gap get_missing_events closed: %v", asked)
		}
		mu.Unlock()
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
