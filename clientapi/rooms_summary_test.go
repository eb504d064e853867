package clientapi_test

import (
	"net/url"
	"testing"

	"maunium.net/go/mautrix"

	"github.com/myelin-chat/myelin/internal/testserver"
)

// TestRoomsSummaryAndMutual: room summaries (MSC3266) and mutual rooms.
// Spec: client-server-api, "GET /_matrix/client/v1/room_summary/{roomIdOrAlias}",
// "GET /_matrix/client/v1/mutual_rooms".
func TestRoomsSummaryAndMutual(t *testing.T) {
	testserver.ForEachEngine(t, nil, func(t *testing.T, srv *testserver.Server) {
		alice, bob := newUser(t, srv, "alice"), newUser(t, srv, "bob")
		pub, err := alice.CreateRoom(bg, &mautrix.ReqCreateRoom{Preset: "public_chat", Name: "Lobby", RoomAliasName: "lobby"})
		ok(t, "create public", err)
		priv, err := alice.CreateRoom(bg, &mautrix.ReqCreateRoom{Preset: "private_chat", Name: "Secret"})
		ok(t, "create private", err)
		_, err = bob.JoinRoomByID(bg, pub.RoomID)
		ok(t, "join", err)

		summary, err := bob.GetRoomSummary(bg, "#lobby:localhost")
		ok(t, "summary by alias", err)
		if summary.RoomID != pub.RoomID || summary.Name != "Lobby" || summary.NumJoinedMembers != 2 ||
			summary.Membership != "join" || summary.RoomVersion != "12" {
			t.Fatalf("summary = %+v", summary)
		}
		_, err = bob.GetRoomSummary(bg, priv.RoomID.String())
		wantErrcode(t, "summary of a private room", err, 404, "M_NOT_FOUND")
		status, body := callRaw(t, srv, "GET", "/_matrix/client/v1/room_summary/"+url.PathEscape(pub.RoomID.String()), "", "")
		if status != 200 || body["name"] != "Lobby" || body["membership"] != nil {
			t.Fatalf("anonymous summary = %d %v", status, body)
		}
		status, _ = callRaw(t, srv, "GET", "/_matrix/client/unstable/im.nheko.summary/rooms/"+url.PathEscape(priv.RoomID.String())+"/summary", alice.token, "")
		if status != 200 {
			t.Fatalf("unstable summary for a member = %d", status)
		}

		mutual, err := bob.GetMutualRooms(bg, alice.id)
		ok(t, "mutual rooms", err)
		if len(mutual.Joined) != 1 || mutual.Joined[0] != pub.RoomID || mutual.Count != 1 {
			t.Fatalf("mutual = %+v", mutual)
		}
		_, err = bob.GetMutualRooms(bg, bob.id)
		wantErrcode(t, "mutual rooms with oneself", err, 400, "M_INVALID_PARAM")
	})
}
