package clientapi

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/go-chi/chi/v5"

	"github.com/myelin-chat/myelin/config"
	"github.com/myelin-chat/myelin/internal/mxerr"
	"github.com/myelin-chat/myelin/storage"
	"github.com/myelin-chat/myelin/storage/storagetest"
)

// newUserDataServer builds a clientapi Server for server name "test" on db.
func newUserDataServer(t *testing.T, db *storage.DB, notify func(string, int64)) *Server {
	t.Helper()
	cfg := config.Defaults()
	cfg.Global.ServerName = "test"
	s, err := New(context.Background(), Deps{Config: &cfg, DB: db, Notify: notify})
	if err != nil {
		t.Fatalf("clientapi.New: %v", err)
	}
	return s
}

// serveOnce sends one request through s's routes and returns the status
// and the decoded body.
func serveOnce(t *testing.T, s *Server, method, path, token, body string) (int, map[string]any) {
	t.Helper()
	r := chi.NewRouter()
	s.Routes(r)
	req := httptest.NewRequest(method, path, strings.NewReader(body))
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	rec := httptest.NewRecorder()
	r.ServeHTTP(rec, req)
	var out map[string]any
	if err := json.Unmarshal(rec.Body.Bytes(), &out); err != nil {
		t.Fatalf("%s %s: response %q is not a JSON object: %v", method, path, rec.Body.String(), err)
	}
	return rec.Code, out
}

func TestValidateProfileKey(t *testing.T) {
	tests := []struct {
		key  string
		want mxerr.Code // "" for valid
	}{
		{"displayname", ""},
		{"avatar_url", ""},
		{"m.tz", ""},
		{"m.example_field", ""},
		{"com.example.pronouns", ""},
		{"us.cloke.msc4175.tz", ""},
		{"pronouns", mxerr.InvalidParam}, // custom keys need a namespace
		{"Com.example.x", mxerr.InvalidParam},
		{"com.example-x.y", mxerr.InvalidParam},
		{"com..example", mxerr.InvalidParam},
		{"com.example.", mxerr.InvalidParam},
		{"", mxerr.InvalidParam},
		{"com." + strings.Repeat("a", 251), ""}, // 255 bytes
		{"com." + strings.Repeat("a", 252), errKeyTooLarge},
	}
	for _, tt := range tests {
		err := validateProfileKey(tt.key)
		if tt.want == "" {
			if err != nil {
				t.Errorf("validateProfileKey(%q) = %v, want nil", tt.key, err)
			}
			continue
		}
		if !mxerr.Is(err, tt.want) {
			t.Errorf("validateProfileKey(%q) = %v, want %s", tt.key, err, tt.want)
		}
	}
}

func TestProfileValue(t *testing.T) {
	tests := []struct {
		key, raw   string
		want       string // compacted value when valid
		wantRemove bool
		wantErr    mxerr.Code
	}{
		{key: "displayname", raw: `"Alice"`, want: `"Alice"`},
		{key: "displayname", raw: `""`, wantRemove: true},
		{key: "displayname", raw: `null`, wantErr: mxerr.BadJSON},
		{key: "displayname", raw: `42`, wantErr: mxerr.BadJSON},
		{key: "displayname", raw: `"` + strings.Repeat("é", 256) + `"`, want: `"` + strings.Repeat("é", 256) + `"`},
		{key: "displayname", raw: `"` + strings.Repeat("é", 257) + `"`, wantErr: mxerr.InvalidParam},
		{key: "avatar_url", raw: `"mxc://example.org/SEsfnsuifSDFSSEF"`, want: `"mxc://example.org/SEsfnsuifSDFSSEF"`},
		{key: "avatar_url", raw: `"mxc://localhost:8448/a_b-C"`, want: `"mxc://localhost:8448/a_b-C"`},
		{key: "avatar_url", raw: `""`, wantRemove: true},
		{key: "avatar_url", raw: `"https://example.org/a.png"`, wantErr: mxerr.BadJSON},
		{key: "avatar_url", raw: `"mxc://example.org/"`, wantErr: mxerr.BadJSON},
		{key: "avatar_url", raw: `"mxc:///abc"`, wantErr: mxerr.BadJSON},
		{key: "avatar_url", raw: `"mxc://example.org/a/b"`, wantErr: mxerr.BadJSON},
		{key: "avatar_url", raw: `{"url": "mxc://example.org/abc"}`, wantErr: mxerr.BadJSON},
		{key: "m.tz", raw: `"Europe/London"`, want: `"Europe/London"`},
		{key: "m.tz", raw: `["Europe/London"]`, wantErr: mxerr.BadJSON},
		{key: "com.example.data", raw: `{ "a" : [1, 2, {"b": null}] }`, want: `{"a":[1,2,{"b":null}]}`},
		{key: "com.example.data", raw: `null`, want: `null`},
		{key: "com.example.data", raw: `false`, want: `false`},
	}
	for _, tt := range tests {
		value, remove, err := profileValue(tt.key, json.RawMessage(tt.raw))
		switch {
		case tt.wantErr != "":
			if !mxerr.Is(err, tt.wantErr) {
				t.Errorf("profileValue(%s, %s) error = %v, want %s", tt.key, tt.raw, err, tt.wantErr)
			}
		case err != nil:
			t.Errorf("profileValue(%s, %s) error = %v", tt.key, tt.raw, err)
		case remove != tt.wantRemove || string(value) != tt.want:
			t.Errorf("profileValue(%s, %s) = %s, remove=%v; want %s, remove=%v", tt.key, tt.raw, value, remove, tt.want, tt.wantRemove)
		}
	}
}

func TestProfileStore(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		ctx := context.Background()
		s := newUserDataServer(t, db, nil)
		InsertTestUser(t, db, "alice", false)

		fields, err := s.Profile(ctx, "@alice:test")
		if err != nil || len(fields) != 0 {
			t.Fatalf("Profile of a user without profile rows = %v, %v; want empty", fields, err)
		}
		if _, err := s.Profile(ctx, "@nobody:test"); !mxerr.Is(err, mxerr.NotFound) {
			t.Errorf("Profile(@nobody:test) error = %v, want M_NOT_FOUND", err)
		}
		if _, err := s.Profile(ctx, "@alice:elsewhere.example"); !mxerr.Is(err, mxerr.NotFound) {
			t.Errorf("Profile of a remote user error = %v, want M_NOT_FOUND", err)
		}

		changed, err := s.storeProfileField(ctx, "alice", "displayname", json.RawMessage(`"Alice"`))
		if err != nil || !changed {
			t.Fatalf("storeProfileField = %v, %v; want changed", changed, err)
		}
		changed, err = s.storeProfileField(ctx, "alice", "displayname", json.RawMessage(`"Alice"`))
		if err != nil || changed {
			t.Errorf("storing the same value again: changed = %v, %v; want false", changed, err)
		}
		if _, err := s.storeProfileField(ctx, "alice", "com.example.n", json.RawMessage(`7`)); err != nil {
			t.Fatal(err)
		}
		fields, err = s.Profile(ctx, "@alice:test")
		if err != nil {
			t.Fatal(err)
		}
		if got, _ := json.Marshal(fields); string(got) != `{"com.example.n":7,"displayname":"Alice"}` {
			t.Errorf("Profile = %s", got)
		}

		// The whole profile's JSON must stay under 64 KiB. The profile is
		// now {"com.example.n":7,"displayname":"Alice"} (41 bytes); adding
		// ,"com.example.big":"…" adds 20 bytes plus the string.
		base := len(`{"com.example.n":7,"displayname":"Alice"}`) + len(`,"com.example.big":""`)
		fits := `"` + strings.Repeat("x", maxProfileSize-1-base) + `"`
		if _, err := s.storeProfileField(ctx, "alice", "com.example.big", json.RawMessage(fits)); err != nil {
			t.Fatalf("a profile of %d bytes was refused: %v", maxProfileSize-1, err)
		}
		tooBig := `"` + strings.Repeat("x", maxProfileSize-base) + `"`
		if _, err := s.storeProfileField(ctx, "alice", "com.example.big", json.RawMessage(tooBig)); !mxerr.Is(err, errProfileTooLarge) {
			t.Fatalf("a profile of %d bytes: error = %v, want M_PROFILE_TOO_LARGE", maxProfileSize, err)
		}
		if v, found, err := s.loadProfileField(ctx, "alice", "com.example.big"); err != nil || !found || string(v) != fits {
			t.Errorf("after a refused write the field changed (found=%v, err=%v, len=%d)", found, err, len(v))
		}

		changed, err = s.deleteProfileFieldRow(ctx, "alice", "displayname")
		if err != nil || !changed {
			t.Errorf("deleting a set field: changed = %v, %v", changed, err)
		}
		changed, err = s.deleteProfileFieldRow(ctx, "alice", "displayname")
		if err != nil || changed {
			t.Errorf("deleting a missing field: changed = %v, %v; want false, nil", changed, err)
		}
		if _, found, err := s.loadProfileField(ctx, "alice", "displayname"); err != nil || found {
			t.Errorf("deleted field: found = %v, err = %v", found, err)
		}
		if _, _, err := s.loadProfileField(ctx, "nobody", "displayname"); !mxerr.Is(err, mxerr.NotFound) {
			t.Errorf("loadProfileField of an unknown user = %v, want M_NOT_FOUND", err)
		}
	})
}

// TestProfileChangeHook checks that the hook for m.room.member updates
// runs after displayname and avatar_url changes, and only then.
func TestProfileChangeHook(t *testing.T) {
	db := storagetest.OpenSQLite(t)
	s := newUserDataServer(t, db, nil)
	token := InsertTestUser(t, db, "alice", false)
	var calls []string
	s.onProfileChange = func(_ context.Context, userID string) { calls = append(calls, userID) }

	steps := []struct {
		method, path, body string
		wantCalls          int
	}{
		{http.MethodPut, "/_matrix/client/v3/profile/@alice:test/displayname", `{"displayname": "Alice"}`, 1},
		{http.MethodPut, "/_matrix/client/v3/profile/@alice:test/displayname", `{"displayname": "Alice"}`, 1}, // unchanged
		{http.MethodPut, "/_matrix/client/v3/profile/@alice:test/avatar_url", `{"avatar_url": "mxc://test/abc"}`, 2},
		{http.MethodPut, "/_matrix/client/v3/profile/@alice:test/m.tz", `{"m.tz": "Europe/Paris"}`, 2},
		{http.MethodPut, "/_matrix/client/v3/profile/@alice:test/com.example.x", `{"com.example.x": 1}`, 2},
		{http.MethodDelete, "/_matrix/client/v3/profile/@alice:test/avatar_url", ``, 3},
		{http.MethodDelete, "/_matrix/client/v3/profile/@alice:test/avatar_url", ``, 3}, // already gone
		{http.MethodPut, "/_matrix/client/v3/profile/@alice:test/displayname", `{"displayname": ""}`, 4},
	}
	for _, step := range steps {
		status, body := serveOnce(t, s, step.method, step.path, token, step.body)
		if status != http.StatusOK {
			t.Fatalf("%s %s = %d %v", step.method, step.path, status, body)
		}
		if len(calls) != step.wantCalls {
			t.Fatalf("after %s %s %s: %d hook calls, want %d", step.method, step.path, step.body, len(calls), step.wantCalls)
		}
	}
	for _, c := range calls {
		if c != "@alice:test" {
			t.Errorf("hook called for %q, want @alice:test", c)
		}
	}
}
