package clientapi_test

import (
	"fmt"
	"net/url"
	"slices"
	"testing"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/myelin-chat/myelin/internal/testserver"
)

// These tests pin answers Complement (the Matrix compliance suite)
// checks; each names the Complement test it mirrors.

// TestNonMemberReadsAreForbidden: reading a room's history or members
// without being (or having been, and not forgotten) a member is 403
// M_FORBIDDEN, also for rooms the server does not know, and also for the
// legacy r0 paths.
// Spec: client-server-api, GET /rooms/{roomId}/messages ("403: You
// aren't a member of the room"), POST /rooms/{roomId}/forget, GET
// /rooms/{roomId}/joined_members; MSC2844 (r0 re-versioned as v3).
// Complement: TestFetchMessagesFromNonExistentRoom, TestJumpToDateEndpoint
// "should not be able to query a private/public room you are not a member
// of", TestRoomState "joined_members is forbidden after leaving room",
// TestRoomForget "Forgotten room messages cannot be paginated".
func TestNonMemberReadsAreForbidden(t *testing.T) {
	testserver.ForEachEngine(t, nil, func(t *testing.T, srv *testserver.Server) {
		alice, bob := newUser(t, srv, "alice"), newUser(t, srv, "bob")
		v3 := srv.URL + "/_matrix/client/v3/rooms/"

		st, body := call(t, "GET", v3+url.PathEscape("!does-not-exist:localhost")+"/messages?dir=b", alice.token, nil)
		expectError(t, "messages of an unknown room", st, body, 403, "M_FORBIDDEN")

		for _, preset := range []string{"private_chat", "public_chat"} {
			created, err := alice.CreateRoom(bg, &mautrix.ReqCreateRoom{Preset: preset})
			ok(t, "createRoom", err)
			room := url.PathEscape(created.RoomID.String())
			st, body = call(t, "GET", srv.URL+"/_matrix/client/v1/rooms/"+room+"/timestamp_to_event?ts=0&dir=f", bob.token, nil)
			expectError(t, preset+": timestamp_to_event as a stranger", st, body, 403, "M_FORBIDDEN")
			st, body = call(t, "GET", srv.URL+"/_matrix/client/v1/rooms/"+room+"/timestamp_to_event?ts=0&dir=f", alice.token, nil)
			if st != 200 || body["event_id"] == nil {
				t.Fatalf("%s: timestamp_to_event as the creator: %d %v", preset, st, body)
			}
		}

		// joined_members after leaving, on the r0 path Complement uses.
		created, err := alice.CreateRoom(bg, &mautrix.ReqCreateRoom{})
		ok(t, "createRoom", err)
		room := url.PathEscape(created.RoomID.String())
		st, body = call(t, "GET", srv.URL+"/_matrix/client/r0/rooms/"+room+"/joined_members", alice.token, nil)
		if st != 200 || body["joined"] == nil {
			t.Fatalf("r0 joined_members as a member: %d %v", st, body)
		}
		_, err = alice.LeaveRoom(bg, created.RoomID)
		ok(t, "leave", err)
		st, body = call(t, "GET", srv.URL+"/_matrix/client/r0/rooms/"+room+"/joined_members", alice.token, nil)
		expectError(t, "r0 joined_members after leaving", st, body, 403, "M_FORBIDDEN")

		// A former member still pages up to the leave; after forgetting,
		// not at all, whatever the parameters.
		created, err = alice.CreateRoom(bg, &mautrix.ReqCreateRoom{Preset: "public_chat"})
		ok(t, "createRoom", err)
		_, err = bob.JoinRoomByID(bg, created.RoomID)
		ok(t, "bob joins", err)
		_, err = alice.SendText(bg, created.RoomID, "Hello world!")
		ok(t, "send", err)
		_, err = alice.LeaveRoom(bg, created.RoomID)
		ok(t, "leave", err)
		room = url.PathEscape(created.RoomID.String())
		st, body = call(t, "GET", v3+room+"/messages?dir=b", alice.token, nil)
		if st != 200 || len(body["chunk"].([]any)) == 0 {
			t.Fatalf("messages after leaving: %d %v", st, body)
		}
		st, body = call(t, "POST", v3+room+"/forget", alice.token, map[string]any{})
		if st != 200 {
			t.Fatalf("forget: %d %v", st, body)
		}
		st, body = call(t, "GET", v3+room+"/messages", alice.token, nil)
		expectError(t, "messages of a forgotten room (no dir)", st, body, 403, "M_FORBIDDEN")
		st, body = call(t, "GET", v3+room+"/messages?dir=b", alice.token, nil)
		expectError(t, "messages of a forgotten room", st, body, 403, "M_FORBIDDEN")
		st, body = call(t, "GET", v3+room+"/state", alice.token, nil)
		expectError(t, "state of a forgotten room", st, body, 403, "M_FORBIDDEN")
	})
}

// TestRoomMembersAt: GET /members?at= answers the members at that point:
// with a sync prev_batch from before bob joined, alice alone, also when
// that prev_batch lies before the room's create event (a timeline of
// the whole room), which reads as the room as created.
// Spec: client-server-api, GET /rooms/{roomId}/members ("at: The point in
// time (pagination token) to return members for in the room. This token
// can be obtained from a prev_batch token returned for each room by the
// sync API"). Complement: TestGetRoomMembersAtPoint.
func TestRoomMembersAt(t *testing.T) {
	testserver.ForEachEngine(t, nil, func(t *testing.T, srv *testserver.Server) {
		alice, bob := newUser(t, srv, "alice"), newUser(t, srv, "bob")
		created, err := alice.CreateRoom(bg, &mautrix.ReqCreateRoom{Preset: "public_chat"})
		ok(t, "createRoom", err)
		roomID := created.RoomID
		_, err = alice.SendText(bg, roomID, "Hello world!")
		ok(t, "send", err)
		// A timeline of one event: prev_batch is just before the message.
		resp, err := alice.SyncRequest(bg, 0, "", `{"room":{"timeline":{"limit":1}}}`, false, "")
		ok(t, "sync", err)
		prevBatch := resp.Rooms.Join[roomID].Timeline.PrevBatch
		nextBatch := resp.NextBatch
		// The whole room: prev_batch is before the create event.
		full, err := alice.SyncRequest(bg, 0, "", "", false, "")
		ok(t, "sync", err)
		beforeAll := full.Rooms.Join[roomID].Timeline.PrevBatch
		_, err = bob.JoinRoomByID(bg, roomID)
		ok(t, "bob joins", err)
		_, err = bob.SendText(bg, roomID, "Hello back")
		ok(t, "send", err)

		base := srv.URL + "/_matrix/client/v3/rooms/" + url.PathEscape(roomID.String()) + "/members"
		members := func(at string) []string {
			st, body := call(t, "GET", base+"?at="+url.QueryEscape(at), alice.token, nil)
			if st != 200 {
				t.Fatalf("members?at=%s: %d %v", at, st, body)
			}
			var out []string
			for _, e := range body["chunk"].([]any) {
				ev := e.(map[string]any)
				if ev["room_id"] != roomID.String() {
					t.Fatalf("member event of another room: %v", ev)
				}
				out = append(out, ev["state_key"].(string))
			}
			return out
		}
		for _, at := range []string{prevBatch, nextBatch, beforeAll} {
			if got := members(at); len(got) != 1 || got[0] != alice.id.String() {
				t.Fatalf("members at %s = %v, want alice alone", at, got)
			}
		}
		st, body := call(t, "GET", base+"?at=nonsense", alice.token, nil)
		expectError(t, "members at a malformed token", st, body, 400, "M_INVALID_PARAM")
		if got := members(""); len(got) != 2 {
			t.Fatalf("current members = %v, want alice and bob", got)
		}
	})
}

// TestSyncTokensPaginate: a /sync next_batch is a valid from of
// /messages (both ways) and of /relations.
// Spec: client-server-api, GET /rooms/{roomId}/messages (from "can be a
// prev_batch or next_batch token returned by /sync"), GET
// /rooms/{roomId}/relations/... (from "or a next_batch token from
// /sync"). Complement: TestSendAndFetchMessage, TestLeftRoomFixture
// "Can get rooms/{roomId}/messages for a departed room" and "Getting
// messages going forward is limited for a departed room",
// TestRelationsPaginationSync.
func TestSyncTokensPaginate(t *testing.T) {
	testserver.ForEachEngine(t, nil, func(t *testing.T, srv *testserver.Server) {
		alice, bob := newUser(t, srv, "alice"), newUser(t, srv, "bob")
		created, err := alice.CreateRoom(bg, &mautrix.ReqCreateRoom{Preset: "public_chat",
			InitialState: []*event.Event{{Type: event.StateHistoryVisibility, StateKey: new(string),
				Content: event.Content{Raw: map[string]any{"history_visibility": "joined"}}}}})
		ok(t, "createRoom", err)
		roomID := created.RoomID
		_, err = bob.JoinRoomByID(bg, roomID)
		ok(t, "join", err)
		_, err = alice.SendText(bg, roomID, "M1")
		ok(t, "send", err)
		_, err = alice.SendText(bg, roomID, "M2")
		ok(t, "send", err)
		_, err = bob.LeaveRoom(bg, roomID)
		ok(t, "leave", err)
		resp, err := bob.SyncRequest(bg, 0, "", "", false, "")
		ok(t, "sync", err)
		since := resp.NextBatch
		_, err = alice.SendText(bg, roomID, "M3 after bob left")
		ok(t, "send", err)

		base := srv.URL + "/_matrix/client/v3/rooms/" + url.PathEscape(roomID.String()) + "/messages?from=" + url.QueryEscape(since)
		st, body := call(t, "GET", base+"&dir=b&limit=3", bob.token, nil)
		if st != 200 {
			t.Fatalf("messages back from a sync token: %d %v", st, body)
		}
		var got []string
		for _, e := range body["chunk"].([]any) {
			ev := e.(map[string]any)
			c := ev["content"].(map[string]any)
			got = append(got, fmt.Sprint(ev["type"], "|", c["body"], c["membership"]))
		}
		want := []string{"m.room.member|<nil>leave", "m.room.message|M2<nil>", "m.room.message|M1<nil>"}
		if !slices.Equal(got, want) {
			t.Fatalf("messages back from bob's sync token = %v, want %v", got, want)
		}
		st, body = call(t, "GET", base+"&dir=f&limit=100", bob.token, nil)
		if st != 200 || len(body["chunk"].([]any)) != 0 {
			t.Fatalf("messages forward from a departed member's sync token: %d %v", st, body)
		}
		st, body = call(t, "GET", base+"&dir=f&limit=100", alice.token, nil)
		if st != 200 || len(body["chunk"].([]any)) != 1 {
			t.Fatalf("messages forward from a sync token, as a member: %d %v", st, body)
		}

		// Relations after a sync token, forwards.
		root, err := alice.SendText(bg, roomID, "root")
		ok(t, "send root", err)
		reply := func(body string) id.EventID {
			r, err := alice.SendMessageEvent(bg, roomID, event.EventMessage, map[string]any{
				"msgtype": "m.text", "body": body,
				"m.relates_to": map[string]any{"rel_type": "m.thread", "event_id": root.EventID}})
			ok(t, "send reply", err)
			return r.EventID
		}
		reply("before")
		resp, err = alice.SyncRequest(bg, 0, "", "", false, "")
		ok(t, "sync", err)
		after := []id.EventID{reply("after 1"), reply("after 2"), reply("after 3")}
		rel := srv.URL + "/_matrix/client/v1/rooms/" + url.PathEscape(roomID.String()) + "/relations/" +
			url.PathEscape(root.EventID.String()) + "?dir=f&limit=2&from="
		st, body = call(t, "GET", rel+url.QueryEscape(resp.NextBatch), alice.token, nil)
		if st != 200 {
			t.Fatalf("relations from a sync token: %d %v", st, body)
		}
		ids := func(body map[string]any) []id.EventID {
			var out []id.EventID
			for _, e := range body["chunk"].([]any) {
				out = append(out, id.EventID(e.(map[string]any)["event_id"].(string)))
			}
			return out
		}
		if got := ids(body); !slices.Equal(got, after[:2]) {
			t.Fatalf("relations page 1 = %v, want %v", got, after[:2])
		}
		st, body = call(t, "GET", rel+url.QueryEscape(body["next_batch"].(string)), alice.token, nil)
		if got := ids(body); st != 200 || !slices.Equal(got, after[2:]) {
			t.Fatalf("relations page 2 = %d %v, want %v", st, got, after[2:])
		}
	})
}

// TestJoinContentAndIdempotence: extra keys of the join body go into the
// member event; joining again with nothing new sends no event; a
// joined_members entry always has display_name and avatar_url.
// Spec: client-server-api, POST /join/{roomIdOrAlias}, GET
// /rooms/{roomId}/joined_members. Complement: TestRoomMembers "POST
// /join/:room_id can join a room with custom content" (and :room_alias),
// TestRoomCreationReportsEventsToMyself "Joining room twice is
// idempotent", TestRoomState "joined_members fetches my membership".
func TestJoinContentAndIdempotence(t *testing.T) {
	testserver.ForEachEngine(t, nil, func(t *testing.T, srv *testserver.Server) {
		alice, bob := newUser(t, srv, "alice"), newUser(t, srv, "bob")
		created, err := alice.CreateRoom(bg, &mautrix.ReqCreateRoom{Preset: "public_chat", RoomAliasName: "hello"})
		ok(t, "createRoom", err)
		roomID := created.RoomID
		for _, target := range []string{"#hello:localhost", roomID.String()} {
			st, body := call(t, "POST", srv.URL+"/_matrix/client/v3/join/"+url.PathEscape(target), bob.token,
				map[string]any{"foo": "bar", "membership": "leave", "join_authorised_via_users_server": "@alice:localhost"})
			if st != 200 || body["room_id"] != roomID.String() {
				t.Fatalf("join %s: %d %v", target, st, body)
			}
			var content map[string]any
			ok(t, "member state", bob.StateEvent(bg, roomID, event.StateMember, bob.id.String(), &content))
			if content["foo"] != "bar" || content["membership"] != "join" || content["join_authorised_via_users_server"] != nil {
				t.Fatalf("member content after joining %s = %v", target, content)
			}
			_, err = bob.LeaveRoom(bg, roomID)
			ok(t, "leave", err)
		}

		memberID := func() string {
			state, err := bob.State(bg, roomID)
			ok(t, "state", err)
			return state[event.StateMember][bob.id.String()].ID.String()
		}
		_, err = bob.JoinRoomByID(bg, roomID)
		ok(t, "join", err)
		first := memberID()
		_, err = bob.JoinRoomByID(bg, roomID)
		ok(t, "join again", err)
		if again := memberID(); again != first {
			t.Fatalf("joining twice sent a new member event: %s, then %s", first, again)
		}
		// New content is a change: a new event.
		st, body := call(t, "POST", srv.URL+"/_matrix/client/v3/rooms/"+url.PathEscape(roomID.String())+"/join", bob.token,
			map[string]any{"foo": "baz"})
		if st != 200 {
			t.Fatalf("join with new content: %d %v", st, body)
		}
		var content map[string]any
		ok(t, "member state", bob.StateEvent(bg, roomID, event.StateMember, bob.id.String(), &content))
		if content["foo"] != "baz" || memberID() == first {
			t.Fatalf("member after joining with new content: %v", content)
		}
		ok(t, "displayname", bob.SetDisplayName(bg, "Bob"))

		eventually(t, "bob's new name in the room", func() bool {
			var c map[string]any
			return bob.StateEvent(bg, roomID, event.StateMember, bob.id.String(), &c) == nil && c["displayname"] == "Bob"
		})
		st, body = call(t, "GET", srv.URL+"/_matrix/client/v3/rooms/"+url.PathEscape(roomID.String())+"/joined_members", alice.token, nil)
		if st != 200 {
			t.Fatalf("joined_members: %d %v", st, body)
		}
		me, _ := body["joined"].(map[string]any)[alice.id.String()].(map[string]any)
		if _, has := me["display_name"]; !has {
			t.Fatalf("joined_members entry without display_name: %v", body)
		}
		if _, has := me["avatar_url"]; !has {
			t.Fatalf("joined_members entry without avatar_url: %v", body)
		}
		if b := body["joined"].(map[string]any)[bob.id.String()].(map[string]any); b["display_name"] != "Bob" {
			t.Fatalf("bob's joined_members entry = %v", b)
		}
	})
}

// TestCreatorsAndCreateEventAreMalformed: in room version 12 a power
// levels event listing a room creator (the create event's sender or an
// additional creator) is a malformed request, 400 M_BAD_JSON, not a
// permission failure; before v12 the creator may be listed. Sending
// m.room.create into an existing room is 400 in every version.
// Spec: rooms/v12 ("Room creators have infinitely high power level and
// cannot be specified in the m.room.power_levels event"); client-server-
// api, PUT /rooms/{roomId}/state/... ("400: The sender's request is
// malformed"). Complement: TestMSC4289PrivilegedRoomCreators "creator
// cannot set self in PL event", TestMSC4289PrivilegedRoomCreators_Additional,
// TestMSC4291RoomIDAsHashOfCreateEvent_CannotSendCreateEvent.
func TestCreatorsAndCreateEventAreMalformed(t *testing.T) {
	testserver.ForEachEngine(t, nil, func(t *testing.T, srv *testserver.Server) {
		alice, bob := newUser(t, srv, "alice"), newUser(t, srv, "bob")
		put := func(roomID id.RoomID, eventType string, content map[string]any) (int, map[string]any) {
			return call(t, "PUT", srv.URL+"/_matrix/client/v3/rooms/"+url.PathEscape(roomID.String())+"/state/"+eventType+"/", alice.token, content)
		}
		v12, err := alice.CreateRoom(bg, &mautrix.ReqCreateRoom{RoomVersion: "12",
			CreationContent: map[string]any{"additional_creators": []string{bob.id.String()}}})
		ok(t, "createRoom v12", err)
		for _, who := range []id.UserID{alice.id, bob.id} {
			st, body := put(v12.RoomID, "m.room.power_levels", map[string]any{"users": map[string]any{who.String(): 100}})
			expectError(t, "v12 power levels listing creator "+who.String(), st, body, 400, "M_BAD_JSON")
		}
		st, body := put(v12.RoomID, "m.room.power_levels", map[string]any{"users": map[string]any{"@carol:localhost": 50}})
		if st != 200 {
			t.Fatalf("v12 power levels without creators: %d %v", st, body)
		}

		v11, err := alice.CreateRoom(bg, &mautrix.ReqCreateRoom{RoomVersion: "11"})
		ok(t, "createRoom v11", err)
		st, body = put(v11.RoomID, "m.room.power_levels", map[string]any{"users": map[string]any{alice.id.String(): 100}})
		if st != 200 {
			t.Fatalf("v11 power levels listing the creator: %d %v", st, body)
		}

		for _, room := range []id.RoomID{v11.RoomID, v12.RoomID} {
			st, body = put(room, "m.room.create", map[string]any{"room_version": "12", "entropy": 100})
			expectError(t, "m.room.create into "+room.String(), st, body, 400, "M_BAD_JSON")
		}
	})
}

// TestUnsignedMembership: events carry the caller's membership at the
// event (after it), "leave" before they joined, on /messages, /event,
// /context and the /sync timeline.
// Spec: client-server-api, "Room Event Format", unsigned.membership
// (MSC4115). Complement: TestMembershipOnEvents.
func TestUnsignedMembership(t *testing.T) {
	testserver.ForEachEngine(t, nil, func(t *testing.T, srv *testserver.Server) {
		alice, bob := newUser(t, srv, "alice"), newUser(t, srv, "bob")
		created, err := alice.CreateRoom(bg, &mautrix.ReqCreateRoom{Preset: "public_chat"})
		ok(t, "createRoom", err)
		roomID := created.RoomID
		pre, err := alice.SendText(bg, roomID, "prejoin")
		ok(t, "send", err)
		_, err = bob.JoinRoomByID(bg, roomID)
		ok(t, "join", err)
		post, err := alice.SendText(bg, roomID, "postjoin")
		ok(t, "send", err)
		want := map[id.EventID]string{pre.EventID: "leave", post.EventID: "join"}

		membershipOf := func(ev map[string]any) any {
			u, _ := ev["unsigned"].(map[string]any)
			return u["membership"]
		}
		room := srv.URL + "/_matrix/client/v3/rooms/" + url.PathEscape(roomID.String())
		for evID, m := range want {
			st, body := call(t, "GET", room+"/event/"+url.PathEscape(evID.String()), bob.token, nil)
			if st != 200 || membershipOf(body) != m {
				t.Fatalf("/event %s: %d unsigned.membership %v, want %s", evID, st, membershipOf(body), m)
			}
		}
		st, body := call(t, "GET", room+"/context/"+url.PathEscape(post.EventID.String())+"?limit=2", bob.token, nil)
		if st != 200 || membershipOf(body["event"].(map[string]any)) != "join" {
			t.Fatalf("/context: %d %v", st, body["event"])
		}
		seen := 0
		st, body = call(t, "GET", room+"/messages?dir=b&limit=50", bob.token, nil)
		if st != 200 {
			t.Fatalf("/messages: %d %v", st, body)
		}
		for _, e := range body["chunk"].([]any) {
			ev := e.(map[string]any)
			if m, ok := want[id.EventID(ev["event_id"].(string))]; ok {
				seen++
				if membershipOf(ev) != m {
					t.Fatalf("/messages %s: unsigned.membership %v, want %s", ev["event_id"], membershipOf(ev), m)
				}
			} else if membershipOf(ev) == nil {
				t.Fatalf("/messages %s without unsigned.membership", ev["event_id"])
			}
		}
		if seen != 2 {
			t.Fatalf("/messages showed %d of the two messages", seen)
		}

		// /sync: "leave" for every event up to bob's join, "join" after.
		st, body = call(t, "GET", srv.URL+"/_matrix/client/v3/sync?timeout=0", bob.token, nil)
		if st != 200 {
			t.Fatalf("sync: %d %v", st, body)
		}
		joinedSeen := false
		events := body["rooms"].(map[string]any)["join"].(map[string]any)[roomID.String()].(map[string]any)["timeline"].(map[string]any)["events"].([]any)
		for _, e := range events {
			ev := e.(map[string]any)
			if ev["type"] == "m.room.member" && ev["state_key"] == bob.id.String() {
				joinedSeen = true
			}
			expect := "leave"
			if joinedSeen {
				expect = "join"
			}
			if membershipOf(ev) != expect {
				t.Fatalf("sync timeline %s (%s): unsigned.membership %v, want %s", ev["event_id"], ev["type"], membershipOf(ev), expect)
			}
		}
		if !joinedSeen {
			t.Fatalf("sync timeline without bob's join: %v", events)
		}
	})
}

// TestMessagesLazyLoadMembers: /messages with lazy_load_members between
// two /sync tokens answers 200 with state holding the member events of
// the chunk's senders, and nobody else's.
// Spec: client-server-api, GET /rooms/{roomId}/messages (state), "Lazy-
// loading room members". Complement: TestRoomMessagesLazyLoading,
// TestRoomMessagesLazyLoadingLocalUser.
func TestMessagesLazyLoadMembers(t *testing.T) {
	testserver.ForEachEngine(t, nil, func(t *testing.T, srv *testserver.Server) {
		alice, bob, charlie := newUser(t, srv, "alice"), newUser(t, srv, "bob"), newUser(t, srv, "charlie")
		created, err := alice.CreateRoom(bg, &mautrix.ReqCreateRoom{Preset: "public_chat"})
		ok(t, "createRoom", err)
		roomID := created.RoomID
		for _, u := range []*user{bob, charlie} {
			_, err = u.JoinRoomByID(bg, roomID)
			ok(t, "join", err)
		}
		_, err = bob.SendText(bg, roomID, "from bob")
		ok(t, "send", err)
		resp, err := alice.SyncRequest(bg, 0, "", "", false, "")
		ok(t, "sync", err)
		before := resp.NextBatch
		_, err = charlie.SendText(bg, roomID, "from charlie")
		ok(t, "send", err)
		resp, err = alice.SyncRequest(bg, 0, before, "", false, "")
		ok(t, "sync", err)
		after := resp.NextBatch

		q := url.Values{"dir": {"f"}, "filter": {`{ "lazy_load_members" : true }`}, "from": {before}, "to": {after}}
		st, body := call(t, "GET", srv.URL+"/_matrix/client/v3/rooms/"+url.PathEscape(roomID.String())+"/messages?"+q.Encode(), alice.token, nil)
		if st != 200 {
			t.Fatalf("lazy-loading /messages: %d %v", st, body)
		}
		if chunk := body["chunk"].([]any); len(chunk) != 1 || chunk[0].(map[string]any)["sender"] != charlie.id.String() {
			t.Fatalf("chunk = %v, want charlie's message alone", chunk)
		}
		state, _ := body["state"].([]any)
		if len(state) != 1 {
			t.Fatalf("state = %v, want charlie's member event alone", state)
		}
		ev := state[0].(map[string]any)
		if ev["type"] != "m.room.member" || ev["state_key"] != charlie.id.String() || ev["content"].(map[string]any)["membership"] != "join" {
			t.Fatalf("state = %v, want charlie's join", ev)
		}
	})
}
