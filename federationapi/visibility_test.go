package federationapi_test

import (
	"context"
	"encoding/json"
	"net/http"
	"testing"

	"github.com/matrix-org/gomatrixserverlib"

	"github.com/myelin-chat/myelin/roomserver"
	"github.com/myelin-chat/myelin/storage"
)

// TestHistoryVisibilityForServers: /get_missing_events, /backfill and
// /event serve an event the asking server may not see (joined or
// invited history from before its users were in the room) as a redacted
// copy, hashes and signatures intact so it still verifies, and events it
// may see (shared, world_readable) whole.
// Spec: server-server-api, "Retrieving events"; client-server-api,
// "History visibility".
func TestHistoryVisibilityForServers(t *testing.T) {
	t.Parallel()
	n := newNetwork(t, storage.SQLite)
	a, b := n.start(), n.start()
	ctx := context.Background()
	alice, bob := a.user("alice"), b.user("bob")
	for _, vis := range []string{"world_readable", "shared", "invited", "joined"} {
		t.Run(vis, func(t *testing.T) {
			roomID := publicRoom(t, a, alice)
			empty := ""
			if _, err := a.HS.Rooms.SendEvent(ctx, roomserver.SendEventRequest{RoomID: roomID, Sender: alice,
				Type: "m.room.history_visibility", StateKey: &empty, Content: mustJSON(map[string]string{"history_visibility": vis})}); err != nil {
				t.Fatal(err)
			}
			msgID := sendText(t, a, roomID, alice, "before bob")
			if _, err := b.HS.Federation.JoinRemote(ctx, roomID, bob, []string{a.Name}); err != nil {
				t.Fatal(err)
			}
			bobJoin, err := a.HS.Rooms.RoomStateEvent(ctx, roomID, "m.room.member", bob)
			if err != nil {
				t.Fatal(err)
			}
			create, err := a.HS.Rooms.RoomStateEvent(ctx, roomID, "m.room.create", "")
			if err != nil {
				t.Fatal(err)
			}
			version, _ := a.HS.Rooms.RoomVersion(ctx, roomID)
			impl := gomatrixserverlib.MustGetRoomVersion(gomatrixserverlib.RoomVersion(version))
			wantRedacted := vis == "invited" || vis == "joined"
			check := func(where string, raw json.RawMessage) {
				t.Helper()
				pdu, err := impl.NewEventFromUntrustedJSON(raw)
				if err != nil {
					t.Fatalf("%s: %v", where, err)
				}
				var c struct {
					Body string `json:"body"`
				}
				_ = json.Unmarshal(pdu.Content(), &c)
				if pdu.Redacted() != wantRedacted || (c.Body == "") != wantRedacted {
					t.Errorf("%s: redacted %v, body %q; want redacted %v", where, pdu.Redacted(), c.Body, wantRedacted)
				}
				if err := gomatrixserverlib.VerifyJSON(a.Name, gomatrixserverlib.KeyID(a.HS.Key.ID), a.HS.Key.Public(), mustRedact(t, impl, raw)); err != nil {
					t.Errorf("%s: signature no longer verifies: %v", where, err)
				}
			}
			find := func(where string, list []json.RawMessage) {
				t.Helper()
				for _, raw := range list {
					pdu, err := impl.NewEventFromUntrustedJSON(raw)
					if err == nil && pdu.EventID() == msgID {
						check(where, raw)
						return
					}
				}
				t.Errorf("%s: the message is missing (%d events)", where, len(list))
			}

			var gme struct {
				Events []json.RawMessage `json:"events"`
			}
			status, body := n.request(a, b.Name, b.HS.Key, a.Name, http.MethodPost, "/_matrix/federation/v1/get_missing_events/"+pathEscape(roomID),
				map[string]any{"earliest_events": []string{create.EventID}, "latest_events": []string{bobJoin.EventID}, "limit": 10})
			if status != http.StatusOK || json.Unmarshal(body, &gme) != nil {
				t.Fatalf("get_missing_events: %d %s", status, body)
			}
			find("get_missing_events", gme.Events)

			var txn struct {
				PDUs []json.RawMessage `json:"pdus"`
			}
			status, body = n.request(a, b.Name, b.HS.Key, a.Name, http.MethodGet,
				"/_matrix/federation/v1/backfill/"+pathEscape(roomID)+"?limit=20&v="+pathEscape(bobJoin.EventID), nil)
			if status != http.StatusOK || json.Unmarshal(body, &txn) != nil {
				t.Fatalf("backfill: %d %s", status, body)
			}
			find("backfill", txn.PDUs)

			status, body = n.request(a, b.Name, b.HS.Key, a.Name, http.MethodGet, "/_matrix/federation/v1/event/"+pathEscape(msgID), nil)
			if status != http.StatusOK || json.Unmarshal(body, &txn) != nil || len(txn.PDUs) != 1 {
				t.Fatalf("event: %d %s", status, body)
			}
			check("event", txn.PDUs[0])
		})
	}
}

func mustRedact(t *testing.T, impl gomatrixserverlib.IRoomVersion, raw json.RawMessage) []byte {
	t.Helper()
	out, err := impl.RedactEventJSON(raw)
	if err != nil {
		t.Fatal(err)
	}
	return out
}
