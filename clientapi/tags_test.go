package clientapi_test

import (
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/myelin-chat/myelin/clientapi"
	"github.com/myelin-chat/myelin/internal/testserver"
)

// TestRoomTagsHTTP drives the tag endpoints: a tag's object is stored as
// given in the room's m.tag account data, order must be a number in
// [0,1], tag names are at most 255 bytes, only the user may touch their
// tags, and guests may not.
// Spec: client-server-api, "Room Tagging"; data/api/client-server/tags.yaml.
func TestRoomTagsHTTP(t *testing.T) {
	testserver.ForEachEngine(t, nil, func(t *testing.T, srv *testserver.Server) {
		alice := clientapi.InsertTestUser(t, srv.HS.DB, "alice", false)
		bob := clientapi.InsertTestUser(t, srv.HS.DB, "bob", false)
		guest := clientapi.InsertTestUser(t, srv.HS.DB, "guest1", true)
		const room = "/_matrix/client/v3/user/@alice:localhost/rooms/!726s6s6q:localhost"
		const other = "/_matrix/client/v3/user/@alice:localhost/rooms/!other:localhost"
		long := strings.Repeat("x", 255)

		runSteps(t, srv, []step{
			{name: "no tags", method: "GET", path: room + "/tags", token: alice, wantStatus: 200, wantBody: `{"tags": {}}`},
			{name: "add favourite", method: "PUT", path: room + "/tags/m.favourite", token: alice, body: `{"order": 0.25}`, wantStatus: 200, wantBody: `{}`},
			{name: "add without order", method: "PUT", path: room + "/tags/u.Customers", token: alice, body: `{}`, wantStatus: 200, wantBody: `{}`},
			{name: "escaped tag name", method: "PUT", path: room + "/tags/u.Work%20%2F%20Home", token: alice, body: `{"order": 1, "com.example.colour": "red"}`, wantStatus: 200},
			{name: "order 0", method: "PUT", path: room + "/tags/m.lowpriority", token: alice, body: `{"order": 0}`, wantStatus: 200},
			{name: "255-byte name", method: "PUT", path: room + "/tags/" + long, token: alice, body: `{}`, wantStatus: 200},
			{name: "get", method: "GET", path: room + "/tags", token: alice, wantStatus: 200, wantBody: `{"tags": {
				"m.favourite": {"order": 0.25}, "u.Customers": {}, "u.Work / Home": {"order": 1, "com.example.colour": "red"},
				"m.lowpriority": {"order": 0}, "` + long + `": {}}}`},
			{name: "as room account data", method: "GET", path: room + "/account_data/m.tag", token: alice, wantStatus: 200, wantBody: `{"tags": {
				"m.favourite": {"order": 0.25}, "u.Customers": {}, "u.Work / Home": {"order": 1, "com.example.colour": "red"},
				"m.lowpriority": {"order": 0}, "` + long + `": {}}}`},
			{name: "replace a tag's data", method: "PUT", path: room + "/tags/m.favourite", token: alice, body: `{"order": 0.5}`, wantStatus: 200},
			{name: "delete", method: "DELETE", path: room + "/tags/u.Customers", token: alice, wantStatus: 200, wantBody: `{}`},
			{name: "delete escaped", method: "DELETE", path: room + "/tags/u.Work%20%2F%20Home", token: alice, wantStatus: 200},
			{name: "delete absent tag", method: "DELETE", path: room + "/tags/u.never", token: alice, wantStatus: 200, wantBody: `{}`},
			{name: "delete in a room without tags", method: "DELETE", path: other + "/tags/u.never", token: alice, wantStatus: 200},
			{name: "other room untouched", method: "GET", path: other + "/tags", token: alice, wantStatus: 200, wantBody: `{"tags": {}}`},

			// Refused, with nothing stored (checked by the final GET).
			{name: "order above 1", method: "PUT", path: room + "/tags/u.bad", token: alice, body: `{"order": 1.5}`, wantStatus: 400, wantErrcode: "M_BAD_JSON"},
			{name: "negative order", method: "PUT", path: room + "/tags/u.bad", token: alice, body: `{"order": -0.1}`, wantStatus: 400, wantErrcode: "M_BAD_JSON"},
			{name: "string order", method: "PUT", path: room + "/tags/u.bad", token: alice, body: `{"order": "0.5"}`, wantStatus: 400, wantErrcode: "M_BAD_JSON"},
			{name: "null order", method: "PUT", path: room + "/tags/u.bad", token: alice, body: `{"order": null}`, wantStatus: 400, wantErrcode: "M_BAD_JSON"},
			{name: "array body", method: "PUT", path: room + "/tags/u.bad", token: alice, body: `[0.5]`, wantStatus: 400, wantErrcode: "M_BAD_JSON"},
			{name: "not JSON", method: "PUT", path: room + "/tags/u.bad", token: alice, body: `order=0.5`, wantStatus: 400, wantErrcode: "M_NOT_JSON"},
			{name: "no body", method: "PUT", path: room + "/tags/u.bad", token: alice, wantStatus: 400, wantErrcode: "M_NOT_JSON"},
			{name: "256-byte name", method: "PUT", path: room + "/tags/" + long + "y", token: alice, body: `{}`, wantStatus: 400, wantErrcode: "M_INVALID_PARAM"},
			{name: "256-byte name, delete", method: "DELETE", path: room + "/tags/" + long + "y", token: alice, wantStatus: 400, wantErrcode: "M_INVALID_PARAM"},
			{name: "bad room ID", method: "PUT", path: "/_matrix/client/v3/user/@alice:localhost/rooms/%23alias:localhost/tags/u.bad", token: alice, body: `{}`, wantStatus: 400, wantErrcode: "M_INVALID_PARAM"},
			{name: "other user reads", method: "GET", path: room + "/tags", token: bob, wantStatus: 403, wantErrcode: "M_FORBIDDEN"},
			{name: "other user writes", method: "PUT", path: room + "/tags/u.bad", token: bob, body: `{}`, wantStatus: 403, wantErrcode: "M_FORBIDDEN"},
			{name: "other user deletes", method: "DELETE", path: room + "/tags/m.favourite", token: bob, wantStatus: 403, wantErrcode: "M_FORBIDDEN"},
			{name: "remote user's path", method: "GET", path: "/_matrix/client/v3/user/@alice:elsewhere/rooms/!726s6s6q:localhost/tags", token: alice, wantStatus: 403, wantErrcode: "M_FORBIDDEN"},
			{name: "no token", method: "GET", path: room + "/tags", wantStatus: 401, wantErrcode: "M_MISSING_TOKEN"},
			{name: "guest", method: "PUT", path: "/_matrix/client/v3/user/@guest1:localhost/rooms/!726s6s6q:localhost/tags/u.x", token: guest, body: `{}`, wantStatus: 403, wantErrcode: "M_GUEST_ACCESS_FORBIDDEN"},

			{name: "after all", method: "GET", path: room + "/tags", token: alice, wantStatus: 200, wantBody: `{"tags": {
				"m.favourite": {"order": 0.5}, "m.lowpriority": {"order": 0}, "` + long + `": {}}}`},
			{name: "delete every tag", method: "DELETE", path: room + "/tags/m.favourite", token: alice, wantStatus: 200},
			{name: "delete every tag 2", method: "DELETE", path: room + "/tags/m.lowpriority", token: alice, wantStatus: 200},
			{name: "delete every tag 3", method: "DELETE", path: room + "/tags/" + long, token: alice, wantStatus: 200},
			{name: "empty tags", method: "GET", path: room + "/tags", token: alice, wantStatus: 200, wantBody: `{"tags": {}}`},
			// The m.tag object stays (with no tags), so /sync tells
			// clients the tags went.
			{name: "empty m.tag", method: "GET", path: room + "/account_data/m.tag", token: alice, wantStatus: 200, wantBody: `{"tags": {}}`},
		})
	})
}

// TestRoomTagsConcurrentWrites: tags of one room are one m.tag object,
// so every tag change is a read-modify-write. Tag changes made at once,
// mixed with other account data writes and whole-m.tag writes of another
// room, must all land: none may start from tags another has not yet
// committed.
func TestRoomTagsConcurrentWrites(t *testing.T) {
	testserver.ForEachEngine(t, nil, func(t *testing.T, srv *testserver.Server) {
		alice := clientapi.InsertTestUser(t, srv.HS.DB, "alice", false)
		const u = "/_matrix/client/v3/user/@alice:localhost"
		const room = u + "/rooms/!726s6s6q:localhost"
		const n = 12
		order := func(i int) float64 { return float64(i) / 100 }
		// A tag to delete while the others are added.
		runSteps(t, srv, []step{{name: "first tag", method: "PUT", path: room + "/tags/u.old", token: alice, body: `{}`, wantStatus: 200}})

		var wg sync.WaitGroup
		errs := make(chan string, 4*n)
		do := func(method, path, body string) {
			defer wg.Done()
			if status, resp := callRaw(t, srv, method, path, alice, body); status != 200 {
				errs <- fmt.Sprintf("%s %s = %d %v", method, path, status, resp)
			}
		}
		for i := range n {
			wg.Add(3)
			go do("PUT", fmt.Sprintf("%s/tags/u.t%d", room, i), fmt.Sprintf(`{"order": %g}`, order(i)))
			go do("PUT", fmt.Sprintf("%s/account_data/com.example.d%d", u, i), `{"i": 1}`)
			go do("PUT", u+"/rooms/!other:localhost/account_data/m.tag", fmt.Sprintf(`{"tags": {"u.o%d": {}}}`, i))
		}
		wg.Add(1)
		go do("DELETE", room+"/tags/u.old", "")
		wg.Wait()
		close(errs)
		for e := range errs {
			t.Error(e)
		}

		status, body := callRaw(t, srv, "GET", room+"/tags", alice, "")
		tags, _ := body["tags"].(map[string]any)
		if status != 200 || len(tags) != n {
			t.Fatalf("GET tags = %d %v, want the %d tags u.t0 … u.t%d", status, body, n, n-1)
		}
		for i := range n {
			if got, _ := tags[fmt.Sprintf("u.t%d", i)].(map[string]any); len(got) != 1 || got["order"] != order(i) {
				t.Errorf("tag u.t%d = %v", i, got)
			}
		}
		for i := range n {
			if status, body := callRaw(t, srv, "GET", fmt.Sprintf("%s/account_data/com.example.d%d", u, i), alice, ""); status != 200 {
				t.Errorf("account data com.example.d%d = %d %v", i, status, body)
			}
		}
	})
}
