package pushserver_test

import (
	"net/http"
	"testing"
	"time"

	"github.com/tidwall/gjson"

	"github.com/myelin-chat/myelin/config"
	"github.com/myelin-chat/myelin/internal/testserver"
)

func inThread(root, body string) map[string]any {
	return map[string]any{"msgtype": "m.text", "body": body,
		"m.relates_to": map[string]any{"rel_type": "m.thread", "event_id": root}}
}

func threadSubPath(roomID, root string) string {
	return "/_matrix/client/unstable/io.element.msc4306/rooms/" + esc(roomID) + "/thread/" + esc(root) + "/subscription"
}

// TestThreadSubscriptions drives MSC4306 end to end: subscribing by hand
// and automatically, the errors for a cause event outside the thread and
// for an automatic subscription older than an unsubscription, the
// postcontent push rules counting thread messages only for subscribers,
// and MSC4308's sliding sync extension and companion endpoint.
// Spec: MSC4306, MSC4308.
func TestThreadSubscriptions(t *testing.T) {
	threadRules := func(c *config.Config) { pushConfig(c); c.Push.ThreadSubscriptionRules = true }
	testserver.ForEachEngine(t, threadRules, func(t *testing.T, srv *testserver.Server) {
		alice, bob := register(t, srv, "alice"), register(t, srv, "bob")
		roomID := room(t, alice, bob)
		root := alice.text(t, roomID, "thread root")
		reply1 := alice.send(t, roomID, "m.room.message", inThread(root, "reply 1"))
		other := alice.text(t, roomID, "another root")
		otherReply := alice.send(t, roomID, "m.room.message", inThread(other, "elsewhere"))
		path := threadSubPath(roomID, root)

		// Not subscribed yet: 404. A missing thread: 404 for every verb.
		if status, body := bob.call(t, http.MethodGet, path, nil); status != 404 || body.Get("errcode").Str != "M_NOT_FOUND" {
			t.Fatalf("GET before subscribing: %d %s", status, body.Raw)
		}
		missing := threadSubPath(roomID, "$nope:localhost")
		for _, m := range []string{http.MethodGet, http.MethodPut, http.MethodDelete} {
			if status, body := bob.call(t, m, missing, map[string]any{}); status != 404 {
				t.Fatalf("%s on a missing thread: %d %s", m, status, body.Raw)
			}
		}
		// Cause events outside the thread, and the root itself.
		for _, cause := range []string{root, otherReply} {
			status, body := bob.call(t, http.MethodPut, path, map[string]any{"automatic": cause})
			if status != 400 || body.Get("errcode").Str != "IO.ELEMENT.MSC4306.M_NOT_IN_THREAD" {
				t.Fatalf("automatic %s: %d %s", cause, status, body.Raw)
			}
		}
		if status, body := bob.call(t, http.MethodPut, path, map[string]any{"automatic": 5}); status != 400 {
			t.Fatalf("automatic 5: %d %s", status, body.Raw)
		}
		if status, _ := bob.call(t, http.MethodGet, path, nil); status != 404 {
			t.Fatal("a refused subscription was stored")
		}

		// The MSC4306 rules sit in postcontent; an unsubscribed thread
		// does not count, the main timeline does.
		pc := bob.must(t, http.MethodGet, rules, nil).Get("postcontent")
		if pc.Get("0.rule_id").Str != ".io.element.msc4306.rule.unsubscribed_thread" ||
			pc.Get("1.rule_id").Str != ".io.element.msc4306.rule.subscribed_thread" || !pc.Get("1.enabled").Bool() {
			t.Fatalf("postcontent rules: %s", pc.Raw)
		}
		bob.wantCounts(t, roomID, 2, 0) // the two roots; the replies are in unsubscribed threads

		// A manual subscription; an automatic one never downgrades it.
		bob.must(t, http.MethodPut, path, map[string]any{})
		if got := bob.must(t, http.MethodGet, path, nil); got.Raw != `{"automatic":false}` {
			t.Fatalf("after subscribing: %s", got.Raw)
		}
		alice.send(t, roomID, "m.room.message", inThread(root, "reply 2"))
		bob.wantCounts(t, roomID, 3, 0)
		bob.must(t, http.MethodPut, path, map[string]any{"automatic": reply1})
		if got := bob.must(t, http.MethodGet, path, nil); !got.Get("automatic").Exists() || got.Get("automatic").Bool() {
			t.Fatalf("an automatic subscription replaced a manual one: %s", got.Raw)
		}

		// Unsubscribing (twice: idempotent); then a cause event from
		// before the unsubscription conflicts, one after it subscribes.
		bob.must(t, http.MethodDelete, path, nil)
		bob.must(t, http.MethodDelete, path, nil)
		if status, _ := bob.call(t, http.MethodGet, path, nil); status != 404 {
			t.Fatalf("GET after unsubscribing: %d", status)
		}
		reply3 := alice.send(t, roomID, "m.room.message", inThread(root, "reply 3"))
		bob.wantCounts(t, roomID, 3, 0)
		status, body := bob.call(t, http.MethodPut, path, map[string]any{"automatic": reply1})
		if status != 409 || body.Get("errcode").Str != "IO.ELEMENT.MSC4306.M_CONFLICTING_UNSUBSCRIPTION" {
			t.Fatalf("automatic with an event before the unsubscription: %d %s", status, body.Raw)
		}
		if status, _ := bob.call(t, http.MethodGet, path, nil); status != 404 {
			t.Fatal("a conflicting automatic subscription was stored")
		}
		bob.must(t, http.MethodPut, path, map[string]any{"automatic": reply3})
		if got := bob.must(t, http.MethodGet, path, nil); got.Raw != `{"automatic":true}` {
			t.Fatalf("after the automatic subscription: %s", got.Raw)
		}
		alice.send(t, roomID, "m.room.message", inThread(root, "reply 4"))
		bob.wantCounts(t, roomID, 4, 0)
		// A mention in an unsubscribed thread still notifies: the
		// mention rule is an override, checked before postcontent.
		alice.send(t, roomID, "m.room.message", map[string]any{"msgtype": "m.text", "body": "bob?",
			"m.mentions":   map[string]any{"user_ids": []string{bob.id}},
			"m.relates_to": map[string]any{"rel_type": "m.thread", "event_id": other}})
		bob.wantCounts(t, roomID, 5, 1)

		// MSC4308: a new connection gets the latest changes, newest
		// first up to limit, and prev_batch for the rest, which the
		// companion endpoint pages through.
		bob.must(t, http.MethodPut, threadSubPath(roomID, other), map[string]any{})
		const ext = "io\\.element\\.msc4308\\.thread_subscriptions"
		slide := func(pos string, limit int) gjson.Result {
			req := map[string]any{"extensions": map[string]any{
				"io.element.msc4308.thread_subscriptions": map[string]any{"enabled": true, "limit": limit}}}
			if pos != "" {
				req["pos"] = pos
			}
			return bob.must(t, http.MethodPost, "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync", req)
		}
		first := slide("", 1)
		subs := first.Get("extensions." + ext)
		sub := subs.Get("subscribed." + gjson.Escape(roomID) + "." + gjson.Escape(other))
		if sub.Get("automatic").Raw != "false" || sub.Get("bump_stamp").Int() <= 0 || subs.Get("prev_batch").Str == "" ||
			subs.Get("subscribed."+gjson.Escape(roomID)+".#").Int() > 0 && subs.Get("subscribed."+gjson.Escape(roomID)+"."+gjson.Escape(root)).Exists() {
			t.Fatalf("initial extension: %s", subs.Raw)
		}
		older := bob.must(t, http.MethodGet, "/_matrix/client/unstable/io.element.msc4308/thread_subscriptions?dir=b&limit=5&from="+subs.Get("prev_batch").Str, nil)
		if rs := older.Get("subscribed." + gjson.Escape(roomID) + "." + gjson.Escape(root)); rs.Get("automatic").Raw != "true" ||
			rs.Get("bump_stamp").Int() >= sub.Get("bump_stamp").Int() || older.Get("end").Exists() ||
			older.Get("subscribed."+gjson.Escape(roomID)+"."+gjson.Escape(other)).Exists() {
			t.Fatalf("companion endpoint: %s", older.Raw)
		}
		// Incremental: nothing new, then an unsubscription.
		if again := slide(first.Get("pos").Str, 10); again.Get("extensions." + ext + ".subscribed").Exists() {
			t.Fatalf("unchanged subscriptions sent again: %s", again.Raw)
		}
		bob.must(t, http.MethodDelete, threadSubPath(roomID, other), nil)
		inc := slide(first.Get("pos").Str, 10).Get("extensions." + ext)
		if !inc.Get("unsubscribed."+gjson.Escape(roomID)+"."+gjson.Escape(other)+".bump_stamp").Exists() || inc.Get("subscribed").Exists() {
			t.Fatalf("incremental extension: %s", inc.Raw)
		}
		// Alice's subscriptions are hers.
		if status, _ := alice.call(t, http.MethodGet, path, nil); status != 404 {
			t.Fatal("alice sees bob's subscription")
		}
	})
}

// TestPollRules: MSC3930's default rules are listed where the MSC puts
// them, a poll start notifies (in a one-to-one room through the
// one-to-one rule) and a poll response does not.
// Spec: MSC3930, "Push rules".
func TestPollRules(t *testing.T) {
	testserver.ForEachEngine(t, pushConfig, func(t *testing.T, srv *testserver.Server) {
		alice, bob := register(t, srv, "alice"), register(t, srv, "bob")
		all := bob.must(t, http.MethodGet, rules, nil)
		find := func(kind, id string) (gjson.Result, int) {
			for i, r := range all.Get(kind).Array() {
				if r.Get("rule_id").Str == id {
					return r, i
				}
			}
			t.Fatalf("no %s rule %s in %s", kind, id, all.Raw)
			return gjson.Result{}, 0
		}
		resp, _ := find("override", ".org.matrix.msc3930.rule.poll_response")
		if resp.Get("actions").Raw != "[]" || resp.Get("conditions.0.pattern").Str != "org.matrix.msc3381.poll.response" {
			t.Errorf("poll_response: %s", resp.Raw)
		}
		start121, i121 := find("underride", ".org.matrix.msc3930.rule.poll_start_one_to_one")
		_, iStart := find("underride", ".org.matrix.msc3930.rule.poll_start")
		end121, iEnd121 := find("underride", ".org.matrix.msc3930.rule.poll_end_one_to_one")
		_, iEnd := find("underride", ".org.matrix.msc3930.rule.poll_end")
		if i121 > iStart || iEnd121 > iEnd {
			t.Errorf("one-to-one poll rules come after the general ones: %s", all.Get("underride").Raw)
		}
		if start121.Get("actions.1.value").Str != "default" || end121.Get("conditions.#(kind==\"room_member_count\").is").Str != "2" {
			t.Errorf("one-to-one poll rules: %s %s", start121.Raw, end121.Raw)
		}

		roomID := room(t, alice, bob)
		start := alice.send(t, roomID, "org.matrix.msc3381.poll.start", map[string]any{"org.matrix.msc3381.poll.start": map[string]any{
			"question": map[string]any{"org.matrix.msc1767.text": "tea?"}, "answers": []any{map[string]any{"id": "y", "org.matrix.msc1767.text": "yes"}}}})
		bob.wantCounts(t, roomID, 1, 0)
		alice.send(t, roomID, "org.matrix.msc3381.poll.response", map[string]any{"org.matrix.msc3381.poll.response": map[string]any{"answers": []string{"y"}},
			"m.relates_to": map[string]any{"rel_type": "m.reference", "event_id": start}})
		bob.wantCounts(t, roomID, 1, 0)
		note := bob.must(t, http.MethodGet, "/_matrix/client/v3/notifications", nil)
		if note.Get("notifications.0.event.event_id").Str != start || note.Get("notifications.0.actions.1.value").Str != "default" {
			t.Errorf("the poll start's notification: %s", note.Get("notifications.0").Raw)
		}
	})
}

// TestPushRulesFollowRoomUpgrade: when a local user joins the room that
// replaced one (an upgrade), their room rule and their rules matching
// the old room's ID are copied to the new room, once.
// Spec: client-server-api, "Room Upgrades" (server behaviour);
// Complement TestPushRuleRoomUpgrade.
func TestPushRulesFollowRoomUpgrade(t *testing.T) {
	testserver.ForEachEngine(t, pushConfig, func(t *testing.T, srv *testserver.Server) {
		alice, bob := register(t, srv, "alice"), register(t, srv, "bob")
		oldRoom := room(t, alice, bob)
		for _, u := range []*user{alice, bob} {
			u.must(t, http.MethodPut, rules+"room/"+esc(oldRoom), map[string]any{"actions": []any{"dont_notify"}})
		}
		bob.must(t, http.MethodPut, rules+"override/quiet-bots", map[string]any{"actions": []any{},
			"conditions": []any{map[string]any{"kind": "event_match", "key": "room_id", "pattern": oldRoom},
				map[string]any{"kind": "event_match", "key": "sender", "pattern": "@bot*"}}})
		up := alice.must(t, http.MethodPost, "/_matrix/client/v3/rooms/"+esc(oldRoom)+"/upgrade", map[string]any{"new_version": "11"})
		newRoom := up.Get("replacement_room").Str
		bob.must(t, http.MethodPost, "/_matrix/client/v3/join/"+esc(newRoom), map[string]any{})
		joined := time.Now()

		waitRule := func(u *user, path string) gjson.Result {
			t.Helper()
			for range 100 {
				if status, body := u.call(t, http.MethodGet, rules+path, nil); status == 200 {
					return body
				}
				time.Sleep(50 * time.Millisecond)
			}
			t.Fatalf("%s never got rule %s", u.id, path)
			return gjson.Result{}
		}
		for _, u := range []*user{bob, alice} {
			if r := waitRule(u, "room/"+esc(newRoom)); r.Get("actions").Raw != `["dont_notify"]` {
				t.Errorf("%s's copied room rule: %s", u.id, r.Raw)
			}
			if u == bob {
				// The join is counted at its commit (localJoins), so the
				// consumer's next pass comes within joinsPassEvery, not
				// at its quiet spacing (2 s).
				if took := time.Since(joined); took > time.Second {
					t.Errorf("bob's rules were copied %v after his join", took)
				}
			}
		}
		copied := waitRule(bob, "override/"+esc("quiet-bots-"+newRoom[1:]))
		if copied.Get("conditions.0.pattern").Str != newRoom || copied.Get("conditions.1.pattern").Str != "@bot*" {
			t.Errorf("copied override rule: %s", copied.Raw)
		}
		if old := bob.must(t, http.MethodGet, rules+"override/quiet-bots", nil); old.Get("conditions.0.pattern").Str != oldRoom {
			t.Errorf("the original rule changed: %s", old.Raw)
		}
		// Copied once: the new room's events do not copy again.
		bob.text(t, newRoom, "hello")
		bob.wantCounts(t, newRoom, 0, 0)
		if n := len(bob.must(t, http.MethodGet, rules, nil).Get("override").Array()); n != 11+2 {
			t.Errorf("bob has %d override rules, want the 11 defaults and 2 of his", n)
		}
	})
}
