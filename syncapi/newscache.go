package syncapi

import (
	"context"
	"sync"
)

// newsCache shares the answers of Rooms.RoomsWithEvents between /sync
// requests. When one message wakes L long polls holding the same token,
// each asks which rooms have events in the same window (since, head]:
// the first asks the database and the others wait for its answer.
//
// Why it is exact: a window's upper end is always a committed position
// (a head read for the request, or a token this server issued, which
// compute has checked against the heads), and room stream positions
// commit in order (roomserver: the single SQLite writer, an advisory
// lock on PostgreSQL), so every event in the window is committed and no
// event can join it later. RoomsWithEvents counts events whether or not
// they were rejected, so a later change of an event's status does not
// change the answer either. An entry is therefore never stale, in one
// process or many; the cache is bounded only to bound memory.
//
// Callers must not modify a returned map.
//
// Concurrency: guarded by mu; an entry is filled once, then immutable.
type newsCache struct {
	rooms Rooms
	max   int
	mu    sync.Mutex
	// entries by window; guarded by mu. order lists their keys, oldest
	// first, for eviction.
	entries map[newsKey]*newsEntry
	order   []newsKey
}

type newsKey struct {
	from, to int64
	limit    int
}

type newsEntry struct {
	done     chan struct{} // closed once the fields below are set
	rooms    map[string]bool
	complete bool
	err      error
}

func newNewsCache(rooms Rooms, max int) *newsCache {
	return &newsCache{rooms: rooms, max: max, entries: map[newsKey]*newsEntry{}}
}

// roomsWithEvents is Rooms.RoomsWithEvents(from, to, limit), shared. to
// must be a committed position (see newsCache).
func (c *newsCache) roomsWithEvents(ctx context.Context, from, to int64, limit int) (map[string]bool, bool, error) {
	key := newsKey{from, to, limit}
	c.mu.Lock()
	e, ok := c.entries[key]
	if !ok {
		e = &newsEntry{done: make(chan struct{})}
		c.entries[key] = e
		c.order = append(c.order, key)
		if len(c.order) > c.max {
			delete(c.entries, c.order[0])
			c.order = c.order[1:]
		}
	}
	c.mu.Unlock()
	if ok {
		select {
		case <-e.done:
		case <-ctx.Done():
			return nil, false, ctx.Err()
		}
		if e.err == nil {
			return e.rooms, e.complete, nil
		}
		// The reader failed (perhaps its own request ended): read alone.
		return c.rooms.RoomsWithEvents(ctx, from, to, limit)
	}
	e.rooms, e.complete, e.err = c.rooms.RoomsWithEvents(ctx, from, to, limit)
	if e.err != nil {
		c.mu.Lock()
		if c.entries[key] == e {
			delete(c.entries, key)
		}
		c.mu.Unlock()
	}
	close(e.done)
	return e.rooms, e.complete, e.err
}
