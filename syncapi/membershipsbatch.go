package syncapi

import (
	"context"

	"github.com/myelin-chat/myelin/roomserver"
)

// membershipsBatcher shares the memberships reads of /sync requests made
// at the same time. Every long poll reads its user's memberships to
// register with the waker (syncWait), and the L listeners woken by one
// message all come back for their next long poll within milliseconds:
// L reads of one index, nearly all of their cost that of a read as such
// (~8 % of a woken response's CPU at 200 listeners: docs/benchmarks.md,
// "Fan-out delivery, part 6"). So they are grouped as the key counts
// are (keyCountsBatcher): while one read runs, the requests that arrive
// join the next group, which one read of all their users answers when
// the first is done.
//
// Why it is exact: a request joins only a group whose read has not
// started, so the read it gets begins after it asked, as fresh as the
// request's own read would have been at that moment; RoomsGrouped
// answers each user as UserMemberships does.
//
// The grouping is groupedReads': one group at a time for all users.
type membershipsBatcher struct {
	rooms Rooms
	batch RoomsGrouped
	// memo keeps what every read answers (membershipmemo.go).
	memo  *membershipMemo
	reads groupedReads[struct{}, membershipUsers, map[string][]roomserver.MembershipEntry]
}

// membershipUsers is the users of a group, each once.
type membershipUsers struct {
	ids    []string
	wanted map[string]bool
}

// maxMembershipsGroup bounds the users of one grouped read; a request
// that finds the next group full reads alone.
const maxMembershipsGroup = 500

// memberships is Rooms.UserMemberships(ctx, userID), read together with
// the requests that ask at the same time. The list is the caller's own.
func (c *membershipsBatcher) memberships(ctx context.Context, userID string) ([]roomserver.MembershipEntry, error) {
	g, lead := c.reads.join(struct{}{}, func(g *membershipUsers) bool {
		if g.wanted[userID] {
			return true
		}
		if len(g.ids) >= maxMembershipsGroup {
			return false
		}
		if g.wanted == nil {
			g.wanted = map[string]bool{}
		}
		g.wanted[userID] = true
		g.ids = append(g.ids, userID)
		return true
	})
	if lead {
		// Nothing is being read: this request reads at once, alone,
		// and later ones queue behind it.
		out, err := readMemberships(ctx, c.rooms, c.memo, userID)
		c.reads.finish(context.WithoutCancel(ctx), struct{}{}, c.read)
		return out, err
	}
	if g == nil {
		return readMemberships(ctx, c.rooms, c.memo, userID)
	}
	all, err := c.reads.wait(ctx, g)
	if err != nil {
		return nil, err
	}
	// A user asked twice in one group gets the same entries twice:
	// each caller its own copy.
	return append([]roomserver.MembershipEntry(nil), all[userID]...), nil
}

// read answers a group's users.
func (c *membershipsBatcher) read(ctx context.Context, _ struct{}, g *membershipUsers) (map[string][]roomserver.MembershipEntry, error) {
	t := c.memo.begin()
	all, err := c.batch.UserMembershipsOfUsers(ctx, g.ids)
	if err == nil {
		// Its callers get copies (memberships): the lists are not
		// changed after.
		c.memo.put(t, g.ids, all)
	}
	return all, err
}
