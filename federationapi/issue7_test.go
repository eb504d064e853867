//go:build goolm

package federationapi_test

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
)

// TestThreeServerScenario is issue 7's proof, in one story on three
// Myelin servers (TLS, test CA), driven through their client APIs with
// mautrix-go: alice on A creates a room with an alias; bob on B and
// carol on C join by the alias; everyone talks and sees everyone; bob's
// typing and carol's read receipt reach the other servers; bob leaves,
// alice bans carol, and both servers see it; dave on B (B left the room
// with bob) joins afresh and /messages backfills what was said while B
// was out; alice and bob hold an end-to-end encrypted conversation
// (e2eeConversation); erin on C joins, C is stopped while alice keeps
// sending, restarted, and erin receives everything.
func TestThreeServerScenario(t *testing.T) {
	t.Parallel()
	forEachEngine(t, func(t *testing.T, n *network) {
		ctx := context.Background()
		a, b, c := n.start(), n.start(), n.start()
		alice, bob, carol := a.register("alice"), b.register("bob"), c.register("carol")
		room := alice.publicAliasedRoom("proof")
		alias := "#proof:" + a.Name
		for _, u := range []*syncer{bob, carol} {
			if _, err := u.cli.JoinRoom(ctx, alias, nil); err != nil {
				t.Fatalf("%s joining %s: %v", u.id(), alias, err)
			}
		}
		everyone := []*syncer{alice, bob, carol}
		for _, u := range everyone {
			u.send(room, "hello from "+string(u.id()))
		}
		for _, u := range everyone {
			for _, from := range everyone {
				u.await("the hello of "+string(from.id()), func() bool { return u.sawMessage(room, from.id(), "hello from "+string(from.id())) })
			}
		}

		// Typing and receipts cross.
		if _, err := bob.cli.UserTyping(ctx, room, true, 30*time.Second); err != nil {
			t.Fatalf("bob typing: %v", err)
		}
		for _, u := range []*syncer{alice, carol} {
			u.await("bob typing", func() bool { return u.sawEphemeral(room, event.EphemeralEventTyping, bob.id()) })
		}
		read := alice.send(room, "please read")
		carol.await("alice's message", func() bool { return carol.sawMessage(room, alice.id(), "please read") })
		if err := carol.cli.SendReceipt(ctx, room, read, event.ReceiptTypeRead, nil); err != nil {
			t.Fatalf("carol's receipt: %v", err)
		}
		for _, u := range []*syncer{alice, bob} {
			u.await("carol's receipt", func() bool { return u.sawEphemeral(room, event.EphemeralEventReceipt, carol.id()) })
		}

		// Bob leaves; alice bans carol.
		if _, err := bob.cli.LeaveRoom(ctx, room); err != nil {
			t.Fatalf("bob leaving: %v", err)
		}
		if _, err := alice.cli.BanUser(ctx, room, &mautrix.ReqBanUser{UserID: carol.id(), Reason: "proof"}); err != nil {
			t.Fatalf("banning carol: %v", err)
		}
		for _, s := range []*fedServer{a, c} {
			eventually(t, s.Name+" to see bob leave and carol banned", func() bool {
				mb, _ := s.HS.Rooms.Membership(ctx, string(room), string(bob.id()))
				mc, _ := s.HS.Rooms.Membership(ctx, string(room), string(carol.id()))
				return mb == "leave" && mc == "ban"
			})
		}
		carol.await("her ban", func() bool { return carol.left[room] })
		if _, err := carol.cli.SendText(ctx, room, "still here?"); !httpStatusIs(err, 403) {
			t.Fatalf("a banned carol sending: %v, want 403", err)
		}

		// While B is out of the room, alice goes on; then dave on B
		// joins and pages back through all of it.
		var away []string
		for i := 0; i < 12; i++ {
			away = append(away, fmt.Sprintf("while B was away %02d", i))
			alice.send(room, away[i])
		}
		dave := b.register("dave")
		if _, err := dave.cli.JoinRoom(ctx, alias, nil); err != nil {
			t.Fatalf("dave joining: %v", err)
		}
		bodies := pageAllBack(t, dave, room)
		want := slices.Clone(away)
		slices.Reverse(want)
		want = append(want, "please read")
		if i := slices.Index(bodies, want[0]); i < 0 || !slices.Equal(bodies[i:i+len(want)], want) {
			t.Fatalf("dave's /messages on B, newest first: %q\nwant in it: %q", bodies, want)
		}
		for _, u := range everyone {
			if !slices.Contains(bodies, "hello from "+string(u.id())) {
				t.Fatalf("dave's /messages on B lacks the hello of %s: %q", u.id(), bodies)
			}
		}

		// End-to-end encryption between A and B.
		e2eeConversation(t, a, b, "alice-e2ee", "bob-e2ee")

		// C goes down while alice keeps sending; back up, it catches up.
		erin := c.register("erin")
		if _, err := erin.cli.JoinRoom(ctx, alias, nil); err != nil {
			t.Fatalf("erin joining: %v", err)
		}
		eventually(t, "A to see erin's join", func() bool {
			m, _ := a.HS.Rooms.Membership(ctx, string(room), string(erin.id()))
			return m == "join"
		})
		erin.syncOnce()
		c.stop()
		var whileDown []string
		for i := 0; i < 5; i++ {
			whileDown = append(whileDown, fmt.Sprintf("while C was down %d", i))
			alice.send(room, whileDown[i])
		}
		dave.await("the messages while C was down", func() bool { return dave.sawMessage(room, alice.id(), whileDown[4]) })
		eventually(t, "A to fail against C", func() bool { return destinationFailures(t, a, c.Name) > 0 })
		c.restart()
		erin.await("everything sent while C was down", func() bool {
			for _, body := range whileDown {
				if !erin.sawMessage(room, alice.id(), body) && !hasBody(t, c, string(erin.id()), room, body) {
					return false
				}
			}
			return true
		})
	})
}

// pageAllBack pages /messages backwards, 10 at a time, to the start and
// returns the message bodies, newest first.
func pageAllBack(t *testing.T, u *syncer, room id.RoomID) []string {
	t.Helper()
	var bodies []string
	from := ""
	for page := 0; page < 50; page++ {
		resp, err := u.cli.Messages(context.Background(), room, from, "", mautrix.DirectionBackward, nil, 10)
		if err != nil {
			t.Fatalf("/messages for %s: %v", u.id(), err)
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
			return bodies
		}
		from = resp.End
	}
	t.Fatalf("/messages for %s did not reach the start in 50 pages", u.id())
	return nil
}

// hasBody reports whether s holds a message with body in room that
// userID may see (a limited /sync batch can leave some out of the
// timeline; the server still has them).
func hasBody(t *testing.T, s *fedServer, userID string, room id.RoomID, body string) bool {
	t.Helper()
	for _, e := range timeline(t, s, userID, string(room)) {
		var c struct {
			Body string `json:"body"`
		}
		_ = json.Unmarshal(e.Content, &c)
		if e.Type == "m.room.message" && c.Body == body {
			return true
		}
	}
	return false
}
