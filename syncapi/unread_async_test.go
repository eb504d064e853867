package syncapi_test

import (
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/myelin-chat/myelin/internal/testserver"
	"github.com/myelin-chat/myelin/roomserver"
)

// withUnread returns token with its Unread position (the last field)
// replaced by that of from: the token a server issues when its counts
// trailed the timeline.
func withUnread(t *testing.T, token, from string) string {
	t.Helper()
	a, b := strings.Split(token, "_"), strings.Split(from, "_")
	if len(a) != 9 || len(b) != 9 {
		t.Fatalf("tokens %q, %q: want 9 fields", token, from)
	}
	a[8] = b[8]
	return strings.Join(a, "_")
}

// TestSyncLongPollUnreadCountsFollow: a long poll woken by a message is
// answered without waiting for the push consumer; the message's count
// arrives, right, in that response or a later one (the consumer's commit
// wakes the poll again), and once the client has it a long poll waits.
func TestSyncLongPollUnreadCountsFollow(t *testing.T) {
	testserver.ForEachEngine(t, nil, func(t *testing.T, srv *testserver.Server) {
		alice, bob := newUser(t, srv, "alice"), newUser(t, srv, "bob")
		roomID := createRoom(t, srv, alice, roomserver.CreateRoomRequest{Preset: "public_chat"})
		membership(t, srv, "join", bob, bob.id, roomID)
		first := syncOK(t, srv, bob, "timeout=0")
		if n := dig(first, "rooms", "join", roomID, "unread_notifications", "notification_count"); n != float64(0) {
			t.Fatalf("initial sync: count %v, want 0", n)
		}
		since := first["next_batch"].(string)

		type result struct {
			body map[string]any
			took time.Duration
		}
		poll := func(since string, timeoutMS string) <-chan result {
			ch := make(chan result, 1)
			go func() {
				start := time.Now()
				status, body := rawSync(t, srv, bob, "timeout="+timeoutMS+"&since="+url.QueryEscape(since))
				if status != 200 {
					t.Errorf("/sync: %d %v", status, body)
				}
				ch <- result{body, time.Since(start)}
			}()
			return ch
		}
		woken := poll(since, "10000")
		for srv.HS.Sync.Waiting() == 0 {
			time.Sleep(time.Millisecond)
		}
		sendText(t, srv, alice, roomID, "hello")
		r := <-woken
		evs, _ := dig(r.body, "rooms", "join", roomID, "timeline", "events").([]any)
		if len(evs) != 1 {
			t.Fatalf("woken long poll: timeline %v, want the message", dig(r.body, "rooms", "join", roomID))
		}
		count := dig(r.body, "rooms", "join", roomID, "unread_notifications", "notification_count")
		if count != nil && count != float64(0) && count != float64(1) {
			t.Fatalf("woken long poll: count %v, want 0 or 1", count)
		}
		since = r.body["next_batch"].(string)
		for i := 0; count != float64(1); i++ {
			if i == 5 {
				t.Fatalf("count never reached 1 (last %v)", count)
			}
			r = <-poll(since, "10000")
			if r.took > 5*time.Second {
				// Not woken by the consumer's commit: it sat out most of
				// its timeout.
				t.Errorf("counts follow-up answered after %v", r.took)
			}
			room := dig(r.body, "rooms", "join", roomID)
			if room == nil {
				t.Fatalf("long poll returned without the room: %v", r.body)
			}
			if evs, _ := dig(room, "timeline", "events").([]any); len(evs) != 0 {
				t.Errorf("counts-only response carries events: %v", evs)
			}
			count = dig(room, "unread_notifications", "notification_count")
			since = r.body["next_batch"].(string)
		}
		// The client has every count: a long poll waits. (A response
		// whose counts were read just as the consumer committed may be
		// followed by one more with the same count.)
		for i := 0; ; i++ {
			r = <-poll(since, "300")
			since = r.body["next_batch"].(string)
			room := dig(r.body, "rooms", "join", roomID)
			if room == nil && r.took >= 250*time.Millisecond {
				break
			}
			if n := dig(room, "unread_notifications", "notification_count"); n != float64(1) || i == 2 {
				t.Fatalf("settled long poll %d returned after %v with %v", i, r.took, room)
			}
		}
		settled := since

		// A token whose counts trail its timeline (as issued when the
		// consumer had not committed yet) gets the room's counts at once,
		// alone, and right.
		trailing := withUnread(t, settled, first["next_batch"].(string))
		r = <-poll(trailing, "10000")
		room := dig(r.body, "rooms", "join", roomID)
		if n := dig(room, "unread_notifications", "notification_count"); n != float64(1) {
			t.Fatalf("trailing token: count %v, want 1 (%v)", n, room)
		}
		if evs, _ := dig(room, "timeline", "events").([]any); len(evs) != 0 {
			t.Errorf("trailing token: counts-only response carries events: %v", evs)
		}
		if r.took > 5*time.Second {
			t.Errorf("trailing token answered after %v", r.took)
		}
		// Bob's own message reads the room: the count goes to 0 and
		// arrives in a long poll too.
		sendText(t, srv, bob, roomID, "read")
		since = r.body["next_batch"].(string)
		for i := 0; ; i++ {
			if i == 5 {
				t.Fatal("count never went back to 0")
			}
			r = <-poll(since, "10000")
			since = r.body["next_batch"].(string)
			if n := dig(r.body, "rooms", "join", roomID, "unread_notifications", "notification_count"); n == float64(0) {
				break
			}
		}
	})
}
