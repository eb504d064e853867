package clientapi_test

import (
	"crypto/sha256"
	"encoding/base64"
	"slices"
	"strings"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/myelin-chat/myelin/internal/testserver"
)

// MSC2836 threading: POST /_matrix/client/unstable/event_relationships.
// Spec: MSC2836 (proposals/2836-threading.md), "Querying relationships".

const relationshipsPath = "/_matrix/client/unstable/event_relationships"

// reply sends a message in roomID replying to parent with an
// m.relationship of relType (no relationship when parent is "").
func reply(t *testing.T, u *user, roomID id.RoomID, body string, parent id.EventID, relType any) id.EventID {
	t.Helper()
	content := map[string]any{"msgtype": "m.text", "body": body}
	if parent != "" {
		content["m.relationship"] = map[string]any{"rel_type": relType, "event_id": parent}
	}
	resp, err := u.SendMessageEvent(bg, roomID, event.EventMessage, content)
	ok(t, "send "+body, err)
	// Distinct origin_server_ts values, so recent_first has one answer.
	time.Sleep(3 * time.Millisecond)
	return resp.EventID
}

// walk asks srv for the walk body describes as u and returns the IDs of
// the events, in order, and the whole response body.
func walk(t *testing.T, srv *testserver.Server, u *user, body map[string]any) ([]id.EventID, map[string]any) {
	t.Helper()
	st, res := call(t, "POST", srv.URL+relationshipsPath, u.token, body)
	if st != 200 {
		t.Fatalf("event_relationships %v: %d %v", body, st, res)
	}
	if _, ok := res["limited"].(bool); !ok {
		t.Fatalf("event_relationships %v: no limited flag: %v", body, res)
	}
	var ids []id.EventID
	for _, e := range res["events"].([]any) {
		ids = append(ids, id.EventID(e.(map[string]any)["event_id"].(string)))
	}
	return ids, res
}

func wantWalk(t *testing.T, what string, got []id.EventID, want ...id.EventID) {
	t.Helper()
	if !slices.Equal(got, want) {
		t.Fatalf("%s: got %v, want %v", what, got, want)
	}
}

// childrenHash is MSC2836's children_hash of ids.
func childrenHash(ids ...id.EventID) string {
	s := make([]string, len(ids))
	for i, e := range ids {
		s[i] = string(e)
	}
	slices.Sort(s)
	h := sha256.Sum256([]byte(strings.Join(s, "")))
	return base64.RawStdEncoding.EncodeToString(h[:])
}

// TestEventRelationshipsWalk walks the thread
//
//	A ─┬─ B ── D
//	   └─ C ── E
//
// (B before C, D before E) in every mode the MSC defines.
func TestEventRelationshipsWalk(t *testing.T) {
	testserver.ForEachEngine(t, nil, func(t *testing.T, srv *testserver.Server) {
		alice := newUser(t, srv, "alice")
		created, err := alice.CreateRoom(bg, &mautrix.ReqCreateRoom{Preset: "public_chat"})
		ok(t, "createRoom", err)
		room := created.RoomID
		a := reply(t, alice, room, "A", "", nil)
		b := reply(t, alice, room, "B", a, "m.reference")
		c := reply(t, alice, room, "C", a, "m.reference")
		d := reply(t, alice, room, "D", b, "m.reference")
		e := reply(t, alice, room, "E", c, "m.reference")
		// Malformed relationships make no children.
		reply(t, alice, room, "bad type", a, 5)
		reply(t, alice, room, "bad id", "not-an-event-id", "m.reference")

		got, res := walk(t, srv, alice, map[string]any{"event_id": a})
		wantWalk(t, "defaults: down, breadth first, newest first", got, a, c, b, e, d)
		if res["limited"] != false || res["next_batch"] != nil {
			t.Fatalf("whole walk: limited %v next_batch %v", res["limited"], res["next_batch"])
		}
		first := res["events"].([]any)[0].(map[string]any)
		unsigned := first["unsigned"].(map[string]any)
		if n := unsigned["children"].(map[string]any)["m.reference"]; n != float64(2) {
			t.Fatalf("A's unsigned.children = %v, want m.reference: 2", unsigned["children"])
		}
		if unsigned["children_hash"] != childrenHash(b, c) {
			t.Fatalf("A's children_hash = %v, want %s", unsigned["children_hash"], childrenHash(b, c))
		}
		leaf := res["events"].([]any)[4].(map[string]any)["unsigned"].(map[string]any)
		if len(leaf["children"].(map[string]any)) != 0 || leaf["children_hash"] != childrenHash() {
			t.Fatalf("D's unsigned = %v, want no children", leaf)
		}

		got, _ = walk(t, srv, alice, map[string]any{"event_id": a, "recent_first": false, "depth_first": true})
		wantWalk(t, "depth first, oldest first", got, a, b, d, c, e)
		got, _ = walk(t, srv, alice, map[string]any{"event_id": a, "recent_first": false, "max_depth": 1})
		wantWalk(t, "max_depth 1", got, a, b, c)
		got, _ = walk(t, srv, alice, map[string]any{"event_id": a, "recent_first": false, "max_breadth": 1})
		wantWalk(t, "max_breadth 1", got, a, b, d)
		got, _ = walk(t, srv, alice, map[string]any{"event_id": a, "recent_first": false, "max_depth": -1, "max_breadth": -1})
		wantWalk(t, "unbounded", got, a, b, c, d, e)
		got, _ = walk(t, srv, alice, map[string]any{"event_id": e, "direction": "up"})
		wantWalk(t, "up", got, e, c, a)
		got, _ = walk(t, srv, alice, map[string]any{"event_id": e, "direction": "up", "max_depth": 1})
		wantWalk(t, "up, max_depth 1", got, e, c)
		got, _ = walk(t, srv, alice, map[string]any{"event_id": b, "include_parent": true, "recent_first": false})
		wantWalk(t, "include_parent", got, b, a, d)
		got, _ = walk(t, srv, alice, map[string]any{"event_id": a, "include_children": true, "max_depth": 0, "recent_first": false})
		wantWalk(t, "include_children", got, a, b, c)
		got, _ = walk(t, srv, alice, map[string]any{"event_id": a, "max_depth": 0})
		wantWalk(t, "max_depth 0", got, a)

		// Paging with limit and next_batch: the walk goes on where it stopped.
		req := map[string]any{"event_id": a, "recent_first": false, "limit": 2}
		got, res = walk(t, srv, alice, req)
		wantWalk(t, "page 1", got, a, b)
		if res["limited"] != true || res["next_batch"] == nil {
			t.Fatalf("page 1: limited %v next_batch %v", res["limited"], res["next_batch"])
		}
		req["batch"] = res["next_batch"]
		got, res = walk(t, srv, alice, req)
		wantWalk(t, "page 2", got, c, d)
		req["batch"] = res["next_batch"]
		got, res = walk(t, srv, alice, req)
		wantWalk(t, "page 3", got, e)
		if res["limited"] != false || res["next_batch"] != nil {
			t.Fatalf("last page: limited %v next_batch %v", res["limited"], res["next_batch"])
		}

		// A redaction keeps the relationship (MSC2836): the walk still
		// goes through B to D.
		_, err = alice.RedactEvent(bg, room, b)
		ok(t, "redact B", err)
		got, _ = walk(t, srv, alice, map[string]any{"event_id": a, "recent_first": false, "depth_first": true})
		wantWalk(t, "after redacting B", got, a, b, d, c, e)
	})
}

// TestEventRelationshipsBadRequests: malformed bodies are M_NOT_JSON or
// M_BAD_JSON, bad values M_MISSING_PARAM or M_INVALID_PARAM, an unknown
// event M_NOT_FOUND, and the endpoint needs an access token.
func TestEventRelationshipsBadRequests(t *testing.T) {
	testserver.ForEachEngine(t, nil, func(t *testing.T, srv *testserver.Server) {
		alice := newUser(t, srv, "alice")
		created, err := alice.CreateRoom(bg, &mautrix.ReqCreateRoom{Preset: "public_chat"})
		ok(t, "createRoom", err)
		a := reply(t, alice, created.RoomID, "A", "", nil)
		url := srv.URL + relationshipsPath
		for _, c := range []struct {
			what   string
			body   any
			status int
			code   string
		}{
			{"not JSON", "{", 400, "M_NOT_JSON"},
			{"not an object", "[]", 400, "M_BAD_JSON"},
			{"no event_id", map[string]any{}, 400, "M_MISSING_PARAM"},
			{"event_id not a string", map[string]any{"event_id": 5}, 400, "M_BAD_JSON"},
			{"event_id not an event ID", map[string]any{"event_id": "abc"}, 400, "M_INVALID_PARAM"},
			{"bad room_id", map[string]any{"event_id": a, "room_id": "#alias:localhost"}, 400, "M_INVALID_PARAM"},
			{"bad direction", map[string]any{"event_id": a, "direction": "sideways"}, 400, "M_INVALID_PARAM"},
			{"limit 0", map[string]any{"event_id": a, "limit": 0}, 400, "M_INVALID_PARAM"},
			{"limit not a number", map[string]any{"event_id": a, "limit": "10"}, 400, "M_BAD_JSON"},
			{"flag not a boolean", map[string]any{"event_id": a, "depth_first": "yes"}, 400, "M_BAD_JSON"},
			{"foreign batch", map[string]any{"event_id": a, "batch": "s5"}, 400, "M_INVALID_PARAM"},
			{"unknown event", map[string]any{"event_id": "$unknown"}, 404, "M_NOT_FOUND"},
			{"unknown event with a room hint", map[string]any{"event_id": "$unknown", "room_id": string(created.RoomID)}, 404, "M_NOT_FOUND"},
			{"event of another room than room_id", map[string]any{"event_id": a, "room_id": "!other:localhost"}, 404, "M_NOT_FOUND"},
		} {
			st, body := call(t, "POST", url, alice.token, c.body)
			expectError(t, c.what, st, body, c.status, c.code)
		}
		st, body := call(t, "POST", url, "", map[string]any{"event_id": a})
		expectError(t, "no access token", st, body, 401, "M_MISSING_TOKEN")
	})
}

// TestEventRelationshipsVisibility: the walk shows only what history
// visibility lets the user see, and does not follow the relationships
// of an event it hides.
func TestEventRelationshipsVisibility(t *testing.T) {
	testserver.ForEachEngine(t, nil, func(t *testing.T, srv *testserver.Server) {
		alice, bob, eve := newUser(t, srv, "alice"), newUser(t, srv, "bob"), newUser(t, srv, "eve")
		created, err := alice.CreateRoom(bg, &mautrix.ReqCreateRoom{Preset: "public_chat",
			InitialState: []*event.Event{{Type: event.StateHistoryVisibility, StateKey: new(string),
				Content: event.Content{Raw: map[string]any{"history_visibility": "joined"}}}}})
		ok(t, "createRoom", err)
		room := created.RoomID
		a := reply(t, alice, room, "A", "", nil)
		b := reply(t, alice, room, "B", a, "m.reference")
		_, err = bob.JoinRoomByID(bg, room)
		ok(t, "bob joins", err)
		c := reply(t, alice, room, "C", b, "m.reference")
		d := reply(t, alice, room, "D", c, "m.reference")

		got, _ := walk(t, srv, alice, map[string]any{"event_id": a, "max_depth": -1})
		wantWalk(t, "alice sees the whole thread", got, a, b, c, d)
		got, _ = walk(t, srv, bob, map[string]any{"event_id": d, "direction": "up", "max_depth": -1})
		wantWalk(t, "bob sees nothing from before his join", got, d, c)
		got, _ = walk(t, srv, bob, map[string]any{"event_id": c, "include_parent": true})
		wantWalk(t, "bob's include_parent leaves the hidden parent out", got, c, d)
		for _, anchor := range []id.EventID{a, b} {
			st, body := call(t, "POST", srv.URL+relationshipsPath, bob.token, map[string]any{"event_id": anchor})
			expectError(t, "bob anchoring at a hidden event", st, body, 404, "M_NOT_FOUND")
		}
		st, body := call(t, "POST", srv.URL+relationshipsPath, eve.token, map[string]any{"event_id": d})
		expectError(t, "a non-member anchoring in the room", st, body, 404, "M_NOT_FOUND")

		// A new event may only relate to an event of its room that the
		// sender may see (MSC2836, "Making relationships").
		other, err := bob.CreateRoom(bg, &mautrix.ReqCreateRoom{Preset: "public_chat"})
		ok(t, "createRoom", err)
		elsewhere := reply(t, bob, other.RoomID, "elsewhere", "", nil)
		for _, c := range []struct {
			what   string
			parent id.EventID
		}{{"an unknown event", "$unknown"}, {"an event of another room", elsewhere}, {"an event bob may not see", b}} {
			_, err := bob.SendMessageEvent(bg, room, event.EventMessage, map[string]any{"msgtype": "m.text", "body": "re",
				"m.relationship": map[string]any{"rel_type": "m.reference", "event_id": c.parent}})
			wantErrcode(t, "replying to "+c.what, err, 400, "M_INVALID_PARAM")
			_, err = bob.SendStateEvent(bg, room, event.NewEventType("com.example.state"), "", map[string]any{
				"m.relationship": map[string]any{"rel_type": "m.reference", "event_id": c.parent}})
			wantErrcode(t, "a state event relating to "+c.what, err, 400, "M_INVALID_PARAM")
		}

		// A hidden event in the middle of a walk down is left out, and
		// the walk does not go through it: X is sent while bob is away,
		// Z after he is back, below X.
		_, err = bob.LeaveRoom(bg, room)
		ok(t, "bob leaves", err)
		x := reply(t, alice, room, "X", d, "m.reference")
		_, err = bob.JoinRoomByID(bg, room)
		ok(t, "bob rejoins", err)
		z := reply(t, alice, room, "Z", x, "m.reference")
		got, _ = walk(t, srv, alice, map[string]any{"event_id": c, "max_depth": -1})
		wantWalk(t, "alice walking down from C", got, c, d, x, z)
		got, _ = walk(t, srv, bob, map[string]any{"event_id": c, "max_depth": -1})
		wantWalk(t, "bob walking down from C", got, c, d)
		got, _ = walk(t, srv, bob, map[string]any{"event_id": z, "direction": "up", "max_depth": -1})
		wantWalk(t, "bob walking up from Z", got, z)
	})
}
