package syncapi_test

import (
	"context"
	"fmt"
	"net/url"
	"testing"
	"time"

	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/myelin-chat/myelin/internal/testserver"
	"github.com/myelin-chat/myelin/roomserver"
)

// TestLongPollCountsGroupedStayPerUser: listeners long-polling one room
// are woken by one message and then by the push consumer's commit, and
// read their counts together (countsBatcher); each still gets its own
// count — listener i has read all but i of the earlier messages — never
// another listener's.
func TestLongPollCountsGroupedStayPerUser(t *testing.T) {
	testserver.ForEachEngine(t, nil, func(t *testing.T, srv *testserver.Server) {
		ctx := context.Background()
		alice := newUser(t, srv, "alice")
		roomID := createRoom(t, srv, alice, roomserver.CreateRoomRequest{Preset: "public_chat"})
		const listeners = 5
		var users []*user
		for i := 0; i < listeners; i++ {
			u := newUser(t, srv, fmt.Sprintf("listener%d", i))
			membership(t, srv, "join", u, u.id, roomID)
			users = append(users, u)
		}
		var sent []string
		for i := 0; i < listeners; i++ {
			sent = append(sent, sendText(t, srv, alice, roomID, fmt.Sprint("earlier ", i)))
		}
		// Listener i has read up to the message that leaves i unread.
		for i, u := range users {
			if i == listeners-1 {
				break // four unread of five: no receipt would leave that many with a later one
			}
			if err := u.client.SendReceipt(ctx, id.RoomID(roomID), id.EventID(sent[listeners-1-i]), event.ReceiptTypeRead, nil); err != nil {
				t.Fatal(err)
			}
		}
		want := func(i int) float64 { // after one more message
			if i == listeners-1 {
				return listeners + 1
			}
			return float64(i + 1)
		}
		since := make([]string, listeners)
		for i, u := range users {
			// A sync that waits for the consumer: the token's counts are complete.
			since[i] = syncOK(t, srv, u, "timeout=0")["next_batch"].(string)
		}
		noPresence := url.QueryEscape(`{"presence":{"not_types":["*"]}}`)
		type result struct {
			i    int
			body map[string]any
		}
		results := make(chan result, listeners)
		poll := func(i int) {
			go func() {
				status, body := rawSync(t, srv, users[i], "timeout=10000&filter="+noPresence+"&since="+url.QueryEscape(since[i]))
				if status != 200 {
					t.Errorf("/sync: %d %v", status, body)
				}
				results <- result{i, body}
			}()
		}
		for i := range users {
			poll(i)
		}
		for start := time.Now(); srv.HS.Sync.Waiting() < listeners && time.Since(start) < 5*time.Second; {
			time.Sleep(time.Millisecond)
		}
		sendText(t, srv, alice, roomID, "now")
		got := make([]any, listeners)
		sawNow := make([]bool, listeners)
		for done, polls := 0, 0; done < listeners; polls++ {
			if polls > 5*listeners {
				t.Fatalf("counts never arrived: %v", got)
			}
			r := <-results
			since[r.i] = r.body["next_batch"].(string)
			evs, _ := dig(r.body, "rooms", "join", roomID, "timeline", "events").([]any)
			for _, ev := range evs {
				sawNow[r.i] = sawNow[r.i] || dig(ev, "content", "body") == "now"
			}
			count := dig(r.body, "rooms", "join", roomID, "unread_notifications", "notification_count")
			if count == nil || !sawNow[r.i] {
				// Before the message, or the woken response without
				// counts: the consumer's commit wakes the next poll.
				poll(r.i)
				continue
			}
			if count != want(r.i) {
				t.Errorf("listener %d: count %v, want %v", r.i, count, want(r.i))
			}
			if got[r.i] == nil {
				done++
			}
			got[r.i] = count
		}
	})
}
