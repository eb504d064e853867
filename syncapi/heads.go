package syncapi

import (
	"context"
	"sync"
	"time"

	"github.com/myelin-chat/myelin/internal/notifier"
	"github.com/myelin-chat/myelin/roomserver"
)

// headsCache shares the stream heads that are the same for every user
// (room events, receipts, typing, presence, to-device, device lists,
// remote invites) between the /sync requests computed between two
// notifications. When one message wakes L waiting requests, the heads
// are read once instead of L times.
//
// Why it is exact: every writer of these streams notifies after its
// commit, and a notification replaces the notifier's Changed channel.
// An entry is tagged with the channel current before its read and is
// used only while that channel is still current, i.e. while nothing has
// been notified since. Heads read then are committed positions (never
// ahead of the database), and anything committed after them is followed
// by a notification that both retires the entry and wakes the waiting
// requests, which then read fresh heads. maxHeadsAge bounds how long an
// entry lives even without a notification, so a write that did not
// notify is still seen by the requests that start after that age. A
// token ahead of the cached heads (issued from a read that raced the
// entry) makes compute read fresh heads before refusing it.
//
// Only the in-process notifier qualifies: across processes (Redis) a
// notification can be late or lost, so the heads are read every time.
//
// Carrying an entry forward: a message moves only the room stream and,
// one commit later, the push consumer's counts position. When nothing
// but those two streams was notified since an entry's read, the next
// generation's entry is the old one with Room raised to the notified
// room position and Unread to the notified counts position, or to the
// counts position last read when that is higher (never past Room),
// without reading the database. That is exact for the same
// reason as the cache itself: a notified position is committed (every
// writer notifies after its commit; room positions and the consumer's
// position commit in order), so everything up to it is readable, and
// the other streams' heads are still committed positions that nothing
// has been notified past. Any other stream's notification, or an entry
// whose last read is maxHeadsAge old, makes the next get read afresh.
//
// Concurrency: guarded by mu.
type headsCache struct {
	n *notifier.Notifier // nil: caching off
	// counts: the heads' Unread is the push consumer's position, which
	// it notifies as UnreadCountsStream (immutable).
	counts bool
	mu     sync.Mutex
	// counted is the counts position (Push.CountsPosition) the entry's
	// reads returned, before capping at Room: every event up to it has
	// its counts committed, so a carried Room up to it carries Unread
	// with it. With counts written in the event's own transaction it is
	// math.MaxInt64 and Unread follows Room, whether or not the
	// UnreadCountsStream notification, which comes after the room
	// stream's, has been seen yet: a long poll woken by the room
	// notification then answers with the message and the counts it
	// raised (Spec: client-server-api, "Receiving notifications": the
	// server MUST update the count in /sync as it changes), not with
	// the message alone and the counts in a second response.
	counted int64
	// gen is the Changed channel the entry was read under; nil: empty.
	gen <-chan struct{}
	// at is the time of the entry's last database read.
	at    time.Time
	heads syncToken
	// seen are the notifier's positions taken before the entry's last
	// database read or carried with it: the heads include every
	// notification they hold.
	seen notifier.Positions
	// reads counts database reads (tests).
	reads int
}

// carriedStreams are the streams whose notified positions an entry can
// take over without a read.
var carriedStreams = map[string]bool{roomserver.Stream: true, UnreadCountsStream: true}

// maxHeadsAge bounds an entry's life.
const maxHeadsAge = 250 * time.Millisecond

// newHeadsCache caches the heads for the in-process notifier b; counts
// says whether the heads' Unread follows UnreadCountsStream (sync has a
// push component).
func newHeadsCache(b notifier.Broadcaster, counts bool) *headsCache {
	n, _ := b.(*notifier.Notifier)
	return &headsCache{n: n, counts: counts}
}

// get returns the shared heads, read by read when the cache has no entry
// for the current notification generation that it can carry forward (or
// fresh is set).
//
// read returns the heads with Unread the counts position as read, which
// may be past Room (math.MaxInt64 when every committed event's counts
// are committed with it); get returns Unread capped at Room.
func (c *headsCache) get(ctx context.Context, fresh bool, read func(context.Context) (syncToken, error)) (syncToken, error) {
	if c.n == nil {
		h, err := read(ctx)
		h.Unread = min(h.Unread, h.Room)
		return h, err
	}
	gen := c.n.Changed()
	now := time.Now()
	if !fresh {
		c.mu.Lock()
		if c.gen != nil && now.Sub(c.at) < maxHeadsAge {
			if c.gen == gen {
				h := c.heads
				c.mu.Unlock()
				return h, nil
			}
			// Positions is taken after gen: a notification between the
			// two retires gen, and the next get carries again.
			if pos := c.n.Positions(); c.carry(pos) {
				c.gen, c.seen = gen, pos
				h := c.heads
				c.mu.Unlock()
				return h, nil
			}
		}
		c.mu.Unlock()
	}
	seen := c.n.Positions()
	h, err := read(ctx)
	if err != nil {
		return h, err
	}
	counted := h.Unread
	h.Unread = min(h.Unread, h.Room)
	c.mu.Lock()
	defer c.mu.Unlock()
	c.reads++
	if c.gen == gen && now.Sub(c.at) < maxHeadsAge {
		// Two reads in one generation: keep the higher of each; both
		// are committed positions, and together they include every
		// notification either saw.
		h = h.max(c.heads)
		counted = max(counted, c.counted)
		for stream, p := range c.seen {
			seen[stream] = max(seen[stream], p)
		}
	}
	c.gen, c.at, c.heads, c.seen, c.counted = gen, now, h, seen, counted
	return h, nil
}

// carry raises the entry to the notifier's positions pos and reports
// true when only carriedStreams moved past what the entry has seen;
// otherwise it leaves the entry alone and reports false. c.mu is held.
func (c *headsCache) carry(pos notifier.Positions) bool {
	for stream, p := range pos {
		if !carriedStreams[stream] && p > c.seen[stream] {
			return false
		}
	}
	h := c.heads
	h.Room = max(h.Room, pos[roomserver.Stream])
	if c.counts {
		h.Unread = min(max(h.Unread, pos[UnreadCountsStream], c.counted), h.Room)
	}
	c.heads = h
	return true
}
