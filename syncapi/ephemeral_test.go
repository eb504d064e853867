package syncapi_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/myelin-chat/myelin/internal/testserver"
	"github.com/myelin-chat/myelin/roomserver"
)

// asyncResult is a request run in the background.
type asyncResult struct {
	status int
	body   map[string]any
	err    error
}

// startRequest runs a request in the background (a long poll), so the
// test can act while it waits.
func startRequest(srv *testserver.Server, u *user, method, path, body string) <-chan asyncResult {
	ch := make(chan asyncResult, 1)
	go func() {
		req, err := http.NewRequest(method, srv.URL+path, strings.NewReader(body))
		if err != nil {
			ch <- asyncResult{err: err}
			return
		}
		req.Header.Set("Authorization", "Bearer "+u.token)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			ch <- asyncResult{err: err}
			return
		}
		defer resp.Body.Close()
		data, _ := io.ReadAll(resp.Body)
		var out map[string]any
		err = json.Unmarshal(data, &out)
		ch <- asyncResult{status: resp.StatusCode, body: out, err: err}
	}()
	return ch
}

// stillWaiting fails the test if the long poll answered within d: it
// must be parked for the wake-up to prove anything.
func stillWaiting(t *testing.T, ch <-chan asyncResult, d time.Duration) {
	t.Helper()
	select {
	case r := <-ch:
		t.Fatalf("long poll answered before anything happened: %d %v %v", r.status, r.body, r.err)
	case <-time.After(d):
	}
}

// awaitWake waits for a long poll to answer, and fails if that takes
// longer than a wake-up should (the poll's own timeout is far longer).
func awaitWake(t *testing.T, ch <-chan asyncResult, what string) map[string]any {
	t.Helper()
	start := time.Now()
	select {
	case r := <-ch:
		if r.err != nil || r.status != 200 {
			t.Fatalf("%s: long poll: %d %v %v", what, r.status, r.body, r.err)
		}
		// Unwoken, the poll answers at its 20 s timeout; 5 s leaves a
		// loaded machine room and still tells the two apart.
		if waited := time.Since(start); waited > 5*time.Second {
			t.Fatalf("%s: long poll woke after %v", what, waited)
		}
		return r.body
	case <-time.After(15 * time.Second):
		t.Fatalf("%s did not wake the long-polling sync", what)
	}
	return nil
}

// path walks nested JSON objects; nil if any step is missing.
func path(v any, keys ...string) any {
	for _, k := range keys {
		m, ok := v.(map[string]any)
		if !ok {
			return nil
		}
		v = m[k]
	}
	return v
}

// roomEphemeral returns the events of type typ in a joined room's
// ephemeral section of a sync response.
func roomEphemeral(body map[string]any, roomID, typ string) []map[string]any {
	evs, _ := path(body, "rooms", "join", roomID, "ephemeral", "events").([]any)
	var out []map[string]any
	for _, e := range evs {
		if m, ok := e.(map[string]any); ok && m["type"] == typ {
			out = append(out, m)
		}
	}
	return out
}

func typingUsers(t *testing.T, body map[string]any, roomID string) []string {
	t.Helper()
	evs := roomEphemeral(body, roomID, "m.typing")
	if len(evs) != 1 {
		t.Fatalf("want one m.typing event in %s, got %v (response %v)", roomID, evs, body)
	}
	ids, ok := path(evs[0], "content", "user_ids").([]any)
	if !ok {
		t.Fatalf("m.typing without a user_ids array: %v", evs[0])
	}
	out := []string{}
	for _, u := range ids {
		out = append(out, u.(string))
	}
	return out
}

func nextBatch(t *testing.T, body map[string]any) string {
	t.Helper()
	nb, _ := body["next_batch"].(string)
	if nb == "" {
		t.Fatalf("no next_batch in %v", body)
	}
	return nb
}

func syncPath(query string) string { return "/_matrix/client/v3/sync?" + query }

// TestSyncTypingWakesLongPoll: Alice starting and stopping typing wakes
// Bob's long-polling /sync, whose room ephemeral section carries m.typing.
// Spec: client-server-api, "Typing Notifications".
func TestSyncTypingWakesLongPoll(t *testing.T) {
	testserver.ForEachEngine(t, nil, func(t *testing.T, srv *testserver.Server) {
		ctx := context.Background()
		alice, bob := newUser(t, srv, "alice"), newUser(t, srv, "bob")
		roomID := createRoom(t, srv, alice, roomserver.CreateRoomRequest{Preset: "public_chat"})
		membership(t, srv, "join", bob, bob.id, roomID)

		_, body := rawSync(t, srv, bob, "")
		if evs := roomEphemeral(body, roomID, "m.typing"); len(evs) != 0 {
			t.Fatalf("typing before anyone typed: %v", evs)
		}
		since := nextBatch(t, body)

		poll := startRequest(srv, bob, "GET", syncPath("timeout=20000&since="+url.QueryEscape(since)), "")
		stillWaiting(t, poll, 300*time.Millisecond)
		if _, err := alice.client.UserTyping(ctx, id.RoomID(roomID), true, 30*time.Second); err != nil {
			t.Fatal(err)
		}
		body = awaitWake(t, poll, "typing start")
		if got := typingUsers(t, body, roomID); !slices.Equal(got, []string{alice.id}) {
			t.Fatalf("typing users = %v, want [%s]", got, alice.id)
		}

		// Typing is current state for an initial sync.
		_, initial := rawSync(t, srv, bob, "")
		if got := typingUsers(t, initial, roomID); !slices.Equal(got, []string{alice.id}) {
			t.Fatalf("initial sync typing users = %v", got)
		}

		since = nextBatch(t, body)
		poll = startRequest(srv, bob, "GET", syncPath("timeout=20000&since="+url.QueryEscape(since)), "")
		stillWaiting(t, poll, 300*time.Millisecond)
		if _, err := alice.client.UserTyping(ctx, id.RoomID(roomID), false, 0); err != nil {
			t.Fatal(err)
		}
		body = awaitWake(t, poll, "typing stop")
		if got := typingUsers(t, body, roomID); len(got) != 0 {
			t.Fatalf("after stop, typing users = %v, want none", got)
		}

		// Nothing changed since: an incremental sync has no m.typing.
		_, body = rawSync(t, srv, bob, "since="+url.QueryEscape(nextBatch(t, body)))
		if evs := roomEphemeral(body, roomID, "m.typing"); len(evs) != 0 {
			t.Fatalf("m.typing repeated without a change: %v", evs)
		}

		// A filter leaving out m.typing leaves it out.
		if _, err := alice.client.UserTyping(ctx, id.RoomID(roomID), true, 30*time.Second); err != nil {
			t.Fatal(err)
		}
		filter := url.QueryEscape(`{"room":{"ephemeral":{"not_types":["m.typing"]}}}`)
		_, body = rawSync(t, srv, bob, "filter="+filter)
		if evs := roomEphemeral(body, roomID, "m.typing"); len(evs) != 0 {
			t.Fatalf("filtered-out m.typing sent: %v", evs)
		}
	})
}

// TestSyncReceipts: Alice's public read receipt wakes Bob's long poll and
// shows in his sync with the spec's content shape; her private receipt
// reaches only her own sync. Spec: client-server-api, "Receipts",
// "Private read receipts", "Threaded read receipts".
func TestSyncReceipts(t *testing.T) {
	testserver.ForEachEngine(t, nil, func(t *testing.T, srv *testserver.Server) {
		ctx := context.Background()
		alice, bob := newUser(t, srv, "alice"), newUser(t, srv, "bob")
		roomID := createRoom(t, srv, alice, roomserver.CreateRoomRequest{Preset: "public_chat"})
		membership(t, srv, "join", bob, bob.id, roomID)
		first := sendText(t, srv, bob, roomID, "first")
		second := sendText(t, srv, bob, roomID, "second")

		// Alice syncs once first, so her presence going online does not
		// wake Bob's poll below.
		rawSync(t, srv, alice, "")
		_, body := rawSync(t, srv, bob, "")
		since := nextBatch(t, body)

		poll := startRequest(srv, bob, "GET", syncPath("timeout=20000&since="+url.QueryEscape(since)), "")
		stillWaiting(t, poll, 300*time.Millisecond)
		if err := alice.client.SendReceipt(ctx, id.RoomID(roomID), id.EventID(first), event.ReceiptTypeRead,
			map[string]any{"thread_id": "main"}); err != nil {
			t.Fatal(err)
		}
		body = awaitWake(t, poll, "read receipt")
		receipts := roomEphemeral(body, roomID, "m.receipt")
		if len(receipts) != 1 {
			t.Fatalf("want one m.receipt, got %v", receipts)
		}
		r, ok := path(receipts[0], "content", first, "m.read", alice.id).(map[string]any)
		if !ok {
			t.Fatalf("m.receipt content lacks %s/m.read/%s: %v", first, alice.id, receipts[0])
		}
		if ts, _ := r["ts"].(float64); ts <= 0 || r["thread_id"] != "main" {
			t.Fatalf("receipt = %v, want a ts and thread_id main", r)
		}
		since = nextBatch(t, body)

		if err := alice.client.SendReceipt(ctx, id.RoomID(roomID), id.EventID(second), event.ReceiptTypeReadPrivate, nil); err != nil {
			t.Fatal(err)
		}
		_, body = rawSync(t, srv, bob, "since="+url.QueryEscape(since))
		for _, rc := range roomEphemeral(body, roomID, "m.receipt") {
			t.Fatalf("Bob was sent a private receipt: %v", rc)
		}
		_, body = rawSync(t, srv, bob, "")
		if path(roomEphemeral(body, roomID, "m.receipt")[0], "content", second) != nil {
			t.Fatalf("Bob's initial sync has a receipt for the privately read event: %v", body)
		}
		if path(roomEphemeral(body, roomID, "m.receipt")[0], "content", first, "m.read", alice.id) == nil {
			t.Fatalf("Bob's initial sync lacks Alice's public receipt: %v", body)
		}
		_, body = rawSync(t, srv, alice, "")
		rcs := roomEphemeral(body, roomID, "m.receipt")
		if len(rcs) != 1 || path(rcs[0], "content", second, "m.read.private", alice.id) == nil {
			t.Fatalf("Alice's own sync lacks her private receipt: %v", rcs)
		}
	})
}

// presenceOf returns the m.presence content of sender in a sync
// response, or nil.
func presenceOf(body map[string]any, sender string) map[string]any {
	evs, _ := path(body, "presence", "events").([]any)
	for _, e := range evs {
		m, _ := e.(map[string]any)
		if m["type"] == "m.presence" && m["sender"] == sender {
			c, _ := m["content"].(map[string]any)
			return c
		}
	}
	return nil
}

// TestSyncPresence: a sync with set_presence=online makes Alice online
// for Bob, who shares a room, and not for Carol, who shares none;
// set_presence=offline leaves presence alone; syncing again does not
// write presence; a status change wakes Bob's long poll.
// Spec: client-server-api, "Presence", GET /sync set_presence.
func TestSyncPresence(t *testing.T) {
	testserver.ForEachEngine(t, nil, func(t *testing.T, srv *testserver.Server) {
		ctx := context.Background()
		alice, bob, carol := newUser(t, srv, "alice"), newUser(t, srv, "bob"), newUser(t, srv, "carol")
		roomID := createRoom(t, srv, alice, roomserver.CreateRoomRequest{Preset: "public_chat"})
		membership(t, srv, "join", bob, bob.id, roomID)
		createRoom(t, srv, carol, roomserver.CreateRoomRequest{Preset: "public_chat"})

		// offline: the sync does not mark Alice online.
		rawSync(t, srv, alice, "set_presence=offline")
		_, body := rawSync(t, srv, bob, "set_presence=offline")
		if p := presenceOf(body, alice.id); p != nil {
			t.Fatalf("set_presence=offline made Alice %v", p)
		}

		rawSync(t, srv, alice, "set_presence=online")
		_, body = rawSync(t, srv, bob, "set_presence=offline")
		p := presenceOf(body, alice.id)
		if p == nil || p["presence"] != "online" || p["currently_active"] != true {
			t.Fatalf("Bob sees Alice's presence as %v, want online and currently active (response %v)", p, body["presence"])
		}
		if ago, ok := p["last_active_ago"].(float64); !ok || ago < 0 || ago > 60000 {
			t.Fatalf("last_active_ago = %v", p["last_active_ago"])
		}
		_, body = rawSync(t, srv, carol, "")
		if p := presenceOf(body, alice.id); p != nil {
			t.Fatalf("Carol, sharing no room with Alice, sees her presence %v", p)
		}
		if p := presenceOf(body, carol.id); p == nil || p["presence"] != "online" {
			t.Fatalf("Carol's own presence after a default sync = %v, want online", p)
		}

		carolSince := nextBatch(t, body)

		// Syncing again with the same presence does not move the stream.
		_, head, err := srv.HS.ClientAPI.PresenceSince(ctx, 0)
		if err != nil {
			t.Fatal(err)
		}
		rawSync(t, srv, alice, "")
		rawSync(t, srv, alice, "set_presence=online")
		if _, again, _ := srv.HS.ClientAPI.PresenceSince(ctx, 0); again != head {
			t.Fatalf("unchanged set_presence moved the presence stream %d -> %d", head, again)
		}

		// unavailable is news; so is a status message, which a later
		// sync keeps.
		_, body = rawSync(t, srv, bob, "set_presence=offline")
		since := nextBatch(t, body)
		poll := startRequest(srv, bob, "GET", syncPath("set_presence=offline&timeout=20000&since="+url.QueryEscape(since)), "")
		stillWaiting(t, poll, 300*time.Millisecond)
		if err := alice.client.SetPresence(ctx, mautrix.ReqPresence{Presence: event.PresenceUnavailable, StatusMsg: "lunch"}); err != nil {
			t.Fatal(err)
		}
		body = awaitWake(t, poll, "presence change")
		if p := presenceOf(body, alice.id); p == nil || p["presence"] != "unavailable" || p["status_msg"] != "lunch" || p["currently_active"] != false {
			t.Fatalf("after PUT presence, Bob sees %v", p)
		}
		since = nextBatch(t, body)
		_, carolBody := rawSync(t, srv, carol, "since="+url.QueryEscape(carolSince))
		if p := presenceOf(carolBody, alice.id); p != nil {
			t.Fatalf("Carol's incremental sync has Alice's presence change %v", p)
		}
		rawSync(t, srv, alice, "set_presence=online")
		_, body = rawSync(t, srv, bob, "set_presence=offline&since="+url.QueryEscape(since))
		if p := presenceOf(body, alice.id); p == nil || p["presence"] != "online" || p["status_msg"] != "lunch" {
			t.Fatalf("after Alice synced online again, Bob sees %v", p)
		}

		// An initial sync sees the current presence of everyone sharing a
		// room (here more users changed than Bob has rooms, which asks the
		// rooms rather than the users).
		_, body = rawSync(t, srv, bob, "set_presence=offline")
		if p := presenceOf(body, alice.id); p == nil || p["presence"] != "online" {
			t.Fatalf("Bob's initial sync has Alice's presence %v", p)
		}
		if p := presenceOf(body, carol.id); p != nil {
			t.Fatalf("Bob's initial sync has the presence of Carol, who shares no room: %v", p)
		}
	})
}

// TestSlidingSyncTypingReceipts: the typing and receipts extensions of
// sliding sync carry the same data as /sync, wake a long poll, and keep
// to the rooms of the lists and subscriptions they name.
// Spec: MSC4186 "Extensions", MSC3960 (receipts), MSC3961 (typing).
func TestSlidingSyncTypingReceipts(t *testing.T) {
	testserver.ForEachEngine(t, nil, func(t *testing.T, srv *testserver.Server) {
		ctx := context.Background()
		alice, bob := newUser(t, srv, "alice"), newUser(t, srv, "bob")
		room1 := createRoom(t, srv, alice, roomserver.CreateRoomRequest{Preset: "public_chat", Name: "one"})
		room2 := createRoom(t, srv, alice, roomserver.CreateRoomRequest{Preset: "public_chat", Name: "two"})
		for _, r := range []string{room1, room2} {
			membership(t, srv, "join", bob, bob.id, r)
		}
		ev1 := sendText(t, srv, bob, room1, "in one")
		ev2 := sendText(t, srv, bob, room2, "in two")
		for r, ev := range map[string]string{room1: ev1, room2: ev2} {
			if err := alice.client.SendReceipt(ctx, id.RoomID(r), id.EventID(ev), event.ReceiptTypeRead, nil); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := alice.client.UserTyping(ctx, id.RoomID(room1), true, 30*time.Second); err != nil {
			t.Fatal(err)
		}
		rawSync(t, srv, alice, "") // Alice online now, not during Bob's poll

		req := map[string]any{
			"conn_id": "main",
			"lists":   map[string]any{"all": map[string]any{"ranges": [][]int{{0, 9}}, "timeline_limit": 1}},
			"extensions": map[string]any{
				"typing":   map[string]any{"enabled": true},
				"receipts": map[string]any{"enabled": true, "lists": []string{"all"}},
			},
		}
		code, resp := sliding(t, srv, bob, req)
		if code != 200 {
			t.Fatalf("first request: %d %v", code, resp)
		}
		if ids := path(resp, "extensions", "typing", "rooms", room1, "content", "user_ids"); fmt.Sprint(ids) != fmt.Sprint([]any{alice.id}) {
			t.Fatalf("typing extension for room1 = %v, want [%s]", ids, alice.id)
		}
		if path(resp, "extensions", "typing", "rooms", room2) != nil {
			t.Fatalf("typing extension has room2 where nobody types: %v", resp["extensions"])
		}
		for r, ev := range map[string]string{room1: ev1, room2: ev2} {
			if rc := path(resp, "extensions", "receipts", "rooms", r, "content", ev, "m.read", alice.id, "ts"); rc == nil {
				t.Fatalf("receipts extension lacks Alice's receipt in %s: %v", r, path(resp, "extensions", "receipts"))
			}
			if tp := path(resp, "extensions", "receipts", "rooms", r, "type"); tp != "m.receipt" {
				t.Fatalf("receipts extension event type = %v", tp)
			}
		}

		// A long poll wakes when Alice stops typing, with an empty set.
		req["pos"] = resp["pos"]
		req["timeout"] = 20000
		data, _ := json.Marshal(req)
		poll := startRequest(srv, bob, "POST", slidingPath, string(data))
		stillWaiting(t, poll, 300*time.Millisecond)
		if _, err := alice.client.UserTyping(ctx, id.RoomID(room1), false, 0); err != nil {
			t.Fatal(err)
		}
		resp = awaitWake(t, poll, "typing stop (sliding)")
		if ids, ok := path(resp, "extensions", "typing", "rooms", room1, "content", "user_ids").([]any); !ok || len(ids) != 0 {
			t.Fatalf("typing extension after stop = %v, want an empty user_ids", path(resp, "extensions", "typing"))
		}
		if rooms := path(resp, "extensions", "receipts", "rooms").(map[string]any); len(rooms) != 0 {
			t.Fatalf("receipts repeated without a change: %v", rooms)
		}

		// And when Alice reads, with just the new receipt.
		ev3 := sendText(t, srv, bob, room2, "more")
		req["pos"] = resp["pos"]
		code, resp = sliding(t, srv, bob, req)
		if code != 200 {
			t.Fatalf("catch-up request: %d %v", code, resp)
		}
		req["pos"] = resp["pos"]
		data, _ = json.Marshal(req)
		poll = startRequest(srv, bob, "POST", slidingPath, string(data))
		stillWaiting(t, poll, 300*time.Millisecond)
		if err := alice.client.SendReceipt(ctx, id.RoomID(room2), id.EventID(ev3), event.ReceiptTypeRead, nil); err != nil {
			t.Fatal(err)
		}
		resp = awaitWake(t, poll, "receipt (sliding)")
		rooms := path(resp, "extensions", "receipts", "rooms").(map[string]any)
		if len(rooms) != 1 || path(rooms, room2, "content", ev3, "m.read", alice.id) == nil {
			t.Fatalf("receipts extension after a read = %v, want only room2 with %s", rooms, ev3)
		}

		// Scoping: receipts only for the subscribed room2; typing only
		// for a list that does not exist, so for no room.
		if _, err := alice.client.UserTyping(ctx, id.RoomID(room1), true, 30*time.Second); err != nil {
			t.Fatal(err)
		}
		code, resp = sliding(t, srv, bob, map[string]any{
			"conn_id":            "scoped",
			"lists":              map[string]any{"all": map[string]any{"ranges": [][]int{{0, 9}}, "timeline_limit": 1}},
			"room_subscriptions": map[string]any{room2: map[string]any{"timeline_limit": 1}},
			"extensions": map[string]any{
				"typing":   map[string]any{"enabled": true, "lists": []string{"other"}, "rooms": []string{}},
				"receipts": map[string]any{"enabled": true, "lists": []string{}, "rooms": []string{room2}},
			},
		})
		if code != 200 {
			t.Fatalf("scoped request: %d %v", code, resp)
		}
		if rooms := path(resp, "extensions", "typing", "rooms").(map[string]any); len(rooms) != 0 {
			t.Fatalf("typing extension scoped to a missing list has rooms %v", rooms)
		}
		rooms = path(resp, "extensions", "receipts", "rooms").(map[string]any)
		if len(rooms) != 1 || rooms[room2] == nil {
			t.Fatalf("receipts extension scoped to room2 has rooms %v", keys(rooms))
		}
		code, resp = sliding(t, srv, bob, map[string]any{
			"conn_id":    "scoped2",
			"lists":      map[string]any{"all": map[string]any{"ranges": [][]int{{0, 9}}, "timeline_limit": 1}},
			"extensions": map[string]any{"typing": map[string]any{"enabled": true, "lists": []string{"*"}}},
		})
		if code != 200 {
			t.Fatalf("wildcard request: %d %v", code, resp)
		}
		if ids := path(resp, "extensions", "typing", "rooms", room1, "content", "user_ids"); fmt.Sprint(ids) != fmt.Sprint([]any{alice.id}) {
			t.Fatalf("typing extension with lists [*] = %v", path(resp, "extensions", "typing"))
		}
	})
}

// TestSyncPresenceFilter: a presence filter with not_types ["*"] leaves
// presence out of a sync, and a long poll with it is not woken by a
// presence change (only by the message that follows); one with senders
// keeps only those senders' presence.
// Spec: client-server-api, "Filtering" (Filter.presence is an EventFilter).
func TestSyncPresenceFilter(t *testing.T) {
	testserver.ForEachEngine(t, nil, func(t *testing.T, srv *testserver.Server) {
		ctx := context.Background()
		alice, bob, carol := newUser(t, srv, "alice"), newUser(t, srv, "bob"), newUser(t, srv, "carol")
		roomID := createRoom(t, srv, alice, roomserver.CreateRoomRequest{Preset: "public_chat"})
		membership(t, srv, "join", bob, bob.id, roomID)
		membership(t, srv, "join", carol, carol.id, roomID)
		rawSync(t, srv, alice, "set_presence=online")
		rawSync(t, srv, carol, "set_presence=online")

		noPresence := "filter=" + url.QueryEscape(`{"presence":{"not_types":["*"]}}`)
		_, body := rawSync(t, srv, bob, noPresence)
		if evs, _ := path(body, "presence", "events").([]any); len(evs) != 0 {
			t.Fatalf("not_types [*] still returned presence %v", evs)
		}
		onlyCarol := "filter=" + url.QueryEscape(`{"presence":{"senders":["`+carol.id+`"]}}`)
		_, body = rawSync(t, srv, bob, "set_presence=offline&"+onlyCarol)
		if p := presenceOf(body, alice.id); p != nil {
			t.Fatalf("senders [carol] returned Alice's presence %v", p)
		}
		if p := presenceOf(body, carol.id); p == nil {
			t.Fatalf("senders [carol] left Carol's presence out: %v", body["presence"])
		}

		_, body = rawSync(t, srv, bob, "set_presence=offline&"+noPresence)
		since := nextBatch(t, body)
		poll := startRequest(srv, bob, "GET", syncPath("set_presence=offline&timeout=20000&"+noPresence+"&since="+url.QueryEscape(since)), "")
		stillWaiting(t, poll, 300*time.Millisecond)
		if err := alice.client.SetPresence(ctx, mautrix.ReqPresence{Presence: event.PresenceUnavailable, StatusMsg: "away"}); err != nil {
			t.Fatal(err)
		}
		stillWaiting(t, poll, 300*time.Millisecond)
		sendText(t, srv, alice, roomID, "after the presence change")
		body = awaitWake(t, poll, "message")
		if evs, _ := path(body, "presence", "events").([]any); len(evs) != 0 {
			t.Fatalf("woken sync with not_types [*] has presence %v", evs)
		}
		if !slices.Contains(timelineBodies(body, roomID), "after the presence change") {
			t.Fatalf("woken sync lacks the message: %v", body["rooms"])
		}
	})
}

// TestSyncReceiptsUnthreadedWins: with an unthreaded and a threaded
// receipt from one user for one event, the m.receipt content (one entry
// per user) carries the unthreaded one, in either order.
// Spec: MSC4102; Complement TestThreadReceiptsInSyncMSC4102.
func TestSyncReceiptsUnthreadedWins(t *testing.T) {
	testserver.ForEachEngine(t, nil, func(t *testing.T, srv *testserver.Server) {
		ctx := context.Background()
		alice, bob := newUser(t, srv, "alice"), newUser(t, srv, "bob")
		roomID := createRoom(t, srv, alice, roomserver.CreateRoomRequest{Preset: "public_chat"})
		membership(t, srv, "join", bob, bob.id, roomID)
		for i, threadFirst := range []bool{false, true} {
			ev := sendText(t, srv, bob, roomID, fmt.Sprintf("message %d", i))
			receipts := []map[string]any{nil, {"thread_id": "main"}}
			if threadFirst {
				receipts[0], receipts[1] = receipts[1], receipts[0]
			}
			for _, content := range receipts {
				if err := alice.client.SendReceipt(ctx, id.RoomID(roomID), id.EventID(ev), event.ReceiptTypeRead, content); err != nil {
					t.Fatal(err)
				}
			}
			_, body := rawSync(t, srv, bob, "")
			r, ok := path(roomEphemeral(body, roomID, "m.receipt")[0], "content", ev, "m.read", alice.id).(map[string]any)
			if !ok || r["thread_id"] != nil {
				t.Fatalf("threaded first %v: receipt = %v, want the unthreaded one", threadFirst, r)
			}
		}
	})
}

// TestSyncPresenceOfNewRoommates: an incremental sync in which the user
// starts sharing a room with someone carries that someone's presence,
// though it did not change, both for the joiner and for the existing
// member; the next sync does not repeat it.
// Complement: TestSync "Newly joined room includes presence in
// incremental sync", "Get presence for newly joined members in
// incremental sync"; TestMembersLocal.
func TestSyncPresenceOfNewRoommates(t *testing.T) {
	testserver.ForEachEngine(t, nil, func(t *testing.T, srv *testserver.Server) {
		alice, bob := newUser(t, srv, "alice"), newUser(t, srv, "bob")
		// A room of bob's own, so the tokens below are past the start
		// of the room stream.
		createRoom(t, srv, bob, roomserver.CreateRoomRequest{Preset: "private_chat"})
		_, body := rawSync(t, srv, alice, "set_presence=online")
		aliceSince := nextBatch(t, body)
		_, body = rawSync(t, srv, bob, "set_presence=online")
		bobSince := nextBatch(t, body)
		roomID := createRoom(t, srv, alice, roomserver.CreateRoomRequest{Preset: "public_chat"})
		_, body = rawSync(t, srv, alice, "set_presence=offline&since="+url.QueryEscape(aliceSince))
		if p := presenceOf(body, bob.id); p != nil {
			t.Fatalf("alice sees the presence of bob, who shares no room with her: %v", p)
		}
		aliceSince = nextBatch(t, body)
		membership(t, srv, "join", bob, bob.id, roomID)

		_, body = rawSync(t, srv, bob, "set_presence=offline&since="+url.QueryEscape(bobSince))
		if p := presenceOf(body, alice.id); p == nil || p["presence"] != "online" {
			t.Fatalf("bob's sync after joining lacks alice's presence: %v", body["presence"])
		}
		_, body = rawSync(t, srv, bob, "set_presence=offline&since="+url.QueryEscape(nextBatch(t, body)))
		if p := presenceOf(body, alice.id); p != nil {
			t.Fatalf("alice's presence repeated: %v", p)
		}
		_, body = rawSync(t, srv, alice, "set_presence=offline&since="+url.QueryEscape(aliceSince))
		if p := presenceOf(body, bob.id); p == nil || p["presence"] != "online" {
			t.Fatalf("alice's sync after bob joined lacks his presence: %v", body["presence"])
		}
	})
}
