package homeserver

import (
	"context"
	"encoding/json"

	"github.com/myelin-chat/myelin/pushserver"
	"github.com/myelin-chat/myelin/syncapi"
)

// syncPush is sync's view of the push component: unread counts in
// sync's types and the user's rendered push rules.
type syncPush struct {
	push *pushserver.Server
}

var _ syncapi.Push = syncPush{}

// UnreadCounts converts pushserver's counts.
func (p syncPush) UnreadCounts(ctx context.Context, userID string, roomIDs []string, roomPos, receiptPos int64) (map[string]syncapi.RoomUnread, int64, error) {
	counts, counted, err := p.push.UnreadCountsAt(ctx, userID, roomIDs, roomPos, receiptPos)
	if err != nil {
		return nil, 0, err
	}
	conv := func(c pushserver.Counts) syncapi.UnreadCounts {
		return syncapi.UnreadCounts{Notifications: c.Notifications, Highlights: c.Highlights}
	}
	out := make(map[string]syncapi.RoomUnread, len(counts))
	for roomID, c := range counts {
		ru := syncapi.RoomUnread{Total: conv(c.Total), Main: conv(c.Main)}
		if len(c.Threads) > 0 {
			ru.Threads = make(map[string]syncapi.UnreadCounts, len(c.Threads))
			for root, tc := range c.Threads {
				ru.Threads[root] = conv(tc)
			}
		}
		out[roomID] = ru
	}
	return out, counted, nil
}

// CountsPosition is how far the push consumer's counts go.
func (p syncPush) CountsPosition(context.Context) (int64, error) {
	return p.push.CountsPosition(), nil
}

// PushRules is the user's m.push_rules content.
func (p syncPush) PushRules(ctx context.Context, userID string) (json.RawMessage, error) {
	return p.push.RulesContent(ctx, userID)
}
