package clientapi_test

import (
	"encoding/json"
	"reflect"
	"testing"

	"github.com/myelin-chat/myelin/clientapi"
	"github.com/myelin-chat/myelin/internal/testserver"
)

func TestFilterHTTP(t *testing.T) {
	testserver.ForEachEngine(t, nil, func(t *testing.T, srv *testserver.Server) {
		alice := clientapi.InsertTestUser(t, srv.HS.DB, "alice", false)
		bob := clientapi.InsertTestUser(t, srv.HS.DB, "bob", false)
		const u = "/_matrix/client/v3/user/@alice:localhost/filter"
		filter := `{
			"room": {
				"state": {"types": ["m.room.*"], "not_rooms": ["!726s6s6q:example.com"], "lazy_load_members": true},
				"timeline": {"limit": 10, "types": ["m.room.message"], "not_senders": ["@spam:example.com"]}
			},
			"presence": {"types": ["m.presence"], "not_senders": ["@alice:example.com"]},
			"event_format": "client",
			"event_fields": ["type", "content", "sender"],
			"org.example.unknown": true
		}`

		status, body := callRaw(t, srv, "POST", u, alice, filter)
		if status != 200 {
			t.Fatalf("POST filter = %d %v", status, body)
		}
		id, _ := body["filter_id"].(string)
		if id == "" || id[0] == '{' {
			t.Fatalf("filter_id = %v", body["filter_id"])
		}
		status, again := callRaw(t, srv, "POST", "/_matrix/client/v3/user/%40alice%3Alocalhost/filter", alice, filter)
		if status != 200 || again["filter_id"] != id {
			t.Errorf("uploading the same filter again = %d %v, want filter_id %s", status, again, id)
		}

		status, stored := callRaw(t, srv, "GET", u+"/"+id, alice, "")
		var want map[string]any
		if err := json.Unmarshal([]byte(filter), &want); err != nil {
			t.Fatal(err)
		}
		if status != 200 || !reflect.DeepEqual(stored, want) {
			t.Errorf("GET filter = %d %v, want the uploaded filter %v", status, stored, want)
		}

		_, bobBody := callRaw(t, srv, "POST", "/_matrix/client/v3/user/@bob:localhost/filter", bob, `{}`)
		bobsID, _ := bobBody["filter_id"].(string)

		runSteps(t, srv, []step{
			{name: "zero limit", method: "POST", path: u, token: alice, body: `{"room": {"ephemeral": {"limit": 0}}}`, wantStatus: 400, wantErrcode: "M_BAD_JSON"},
			{name: "zero timeline limit", method: "POST", path: u, token: alice, body: `{"room": {"timeline": {"limit": 0}}}`, wantStatus: 200},
			{name: "bad event_format", method: "POST", path: u, token: alice, body: `{"event_format": "raw"}`, wantStatus: 400, wantErrcode: "M_BAD_JSON"},
			{name: "wrong type", method: "POST", path: u, token: alice, body: `{"room": {"state": {"lazy_load_members": "yes"}}}`, wantStatus: 400, wantErrcode: "M_BAD_JSON"},
			{name: "not JSON", method: "POST", path: u, token: alice, body: `{"room":`, wantStatus: 400, wantErrcode: "M_NOT_JSON"},
			{name: "unknown filter", method: "GET", path: u + "/424242", token: alice, wantStatus: 404, wantErrcode: "M_NOT_FOUND"},
			{name: "non-numeric filter ID", method: "GET", path: u + "/abc", token: alice, wantStatus: 404, wantErrcode: "M_NOT_FOUND"},
			{name: "bob's filter under alice", method: "GET", path: u + "/" + bobsID, token: alice, wantStatus: 404, wantErrcode: "M_NOT_FOUND"},
			{name: "alice's filter read by bob", method: "GET", path: u + "/" + id, token: bob, wantStatus: 403, wantErrcode: "M_FORBIDDEN"},
			{name: "bob uploads for alice", method: "POST", path: u, token: bob, body: `{}`, wantStatus: 403, wantErrcode: "M_FORBIDDEN"},
			{name: "no token", method: "POST", path: u, body: `{}`, wantStatus: 401, wantErrcode: "M_MISSING_TOKEN"},
		})

		// What the sync component calls for ?filter=<id>.
		f, err := srv.HS.ClientAPI.Filter(t.Context(), "@alice:localhost", id)
		if err != nil {
			t.Fatal(err)
		}
		if !f.Room.State.LazyLoadMembers || *f.Room.Timeline.Limit != 10 {
			t.Errorf("Filter = %+v", f.Room)
		}
	})
}
