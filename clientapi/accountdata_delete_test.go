package clientapi_test

import (
	"encoding/json"
	"testing"

	"maunium.net/go/mautrix/event"

	"github.com/myelin-chat/myelin/clientapi"
	"github.com/myelin-chat/myelin/internal/testserver"
)

// TestDeleteAccountData: MSC3391. DELETE and PUT {} delete global and
// room account data; GET then answers 404 M_NOT_FOUND, incremental syncs
// carry the deletion as {} and initial syncs leave the type out.
func TestDeleteAccountData(t *testing.T) {
	testserver.ForEachEngine(t, nil, func(t *testing.T, srv *testserver.Server) {
		alice := clientapi.InsertTestUser(t, srv.HS.DB, "alice", false)
		bob := clientapi.InsertTestUser(t, srv.HS.DB, "bob", false)
		const v3 = "/_matrix/client/v3/user/@alice:localhost"
		const unstable = "/_matrix/client/unstable/org.matrix.msc3391/user/@alice:localhost"
		const room = "/rooms/!726s6s6q:localhost"

		runSteps(t, srv, []step{
			{name: "set global a", method: "PUT", path: v3 + "/account_data/com.example.a", token: alice, body: `{"x": 1}`, wantStatus: 200},
			{name: "set global b", method: "PUT", path: v3 + "/account_data/com.example.b", token: alice, body: `{"x": 2}`, wantStatus: 200},
			{name: "set room a", method: "PUT", path: v3 + room + "/account_data/com.example.a", token: alice, body: `{"x": 3}`, wantStatus: 200},
			{name: "set room b", method: "PUT", path: v3 + room + "/account_data/com.example.b", token: alice, body: `{"x": 4}`, wantStatus: 200},
		})
		_, mark, err := srv.HS.ClientAPI.AccountDataSince(t.Context(), "@alice:localhost", 0)
		if err != nil {
			t.Fatal(err)
		}
		runSteps(t, srv, []step{
			{name: "delete global via DELETE", method: "DELETE", path: unstable + "/account_data/com.example.a", token: alice, wantStatus: 200, wantBody: `{}`},
			{name: "delete global via PUT {}", method: "PUT", path: v3 + "/account_data/com.example.b", token: alice, body: `{}`, wantStatus: 200},
			{name: "delete room via DELETE", method: "DELETE", path: unstable + room + "/account_data/com.example.a", token: alice, wantStatus: 200},
			{name: "delete room via PUT {}", method: "PUT", path: v3 + room + "/account_data/com.example.b", token: alice, body: ` { } `, wantStatus: 200},
			{name: "deleted global is gone", method: "GET", path: v3 + "/account_data/com.example.a", token: alice, wantStatus: 404, wantErrcode: "M_NOT_FOUND"},
			{name: "emptied global is gone", method: "GET", path: v3 + "/account_data/com.example.b", token: alice, wantStatus: 404, wantErrcode: "M_NOT_FOUND"},
			{name: "deleted room data is gone", method: "GET", path: v3 + room + "/account_data/com.example.a", token: alice, wantStatus: 404, wantErrcode: "M_NOT_FOUND"},
			{name: "emptied room data is gone", method: "GET", path: v3 + room + "/account_data/com.example.b", token: alice, wantStatus: 404, wantErrcode: "M_NOT_FOUND"},
			{name: "deleting an unset type succeeds", method: "DELETE", path: unstable + "/account_data/com.example.never", token: alice, wantStatus: 200},
			{name: "server-managed types cannot be deleted", method: "DELETE", path: unstable + "/account_data/m.push_rules", token: alice, wantStatus: 405, wantErrcode: "M_BAD_JSON"},
			{name: "another user's data", method: "DELETE", path: unstable + "/account_data/com.example.a", token: bob, wantStatus: 403, wantErrcode: "M_FORBIDDEN"},
			{name: "no token", method: "DELETE", path: unstable + "/account_data/com.example.a", wantStatus: 401, wantErrcode: "M_MISSING_TOKEN"},
			{name: "bad room ID", method: "DELETE", path: unstable + "/rooms/notaroom/account_data/com.example.a", token: alice, wantStatus: 400, wantErrcode: "M_INVALID_PARAM"},
			{name: "set again after deletion", method: "PUT", path: v3 + "/account_data/com.example.a", token: alice, body: `{"x": 5}`, wantStatus: 200},
			{name: "get the new value", method: "GET", path: v3 + "/account_data/com.example.a", token: alice, wantStatus: 200, wantBody: `{"x": 5}`},
		})

		entries := func(since int64) map[string]string {
			t.Helper()
			got, _, err := srv.HS.ClientAPI.AccountDataSince(t.Context(), "@alice:localhost", since)
			if err != nil {
				t.Fatal(err)
			}
			out := map[string]string{}
			for _, e := range got {
				out[e.RoomID+"|"+e.Type] = string(e.Content)
			}
			return out
		}
		// Incremental: the deletions are there, as {}; deleting an unset
		// type wrote nothing.
		inc := entries(mark)
		want := map[string]string{"|com.example.a": `{"x":5}`, "|com.example.b": `{}`,
			"!726s6s6q:localhost|com.example.a": `{}`, "!726s6s6q:localhost|com.example.b": `{}`}
		if len(inc) != len(want) {
			t.Errorf("incremental entries = %v, want %v", inc, want)
		}
		for k, v := range want {
			if inc[k] != v {
				t.Errorf("incremental %s = %q, want %q", k, inc[k], v)
			}
		}
		// Initial: only what is set.
		initial := entries(0)
		if len(initial) != 1 || initial["|com.example.a"] != `{"x":5}` {
			t.Errorf("initial entries = %v, want only com.example.a", initial)
		}
		if c, err := srv.HS.ClientAPI.GlobalAccountData(t.Context(), "@alice:localhost", "com.example.b"); err != nil || c != nil {
			t.Errorf("GlobalAccountData(deleted) = %s, %v; want nil", c, err)
		}
	})
}

// TestDeleteAccountDataSync drives MSC3391 through /sync with a real
// client: an incremental sync shows the deletion as empty content and a
// new initial sync does not list the type.
func TestDeleteAccountDataSync(t *testing.T) {
	testserver.ForEachEngine(t, nil, func(t *testing.T, srv *testserver.Server) {
		alice := newUser(t, srv, "alice")
		ok(t, "set", alice.SetAccountData(bg, "com.example.t", map[string]any{"v": 1}))
		first, err := alice.SyncRequest(bg, 0, "", "", false, "")
		ok(t, "initial sync", err)
		if !hasAccountData(first.AccountData.Events, "com.example.t", `{"v":1}`) {
			t.Fatalf("initial sync lacks com.example.t: %+v", first.AccountData.Events)
		}
		status, body := call(t, "DELETE", srv.URL+"/_matrix/client/unstable/org.matrix.msc3391/user/@alice:localhost/account_data/com.example.t", alice.token, nil)
		if status != 200 {
			t.Fatalf("DELETE = %d %v", status, body)
		}
		next, err := alice.SyncRequest(bg, 0, first.NextBatch, "", false, "")
		ok(t, "incremental sync", err)
		if !hasAccountData(next.AccountData.Events, "com.example.t", `{}`) {
			t.Fatalf("incremental sync lacks the deletion: %+v", next.AccountData.Events)
		}
		again, err := alice.SyncRequest(bg, 0, "", "", false, "")
		ok(t, "second initial sync", err)
		for _, ev := range again.AccountData.Events {
			if ev.Type.Type == "com.example.t" {
				t.Fatalf("initial sync lists deleted com.example.t: %s", ev.Content.VeryRaw)
			}
		}
	})
}

func hasAccountData(events []*event.Event, dataType, content string) bool {
	for _, ev := range events {
		if ev.Type.Type != dataType {
			continue
		}
		var got, want any
		if json.Unmarshal(ev.Content.VeryRaw, &got) != nil || json.Unmarshal([]byte(content), &want) != nil {
			return false
		}
		g, _ := json.Marshal(got)
		w, _ := json.Marshal(want)
		return string(g) == string(w)
	}
	return false
}
