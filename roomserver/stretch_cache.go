package roomserver

import (
	"context"
	"sync"

	"github.com/myelin-chat/myelin/storage"
)

// stretchCache remembers which rooms have stretches of partial state
// (roomserver_partial_state_left), so that storing an event does not ask
// the database when the room has none (markAfterPartialStretch): nearly
// every room.
//
// It may say "has stretches" when the room has none (a stretch removed,
// a write that rolled back): that only costs the exact check. It must
// never say "none" when the room has one:
//
//   - a write that adds a stretch marks the room (added) before its
//     transaction commits, and a rollback leaves the mark;
//   - a write that removes stretches forgets the room (removed), and
//     the next lookup reads the table again;
//   - an answer read from the database is remembered only if no add or
//     remove happened meanwhile (the generation), so a read that raced
//     with an uncommitted add cannot overwrite the add's mark;
//   - in split mode (Deps.Shared) another process may add a stretch
//     this one never hears of, so "none" is never remembered there and
//     is read again each time (as the other caches check their hits:
//     cache_shared.go); "has" is, and is always safe.
//
// Nothing is remembered across a restart: the first lookup per room
// reads the table.
type stretchCache struct {
	mu    sync.Mutex
	gen   uint64          // guarded by mu; bumped by added and removed
	rooms map[string]bool // guarded by mu; true: has stretches
}

func newStretchCache() *stretchCache { return &stretchCache{rooms: map[string]bool{}} }

// lookup returns what is known of roomID, and the generation to pass to
// remember after reading the table.
func (c *stretchCache) lookup(roomID string) (has, known bool, gen uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	has, known = c.rooms[roomID]
	return has, known, c.gen
}

// remember stores what a read begun at generation gen found, unless an
// add or remove happened since.
func (c *stretchCache) remember(roomID string, has bool, gen uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.gen == gen {
		c.rooms[roomID] = has
	}
}

// added marks roomID as having stretches; called by a write adding one,
// before it commits.
func (c *stretchCache) added(roomID string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.gen++
	c.rooms[roomID] = true
}

// removed forgets roomID; called after a write removing stretches
// committed.
func (c *stretchCache) removed(roomID string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.gen++
	delete(c.rooms, roomID)
}

// roomHasStretches reports whether roomID may have a stretch of partial
// state: false only if it has none (see stretchCache).
func (s *Server) roomHasStretches(ctx context.Context, q storage.Querier, roomID string) (bool, error) {
	has, known, gen := s.stretches.lookup(roomID)
	if known {
		return has, nil
	}
	var n int
	if err := q.QueryRow(ctx, `SELECT COUNT(*) FROM (SELECT 1 FROM roomserver_partial_state_left
		WHERE room_id = $1 LIMIT 1) AS s`, roomID).Scan(&n); err != nil {
		return false, err
	}
	if n > 0 || !s.shared {
		s.stretches.remember(roomID, n > 0, gen)
	}
	return n > 0, nil
}
