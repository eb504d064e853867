package clientapi_test

import (
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"testing"
	"time"

	"github.com/myelin-chat/myelin/config"
	"github.com/myelin-chat/myelin/internal/testserver"
)

// peekRoom creates a room as token with the given history visibility
// and returns its ID.
func peekRoom(t *testing.T, srv *testserver.Server, token, visibility string) string {
	t.Helper()
	status, body := call(t, "POST", srv.URL+"/_matrix/client/v3/createRoom", token, map[string]any{
		"preset": "public_chat",
		"initial_state": []any{map[string]any{"type": "m.room.history_visibility", "state_key": "",
			"content": map[string]any{"history_visibility": visibility}}},
	})
	if status != http.StatusOK {
		t.Fatalf("createRoom: %d %v", status, body)
	}
	return body["room_id"].(string)
}

// peekSend sends an m.text message with body text to roomID as token.
func peekSend(t *testing.T, srv *testserver.Server, token, roomID, text string) {
	t.Helper()
	status, body := call(t, "PUT", srv.URL+"/_matrix/client/v3/rooms/"+url.PathEscape(roomID)+"/send/m.room.message/"+url.PathEscape(text),
		token, map[string]any{"msgtype": "m.text", "body": text})
	if status != http.StatusOK {
		t.Fatalf("send %s: %d %v", text, status, body)
	}
}

// bodies lists the content.body of the m.room.message events of chunk.
func bodies(t *testing.T, chunk any) []string {
	t.Helper()
	evs, ok := chunk.([]any)
	if !ok {
		t.Fatalf("chunk is not an array: %v", chunk)
	}
	out := []string{}
	for _, e := range evs {
		ev := e.(map[string]any)
		if ev["type"] == "m.room.message" {
			out = append(out, ev["content"].(map[string]any)["body"].(string))
		}
	}
	return out
}

func initialSyncURL(srv *testserver.Server, roomID string) string {
	return srv.URL + "/_matrix/client/v3/rooms/" + url.PathEscape(roomID) + "/initialSync"
}

func eventsURL(srv *testserver.Server, roomID, from string, timeoutMS int) string {
	q := url.Values{"room_id": {roomID}, "timeout": {fmt.Sprint(timeoutMS)}}
	if from != "" {
		q.Set("from", from)
	}
	return srv.URL + "/_matrix/client/v3/events?" + q.Encode()
}

// previewAndPeek previews a world-readable room as token, a non-member,
// checks the snapshot holds its state and messages m1, m2 in order,
// then that /events from messages.end blocks until m3 is sent, returns
// it, and then returns nothing once its timeout ends.
// Alice sends through sender, which is srv or another process of its
// split deployment.
func previewAndPeek(t *testing.T, srv, sender *testserver.Server, alice, token, roomID, prefix string) {
	t.Helper()
	m1, m2, m3 := prefix+"-m1", prefix+"-m2", prefix+"-m3"
	peekSend(t, sender, alice, roomID, m1)
	peekSend(t, sender, alice, roomID, m2)
	// limit=2: the room holds earlier messages (of another caller's run).
	status, body := call(t, "GET", initialSyncURL(srv, roomID)+"?limit=2", token, nil)
	if status != http.StatusOK {
		t.Fatalf("initialSync: %d %v", status, body)
	}
	if body["room_id"] != roomID || body["visibility"] != "private" {
		t.Fatalf("initialSync room_id/visibility: %v", body)
	}
	if _, ok := body["membership"]; ok {
		t.Fatalf("initialSync of a non-member has membership: %v", body["membership"])
	}
	if ad, ok := body["account_data"].([]any); !ok || len(ad) != 0 {
		t.Fatalf("initialSync account_data: %v", body["account_data"])
	}
	stateTypes := map[string]bool{}
	for _, e := range body["state"].([]any) {
		ev := e.(map[string]any)
		stateTypes[ev["type"].(string)] = true
		if ev["room_id"] != roomID {
			t.Fatalf("state event without room_id: %v", ev)
		}
	}
	for _, want := range []string{"m.room.create", "m.room.member", "m.room.power_levels", "m.room.history_visibility"} {
		if !stateTypes[want] {
			t.Fatalf("initialSync state lacks %s: %v", want, stateTypes)
		}
	}
	messages := body["messages"].(map[string]any)
	if got := bodies(t, messages["chunk"]); len(got) != 2 || got[0] != m1 || got[1] != m2 {
		t.Fatalf("initialSync messages: %v, want [%s %s] (oldest first)", got, m1, m2)
	}
	end, _ := messages["end"].(string)
	if end == "" {
		t.Fatalf("initialSync messages has no end: %v", messages)
	}
	// start pages back through /messages to what came before m1.
	start, _ := messages["start"].(string)
	status, body = call(t, "GET", srv.URL+"/_matrix/client/v3/rooms/"+url.PathEscape(roomID)+"/messages?dir=b&limit=100&from="+url.QueryEscape(start), token, nil)
	if start == "" || status != http.StatusOK {
		t.Fatalf("/messages from initialSync's start %q: %d %v", start, status, body)
	}
	for _, b := range bodies(t, body["chunk"]) {
		if b == m1 || b == m2 {
			t.Fatalf("/messages back from initialSync's start returned %s again", b)
		}
	}
	// Nothing after end yet: a zero timeout answers at once, empty.
	status, body = call(t, "GET", eventsURL(srv, roomID, end, 0), token, nil)
	if status != http.StatusOK || len(bodies(t, body["chunk"])) != 0 || body["start"] != end {
		t.Fatalf("/events with nothing new: %d %v", status, body)
	}
	// A long poll waits for m3.
	type answer struct {
		status int
		body   map[string]any
	}
	done := make(chan answer, 1)
	go func() {
		status, body := call(t, "GET", eventsURL(srv, roomID, end, 20000), token, nil)
		done <- answer{status, body}
	}()
	select {
	case a := <-done:
		t.Fatalf("/events answered before anything was sent: %d %v", a.status, a.body)
	case <-time.After(500 * time.Millisecond):
	}
	peekSend(t, sender, alice, roomID, m3)
	var a answer
	select {
	case a = <-done:
	case <-time.After(15 * time.Second):
		t.Fatal("/events did not wake for the message sent")
	}
	if a.status != http.StatusOK {
		t.Fatalf("/events: %d %v", a.status, a.body)
	}
	if got := bodies(t, a.body["chunk"]); len(got) != 1 || got[0] != m3 {
		t.Fatalf("/events chunk: %v, want [%s]", got, m3)
	}
	next, _ := a.body["end"].(string)
	if a.body["start"] != end || next == "" || next == end {
		t.Fatalf("/events tokens: start %v end %v (from %s)", a.body["start"], a.body["end"], end)
	}
	// From the new end: nothing, after the timeout.
	began := time.Now()
	status, body = call(t, "GET", eventsURL(srv, roomID, next, 300), token, nil)
	if status != http.StatusOK || len(bodies(t, body["chunk"])) != 0 {
		t.Fatalf("/events after the last event: %d %v", status, body)
	}
	if waited := time.Since(began); waited < 250*time.Millisecond {
		t.Fatalf("/events with nothing new answered after %v, before its 300 ms timeout", waited)
	}
}

// TestRoomPreview: a user who is not a member of a world_readable room,
// and a guest, preview it with GET /rooms/{roomId}/initialSync (current
// state, recent messages oldest first, no membership) and then peek with
// GET /events?room_id=&from=<messages.end>, which blocks until an event
// is sent after that token, returns it, and returns an empty chunk at
// its timeout. Spec: client-server-api, "Room previews", "GET
// /rooms/{roomId}/initialSync", "GET /events" (peeking), "Guest Access"
// (both are in the guest list).
func TestRoomPreview(t *testing.T) {
	testserver.ForEachEngine(t, func(c *config.Config) { c.ClientAPI.GuestAccess = true }, func(t *testing.T, srv *testserver.Server) {
		alice := newUser(t, srv, "alice")
		bob := newUser(t, srv, "bob")
		roomID := peekRoom(t, srv, alice.token, "world_readable")
		t.Run("non-member", func(t *testing.T) { previewAndPeek(t, srv, srv, alice.token, bob.token, roomID, "bob") })
		status, body := call(t, "POST", srv.URL+"/_matrix/client/v3/register?kind=guest", "", map[string]any{})
		if status != http.StatusOK {
			t.Fatalf("guest registration: %d %v", status, body)
		}
		guest := body["access_token"].(string)
		t.Run("guest", func(t *testing.T) { previewAndPeek(t, srv, srv, alice.token, guest, roomID, "guest") })

		// A member gets its membership and its account data for the
		// room; once the room is published, visibility is public.
		rp := srv.URL + "/_matrix/client/v3/user/" + url.PathEscape(alice.id.String()) + "/rooms/" + url.PathEscape(roomID)
		if status, body := call(t, "PUT", rp+"/account_data/com.example.peek", alice.token, map[string]any{"x": 1}); status != http.StatusOK {
			t.Fatalf("room account data: %d %v", status, body)
		}
		if status, body := call(t, "PUT", srv.URL+"/_matrix/client/v3/directory/list/room/"+url.PathEscape(roomID), alice.token, map[string]any{"visibility": "public"}); status != http.StatusOK {
			t.Fatalf("publishing the room: %d %v", status, body)
		}
		status, body = call(t, "GET", initialSyncURL(srv, roomID), alice.token, nil)
		if status != http.StatusOK || body["membership"] != "join" || body["visibility"] != "public" {
			t.Fatalf("member's initialSync: %d membership %v visibility %v", status, body["membership"], body["visibility"])
		}
		ad, _ := body["account_data"].([]any)
		if len(ad) != 1 || ad[0].(map[string]any)["type"] != "com.example.peek" ||
			fmt.Sprint(ad[0].(map[string]any)["content"]) != "map[x:1]" {
			t.Fatalf("member's initialSync account_data: %v", body["account_data"])
		}
		// Bob's is his own: none.
		status, body = call(t, "GET", initialSyncURL(srv, roomID), bob.token, nil)
		if ad, ok := body["account_data"].([]any); status != http.StatusOK || !ok || len(ad) != 0 {
			t.Fatalf("non-member's initialSync account_data: %d %v", status, body["account_data"])
		}
	})
}

// TestRoomPeekSplit: in a split deployment, a peek long-polling on one
// process wakes for a message sent through another (the room stream's
// notifications cross processes through Redis, as /sync's do).
func TestRoomPeekSplit(t *testing.T) {
	a, b := testserver.StartSplit(t)
	alice := newUser(t, a, "alice")
	bob := newUser(t, a, "bob")
	roomID := peekRoom(t, a, alice.token, "world_readable")
	previewAndPeek(t, a, b, alice.token, bob.token, roomID, "split")
}

// TestRoomPreviewRefused: a caller who is neither a member nor in a
// world_readable room gets 403 M_FORBIDDEN from both endpoints (a guest
// too), and bad parameters get 400: a from that is no event stream
// token or names a position not yet written (the yaml's "Bad pagination
// from parameter"), a bad timeout, and /events without room_id (the
// deprecated global stream; room_id is required).
func TestRoomPreviewRefused(t *testing.T) {
	testserver.ForEachEngine(t, func(c *config.Config) { c.ClientAPI.GuestAccess = true }, func(t *testing.T, srv *testserver.Server) {
		alice := newUser(t, srv, "alice")
		bob := newUser(t, srv, "bob")
		status, body := call(t, "POST", srv.URL+"/_matrix/client/v3/register?kind=guest", "", map[string]any{})
		if status != http.StatusOK {
			t.Fatalf("guest registration: %d %v", status, body)
		}
		guest := body["access_token"].(string)
		for _, hv := range []string{"shared", "joined", "invited"} {
			roomID := peekRoom(t, srv, alice.token, hv)
			peekSend(t, srv, alice.token, roomID, hv+" secret")
			for who, token := range map[string]string{"bob": bob.token, "guest": guest} {
				status, body := call(t, "GET", initialSyncURL(srv, roomID), token, nil)
				expectError(t, hv+": "+who+" initialSync", status, body, http.StatusForbidden, "M_FORBIDDEN")
				status, body = call(t, "GET", eventsURL(srv, roomID, "", 0), token, nil)
				expectError(t, hv+": "+who+" /events", status, body, http.StatusForbidden, "M_FORBIDDEN")
			}
			// The member herself may.
			status, body := call(t, "GET", initialSyncURL(srv, roomID), alice.token, nil)
			if status != http.StatusOK || body["membership"] != "join" || len(bodies(t, body["messages"].(map[string]any)["chunk"])) != 1 {
				t.Fatalf("%s: member's initialSync: %d %v", hv, status, body)
			}
		}
		status, body = call(t, "GET", initialSyncURL(srv, "!nowhere:localhost"), bob.token, nil)
		expectError(t, "unknown room", status, body, http.StatusForbidden, "M_FORBIDDEN")

		roomID := peekRoom(t, srv, alice.token, "world_readable")
		status, body = call(t, "GET", initialSyncURL(srv, roomID), bob.token, nil)
		if status != http.StatusOK {
			t.Fatalf("initialSync: %d %v", status, body)
		}
		end := body["messages"].(map[string]any)["end"].(string)
		ev := srv.URL + "/_matrix/client/v3/events?room_id=" + url.QueryEscape(roomID)
		for _, c := range []struct{ name, url, code string }{
			{"from garbage", ev + "&from=garbage", "M_INVALID_PARAM"},
			{"from a /messages token", ev + "&from=t1_1", "M_INVALID_PARAM"},
			{"from past the head", ev + "&from=s999999999", "M_INVALID_PARAM"},
			{"bad timeout", ev + "&from=" + url.QueryEscape(end) + "&timeout=soon", "M_INVALID_PARAM"},
			{"negative timeout", ev + "&from=" + url.QueryEscape(end) + "&timeout=-1", "M_INVALID_PARAM"},
			{"no room_id", srv.URL + "/_matrix/client/v3/events?from=" + url.QueryEscape(end), "M_MISSING_PARAM"},
			{"bad room_id", srv.URL + "/_matrix/client/v3/events?room_id=nowhere", "M_INVALID_PARAM"},
		} {
			status, body := call(t, "GET", c.url, bob.token, nil)
			expectError(t, c.name, status, body, http.StatusBadRequest, c.code)
		}
	})
}

// TestRoomPeekFollowsVisibility: /events shows each event only if the
// caller may see it (the roomserver's history visibility). Bob, who
// joined a "shared" room and left it, may still call /events from a
// token of when he was joined, but gets his leave and never the message
// sent after it; a user who never joined is refused.
// Spec: client-server-api, "Room History Visibility" ("shared": events
// while the user was joined).
func TestRoomPeekFollowsVisibility(t *testing.T) {
	testserver.ForEachEngine(t, nil, func(t *testing.T, srv *testserver.Server) {
		alice := newUser(t, srv, "alice")
		bob := newUser(t, srv, "bob")
		carol := newUser(t, srv, "carol")
		roomID := peekRoom(t, srv, alice.token, "shared")
		rp := srv.URL + "/_matrix/client/v3/rooms/" + url.PathEscape(roomID)
		if status, body := call(t, "POST", rp+"/join", bob.token, map[string]any{}); status != http.StatusOK {
			t.Fatalf("bob joins: %d %v", status, body)
		}
		peekSend(t, srv, alice.token, roomID, "while bob is here")
		status, body := call(t, "GET", initialSyncURL(srv, roomID), bob.token, nil)
		if status != http.StatusOK || body["membership"] != "join" {
			t.Fatalf("bob's initialSync: %d %v", status, body)
		}
		from := body["messages"].(map[string]any)["end"].(string)
		peekSend(t, srv, alice.token, roomID, "before bob leaves")
		if status, body := call(t, "POST", rp+"/leave", bob.token, map[string]any{}); status != http.StatusOK {
			t.Fatalf("bob leaves: %d %v", status, body)
		}
		peekSend(t, srv, alice.token, roomID, "after bob left")
		// His snapshot is the room as he left it, and says so.
		status, body = call(t, "GET", initialSyncURL(srv, roomID), bob.token, nil)
		if status != http.StatusOK || body["membership"] != "leave" {
			t.Fatalf("bob's initialSync after leaving: %d membership %v", status, body["membership"])
		}
		if got := bodies(t, body["messages"].(map[string]any)["chunk"]); slices.Contains(got, "after bob left") {
			t.Fatalf("bob's initialSync after leaving shows %v", got)
		}
		var seen []string
		sawLeave := false
		for range 10 {
			status, body = call(t, "GET", eventsURL(srv, roomID, from, 0), bob.token, nil)
			if status != http.StatusOK {
				t.Fatalf("/events: %d %v", status, body)
			}
			seen = append(seen, bodies(t, body["chunk"])...)
			for _, e := range body["chunk"].([]any) {
				if ev := e.(map[string]any); ev["type"] == "m.room.member" && ev["state_key"] == bob.id.String() {
					sawLeave = true
				}
			}
			if body["end"] == from {
				break
			}
			from = body["end"].(string)
		}
		if len(seen) != 1 || seen[0] != "before bob leaves" || !sawLeave {
			t.Fatalf("bob's /events after leaving: messages %v, leave seen %v; want [before bob leaves] and his leave", seen, sawLeave)
		}
		status, body = call(t, "GET", eventsURL(srv, roomID, "", 0), carol.token, nil)
		expectError(t, "never a member", status, body, http.StatusForbidden, "M_FORBIDDEN")
	})
}

// TestRoomPeekReadsPastHiddenBatch: when more than one batch (100) of
// the room's events after from are hidden from the caller, /events reads
// on through them at once and returns the visible event after them,
// rather than waiting out its timeout. Bob leaves a "joined" room, misses
// 110 messages, and rejoins: a long poll from before his rejoin answers
// at once with his join.
// Spec: client-server-api, "Room History Visibility" ("joined").
func TestRoomPeekReadsPastHiddenBatch(t *testing.T) {
	testserver.ForEachEngine(t, nil, func(t *testing.T, srv *testserver.Server) {
		alice := newUser(t, srv, "alice")
		bob := newUser(t, srv, "bob")
		roomID := peekRoom(t, srv, alice.token, "joined")
		rp := srv.URL + "/_matrix/client/v3/rooms/" + url.PathEscape(roomID)
		if status, body := call(t, "POST", rp+"/join", bob.token, map[string]any{}); status != http.StatusOK {
			t.Fatalf("bob joins: %d %v", status, body)
		}
		if status, body := call(t, "POST", rp+"/leave", bob.token, map[string]any{}); status != http.StatusOK {
			t.Fatalf("bob leaves: %d %v", status, body)
		}
		// From after his leave.
		status, body := call(t, "GET", eventsURL(srv, roomID, "", 0), bob.token, nil)
		if status != http.StatusOK {
			t.Fatalf("/events: %d %v", status, body)
		}
		from := body["end"].(string)
		for i := range 110 {
			peekSend(t, srv, alice.token, roomID, fmt.Sprintf("hidden %d", i))
		}
		if status, body := call(t, "POST", rp+"/join", bob.token, map[string]any{}); status != http.StatusOK {
			t.Fatalf("bob rejoins: %d %v", status, body)
		}
		began := time.Now()
		status, body = call(t, "GET", eventsURL(srv, roomID, from, 20000), bob.token, nil)
		if took := time.Since(began); took > 10*time.Second {
			t.Fatalf("/events waited %v with his join to return", took)
		}
		if status != http.StatusOK {
			t.Fatalf("/events: %d %v", status, body)
		}
		chunk := body["chunk"].([]any)
		if got := bodies(t, chunk); len(got) != 0 {
			t.Fatalf("/events shows bob messages sent while he was away: %v", got)
		}
		if len(chunk) != 1 || chunk[0].(map[string]any)["type"] != "m.room.member" ||
			chunk[0].(map[string]any)["state_key"] != bob.id.String() ||
			chunk[0].(map[string]any)["content"].(map[string]any)["membership"] != "join" {
			t.Fatalf("/events chunk: %v, want bob's join", chunk)
		}
	})
}
