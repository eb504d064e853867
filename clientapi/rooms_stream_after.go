package clientapi

import (
	"context"
	"sort"

	"github.com/myelin-chat/myelin/storage"
)

// PresenceAfter returns the first limit presence changes (every user)
// with stream positions above after, in position order. Positions commit
// in order (presenceLock), so a consumer that read up to a position has
// seen everything below it. It is for server-side consumers of the
// presence stream (application services), never for clients.
func (s *Server) PresenceAfter(ctx context.Context, after int64, limit int) (changes []Presence, err error) {
	err = s.db.Read(ctx, func(q storage.Querier) error {
		changes = changes[:0]
		rows, err := q.Query(ctx, `SELECT user_id, presence, status_msg, last_active_ts, position FROM presence
			WHERE position > $1 ORDER BY position LIMIT $2`, after, limit)
		if err != nil {
			return err
		}
		changes, err = scanPresence(rows, changes)
		return err
	})
	return changes, err
}

// TypingRoom is one room's typing set as of its last change.
type TypingRoom struct {
	RoomID string
	// UserIDs are who is typing now (sorted; empty when everyone stopped).
	UserIDs []string
	// Changed is the typing stream position of the room's last change.
	Changed int64
}

// TypingChangedAfter returns the first limit rooms, in order of their
// last change, whose typing set changed at a position in (after, head],
// each with who is typing now, and head, the typing stream head. Typing
// is held in this process's memory (see typingTracker).
func (s *Server) TypingChangedAfter(after int64, limit int) (rooms []TypingRoom, head int64) {
	t := s.rooms.typing
	t.mu.Lock()
	defer t.mu.Unlock()
	for roomID, pos := range t.changed {
		if pos > after {
			rooms = append(rooms, TypingRoom{RoomID: roomID, Changed: pos})
		}
	}
	sort.Slice(rooms, func(i, j int) bool { return rooms[i].Changed < rooms[j].Changed })
	if len(rooms) > limit {
		rooms = rooms[:limit]
	}
	for i := range rooms {
		users := []string{}
		for u := range t.rooms[rooms[i].RoomID] {
			users = append(users, u)
		}
		sort.Strings(users)
		rooms[i].UserIDs = users
	}
	return rooms, t.pos
}
