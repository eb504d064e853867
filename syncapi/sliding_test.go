package syncapi_test

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/myelin-chat/myelin/internal/testserver"
	"github.com/myelin-chat/myelin/roomserver"
)

const slidingPath = "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync"

func sliding(t *testing.T, srv *testserver.Server, u *user, body any) (int, map[string]any) {
	t.Helper()
	data, _ := json.Marshal(body)
	return rawRequest(t, srv, u, "POST", slidingPath, string(data))
}

// TestSlidingSyncSession follows Element X: a first page of rooms by
// recency, then incremental updates as messages arrive.
func TestSlidingSyncSession(t *testing.T) {
	testserver.ForEachEngine(t, nil, func(t *testing.T, srv *testserver.Server) {
		alice := newUser(t, srv, "alice")
		bob := newUser(t, srv, "bob")
		var rooms []string
		for i := 0; i < 4; i++ {
			r := createRoom(t, srv, alice, roomserver.CreateRoomRequest{Preset: "public_chat", Name: fmt.Sprintf("room %d", i)})
			rooms = append(rooms, r)
		}
		membership(t, srv, "join", bob, bob.id, rooms[1])
		sendText(t, srv, alice, rooms[2], "hello 2") // recency: 1, 0, 2, 3
		sendText(t, srv, alice, rooms[0], "hello 0")
		sendText(t, srv, bob, rooms[1], "hello 1")
		listReq := map[string]any{
			"conn_id": "main",
			"lists": map[string]any{"all": map[string]any{
				"ranges":         [][]int{{0, 1}},
				"timeline_limit": 1,
				"required_state": [][]string{{"m.room.create", ""}, {"m.room.member", "$LAZY"}},
			}},
			"extensions": map[string]any{"account_data": map[string]any{"enabled": true},
				"e2ee": map[string]any{"enabled": true}, "to_device": map[string]any{"enabled": true},
				"typing": map[string]any{"enabled": true}, "receipts": map[string]any{"enabled": true}},
		}
		code, resp := sliding(t, srv, alice, listReq)
		if code != 200 {
			t.Fatalf("first request: %d %v", code, resp)
		}
		if c := resp["lists"].(map[string]any)["all"].(map[string]any)["count"].(float64); c != 4 {
			t.Errorf("list count = %v, want 4", c)
		}
		got := resp["rooms"].(map[string]any)
		if len(got) != 2 || got[rooms[1]] == nil || got[rooms[0]] == nil {
			t.Fatalf("range [0,1] gave rooms %v, want the two most recent (%s, %s)", keys(got), rooms[1], rooms[0])
		}
		r1 := got[rooms[1]].(map[string]any)
		if r1["initial"] != true || r1["name"] != "room 1" || r1["membership"] != "join" || r1["joined_count"].(float64) != 2 {
			t.Errorf("room result = %v", r1)
		}
		tl := r1["timeline"].([]any)
		if len(tl) != 1 || tl[0].(map[string]any)["content"].(map[string]any)["body"] != "hello 1" || r1["limited"] != true {
			t.Errorf("timeline_limit 1: %v limited=%v", tl, r1["limited"])
		}
		var types []string
		for _, e := range r1["required_state"].([]any) {
			ev := e.(map[string]any)
			types = append(types, ev["type"].(string)+"|"+ev["state_key"].(string))
		}
		// create (asked for) and bob's membership (lazy: he sent the timeline event); nothing else.
		if len(types) != 2 || !contains(types, "m.room.create|") || !contains(types, "m.room.member|"+bob.id) {
			t.Errorf("required_state = %v", types)
		}
		if r0 := got[rooms[0]].(map[string]any); r0["bump_stamp"].(float64) >= r1["bump_stamp"].(float64) {
			t.Errorf("bump_stamp not by recency: %v >= %v", r0["bump_stamp"], r1["bump_stamp"])
		}
		ext := resp["extensions"].(map[string]any)
		for _, name := range []string{"account_data", "e2ee", "to_device", "typing", "receipts"} {
			if ext[name] == nil {
				t.Errorf("extension %s missing", name)
			}
		}
		pos := resp["pos"].(string)

		// Nothing changed: with timeout 0 the answer is immediate and empty.
		listReq["pos"] = pos
		code, resp = sliding(t, srv, alice, listReq)
		if code != 200 || len(resp["rooms"].(map[string]any)) != 0 {
			t.Fatalf("no-change request: %d rooms=%v", code, resp["rooms"])
		}
		pos = resp["pos"].(string)

		// Long-poll woken by a message in room 3, which moves it to the top.
		listReq["pos"] = pos
		listReq["timeout"] = 10000
		// The message is sent once the request waits (a fixed sleep may
		// be outlasted on a loaded machine).
		sent := make(chan time.Time, 1)
		go func() {
			for deadline := time.Now().Add(20 * time.Second); srv.HS.Sync.Waiting() < 1 && time.Now().Before(deadline); {
				time.Sleep(time.Millisecond)
			}
			sent <- time.Now()
			sendText(t, srv, alice, rooms[3], "bump")
		}()
		code, resp = sliding(t, srv, alice, listReq)
		if code != 200 {
			t.Fatalf("long-poll: %d %v", code, resp)
		}
		// Unwoken, the request waits its 10 s timeout; 2 s after the send
		// began leaves a loaded machine the send's round trip.
		select {
		case at := <-sent:
			if d := time.Since(at); d > 2*time.Second {
				t.Errorf("long-poll returned %v after the send began", d)
			}
		default:
			t.Errorf("long-poll returned before the message was sent: %v", resp)
		}
		r3, _ := resp["rooms"].(map[string]any)[rooms[3]].(map[string]any)
		if r3 == nil || r3["initial"] != true {
			t.Fatalf("room 3 should enter the window as initial: %v", resp["rooms"])
		}
		if tl := r3["timeline"].([]any); len(tl) != 1 || tl[0].(map[string]any)["content"].(map[string]any)["body"] != "bump" {
			t.Errorf("room 3 timeline = %v", tl)
		}
		if n := r3["num_live"].(float64); n != 1 {
			t.Errorf("num_live = %v", n)
		}
		pos = resp["pos"].(string)

		// Incremental update of a room already sent: only the new event.
		sendText(t, srv, bob, rooms[1], "again")
		listReq["pos"] = pos
		listReq["timeout"] = 0
		_, resp = sliding(t, srv, alice, listReq)
		r1, _ = resp["rooms"].(map[string]any)[rooms[1]].(map[string]any)
		if r1 == nil || r1["initial"] == true || r1["name"] != nil {
			t.Fatalf("incremental room 1 = %v", r1)
		}
		if tl := r1["timeline"].([]any); len(tl) != 1 {
			t.Errorf("incremental timeline = %v", tl)
		}
		newPos := resp["pos"].(string)
		if newPos == pos {
			t.Error("pos did not advance")
		}

		// Room subscription with a larger timeline and all state.
		code, resp = sliding(t, srv, alice, map[string]any{
			"conn_id": "main", "pos": newPos,
			"room_subscriptions": map[string]any{rooms[2]: map[string]any{"timeline_limit": 5,
				"required_state": map[string]any{"include": []any{map[string]any{}}}}},
		})
		r2, _ := resp["rooms"].(map[string]any)[rooms[2]].(map[string]any)
		if code != 200 || r2 == nil || len(r2["timeline"].([]any)) != 5 || len(r2["required_state"].([]any)) < 6 {
			t.Fatalf("subscription: %d %v", code, r2)
		}

		// A pos from another user, or an unknown one, is M_UNKNOWN_POS.
		for _, u := range []*user{bob, alice} {
			p := newPos
			if u == alice {
				p = strings.Split(newPos, ".")[0] + ".999"
			}
			code, resp = sliding(t, srv, u, map[string]any{"conn_id": "main", "pos": p})
			if code != 400 || resp["errcode"] != "M_UNKNOWN_POS" {
				t.Errorf("foreign/unknown pos: %d %v", code, resp)
			}
		}
	})
}

func TestSlidingSyncFilters(t *testing.T) {
	testserver.ForEachEngine(t, nil, func(t *testing.T, srv *testserver.Server) {
		alice := newUser(t, srv, "alice")
		bob := newUser(t, srv, "bob")
		plain := createRoom(t, srv, alice, roomserver.CreateRoomRequest{Preset: "public_chat"})
		encrypted := createRoom(t, srv, alice, roomserver.CreateRoomRequest{Preset: "private_chat",
			InitialState: []roomserver.StateEvent{{Type: "m.room.encryption", Content: json.RawMessage(`{"algorithm":"m.megolm.v1.aes-sha2"}`)}}})
		space := createRoom(t, srv, alice, roomserver.CreateRoomRequest{Preset: "public_chat",
			CreationContent: map[string]any{"type": "m.space"}})
		invited := createRoom(t, srv, bob, roomserver.CreateRoomRequest{Preset: "private_chat"})
		membership(t, srv, "invite", bob, alice.id, invited)

		list := func(filters map[string]any) []string {
			_, resp := sliding(t, srv, alice, map[string]any{"lists": map[string]any{"l": map[string]any{
				"timeline_limit": 0, "required_state": [][]string{}, "filters": filters}}})
			return keys(resp["rooms"].(map[string]any))
		}
		// Private rooms are encrypted by default, so bob's room counts too.
		if got := list(map[string]any{"is_encrypted": true}); len(got) != 2 || !contains(got, encrypted) || !contains(got, invited) {
			t.Errorf("is_encrypted = %v", got)
		}
		if got := list(map[string]any{"is_encrypted": false}); len(got) != 2 || !contains(got, plain) || !contains(got, space) {
			t.Errorf("is_encrypted false = %v", got)
		}
		if got := list(map[string]any{"is_invite": true}); len(got) != 1 || got[0] != invited {
			t.Errorf("is_invite = %v", got)
		}
		if got := list(map[string]any{"room_types": []any{"m.space"}}); len(got) != 1 || got[0] != space {
			t.Errorf("room_types = %v", got)
		}
		if got := list(map[string]any{"not_room_types": []any{"m.space"}, "is_invited": false}); len(got) != 2 || contains(got, space) || contains(got, invited) {
			t.Errorf("not_room_types + is_invited false = %v", got)
		}
		_, resp := sliding(t, srv, alice, map[string]any{"lists": map[string]any{"l": map[string]any{
			"timeline_limit": 0, "required_state": [][]string{}, "filters": map[string]any{"is_invite": true}}}})
		inv := resp["rooms"].(map[string]any)[invited].(map[string]any)
		if inv["membership"] != "invite" || len(inv["stripped_state"].([]any)) == 0 {
			t.Errorf("invite result = %v", inv)
		}
	})
}

func keys(m map[string]any) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}
