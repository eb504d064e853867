package federationapi_test

import (
	"context"
	"testing"

	"github.com/myelin-chat/myelin/roomserver"
)

// TestLateJoinCaughtUp: an event of ours created before we heard that a
// server joined the room was sent only to the servers we knew of. Here
// carol on C left A's room and joins again through A while B cannot be
// reached, so A's relay of the join to B waits; meanwhile bob on B says
// hello, which B sends to A only. When the join reaches B, B sends C its
// own forward extremity (the hello), so C gets it; before, C never did,
// as no later event named it.
func TestLateJoinCaughtUp(t *testing.T) {
	t.Parallel()
	forEachEngine(t, func(t *testing.T, n *network) {
		cut := partitionable(n)
		a, b, c := n.start(), n.start(), n.start()
		ctx := context.Background()
		alice, bob, carol := a.user("alice"), b.user("bob"), c.user("carol")
		roomID := publicRoom(t, a, alice)
		if _, err := c.HS.Federation.JoinRemote(ctx, roomID, carol, []string{a.Name}); err != nil {
			t.Fatal(err)
		}
		if _, err := b.HS.Federation.JoinRemote(ctx, roomID, bob, []string{a.Name}); err != nil {
			t.Fatal(err)
		}
		for _, s := range []*fedServer{b, c} {
			if err := s.HS.Rooms.AwaitFullState(ctx, roomID); err != nil {
				t.Fatal(err)
			}
		}
		eventually(t, "C to see bob's join", func() bool {
			m, _ := c.HS.Rooms.Membership(ctx, roomID, bob)
			return m == "join"
		})
		if _, err := c.HS.Rooms.Leave(ctx, roomserver.MembershipRequest{RoomID: roomID, Sender: carol, Target: carol}); err != nil {
			t.Fatalf("carol leaving: %v", err)
		}
		for _, s := range []*fedServer{a, b} {
			eventually(t, s.Name+" to see carol leave", func() bool {
				m, _ := s.HS.Rooms.Membership(ctx, roomID, carol)
				return m == "leave"
			})
		}
		cut(true, b)
		if _, err := c.HS.Federation.JoinRemote(ctx, roomID, carol, []string{a.Name}); err != nil {
			t.Fatalf("carol joining again: %v", err)
		}
		hello := sendText(t, b, roomID, bob, "hello")
		// B fans the hello out after the send has returned; once A has
		// it, B sent it while it still knew nothing of carol's join (A's
		// relay of it cannot reach B), so to A only.
		eventually(t, "A to get bob's hello", func() bool { return hasEvent(a, alice, hello) })
		cut(false, b)
		eventually(t, "B to see carol's second join", func() bool {
			m, _ := b.HS.Rooms.Membership(ctx, roomID, carol)
			return m == "join"
		})
		eventually(t, "C to get bob's hello", func() bool { return hasEvent(c, carol, hello) })
	})
}
