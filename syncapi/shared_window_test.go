package syncapi_test

import (
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/myelin-chat/myelin/internal/testserver"
	"github.com/myelin-chat/myelin/roomserver"
)

// messageBodies is timelineBodies without the state events' types.
func messageBodies(body map[string]any, roomID string) []string {
	var out []string
	for _, b := range timelineBodies(body, roomID) {
		if !strings.HasPrefix(b, "m.room.") {
			out = append(out, b)
		}
	}
	return out
}

// TestSharedWindowStaysPerUser: requests with the same token share the
// answer to "which rooms have events in this window" (and long polls
// the heads a notification carries), but never another user's rooms or
// events: Bob, who left room B before the token, gets nothing of the
// message sent there, neither in a sync that follows Carol's with the
// same token nor in a long poll woken beside hers; a room whose history
// Bob may not see gives him only what he may.
func TestSharedWindowStaysPerUser(t *testing.T) {
	testserver.ForEachEngine(t, nil, func(t *testing.T, srv *testserver.Server) {
		alice, bob, carol := newUser(t, srv, "alice"), newUser(t, srv, "bob"), newUser(t, srv, "carol")
		roomA := createRoom(t, srv, alice, roomserver.CreateRoomRequest{Preset: "public_chat"})
		roomB := createRoom(t, srv, alice, roomserver.CreateRoomRequest{Preset: "public_chat"})
		for _, u := range []*user{bob, carol} {
			membership(t, srv, "join", u, u.id, roomA)
			membership(t, srv, "join", u, u.id, roomB)
		}
		membership(t, srv, "leave", bob, bob.id, roomB)
		syncOK(t, srv, bob, "timeout=0")
		since := syncOK(t, srv, carol, "timeout=0")["next_batch"].(string)

		sendText(t, srv, alice, roomA, "to both")
		sendText(t, srv, alice, roomB, "to carol")
		query := "timeout=0&since=" + url.QueryEscape(since)
		carolBody := syncOK(t, srv, carol, query)
		if got := messageBodies(carolBody, roomB); len(got) != 1 || got[0] != "to carol" {
			t.Fatalf("carol's room B timeline = %v", got)
		}
		bobBody := syncOK(t, srv, bob, query)
		if got := messageBodies(bobBody, roomA); len(got) != 1 || got[0] != "to both" {
			t.Fatalf("bob's room A timeline = %v", got)
		}
		for _, section := range []string{"join", "leave"} {
			if room := dig(bobBody, "rooms", section, roomB); room != nil {
				t.Fatalf("bob, who left room B, got it under %s: %v", section, room)
			}
		}

		// Long polls woken by one message in room B: Carol's answers,
		// Bob's (not in B) keeps waiting until its timeout.
		since = carolBody["next_batch"].(string)
		type result struct {
			body map[string]any
			took time.Duration
		}
		poll := func(u *user, timeoutMS string) <-chan result {
			ch := make(chan result, 1)
			go func() {
				start := time.Now()
				status, body := rawSync(t, srv, u, "timeout="+timeoutMS+"&since="+url.QueryEscape(since))
				if status != 200 {
					t.Errorf("/sync: %d %v", status, body)
				}
				ch <- result{body, time.Since(start)}
			}()
			return ch
		}
		carolCh, bobCh := poll(carol, "10000"), poll(bob, "3000")
		for deadline := time.Now().Add(20 * time.Second); srv.HS.Sync.Waiting() < 2; time.Sleep(time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("%d long polls waiting, want 2", srv.HS.Sync.Waiting())
			}
		}
		sendText(t, srv, alice, roomB, "carol again")
		c := <-carolCh
		if got := messageBodies(c.body, roomB); len(got) != 1 || got[0] != "carol again" {
			t.Fatalf("carol's woken long poll: room B timeline = %v", got)
		}
		b := <-bobCh
		for _, section := range []string{"join", "leave"} {
			if room := dig(b.body, "rooms", section, roomB); room != nil {
				t.Fatalf("bob's long poll got room B under %s: %v", section, room)
			}
		}
		// Unwoken, bob's poll answers at its 3 s timeout, however long
		// the machine took to reach the send.
		if b.took < 2900*time.Millisecond {
			t.Errorf("bob's long poll returned after %v with %v, before its timeout; nothing was his", b.took, b.body["rooms"])
		}

		// history_visibility joined: Dave, who joins after a message,
		// gets from the same window only what follows his join.
		dave := newUser(t, srv, "dave")
		roomC := createRoom(t, srv, alice, roomserver.CreateRoomRequest{Preset: "public_chat"})
		sendState(t, srv, alice, roomC, "m.room.history_visibility", "", `{"history_visibility":"joined"}`)
		syncOK(t, srv, dave, "timeout=0")
		since = syncOK(t, srv, carol, "timeout=0")["next_batch"].(string)
		membership(t, srv, "join", carol, carol.id, roomC)
		sendText(t, srv, alice, roomC, "before dave")
		membership(t, srv, "join", dave, dave.id, roomC)
		sendText(t, srv, alice, roomC, "after dave")
		query = "timeout=0&since=" + url.QueryEscape(since)
		if got := messageBodies(syncOK(t, srv, carol, query), roomC); len(got) != 2 {
			t.Fatalf("carol's room C timeline = %v, want both messages", got)
		}
		if got := messageBodies(syncOK(t, srv, dave, query), roomC); len(got) != 1 || got[0] != "after dave" {
			t.Fatalf("dave's room C timeline = %v, want only the message after his join", got)
		}
	})
}
