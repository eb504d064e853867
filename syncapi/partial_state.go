package syncapi

import (
	"context"

	"github.com/myelin-chat/myelin/roomserver"
)

// partialState reads, for a sync that does not lazy-load members, which
// joined rooms have partial state (a partial-state join whose resync is
// not done: such a sync leaves them out, since it could not list their
// members) and the stream position at which the others' resync finished
// (a sync from an older token gets those rooms in full, as if newly
// joined). A lazy-loading sync gets partial-state rooms like any other.
// Spec: MSC3706 ("faster joins"), as Synapse and Complement's msc3902
// tests expect.
func (b *roomBuilder) partialState(ctx context.Context, memberships []roomserver.MembershipEntry) (partial map[string]bool, resynced map[string]int64, err error) {
	if b.lazy() {
		return nil, nil, nil
	}
	var joined []string
	for _, m := range memberships {
		if m.Membership == "join" {
			joined = append(joined, m.RoomID)
		}
	}
	return b.s.rooms.PartialStateOf(ctx, joined)
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
