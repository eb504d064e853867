package clientapi_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"testing"

	"github.com/tidwall/gjson"
	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/myelin-chat/myelin/internal/testserver"
)

// jsonCall is call with the body as gjson, for reading nested results.
func jsonCall(t *testing.T, method, url, token string, body any) (int, gjson.Result) {
	t.Helper()
	status, out := call(t, method, url, token, body)
	raw, err := json.Marshal(out)
	if err != nil {
		t.Fatal(err)
	}
	return status, gjson.ParseBytes(raw)
}

// searchRooms runs a room_events search as u and returns the category.
func searchRooms(t *testing.T, srv *testserver.Server, u *user, criteria map[string]any, nextBatch string) gjson.Result {
	t.Helper()
	target := srv.URL + "/_matrix/client/v3/search"
	if nextBatch != "" {
		target += "?next_batch=" + url.QueryEscape(nextBatch)
	}
	status, body := jsonCall(t, http.MethodPost, target, u.token, map[string]any{
		"search_categories": map[string]any{"room_events": criteria},
	})
	if status != http.StatusOK {
		t.Fatalf("search %v: %d %s", criteria, status, body.Raw)
	}
	return body.Get("search_categories.room_events")
}

// resultIDs lists the event IDs of a search page, in order.
func resultIDs(page gjson.Result) []string {
	var out []string
	for _, r := range page.Get("results").Array() {
		out = append(out, r.Get("result.event_id").String())
	}
	return out
}

func sendText(t *testing.T, u *user, roomID id.RoomID, body string) string {
	t.Helper()
	resp, err := u.SendMessageEvent(bg, roomID, event.EventMessage, map[string]any{"msgtype": "m.text", "body": body})
	ok(t, "send "+body, err)
	return resp.EventID.String()
}

func sameIDs(got, want []string) bool {
	if len(got) != len(want) {
		return false
	}
	for i := range got {
		if got[i] != want[i] {
			return false
		}
	}
	return true
}

// TestSearchRoomEvents: full-text search of room events, mirroring
// Complement's TestSearch and going further (rank order, visibility,
// groups, state, keys, filters).
// Spec: client-server-api, "Server Side Search".
func TestSearchRoomEvents(t *testing.T) {
	testserver.ForEachEngine(t, nil, func(t *testing.T, srv *testserver.Server) {
		alice, bob := newUser(t, srv, "alice"), newUser(t, srv, "bob")
		room, err := alice.CreateRoom(bg, &mautrix.ReqCreateRoom{Preset: "private_chat", Name: "Zebra crossing"})
		ok(t, "create", err)
		var ids []string
		for i := 0; i < 20; i++ {
			ids = append(ids, sendText(t, alice, room.RoomID, fmt.Sprintf("Message number %d", i)))
		}
		inRoom := map[string]any{"rooms": []string{room.RoomID.String()}}

		t.Run("by body, recent, paginated", func(t *testing.T) {
			criteria := map[string]any{
				"keys": []string{"content.body"}, "search_term": "Message", "order_by": "recent",
				"filter": map[string]any{"limit": 10, "rooms": []string{room.RoomID.String()}},
			}
			page := searchRooms(t, srv, alice, criteria, "")
			want := []string{}
			for i := 19; i >= 10; i-- {
				want = append(want, ids[i])
			}
			if got := resultIDs(page); !sameIDs(got, want) || page.Get("count").Int() != 20 || page.Get("next_batch").String() == "" {
				t.Fatalf("page 1 = %s", page.Raw)
			}
			if body := page.Get("results.0.result.content.body").String(); body != "Message number 19" {
				t.Fatalf("result body = %q", body)
			}
			page2 := searchRooms(t, srv, alice, criteria, page.Get("next_batch").String())
			want = want[:0]
			for i := 9; i >= 0; i-- {
				want = append(want, ids[i])
			}
			if got := resultIDs(page2); !sameIDs(got, want) || page2.Get("next_batch").String() == "" {
				t.Fatalf("page 2 = %s", page2.Raw)
			}
			page3 := searchRooms(t, srv, alice, criteria, page2.Get("next_batch").String())
			if len(resultIDs(page3)) != 0 || page3.Get("next_batch").Exists() || page3.Get("count").Int() != 20 {
				t.Fatalf("page 3 = %s", page3.Raw)
			}
			// A rank token is not a recent one.
			status, _ := call(t, http.MethodPost, srv.URL+"/_matrix/client/v3/search?next_batch=o10", alice.token,
				map[string]any{"search_categories": map[string]any{"room_events": criteria}})
			if status != http.StatusBadRequest {
				t.Fatalf("foreign token: status %d", status)
			}
		})

		t.Run("context and profiles", func(t *testing.T) {
			page := searchRooms(t, srv, alice, map[string]any{
				"search_term": "Message 4", "order_by": "recent",
				"filter":        map[string]any{"limit": 1, "rooms": []string{room.RoomID.String()}},
				"event_context": map[string]any{"before_limit": 2, "after_limit": 2, "include_profile": true},
			}, "")
			ctx := page.Get("results.0.context")
			if page.Get("count").Int() != 1 || page.Get("results.0.result.event_id").String() != ids[4] ||
				ctx.Get("events_before.0.content.body").String() != "Message number 3" ||
				ctx.Get("events_before.1.content.body").String() != "Message number 2" ||
				ctx.Get("events_after.0.content.body").String() != "Message number 5" ||
				ctx.Get("events_after.1.content.body").String() != "Message number 6" ||
				ctx.Get("events_after.2").Exists() || ctx.Get("start").String() == "" || ctx.Get("end").String() == "" ||
				!page.Get("next_batch").Exists() {
				t.Fatalf("context page = %s", page.Raw)
			}
			if !ctx.Get("profile_info").Get(gjson.Escape(alice.id.String())).Exists() {
				t.Fatalf("profile_info = %s", ctx.Get("profile_info").Raw)
			}
			// The context pages on like /messages does from its tokens.
			msgs, err := alice.Messages(bg, room.RoomID, ctx.Get("start").String(), "", mautrix.DirectionBackward, nil, 1)
			ok(t, "messages from context start", err)
			if len(msgs.Chunk) != 1 || msgs.Chunk[0].ID.String() != ids[1] {
				t.Fatalf("before the context: %+v", msgs.Chunk)
			}
		})

		t.Run("rank order", func(t *testing.T) {
			weak := sendText(t, alice, room.RoomID, "a pear and many other words that dilute the one mention of the fruit")
			strong := sendText(t, alice, room.RoomID, "pear pear pear")
			for _, order := range []string{"rank", ""} {
				page := searchRooms(t, srv, alice, map[string]any{"search_term": "pear", "order_by": order, "filter": inRoom}, "")
				if got := resultIDs(page); !sameIDs(got, []string{strong, weak}) ||
					page.Get("results.0.rank").Float() <= page.Get("results.1.rank").Float() {
					t.Fatalf("rank order %q = %s", order, page.Raw)
				}
				if hl := page.Get("highlights").Array(); len(hl) == 0 || hl[0].String() != "pear" {
					t.Fatalf("highlights = %s", page.Get("highlights").Raw)
				}
			}
			// Ranked pages continue by offset.
			page := searchRooms(t, srv, alice, map[string]any{"search_term": "pear", "filter": map[string]any{"limit": 1, "rooms": []string{room.RoomID.String()}}}, "")
			next := searchRooms(t, srv, alice, map[string]any{"search_term": "pear", "filter": map[string]any{"limit": 1, "rooms": []string{room.RoomID.String()}}}, page.Get("next_batch").String())
			if !sameIDs(resultIDs(page), []string{strong}) || !sameIDs(resultIDs(next), []string{weak}) {
				t.Fatalf("ranked pages: %s then %s", page.Raw, next.Raw)
			}
		})

		t.Run("keys, senders, groups and state", func(t *testing.T) {
			byName := searchRooms(t, srv, alice, map[string]any{"search_term": "zebra", "keys": []string{"content.name"}}, "")
			if byName.Get("count").Int() != 1 || byName.Get("results.0.result.type").String() != "m.room.name" {
				t.Fatalf("by name = %s", byName.Raw)
			}
			byBody := searchRooms(t, srv, alice, map[string]any{"search_term": "zebra", "keys": []string{"content.body"}}, "")
			if byBody.Get("count").Int() != 0 {
				t.Fatalf("name found under content.body: %s", byBody.Raw)
			}
			notAlice := searchRooms(t, srv, alice, map[string]any{"search_term": "message", "filter": map[string]any{"not_senders": []string{alice.id.String()}}}, "")
			if notAlice.Get("count").Int() != 0 {
				t.Fatalf("not_senders ignored: %s", notAlice.Raw)
			}
			grouped := searchRooms(t, srv, alice, map[string]any{
				"search_term": "pear", "include_state": true,
				"groupings": map[string]any{"group_by": []map[string]any{{"key": "room_id"}, {"key": "sender"}}},
			}, "")
			roomGroup := grouped.Get("groups.room_id." + gjson.Escape(room.RoomID.String()))
			senderGroup := grouped.Get("groups.sender." + gjson.Escape(alice.id.String()))
			if len(roomGroup.Get("results").Array()) != 2 || len(senderGroup.Get("results").Array()) != 2 || roomGroup.Get("order").Int() != 1 {
				t.Fatalf("groups = %s", grouped.Get("groups").Raw)
			}
			state := grouped.Get("state." + gjson.Escape(room.RoomID.String())).Array()
			if len(state) == 0 || !grouped.Get(`state.`+gjson.Escape(room.RoomID.String())+`.#(type=="m.room.create")`).Exists() {
				t.Fatalf("state = %s", grouped.Get("state").Raw)
			}
			status, body := call(t, http.MethodPost, srv.URL+"/_matrix/client/v3/search", alice.token,
				map[string]any{"search_categories": map[string]any{"room_events": map[string]any{"search_term": "x", "keys": []string{"content.url"}}}})
			expectError(t, "bad key", status, body, http.StatusBadRequest, "M_INVALID_PARAM")
		})

		t.Run("redacted events are gone", func(t *testing.T) {
			doomed := sendText(t, alice, room.RoomID, "This message is going to be redacted")
			kept := sendText(t, alice, room.RoomID, "This message is not going to be redacted")
			_, err := alice.RedactEvent(bg, room.RoomID, id.EventID(doomed))
			ok(t, "redact", err)
			for _, order := range []string{"rank", "recent"} {
				page := searchRooms(t, srv, alice, map[string]any{"search_term": "redacted", "order_by": order, "filter": inRoom}, "")
				if !sameIDs(resultIDs(page), []string{kept}) {
					t.Fatalf("%s: %s", order, page.Raw)
				}
			}
		})

		t.Run("only what the user may see", func(t *testing.T) {
			// Bob's room, which alice never joined.
			private, err := bob.CreateRoom(bg, &mautrix.ReqCreateRoom{Preset: "private_chat"})
			ok(t, "bob creates", err)
			sendText(t, bob, private.RoomID, "kiwi secret")
			// A room whose history is visible to joined members only:
			// alice sees from her join until her leave.
			joined, err := bob.CreateRoom(bg, &mautrix.ReqCreateRoom{Preset: "public_chat", InitialState: []*event.Event{{
				Type: event.StateHistoryVisibility, StateKey: ptr(""),
				Content: event.Content{Raw: map[string]any{"history_visibility": "joined"}},
			}}})
			ok(t, "bob creates joined-only room", err)
			sendText(t, bob, joined.RoomID, "kiwi before alice")
			_, err = alice.JoinRoomByID(bg, joined.RoomID)
			ok(t, "alice joins", err)
			during := sendText(t, bob, joined.RoomID, "kiwi while alice is here")
			_, err = alice.LeaveRoom(bg, joined.RoomID)
			ok(t, "alice leaves", err)
			sendText(t, bob, joined.RoomID, "kiwi after alice left")

			page := searchRooms(t, srv, alice, map[string]any{"search_term": "kiwi", "order_by": "recent"}, "")
			if !sameIDs(resultIDs(page), []string{during}) {
				t.Fatalf("alice sees %s", page.Raw)
			}
			asked := searchRooms(t, srv, alice, map[string]any{"search_term": "kiwi", "filter": map[string]any{"rooms": []string{private.RoomID.String()}}}, "")
			if len(resultIDs(asked)) != 0 || asked.Get("count").Int() != 0 {
				t.Fatalf("alice searched bob's private room: %s", asked.Raw)
			}
			if got := resultIDs(searchRooms(t, srv, bob, map[string]any{"search_term": "kiwi"}, "")); len(got) != 4 {
				t.Fatalf("bob sees %d kiwis, want 4", len(got))
			}
		})
	})
}
