package roomserver

import (
	"context"
	"testing"
	"time"

	"github.com/myelin-chat/myelin/storage"
	"github.com/myelin-chat/myelin/storage/storagetest"
)

// TestForgetRacingJoin: a join that a concurrent forget would miss (it
// commits after Forget has read the membership) must not leave the room
// forgotten for a joined user. The join starts from inside Forget, between
// its read of the membership and its write; Forget then waits for that
// join to finish, or for joinWait while the join is held back (as it must
// be, by the room's lock). Either way the room must end joined and not
// forgotten. Spec: client-server-api, "POST /rooms/{roomId}/forget" (only
// a room the user has left can be forgotten; a rejoin un-forgets it).
func TestForgetRacingJoin(t *testing.T) {
	const joinWait = 2 * time.Second
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		s := newTestServer(t, db)
		ctx := context.Background()
		room := mustCreate(t, s, CreateRoomRequest{Creator: alice, Preset: PresetPublicChat}).RoomID
		if _, err := s.Join(ctx, MembershipRequest{RoomID: room, Sender: bob}); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Leave(ctx, MembershipRequest{RoomID: room, Sender: bob}); err != nil {
			t.Fatal(err)
		}
		joined := make(chan error, 1)
		s.inForget = func() {
			s.inForget = nil
			go func() {
				_, err := s.Join(ctx, MembershipRequest{RoomID: room, Sender: bob})
				joined <- err
			}()
			select {
			case err := <-joined:
				joined <- err // the join committed inside Forget's window
			case <-time.After(joinWait):
			}
		}
		if err := s.Forget(ctx, bob, room); err != nil {
			t.Fatalf("Forget: %v", err)
		}
		if err := <-joined; err != nil {
			t.Fatalf("Join: %v", err)
		}
		mustMember(t, s, room, bob, "join")
		var forgotten int
		if err := db.Reader().QueryRow(ctx, `SELECT COUNT(*) FROM roomserver_forgotten WHERE user_id = $1 AND room_id = $2`,
			bob, room).Scan(&forgotten); err != nil {
			t.Fatal(err)
		}
		if forgotten != 0 {
			t.Fatalf("bob is joined to %s but the room is recorded as forgotten", room)
		}
		rooms, err := s.RoomsForUser(ctx, bob, "join")
		if err != nil || !contains(rooms, room) {
			t.Fatalf("bob's joined rooms = %v, %v; want %s", rooms, err, room)
		}
	})
}
