package clientapi

import (
	"context"
	"encoding/json"
	"net/http"
	"strconv"

	"github.com/go-chi/chi/v5"

	"github.com/myelin-chat/myelin/internal/httpx"
	"github.com/myelin-chat/myelin/internal/mxerr"
	"github.com/myelin-chat/myelin/storage"
)

// ThreadSubscriptionStream is the stream name Deps.Notify hears for
// thread subscription changes (MSC4306).
const ThreadSubscriptionStream = "thread_subscriptions"

// threadSubscriptionLock is the PostgreSQL advisory lock that makes
// thread subscription positions commit in order (see accountDataLock).
const threadSubscriptionLock = 4242106

// Error codes of MSC4306 (unstable prefix).
const (
	notInThread               = mxerr.Code("IO.ELEMENT.MSC4306.M_NOT_IN_THREAD")
	conflictingUnsubscription = mxerr.Code("IO.ELEMENT.MSC4306.M_CONFLICTING_UNSUBSCRIPTION")
)

// ThreadSubscription is one change of a user's subscription to a thread.
type ThreadSubscription struct {
	RoomID, ThreadRoot string
	Subscribed         bool
	// Automatic is set when a client subscribed on the user's behalf.
	Automatic bool
	// Position is the change's stream position (MSC4308's bump_stamp).
	Position int64
}

// threadSubscriptionRoutes registers MSC4306's endpoints.
func (s *Server) threadSubscriptionRoutes(r chi.Router) {
	const p = "/_matrix/client/unstable/io.element.msc4306/rooms/{roomId}/thread/{eventId}/subscription"
	handle(r, http.MethodGet, p, s.getThreadSubscription)
	handle(r, http.MethodPut, p, s.putThreadSubscription)
	handle(r, http.MethodDelete, p, s.deleteThreadSubscription)
	handle(r, http.MethodGet, "/_matrix/client/unstable/io.element.msc4308/thread_subscriptions", s.listThreadSubscriptions)
}

// parseThreadSubsToken reads a thread subscription stream position
// issued as prev_batch or end. A token of another kind (a sliding sync
// pos, which MSC4308 suggests as to) does not name a position of this
// stream and reads as 0: the answer then reaches back further, which is
// harmless because every row is the latest state of its thread.
func parseThreadSubsToken(s string) int64 {
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n < 0 {
		return 0
	}
	return n
}

// listThreadSubscriptions answers MSC4308's companion endpoint: the
// caller's thread subscription changes before from (newest first) and
// after to, with end when more remain.
// Spec: MSC4308, "Companion endpoint for backpaginating thread subscription changes".
func (s *Server) listThreadSubscriptions(w http.ResponseWriter, r *http.Request) error {
	ctx := r.Context()
	v := r.URL.Query()
	if v.Get("dir") != "b" {
		return mxerr.New(mxerr.InvalidParam, "dir must be b")
	}
	limit := 100
	if raw := v.Get("limit"); raw != "" {
		n, err := strconv.Atoi(raw)
		if err != nil || n < 1 {
			return mxerr.New(mxerr.InvalidParam, "limit must be a positive integer")
		}
		limit = min(n, 1000)
	}
	upper, err := s.ThreadSubscriptionsHead(ctx)
	if err != nil {
		return err
	}
	if from := v.Get("from"); from != "" {
		n, err := strconv.ParseInt(from, 10, 64)
		if err != nil || n < 0 {
			return mxerr.New(mxerr.InvalidParam, "from is not a thread subscriptions token")
		}
		// from is the oldest position already sent: read below it.
		upper = min(upper, n-1)
	}
	lower := parseThreadSubsToken(v.Get("to"))
	var subs []ThreadSubscription
	more := false
	if upper > lower {
		if subs, more, err = s.ThreadSubscriptionsBetween(ctx, caller(r).UserID, lower, upper, limit); err != nil {
			return err
		}
	}
	subscribed, unsubscribed := ThreadSubscriptionMaps(subs)
	body := map[string]any{"subscribed": subscribed, "unsubscribed": unsubscribed}
	if more {
		body["end"] = strconv.FormatInt(subs[len(subs)-1].Position, 10)
	}
	return httpx.OK(w, body)
}

// threadTarget reads {roomId}/{eventId} and checks the caller can see the
// thread root. Spec: MSC4306: a thread that does not exist or that the
// user cannot see is 404 M_NOT_FOUND.
func (s *Server) threadTarget(r *http.Request) (roomID, root string, err error) {
	if roomID, root, err = pathRoomEventIDs(r); err != nil {
		return "", "", err
	}
	if _, err := s.visibleEvent(r.Context(), caller(r).UserID, roomID, root); err != nil {
		return "", "", err
	}
	return roomID, root, nil
}

// getThreadSubscription answers GET .../thread/{eventId}/subscription.
// Spec: MSC4306, "Retrieving thread subscription".
func (s *Server) getThreadSubscription(w http.ResponseWriter, r *http.Request) error {
	roomID, root, err := s.threadTarget(r)
	if err != nil {
		return err
	}
	var sub storedThreadSubscription
	found := false
	err = s.db.Read(r.Context(), func(q storage.Querier) error {
		var e error
		sub, found, e = loadThreadSubscription(r.Context(), q, caller(r).UserID, roomID, root)
		return e
	})
	if err != nil {
		return err
	}
	if !found || !sub.Subscribed {
		return mxerr.New(mxerr.NotFound, "not subscribed to this thread")
	}
	return httpx.OK(w, map[string]bool{"automatic": sub.Automatic})
}

// putThreadSubscription answers PUT .../thread/{eventId}/subscription.
// Without automatic the subscription is manual and replaces an automatic
// one. With automatic (the event that made the client subscribe) the
// event must be in the thread, an existing subscription is kept as it
// is, and an unsubscription after that event wins (409).
// Spec: MSC4306, "Subscribing to a thread".
func (s *Server) putThreadSubscription(w http.ResponseWriter, r *http.Request) error {
	ctx := r.Context()
	roomID, root, err := s.threadTarget(r)
	if err != nil {
		return err
	}
	var body struct {
		Automatic json.RawMessage `json:"automatic"`
	}
	if err := httpx.DecodeJSON(r, &body); err != nil {
		return err
	}
	me := caller(r)
	var causePos int64
	automatic := len(body.Automatic) > 0 && string(body.Automatic) != "null"
	if automatic {
		var causeID string
		if json.Unmarshal(body.Automatic, &causeID) != nil || len(causeID) < 2 || causeID[0] != '$' {
			return mxerr.New(mxerr.InvalidParam, "automatic must be the ID of the event that caused the subscription")
		}
		cause, err := s.visibleEvent(ctx, me.UserID, roomID, causeID)
		if err != nil {
			return err
		}
		rel, ok := relationOf(cause)
		if !ok || rel.RelType != "m.thread" || rel.RelatesTo != root {
			return mxerr.New(notInThread, "event %s is not in the thread of %s", causeID, root)
		}
		causePos = cause.StreamPos
	}
	err = s.db.Write(ctx, func(tx storage.Tx) error {
		old, found, err := loadThreadSubscription(ctx, tx, me.UserID, roomID, root)
		if err != nil {
			return err
		}
		unsubscribedAt := int64(0)
		if found {
			unsubscribedAt = old.unsubscribedAt
		}
		if automatic {
			if found && old.Subscribed {
				return nil // already subscribed: an automatic one never downgrades
			}
			if found && causePos <= old.unsubscribedAt {
				return mxerr.New(conflictingUnsubscription,
					"the user unsubscribed from this thread after the event that caused this subscription").WithStatus(http.StatusConflict)
			}
		} else if found && old.Subscribed && !old.Automatic {
			return nil
		}
		return s.writeThreadSubscription(ctx, tx, me.UserID, ThreadSubscription{
			RoomID: roomID, ThreadRoot: root, Subscribed: true, Automatic: automatic}, unsubscribedAt)
	})
	if err != nil {
		return err
	}
	return httpx.OK(w, httpx.EmptyObject)
}

// deleteThreadSubscription answers DELETE .../thread/{eventId}/subscription;
// unsubscribing from a thread one is not subscribed to succeeds.
// Spec: MSC4306, "Unsubscribing from a thread".
func (s *Server) deleteThreadSubscription(w http.ResponseWriter, r *http.Request) error {
	ctx := r.Context()
	roomID, root, err := s.threadTarget(r)
	if err != nil {
		return err
	}
	me := caller(r)
	err = s.db.Write(ctx, func(tx storage.Tx) error {
		old, found, err := loadThreadSubscription(ctx, tx, me.UserID, roomID, root)
		if err != nil || !found || !old.Subscribed {
			return err
		}
		// Every event already in the room is now older than the
		// unsubscription, so none can cause an automatic subscription.
		head, err := s.rooms.rooms.StreamPosition(ctx)
		if err != nil {
			return err
		}
		return s.writeThreadSubscription(ctx, tx, me.UserID, ThreadSubscription{RoomID: roomID, ThreadRoot: root}, head)
	})
	if err != nil {
		return err
	}
	return httpx.OK(w, httpx.EmptyObject)
}

// storedThreadSubscription is a row of thread_subscriptions.
type storedThreadSubscription struct {
	ThreadSubscription
	unsubscribedAt int64
}

func loadThreadSubscription(ctx context.Context, q storage.Querier, userID, roomID, root string) (storedThreadSubscription, bool, error) {
	var sub storedThreadSubscription
	err := q.QueryRow(ctx, `SELECT subscribed, automatic, unsubscribed_at, position FROM thread_subscriptions
		WHERE user_id = $1 AND room_id = $2 AND thread_root = $3`, userID, roomID, root).
		Scan(&sub.Subscribed, &sub.Automatic, &sub.unsubscribedAt, &sub.Position)
	if storage.IsNoRows(err) {
		return sub, false, nil
	}
	sub.RoomID, sub.ThreadRoot = roomID, root
	return sub, err == nil, err
}

// writeThreadSubscription replaces the user's row for the thread with sub
// at a new stream position; the stream is told after commit.
func (s *Server) writeThreadSubscription(ctx context.Context, tx storage.Tx, userID string, sub ThreadSubscription, unsubscribedAt int64) error {
	if s.db.Engine() == storage.Postgres {
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, threadSubscriptionLock); err != nil {
			return err
		}
	}
	if _, err := tx.Exec(ctx, `DELETE FROM thread_subscriptions WHERE user_id = $1 AND room_id = $2 AND thread_root = $3`,
		userID, sub.RoomID, sub.ThreadRoot); err != nil {
		return err
	}
	var pos int64
	if err := tx.QueryRow(ctx, `INSERT INTO thread_subscriptions
		(user_id, room_id, thread_root, subscribed, automatic, unsubscribed_at) VALUES ($1, $2, $3, $4, $5, $6) RETURNING position`,
		userID, sub.RoomID, sub.ThreadRoot, sub.Subscribed, sub.Automatic, unsubscribedAt).Scan(&pos); err != nil {
		return err
	}
	tx.AfterCommit(func() { s.streamAdvanced(ThreadSubscriptionStream, pos) })
	return nil
}

// ThreadSubscribed reports whether userID is subscribed to the thread
// rooted at root in roomID, for push's thread_subscription condition.
func (s *Server) ThreadSubscribed(ctx context.Context, userID, roomID, root string) (bool, error) {
	var sub storedThreadSubscription
	var found bool
	err := s.db.Read(ctx, func(q storage.Querier) error {
		var e error
		sub, found, e = loadThreadSubscription(ctx, q, userID, roomID, root)
		return e
	})
	return found && sub.Subscribed, err
}

// ThreadSubscriptionsHead returns the head of the thread subscription
// stream.
func (s *Server) ThreadSubscriptionsHead(ctx context.Context) (int64, error) {
	var head int64
	err := s.db.Reader().QueryRow(ctx, `SELECT COALESCE(MAX(position), 0) FROM thread_subscriptions`).Scan(&head)
	return head, err
}

// ThreadSubscriptionsBetween returns userID's latest thread subscription
// changes with positions in (from, to], newest first, at most limit of
// them, and whether older ones in the range were left out.
func (s *Server) ThreadSubscriptionsBetween(ctx context.Context, userID string, from, to int64, limit int) ([]ThreadSubscription, bool, error) {
	rows, err := s.db.Reader().Query(ctx, `SELECT room_id, thread_root, subscribed, automatic, position FROM thread_subscriptions
		WHERE user_id = $1 AND position > $2 AND position <= $3 ORDER BY position DESC LIMIT $4`, userID, from, to, limit+1)
	if err != nil {
		return nil, false, err
	}
	defer rows.Close()
	var out []ThreadSubscription
	for rows.Next() {
		var sub ThreadSubscription
		if err := rows.Scan(&sub.RoomID, &sub.ThreadRoot, &sub.Subscribed, &sub.Automatic, &sub.Position); err != nil {
			return nil, false, err
		}
		out = append(out, sub)
	}
	if err := rows.Err(); err != nil {
		return nil, false, err
	}
	more := len(out) > limit
	if more {
		out = out[:limit]
	}
	return out, more, nil
}

// ThreadSubscriptionMaps groups subscription changes into MSC4308's
// subscribed and unsubscribed maps, room ID → thread root → entry.
func ThreadSubscriptionMaps(subs []ThreadSubscription) (subscribed, unsubscribed map[string]map[string]any) {
	subscribed, unsubscribed = map[string]map[string]any{}, map[string]map[string]any{}
	for _, sub := range subs {
		target, entry := unsubscribed, map[string]any{"bump_stamp": sub.Position}
		if sub.Subscribed {
			target = subscribed
			entry["automatic"] = sub.Automatic
		}
		if target[sub.RoomID] == nil {
			target[sub.RoomID] = map[string]any{}
		}
		target[sub.RoomID][sub.ThreadRoot] = entry
	}
	return subscribed, unsubscribed
}
