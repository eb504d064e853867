package syncapi

import (
	"context"
	"errors"
	"sync"
)

// countsBatcher shares the unread counts reads of long polls woken
// together. One message to a room of L members wakes L long polls, and
// each reads its user's counts once the push consumer has committed
// them: at 200 listeners that read was the largest share of a woken
// response's CPU (fan-out profile, docs/benchmarks.md "Fan-out: one
// counts read per wake"), nearly all of it the cost of a read as such
// rather than of the rows. So the reads are grouped, as commits are:
// while one group's read runs, the requests that arrive join the next
// group, which one read answers when the first is done.
//
// Why it is exact: a request joins only a group whose read has not
// started, so the read it gets begins after it asked — it is at least
// as fresh as the read the request would have made alone at that
// moment, and PushBatch answers each user as UnreadCounts would (that
// user's rows and rooms only). The group's read waits for the largest
// receipt position of its members (each member's own is then met).
//
// Concurrency: guarded by mu; a group's fields are set before its done
// is closed and never written after.
type countsBatcher struct {
	push PushBatch
	mu   sync.Mutex
	// running: a group's read is under way; guarded by mu.
	running bool
	// next collects the requests that wait for the running read to end;
	// guarded by mu.
	next *countsGroup
}

// countsGroup is the requests one read answers.
type countsGroup struct {
	queries    []UnreadQuery
	receiptPos int64
	done       chan struct{} // closed once out, counted and err are set
	out        []map[string]RoomUnread
	counted    int64
	err        error
}

// unreadCounts is Push.UnreadCounts(ctx, userID, roomIDs, 0, receiptPos),
// read together with the requests that ask at the same time.
func (c *countsBatcher) unreadCounts(ctx context.Context, userID string, roomIDs []string, receiptPos int64) (map[string]RoomUnread, int64, error) {
	c.mu.Lock()
	var g *countsGroup
	lead := !c.running
	if lead {
		// Nothing is being read: this request reads at once, alone.
		c.running = true
		g = &countsGroup{done: make(chan struct{})}
	} else {
		if c.next == nil {
			c.next = &countsGroup{done: make(chan struct{})}
		}
		g = c.next
	}
	i := len(g.queries)
	g.queries = append(g.queries, UnreadQuery{UserID: userID, RoomIDs: roomIDs})
	g.receiptPos = max(g.receiptPos, receiptPos)
	c.mu.Unlock()
	if lead {
		// The read outlives this request if it ends: others may join
		// the groups read after it.
		c.read(context.WithoutCancel(ctx), g)
	}
	select {
	case <-g.done:
	case <-ctx.Done():
		return nil, 0, ctx.Err()
	}
	if g.err != nil {
		return nil, 0, g.err
	}
	return g.out[i], g.counted, nil
}

// read answers g, then starts the read of the group that collected
// meanwhile, if any, on its own goroutine (so g's members are not kept
// waiting for it).
func (c *countsBatcher) read(ctx context.Context, g *countsGroup) {
	g.out, g.counted, g.err = c.push.UnreadCountsOfUsers(ctx, g.queries, g.receiptPos)
	if g.err == nil && len(g.out) != len(g.queries) {
		g.err = errCountsAnswer
	}
	close(g.done)
	c.mu.Lock()
	next := c.next
	c.next = nil
	c.running = next != nil
	c.mu.Unlock()
	if next != nil {
		go c.read(ctx, next)
	}
}

// errCountsAnswer: a PushBatch answered a different number of queries
// than it was asked.
var errCountsAnswer = errors.New("sync: unread counts: one answer per query expected")
