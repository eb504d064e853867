package federationapi_test

import (
	"context"
	"encoding/json"
	"maps"
	"net/http"
	"slices"
	"strings"
	"testing"

	"github.com/matrix-org/gomatrixserverlib"

	"github.com/myelin-chat/myelin/roomserver"
)

// TestStateReadsForServers checks the answers (not only the refusals,
// which TestNonMemberServerGetsNothing drives) of GET /state, /state_ids
// and /event_auth to a server in the room: the state before the given
// event — not the current state, which a later topic change made
// different — with the auth chain of those state events, closed under
// auth_events and the same in both forms; /event_auth the event's auth
// chain without the event itself. At an event history visibility hides
// from the server (joined history, before its users joined) /state and
// /state_ids are 403 M_FORBIDDEN. A missing event_id is 400
// M_MISSING_PARAM.
// Spec: server-server-api, "GET /_matrix/federation/v1/state/{roomId}",
// ".../state_ids/{roomId}", ".../event_auth/{roomId}/{eventId}".
func TestStateReadsForServers(t *testing.T) {
	t.Parallel()
	forEachEngine(t, func(t *testing.T, n *network) {
		ctx := context.Background()
		a, b, roomID := joinedPair(t, n)
		alice := a.user("alice")
		setTopic := func(topic string) string {
			empty := ""
			resp, err := a.HS.Rooms.SendEvent(ctx, roomserver.SendEventRequest{RoomID: roomID, Sender: alice,
				Type: "m.room.topic", StateKey: &empty, Content: mustJSON(map[string]string{"topic": topic})})
			if err != nil {
				t.Fatal(err)
			}
			return resp.EventID
		}
		firstTopic := setTopic("first")
		msg := sendText(t, a, roomID, alice, "at this point")
		current, err := a.HS.Rooms.CurrentState(ctx, alice, roomID)
		if err != nil {
			t.Fatal(err)
		}
		want := map[string]bool{}
		for _, e := range current {
			want[e.EventID] = true
		}
		secondTopic := setTopic("second")
		if !want[firstTopic] || want[secondTopic] {
			t.Fatalf("test setup: the state at the message should hold the first topic only")
		}

		version, err := a.HS.Rooms.RoomVersion(ctx, roomID)
		if err != nil {
			t.Fatal(err)
		}
		impl := gomatrixserverlib.MustGetRoomVersion(gomatrixserverlib.RoomVersion(version))
		parse := func(where string, raws []json.RawMessage) map[string]gomatrixserverlib.PDU {
			t.Helper()
			out := map[string]gomatrixserverlib.PDU{}
			for _, raw := range raws {
				pdu, err := impl.NewEventFromUntrustedJSON(raw)
				if err != nil {
					t.Fatalf("%s: a PDU does not parse: %v", where, err)
				}
				if strings.HasSuffix(string(pdu.SenderID()), ":"+a.Name) {
					if err := gomatrixserverlib.VerifyJSON(a.Name, gomatrixserverlib.KeyID(a.HS.Key.ID), a.HS.Key.Public(), mustRedact(t, impl, raw)); err != nil {
						t.Errorf("%s: %s does not verify: %v", where, pdu.EventID(), err)
					}
				}
				out[pdu.EventID()] = pdu
			}
			return out
		}
		// closed checks that chain holds every auth event of the given
		// events and of its own events.
		closed := func(where string, of []gomatrixserverlib.PDU, chain map[string]gomatrixserverlib.PDU) {
			t.Helper()
			for _, e := range append(of, slices.Collect(maps.Values(chain))...) {
				for _, id := range e.AuthEventIDs() {
					if chain[id] == nil {
						t.Errorf("%s: auth event %s of %s (%s) is not in the auth chain", where, id, e.EventID(), e.Type())
					}
				}
			}
		}
		sortedKeys := func(m map[string]bool) []string { return slices.Sorted(maps.Keys(m)) }

		get := func(uri string, into any) {
			t.Helper()
			status, body := n.request(a, b.Name, b.HS.Key, a.Name, http.MethodGet, uri, nil)
			if status != http.StatusOK || json.Unmarshal(body, into) != nil {
				t.Fatalf("GET %s: %d %s", uri, status, body)
			}
		}
		var ids struct {
			PDUIDs       []string `json:"pdu_ids"`
			AuthChainIDs []string `json:"auth_chain_ids"`
		}
		get("/_matrix/federation/v1/state_ids/"+pathEscape(roomID)+"?event_id="+pathEscape(msg), &ids)
		gotIDs := map[string]bool{}
		for _, id := range ids.PDUIDs {
			gotIDs[id] = true
		}
		if !maps.Equal(gotIDs, want) || len(ids.PDUIDs) != len(want) {
			t.Errorf("state_ids at the message: %v\nwant %v", ids.PDUIDs, sortedKeys(want))
		}

		var full struct {
			PDUs      []json.RawMessage `json:"pdus"`
			AuthChain []json.RawMessage `json:"auth_chain"`
		}
		get("/_matrix/federation/v1/state/"+pathEscape(roomID)+"?event_id="+pathEscape(msg), &full)
		state, chain := parse("state", full.PDUs), parse("state auth_chain", full.AuthChain)
		got := map[string]bool{}
		for id := range state {
			got[id] = true
		}
		if !maps.Equal(got, want) {
			t.Errorf("state at the message: %v\nwant %v", sortedKeys(got), sortedKeys(want))
		}
		if topic := state[firstTopic]; topic == nil || !strings.Contains(string(topic.Content()), "first") {
			t.Errorf("state at the message lacks the first topic's content")
		}
		closed("state", slices.Collect(maps.Values(state)), chain)
		chainIDs := map[string]bool{}
		for id := range chain {
			chainIDs[id] = true
		}
		gotChainIDs := map[string]bool{}
		for _, id := range ids.AuthChainIDs {
			gotChainIDs[id] = true
		}
		if !maps.Equal(chainIDs, gotChainIDs) {
			t.Errorf("auth_chain of /state %v differs from auth_chain_ids of /state_ids %v", sortedKeys(chainIDs), sortedKeys(gotChainIDs))
		}

		var auth struct {
			AuthChain []json.RawMessage `json:"auth_chain"`
		}
		get("/_matrix/federation/v1/event_auth/"+pathEscape(roomID)+"/"+pathEscape(msg), &auth)
		msgChain := parse("event_auth", auth.AuthChain)
		if msgChain[msg] != nil {
			t.Errorf("event_auth of the message holds the message itself")
		}
		ev, _, err := a.HS.Rooms.FederationEvent(ctx, msg)
		if err != nil {
			t.Fatal(err)
		}
		msgPDU := parse("the message", []json.RawMessage{ev.JSON})[msg]
		if len(msgPDU.AuthEventIDs()) == 0 {
			t.Fatal("test setup: the message has no auth events")
		}
		closed("event_auth", []gomatrixserverlib.PDU{msgPDU}, msgChain)
		for id, e := range msgChain {
			if e.Type() == "m.room.message" || id == secondTopic || id == firstTopic {
				t.Errorf("event_auth of the message holds %s (%s), not an auth event of it", id, e.Type())
			}
		}

		// At an event history visibility hides from the asking server
		// (joined history, from before its users joined): 403, no state.
		hidden := publicRoom(t, a, alice)
		if _, err := a.HS.Rooms.SendEvent(ctx, roomserver.SendEventRequest{RoomID: hidden, Sender: alice,
			Type: "m.room.history_visibility", StateKey: ptr(""), Content: mustJSON(map[string]string{"history_visibility": "joined"})}); err != nil {
			t.Fatal(err)
		}
		secret := sendText(t, a, hidden, alice, "before bob")
		if _, err := b.HS.Federation.JoinRemote(ctx, hidden, b.user("bob"), []string{a.Name}); err != nil {
			t.Fatal(err)
		}
		for _, path := range []string{"state", "state_ids"} {
			status, body := n.request(a, b.Name, b.HS.Key, a.Name, http.MethodGet,
				"/_matrix/federation/v1/"+path+"/"+pathEscape(hidden)+"?event_id="+pathEscape(secret), nil)
			if status != http.StatusForbidden || !strings.Contains(string(body), "M_FORBIDDEN") {
				t.Errorf("%s at an event hidden from B: %d %s, want 403 M_FORBIDDEN", path, status, body)
			}
		}

		// event_id is required.
		status, body := n.request(a, b.Name, b.HS.Key, a.Name, http.MethodGet, "/_matrix/federation/v1/state_ids/"+pathEscape(roomID), nil)
		if status != http.StatusBadRequest || !strings.Contains(string(body), "M_MISSING_PARAM") {
			t.Errorf("state_ids without event_id: %d %s, want 400 M_MISSING_PARAM", status, body)
		}
	})
}
