package clientapi_test

import (
	"encoding/json"
	"io"
	"net/http"
	"reflect"
	"strings"
	"testing"

	"github.com/myelin-chat/myelin/clientapi"
	"github.com/myelin-chat/myelin/internal/testserver"
)

// call sends a request to srv and returns the status and the decoded JSON
// object. path may carry percent-escapes, which are sent as written.
func callRaw(t *testing.T, srv *testserver.Server, method, path, token, body string) (int, map[string]any) {
	t.Helper()
	var reader io.Reader
	if body != "" {
		reader = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, srv.URL+path, reader)
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	var out map[string]any
	if err := json.Unmarshal(raw, &out); err != nil {
		t.Fatalf("%s %s: response %q is not a JSON object", method, path, raw)
	}
	return resp.StatusCode, out
}

// step is one request and the answer the spec asks for.
type step struct {
	name         string
	method, path string
	token        string
	body         string
	wantStatus   int
	wantErrcode  string // checked when non-empty
	wantBody     string // JSON; compared as a value when non-empty
}

func runSteps(t *testing.T, srv *testserver.Server, steps []step) {
	t.Helper()
	for _, st := range steps {
		status, body := callRaw(t, srv, st.method, st.path, st.token, st.body)
		if status != st.wantStatus {
			t.Errorf("%s: %s %s = %d %v, want %d", st.name, st.method, st.path, status, body, st.wantStatus)
			continue
		}
		if st.wantErrcode != "" && body["errcode"] != st.wantErrcode {
			t.Errorf("%s: errcode = %v, want %s (body %v)", st.name, body["errcode"], st.wantErrcode, body)
		}
		if st.wantBody != "" {
			var want map[string]any
			if err := json.Unmarshal([]byte(st.wantBody), &want); err != nil {
				t.Fatalf("%s: bad wantBody: %v", st.name, err)
			}
			if !reflect.DeepEqual(body, want) {
				got, _ := json.Marshal(body)
				t.Errorf("%s: body = %s, want %s", st.name, got, st.wantBody)
			}
		}
	}
}

func TestProfileHTTP(t *testing.T) {
	testserver.ForEachEngine(t, nil, func(t *testing.T, srv *testserver.Server) {
		alice := clientapi.InsertTestUser(t, srv.HS.DB, "alice", false)
		bob := clientapi.InsertTestUser(t, srv.HS.DB, "bob", false)
		guest := clientapi.InsertTestUser(t, srv.HS.DB, "guest1", true)
		const p = "/_matrix/client/v3/profile/"
		big := strings.Repeat("x", 64*1024)

		runSteps(t, srv, []step{
			{name: "empty profile, no token", method: "GET", path: p + "@alice:localhost", wantStatus: 200, wantBody: `{}`},
			{name: "missing field", method: "GET", path: p + "@alice:localhost/displayname", wantStatus: 404, wantErrcode: "M_NOT_FOUND"},
			{name: "unknown user", method: "GET", path: p + "@nobody:localhost", wantStatus: 404, wantErrcode: "M_NOT_FOUND"},
			{name: "unknown user's field", method: "GET", path: p + "@nobody:localhost/displayname", wantStatus: 404, wantErrcode: "M_NOT_FOUND"},
			{name: "remote user", method: "GET", path: p + "@alice:remote.example", wantStatus: 404, wantErrcode: "M_NOT_FOUND"},
			{name: "not a user ID", method: "GET", path: p + "alice", wantStatus: 400, wantErrcode: "M_INVALID_PARAM"},
			{name: "bad token on an optional-auth GET", method: "GET", path: p + "@alice:localhost", token: "mya_nope", wantStatus: 401, wantErrcode: "M_UNKNOWN_TOKEN"},

			{name: "set without token", method: "PUT", path: p + "@alice:localhost/displayname", body: `{"displayname": "Alice"}`, wantStatus: 401, wantErrcode: "M_MISSING_TOKEN"},
			{name: "set displayname", method: "PUT", path: p + "@alice:localhost/displayname", token: alice, body: `{"displayname": "Alice"}`, wantStatus: 200, wantBody: `{}`},
			{name: "get displayname (escaped path)", method: "GET", path: p + "%40alice%3Alocalhost/displayname", wantStatus: 200, wantBody: `{"displayname": "Alice"}`},
			{name: "set avatar_url", method: "PUT", path: p + "@alice:localhost/avatar_url", token: alice, body: `{"avatar_url": "mxc://localhost/SEsfnsuifSDFSSEF"}`, wantStatus: 200},
			{name: "set m.tz", method: "PUT", path: p + "@alice:localhost/m.tz", token: alice, body: `{"m.tz": "Europe/London"}`, wantStatus: 200},
			{name: "set custom field", method: "PUT", path: p + "@alice:localhost/com.example.pets", token: alice, body: `{"com.example.pets": {"cats": 2}}`, wantStatus: 200},
			{name: "whole profile", method: "GET", path: p + "@alice:localhost", token: bob, wantStatus: 200,
				wantBody: `{"displayname": "Alice", "avatar_url": "mxc://localhost/SEsfnsuifSDFSSEF", "m.tz": "Europe/London", "com.example.pets": {"cats": 2}}`},
			{name: "custom field", method: "GET", path: p + "@alice:localhost/com.example.pets", wantStatus: 200, wantBody: `{"com.example.pets": {"cats": 2}}`},

			{name: "someone else's profile", method: "PUT", path: p + "@alice:localhost/displayname", token: bob, body: `{"displayname": "Mallory"}`, wantStatus: 403, wantErrcode: "M_FORBIDDEN"},
			{name: "someone else's field deleted", method: "DELETE", path: p + "@alice:localhost/displayname", token: bob, wantStatus: 403, wantErrcode: "M_FORBIDDEN"},
			{name: "remote profile", method: "PUT", path: p + "@bob:remote.example/displayname", token: bob, body: `{"displayname": "B"}`, wantStatus: 403, wantErrcode: "M_FORBIDDEN"},
			{name: "body without the key", method: "PUT", path: p + "@alice:localhost/displayname", token: alice, body: `{"avatar_url": "mxc://localhost/abc"}`, wantStatus: 400, wantErrcode: "M_MISSING_PARAM"},
			{name: "body not JSON", method: "PUT", path: p + "@alice:localhost/displayname", token: alice, body: `displayname=Alice`, wantStatus: 400, wantErrcode: "M_NOT_JSON"},
			{name: "displayname not a string", method: "PUT", path: p + "@alice:localhost/displayname", token: alice, body: `{"displayname": ["A"]}`, wantStatus: 400, wantErrcode: "M_BAD_JSON"},
			{name: "avatar_url not mxc", method: "PUT", path: p + "@alice:localhost/avatar_url", token: alice, body: `{"avatar_url": "https://example.org/a.png"}`, wantStatus: 400, wantErrcode: "M_BAD_JSON"},
			{name: "key without namespace", method: "PUT", path: p + "@alice:localhost/pronouns", token: alice, body: `{"pronouns": "she/her"}`, wantStatus: 400, wantErrcode: "M_INVALID_PARAM"},
			{name: "key too long", method: "PUT", path: p + "@alice:localhost/com." + strings.Repeat("k", 252), token: alice,
				body: `{"com.` + strings.Repeat("k", 252) + `": 1}`, wantStatus: 400, wantErrcode: "M_KEY_TOO_LARGE"},
			{name: "profile too large", method: "PUT", path: p + "@alice:localhost/com.example.big", token: alice, body: `{"com.example.big": "` + big + `"}`, wantStatus: 400, wantErrcode: "M_PROFILE_TOO_LARGE"},
			{name: "refused field not stored", method: "GET", path: p + "@alice:localhost/com.example.big", wantStatus: 404, wantErrcode: "M_NOT_FOUND"},

			{name: "delete custom field", method: "DELETE", path: p + "@alice:localhost/com.example.pets", token: alice, wantStatus: 200, wantBody: `{}`},
			{name: "deleted field", method: "GET", path: p + "@alice:localhost/com.example.pets", wantStatus: 404, wantErrcode: "M_NOT_FOUND"},
			{name: "delete missing field", method: "DELETE", path: p + "@alice:localhost/com.example.pets", token: alice, wantStatus: 200},
			{name: "delete invalid key", method: "DELETE", path: p + "@alice:localhost/Pets", token: alice, wantStatus: 400, wantErrcode: "M_INVALID_PARAM"},
			{name: "legacy removal with empty avatar_url", method: "PUT", path: p + "@alice:localhost/avatar_url", token: alice, body: `{"avatar_url": ""}`, wantStatus: 200},
			{name: "after removals", method: "GET", path: p + "@alice:localhost", wantStatus: 200, wantBody: `{"displayname": "Alice", "m.tz": "Europe/London"}`},

			{name: "guest sets displayname", method: "PUT", path: p + "@guest1:localhost/displayname", token: guest, body: `{"displayname": "Guest"}`, wantStatus: 200},
			{name: "guest deletes displayname", method: "DELETE", path: p + "@guest1:localhost/displayname", token: guest, wantStatus: 200},
			{name: "guest sets avatar", method: "PUT", path: p + "@guest1:localhost/avatar_url", token: guest, body: `{"avatar_url": "mxc://localhost/abc"}`, wantStatus: 403, wantErrcode: "M_GUEST_ACCESS_FORBIDDEN"},
		})

		// The room component reads profiles through Profile.
		fields, err := srv.HS.ClientAPI.Profile(t.Context(), "@alice:localhost")
		if err != nil || string(fields["displayname"]) != `"Alice"` {
			t.Errorf("Profile = %s, %v", fields, err)
		}
	})
}
