package federationapi_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/matrix-org/gomatrixserverlib"
	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
)

// MSC2836 threading across two Myelin servers.
// Spec: MSC2836, "Querying relationships over federation" and
// "Exploring dense threads".

// threadReply sends a message replying to parent ("" for none).
func threadReply(t *testing.T, u *syncer, roomID id.RoomID, body string, parent id.EventID) id.EventID {
	t.Helper()
	content := map[string]any{"msgtype": "m.text", "body": body}
	if parent != "" {
		content["m.relationship"] = map[string]any{"rel_type": "m.reference", "event_id": parent}
	}
	resp, err := u.cli.SendMessageEvent(context.Background(), roomID, event.EventMessage, content)
	if err != nil {
		t.Fatalf("sending %s: %v", body, err)
	}
	time.Sleep(3 * time.Millisecond) // distinct origin_server_ts
	return resp.EventID
}

// clientWalk is POST /_matrix/client/unstable/event_relationships on s
// as u; it returns the status and body.
func clientWalk(t *testing.T, s *fedServer, u *syncer, body any) (int, map[string]any) {
	t.Helper()
	raw, _ := json.Marshal(body)
	req, err := http.NewRequest(http.MethodPost, "https://"+s.Name+"/_matrix/client/unstable/event_relationships", bytes.NewReader(raw))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+u.cli.AccessToken)
	resp, err := s.n.httpClient().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	out := map[string]any{}
	if err := json.Unmarshal(data, &out); err != nil {
		t.Fatalf("event_relationships answered %d %s", resp.StatusCode, data)
	}
	return resp.StatusCode, out
}

// walkIDs returns the event IDs of a walk's answer, in order.
func walkIDs(t *testing.T, status int, body map[string]any) []id.EventID {
	t.Helper()
	if status != 200 {
		t.Fatalf("event_relationships: %d %v", status, body)
	}
	var out []id.EventID
	for _, e := range body["events"].([]any) {
		out = append(out, id.EventID(e.(map[string]any)["event_id"].(string)))
	}
	return out
}

func hashOf(ids ...id.EventID) string {
	s := make([]string, len(ids))
	for i, e := range ids {
		s[i] = string(e)
	}
	slices.Sort(s)
	h := sha256.Sum256([]byte(strings.Join(s, "")))
	return base64.RawStdEncoding.EncodeToString(h[:])
}

// checkChildren checks one returned event's unsigned children figures.
func checkChildren(t *testing.T, what string, ev any, count float64, children ...id.EventID) {
	t.Helper()
	unsigned, _ := ev.(map[string]any)["unsigned"].(map[string]any)
	got, _ := unsigned["children"].(map[string]any)
	if got["m.reference"] != count || unsigned["children_hash"] != hashOf(children...) {
		t.Fatalf("%s: unsigned %v, want m.reference %v and the hash of %v", what, unsigned, count, children)
	}
}

// TestFederatedEventRelationships: bob on B joins alice's room on A
// after the thread
//
//	A1 ── B1 ─┬─ C1
//	          └─ D1
//
// was written. B has none of it; a walk from D1 with the room as a hint
// asks A (federated /event_relationships), stores D1 and B1, and shows
// B1 with the two children A reported though B holds one. A walk from B1
// then sees children it lacks, asks A again and gets the rest.
// Complement: TestEventRelationships.
func TestFederatedEventRelationships(t *testing.T) {
	t.Parallel()
	forEachEngine(t, func(t *testing.T, n *network) {
		a, b := n.start(), n.start()
		ctx := context.Background()
		alice, bob := a.register("alice"), b.register("bob")
		roomID := alice.publicAliasedRoom("thread")
		a1 := threadReply(t, alice, roomID, "A1", "")
		b1 := threadReply(t, alice, roomID, "B1", a1)
		c1 := threadReply(t, alice, roomID, "C1", b1)
		d1 := threadReply(t, alice, roomID, "D1", b1)
		if _, err := bob.cli.JoinRoom(ctx, "#thread:"+a.Name, nil); err != nil {
			t.Fatalf("bob joining: %v", err)
		}
		if unknown, _ := b.HS.Rooms.UnknownEvents(ctx, []string{string(d1)}); len(unknown) != 1 {
			t.Fatalf("B already holds D1; the test needs it missing")
		}

		st, body := clientWalk(t, b, bob, map[string]any{"event_id": d1})
		if st != 404 || body["errcode"] != "M_NOT_FOUND" {
			t.Fatalf("unknown event without a room hint: %d %v", st, body)
		}
		st, body = clientWalk(t, b, bob, map[string]any{"event_id": d1, "room_id": roomID, "include_parent": true})
		if got := walkIDs(t, st, body); !slices.Equal(got, []id.EventID{d1, b1}) {
			t.Fatalf("walk from D1 on B: %v, want [D1 B1]", got)
		}
		if body["limited"] != false {
			t.Fatalf("walk from D1: limited %v", body["limited"])
		}
		checkChildren(t, "B1 as A reported it", body["events"].([]any)[1], 2, c1, d1)

		st, body = clientWalk(t, b, bob, map[string]any{"event_id": b1, "room_id": roomID, "include_parent": true, "recent_first": false})
		if got := walkIDs(t, st, body); !slices.Equal(got, []id.EventID{b1, a1, c1, d1}) {
			t.Fatalf("walk from B1 on B: %v, want [B1 A1 C1 D1]", got)
		}
		evs := body["events"].([]any)
		checkChildren(t, "B1", evs[0], 2, c1, d1)
		checkChildren(t, "A1", evs[1], 1, b1)
		for _, ev := range evs {
			// Fetched events are outliers on B: bob's membership at them
			// is not known there, so unsigned.membership is left out.
			if unsigned, _ := ev.(map[string]any)["unsigned"].(map[string]any); unsigned["membership"] != nil {
				t.Fatalf("a fetched event carries unsigned.membership: %v", ev)
			}
		}
		// The fetched events are outliers on B: they never reach bob's
		// timeline through /sync, but the walk shows them.
		if !hasEventStored(t, b, string(c1)) {
			t.Fatalf("C1 was not stored on B")
		}
	})
}

func hasEventStored(t *testing.T, s *fedServer, eventID string) bool {
	t.Helper()
	unknown, err := s.HS.Rooms.UnknownEvents(context.Background(), []string{eventID})
	if err != nil {
		t.Fatal(err)
	}
	return len(unknown) == 0
}

// TestEventRelationshipsForServers: the federation endpoint answers a
// server in the room with the events its users may see, their auth
// chain and unsigned children; a server not in the room is refused, and
// under joined history a server whose users joined later does not get
// the events from before.
func TestEventRelationshipsForServers(t *testing.T) {
	t.Parallel()
	forEachEngine(t, func(t *testing.T, n *network) {
		a, b, c := n.start(), n.start(), n.start()
		ctx := context.Background()
		alice, bob := a.register("alice"), b.register("bob")
		created, err := alice.cli.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "public_chat", RoomAliasName: "joined",
			InitialState: []*event.Event{{Type: event.StateHistoryVisibility, StateKey: new(string),
				Content: event.Content{Raw: map[string]any{"history_visibility": "joined"}}}}})
		if err != nil {
			t.Fatal(err)
		}
		roomID := created.RoomID
		early := threadReply(t, alice, roomID, "before bob", "")
		if _, err := bob.cli.JoinRoom(ctx, "#joined:"+a.Name, nil); err != nil {
			t.Fatalf("bob joining: %v", err)
		}
		late := threadReply(t, alice, roomID, "after bob", early)
		leaf := threadReply(t, alice, roomID, "leaf", late)

		const path = "/_matrix/federation/unstable/event_relationships"
		status, raw := n.request(a, b.Name, b.HS.Key, a.Name, http.MethodPost, path, map[string]any{"event_id": late, "include_parent": true})
		if status != 200 {
			t.Fatalf("B walking from a visible event: %d %s", status, raw)
		}
		var res struct {
			Events    []json.RawMessage `json:"events"`
			AuthChain []json.RawMessage `json:"auth_chain"`
			Limited   *bool             `json:"limited"`
		}
		if err := json.Unmarshal(raw, &res); err != nil {
			t.Fatal(err)
		}
		var got []id.EventID
		for _, e := range res.Events {
			var ev struct {
				EventID  id.EventID     `json:"event_id"`
				Unsigned map[string]any `json:"unsigned"`
			}
			_ = json.Unmarshal(e, &ev)
			if ev.EventID == "" { // room versions 3+ carry no event_id: hash the event
				ev.EventID = eventIDOf(t, a, e)
			}
			got = append(got, ev.EventID)
			if ev.EventID == late {
				checkChildren(t, "the visible event", map[string]any{"unsigned": ev.Unsigned}, 1, leaf)
			}
		}
		if !slices.Equal(got, []id.EventID{late, leaf}) {
			t.Fatalf("B's walk: %v, want [late leaf] (the parent is from before B joined)", got)
		}
		if len(res.AuthChain) == 0 || res.Limited == nil || *res.Limited {
			t.Fatalf("B's walk: auth_chain %d events, limited %v", len(res.AuthChain), res.Limited)
		}

		status, raw = n.request(a, b.Name, b.HS.Key, a.Name, http.MethodPost, path, map[string]any{"event_id": early})
		if status != 404 || !strings.Contains(string(raw), "M_NOT_FOUND") {
			t.Fatalf("B anchoring at an event from before its join: %d %s", status, raw)
		}
		status, raw = n.request(a, c.Name, c.HS.Key, a.Name, http.MethodPost, path, map[string]any{"event_id": late})
		if status != 403 || !strings.Contains(string(raw), "M_FORBIDDEN") {
			t.Fatalf("a server not in the room: %d %s", status, raw)
		}
		status, raw = n.request(a, b.Name, b.HS.Key, a.Name, http.MethodPost, path, map[string]any{"event_id": late, "direction": "left"})
		if status != 400 || !strings.Contains(string(raw), "M_INVALID_PARAM") {
			t.Fatalf("a bad direction: %d %s", status, raw)
		}
	})
}

// eventIDOf computes the ID of a PDU of s's room version.
func eventIDOf(t *testing.T, s *fedServer, pdu json.RawMessage) id.EventID {
	t.Helper()
	var ev struct {
		RoomID string `json:"room_id"`
	}
	_ = json.Unmarshal(pdu, &ev)
	version, err := s.HS.Rooms.RoomVersion(context.Background(), ev.RoomID)
	if err != nil {
		t.Fatal(err)
	}
	impl, err := gomatrixserverlib.GetRoomVersion(gomatrixserverlib.RoomVersion(version))
	if err != nil {
		t.Fatal(err)
	}
	parsed, err := impl.NewEventFromUntrustedJSON(pdu)
	if err != nil {
		t.Fatalf("parsing a returned PDU: %v", err)
	}
	return id.EventID(parsed.EventID())
}
