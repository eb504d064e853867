package syncapi

import (
	"context"
	"sync"

	"github.com/myelin-chat/myelin/roomserver"
)

// memberBatcher shares the lazy-loaded members reads of /sync requests
// that ask for the same room at the same time. One message to a room of
// L members wakes L long polls, and each reads the current member
// events of the message's sender and of its own user
// (lazyMemberEvents): L reads of the same index, nearly all of their
// cost that of a read as such (docs/benchmarks.md, "Fan-out delivery,
// part 3": the lazy-loaded members' state read was ~11 % of /sync's
// CPU). So the reads of one room are grouped, as the unread counts are
// (countsBatcher): while one read of the room runs, the requests that
// arrive join the room's next group, which one read of the union of
// their state keys answers when the first read is done.
//
// Why it is exact: a request joins only a group whose read has not
// started, so the read it gets begins after it asked — it sees the
// room's current state as the request's own read would have at that
// moment, or later (which callers already allow for: they drop what is
// past their room head, see upTo). Each request gets the events of its
// own state keys only, in the order Rooms.IndexedStateKeys gives them
// (the read's order, by state key, restricted to a subset, is the order
// of that subset). A member event is a room's state, not a user's
// view: nothing in it depends on who asked.
//
// The returned events are shared between requests: callers must not
// modify them (no caller in this package does).
//
// Concurrency: guarded by mu; a group's fields are set before its done
// is closed and never written after.
type memberBatcher struct {
	rooms Rooms
	mu    sync.Mutex
	// byRoom holds the rooms with a read under way; guarded by mu.
	byRoom map[string]*memberRoom
}

// memberRoom is one room's read under way and the group collecting
// behind it.
type memberRoom struct {
	next *memberGroup // nil until a request waits behind the running read
}

// memberGroup is the requests one read answers.
type memberGroup struct {
	keys   []string
	wanted map[string]bool
	done   chan struct{} // closed once out and err are set
	out    []*roomserver.Event
	err    error
}

// maxMemberGroupKeys bounds the state keys of one grouped read (one IN
// list); a request that would pass it reads alone.
const maxMemberGroupKeys = 500

func newMemberBatcher(rooms Rooms) *memberBatcher {
	return &memberBatcher{rooms: rooms, byRoom: map[string]*memberRoom{}}
}

// members is Rooms.IndexedStateKeys(ctx, roomID, "m.room.member",
// stateKeys), read together with the requests that ask for the same room
// at the same time.
func (c *memberBatcher) members(ctx context.Context, roomID string, stateKeys []string) ([]*roomserver.Event, error) {
	if len(stateKeys) == 0 {
		return nil, nil
	}
	c.mu.Lock()
	r := c.byRoom[roomID]
	if r == nil {
		// Nothing of this room is being read: this request reads at
		// once, alone, and later ones queue behind it.
		c.byRoom[roomID] = &memberRoom{}
		c.mu.Unlock()
		out, err := c.rooms.IndexedStateKeys(ctx, roomID, "m.room.member", stateKeys)
		c.finish(context.WithoutCancel(ctx), roomID)
		return out, err
	}
	g := r.next
	if g == nil {
		g = &memberGroup{wanted: map[string]bool{}, done: make(chan struct{})}
		r.next = g
	}
	added := 0
	for _, k := range stateKeys {
		if !g.wanted[k] {
			added++
		}
	}
	if len(g.keys)+added > maxMemberGroupKeys {
		c.mu.Unlock()
		return c.rooms.IndexedStateKeys(ctx, roomID, "m.room.member", stateKeys)
	}
	for _, k := range stateKeys {
		if !g.wanted[k] {
			g.wanted[k] = true
			g.keys = append(g.keys, k)
		}
	}
	c.mu.Unlock()
	select {
	case <-g.done:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	if g.err != nil {
		return nil, g.err
	}
	return membersOf(g.out, stateKeys), nil
}

// finish ends the room's running read: the group that collected behind
// it, if any, is read next, on its own goroutine (so that the finished
// read's request is not kept waiting for it); else the room is idle.
func (c *memberBatcher) finish(ctx context.Context, roomID string) {
	c.mu.Lock()
	r := c.byRoom[roomID]
	g := r.next
	r.next = nil
	if g == nil {
		delete(c.byRoom, roomID)
	}
	c.mu.Unlock()
	if g != nil {
		go c.read(ctx, roomID, g)
	}
}

// read answers g, then lets the room's next group, if any, read.
func (c *memberBatcher) read(ctx context.Context, roomID string, g *memberGroup) {
	g.out, g.err = c.rooms.IndexedStateKeys(ctx, roomID, "m.room.member", g.keys)
	close(g.done)
	c.finish(ctx, roomID)
}

// membersOf keeps the events of all whose state key is one of keys, in
// all's order.
func membersOf(all []*roomserver.Event, keys []string) []*roomserver.Event {
	var out []*roomserver.Event
	for _, e := range all {
		if e.StateKey != nil && contains(keys, *e.StateKey) {
			out = append(out, e)
		}
	}
	return out
}
