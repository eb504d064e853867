package clientapi_test

import (
	"testing"

	"github.com/myelin-chat/myelin/clientapi"
	"github.com/myelin-chat/myelin/internal/testserver"
)

func TestAccountDataHTTP(t *testing.T) {
	testserver.ForEachEngine(t, nil, func(t *testing.T, srv *testserver.Server) {
		alice := clientapi.InsertTestUser(t, srv.HS.DB, "alice", false)
		bob := clientapi.InsertTestUser(t, srv.HS.DB, "bob", false)
		guest := clientapi.InsertTestUser(t, srv.HS.DB, "guest1", true)
		const u = "/_matrix/client/v3/user/@alice:localhost"
		const room = u + "/rooms/!726s6s6q:localhost"

		runSteps(t, srv, []step{
			{name: "not set", method: "GET", path: u + "/account_data/m.direct", token: alice, wantStatus: 404, wantErrcode: "M_NOT_FOUND"},
			{name: "set global", method: "PUT", path: u + "/account_data/m.direct", token: alice, body: `{"@bob:localhost": ["!dm:localhost"]}`, wantStatus: 200, wantBody: `{}`},
			{name: "get global", method: "GET", path: u + "/account_data/m.direct", token: alice, wantStatus: 200, wantBody: `{"@bob:localhost": ["!dm:localhost"]}`},
			{name: "overwrite global", method: "PUT", path: u + "/account_data/m.direct", token: alice, body: `{"@bob:localhost": []}`, wantStatus: 200},
			{name: "get overwritten", method: "GET", path: u + "/account_data/m.direct", token: alice, wantStatus: 200, wantBody: `{"@bob:localhost": []}`},
			{name: "escaped path and type", method: "PUT", path: "/_matrix/client/v3/user/%40alice%3Alocalhost/account_data/com.example%2Fslash", token: alice, body: `{"a": 1}`, wantStatus: 200},
			{name: "get escaped type", method: "GET", path: u + "/account_data/com.example%2Fslash", token: alice, wantStatus: 200, wantBody: `{"a": 1}`},

			{name: "set room", method: "PUT", path: room + "/account_data/m.tag", token: alice, body: `{"tags": {"u.work": {"order": 0.5}}}`, wantStatus: 200},
			{name: "get room (escaped room ID)", method: "GET", path: u + "/rooms/%21726s6s6q%3Alocalhost/account_data/m.tag", token: alice, wantStatus: 200, wantBody: `{"tags": {"u.work": {"order": 0.5}}}`},
			{name: "room data is not global", method: "GET", path: u + "/account_data/m.tag", token: alice, wantStatus: 404, wantErrcode: "M_NOT_FOUND"},
			{name: "global data is not per room", method: "GET", path: room + "/account_data/m.direct", token: alice, wantStatus: 404, wantErrcode: "M_NOT_FOUND"},
			{name: "bad room ID on GET", method: "GET", path: u + "/rooms/@notaroomid:example.org/account_data/m.tag", token: alice, wantStatus: 400, wantErrcode: "M_INVALID_PARAM"},
			{name: "bad room ID on PUT", method: "PUT", path: u + "/rooms/%23alias:localhost/account_data/m.tag", token: alice, body: `{}`, wantStatus: 400, wantErrcode: "M_INVALID_PARAM"},

			{name: "m.fully_read is server-managed", method: "PUT", path: room + "/account_data/m.fully_read", token: alice, body: `{"event_id": "$x"}`, wantStatus: 405, wantErrcode: "M_BAD_JSON"},
			{name: "m.push_rules is server-managed", method: "PUT", path: u + "/account_data/m.push_rules", token: alice, body: `{}`, wantStatus: 405, wantErrcode: "M_BAD_JSON"},
			{name: "m.push_rules per room too", method: "PUT", path: room + "/account_data/m.push_rules", token: alice, body: `{}`, wantStatus: 405, wantErrcode: "M_BAD_JSON"},
			{name: "server-managed types can be read", method: "GET", path: room + "/account_data/m.fully_read", token: alice, wantStatus: 404, wantErrcode: "M_NOT_FOUND"},

			{name: "array content", method: "PUT", path: u + "/account_data/com.example.x", token: alice, body: `[1, 2]`, wantStatus: 400, wantErrcode: "M_BAD_JSON"},
			{name: "non-JSON content", method: "PUT", path: u + "/account_data/com.example.x", token: alice, body: `hello`, wantStatus: 400, wantErrcode: "M_NOT_JSON"},
			{name: "empty content", method: "PUT", path: u + "/account_data/com.example.x", token: alice, wantStatus: 400, wantErrcode: "M_NOT_JSON"},

			{name: "other user reads", method: "GET", path: u + "/account_data/m.direct", token: bob, wantStatus: 403, wantErrcode: "M_FORBIDDEN"},
			{name: "other user writes", method: "PUT", path: room + "/account_data/m.tag", token: bob, body: `{}`, wantStatus: 403, wantErrcode: "M_FORBIDDEN"},
			{name: "no token", method: "GET", path: u + "/account_data/m.direct", wantStatus: 401, wantErrcode: "M_MISSING_TOKEN"},
			{name: "guest", method: "PUT", path: "/_matrix/client/v3/user/@guest1:localhost/account_data/m.direct", token: guest, body: `{}`, wantStatus: 403, wantErrcode: "M_GUEST_ACCESS_FORBIDDEN"},
		})

		// What the sync component will see: the latest value per type, in
		// stream order.
		entries, latest, err := srv.HS.ClientAPI.AccountDataSince(t.Context(), "@alice:localhost", 0)
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, e := range entries {
			got = append(got, e.RoomID+"|"+e.Type+"|"+string(e.Content))
		}
		want := []string{`|m.direct|{"@bob:localhost":[]}`, `|com.example/slash|{"a":1}`, `!726s6s6q:localhost|m.tag|{"tags":{"u.work":{"order":0.5}}}`}
		if len(got) != len(want) || got[0] != want[0] || got[1] != want[1] || got[2] != want[2] {
			t.Errorf("AccountDataSince = %q, want %q", got, want)
		}
		if latest != entries[len(entries)-1].Position {
			t.Errorf("latest = %d, want %d", latest, entries[len(entries)-1].Position)
		}
	})
}
