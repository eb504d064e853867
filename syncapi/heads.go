package syncapi

import (
	"context"
	"sync"
	"time"

	"github.com/myelin-chat/myelin/internal/notifier"
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
// Concurrency: guarded by mu.
type headsCache struct {
	n  *notifier.Notifier // nil: caching off
	mu sync.Mutex
	// gen is the Changed channel the entry was read under; nil: empty.
	gen   <-chan struct{}
	at    time.Time
	heads syncToken
}

// maxHeadsAge bounds an entry's life.
const maxHeadsAge = 250 * time.Millisecond

func newHeadsCache(b notifier.Broadcaster) *headsCache {
	n, _ := b.(*notifier.Notifier)
	return &headsCache{n: n}
}

// get returns the shared heads, read by read when the cache has no entry
// for the current notification generation (or fresh is set).
func (c *headsCache) get(ctx context.Context, fresh bool, read func(context.Context) (syncToken, error)) (syncToken, error) {
	if c.n == nil {
		return read(ctx)
	}
	gen := c.n.Changed()
	now := time.Now()
	if !fresh {
		c.mu.Lock()
		if c.gen == gen && now.Sub(c.at) < maxHeadsAge {
			h := c.heads
			c.mu.Unlock()
			return h, nil
		}
		c.mu.Unlock()
	}
	h, err := read(ctx)
	if err != nil {
		return h, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.gen == gen && now.Sub(c.at) < maxHeadsAge {
		// Two reads in one generation: keep the higher of each; both
		// are committed positions.
		h = h.max(c.heads)
	}
	c.gen, c.at, c.heads = gen, now, h
	return h, nil
}
