package federationapi_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
)

// TestBackfillOnMessages: bob on B joins alice's room on A, which has 30
// messages from before (history_visibility shared); paginating /messages
// backwards on B fetches them from A with /backfill, in order, once.
// They are history: bob's next incremental /sync does not bring them.
// Complement: TestMessagesOverFederation, "Visible shared history after
// joining new room (backfill)".
func TestBackfillOnMessages(t *testing.T) {
	t.Parallel()
	forEachEngine(t, func(t *testing.T, n *network) {
		ctx := context.Background()
		a, b := n.start(), n.start()
		alice, bob := a.register("alice"), b.register("bob")
		roomID := alice.publicAliasedRoom("history")
		const prior = 30
		for i := 0; i < prior; i++ {
			alice.send(roomID, fmt.Sprintf("old message %02d", i))
		}
		if _, err := bob.cli.JoinRoom(ctx, "#history:"+a.Name, nil); err != nil {
			t.Fatalf("bob joining: %v", err)
		}
		bob.syncOnce()
		before := len(bob.timeline[roomID])

		var bodies []string
		from := ""
		for page := 0; page < 20; page++ {
			resp, err := bob.cli.Messages(ctx, roomID, from, "", mautrix.DirectionBackward, nil, 10)
			if err != nil {
				t.Fatalf("/messages on B: %v", err)
			}
			for _, ev := range resp.Chunk {
				if ev.Type == event.EventMessage {
					var c struct {
						Body string `json:"body"`
					}
					_ = json.Unmarshal(ev.Content.VeryRaw, &c)
					bodies = append(bodies, c.Body)
				}
			}
			if resp.End == "" {
				break
			}
			from = resp.End
		}
		if len(bodies) != prior {
			t.Fatalf("bob paginated %d old messages, want %d: %q", len(bodies), prior, bodies)
		}
		for i, body := range bodies {
			if want := fmt.Sprintf("old message %02d", prior-1-i); body != want {
				t.Fatalf("message %d going back is %q, want %q", i, body, want)
			}
		}
		// The backfilled events are not new timeline events.
		bob.syncOnce()
		for _, ev := range bob.timeline[roomID][before:] {
			if ev.Type == event.EventMessage {
				t.Fatalf("backfilled event %s came down /sync as new", ev.ID)
			}
		}
		// And B still follows the room: a new message arrives.
		alice.send(roomID, "after backfill")
		bob.await("the message after backfill", func() bool { return bob.sawMessage(roomID, alice.id(), "after backfill") })
	})
}

// TestRejoinBackfillsTheGap: bob on B joins alice's room on A, sends,
// leaves; alice sends 20 messages; bob joins again. B held the room, so
// the new join's prev events are unknown there: the join goes in with
// the send_join state. Paginating /messages backwards 10 at a time then
// fills the gap between the join and the leave from A (/backfill) and
// lists every message once, in order, down to bob's first message.
// Complement: TestMessagesOverFederation, "Visible shared history after
// re-joining room (backfill)".
func TestRejoinBackfillsTheGap(t *testing.T) {
	t.Parallel()
	forEachEngine(t, func(t *testing.T, n *network) {
		ctx := context.Background()
		a, b := n.start(), n.start()
		alice, bob := a.register("alice"), b.register("bob")
		roomID := alice.publicAliasedRoom("rejoin")
		if _, err := bob.cli.JoinRoom(ctx, "#rejoin:"+a.Name, nil); err != nil {
			t.Fatalf("bob joining: %v", err)
		}
		bob.send(roomID, "bob was here")
		if _, err := bob.cli.LeaveRoom(ctx, roomID); err != nil {
			t.Fatalf("bob leaving: %v", err)
		}
		eventually(t, "A to see bob's leave", func() bool {
			m, _ := a.HS.Rooms.Membership(ctx, string(roomID), string(bob.id()))
			return m == "leave"
		})
		const missed = 20
		for i := 0; i < missed; i++ {
			alice.send(roomID, fmt.Sprintf("missed %02d", i))
		}
		if _, err := bob.cli.JoinRoom(ctx, "#rejoin:"+a.Name, nil); err != nil {
			t.Fatalf("bob joining again: %v", err)
		}
		var bodies []string
		from := ""
		for page := 0; page < 20; page++ {
			resp, err := bob.cli.Messages(ctx, roomID, from, "", mautrix.DirectionBackward, nil, 10)
			if err != nil {
				t.Fatalf("/messages on B: %v", err)
			}
			for _, ev := range resp.Chunk {
				if ev.Type == event.EventMessage {
					var c struct {
						Body string `json:"body"`
					}
					_ = json.Unmarshal(ev.Content.VeryRaw, &c)
					bodies = append(bodies, c.Body)
				}
			}
			if resp.End == "" {
				break
			}
			from = resp.End
		}
		var want []string
		for i := missed - 1; i >= 0; i-- {
			want = append(want, fmt.Sprintf("missed %02d", i))
		}
		want = append(want, "bob was here")
		if !slices.Equal(bodies, want) {
			t.Fatalf("bob paginated %q\nwant %q", bodies, want)
		}
		alice.send(roomID, "welcome back")
		bob.await("the message after the rejoin", func() bool { return bob.sawMessage(roomID, alice.id(), "welcome back") })
	})
}

// TestTimestampToEventOverFederation: bob on B joins alice's room on A
// after alice sent messages m0, m1 and m2. B holds none of them, so its
// timestamp_to_event asks A (GET /timestamp_to_event, then GET /event):
// forwards from before m1 finds m1, not bob's join (B's own closest);
// backwards from after m2 finds m2, not m1. Both are then held on B:
// /context around m2 works and paging back from there reaches m1 and,
// backfilled, m0.
// Complement: TestJumpToDateEndpoint/parallel/federation.
func TestTimestampToEventOverFederation(t *testing.T) {
	t.Parallel()
	forEachEngine(t, func(t *testing.T, n *network) {
		ctx := context.Background()
		a, b := n.start(), n.start()
		alice, bob := a.register("alice"), b.register("bob")
		roomID := alice.publicAliasedRoom("jump")
		m0 := alice.send(roomID, "m0")
		time.Sleep(5 * time.Millisecond)
		beforeM1 := time.Now()
		time.Sleep(5 * time.Millisecond)
		m1 := alice.send(roomID, "m1")
		time.Sleep(5 * time.Millisecond)
		m2 := alice.send(roomID, "m2")
		time.Sleep(5 * time.Millisecond)
		afterM2 := time.Now()
		time.Sleep(5 * time.Millisecond)
		if _, err := bob.cli.JoinRoom(ctx, "#jump:"+a.Name, nil); err != nil {
			t.Fatalf("bob joining: %v", err)
		}
		if hasEvent(b, string(bob.id()), string(m1)) || hasEvent(b, string(bob.id()), string(m2)) {
			t.Fatal("B already holds alice's messages: nothing to test")
		}
		fwd, err := bob.cli.TimestampToEvent(ctx, roomID, beforeM1, mautrix.DirectionForward)
		if err != nil || fwd.EventID != m1 {
			t.Fatalf("forwards from before m1 on B: %+v %v, want %s", fwd, err, m1)
		}
		back, err := bob.cli.TimestampToEvent(ctx, roomID, afterM2, mautrix.DirectionBackward)
		if err != nil || back.EventID != m2 {
			t.Fatalf("backwards from after m2 on B: %+v %v, want %s", back, err, m2)
		}
		around, err := bob.cli.Context(ctx, roomID, m2, nil, 0)
		if err != nil {
			t.Fatalf("/context around m2 on B: %v", err)
		}
		page, err := bob.cli.Messages(ctx, roomID, around.Start, "", mautrix.DirectionBackward, nil, 100)
		if err != nil {
			t.Fatalf("/messages back from m2 on B: %v", err)
		}
		// (mautrix leaves out limit=0, so /context may list m1 itself.)
		seen := append(around.EventsBefore, page.Chunk...)
		for _, want := range []id.EventID{m1, m0} {
			if !slices.ContainsFunc(seen, func(e *event.Event) bool { return e.ID == want }) {
				t.Fatalf("neither /context nor /messages back from m2 on B lists %s: %d, %d events", want, len(around.EventsBefore), len(page.Chunk))
			}
		}
		// /context with limit=0: its end token is just after m2, so
		// paging back from it lists m2 itself, then m1.
		var bare struct {
			End string `json:"end"`
		}
		ctxURL := bob.cli.BuildURLWithQuery(mautrix.ClientURLPath{"v3", "rooms", roomID, "context", m2}, map[string]string{"limit": "0"})
		if _, err := bob.cli.MakeRequest(ctx, http.MethodGet, ctxURL, nil, &bare); err != nil {
			t.Fatalf("/context limit=0: %v", err)
		}
		page, err = bob.cli.Messages(ctx, roomID, bare.End, "", mautrix.DirectionBackward, nil, 100)
		if err != nil {
			t.Fatalf("/messages back from /context's end: %v", err)
		}
		if len(page.Chunk) < 2 || page.Chunk[0].ID != m2 || page.Chunk[1].ID != m1 {
			t.Fatalf("/messages back from /context's end %s does not start m2, m1: %d events", bare.End, len(page.Chunk))
		}
	})
}
