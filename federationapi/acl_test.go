package federationapi_test

import (
	"context"
	"encoding/json"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
)

// TestServerACLEnforced: a server that joined alice's room is then denied
// by an m.room.server_acl. From then on A ignores its PDUs (answered one
// by one with an error, never stored) and its room EDUs (typing,
// receipts), and refuses every room-scoped federation endpoint with 403
// M_FORBIDDEN. Before the ACL, the same server's receipt reached alice,
// so the refusals are the ACL's doing.
// Spec: server-server-api, "Server Access Control Lists (ACLs)".
func TestServerACLEnforced(t *testing.T) {
	t.Parallel()
	forEachEngine(t, func(t *testing.T, n *network) {
		ctx := context.Background()
		a := n.start()
		alice := a.register("alice")
		room := alice.publicAliasedRoom("acl")
		roomID := string(room)
		f := newFakeRemote(t, n)
		mallory := "@mallory:" + f.name

		send := func(pdus []json.RawMessage, edus []map[string]any) sendResponse {
			t.Helper()
			status, body := n.request(a, f.name, f.key, a.Name, http.MethodPut,
				"/_matrix/federation/v1/send/acl"+time.Now().Format("150405.000000"),
				map[string]any{"origin": f.name, "origin_server_ts": time.Now().UnixMilli(), "pdus": nonNilPDUs(pdus), "edus": edus})
			if status != http.StatusOK {
				t.Fatalf("send: %d %s", status, body)
			}
			var resp sendResponse
			_ = json.Unmarshal(body, &resp)
			return resp
		}
		receipt := func(eventID string) map[string]any {
			return map[string]any{"edu_type": "m.receipt", "content": map[string]any{roomID: map[string]any{
				"m.read": map[string]any{mallory: map[string]any{"event_ids": []string{eventID},
					"data": map[string]any{"ts": time.Now().UnixMilli()}}}}}}
		}
		join := buildPDU(t, a, roomID, mallory, "m.room.member", &mallory, map[string]string{"membership": "join"}, f.name, f.key, nil)
		if res := send([]json.RawMessage{join.JSON()}, nil); res.PDUs[join.EventID()].Error != "" {
			t.Fatalf("mallory's join: %s", res.PDUs[join.EventID()].Error)
		}
		first := alice.send(room, "read by mallory")
		send(nil, []map[string]any{receipt(string(first))})
		alice.await("mallory's receipt before the ACL", func() bool {
			return alice.sawEphemeral(room, event.EphemeralEventReceipt, id.UserID(mallory))
		})

		// Deny every server named localhost (the test servers' host;
		// A's own events are not subject to its ACL).
		aclID := sendState(t, a, roomID, string(alice.id()), "m.room.server_acl", "",
			map[string]any{"allow": []string{"*"}, "deny": []string{"localhost"}, "allow_ip_literals": false})
		alice.await("the ACL", func() bool { return alice.sawEventID(room, aclID) })

		// PDUs: each refused in the answer, none stored.
		msg := buildPDU(t, a, roomID, mallory, "m.room.message", nil, map[string]string{"msgtype": "m.text", "body": "denied"}, f.name, f.key, nil)
		res := send([]json.RawMessage{msg.JSON()}, nil)
		if e := res.PDUs[msg.EventID()].Error; e == "" {
			t.Fatalf("a PDU from a denied server was accepted: %+v", res)
		}
		if _, _, err := a.HS.Rooms.FederationEvent(ctx, msg.EventID()); err == nil {
			t.Fatal("the denied server's PDU was stored")
		}
		// EDUs: typing and receipts ignored.
		second := alice.send(room, "not to be read by mallory")
		send(nil, []map[string]any{receipt(string(second)),
			{"edu_type": "m.typing", "content": map[string]any{"room_id": roomID, "user_id": mallory, "typing": true}}})
		alice.ephemeral[room] = nil
		marker := alice.send(room, "after the denied EDUs")
		alice.await("the marker", func() bool { return alice.sawEventID(room, string(marker)) })
		time.Sleep(300 * time.Millisecond)
		alice.syncOnce()
		for _, e := range alice.ephemeral[room] {
			if strings.Contains(string(e.Content.VeryRaw), mallory) {
				t.Fatalf("an EDU from the denied server reached alice: %s %s", e.Type.Type, e.Content.VeryRaw)
			}
		}

		// One receipt EDU for a denied room and a room without an ACL:
		// the denied room's part is dropped, the other room's delivered.
		// Complement: TestACLsForEDUs.
		open := alice.publicAliasedRoom("acl-sentinel")
		openID := string(open)
		joinOpen := buildPDU(t, a, openID, mallory, "m.room.member", &mallory, map[string]string{"membership": "join"}, f.name, f.key, nil)
		if res := send([]json.RawMessage{joinOpen.JSON()}, nil); res.PDUs[joinOpen.EventID()].Error != "" {
			t.Fatalf("mallory's join of the open room: %s", res.PDUs[joinOpen.EventID()].Error)
		}
		third := alice.send(room, "denied room, read in a mixed EDU")
		sentinel := alice.send(open, "open room, read in a mixed EDU")
		readBy := func(eventID string) map[string]any {
			return map[string]any{"m.read": map[string]any{mallory: map[string]any{"event_ids": []string{eventID},
				"data": map[string]any{"ts": time.Now().UnixMilli()}}}}
		}
		alice.ephemeral[room] = nil
		send(nil, []map[string]any{{"edu_type": "m.receipt", "content": map[string]any{
			roomID: readBy(string(third)), openID: readBy(string(sentinel))}}})
		alice.await("mallory's receipt in the open room", func() bool {
			return alice.sawEphemeral(open, event.EphemeralEventReceipt, id.UserID(mallory))
		})
		alice.syncOnce()
		for _, e := range alice.ephemeral[room] {
			if strings.Contains(string(e.Content.VeryRaw), mallory) {
				t.Fatalf("the denied room's part of a mixed receipt EDU reached alice: %s", e.Content.VeryRaw)
			}
		}

		// Every room-scoped endpoint: 403 M_FORBIDDEN.
		r := pathEscape(roomID)
		ev := pathEscape(string(first))
		invite := buildPDU(t, a, roomID, mallory, "m.room.member", ptr(string(alice.id())), map[string]string{"membership": "invite"}, f.name, f.key, nil)
		for _, c := range []struct {
			method, uri string
			body        any
		}{
			{http.MethodGet, "/_matrix/federation/v1/make_join/" + r + "/" + pathEscape(mallory) + "?ver=12", nil},
			{http.MethodPut, "/_matrix/federation/v2/send_join/" + r + "/" + pathEscape(join.EventID()), json.RawMessage(join.JSON())},
			{http.MethodPut, "/_matrix/federation/v1/send_join/" + r + "/" + pathEscape(join.EventID()), json.RawMessage(join.JSON())},
			{http.MethodGet, "/_matrix/federation/v1/make_leave/" + r + "/" + pathEscape(mallory), nil},
			{http.MethodPut, "/_matrix/federation/v2/send_leave/" + r + "/" + pathEscape(join.EventID()), json.RawMessage(join.JSON())},
			{http.MethodGet, "/_matrix/federation/v1/make_knock/" + r + "/" + pathEscape(mallory) + "?ver=12", nil},
			{http.MethodPut, "/_matrix/federation/v1/send_knock/" + r + "/" + pathEscape(join.EventID()), json.RawMessage(join.JSON())},
			{http.MethodPut, "/_matrix/federation/v2/invite/" + r + "/" + pathEscape(invite.EventID()),
				map[string]any{"event": json.RawMessage(invite.JSON()), "room_version": "12", "invite_room_state": []any{}}},
			{http.MethodPut, "/_matrix/federation/v1/send_leave/" + r + "/" + pathEscape(join.EventID()), json.RawMessage(join.JSON())},
			{http.MethodPut, "/_matrix/federation/v1/invite/" + r + "/" + pathEscape(invite.EventID()), json.RawMessage(invite.JSON())},
			{http.MethodGet, "/_matrix/federation/v1/hierarchy/" + r, nil},
			{http.MethodGet, "/_matrix/federation/v1/state/" + r + "?event_id=" + ev, nil},
			{http.MethodGet, "/_matrix/federation/v1/state_ids/" + r + "?event_id=" + ev, nil},
			{http.MethodGet, "/_matrix/federation/v1/backfill/" + r + "?v=" + ev + "&limit=10", nil},
			{http.MethodGet, "/_matrix/federation/v1/event_auth/" + r + "/" + ev, nil},
			{http.MethodPost, "/_matrix/federation/v1/get_missing_events/" + r,
				map[string]any{"earliest_events": []string{}, "latest_events": []string{string(first)}, "limit": 10}},
			{http.MethodGet, "/_matrix/federation/v1/timestamp_to_event/" + r + "?dir=b&ts=" + strconv.FormatInt(time.Now().UnixMilli(), 10), nil},
			{http.MethodGet, "/_matrix/federation/v1/event/" + ev, nil},
		} {
			status, body := n.request(a, f.name, f.key, a.Name, c.method, c.uri, c.body)
			var e struct {
				Errcode string `json:"errcode"`
			}
			_ = json.Unmarshal(body, &e)
			if status != http.StatusForbidden || e.Errcode != "M_FORBIDDEN" {
				t.Errorf("%s %s: %d %s, want 403 M_FORBIDDEN", c.method, strings.SplitN(c.uri, "?", 2)[0], status, body)
			}
		}
		// The room is untouched: mallory is still joined, nothing of
		// the denied requests was written.
		if m, _ := a.HS.Rooms.Membership(ctx, roomID, mallory); m != "join" {
			t.Errorf("mallory's membership on A: %q", m)
		}
	})
}

func nonNilPDUs(p []json.RawMessage) []json.RawMessage {
	if p == nil {
		return []json.RawMessage{}
	}
	return p
}

// sawEventID reports whether eventID arrived in roomID's timeline.
func (u *syncer) sawEventID(roomID id.RoomID, eventID string) bool {
	for _, e := range u.timeline[roomID] {
		if string(e.ID) == eventID {
			return true
		}
	}
	return false
}
