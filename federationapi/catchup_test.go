package federationapi_test

import (
	"context"
	"testing"

	"github.com/myelin-chat/myelin/storage"
)

// TestThreeServersCatchUp: B and C join A's room; C is stopped while A
// keeps sending, restarted, and receives everything (catch-up from the
// stored queue); B got everything live. Security cases 35, 37.
func TestThreeServersCatchUp(t *testing.T) {
	t.Parallel()
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
		// A has failed against C (and backs off) before C is back.
		eventually(t, "A to fail against C", func() bool { return destinationFailures(t, a, c.Name) > 0 })
		c.restart()
		for _, id := range sent {
			eventually(t, "C to catch up on "+id, func() bool { return hasEvent(c, carol, id) })
		}
	})
}

// destinationFailures is s's count of failed transactions in a row to
// destination.
func destinationFailures(t testing.TB, s *fedServer, destination string) int {
	t.Helper()
	var failures int
	err := s.HS.DB.Reader().QueryRow(context.Background(), `SELECT failures FROM federation_destinations WHERE server_name = $1`,
		destination).Scan(&failures)
	if err != nil && !storage.IsNoRows(err) {
		t.Fatal(err)
	}
	return failures
}
