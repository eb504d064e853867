package clientapi_test

import (
	"fmt"
	"net/url"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/myelin-chat/myelin/config"
	"github.com/myelin-chat/myelin/internal/testserver"
	"github.com/myelin-chat/myelin/storage"
)

const delayedAPI = "/_matrix/client/unstable/org.matrix.msc4140/delayed_events"

// delayedRoom makes alice's room where bob is joined and custom events
// need no power.
func delayedRoom(t *testing.T, srv *testserver.Server) (alice, bob *user, room id.RoomID) {
	t.Helper()
	alice, bob = newUser(t, srv, "alice"), newUser(t, srv, "bob")
	resp, err := alice.CreateRoom(bg, &mautrix.ReqCreateRoom{Preset: "public_chat",
		PowerLevelOverride: &event.PowerLevelsEventContent{Events: map[string]int{"com.example.test": 0}, UsersDefault: 0, StateDefaultPtr: ptr(50)}})
	ok(t, "create", err)
	_, err = bob.JoinRoomByID(bg, resp.RoomID)
	ok(t, "bob joins", err)
	return alice, bob, resp.RoomID
}

// schedule PUTs a delayed send (txn non-empty) or state event and returns
// the delay ID.
func schedule(t *testing.T, srv *testserver.Server, u *user, room id.RoomID, txn, stateKey string, delay string, content any) string {
	t.Helper()
	path := srv.URL + "/_matrix/client/v3/rooms/" + url.PathEscape(string(room))
	if txn != "" {
		path += "/send/com.example.test/" + txn
	} else {
		path += "/state/com.example.test/" + stateKey
	}
	status, body := call(t, "PUT", path+"?org.matrix.msc4140.delay="+delay, u.token, content)
	if status != 200 || body["delay_id"] == nil || body["event_id"] != nil {
		t.Fatalf("delayed PUT %s = %d %v", path, status, body)
	}
	return body["delay_id"].(string)
}

func delayedList(t *testing.T, srv *testserver.Server, u *user) []map[string]any {
	t.Helper()
	status, body := call(t, "GET", srv.URL+delayedAPI, u.token, nil)
	if status != 200 {
		t.Fatalf("GET delayed_events = %d %v", status, body)
	}
	var out []map[string]any
	for _, e := range body["delayed_events"].([]any) {
		out = append(out, e.(map[string]any))
	}
	return out
}

func delayedAction(t *testing.T, srv *testserver.Server, delayID, action string) (int, map[string]any) {
	t.Helper()
	return call(t, "POST", srv.URL+delayedAPI+"/"+delayID+"/"+action, "", map[string]any{})
}

// stateOf returns the content of com.example.test/key, or nil if unset.
func stateOf(t *testing.T, u *user, room id.RoomID, key string) map[string]any {
	t.Helper()
	var content map[string]any
	if err := u.StateEvent(bg, room, event.NewEventType("com.example.test"), key, &content); err != nil {
		wantErrcode(t, "state "+key, err, 404, "M_NOT_FOUND")
		return nil
	}
	return content
}

// TestDelayedEvents: MSC4140. Delayed message and state events are
// listed to their owner only, sent in order when their delay runs out,
// and can be cancelled, restarted or sent at once by whoever holds the
// delay ID; retried sends with one txnId share a delay ID; limits hold.
func TestDelayedEvents(t *testing.T) {
	testserver.ForEachEngine(t, func(c *config.Config) { c.ClientAPI.DelayedEvents.MaxPerUser = 5 }, func(t *testing.T, srv *testserver.Server) {
		alice, bob, room := delayedRoom(t, srv)
		status, body := call(t, "GET", srv.URL+delayedAPI, "", nil)
		expectError(t, "listing without a token", status, body, 401, "M_MISSING_TOKEN")
		if got := delayedList(t, srv, alice); len(got) != 0 {
			t.Fatalf("delayed events at start = %v", got)
		}
		start, err := alice.SyncRequest(bg, 0, "", "", false, "")
		ok(t, "sync", err)

		// Three message events, due in order; a retry of the same txnId
		// (even without a body) answers with the same delay ID.
		// The delays leave a loaded machine time for the seven requests
		// below before the first is due.
		var ids []string
		for i, delay := range []string{"5000", "5100", "5200"} {
			txn := fmt.Sprintf("txn-%d", i)
			ids = append(ids, schedule(t, srv, alice, room, txn, "", delay, map[string]any{"count": i + 1}))
			status, body := call(t, "PUT", srv.URL+"/_matrix/client/v3/rooms/"+url.PathEscape(string(room))+"/send/com.example.test/"+txn+"?org.matrix.msc4140.delay="+delay, alice.token, nil)
			if status != 200 || body["delay_id"] != ids[i] {
				t.Fatalf("retried txn = %d %v, want delay_id %s", status, body, ids[i])
			}
		}
		list := delayedList(t, srv, alice)
		if len(list) != 3 || list[0]["delay_id"] != ids[0] || list[0]["room_id"] != string(room) || list[0]["type"] != "com.example.test" ||
			list[0]["delay"] != float64(5000) || list[0]["running_since"] == nil || list[0]["content"].(map[string]any)["count"] != float64(1) ||
			list[0]["state_key"] != nil {
			t.Fatalf("alice's delayed events = %v", list)
		}
		if got := delayedList(t, srv, bob); len(got) != 0 {
			t.Errorf("bob sees alice's delayed events: %v", got)
		}
		eventually(t, "the delayed messages to be sent", func() bool { return len(delayedList(t, srv, alice)) == 0 })
		page, err := alice.Messages(bg, room, start.NextBatch, "", mautrix.DirectionForward, nil, 10)
		ok(t, "messages", err)
		var counts []any
		for _, ev := range page.Chunk {
			if ev.Type.Type == "com.example.test" {
				counts = append(counts, ev.Content.Raw["count"])
				if ev.Sender != alice.id {
					t.Errorf("delayed event sent by %s", ev.Sender)
				}
			}
		}
		if fmt.Sprint(counts) != "[1 2 3]" {
			t.Errorf("delayed messages arrived as %v, want [1 2 3]", counts)
		}

		// A state event on timeout.
		schedule(t, srv, alice, room, "", "on_timeout", "4000", map[string]any{"setter": "on_timeout"})
		if got := delayedList(t, srv, alice); len(got) != 1 || got[0]["state_key"] != "on_timeout" {
			t.Fatalf("delayed state listing = %v", got)
		}
		if c := stateOf(t, alice, room, "on_timeout"); c != nil {
			t.Fatalf("state set before its delay: %v", c)
		}
		eventually(t, "the delayed state event", func() bool { return stateOf(t, alice, room, "on_timeout") != nil })
		if c := stateOf(t, alice, room, "on_timeout"); c["setter"] != "on_timeout" {
			t.Errorf("state = %v", c)
		}

		// Cancel, without a token: it is never sent.
		cancelled := schedule(t, srv, alice, room, "", "never", "1000", map[string]any{"setter": "none"})
		if status, body := delayedAction(t, srv, cancelled, "cancel"); status != 200 {
			t.Fatalf("cancel = %d %v", status, body)
		}
		time.Sleep(1200 * time.Millisecond)
		if c := stateOf(t, alice, room, "never"); c != nil || len(delayedList(t, srv, alice)) != 0 {
			t.Errorf("a cancelled event was sent (%v) or is still listed", c)
		}
		status, body = delayedAction(t, srv, cancelled, "cancel")
		expectError(t, "cancelling twice", status, body, 404, "M_NOT_FOUND")

		// Send at once.
		now := schedule(t, srv, alice, room, "", "on_send", "100000", map[string]any{"setter": "on_send"})
		if status, body := delayedAction(t, srv, now, "send"); status != 200 {
			t.Fatalf("send = %d %v", status, body)
		}
		if c := stateOf(t, alice, room, "on_send"); c["setter"] != "on_send" || len(delayedList(t, srv, alice)) != 0 {
			t.Errorf("after send: state %v, listing %v", c, delayedList(t, srv, alice))
		}

		// Restart pushes the due time back by the whole delay.
		// Due 6 s after scheduled, restarted 2 s in: due again 8 s in at
		// the earliest. Looked at 7 s in, a second from either deadline
		// (times from the test's clock, so a loaded machine's delays
		// count).
		const delay = 6 * time.Second
		scheduled := time.Now()
		restarted := schedule(t, srv, alice, room, "", "restarted", "6000", map[string]any{"setter": "restarted"})
		time.Sleep(time.Until(scheduled.Add(2 * time.Second)))
		restartAt := time.Now()
		status, body = call(t, "POST", srv.URL+delayedAPI+"/"+restarted, "", map[string]any{"action": "restart"})
		if status != 200 {
			t.Fatalf("restart (action in body) = %d %v", status, body)
		}
		if late := time.Since(scheduled); late > delay-time.Second {
			t.Fatalf("the restart returned %v after the schedule, too near its first deadline to tell", late)
		}
		time.Sleep(time.Until(scheduled.Add(delay + time.Second)))
		if c := stateOf(t, alice, room, "restarted"); c != nil {
			t.Fatalf("restarted event sent on its first deadline: %v (looked %v after the restart, which pushed it to %v)",
				c, time.Since(restartAt), delay)
		}
		eventually(t, "the restarted event", func() bool { return stateOf(t, alice, room, "restarted") != nil })

		// Bad requests.
		for _, action := range []string{"cancel", "restart", "send"} {
			status, body = delayedAction(t, srv, "abc", action)
			expectError(t, action+" of an unknown delay ID", status, body, 404, "M_NOT_FOUND")
		}
		status, body = delayedAction(t, srv, "abc", "oops")
		expectError(t, "an unknown action", status, body, 404, "M_UNRECOGNIZED")
		status, body = call(t, "POST", srv.URL+delayedAPI+"/abc", "", map[string]any{})
		expectError(t, "no action", status, body, 400, "M_MISSING_PARAM")
		status, body = call(t, "POST", srv.URL+delayedAPI+"/abc", "", map[string]any{"action": "oops"})
		expectError(t, "an unknown action in the body", status, body, 400, "M_INVALID_PARAM")
		base := srv.URL + "/_matrix/client/v3/rooms/" + url.PathEscape(string(room)) + "/state/com.example.test/x?org.matrix.msc4140.delay="
		status, body = call(t, "PUT", base+"soon", alice.token, map[string]any{})
		expectError(t, "a delay that is not a number", status, body, 400, "M_INVALID_PARAM")
		status, body = call(t, "PUT", base+"-5", alice.token, map[string]any{})
		expectError(t, "a negative delay", status, body, 400, "M_INVALID_PARAM")
		status, body = call(t, "PUT", base+fmt.Sprint((25*time.Hour).Milliseconds()), alice.token, map[string]any{})
		expectError(t, "a delay over the maximum", status, body, 400, "M_INVALID_PARAM")
		if body["org.matrix.msc4140.errcode"] != "M_MAX_DELAY_EXCEEDED" || body["org.matrix.msc4140.max_delay"] != float64((24*time.Hour).Milliseconds()) {
			t.Errorf("max delay error body = %v", body)
		}
		status, body = call(t, "PUT", base+"1000", alice.token, "not json")
		expectError(t, "content that is not JSON", status, body, 400, "M_NOT_JSON")
		carol := newUser(t, srv, "carol")
		status, body = call(t, "PUT", base+"1000", carol.token, map[string]any{})
		expectError(t, "a user outside the room", status, body, 403, "M_FORBIDDEN")
		for i := range 5 {
			schedule(t, srv, bob, room, "", fmt.Sprint("many", i), "100000", map[string]any{})
		}
		status, body = call(t, "PUT", srv.URL+"/_matrix/client/v3/rooms/"+url.PathEscape(string(room))+"/state/com.example.test/one-too-many?org.matrix.msc4140.delay=100000", bob.token, map[string]any{})
		expectError(t, "more than max_per_user", status, body, 400, "M_INVALID_PARAM")
		if body["org.matrix.msc4140.errcode"] != "M_MAX_DELAYED_EVENTS_EXCEEDED" {
			t.Errorf("max per user error body = %v", body)
		}
		if got := delayedList(t, srv, alice); len(got) != 0 {
			t.Errorf("alice's list after bob's events = %v", got)
		}
	})
}

// TestDelayedEventsSurviveRestart: scheduled events are in the database;
// a restarted server lists them, and its scheduler sends one that came
// due (its due time is moved into the past in the database, as if the
// delay had run out while the server was down).
func TestDelayedEventsSurviveRestart(t *testing.T) {
	testserver.ForEachEngine(t, nil, func(t *testing.T, srv *testserver.Server) {
		alice, _, room := delayedRoom(t, srv)
		due := schedule(t, srv, alice, room, "", "after_restart", "100000", map[string]any{"setter": "restart"})
		kept := schedule(t, srv, alice, room, "", "kept", "100000", map[string]any{})
		srv.Restart(t)
		alice.HomeserverURL = mustParseURL(t, srv.URL)
		if got := delayedList(t, srv, alice); len(got) != 2 {
			t.Fatalf("after restart, delayed events = %v", got)
		}
		err := srv.HS.DB.Write(bg, func(tx storage.Tx) error {
			_, err := tx.Exec(bg, `UPDATE delayed_events SET send_ts = 0 WHERE delay_id = $1`, due)
			return err
		})
		ok(t, "move the due time", err)
		// Scheduling wakes the scheduler (it would also look again within
		// its poll interval).
		woke := schedule(t, srv, alice, room, "", "wake", "100000", map[string]any{})
		eventually(t, "the delayed event after the restart", func() bool { return stateOf(t, alice, room, "after_restart") != nil })
		// The scheduler deletes the row in its own transaction after the
		// event's commit (a crash in between resends it under the same
		// transaction ID), so the list may still hold it for a moment.
		var got []map[string]any
		eventually(t, "the sent event leaving the list", func() bool {
			got = delayedList(t, srv, alice)
			return len(got) == 2 && got[0]["delay_id"] != due && got[1]["delay_id"] != due
		})
		if len(got) != 2 || got[0]["delay_id"] == due || got[1]["delay_id"] == due {
			t.Errorf("after sending, delayed events = %v, want %s and %s", got, kept, woke)
		}
	})
}

// TestDelayedEventsDisabled: max_delay 0 turns the feature off.
func TestDelayedEventsDisabled(t *testing.T) {
	srv := testserver.Start(t, "sqlite", func(c *config.Config) { c.ClientAPI.DelayedEvents.MaxDelay = 0 })
	alice, _, room := delayedRoom(t, srv)
	status, body := call(t, "PUT", srv.URL+"/_matrix/client/v3/rooms/"+url.PathEscape(string(room))+"/state/com.example.test/x?org.matrix.msc4140.delay=10", alice.token, map[string]any{})
	expectError(t, "delay when disabled", status, body, 400, "M_UNRECOGNIZED")
}
