package syncapi

import (
	"context"
	"errors"

	"github.com/myelin-chat/myelin/roomserver"
)

// RoomsGrouped is optional on a Rooms (*roomserver.Server): reads of
// several users in one. RecentEventsOfUsers answers out[i] as
// RecentEvents answers the request of req.Users[i], with that user's
// MembershipsAt of the events (timelineBatcher); UserMembershipsOfUsers
// answers each user as UserMemberships does (membershipsBatcher).
type RoomsGrouped interface {
	RecentEventsOfUsers(ctx context.Context, req roomserver.RecentUsersRequest) ([]*roomserver.RecentOfUser, error)
	UserMembershipsOfUsers(ctx context.Context, userIDs []string) (map[string][]roomserver.MembershipEntry, error)
}

// timelineBatcher shares the timeline reads of /sync requests that ask
// for the same room's same window at the same time. One message to a
// room of L members wakes L long polls; each reads the room's events in
// (its token, the head] and its user's membership at each of them (two
// roomserver reads, ~20 % of a woken response's CPU at 200 listeners:
// docs/benchmarks.md, "Fan-out delivery, part 6"). Their rows are the
// same; only what each user may see of them (history visibility) and
// its membership at them differ, and RoomsGrouped computes those per
// user from one read of the rows.
//
// Why it is exact: a request joins only a group whose read has not
// started and whose window ends where its own does (to, the room head
// its memberships are exact at), so the read it gets begins after it
// asked, over the rows its own read would have found (RoomsGrouped
// keeps each request's own from and limit); the visibility walk is its
// user's own. A request whose window ends elsewhere reads alone.
//
// The first request of a room gathers the requests woken with it
// (joinGathering); if none joined, it reads alone through RecentEvents
// and MembershipsAt, the reads every other sync makes; only grouped
// requests are answered by RecentEventsOfUsers.
//
// The grouping is groupedReads', by room.
type timelineBatcher struct {
	rooms Rooms
	batch RoomsGrouped
	reads groupedReads[string, timelineGroup, []*roomserver.RecentOfUser]
}

// timelineGroup is the requests of one room's grouped read: one end of
// the window, one entry per request.
type timelineGroup struct {
	to    int64
	users []roomserver.RecentUser
}

// maxTimelineGroup bounds the requests of one grouped read; a request
// that finds the next group full reads alone.
const maxTimelineGroup = 500

// recent is RecentEvents(req), read together with the requests that ask
// for the same room and window at the same time. A request answered by
// a grouped read also gets its user's MembershipsAt of the events shown
// picks (memberships: shown is called during the group's read, on
// another goroutine, and must only read); one that read alone gets nil
// and reads them itself.
func (c *timelineBatcher) recent(ctx context.Context, req roomserver.RecentRequest, shown func(*roomserver.Event) bool) (rr *roomserver.RecentResponse, memberships map[string]string, err error) {
	u := roomserver.RecentUser{UserID: req.UserID, From: req.From, Limit: req.Limit, JoinedAtTo: req.JoinedAtTo, Shown: shown}
	var i int
	g, lead := c.reads.joinGathering(req.RoomID, func(g *timelineGroup) bool {
		if len(g.users) == 0 {
			g.to = req.To
		} else if g.to != req.To || len(g.users) >= maxTimelineGroup {
			return false
		}
		i = len(g.users)
		g.users = append(g.users, u)
		return true
	})
	if lead && g != nil {
		// The requests woken with this one joined its group: this
		// request reads it for all of them (its own is the first).
		c.reads.readLed(context.WithoutCancel(ctx), req.RoomID, g, c.read)
	} else if lead {
		// Nothing of this room is being read and nobody joined: this
		// request reads alone, and later ones queue behind it. Its read
		// outlives it if it ends: the groups after it are read next.
		rr, err = c.rooms.RecentEvents(ctx, req)
		c.reads.finish(context.WithoutCancel(ctx), req.RoomID, c.read)
		return rr, nil, err
	}
	if g == nil {
		rr, err = c.rooms.RecentEvents(ctx, req)
		return rr, nil, err
	}
	out, err := c.reads.wait(ctx, g)
	if err != nil {
		return nil, nil, err
	}
	return &out[i].RecentResponse, out[i].Memberships, nil
}

// read answers a room's group, one answer per request in order.
func (c *timelineBatcher) read(ctx context.Context, roomID string, g *timelineGroup) ([]*roomserver.RecentOfUser, error) {
	out, err := c.batch.RecentEventsOfUsers(ctx, roomserver.RecentUsersRequest{RoomID: roomID, To: g.to, Users: g.users})
	if err == nil && len(out) != len(g.users) {
		err = errTimelineAnswer
	}
	if err != nil {
		return nil, err
	}
	return out, nil
}

// errTimelineAnswer: a RoomsGrouped answered a different number of users
// than it was asked.
var errTimelineAnswer = errors.New("sync: timeline: one answer per user expected")
