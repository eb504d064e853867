package federationapi_test

import (
	"context"
	"testing"
	"time"
)

// TestThreeServersCatchUp: B and C join A's room; C is stopped while A
// keeps sending, restarted, and receives everything (catch-up from the
// stored queue); B got everything live. Security cases 35, 37.
func TestThreeServersCatchUp(t *testing.T) {
	forEachEngine(t, func(t *testing.T, n *network) {
		ctx := context.Background()
		a, b, c := n.start(), n.start(), n.start()
		alice, bob, carol := a.user("alice"), b.user("bob"), c.user("carol")
		roomID := publicRoom(t, a, alice)
		for _, j := range []struct {
			s    *fedServer
			user string
		}{{b, bob}, {c, carol}} {
			if _, err := j.s.HS.Federation.JoinRemote(ctx, roomID, j.user, []string{a.Name}); err != nil {
				t.Fatalf("%s join: %v", j.user, err)
			}
		}
		eventually(t, "everyone joined everywhere", func() bool {
			for _, s := range []*fedServer{a, b, c} {
				for _, u := range []string{alice, bob, carol} {
					if m, _ := s.HS.Rooms.Membership(ctx, roomID, u); m != "join" {
						return false
					}
				}
			}
			return true
		})
		hello := sendText(t, b, roomID, bob, "hello from B")
		eventually(t, "C to get B's message", func() bool { return hasEvent(c, carol, hello) })

		c.stop()
		var sent []string
		for i := 0; i < 5; i++ {
			sent = append(sent, sendText(t, a, roomID, alice, "while C is down"))
		}
		eventually(t, "B to get the messages", func() bool { return hasEvent(b, bob, sent[len(sent)-1]) })
		time.Sleep(500 * time.Millisecond) // let A fail against C and back off
		c.restart()
		for _, id := range sent {
			eventually(t, "C to catch up on "+id, func() bool { return hasEvent(c, carol, id) })
		}
	})
}
