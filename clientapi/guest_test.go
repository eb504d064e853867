package clientapi_test

import (
	"net/http"
	"net/url"
	"testing"

	"maunium.net/go/mautrix"

	"github.com/myelin-chat/myelin/config"
	"github.com/myelin-chat/myelin/internal/testserver"
)

// TestGuestJoinNeedsCanJoin: a guest may join a room only while its
// m.room.guest_access is can_join; else 403 M_GUEST_ACCESS_FORBIDDEN ("The
// room or resource does not permit guests to access it") and no member
// event is written, by either join endpoint. A guest that joined sends
// messages, reads them and leaves, endpoints the spec allows guests.
// Spec: client-server-api, "Guest Access" ("Servers MUST only allow guest
// users to join rooms if the m.room.guest_access state event is present
// on the room, and has the guest_access value can_join"; "Client
// behaviour": join, leave, send, messages), "Common error codes".
func TestGuestJoinNeedsCanJoin(t *testing.T) {
	testserver.ForEachEngine(t, func(c *config.Config) { c.ClientAPI.GuestAccess = true }, func(t *testing.T, srv *testserver.Server) {
		alice := newUser(t, srv, "alice")
		resp, _, err := client(t, srv, "", "").RegisterGuest(bg, &mautrix.ReqRegister[any]{})
		ok(t, "guest registration", err)
		guest, guestID := resp.AccessToken, resp.UserID.String()
		room, err := alice.CreateRoom(bg, &mautrix.ReqCreateRoom{Preset: "public_chat"}) // no m.room.guest_access
		ok(t, "create", err)
		rp := "/_matrix/client/v3/rooms/" + url.PathEscape(room.RoomID.String())
		joinPaths := []string{rp + "/join", "/_matrix/client/v3/join/" + url.PathEscape(room.RoomID.String())}
		refused := func(why string) []step {
			var steps []step
			for _, p := range joinPaths {
				steps = append(steps, step{name: why + ": " + p, method: "POST", path: p, token: guest, body: `{}`,
					wantStatus: http.StatusForbidden, wantErrcode: "M_GUEST_ACCESS_FORBIDDEN"})
			}
			return append(steps, step{name: why + ": no member event", method: "GET", path: rp + "/state/m.room.member/" + url.PathEscape(guestID),
				token: alice.token, wantStatus: http.StatusNotFound, wantErrcode: "M_NOT_FOUND"})
		}
		guestAccess := func(value string) step {
			return step{name: "guest_access " + value, method: "PUT", path: rp + "/state/m.room.guest_access/", token: alice.token,
				body: `{"guest_access": "` + value + `"}`, wantStatus: http.StatusOK}
		}
		steps := refused("no m.room.guest_access")
		steps = append(steps, guestAccess("forbidden"))
		steps = append(steps, refused("guest_access forbidden")...)
		steps = append(steps, guestAccess("can_join"),
			step{name: "join with can_join", method: "POST", path: joinPaths[0], token: guest, body: `{}`, wantStatus: http.StatusOK},
			step{name: "guest is joined", method: "GET", path: rp + "/state/m.room.member/" + url.PathEscape(guestID), token: alice.token,
				wantStatus: http.StatusOK},
			step{name: "guest sends", method: "PUT", path: rp + "/send/m.room.message/g1", token: guest,
				body: `{"msgtype": "m.text", "body": "hello as a guest"}`, wantStatus: http.StatusOK},
			step{name: "guest reads", method: "GET", path: rp + "/messages?dir=b&limit=5", token: guest, wantStatus: http.StatusOK},
			step{name: "guest leaves", method: "POST", path: rp + "/leave", token: guest, body: `{}`, wantStatus: http.StatusOK},
			step{name: "guest's membership is leave", method: "GET", path: rp + "/state/m.room.member/" + url.PathEscape(guestID), token: alice.token,
				wantStatus: http.StatusOK, wantBody: `{"membership": "leave"}`},
		)
		runSteps(t, srv, steps)
	})
}
