package federationapi_test

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/myelin-chat/myelin/internal/signing"
)

// buildWithAuthAndPrev builds a room version 12 event with the given
// auth and prev events (the create event implied by the room ID).
func buildWithAuthAndPrev(t *testing.T, roomID, sender, eventType string, stateKey *string, content any, auth, prev []string, depth int64, signerName string, key *signing.Key) gomatrixserverlib.PDU {
	t.Helper()
	impl := gomatrixserverlib.MustGetRoomVersion("12")
	raw, _ := json.Marshal(content)
	proto := &gomatrixserverlib.ProtoEvent{SenderID: sender, RoomID: roomID, Type: eventType, StateKey: stateKey,
		Content: raw, PrevEvents: prev, AuthEvents: auth, Depth: depth, Version: impl}
	pdu, err := impl.NewEventBuilderFromProtoEvent(proto).Build(time.Now(), spec.ServerName(signerName),
		gomatrixserverlib.KeyID(key.ID), key.PrivateKey)
	if err != nil {
		t.Fatal(err)
	}
	return pdu
}

// TestGapPrevEventsBeforeAuthEvents is Complement's
// CanReceiveEventsWithHalfMissingGrandparentsDuringPartialStateJoin
// without the partial state: a PDU C arrives whose parent B
// (get_missing_events gives only B) has a known parent M and an unknown
// one A; C's sender joined inside the gap, so C's auth events are
// unknown too. The server asks for the state at A (the missing prev
// event of B, never at B, which the origin need not serve), which
// brings the sender's join, and never needs /event_auth for C: prev
// events are connected first (server-server-api, "Checks performed on
// receipt of a PDU"). C is then in the timeline.
func TestGapPrevEventsBeforeAuthEvents(t *testing.T) {
	t.Parallel()
	forEachEngine(t, func(t *testing.T, n *network) {
		a := n.start()
		ctx := context.Background()
		alice := a.user("alice")
		roomID := publicRoom(t, a, alice)

		var (
			mu       sync.Mutex
			byID     = map[string]gomatrixserverlib.PDU{}
			asked    = map[string][]string{}
			missingB gomatrixserverlib.PDU
			stateA   []string
			chainA   []string
			eventA   string
			eventC   string
		)
		name, key := n.fakeServer(t, func(_ string, mux *http.ServeMux) {
			mux.HandleFunc("/_matrix/federation/v1/get_missing_events/", func(w http.ResponseWriter, r *http.Request) {
				mu.Lock()
				defer mu.Unlock()
				var body struct {
					Latest []string `json:"latest_events"`
				}
				_ = json.NewDecoder(r.Body).Decode(&body)
				asked["get_missing_events"] = append(asked["get_missing_events"], strings.Join(body.Latest, ","))
				if len(body.Latest) != 1 || body.Latest[0] != eventC {
					http.NotFound(w, r)
					return
				}
				_, _ = w.Write(mustJSON(map[string]any{"events": []json.RawMessage{missingB.JSON()}}))
			})
			mux.HandleFunc("/_matrix/federation/v1/state_ids/", func(w http.ResponseWriter, r *http.Request) {
				mu.Lock()
				defer mu.Unlock()
				at := r.URL.Query().Get("event_id")
				asked["state_ids"] = append(asked["state_ids"], at)
				if at != eventA {
					http.NotFound(w, r)
					return
				}
				_, _ = w.Write(mustJSON(map[string]any{"pdu_ids": stateA, "auth_chain_ids": chainA}))
			})
			mux.HandleFunc("/_matrix/federation/v1/event_auth/", func(w http.ResponseWriter, r *http.Request) {
				mu.Lock()
				defer mu.Unlock()
				asked["event_auth"] = append(asked["event_auth"], r.URL.Path)
				http.NotFound(w, r)
			})
			mux.HandleFunc("/_matrix/federation/v1/event/", func(w http.ResponseWriter, r *http.Request) {
				mu.Lock()
				defer mu.Unlock()
				id, _ := unescape(strings.TrimPrefix(r.URL.EscapedPath(), "/_matrix/federation/v1/event/"))
				e, ok := byID[id]
				if !ok {
					http.NotFound(w, r)
					return
				}
				_, _ = w.Write(mustJSON(map[string]any{"origin": "x", "origin_server_ts": time.Now().UnixMilli(),
					"pdus": []json.RawMessage{e.JSON()}}))
			})
		})
		send := func(txnID string, pdu gomatrixserverlib.PDU) string {
			t.Helper()
			status, body := n.request(a, name, key, a.Name, http.MethodPut, "/_matrix/federation/v1/send/"+txnID,
				map[string]any{"origin": name, "origin_server_ts": time.Now().UnixMilli(), "pdus": []json.RawMessage{pdu.JSON()}})
			var resp sendResponse
			if status != http.StatusOK || json.Unmarshal(body, &resp) != nil {
				t.Fatalf("send: %d %s", status, body)
			}
			return resp.PDUs[pdu.EventID()].Error
		}

		// mallory joins (A sees it); derek joins inside the gap.
		mallory, derek := "@mallory:"+name, "@derek:"+name
		joinM := buildPDU(t, a, roomID, mallory, "m.room.member", &mallory, map[string]string{"membership": "join"}, name, key, nil)
		if e := send("m", joinM); e != "" {
			t.Fatalf("mallory's join: %s", e)
		}
		pl, err := a.HS.Rooms.RoomStateEvent(ctx, roomID, "m.room.power_levels", "")
		if err != nil {
			t.Fatal(err)
		}
		jr, err := a.HS.Rooms.RoomStateEvent(ctx, roomID, "m.room.join_rules", "")
		if err != nil {
			t.Fatal(err)
		}
		state, err := a.HS.Rooms.CurrentState(ctx, alice, roomID)
		if err != nil {
			t.Fatal(err)
		}
		d := joinM.Depth()
		joinD := buildWithAuthAndPrev(t, roomID, derek, "m.room.member", &derek, map[string]string{"membership": "join"},
			[]string{pl.EventID, jr.EventID}, []string{joinM.EventID()}, d+1, name, key)
		msg := func(body string, prev []string, depth int64) gomatrixserverlib.PDU {
			return buildWithAuthAndPrev(t, roomID, derek, "m.room.message", nil, map[string]string{"msgtype": "m.text", "body": body},
				[]string{pl.EventID, joinD.EventID()}, prev, depth, name, key)
		}
		//         +-------------+
		//         v              \
		// M <-- joinD <-- A <-- B <-- C   (M: mallory's join, known to A)
		evA := msg("A", []string{joinD.EventID()}, d+2)
		evB := msg("B", []string{evA.EventID(), joinM.EventID()}, d+3)
		evC := msg("C", []string{evB.EventID()}, d+4)
		mu.Lock()
		for _, e := range []gomatrixserverlib.PDU{joinD, evA, evB, evC} {
			byID[e.EventID()] = e
		}
		missingB, eventA, eventC = evB, evA.EventID(), evC.EventID()
		// The state at (before) A: A's current state and derek's join.
		for _, e := range state {
			stateA = append(stateA, e.EventID)
			chainA = append(chainA, e.EventID)
		}
		stateA = append(stateA, joinD.EventID())
		mu.Unlock()

		if e := send("c", evC); e != "" {
			t.Fatalf("C: %s", e)
		}
		mu.Lock()
		got := map[string][]string{}
		for k, v := range asked {
			got[k] = append([]string(nil), v...)
		}
		mu.Unlock()
		if len(got["event_auth"]) != 0 {
			t.Errorf("/event_auth was asked (%v): auth events fetched before the prev events were connected", got["event_auth"])
		}
		if len(got["state_ids"]) != 1 || got["state_ids"][0] != evA.EventID() {
			t.Errorf("state_ids asked at %v, want only at A %s", got["state_ids"], evA.EventID())
		}
		for _, e := range []gomatrixserverlib.PDU{evB, evC} {
			if !hasEvent(a, alice, e.EventID()) {
				t.Errorf("alice cannot see %s", e.Content())
			}
		}
		if m, _ := a.HS.Rooms.Membership(ctx, roomID, derek); m != "join" {
			t.Errorf("derek's membership on A is %q, want join (from the state at A)", m)
		}
	})
}
