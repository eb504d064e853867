package roomserver

import (
	"context"
	"testing"

	"github.com/myelin-chat/myelin/internal/mxerr"
	"github.com/myelin-chat/myelin/storage"
	"github.com/myelin-chat/myelin/storage/storagetest"
)

// TestForgetPendingMembership: Forget consults Deps.PendingMembership,
// inside its transaction, for a room no user of this server is joined
// to: a pending invite or knock there is refused with 400 M_UNKNOWN and
// nothing is written; a pending leave (the invite or knock ended) is
// forgotten. In a room this server is in, the room's own member events
// decide, whatever an out-of-date pending row says.
// Spec: client-server-api, "POST /_matrix/client/v3/rooms/{roomId}/forget"
// (400 "The user has not left the room").
func TestForgetPendingMembership(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		s := newTestServer(t, db)
		ctx := context.Background()
		pending := map[string]string{}
		s.pendingMembership = func(ctx context.Context, tx storage.Tx, userID, roomID string) (string, error) {
			if tx == nil {
				t.Error("PendingMembership called without Forget's transaction")
			}
			return pending[userID+" "+roomID], nil
		}
		isForgotten := func(roomID string) bool {
			t.Helper()
			rooms, err := s.ForgottenRooms(ctx, bob)
			if err != nil {
				t.Fatal(err)
			}
			return rooms[roomID]
		}
		for _, m := range []string{"invite", "knock"} {
			remote := "!" + m + ":elsewhere.example"
			pending[bob+" "+remote] = m
			err := s.Forget(ctx, bob, remote)
			if e, ok := mxerr.As(err); !ok || e.Code != mxerr.Unknown || e.Status() != 400 {
				t.Fatalf("forgetting a room with a pending %s: %v, want 400 M_UNKNOWN", m, err)
			}
			if isForgotten(remote) {
				t.Fatalf("%s recorded as forgotten with a pending %s", remote, m)
			}
			pending[bob+" "+remote] = "leave"
			if err := s.Forget(ctx, bob, remote); err != nil {
				t.Fatalf("forgetting after the %s ended: %v", m, err)
			}
			if !isForgotten(remote) {
				t.Fatalf("%s not recorded as forgotten after the %s ended", remote, m)
			}
		}

		// A room held here that bob left: a stale pending invite does
		// not stop him forgetting it.
		room := mustCreate(t, s, CreateRoomRequest{Creator: alice, Preset: PresetPublicChat}).RoomID
		if _, err := s.Join(ctx, MembershipRequest{RoomID: room, Sender: bob}); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Leave(ctx, MembershipRequest{RoomID: room, Sender: bob}); err != nil {
			t.Fatal(err)
		}
		pending[bob+" "+room] = "invite"
		if err := s.Forget(ctx, bob, room); err != nil {
			t.Fatalf("forgetting a held room bob left: %v", err)
		}
		if !isForgotten(room) {
			t.Fatalf("%s not recorded as forgotten", room)
		}
	})
}
