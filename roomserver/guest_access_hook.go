package roomserver

import (
	"context"

	"github.com/myelin-chat/myelin/storage"
)

// GuestAccessHook is called inside the write transaction that changes a
// room's current m.room.guest_access (state key ""): set to another
// event, removed (a state reset), or its current event redacted. It
// says only that the entry changed, not how: the callee reads the state
// it needs after the commit. joinedLocal are the room's local users
// joined in the state the change makes (read in tx, under the room's
// write serialisation), so that a callee concerned only with some local
// users (guests) can tell there is nothing to do. Whatever it writes
// with tx commits or rolls back with the change; an error fails the
// write.
// Spec: client-server-api, "Guest Access", "Server behaviour" (guests
// leave when guest_access stops being can_join).
type GuestAccessHook func(ctx context.Context, tx storage.Tx, roomID string, joinedLocal []string) error

// guestAccessKey is the current-state entry GuestAccessHook watches.
var guestAccessKey = tuple{"m.room.guest_access", ""}

// guestAccessChanged calls the hook, when there is one, if any of keys
// is the room's guest_access entry. Call it once roomserver_current_state
// holds the change.
func (s *Server) guestAccessChanged(ctx context.Context, tx storage.Tx, roomID string, keys ...[]tuple) error {
	if s.onGuestAccess == nil {
		return nil
	}
	for _, ks := range keys {
		for _, k := range ks {
			if k == guestAccessKey {
				joined, err := storage.QueryColumn[string](ctx, tx, `SELECT state_key FROM roomserver_current_state
					WHERE room_id = $1 AND type = 'm.room.member' AND membership = 'join'`, roomID)
				if err != nil {
					return err
				}
				local := joined[:0]
				for _, userID := range joined {
					if domainOf(userID) == string(s.serverName) {
						local = append(local, userID)
					}
				}
				return s.onGuestAccess(ctx, tx, roomID, local)
			}
		}
	}
	return nil
}
