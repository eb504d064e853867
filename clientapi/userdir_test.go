package clientapi_test

import (
	"net/http"
	"strings"
	"testing"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/myelin-chat/myelin/internal/testserver"
)

// directorySearch searches the user directory as u and returns the
// "user_id=display_name" of each result, in order, and limited.
func directorySearch(t *testing.T, srv *testserver.Server, u *user, term string, limit int) ([]string, bool) {
	t.Helper()
	body := map[string]any{"search_term": term}
	if limit > 0 {
		body["limit"] = limit
	}
	status, res := jsonCall(t, http.MethodPost, srv.URL+"/_matrix/client/v3/user_directory/search", u.token, body)
	if status != http.StatusOK || !res.Get("limited").Exists() {
		t.Fatalf("search %q: %d %s", term, status, res.Raw)
	}
	var out []string
	for _, r := range res.Get("results").Array() {
		out = append(out, r.Get("user_id").String()+"="+r.Get("display_name").String())
	}
	return out, res.Get("limited").Bool()
}

func wantDirectory(t *testing.T, srv *testserver.Server, u *user, term string, want ...string) {
	t.Helper()
	got, _ := directorySearch(t, srv, u, term, 0)
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Fatalf("%s searching %q: got %v, want %v", u.id, term, got, want)
	}
}

// TestUserDirectory mirrors Complement's TestRoomSpecificUsernameChange
// and TestRoomSpecificUsernameAtJoin: a room-specific display name never
// reaches the directory, and only users sharing a room with the searcher
// or in a public or world-readable room are found.
// Spec: client-server-api, "POST /_matrix/client/v3/user_directory/search".
func TestUserDirectory(t *testing.T) {
	testserver.ForEachEngine(t, nil, func(t *testing.T, srv *testserver.Server) {
		alice, bob, eve := newUser(t, srv, "user-1-alice"), newUser(t, srv, "user-2-bob"), newUser(t, srv, "user-3-eve")
		aliceAs := func(name string) string { return alice.id.String() + "=" + name }
		ok(t, "alice's name", alice.SetDisplayName(bg, "Alice Cooper"))
		public, err := alice.CreateRoom(bg, &mautrix.ReqCreateRoom{Visibility: "public", Preset: "public_chat"})
		ok(t, "alice's public room", err)
		private, err := bob.CreateRoom(bg, &mautrix.ReqCreateRoom{Visibility: "private", Invite: []id.UserID{alice.id}})
		ok(t, "bob's private room", err)
		_, err = alice.JoinRoomByID(bg, private.RoomID)
		ok(t, "alice joins", err)
		_, err = alice.SendStateEvent(bg, private.RoomID, event.StateMember, alice.id.String(),
			map[string]any{"membership": "join", "displayname": "Freddy"})
		ok(t, "room-specific name", err)

		for _, u := range []*user{eve, bob} {
			wantDirectory(t, srv, u, "Alice Cooper", aliceAs("Alice Cooper"))
			wantDirectory(t, srv, u, "@user", aliceAs("Alice Cooper")) // searchers are not their own results
			wantDirectory(t, srv, u, "Freddy")
			wantDirectory(t, srv, u, "coop", aliceAs("Alice Cooper")) // word prefixes match
			wantDirectory(t, srv, u, "ooper")                         // inner substrings do not
		}
		// Bob shares no room with eve and is in no public room.
		wantDirectory(t, srv, alice, "bob", bob.id.String()+"=")
		wantDirectory(t, srv, eve, "bob")

		// In a public room, everyone is findable, the searcher too.
		for _, u := range []*user{bob, eve} {
			_, err := u.JoinRoomByID(bg, public.RoomID)
			ok(t, "join public room", err)
		}
		got, limited := directorySearch(t, srv, eve, "user", 0)
		if len(got) != 3 || limited {
			t.Fatalf("eve searching user: %v limited=%v", got, limited)
		}
		got, limited = directorySearch(t, srv, eve, "user", 2)
		if len(got) != 2 || !limited {
			t.Fatalf("limit 2: %v limited=%v", got, limited)
		}
		// A whole-word match ranks first.
		if got, _ := directorySearch(t, srv, eve, "user bob", 0); len(got) != 1 || got[0] != bob.id.String()+"=" {
			t.Fatalf("user bob: %v", got)
		}

		// A profile change reaches the directory through the member events.
		ok(t, "rename", alice.SetDisplayName(bg, "Alice Smith"))
		wantDirectory(t, srv, bob, "smith", aliceAs("Alice Smith"))
		wantDirectory(t, srv, bob, "cooper")

		// Once alice and eve share no room, eve cannot find her.
		_, err = alice.LeaveRoom(bg, public.RoomID)
		ok(t, "alice leaves", err)
		wantDirectory(t, srv, eve, "alice")
		wantDirectory(t, srv, bob, "alice", aliceAs("Alice Smith"))

		// A world-readable room's members are findable even though it is
		// invite-only.
		carol := newUser(t, srv, "user-4-carol")
		_, err = carol.CreateRoom(bg, &mautrix.ReqCreateRoom{Preset: "private_chat", InitialState: []*event.Event{{
			Type: event.StateHistoryVisibility, StateKey: ptr(""),
			Content: event.Content{Raw: map[string]any{"history_visibility": "world_readable"}},
		}}})
		ok(t, "carol's world-readable room", err)
		wantDirectory(t, srv, eve, "carol", carol.id.String()+"=")

		status, body := call(t, http.MethodPost, srv.URL+"/_matrix/client/v3/user_directory/search", eve.token, map[string]any{"limit": 3})
		expectError(t, "no search_term", status, body, http.StatusBadRequest, "M_BAD_JSON")
	})
}
