package syncapi_test

import (
	"context"
	"encoding/json"
	"net/url"
	"slices"
	"testing"
	"time"

	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/myelin-chat/myelin/internal/testserver"
	"github.com/myelin-chat/myelin/roomserver"
)

// slidingList runs a one-list sliding sync for u with filters and
// returns the room IDs listed.
func slidingList(t *testing.T, srv *testserver.Server, u *user, filters map[string]any) []string {
	t.Helper()
	code, resp := sliding(t, srv, u, map[string]any{"lists": map[string]any{"l": map[string]any{
		"ranges": [][]int{{0, 20}}, "timeline_limit": 0, "required_state": [][]string{}, "filters": filters}}})
	if code != 200 {
		t.Fatalf("sliding sync: %d %v", code, resp)
	}
	got := keys(resp["rooms"].(map[string]any))
	slices.Sort(got)
	return got
}

func sorted(ids ...string) []string {
	slices.Sort(ids)
	return ids
}

// TestSlidingSyncDMAndSpaceFilters: is_dm follows the m.direct account
// data; spaces keeps the children (m.space.child with a via) of the
// spaces the user is joined to, and ignores spaces they are not in.
// Spec: MSC4186, SlidingRoomFilter is_dm and spaces.
func TestSlidingSyncDMAndSpaceFilters(t *testing.T) {
	testserver.ForEachEngine(t, nil, func(t *testing.T, srv *testserver.Server) {
		ctx := context.Background()
		alice, bob := newUser(t, srv, "alice"), newUser(t, srv, "bob")
		dm := createRoom(t, srv, alice, roomserver.CreateRoomRequest{Preset: "trusted_private_chat"})
		group := createRoom(t, srv, alice, roomserver.CreateRoomRequest{Preset: "public_chat"})
		space := createRoom(t, srv, alice, roomserver.CreateRoomRequest{Preset: "public_chat",
			CreationContent: map[string]any{"type": "m.space"}})
		bobSpace := createRoom(t, srv, bob, roomserver.CreateRoomRequest{Preset: "public_chat",
			CreationContent: map[string]any{"type": "m.space"}})
		sendState(t, srv, alice, space, "m.space.child", group, `{"via":["localhost"]}`)
		sendState(t, srv, alice, space, "m.space.child", dm, `{}`) // no via: not a child
		sendState(t, srv, bob, bobSpace, "m.space.child", dm, `{"via":["localhost"]}`)

		all := sorted(dm, group, space)
		if got := slidingList(t, srv, alice, map[string]any{"is_dm": true}); len(got) != 0 {
			t.Errorf("is_dm without m.direct = %v", got)
		}
		if err := alice.client.SetAccountData(ctx, "m.direct", map[string][]string{bob.id: {dm}}); err != nil {
			t.Fatal(err)
		}
		if got := slidingList(t, srv, alice, map[string]any{"is_dm": true}); !slices.Equal(got, []string{dm}) {
			t.Errorf("is_dm = %v, want [%s]", got, dm)
		}
		if got := slidingList(t, srv, alice, map[string]any{"is_dm": false}); !slices.Equal(got, sorted(group, space)) {
			t.Errorf("is_dm false = %v", got)
		}
		if got := slidingList(t, srv, alice, map[string]any{}); !slices.Equal(got, all) {
			t.Errorf("no filter = %v, want %v", got, all)
		}
		if got := slidingList(t, srv, alice, map[string]any{"spaces": []string{space}}); !slices.Equal(got, []string{group}) {
			t.Errorf("spaces [space] = %v, want [%s]", got, group)
		}
		// Alice is not in bob's space: it adds nothing.
		if got := slidingList(t, srv, alice, map[string]any{"spaces": []string{space, bobSpace}}); !slices.Equal(got, []string{group}) {
			t.Errorf("spaces [space, bobSpace] = %v, want [%s]", got, group)
		}
		membership(t, srv, "join", alice, alice.id, bobSpace)
		if got := slidingList(t, srv, alice, map[string]any{"spaces": []string{space, bobSpace}}); !slices.Equal(got, sorted(group, dm)) {
			t.Errorf("spaces after joining bob's = %v", got)
		}
		if got := slidingList(t, srv, alice, map[string]any{"spaces": []string{space}, "is_dm": false}); !slices.Equal(got, []string{group}) {
			t.Errorf("spaces and is_dm false = %v", got)
		}
	})
}

// TestIgnoredUsersEphemeralAndSliding: once alice ignores carol, carol's
// messages leave alice's sliding sync timelines (her state events stay),
// carol leaves the typing and receipt events of both sliding sync and
// /sync, and carol's invites are not listed.
// Spec: client-server-api, "Ignoring Users".
func TestIgnoredUsersEphemeralAndSliding(t *testing.T) {
	testserver.ForEachEngine(t, nil, func(t *testing.T, srv *testserver.Server) {
		ctx := context.Background()
		alice, bob, carol := newUser(t, srv, "alice"), newUser(t, srv, "bob"), newUser(t, srv, "carol")
		roomID := createRoom(t, srv, alice, roomserver.CreateRoomRequest{Preset: "public_chat"})
		membership(t, srv, "join", bob, bob.id, roomID)
		membership(t, srv, "join", carol, carol.id, roomID)
		if err := alice.client.SetAccountData(ctx, "m.ignored_user_list", map[string]any{
			"ignored_users": map[string]any{carol.id: map[string]any{}}}); err != nil {
			t.Fatal(err)
		}
		fromCarol := sendText(t, srv, carol, roomID, "from carol")
		fromBob := sendText(t, srv, bob, roomID, "from bob")
		for _, u := range []*user{bob, carol} {
			if _, err := u.client.UserTyping(ctx, id.RoomID(roomID), true, 30*time.Second); err != nil {
				t.Fatal(err)
			}
			if err := u.client.SendReceipt(ctx, id.RoomID(roomID), id.EventID(fromBob), event.ReceiptTypeRead, nil); err != nil {
				t.Fatal(err)
			}
		}
		// carol alone reads her own message: that receipt event empties.
		if err := carol.client.SendReceipt(ctx, id.RoomID(roomID), id.EventID(fromCarol), event.ReceiptTypeReadPrivate, nil); err != nil {
			t.Fatal(err)
		}
		invite := createRoom(t, srv, carol, roomserver.CreateRoomRequest{Preset: "private_chat"})
		membership(t, srv, "invite", carol, alice.id, invite)
		other := createRoom(t, srv, bob, roomserver.CreateRoomRequest{Preset: "private_chat"})
		membership(t, srv, "invite", bob, alice.id, other)

		checkEphemeral := func(where string, typing, receipt json.RawMessage) {
			t.Helper()
			var ty struct {
				Content struct {
					UserIDs []string `json:"user_ids"`
				} `json:"content"`
			}
			_ = json.Unmarshal(typing, &ty)
			if !slices.Equal(ty.Content.UserIDs, []string{bob.id}) {
				t.Errorf("%s: typing = %s, want only bob", where, typing)
			}
			var rc struct {
				Content map[string]map[string]map[string]any `json:"content"`
			}
			_ = json.Unmarshal(receipt, &rc)
			if len(rc.Content) != 1 || len(rc.Content[fromBob]["m.read"]) != 1 || rc.Content[fromBob]["m.read"][bob.id] == nil {
				t.Errorf("%s: receipts = %s, want only bob's", where, receipt)
			}
		}

		code, resp := sliding(t, srv, alice, map[string]any{
			"lists":      map[string]any{"l": map[string]any{"ranges": [][]int{{0, 20}}, "timeline_limit": 10, "required_state": [][]string{}}},
			"extensions": map[string]any{"typing": map[string]any{"enabled": true}, "receipts": map[string]any{"enabled": true}},
		})
		if code != 200 {
			t.Fatalf("sliding sync: %d %v", code, resp)
		}
		rooms := resp["rooms"].(map[string]any)
		if rooms[invite] != nil || rooms[other] == nil {
			t.Errorf("rooms listed: %v (carol's invite %s must not be, bob's %s must)", keys(rooms), invite, other)
		}
		var ids []string
		carolJoinSeen := false
		for _, e := range rooms[roomID].(map[string]any)["timeline"].([]any) {
			ev := e.(map[string]any)
			ids = append(ids, ev["event_id"].(string))
			if ev["type"] == "m.room.member" && ev["state_key"] == carol.id {
				carolJoinSeen = true
			}
		}
		if slices.Contains(ids, fromCarol) || !slices.Contains(ids, fromBob) || !carolJoinSeen {
			t.Errorf("timeline %v: want bob's message and carol's join, not carol's message %s", ids, fromCarol)
		}
		ext := resp["extensions"].(map[string]any)
		typing, _ := json.Marshal(ext["typing"].(map[string]any)["rooms"].(map[string]any)[roomID])
		receipts, _ := json.Marshal(ext["receipts"].(map[string]any)["rooms"].(map[string]any)[roomID])
		checkEphemeral("sliding sync", typing, receipts)

		_, body := rawSync(t, srv, alice, "")
		var typ, rec json.RawMessage
		for _, e := range path(body, "rooms", "join", roomID, "ephemeral", "events").([]any) {
			raw, _ := json.Marshal(e)
			switch e.(map[string]any)["type"] {
			case "m.typing":
				typ = raw
			case "m.receipt":
				rec = raw
			}
		}
		checkEphemeral("/sync", typ, rec)
	})
}

// TestSyncTimelineLimitZero: a timeline limit of 0 gives rooms with an
// empty, limited timeline whose state reaches the end of the window (for
// a room left, the state at the leave) and whose prev_batch pages back
// from the latest event. Complement: TestArchivedRoomsHistory.
func TestSyncTimelineLimitZero(t *testing.T) {
	testserver.ForEachEngine(t, nil, func(t *testing.T, srv *testserver.Server) {
		alice, bob := newUser(t, srv, "alice"), newUser(t, srv, "bob")
		roomID := createRoom(t, srv, alice, roomserver.CreateRoomRequest{Preset: "public_chat"})
		membership(t, srv, "join", bob, bob.id, roomID)
		sendState(t, srv, alice, roomID, "a.test", "", `{"k":"before"}`)
		sendText(t, srv, alice, roomID, "hello")
		membership(t, srv, "leave", bob, bob.id, roomID)
		sendState(t, srv, alice, roomID, "a.test", "", `{"k":"after"}`)
		last := sendText(t, srv, alice, roomID, "later")

		filter := url.QueryEscape(`{"room":{"timeline":{"limit":0},"include_leave":true}}`)
		check := func(u *user, section, wantK string, wantLeave, pagesFromLeave bool) {
			t.Helper()
			code, body := rawSync(t, srv, u, "filter="+filter)
			if code != 200 {
				t.Fatalf("%s: sync: %d %v", u.id, code, body)
			}
			room, _ := path(body, "rooms", section, roomID).(map[string]any)
			if room == nil {
				t.Fatalf("%s: room not in rooms.%s: %v", u.id, section, body["rooms"])
			}
			tl := room["timeline"].(map[string]any)
			if evs, _ := tl["events"].([]any); len(evs) != 0 || tl["limited"] != true || tl["prev_batch"] == "" {
				t.Fatalf("%s: timeline = %v", u.id, tl)
			}
			k, leave := "", false
			for _, e := range room["state"].(map[string]any)["events"].([]any) {
				ev := e.(map[string]any)
				if ev["type"] == "a.test" {
					k, _ = path(ev, "content", "k").(string)
				}
				if ev["type"] == "m.room.member" && ev["state_key"] == bob.id && path(ev, "content", "membership") == "leave" {
					leave = true
				}
			}
			if k != wantK || leave != wantLeave {
				t.Errorf("%s: state has a.test %q and bob's leave %v; want %q and %v", u.id, k, leave, wantK, wantLeave)
			}
			code, page := rawRequest(t, srv, u, "GET", "/_matrix/client/v3/rooms/"+url.PathEscape(roomID)+
				"/messages?dir=b&limit=1&from="+url.QueryEscape(tl["prev_batch"].(string)), "")
			chunk, _ := page["chunk"].([]any)
			if code != 200 || len(chunk) != 1 {
				t.Fatalf("%s: /messages from prev_batch: %d %v", u.id, code, page)
			}
			if pagesFromLeave {
				if first := chunk[0].(map[string]any); first["state_key"] != bob.id {
					t.Errorf("%s: paging back starts at %v, want bob's leave", u.id, first)
				}
			} else if first := chunk[0].(map[string]any); first["event_id"] != last {
				t.Errorf("%s: paging back starts at %v, want %s", u.id, first["event_id"], last)
			}
		}
		check(bob, "leave", "before", true, true)
		check(alice, "join", "after", true, false)
	})
}
