package syncapi

import (
	"context"

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
// The grouping is groupedReads', by room.
type memberBatcher struct {
	rooms Rooms
	reads groupedReads[string, memberKeys, []*roomserver.Event]
}

// memberKeys is the union of the state keys of a group's requests.
type memberKeys struct {
	keys   []string
	wanted map[string]bool
}

// maxMemberGroupKeys bounds the state keys of one grouped read (one IN
// list); a request that would pass it reads alone.
const maxMemberGroupKeys = 500

func newMemberBatcher(rooms Rooms) *memberBatcher {
	return &memberBatcher{rooms: rooms}
}

// members is Rooms.IndexedStateKeys(ctx, roomID, "m.room.member",
// stateKeys), read together with the requests that ask for the same room
// at the same time.
func (c *memberBatcher) members(ctx context.Context, roomID string, stateKeys []string) ([]*roomserver.Event, error) {
	if len(stateKeys) == 0 {
		return nil, nil
	}
	g, lead := c.reads.join(roomID, func(g *memberKeys) bool {
		added := 0
		for _, k := range stateKeys {
			if !g.wanted[k] {
				added++
			}
		}
		if len(g.keys)+added > maxMemberGroupKeys {
			return false
		}
		if g.wanted == nil {
			g.wanted = map[string]bool{}
		}
		for _, k := range stateKeys {
			if !g.wanted[k] {
				g.wanted[k] = true
				g.keys = append(g.keys, k)
			}
		}
		return true
	})
	if lead {
		// Nothing of this room is being read: this request reads at
		// once, alone, and later ones queue behind it.
		out, err := c.rooms.IndexedStateKeys(ctx, roomID, "m.room.member", stateKeys)
		c.reads.finish(context.WithoutCancel(ctx), roomID, c.read)
		return out, err
	}
	if g == nil {
		// The room's next group would pass the bound.
		return c.rooms.IndexedStateKeys(ctx, roomID, "m.room.member", stateKeys)
	}
	all, err := c.reads.wait(ctx, g)
	if err != nil {
		return nil, err
	}
	return membersOf(all, stateKeys), nil
}

// read answers the state keys of a room's group.
func (c *memberBatcher) read(ctx context.Context, roomID string, g *memberKeys) ([]*roomserver.Event, error) {
	return c.rooms.IndexedStateKeys(ctx, roomID, "m.room.member", g.keys)
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
