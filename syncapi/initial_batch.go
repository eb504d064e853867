package syncapi

import (
	"context"
	"encoding/json"
	"maps"

	"github.com/myelin-chat/myelin/roomserver"
)

// initialReads holds what a sync that sends its joined rooms whole
// (initial sync, full_state) read for all of them at once, so building
// each room costs no query of its own (issue #6: an initial sync of 500
// rooms made several queries per room). Every field answers exactly what
// the per-room read in joined and timeline answers for each room; the
// test TestInitialSyncBatchedMatchesPerRoom compares the two paths'
// responses byte for byte. Filled by prefetchInitial, read-only after.
type initialReads struct {
	state     map[string][]*roomserver.Event // IndexedCurrentState(room, nil, lazy)
	summaries map[string]*roomserver.MemberSummary
	// recent is each room's RecentEvents in (0, heads.Room], limit 0
	// already turned into emptyTimeline; events its timeline keeps, after
	// the filter and ignored senders. memberships (unsigned.membership,
	// the caller's membership after each event) comes with recent.
	recent  map[string]*roomserver.RecentResponse
	events  map[string][]*roomserver.Event
	members map[string][]*roomserver.Event // lazyMemberEvents(room), when lazy
	// The formatter's maps for every room's timeline events: keyed by
	// event ID, so one room's entries never touch another's events.
	txnIDs      map[string]string
	memberships map[string]string
	prevStates  map[string]*roomserver.PrevState
	relations   map[string]json.RawMessage
}

// timelineSplitRooms is how many rooms one of an initial sync's
// concurrent timeline reads covers: past it the reads are split, so 500
// rooms are read as two parts on a machine with two cores.
const timelineSplitRooms = 250

// batchedJoinedRooms lists the rooms build will send whole through
// joined: the joined, allowed, not forgotten and not partial-state
// rooms of a sync that sends rooms whole.
func (b *roomBuilder) batchedJoinedRooms(memberships []roomserver.MembershipEntry, partial map[string]bool) []string {
	var rooms []string
	for _, m := range memberships {
		if m.Membership != "join" || !roomAllowed(b.req.filter, m.RoomID) || partial[m.RoomID] {
			continue
		}
		if m.Forgotten && (b.req.since == nil || m.StreamPos <= b.since.Room || b.req.fullState) {
			continue // as build: a forgotten room is left out
		}
		rooms = append(rooms, m.RoomID)
	}
	return rooms
}

// prefetchInitial reads, for all of rooms at once, what joined and
// timeline read per room when the room is sent whole: current state,
// timeline, member summary; then, for all the timelines' events, the
// transaction IDs, memberships, replaced states, bundled aggregations
// and (lazy loading) the senders' member events. Independent reads run
// concurrently.
func (b *roomBuilder) prefetchInitial(ctx context.Context, rooms []string) error {
	if len(rooms) == 0 {
		return nil
	}
	ir := &initialReads{}
	lazy := b.lazy()
	limit := b.timelineLimit()
	var read map[string]string // memberships after every event read
	var first concurrently
	first.do(func(ctx context.Context) (err error) {
		ir.state, err = b.s.rooms.CurrentStateOfRooms(ctx, rooms, lazy)
		return err
	})
	// The timelines are the longest of these reads (the event rows and
	// a visibility check each): split in parts read at the same time,
	// a large sync keeps both cores busy instead of waiting on one.
	split := b.s.timelineSplit
	if split <= 0 {
		split = timelineSplitRooms
	}
	var parts [][]string
	for start := 0; start < len(rooms); start += split {
		parts = append(parts, rooms[start:min(start+split, len(rooms))])
	}
	recents := make([]*roomserver.RecentRooms, len(parts))
	for i, part := range parts {
		first.do(func(ctx context.Context) (err error) {
			recents[i], err = b.s.rooms.RecentEventsOfRooms(ctx, roomserver.RecentRoomsRequest{
				UserID: b.req.userID, RoomIDs: part, From: 0, To: b.heads.Room, Limit: max(limit, 1)})
			return err
		})
	}
	first.do(func(ctx context.Context) (err error) {
		ir.summaries, err = b.s.rooms.RoomMemberSummaries(ctx, rooms)
		return err
	})
	if b.s.aggs != nil && !b.fmt.federation {
		// The first sync after a burst of sends finds the relations
		// index behind by every message: its catch-up (read below by
		// BundledAggregations) runs now, beside the other reads.
		first.do(b.s.aggs.CatchUpAggregations)
	}
	if err := first.wait(ctx); err != nil {
		return err
	}
	// The parts cover disjoint rooms, and so disjoint events.
	ir.recent, read = recents[0].Rooms, recents[0].Memberships
	for _, r := range recents[1:] {
		maps.Copy(ir.recent, r.Rooms)
		maps.Copy(read, r.Memberships)
	}
	ir.events = make(map[string][]*roomserver.Event, len(rooms))
	ownRoom := map[string]string{} // the user's own events -> room
	// As timeline: unsigned.membership for the events the timelines
	// keep, and only those (an event a filter or a limit of 0 drops may
	// be in the state section, which then carries no membership).
	ir.memberships = map[string]string{}
	var stateIDs []string
	var limitedEvents []*roomserver.Event
	wantMembers := map[string][]string{}
	for _, roomID := range rooms {
		rr := ir.recent[roomID]
		if limit == 0 {
			rr = emptyTimeline(rr)
			ir.recent[roomID] = rr
		}
		evs := b.withoutIgnored(filterEvents(b.roomFilter().Timeline, rr.Events))
		ir.events[roomID] = evs
		for _, e := range evs {
			if e.Sender == b.req.userID {
				ownRoom[e.EventID] = roomID
			}
			if m, ok := read[e.EventID]; ok {
				ir.memberships[e.EventID] = m
			}
			if e.StateKey != nil {
				stateIDs = append(stateIDs, e.EventID)
			}
		}
		if rr.Limited && len(evs) > 0 {
			limitedEvents = append(limitedEvents, evs...)
		}
		if lazy {
			wantMembers[roomID] = lazyMemberKeys(b.req.userID, evs)
		}
	}
	var second concurrently
	if len(ownRoom) > 0 {
		second.do(func(ctx context.Context) (err error) {
			ir.txnIDs, err = b.s.rooms.TxnIDsOfEvents(ctx, b.req.userID, b.req.deviceID, ownRoom)
			return err
		})
	}
	if len(stateIDs) > 0 {
		// Spec: unsigned.prev_content of the timeline's state events.
		second.do(func(ctx context.Context) (err error) {
			ir.prevStates, err = b.s.rooms.PrevStates(ctx, stateIDs)
			return err
		})
	}
	// As timeline: a limited timeline's events carry their bundled
	// aggregations. Spec: client-server-api, "Aggregations of child
	// events".
	if len(limitedEvents) > 0 && b.s.aggs != nil && !b.fmt.federation {
		second.do(func(ctx context.Context) (err error) {
			ir.relations, err = b.s.aggs.BundledAggregations(ctx, b.req.userID, b.req.deviceID, limitedEvents)
			return err
		})
	}
	if lazy {
		second.do(func(ctx context.Context) (err error) {
			ir.members, err = b.s.rooms.MemberEventsOfRooms(ctx, wantMembers)
			if err != nil {
				return err
			}
			for _, roomID := range rooms {
				if ir.members[roomID], err = b.membersFromAuth(ctx, ir.members[roomID], ir.events[roomID]); err != nil {
					return err
				}
			}
			return nil
		})
	}
	if err := second.wait(ctx); err != nil {
		return err
	}
	b.batch = ir
	return nil
}

// lazyMemberKeys are the member state keys lazyMemberEvents reads: the
// user's own and the timeline's senders', in that order.
func lazyMemberKeys(userID string, tl []*roomserver.Event) []string {
	want := []string{userID}
	for _, e := range tl {
		if !contains(want, e.Sender) {
			want = append(want, e.Sender)
		}
	}
	return want
}

// batchedTimeline is timeline for a room prefetchInitial read.
func (b *roomBuilder) batchedTimeline(roomID string) (timeline, []*roomserver.Event) {
	ir := b.batch
	b.fmt.txnIDs, b.fmt.memberships, b.fmt.prevStates, b.fmt.relations = ir.txnIDs, ir.memberships, ir.prevStates, ir.relations
	rr, evs := ir.recent[roomID], ir.events[roomID]
	return timeline{Events: nonNil(b.fmt.formatAll(evs)), Limited: rr.Limited, PrevBatch: rr.PrevBatch,
		marshalled: b.fmt.marshalled()}, evs
}
