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
	return syncUnread(counts), counted, nil
}

var _ syncapi.PushBatch = syncPush{}

// UnreadCountsOfUsers converts pushserver's counts of several users.
func (p syncPush) UnreadCountsOfUsers(ctx context.Context, queries []syncapi.UnreadQuery, receiptPos int64) ([]map[string]syncapi.RoomUnread, int64, error) {
	users := make([]pushserver.UnreadQuery, len(queries))
	for i, q := range queries {
		users[i] = pushserver.UnreadQuery{UserID: q.UserID, RoomIDs: q.RoomIDs}
	}
	counts, counted, err := p.push.UnreadCountsOfUsers(ctx, users, receiptPos)
	if err != nil {
		return nil, 0, err
	}
	out := make([]map[string]syncapi.RoomUnread, len(counts))
	for i, c := range counts {
		out[i] = syncUnread(c)
	}
	return out, counted, nil
}

// syncUnread is pushserver's counts of one user in sync's types.
func syncUnread(counts map[string]pushserver.RoomCounts) map[string]syncapi.RoomUnread {
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
	return out
}

// CountsPosition is how far the push consumer's counts go.
func (p syncPush) CountsPosition(context.Context) (int64, error) {
	return p.push.CountsPosition(), nil
}

// PushRules is the user's m.push_rules content.
func (p syncPush) PushRules(ctx context.Context, userID string) (json.RawMessage, error) {
	return p.push.RulesContent(ctx, userID)
}
