package syncapi

import (
	"context"
	"strconv"

	"github.com/myelin-chat/myelin/clientapi"
)

// threadSubscriptionsExt is the MSC4308 extension's name (unstable prefix).
const threadSubscriptionsExt = "io.element.msc4308.thread_subscriptions"

// Limits of the thread subscriptions extension: MSC4308 defaults to 100
// and lets servers lower what is asked.
const (
	defaultThreadSubsLimit = 100
	maxThreadSubsLimit     = 1000
)

// threadSubscriptionsExtension fills MSC4308's extension: the latest
// change of each thread subscription since the connection's last pos
// (all of them on a new connection), newest first up to limit, with
// prev_batch when older changes were left out. Each subscription's
// bump_stamp is its stream position. It records the position sent in
// next.
// Spec: MSC4308, "Sliding Sync extension".
func (s *Server) threadSubscriptionsExtension(ctx context.Context, userID string, req *slidingRequest, prev, next *connState, resp *slidingResponse) error {
	next.threadSubs = prev.threadSubs
	if s.threads == nil {
		return nil
	}
	head, err := s.threads.ThreadSubscriptionsHead(ctx)
	if err != nil {
		return err
	}
	next.threadSubs = head
	if !enabled(req, threadSubscriptionsExt) {
		return nil
	}
	limit := defaultThreadSubsLimit
	if l := req.Extensions[threadSubscriptionsExt].Limit; l != nil && *l > 0 {
		limit = min(*l, maxThreadSubsLimit)
	}
	ext := map[string]any{}
	resp.Extensions[threadSubscriptionsExt] = ext
	if head <= prev.threadSubs {
		return nil
	}
	subs, more, err := s.threads.ThreadSubscriptionsBetween(ctx, userID, prev.threadSubs, head, limit)
	if err != nil {
		return err
	}
	subscribed, unsubscribed := clientapi.ThreadSubscriptionMaps(subs)
	if len(subscribed) > 0 {
		ext["subscribed"] = subscribed
	}
	if len(unsubscribed) > 0 {
		ext["unsubscribed"] = unsubscribed
	}
	if more && len(subs) > 0 {
		ext["prev_batch"] = strconv.FormatInt(subs[len(subs)-1].Position, 10)
	}
	return nil
}
