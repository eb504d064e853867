package clientapi_test

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/tidwall/gjson"
	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/myelin-chat/myelin/internal/testserver"
)

// hierarchyPage fetches one /hierarchy page as u.
func hierarchyPage(t *testing.T, srv *testserver.Server, u *user, roomID id.RoomID, query string) (int, gjson.Result) {
	t.Helper()
	target := srv.URL + "/_matrix/client/v1/rooms/" + roomID.String() + "/hierarchy"
	if query != "" {
		target += "?" + query
	}
	return jsonCall(t, http.MethodGet, target, u.token, nil)
}

// roomsOf lists the room IDs of a page, in order.
func roomsOf(page gjson.Result) []string {
	var out []string
	for _, r := range page.Get("rooms").Array() {
		out = append(out, r.Get("room_id").String())
	}
	return out
}

// childrenOf lists the children_state state keys of roomID in a page,
// joined by ";" in order.
func childrenOf(page gjson.Result, roomID id.RoomID) string {
	var keys []string
	for _, r := range page.Get("rooms").Array() {
		if r.Get("room_id").String() != roomID.String() {
			continue
		}
		for _, c := range r.Get("children_state").Array() {
			if c.Get("type").String() != "m.space.child" || !c.Get("origin_server_ts").Exists() || !c.Get("sender").Exists() {
				return "malformed: " + c.Raw
			}
			keys = append(keys, c.Get("state_key").String())
		}
	}
	return strings.Join(keys, ";")
}

func joinIDs(ids ...id.RoomID) string {
	s := make([]string, len(ids))
	for i, r := range ids {
		s[i] = r.String()
	}
	return strings.Join(s, ";")
}

// TestSpaceHierarchy mirrors Complement's TestClientSpacesSummary and
// TestClientSpacesSummaryJoinRules:
//
//	      Root
//	  ____|______
//	 |    |      |
//	R1   SS1     R2 (-> R5: ignored, R2 is not a space)
//	      |
//	     SS2
//	    __|__
//	   |     |
//	  R3     R4 (bob's, world-readable)
//
// R1 and R2 are suggested.
// Spec: client-server-api, "GET /_matrix/client/v1/rooms/{roomId}/hierarchy".
func TestSpaceHierarchy(t *testing.T) {
	testserver.ForEachEngine(t, nil, func(t *testing.T, srv *testserver.Server) {
		alice, bob := newUser(t, srv, "alice"), newUser(t, srv, "bob")
		create := func(u *user, name string, space bool, preset string, state ...*event.Event) id.RoomID {
			t.Helper()
			req := &mautrix.ReqCreateRoom{Preset: preset, Name: name, InitialState: state}
			if space {
				req.CreationContent = map[string]any{"type": "m.space"}
			}
			resp, err := u.CreateRoom(bg, req)
			ok(t, "create "+name, err)
			return resp.RoomID
		}
		link := func(u *user, parent, child id.RoomID, content map[string]any) {
			t.Helper()
			// Children without "order" are sorted by the origin_server_ts of
			// their m.space.child event, then by room ID; two links in one
			// millisecond would fall back to the (random) room IDs, so each
			// link gets a millisecond of its own.
			time.Sleep(2 * time.Millisecond)
			_, err := u.SendStateEvent(bg, parent, event.NewEventType("m.space.child"), child.String(), content)
			ok(t, "link", err)
		}
		via := func(suggested bool) map[string]any {
			return map[string]any{"via": []string{"localhost"}, "suggested": suggested}
		}
		root := create(alice, "Root", true, "public_chat")
		r1 := create(alice, "R1", false, "public_chat")
		ss1 := create(alice, "Sub-Space 1", true, "public_chat")
		r2 := create(alice, "R2", false, "public_chat")
		ss2 := create(alice, "SS2", true, "public_chat")
		r3 := create(alice, "R3", false, "public_chat")
		r4 := create(bob, "R4", false, "public_chat", &event.Event{
			Type: event.StateHistoryVisibility, StateKey: ptr(""),
			Content: event.Content{Raw: map[string]any{"history_visibility": "world_readable"}},
		})
		r5 := create(bob, "R5", false, "public_chat")
		link(alice, root, r1, via(true))
		link(alice, root, ss1, via(false))
		link(alice, root, r2, via(true))
		link(alice, r2, r5, via(false))
		link(alice, ss1, ss2, via(false))
		link(alice, ss2, r3, via(false))
		link(alice, ss2, r4, via(false))
		// A child on another server is skipped (no federation hierarchy yet).
		link(alice, ss2, id.RoomID("!elsewhere:remote.example"), map[string]any{"via": []string{"remote.example"}})

		status, page := hierarchyPage(t, srv, alice, root, "")
		want := joinIDs(root, r1, ss1, ss2, r3, r4, r2)
		if status != http.StatusOK || joinIDs(idsOf(roomsOf(page))...) != want || page.Get("next_batch").Exists() {
			t.Fatalf("whole tree: %d %s", status, page.Raw)
		}
		if got := childrenOf(page, root); got != joinIDs(r1, ss1, r2) {
			t.Fatalf("root children_state = %s", got)
		}
		if got := childrenOf(page, ss2); !strings.HasPrefix(got, joinIDs(r3, r4)) {
			t.Fatalf("ss2 children_state = %s", got)
		}
		if got := childrenOf(page, r2); got != "" {
			t.Fatalf("R2 is not a space, yet has children_state %s", got)
		}
		ss1Entry := page.Get(`rooms.#(room_id=="` + ss1.String() + `")`)
		if ss1Entry.Get("room_type").String() != "m.space" || ss1Entry.Get("name").String() != "Sub-Space 1" ||
			ss1Entry.Get("join_rule").String() != "public" || ss1Entry.Get("num_joined_members").Int() != 1 {
			t.Fatalf("ss1 entry = %s", ss1Entry.Raw)
		}
		if !page.Get(`rooms.#(room_id=="` + r4.String() + `").world_readable`).Bool() {
			t.Fatal("R4 is not said to be world-readable")
		}

		_, page = hierarchyPage(t, srv, alice, root, "max_depth=1")
		if got := joinIDs(idsOf(roomsOf(page))...); got != joinIDs(root, r1, ss1, r2) || childrenOf(page, ss1) != ss2.String() {
			t.Fatalf("max_depth=1: %s", page.Raw)
		}
		_, page = hierarchyPage(t, srv, alice, root, "suggested_only=true")
		if got := joinIDs(idsOf(roomsOf(page))...); got != joinIDs(root, r1, r2) || childrenOf(page, root) != joinIDs(r1, r2) {
			t.Fatalf("suggested_only: %s", page.Raw)
		}

		// Pages: the walk goes on where the last page stopped.
		_, page = hierarchyPage(t, srv, alice, root, "limit=4")
		next := page.Get("next_batch").String()
		if got := joinIDs(idsOf(roomsOf(page))...); got != joinIDs(root, r1, ss1, ss2) || next == "" {
			t.Fatalf("page 1: %s", page.Raw)
		}
		_, page = hierarchyPage(t, srv, alice, root, "from="+next)
		if got := joinIDs(idsOf(roomsOf(page))...); got != joinIDs(r3, r4, r2) || page.Get("next_batch").Exists() {
			t.Fatalf("page 2: %s", page.Raw)
		}
		status, page = hierarchyPage(t, srv, alice, root, "from="+next+"&max_depth=1")
		if status != http.StatusBadRequest || page.Get("errcode").String() != "M_INVALID_PARAM" {
			t.Fatalf("changed max_depth: %d %s", status, page.Raw)
		}
		for _, bad := range []string{"limit=0", "max_depth=-1", "suggested_only=maybe", "from=nonsense"} {
			if status, page = hierarchyPage(t, srv, alice, root, bad); status != http.StatusBadRequest {
				t.Fatalf("%s: %d %s", bad, status, page.Raw)
			}
		}

		// Removing a link (empty content) drops the subtree.
		link(alice, root, ss1, map[string]any{})
		_, page = hierarchyPage(t, srv, alice, root, "")
		if got := joinIDs(idsOf(roomsOf(page))...); got != joinIDs(root, r1, r2) || childrenOf(page, root) != joinIDs(r1, r2) {
			t.Fatalf("after unlinking: %s", page.Raw)
		}

		status, page = hierarchyPage(t, srv, alice, id.RoomID("!unknown:localhost"), "")
		if status != http.StatusForbidden || page.Get("errcode").String() != "M_FORBIDDEN" {
			t.Fatalf("unknown room: %d %s", status, page.Raw)
		}
	})
}

// TestSpaceHierarchyJoinRules: rooms the requester may not join or see
// are left out, their links kept. Mirrors Complement's
// TestClientSpacesSummaryJoinRules.
func TestSpaceHierarchyJoinRules(t *testing.T) {
	testserver.ForEachEngine(t, nil, func(t *testing.T, srv *testserver.Server) {
		alice, bob, carol := newUser(t, srv, "alice"), newUser(t, srv, "bob"), newUser(t, srv, "carol")
		create := func(name string, space bool, preset string, state ...*event.Event) id.RoomID {
			t.Helper()
			req := &mautrix.ReqCreateRoom{Preset: preset, Name: name, InitialState: state}
			if space {
				req.CreationContent = map[string]any{"type": "m.space"}
			}
			resp, err := alice.CreateRoom(bg, req)
			ok(t, "create "+name, err)
			return resp.RoomID
		}
		root := create("Root", true, "public_chat")
		r1 := create("R1", false, "private_chat")
		ss1 := create("Sub-Space 1", true, "private_chat")
		r2 := create("R2", false, "public_chat", &event.Event{
			Type: event.StateHistoryVisibility, StateKey: ptr(""),
			Content: event.Content{Raw: map[string]any{"history_visibility": "world_readable"}},
		})
		r3 := create("R3", false, "private_chat")
		for _, l := range [][2]id.RoomID{{root, r1}, {root, ss1}, {ss1, r2}, {ss1, r3}} {
			time.Sleep(2 * time.Millisecond) // distinct origin_server_ts: see TestSpaceHierarchy
			_, err := alice.SendStateEvent(bg, l[0], event.NewEventType("m.space.child"), l[1].String(), map[string]any{"via": []string{"localhost"}})
			ok(t, "link", err)
		}
		_, err := bob.JoinRoomByID(bg, root)
		ok(t, "bob joins root", err)

		check := func(what string, want ...id.RoomID) {
			t.Helper()
			status, page := hierarchyPage(t, srv, bob, root, "")
			if status != http.StatusOK || joinIDs(idsOf(roomsOf(page))...) != joinIDs(want...) || childrenOf(page, root) != joinIDs(r1, ss1) {
				t.Fatalf("%s: %d %s", what, status, page.Raw)
			}
		}
		check("bob in root only", root)
		for _, r := range []id.RoomID{r1, r3} {
			_, err := alice.InviteUser(bg, r, &mautrix.ReqInviteUser{UserID: bob.id})
			ok(t, "invite", err)
		}
		check("invited to R1 and R3", root, r1)
		_, err = alice.InviteUser(bg, ss1, &mautrix.ReqInviteUser{UserID: bob.id})
		ok(t, "invite to SS1", err)
		check("invited to SS1", root, r1, ss1, r2, r3)

		// A private space the requester is not in: 403.
		status, page := hierarchyPage(t, srv, carol, ss1, "")
		if status != http.StatusForbidden || page.Get("errcode").String() != "M_FORBIDDEN" {
			t.Fatalf("carol on a private space: %d %s", status, page.Raw)
		}
		// Banned from a public space: 403 as well.
		_, err = alice.BanUser(bg, root, &mautrix.ReqBanUser{UserID: carol.id})
		ok(t, "ban carol", err)
		if status, page = hierarchyPage(t, srv, carol, root, ""); status != http.StatusForbidden {
			t.Fatalf("banned carol: %d %s", status, page.Raw)
		}
	})
}

func idsOf(ids []string) []id.RoomID {
	out := make([]id.RoomID, len(ids))
	for i, s := range ids {
		out[i] = id.RoomID(s)
	}
	return out
}
