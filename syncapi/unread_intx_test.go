package syncapi_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	"testing"
	"time"

	"github.com/myelin-chat/myelin/internal/testserver"
	"github.com/myelin-chat/myelin/roomserver"
)

// TestLongPollMessageCarriesItsCounts: a message's unread counts are
// committed with the message (pushserver.CountInTx), so the long poll
// the message wakes carries the message and the counts it raised, and
// no second, counts-only wake follows. Each round: bob long-polls, alice
// sends (every third message mentions bob's display name), and the
// first response must hold the message with bob's cumulative
// notification and highlight counts; then a short poll must sit out
// its timeout with nothing to say. Carol joins halfway: the messages
// after her join count for her (evaluation sees the room's state as of
// each message).
func TestLongPollMessageCarriesItsCounts(t *testing.T) {
	testserver.ForEachEngine(t, nil, func(t *testing.T, srv *testserver.Server) {
		alice, bob, carol := newUser(t, srv, "alice"), newUser(t, srv, "bob"), newUser(t, srv, "carol")
		roomID := createRoom(t, srv, alice, roomserver.CreateRoomRequest{Preset: "public_chat"})
		membership(t, srv, "join", bob, bob.id, roomID)
		first := syncOK(t, srv, bob, "timeout=0")
		since := first["next_batch"].(string)

		poll := func(since, timeoutMS string) (map[string]any, time.Duration) {
			t.Helper()
			start := time.Now()
			status, body := rawSync(t, srv, bob, "timeout="+timeoutMS+"&since="+url.QueryEscape(since))
			if status != 200 {
				t.Fatalf("/sync: %d %v", status, body)
			}
			return body, time.Since(start)
		}
		notes, highlights := 0, 0
		for i := range 12 {
			if i == 6 {
				membership(t, srv, "join", carol, carol.id, roomID)
				body, _ := poll(since, "0")
				since = body["next_batch"].(string)
			}
			type result struct {
				body map[string]any
				took time.Duration
			}
			woken := make(chan result, 1)
			waiting := srv.HS.Sync.Waiting()
			go func() {
				body, took := poll(since, "10000")
				woken <- result{body, took}
			}()
			for srv.HS.Sync.Waiting() == waiting {
				time.Sleep(time.Millisecond)
			}
			content := map[string]any{"msgtype": "m.text", "body": fmt.Sprintf("message %d", i)}
			if i%3 == 2 {
				content["m.mentions"] = map[string]any{"user_ids": []string{bob.id}}
				highlights++
			}
			raw, _ := json.Marshal(content)
			if _, err := srv.HS.Rooms.SendEvent(context.Background(), roomserver.SendEventRequest{
				RoomID: roomID, Sender: alice.id, Type: "m.room.message", Content: raw}); err != nil {
				t.Fatal(err)
			}
			notes++
			r := <-woken
			room := dig(r.body, "rooms", "join", roomID)
			evs, _ := dig(room, "timeline", "events").([]any)
			if len(evs) != 1 {
				t.Fatalf("message %d: woken long poll has timeline %v, want the message", i, evs)
			}
			n := dig(room, "unread_notifications", "notification_count")
			h := dig(room, "unread_notifications", "highlight_count")
			if n != float64(notes) || h != float64(highlights) {
				t.Fatalf("message %d: the response carrying it has counts %v/%v, want %d/%d (counts in a separate wake?)",
					i, n, h, notes, highlights)
			}
			since = r.body["next_batch"].(string)
			// Nothing follows: no counts-only wake.
			body, took := poll(since, "300")
			if room := dig(body, "rooms", "join", roomID); room != nil || took < 250*time.Millisecond {
				t.Fatalf("message %d: a second response after %v: %v", i, took, room)
			}
			since = body["next_batch"].(string)
		}
		carolSync := syncOK(t, srv, carol, "timeout=0")
		if n := dig(carolSync, "rooms", "join", roomID, "unread_notifications", "notification_count"); n != float64(6) {
			t.Errorf("carol, joined before the last 6 messages: count %v, want 6", n)
		}
	})
}
