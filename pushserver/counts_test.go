package pushserver_test

import (
	"net/http"
	"testing"

	"github.com/myelin-chat/myelin/internal/testserver"
)

// TestUnreadCounts drives counts through /sync: a plain message counts,
// a mention highlights, a receipt resets, a muted room does not count,
// an encrypted message counts per .m.rule.encrypted, the sender's own
// messages never count, and GET /notifications lists what notified.
func TestUnreadCounts(t *testing.T) {
	testserver.ForEachEngine(t, pushConfig, func(t *testing.T, srv *testserver.Server) {
		alice, bob, carol := register(t, srv, "alice"), register(t, srv, "bob"), register(t, srv, "carol")
		roomID := room(t, alice, bob, carol)
		bob.wantCounts(t, roomID, 0, 0)

		alice.text(t, roomID, "hello")
		bob.wantCounts(t, roomID, 1, 0)
		alice.wantCounts(t, roomID, 0, 0) // own message

		mention := alice.send(t, roomID, "m.room.message", map[string]any{"msgtype": "m.text", "body": "bob: look",
			"m.mentions": map[string]any{"user_ids": []string{bob.id}}})
		bob.wantCounts(t, roomID, 2, 1)
		carol.wantCounts(t, roomID, 2, 0) // not mentioned

		// An encrypted message in a three-member room: .m.rule.encrypted.
		alice.send(t, roomID, "m.room.encrypted", map[string]any{"algorithm": "m.megolm.v1.aes-sha2",
			"ciphertext": "AwgAEnACgAkLmt6qF84IK++J7UDH2Za1YVchHyprqTqsg", "sender_key": "peI2Yb0lfJ5HtlLpRaw8UL9Gd1Fw3HzvZNRGZxZnBEM",
			"session_id": "+S6dkn0cD0vL8c6bUy0+TCMdpfFVXvkQFzhRFPc9mLc", "device_id": "ALICE"})
		bob.wantCounts(t, roomID, 3, 1)

		// GET /notifications: newest first, only=highlight, paging. The
		// oldest is bob's invite (.m.rule.invite_for_me), read since his
		// join.
		list := bob.must(t, http.MethodGet, "/_matrix/client/v3/notifications", nil)
		if n := len(list.Get("notifications").Array()); n != 4 {
			t.Fatalf("GET /notifications has %d entries, want 4: %s", n, list.Raw)
		}
		if invite := list.Get("notifications.3"); invite.Get("event.content.membership").Str != "invite" || !invite.Get("read").Bool() {
			t.Errorf("oldest notification: %s", invite.Raw)
		}
		if typ := list.Get("notifications.0.event.type").Str; typ != "m.room.encrypted" {
			t.Errorf("newest notification is %s", typ)
		}
		if list.Get("notifications.0.read").Bool() || list.Get("notifications.0.room_id").Str != roomID {
			t.Errorf("notification entry: %s", list.Get("notifications.0").Raw)
		}
		hl := bob.must(t, http.MethodGet, "/_matrix/client/v3/notifications?only=highlight", nil)
		if n := hl.Get("notifications.#").Int(); n != 1 || hl.Get("notifications.0.event.event_id").Str != mention {
			t.Errorf("only=highlight: %s", hl.Raw)
		}
		page := bob.must(t, http.MethodGet, "/_matrix/client/v3/notifications?limit=2", nil)
		if page.Get("notifications.#").Int() != 2 || page.Get("next_token").Str == "" {
			t.Fatalf("limit=2: %s", page.Raw)
		}
		rest := bob.must(t, http.MethodGet, "/_matrix/client/v3/notifications?limit=2&from="+page.Get("next_token").Str, nil)
		if rest.Get("notifications.#").Int() != 2 || rest.Get("next_token").Exists() ||
			rest.Get("notifications.0.event.content.body").Str != "hello" {
			t.Errorf("second page: %s", rest.Raw)
		}

		// Reading up to the mention leaves the encrypted message unread;
		// reading the latest clears everything.
		bob.must(t, http.MethodPost, "/_matrix/client/v3/rooms/"+esc(roomID)+"/receipt/m.read/"+esc(mention), map[string]any{})
		bob.wantCounts(t, roomID, 1, 0)
		latest := alice.text(t, roomID, "one more")
		bob.wantCounts(t, roomID, 2, 0)
		bob.must(t, http.MethodPost, "/_matrix/client/v3/rooms/"+esc(roomID)+"/receipt/m.read.private/"+esc(latest), map[string]any{})
		bob.wantCounts(t, roomID, 0, 0)
		if read := bob.must(t, http.MethodGet, "/_matrix/client/v3/notifications", nil); !read.Get("notifications.0.read").Bool() {
			t.Errorf("notification not marked read after the receipt: %s", read.Get("notifications.0").Raw)
		}
		carol.wantCounts(t, roomID, 4, 0) // bob's receipts are bob's

		// A room rule with no actions mutes the room for bob only.
		muted := room(t, alice, bob, carol)
		bob.must(t, http.MethodPut, rules+"room/"+esc(muted), map[string]any{"actions": []any{"dont_notify"}})
		alice.send(t, muted, "m.room.message", map[string]any{"msgtype": "m.text", "body": "shh",
			"m.mentions": map[string]any{"user_ids": []string{bob.id}}}) // override rules still win
		alice.text(t, muted, "quiet")
		bob.wantCounts(t, muted, 1, 1)
		carol.wantCounts(t, muted, 2, 0)
		// The historical action is stored as sent, and ignored.
		if a := bob.must(t, http.MethodGet, rules+"room/"+esc(muted), nil).Get("actions"); a.Raw != `["dont_notify"]` {
			t.Errorf("dont_notify was not kept: %s", a.Raw)
		}
	})
}

// TestThreadCounts checks unread_thread_notifications with the filter
// flag, and that a threaded receipt reads only its thread.
func TestThreadCounts(t *testing.T) {
	testserver.ForEachEngine(t, pushConfig, func(t *testing.T, srv *testserver.Server) {
		alice, bob, carol := register(t, srv, "alice"), register(t, srv, "bob"), register(t, srv, "carol")
		roomID := room(t, alice, bob, carol)
		root := alice.text(t, roomID, "root")
		reply := func(body string) string {
			return alice.send(t, roomID, "m.room.message", map[string]any{"msgtype": "m.text", "body": body,
				"m.relates_to": map[string]any{"rel_type": "m.thread", "event_id": root}})
		}
		reply("in thread 1")
		inThread := reply("in thread 2")
		const threaded = `{"room":{"timeline":{"unread_thread_notifications":true}}}`
		r := bob.syncRoom(t, roomID, threaded)
		if n := r.Get("unread_notifications.notification_count").Int(); n != 1 {
			t.Errorf("main timeline count %d, want 1: %s", n, r.Get("unread_notifications").Raw)
		}
		if n := r.Get("unread_thread_notifications." + escKey(root) + ".notification_count").Int(); n != 2 {
			t.Errorf("thread count %d, want 2: %s", n, r.Get("unread_thread_notifications").Raw)
		}
		bob.wantCounts(t, roomID, 3, 0) // without the flag everything is in one count

		// A receipt in the thread reads the thread only.
		bob.must(t, http.MethodPost, "/_matrix/client/v3/rooms/"+esc(roomID)+"/receipt/m.read/"+esc(inThread),
			map[string]any{"thread_id": root})
		r = bob.syncRoom(t, roomID, threaded)
		if n := r.Get("unread_notifications.notification_count").Int(); n != 1 {
			t.Errorf("main timeline count after thread receipt %d, want 1", n)
		}
		if r.Get("unread_thread_notifications."+escKey(root)+".notification_count").Int() != 0 {
			t.Errorf("thread still unread: %s", r.Get("unread_thread_notifications").Raw)
		}
		// A main-timeline receipt reads the main timeline.
		bob.must(t, http.MethodPost, "/_matrix/client/v3/rooms/"+esc(roomID)+"/receipt/m.read/"+esc(root),
			map[string]any{"thread_id": "main"})
		bob.wantCounts(t, roomID, 0, 0)
	})
}

// escKey escapes an event ID for a gjson path.
func escKey(s string) string {
	out := make([]byte, 0, len(s))
	for i := 0; i < len(s); i++ {
		if s[i] == '.' || s[i] == '*' || s[i] == '?' {
			out = append(out, '\\')
		}
		out = append(out, s[i])
	}
	return string(out)
}

// TestSlidingSyncCounts checks notification_count and highlight_count in
// simplified sliding sync, and that a receipt resets them.
func TestSlidingSyncCounts(t *testing.T) {
	testserver.ForEachEngine(t, pushConfig, func(t *testing.T, srv *testserver.Server) {
		alice, bob, carol := register(t, srv, "alice"), register(t, srv, "bob"), register(t, srv, "carol")
		roomID := room(t, alice, bob, carol)
		alice.text(t, roomID, "one")
		last := alice.send(t, roomID, "m.room.message", map[string]any{"msgtype": "m.text", "body": "two",
			"m.mentions": map[string]any{"user_ids": []string{bob.id}}})
		req := map[string]any{"lists": map[string]any{"all": map[string]any{"ranges": [][]int{{0, 10}}, "timeline_limit": 1}}}
		const path = "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync"
		r := bob.must(t, http.MethodPost, path, req).Get("rooms." + escKey(roomID))
		if r.Get("notification_count").Int() != 2 || r.Get("highlight_count").Int() != 1 {
			t.Fatalf("sliding sync counts: notification_count %d, highlight_count %d; want 2, 1",
				r.Get("notification_count").Int(), r.Get("highlight_count").Int())
		}
		bob.must(t, http.MethodPost, "/_matrix/client/v3/rooms/"+esc(roomID)+"/receipt/m.read/"+esc(last), map[string]any{})
		r = bob.must(t, http.MethodPost, path, req).Get("rooms." + escKey(roomID))
		if r.Get("notification_count").Int() != 0 || r.Get("highlight_count").Int() != 0 {
			t.Errorf("after the receipt: %s", r.Raw)
		}
	})
}
