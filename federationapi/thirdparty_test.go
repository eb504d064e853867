package federationapi_test

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"testing"

	"github.com/matrix-org/gomatrixserverlib"
	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/myelin-chat/myelin/internal/signing"
)

// identityServer stands in for an identity server: it signs the
// "signed" objects of third-party invites with its key.
type identityServer struct {
	name string
	key  *signing.Key
}

func newIdentityServer(t *testing.T) *identityServer {
	key, err := signing.Generate()
	if err != nil {
		t.Fatal(err)
	}
	return &identityServer{name: "id.example.org", key: key}
}

func (is *identityServer) sign(t *testing.T, mxid, token string) json.RawMessage {
	t.Helper()
	signed, err := gomatrixserverlib.SignJSON(is.name, gomatrixserverlib.KeyID(is.key.ID), is.key.PrivateKey,
		mustJSON(map[string]string{"mxid": mxid, "token": token}))
	if err != nil {
		t.Fatal(err)
	}
	return signed
}

// thirdPartyInvite makes u send an m.room.third_party_invite with the
// identity server's public key under token.
func thirdPartyInvite(t *testing.T, u *syncer, roomID id.RoomID, is *identityServer, token, displayName string) {
	t.Helper()
	// Identity servers give both public_key and public_keys (the auth
	// check of the pinned gomatrixserverlib reads only public_keys).
	validity := "https://" + is.name + "/_matrix/identity/v2/pubkey/isvalid"
	content := map[string]any{"display_name": displayName, "public_key": is.key.PublicBase64(), "key_validity_url": validity,
		"public_keys": []map[string]string{{"public_key": is.key.PublicBase64(), "key_validity_url": validity}}}
	if _, err := u.cli.SendStateEvent(context.Background(), roomID, event.Type{Type: "m.room.third_party_invite", Class: event.StateEventType}, token, content); err != nil {
		t.Fatalf("m.room.third_party_invite: %v", err)
	}
}

// onBind sends an identity server's PUT /3pid/onbind (no X-Matrix) to s.
func onBind(t *testing.T, n *network, s *fedServer, mxid string, invites ...map[string]any) int {
	t.Helper()
	body := mustJSON(map[string]any{"medium": "email", "address": "someone@example.org", "mxid": mxid, "invites": invites})
	req, _ := http.NewRequest(http.MethodPut, "https://"+s.Name+"/_matrix/federation/v1/3pid/onbind", bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	resp, err := n.httpClient().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

func bindInvite(roomID id.RoomID, sender, mxid string, signed json.RawMessage) map[string]any {
	return map[string]any{"medium": "email", "address": "someone@example.org", "mxid": mxid,
		"room_id": roomID, "sender": sender, "signed": signed}
}

// TestThirdPartyInvites: alice on A invites an e-mail address; when bob
// on B binds it, the identity server's onbind reaches B, B exchanges the
// invite at A, and A sends bob the invite (signed object checked against
// the identity server's key in the room). A local invitee is invited by
// A directly. Forged signatures, a sender who did not make the
// third-party invite, and exchanges by another server are refused.
func TestThirdPartyInvites(t *testing.T) {
	t.Parallel()
	forEachEngine(t, func(t *testing.T, n *network) {
		a, b := n.start(), n.start()
		ctx := context.Background()
		alice, carol, bob := a.register("alice"), a.register("carol"), b.register("bob")
		bob.syncOnce()
		is := newIdentityServer(t)
		created, err := alice.cli.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "private_chat",
			Invite: []id.UserID{carol.id()}})
		if err != nil {
			t.Fatal(err)
		}
		roomID := created.RoomID
		if _, err := carol.cli.JoinRoomByID(ctx, roomID); err != nil {
			t.Fatal(err)
		}
		thirdPartyInvite(t, alice, roomID, is, "tokB", "b...@example.org")

		exchange := func(origin *fedServer, sender, target string, signed json.RawMessage) (int, []byte) {
			return n.request(a, origin.Name, origin.HS.Key, a.Name, http.MethodPut,
				"/_matrix/federation/v1/exchange_third_party_invite/"+pathEscape(string(roomID)),
				map[string]any{"type": "m.room.member", "room_id": roomID, "sender": sender, "state_key": target,
					"content": map[string]any{"membership": "invite",
						"third_party_invite": map[string]any{"display_name": "x", "signed": signed}}})
		}
		// Refused exchanges: another identity server's signature; a
		// sender who did not make the third-party invite; a server
		// exchanging for a user not its own.
		forger := newIdentityServer(t)
		if status, body := exchange(b, string(alice.id()), string(bob.id()), forger.sign(t, string(bob.id()), "tokB")); status != http.StatusForbidden {
			t.Errorf("exchange with a forged signature: %d %s", status, body)
		}
		if status, body := exchange(b, string(carol.id()), string(bob.id()), is.sign(t, string(bob.id()), "tokB")); status != http.StatusForbidden {
			t.Errorf("exchange naming carol, who made no third-party invite: %d %s", status, body)
		}
		if status, body := exchange(a, string(alice.id()), string(bob.id()), is.sign(t, string(bob.id()), "tokB")); status != http.StatusForbidden {
			t.Errorf("exchange by a server for another server's user: %d %s", status, body)
		}
		if m, _ := a.HS.Rooms.Membership(ctx, string(roomID), string(bob.id())); m != "" {
			t.Fatalf("bob's membership after refused exchanges: %q", m)
		}

		// The genuine bind: onbind at B, exchange at A, invite v2 to B.
		if status := onBind(t, n, b, string(bob.id()), bindInvite(roomID, string(alice.id()), string(bob.id()), is.sign(t, string(bob.id()), "tokB"))); status != http.StatusOK {
			t.Fatalf("onbind at B: %d", status)
		}
		ev, err := a.HS.Rooms.CurrentStateEvent(ctx, string(alice.id()), string(roomID), "m.room.member", string(bob.id()))
		if err != nil || ev.Membership != "invite" {
			t.Fatalf("bob's membership on A after onbind: %+v %v", ev, err)
		}
		var content struct {
			ThirdPartyInvite struct {
				DisplayName string `json:"display_name"`
				Signed      struct {
					Token string `json:"token"`
				} `json:"signed"`
			} `json:"third_party_invite"`
		}
		if json.Unmarshal(ev.Content, &content) != nil || content.ThirdPartyInvite.DisplayName != "b...@example.org" ||
			content.ThirdPartyInvite.Signed.Token != "tokB" || !containsSignatureOf(ev.JSON, b.Name) {
			t.Errorf("bob's invite on A: %s", ev.JSON)
		}
		bob.await("the third-party invite", func() bool { return bob.invites[roomID] })

		// A local invitee: onbind at A invites dave directly.
		dave := a.register("dave")
		thirdPartyInvite(t, alice, roomID, is, "tokD", "d...@example.org")
		forged := bindInvite(roomID, string(alice.id()), string(dave.id()), forger.sign(t, string(dave.id()), "tokD"))
		if status := onBind(t, n, a, string(dave.id()), forged); status != http.StatusOK {
			t.Fatalf("onbind at A with a forged invite: %d", status)
		}
		if m, _ := a.HS.Rooms.Membership(ctx, string(roomID), string(dave.id())); m != "" {
			t.Fatalf("dave invited by a forged onbind: %q", m)
		}
		if status := onBind(t, n, a, string(dave.id()), bindInvite(roomID, string(alice.id()), string(dave.id()), is.sign(t, string(dave.id()), "tokD"))); status != http.StatusOK {
			t.Fatalf("onbind at A: %d", status)
		}
		if m, _ := a.HS.Rooms.Membership(ctx, string(roomID), string(dave.id())); m != "invite" {
			t.Errorf("dave's membership after onbind: %q", m)
		}
		// onbind for another server's user is refused.
		if status := onBind(t, n, a, string(bob.id())); status != http.StatusBadRequest {
			t.Errorf("onbind at A for bob: %d", status)
		}
	})
}
