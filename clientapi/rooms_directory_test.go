package clientapi_test

import (
	"fmt"
	"net/url"
	"testing"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/myelin-chat/myelin/internal/testserver"
)

// TestRoomsAliases: alias creation, lookup, listing, deletion rights,
// and m.room.canonical_alias validation.
// Spec: client-server-api, "Room aliases".
func TestRoomsAliases(t *testing.T) {
	testserver.ForEachEngine(t, nil, func(t *testing.T, srv *testserver.Server) {
		alice, bob, carol := newUser(t, srv, "alice"), newUser(t, srv, "bob"), newUser(t, srv, "carol")
		room, err := alice.CreateRoom(bg, &mautrix.ReqCreateRoom{Preset: "public_chat", RoomAliasName: "main"})
		ok(t, "create", err)
		other, err := alice.CreateRoom(bg, &mautrix.ReqCreateRoom{Preset: "public_chat"})
		ok(t, "create other", err)
		_, err = bob.JoinRoomByID(bg, room.RoomID)
		ok(t, "join", err)

		var canonical event.CanonicalAliasEventContent
		ok(t, "canonical alias", alice.StateEvent(bg, room.RoomID, event.StateCanonicalAlias, "", &canonical))
		if canonical.Alias != "#main:localhost" {
			t.Fatalf("canonical alias = %q", canonical.Alias)
		}
		resolved, err := bob.ResolveAlias(bg, "#main:localhost")
		ok(t, "resolve", err)
		if resolved.RoomID != room.RoomID || len(resolved.Servers) != 1 || resolved.Servers[0] != "localhost" {
			t.Fatalf("resolve = %+v", resolved)
		}
		_, err = bob.CreateAlias(bg, "#side:localhost", room.RoomID)
		ok(t, "bob creates an alias", err)
		_, err = carol.CreateAlias(bg, "#side:localhost", other.RoomID)
		wantErrcode(t, "alias exists", err, 409, "M_UNKNOWN")
		_, err = carol.CreateAlias(bg, "#x:elsewhere.example", room.RoomID)
		wantErrcode(t, "alias on another server", err, 400, "M_INVALID_PARAM")
		_, err = carol.CreateAlias(bg, "#y:localhost", "!unknown:localhost")
		wantErrcode(t, "alias for an unknown room", err, 404, "M_NOT_FOUND")

		list, err := bob.GetAliases(bg, room.RoomID)
		ok(t, "aliases", err)
		if len(list.Aliases) != 2 || list.Aliases[0] != "#main:localhost" || list.Aliases[1] != "#side:localhost" {
			t.Fatalf("aliases = %v", list.Aliases)
		}
		_, err = carol.GetAliases(bg, room.RoomID)
		wantErrcode(t, "aliases as non-member", err, 403, "M_FORBIDDEN")

		// canonical_alias must point at the room.
		_, err = alice.SendStateEvent(bg, room.RoomID, event.StateCanonicalAlias, "", map[string]any{
			"alias": "#main:localhost", "alt_aliases": []string{"#side:localhost"}})
		ok(t, "set canonical with alt", err)
		_, err = alice.CreateAlias(bg, "#elsewhere:localhost", other.RoomID)
		ok(t, "alias to other room", err)
		_, err = alice.SendStateEvent(bg, room.RoomID, event.StateCanonicalAlias, "", map[string]any{"alias": "#elsewhere:localhost"})
		wantErrcode(t, "canonical alias of another room", err, 400, "M_BAD_ALIAS")
		_, err = alice.SendStateEvent(bg, room.RoomID, event.StateCanonicalAlias, "", map[string]any{"alias": "not an alias"})
		wantErrcode(t, "malformed canonical alias", err, 400, "M_INVALID_PARAM")
		_, err = alice.SendStateEvent(bg, room.RoomID, event.StateCanonicalAlias, "", map[string]any{"alt_aliases": []string{"#gone:localhost"}})
		wantErrcode(t, "alt alias that does not exist", err, 400, "M_BAD_ALIAS")

		// Deletion: carol (not creator, not in room) may not; bob (creator)
		// may; alice (room admin) may delete bob's too.
		_, err = carol.DeleteAlias(bg, "#side:localhost")
		wantErrcode(t, "delete someone else's alias", err, 403, "M_FORBIDDEN")
		_, err = bob.CreateAlias(bg, "#bobs:localhost", room.RoomID)
		ok(t, "bob's alias", err)
		_, err = bob.DeleteAlias(bg, "#side:localhost")
		ok(t, "creator deletes", err)
		_, err = alice.DeleteAlias(bg, "#bobs:localhost")
		ok(t, "room admin deletes", err)
		_, err = bob.ResolveAlias(bg, "#bobs:localhost")
		wantErrcode(t, "resolve deleted", err, 404, "M_NOT_FOUND")
		_, err = alice.DeleteAlias(bg, "#bobs:localhost")
		wantErrcode(t, "delete twice", err, 404, "M_NOT_FOUND")

		// Deleting an alias takes it out of m.room.canonical_alias when
		// the deleting user may change that event: bob may not (his
		// #side stays in alt_aliases), alice may.
		_, err = alice.CreateAlias(bg, "#alt:localhost", room.RoomID)
		ok(t, "alt alias", err)
		_, err = alice.SendStateEvent(bg, room.RoomID, event.StateCanonicalAlias, "", map[string]any{
			"alias": "#main:localhost", "alt_aliases": []string{"#alt:localhost"}})
		ok(t, "set canonical", err)
		_, err = alice.DeleteAlias(bg, "#alt:localhost")
		ok(t, "delete the alt alias", err)
		var after map[string]any
		ok(t, "canonical after", alice.StateEvent(bg, room.RoomID, event.StateCanonicalAlias, "", &after))
		if len(after) != 1 || after["alias"] != "#main:localhost" {
			t.Fatalf("after deleting the alt alias: %v", after)
		}
		_, err = alice.DeleteAlias(bg, "#main:localhost")
		ok(t, "delete the canonical alias", err)
		after = nil
		ok(t, "canonical emptied", alice.StateEvent(bg, room.RoomID, event.StateCanonicalAlias, "", &after))
		if len(after) != 0 {
			t.Fatalf("after deleting the canonical alias: %v", after)
		}
		_, err = alice.CreateAlias(bg, "#main:localhost", room.RoomID)
		ok(t, "alias again", err)

		// Resolution needs no access token; bad aliases are 400.
		runSteps(t, srv, []step{
			{name: "anonymous resolve", method: "GET", path: "/_matrix/client/v3/directory/room/" + url.PathEscape("#main:localhost"), wantStatus: 200},
			{name: "bad alias", method: "GET", path: "/_matrix/client/v3/directory/room/nohash", wantStatus: 400, wantErrcode: "M_INVALID_PARAM"},
		})
	})
}

// TestRoomsPublicDirectory: publishing, listing, searching and paging
// the published room directory.
// Spec: client-server-api, "Published room directory".
func TestRoomsPublicDirectory(t *testing.T) {
	testserver.ForEachEngine(t, nil, func(t *testing.T, srv *testserver.Server) {
		alice, bob := newUser(t, srv, "alice"), newUser(t, srv, "bob")
		var rooms []id.RoomID
		for i := range 5 {
			r, err := alice.CreateRoom(bg, &mautrix.ReqCreateRoom{Visibility: "public", Preset: "public_chat",
				Name: fmt.Sprintf("Room %d", i), Topic: fmt.Sprintf("topic %d", i)})
			ok(t, "create", err)
			rooms = append(rooms, r.RoomID)
		}
		private, err := alice.CreateRoom(bg, &mautrix.ReqCreateRoom{Preset: "private_chat", Name: "Hidden"})
		ok(t, "create private", err)
		// Bob joins room 3: it becomes the largest and is listed first.
		_, err = bob.JoinRoomByID(bg, rooms[3])
		ok(t, "join", err)

		page1, err := bob.PublicRooms(bg, &mautrix.ReqPublicRooms{Limit: 3})
		ok(t, "publicRooms", err)
		if len(page1.Chunk) != 3 || page1.Chunk[0].RoomID != rooms[3] || page1.Chunk[0].NumJoinedMembers != 2 ||
			page1.Chunk[0].Name != "Room 3" || page1.NextBatch == "" || page1.PrevBatch != "" || page1.TotalRoomCountEstimate != 5 {
			t.Fatalf("page 1 = %+v", page1)
		}
		page2, err := bob.PublicRooms(bg, &mautrix.ReqPublicRooms{Limit: 3, Since: page1.NextBatch})
		ok(t, "publicRooms page 2", err)
		if len(page2.Chunk) != 2 || page2.NextBatch != "" || page2.PrevBatch == "" {
			t.Fatalf("page 2 = %+v", page2)
		}
		seen := map[id.RoomID]bool{}
		for _, r := range append(page1.Chunk, page2.Chunk...) {
			seen[r.RoomID] = true
			if r.JoinRule != "public" || r.GuestCanJoin {
				t.Fatalf("room %s: join_rule %q guest_can_join %v", r.RoomID, r.JoinRule, r.GuestCanJoin)
			}
		}
		if len(seen) != 5 || seen[private.RoomID] {
			t.Fatalf("listed rooms = %v", seen)
		}

		// Filtered search (POST) by name and by topic.
		status, body := callRaw(t, srv, "POST", "/_matrix/client/v3/publicRooms", bob.token, `{"filter": {"generic_search_term": "TOPIC 2"}}`)
		if chunk, _ := body["chunk"].([]any); status != 200 || len(chunk) != 1 || chunk[0].(map[string]any)["room_id"] != rooms[2].String() {
			t.Fatalf("search = %d %v", status, body)
		}

		// Visibility per room, and unpublishing.
		r2 := "/_matrix/client/v3/directory/list/room/" + url.PathEscape(rooms[2].String())
		runSteps(t, srv, []step{
			{name: "published", method: "GET", path: r2, wantStatus: 200, wantBody: `{"visibility": "public"}`},
			{name: "private room", method: "GET", path: "/_matrix/client/v3/directory/list/room/" + url.PathEscape(private.RoomID.String()), wantStatus: 200, wantBody: `{"visibility": "private"}`},
			{name: "unknown room", method: "GET", path: "/_matrix/client/v3/directory/list/room/" + url.PathEscape("!no:localhost"), wantStatus: 404, wantErrcode: "M_NOT_FOUND"},
			{name: "bob cannot unpublish", method: "PUT", path: r2, token: bob.token, body: `{"visibility": "private"}`, wantStatus: 403, wantErrcode: "M_FORBIDDEN"},
			{name: "bad visibility", method: "PUT", path: r2, token: alice.token, body: `{"visibility": "secret"}`, wantStatus: 400, wantErrcode: "M_INVALID_PARAM"},
			{name: "alice unpublishes", method: "PUT", path: r2, token: alice.token, body: `{"visibility": "private"}`, wantStatus: 200},
			{name: "now private", method: "GET", path: r2, wantStatus: 200, wantBody: `{"visibility": "private"}`},
			{name: "anonymous listing", method: "GET", path: "/_matrix/client/v3/publicRooms?limit=10", wantStatus: 200},
			{name: "bad since", method: "GET", path: "/_matrix/client/v3/publicRooms?since=zzz", wantStatus: 400, wantErrcode: "M_INVALID_PARAM"},
		})
		all, err := bob.PublicRooms(bg, &mautrix.ReqPublicRooms{})
		ok(t, "publicRooms after unpublish", err)
		if len(all.Chunk) != 4 {
			t.Fatalf("%d rooms listed after unpublishing one of 5", len(all.Chunk))
		}
	})
}
