package federationapi_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/matrix-org/gomatrixserverlib"
	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/id"
)

// withInviteRoomState returns an event's JSON with unsigned.invite_room_state
// set (unsigned is outside hashes and signatures).
func withInviteRoomState(t *testing.T, event []byte, stripped ...map[string]any) []byte {
	t.Helper()
	var fields map[string]any
	if err := json.Unmarshal(event, &fields); err != nil {
		t.Fatal(err)
	}
	fields["unsigned"] = map[string]any{"invite_room_state": stripped}
	return mustJSON(fields)
}

// TestInboundInviteV1: A sends B an invite through PUT /v1/invite for a
// room version 1 room; B countersigns it and bob sees it. The v2 checks
// hold (origin must be the sender's server, invitee must be B's), and
// only room versions 1 and 2 are accepted.
func TestInboundInviteV1(t *testing.T) {
	t.Parallel()
	forEachEngine(t, func(t *testing.T, n *network) {
		a, b, c := n.start(), n.start(), n.start()
		ctx := context.Background()
		alice, bob := a.register("alice"), b.register("bob")
		bob.syncOnce()
		created, err := alice.cli.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "private_chat", RoomVersion: "1"})
		if err != nil {
			t.Fatalf("createRoom v1: %v", err)
		}
		roomID := string(created.RoomID)
		invitee := string(bob.id())
		pdu := buildPDU(t, a, roomID, string(alice.id()), "m.room.member", &invitee, map[string]string{"membership": "invite"}, a.Name, a.HS.Key, nil)
		create := map[string]any{"type": "m.room.create", "state_key": "", "sender": string(alice.id()),
			"content": map[string]any{"creator": string(alice.id()), "room_version": "1"}}
		body := withInviteRoomState(t, pdu.JSON(), create)
		uri := "/_matrix/federation/v1/invite/" + pathEscape(roomID) + "/" + pathEscape(pdu.EventID())

		// Refused: sent by another server than the sender's; a create
		// event of another room version.
		if status, resp := n.request(b, c.Name, c.HS.Key, b.Name, http.MethodPut, uri, json.RawMessage(body)); status != http.StatusForbidden {
			t.Errorf("v1 invite relayed by another server: %d %s", status, resp)
		}
		v5 := map[string]any{"type": "m.room.create", "state_key": "", "content": map[string]any{"room_version": "5"}}
		if status, resp := n.request(b, a.Name, a.HS.Key, b.Name, http.MethodPut, uri, json.RawMessage(withInviteRoomState(t, pdu.JSON(), v5))); status != http.StatusBadRequest || !strings.Contains(string(resp), "M_INCOMPATIBLE_ROOM_VERSION") {
			t.Errorf("v1 invite for a version 5 room: %d %s", status, resp)
		}

		status, resp := n.request(b, a.Name, a.HS.Key, b.Name, http.MethodPut, uri, json.RawMessage(body))
		var answer []json.RawMessage
		if status != http.StatusOK || json.Unmarshal(resp, &answer) != nil || len(answer) != 2 || string(answer[0]) != "200" {
			t.Fatalf("v1 invite: %d %s", status, resp)
		}
		var signed struct {
			Event json.RawMessage `json:"event"`
		}
		if json.Unmarshal(answer[1], &signed) != nil || !containsSignatureOf(signed.Event, b.Name) || !containsSignatureOf(signed.Event, a.Name) {
			t.Fatalf("v1 invite answer is not signed by both servers: %s", answer[1])
		}
		bob.await("the v1 invite", func() bool { return bob.invites[id.RoomID(roomID)] })
	})
}

// TestOutboundInviteFallsBackToV1: a server that answers invite v2 with
// 404 M_UNRECOGNIZED gets invites to room version 1 and 2 rooms through
// v1 (with the stripped state in unsigned), and none for later versions.
func TestOutboundInviteFallsBackToV1(t *testing.T) {
	t.Parallel()
	forEachEngine(t, func(t *testing.T, n *network) {
		a := n.start()
		old := newFakeRemote(t, n)
		ctx := context.Background()
		alice := a.register("alice")
		old.mux.HandleFunc("/_matrix/federation/v2/invite/", func(w http.ResponseWriter, r *http.Request) {
			w.WriteHeader(http.StatusNotFound)
			_, _ = w.Write([]byte(`{"errcode":"M_UNRECOGNIZED","error":"Unrecognized request"}`))
		})
		var sawCreate bool
		old.mux.HandleFunc("/_matrix/federation/v1/invite/", func(w http.ResponseWriter, r *http.Request) {
			raw, _ := io.ReadAll(r.Body)
			var ev struct {
				Unsigned struct {
					InviteRoomState []struct {
						Type string `json:"type"`
					} `json:"invite_room_state"`
				} `json:"unsigned"`
			}
			_ = json.Unmarshal(raw, &ev)
			for _, st := range ev.Unsigned.InviteRoomState {
				sawCreate = sawCreate || st.Type == "m.room.create"
			}
			pdu, err := gomatrixserverlib.MustGetRoomVersion("1").NewEventFromUntrustedJSON(raw)
			if err != nil {
				http.Error(w, `{"errcode":"M_BAD_JSON"}`, http.StatusBadRequest)
				return
			}
			signed := pdu.Sign(old.name, gomatrixserverlib.KeyID(old.key.ID), old.key.PrivateKey)
			_, _ = w.Write(mustJSON([]any{200, map[string]json.RawMessage{"event": signed.JSON()}}))
		})
		invitee := id.UserID("@olduser:" + old.name)

		created, err := alice.cli.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "private_chat", RoomVersion: "1"})
		if err != nil {
			t.Fatalf("createRoom v1: %v", err)
		}
		if _, err := alice.cli.InviteUser(ctx, created.RoomID, &mautrix.ReqInviteUser{UserID: invitee}); err != nil {
			t.Fatalf("inviting a v1-only server's user to a v1 room: %v", err)
		}
		ev, err := a.HS.Rooms.CurrentStateEvent(ctx, string(alice.id()), string(created.RoomID), "m.room.member", string(invitee))
		if err != nil || ev.Membership != "invite" || !containsSignatureOf(ev.JSON, old.name) {
			t.Fatalf("invite on A after the v1 fallback: %+v %v", ev, err)
		}
		if !sawCreate || old.count("/_matrix/federation/v1/invite") != 1 {
			t.Errorf("v1 invite requests %d, stripped create sent %v", old.count("/_matrix/federation/v1/invite"), sawCreate)
		}

		// Room version 12: no fallback; the client sees the remote's answer.
		modern, err := alice.cli.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "private_chat"})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := alice.cli.InviteUser(ctx, modern.RoomID, &mautrix.ReqInviteUser{UserID: invitee}); !httpStatusIs(err, http.StatusNotFound) {
			t.Errorf("inviting to a v12 room through a v1-only server: %v", err)
		}
		if old.count("/_matrix/federation/v1/invite") != 1 {
			t.Errorf("v1 used for a v12 room")
		}
	})
}
