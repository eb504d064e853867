package federationapi_test

import (
	"context"
	"encoding/json"
	"math"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/matrix-org/gomatrixserverlib"

	"github.com/myelin-chat/myelin/internal/signing"
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
	forEachEngine(t, func(t *testing.T, n *network) {
		a := n.start()
		ctx := context.Background()
		alice := a.user("alice")
		roomID := publicRoom(t, a, alice)

		var (
			mu       sync.Mutex
			byID     = map[string]gomatrixserverlib.PDU{}
			gap      []gomatrixserverlib.PDU // oldest first
			stateIDs []string                // state_ids at the gap events after the rename
			asked    = map[string]int{}
			stateAt  []string // the event_id of each state_ids request
		)
		var key *signing.Key
		var name string
		name, key = n.fakeServer(t, func(_ string, mux *http.ServeMux) {
			mux.HandleFunc("/_matrix/federation/v1/get_missing_events/", func(w http.ResponseWriter, r *http.Request) {
				mu.Lock()
				defer mu.Unlock()
				asked["get_missing_events"]++
				var body struct {
					Limit int `json:"limit"`
				}
				_ = json.NewDecoder(r.Body).Decode(&body)
				var out []json.RawMessage
				for _, e := range gap[max(len(gap)-body.Limit, 0):] {
					out = append(out, e.JSON())
				}
				_, _ = w.Write(mustJSON(map[string]any{"events": out}))
			})
			mux.HandleFunc("/_matrix/federation/v1/state_ids/", func(w http.ResponseWriter, r *http.Request) {
				mu.Lock()
				defer mu.Unlock()
				asked["state_ids"]++
				at := r.URL.Query().Get("event_id")
				stateAt = append(stateAt, at)
				if i := slices.IndexFunc(gap, func(e gomatrixserverlib.PDU) bool { return e.EventID() == at }); i < 5 {
					http.NotFound(w, r)
					return
				}
				_, _ = w.Write(mustJSON(map[string]any{"pdu_ids": stateIDs, "auth_chain_ids": stateIDs}))
			})
			mux.HandleFunc("/_matrix/federation/v1/event/", func(w http.ResponseWriter, r *http.Request) {
				mu.Lock()
				defer mu.Unlock()
				id, _ := unescape(strings.TrimPrefix(r.URL.EscapedPath(), "/_matrix/federation/v1/event/"))
				asked["event"]++
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
		send := func(pdus ...gomatrixserverlib.PDU) map[string]string {
			t.Helper()
			var raw []json.RawMessage
			for _, p := range pdus {
				raw = append(raw, p.JSON())
			}
			status, body := n.request(a, name, key, a.Name, http.MethodPut,
				"/_matrix/federation/v1/send/"+strings.ReplaceAll(pdus[0].EventID(), "$", "t"),
				map[string]any{"origin": name, "origin_server_ts": time.Now().UnixMilli(), "pdus": raw})
			if status != http.StatusOK {
				t.Fatalf("send: %d %s", status, body)
			}
			var resp sendResponse
			_ = json.Unmarshal(body, &resp)
			out := map[string]string{}
			for id, r := range resp.PDUs {
				out[id] = r.Error
			}
			return out
		}
		join := buildPDU(t, a, roomID, mallory, "m.room.member", &mallory, map[string]string{"membership": "join"}, name, key, nil)
		if res := send(join); res[join.EventID()] != "" {
			t.Fatalf("mallory's join: %s", res[join.EventID()])
		}

		// The gap: 40 events A never gets, a display name change among
		// them, then the PDU that reaches A.
		prev := join
		var rename gomatrixserverlib.PDU
		mu.Lock()
		for i := 0; i < 40; i++ {
			p := prev
			chain := func(pe *gomatrixserverlib.ProtoEvent) { pe.PrevEvents, pe.Depth = []string{p.EventID()}, p.Depth()+1 }
			if i == 5 {
				prev = buildPDU(t, a, roomID, mallory, "m.room.member", &mallory,
					map[string]string{"membership": "join", "displayname": "Mallory in the gap"}, name, key, chain)
				rename = prev
			} else {
				prev = buildPDU(t, a, roomID, mallory, "m.room.message", nil, map[string]any{"body": "unseen", "n": i}, name, key, chain)
			}
			gap = append(gap, prev)
			byID[prev.EventID()] = prev
		}
		state, err := a.HS.Rooms.CurrentState(ctx, alice, roomID)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range state {
			if e.Type == "m.room.member" && e.StateKey != nil && *e.StateKey == mallory {
				stateIDs = append(stateIDs, rename.EventID())
				continue
			}
			stateIDs = append(stateIDs, e.EventID)
		}
		last := prev
		mu.Unlock()
		tip := buildPDU(t, a, roomID, mallory, "m.room.message", nil, map[string]string{"body": "after the gap"}, name, key,
			func(pe *gomatrixserverlib.ProtoEvent) {
				pe.PrevEvents, pe.Depth = []string{last.EventID()}, last.Depth()+1
			})

		// A message here just before the PDU: a /sync batch holding it
		// and what closes the gap starts at the first event after the gap
		// and is limited (Complement's TestSyncTimelineGap).
		before := sendText(t, a, roomID, alice, "before the gap closes")
		beforeEv, err := a.HS.Rooms.Event(ctx, alice, before)
		if err != nil {
			t.Fatal(err)
		}

		if res := send(tip); res[tip.EventID()] != "" {
			t.Fatalf("the PDU after the gap: %s", res[tip.EventID()])
		}
		mu.Lock()
		if asked["get_missing_events"] == 0 || asked["state_ids"] == 0 || asked["event"] == 0 {
			t.Errorf("requests made: %v", asked)
		}
		// get_missing_events returned gap[20:]: the state asked for is
		// the state at gap[19], the prev event of the oldest of them.
		if want := []string{gap[len(gap)-21].EventID()}; !slices.Equal(stateAt, want) {
			t.Errorf("state_ids asked at %v; want %v (the prev event of the oldest returned event)", stateAt, want)
		}
		pulled := gap[len(gap)-20:]
		mu.Unlock()
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
	forEachEngine(t, func(t *testing.T, n *network) {
		a := n.start()
		ctx := context.Background()
		alice := a.user("alice")
		roomID := publicRoom(t, a, alice)

		var (
			mu       sync.Mutex
			served   = map[string]gomatrixserverlib.PDU{} // what /event answers
			gme      gomatrixserverlib.PDU
			atGap    gomatrixserverlib.PDU // the missing prev event of gme
			stateIDs []string
			chainIDs []string
			askedB   bool
			bID      string
		)
		name, key := n.fakeServer(t, func(name string, mux *http.ServeMux) {
			mux.HandleFunc("/_matrix/federation/v1/get_missing_events/", func(w http.ResponseWriter, r *http.Request) {
				mu.Lock()
				defer mu.Unlock()
				_, _ = w.Write(mustJSON(map[string]any{"events": []json.RawMessage{gme.JSON()}}))
			})
			mux.HandleFunc("/_matrix/federation/v1/state_ids/", func(w http.ResponseWriter, r *http.Request) {
				mu.Lock()
				defer mu.Unlock()
				// The state before gme and before atGap: both are messages
				// after E.
				if id := r.URL.Query().Get("event_id"); id != atGap.EventID() && id != gme.EventID() {
					http.NotFound(w, r)
					return
				}
				_, _ = w.Write(mustJSON(map[string]any{"pdu_ids": stateIDs, "auth_chain_ids": chainIDs}))
			})
			mux.HandleFunc("/_matrix/federation/v1/event/", func(w http.ResponseWriter, r *http.Request) {
				mu.Lock()
				defer mu.Unlock()
				id, _ := unescape(strings.TrimPrefix(r.URL.EscapedPath(), "/_matrix/federation/v1/event/"))
				askedB = askedB || id == bID
				e, ok := served[id]
				if !ok {
					http.NotFound(w, r)
					return
				}
				_, _ = w.Write(mustJSON(map[string]any{"origin": name, "origin_server_ts": time.Now().UnixMilli(),
					"pdus": []json.RawMessage{e.JSON()}}))
			})
		})
		mallory := "@mallory:" + name
		send := func(p gomatrixserverlib.PDU) (string, bool) {
			t.Helper()
			status, body := n.request(a, name, key, a.Name, http.MethodPut,
				"/_matrix/federation/v1/send/"+strings.ReplaceAll(p.EventID(), "$", "t"),
				map[string]any{"origin": name, "origin_server_ts": time.Now().UnixMilli(), "pdus": []json.RawMessage{p.JSON()}})
			if status != http.StatusOK {
				t.Fatalf("send: %d %s", status, body)
			}
			var resp sendResponse
			_ = json.Unmarshal(body, &resp)
			r, ok := resp.PDUs[p.EventID()]
			return r.Error, ok
		}
		join := buildPDU(t, a, roomID, mallory, "m.room.member", &mallory, map[string]string{"membership": "join"}, name, key, nil)
		if e, _ := send(join); e != "" {
			t.Fatalf("mallory's join: %s", e)
		}
		// after builds on prev, with member (mallory's member event) in
		// place of the join among its auth events.
		after := func(prev gomatrixserverlib.PDU, member string) func(*gomatrixserverlib.ProtoEvent) {
			return func(pe *gomatrixserverlib.ProtoEvent) {
				pe.PrevEvents, pe.Depth = []string{prev.EventID()}, prev.Depth()+1
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
		mu.Lock()
		chain := []gomatrixserverlib.PDU{join}
		for _, dn := range []string{"A", "B", "C", "D", "E"} {
			last := chain[len(chain)-1]
			chain = append(chain, buildPDU(t, a, roomID, mallory, "m.room.member", &mallory,
				map[string]string{"membership": "join", "displayname": dn}, name, key, after(last, last.EventID())))
		}
		e := chain[5]
		bID = chain[2].EventID()
		atGap = buildPDU(t, a, roomID, mallory, "m.room.message", nil, map[string]string{"body": "for state_ids"}, name, key, after(e, e.EventID()))
		gme = buildPDU(t, a, roomID, mallory, "m.room.message", nil, map[string]string{"body": "for get_missing_events"}, name, key, after(atGap, e.EventID()))
		tip := buildPDU(t, a, roomID, mallory, "m.room.message", nil, map[string]string{"body": "for send"}, name, key, after(gme, e.EventID()))
		for _, p := range []gomatrixserverlib.PDU{chain[1], chain[3], chain[4], e, atGap, gme, tip} {
			served[p.EventID()] = p // not B
		}
		state, err := a.HS.Rooms.CurrentState(ctx, alice, roomID)
		if err != nil {
			t.Fatal(err)
		}
		for _, ev := range state {
			if ev.Type == "m.room.member" && ev.StateKey != nil && *ev.StateKey == mallory {
				continue
			}
			stateIDs = append(stateIDs, ev.EventID)
		}
		stateIDs = append(stateIDs, e.EventID())
		chainIDs = append(append([]string{}, stateIDs...), chain[1].EventID(), bID, chain[3].EventID(), chain[4].EventID())
		mu.Unlock()

		errText, present := send(tip)
		if !present || errText != "" {
			t.Errorf("the PDU after the gap: present %v, error %q; want handled (rejected) without an error", present, errText)
		}
		mu.Lock()
		if !askedB {
			t.Errorf("A never asked for B")
		}
		mu.Unlock()
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
