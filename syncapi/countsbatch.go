package syncapi

import (
	"context"
	"errors"
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
// The grouping is groupedReads': one group at a time for all users;
// the first request of a wake gathers the others before it reads
// (joinGathering).
type countsBatcher struct {
	push  PushBatch
	reads groupedReads[struct{}, countsQueries, countsAnswer]
}

// countsQueries is the requests one read answers.
type countsQueries struct {
	queries    []UnreadQuery
	receiptPos int64
}

// countsAnswer is one read's answer: one map per query, in order.
type countsAnswer struct {
	out     []map[string]RoomUnread
	counted int64
}

// unreadCounts is Push.UnreadCounts(ctx, userID, roomIDs, 0, receiptPos),
// read together with the requests that ask at the same time.
func (c *countsBatcher) unreadCounts(ctx context.Context, userID string, roomIDs []string, receiptPos int64) (map[string]RoomUnread, int64, error) {
	q := UnreadQuery{UserID: userID, RoomIDs: roomIDs}
	var i int
	g, lead := c.reads.joinGathering(struct{}{}, func(g *countsQueries) bool {
		i = len(g.queries)
		g.queries = append(g.queries, q)
		g.receiptPos = max(g.receiptPos, receiptPos)
		return true
	})
	if lead && g != nil {
		// The requests woken with this one joined its group: this
		// request reads it for all of them (its own query is the first).
		c.reads.readLed(context.WithoutCancel(ctx), struct{}{}, g, c.read)
	} else if lead {
		// Nothing is being read: this request reads at once, alone.
		// The read outlives this request if it ends: others may join
		// the groups read after it.
		ctx = context.WithoutCancel(ctx)
		a, err := c.read(ctx, struct{}{}, &countsQueries{queries: []UnreadQuery{q}, receiptPos: receiptPos})
		c.reads.finish(ctx, struct{}{}, c.read)
		if err != nil {
			return nil, 0, err
		}
		return a.out[0], a.counted, nil
	}
	a, err := c.reads.wait(ctx, g)
	if err != nil {
		return nil, 0, err
	}
	return a.out[i], a.counted, nil
}

// read answers the queries of a group.
func (c *countsBatcher) read(ctx context.Context, _ struct{}, g *countsQueries) (countsAnswer, error) {
	out, counted, err := c.push.UnreadCountsOfUsers(ctx, g.queries, g.receiptPos)
	if err == nil && len(out) != len(g.queries) {
		err = errCountsAnswer
	}
	if err != nil {
		return countsAnswer{}, err
	}
	return countsAnswer{out: out, counted: counted}, nil
}

// errCountsAnswer: a PushBatch answered a different number of queries
// than it was asked.
var errCountsAnswer = errors.New("sync: unread counts: one answer per query expected")
