package syncapi

import (
	"context"
	"sync"
	"time"

	"github.com/myelin-chat/myelin/roomserver"
)

// maxPartialWait bounds how long a sync that does not lazy-load members
// waits for a partial-state room's resync before leaving the room out.
const maxPartialWait = time.Second

// partialState reads, for a sync that does not lazy-load members, which
// joined rooms have partial state (a partial-state join whose resync is
// not done: such a sync cannot list their members, so it leaves them
// out) and which are to be sent whole, as if newly joined: those whose
// resync finished after the sync's token, or during this request (it
// waits up to its timeout, at most maxPartialWait, for them). A
// lazy-loading sync gets partial-state rooms like any other.
// Spec: MSC3706 ("faster joins"), as Synapse and Complement's msc3902
// tests expect.
func (b *roomBuilder) partialState(ctx context.Context, memberships []roomserver.MembershipEntry) (partial, whole map[string]bool, err error) {
	if b.lazy() {
		return nil, nil, nil
	}
	var joined []string
	for _, m := range memberships {
		if m.Membership == "join" {
			joined = append(joined, m.RoomID)
		}
	}
	partial, done, err := b.s.rooms.PartialStateOf(ctx, joined)
	if err != nil {
		return nil, nil, err
	}
	whole = map[string]bool{}
	if b.req.since != nil {
		for roomID, pos := range done {
			if pos > b.since.Room {
				whole[roomID] = true
			}
		}
	}
	if len(partial) == 0 {
		return partial, whole, nil
	}
	waitCtx, cancel := context.WithTimeout(ctx, min(b.req.timeout, maxPartialWait))
	defer cancel()
	for roomID := range partial {
		if b.s.rooms.AwaitFullState(waitCtx, roomID) == nil {
			delete(partial, roomID)
			whole[roomID] = true
		}
	}
	return partial, whole, ctx.Err()
}

// membersFromAuth adds to members, for timeline senders the room's
// current state has no membership for (a partial-state room lacks most),
// the sender's membership among its event's auth events, so lazy-loading
// still describes every sender.
func (b *roomBuilder) membersFromAuth(ctx context.Context, members, tl []*roomserver.Event) ([]*roomserver.Event, error) {
	known := map[string]bool{}
	for _, m := range members {
		known[stateKeyOf(m)] = true
	}
	var lacking []string
	for _, e := range tl {
		if !known[e.Sender] {
			known[e.Sender] = true
			lacking = append(lacking, e.EventID)
		}
	}
	if len(lacking) == 0 {
		return members, nil
	}
	extra, err := b.s.rooms.SenderMembershipsFromAuth(ctx, lacking)
	if err != nil {
		return nil, err
	}
	return append(members, extra...), nil
}

// awaitResyncs returns a channel closed when a partial-state room among
// roomIDs finishes its resync (nil when there is none, or the sync
// lazy-loads members): a waiting sync that left such a room out must
// answer then, even if the resync brought no new timeline event to wake
// it. It stops with ctx.
func (s *Server) awaitResyncs(ctx context.Context, req *syncRequest, roomIDs []string) <-chan struct{} {
	if req.filter != nil && req.filter.Room != nil && req.filter.Room.State != nil && req.filter.Room.State.LazyLoadMembers {
		return nil
	}
	partial, _, err := s.rooms.PartialStateOf(ctx, roomIDs)
	if err != nil || len(partial) == 0 {
		return nil
	}
	done := make(chan struct{})
	var once sync.Once
	for roomID := range partial {
		go func() {
			if s.rooms.AwaitFullState(ctx, roomID) == nil {
				once.Do(func() { close(done) })
			}
		}()
	}
	return done
}
