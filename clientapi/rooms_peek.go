package clientapi

import (
	"context"
	"encoding/json"
	"net/http"
	"slices"
	"strconv"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/myelin-chat/myelin/internal/httpx"
	"github.com/myelin-chat/myelin/internal/mxerr"
	"github.com/myelin-chat/myelin/roomserver"
	"github.com/myelin-chat/myelin/storage"
)

// Room previews ("peeking"): GET /rooms/{roomId}/initialSync snapshots a
// room the caller may read, and GET /events?room_id= then streams the
// room's new events to it, which is how clients (matrix-js-sdk's peek)
// show a world-readable room without joining it. Both are open to
// guests (guest_gate.go).
//
// Spec: client-server-api, "Room previews" and "Guest Access".
//
// Who may see what is the roomserver's: requireReadable lets members,
// former members who have not forgotten the room and anyone in a
// world-readable room in (403 M_FORBIDDEN otherwise, as /messages), and
// every event read here goes through the roomserver's history
// visibility for the caller (Messages, CurrentState, EventsInRange).

const (
	// peekBatch bounds the events one /events answer carries; the next
	// call, from its end, takes the rest.
	peekBatch = 100
	// maxPeekTimeout caps /events' timeout, as /sync's is capped.
	maxPeekTimeout = 5 * time.Minute
)

func (s *Server) peekRoutes(r chi.Router) {
	handle(r, http.MethodGet, "/_matrix/client/v3/rooms/{roomId}/initialSync", s.roomInitialSync)
	if s.rooms.wake != nil {
		handle(r, http.MethodGet, "/_matrix/client/v3/events", s.peekEvents)
	}
}

// roomInitialSync answers with a room's current state and most recent
// messages as the caller may see them. messages.end is a stream token
// ("s<position>") that /events takes as from and /messages as from
// (forwards, for later events); messages.start pages backwards through
// /messages and is left out when there is nothing earlier.
// Spec: client-server-api, "GET /_matrix/client/v3/rooms/{roomId}/initialSync".
func (s *Server) roomInitialSync(w http.ResponseWriter, r *http.Request) error {
	ctx := r.Context()
	roomID, err := pathRoomID(r)
	if err != nil {
		return err
	}
	me := caller(r)
	// 403: "You aren't a member of the room and weren't previously a
	// member of the room" (and it is not world-readable).
	if err := s.requireReadable(ctx, me.UserID, roomID); err != nil {
		return err
	}
	limit, err := pageLimit(r)
	if err != nil {
		return err
	}
	// The head first: the messages end at it and /events continues
	// after it, so no event falls between the two.
	head, err := s.rooms.rooms.StreamPosition(ctx)
	if err != nil {
		return err
	}
	p, err := s.paginate(ctx, me.UserID, roomID, roomserver.StreamToken(head), "", roomserver.Backward, limit, nil)
	if err != nil {
		return err
	}
	slices.Reverse(p.events) // chronological, oldest first
	state, err := s.rooms.rooms.CurrentState(ctx, me.UserID, roomID)
	if err != nil {
		return err
	}
	f := s.formatter(me.UserID, me.DeviceID)
	chunk, err := f.many(ctx, p.events)
	if err != nil {
		return err
	}
	stateOut, err := f.many(ctx, state)
	if err != nil {
		return err
	}
	messages := map[string]any{"chunk": chunk, "end": roomserver.StreamToken(head)}
	if p.end != "" {
		messages["start"] = p.end
	}
	published, err := s.isPublished(ctx, roomID)
	if err != nil {
		return err
	}
	visibility := "private"
	if published {
		visibility = "public"
	}
	accountData, err := s.roomAccountData(ctx, me.UserID, roomID)
	if err != nil {
		return err
	}
	body := map[string]any{
		"room_id":      roomID,
		"messages":     messages,
		"state":        stateOut,
		"visibility":   visibility,
		"account_data": accountData,
	}
	membership, err := s.rooms.rooms.Membership(ctx, roomID, me.UserID)
	if err != nil {
		return err
	}
	// The schema's enum: invite, join, leave, ban (a knock is left out).
	switch membership {
	case "invite", "join", "leave", "ban":
		body["membership"] = membership
	}
	return httpx.OK(w, body)
}

// roomAccountData returns userID's account data for roomID as events
// ({"type", "content"}); entries deleted (MSC3391) are left out.
func (s *Server) roomAccountData(ctx context.Context, userID, roomID string) ([]map[string]any, error) {
	out := []map[string]any{}
	local := s.localpart(userID)
	if local == "" {
		return out, nil
	}
	err := s.db.Read(ctx, func(q storage.Querier) error {
		out = out[:0]
		rows, err := q.Query(ctx, `SELECT type, content FROM account_data
			WHERE localpart = $1 AND room_id = $2 ORDER BY type`, local, roomID)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var typ, content string
			if err := rows.Scan(&typ, &content); err != nil {
				return err
			}
			if isDeletedAccountData(json.RawMessage(content)) {
				continue
			}
			out = append(out, map[string]any{"type": typ, "content": json.RawMessage(content)})
		}
		return rows.Err()
	})
	return out, err
}

// peekEvents waits for events of one room after from and returns them:
// chunk (in stream order, as the caller may see them), start (from) and
// end (the token to pass as from next). It answers at once when there
// are events, else when one arrives (woken like /sync by the room
// stream's notifications) or the timeout ends, then with an empty chunk.
// A missing from means now. Without room_id (the deprecated global event
// stream, not served) it answers 400 M_MISSING_PARAM.
// Spec: client-server-api, "GET /_matrix/client/v3/events" (peeking):
// room_id is required; 400 for a bad from.
func (s *Server) peekEvents(w http.ResponseWriter, r *http.Request) error {
	ctx := r.Context()
	q := r.URL.Query()
	roomID := q.Get("room_id")
	if roomID == "" {
		return mxerr.New(mxerr.MissingParam, "room_id is required")
	}
	if !validRoomID(roomID) {
		return mxerr.New(mxerr.InvalidParam, "%q is not a valid room ID", roomID)
	}
	me := caller(r)
	// Access first, as /messages: a caller who may not read the room
	// learns nothing from parameter errors.
	if err := s.requireReadable(ctx, me.UserID, roomID); err != nil {
		return err
	}
	var timeout time.Duration
	if v := q.Get("timeout"); v != "" {
		ms, err := strconv.ParseInt(v, 10, 64)
		if err != nil || ms < 0 {
			return mxerr.New(mxerr.InvalidParam, "timeout must be a non-negative integer")
		}
		timeout = time.Duration(min(ms, maxPeekTimeout.Milliseconds())) * time.Millisecond
	}
	head, err := s.rooms.rooms.StreamPosition(ctx)
	if err != nil {
		return err
	}
	pos := head
	if v := q.Get("from"); v != "" {
		// A token of initialSync's messages.end, of an earlier /events
		// answer, or a /sync next_batch (whose room position leads).
		// Past the head it names nothing yet written.
		from, ok := syncTokenRoomPos(v)
		if !ok || from > head {
			return mxerr.New(mxerr.InvalidParam, "from is not a valid event stream token")
		}
		pos = from
	}
	start := roomserver.StreamToken(pos)
	var deadline <-chan time.Time
	if timeout > 0 {
		timer := time.NewTimer(timeout)
		defer timer.Stop()
		deadline = timer.C
	}
	answer := func(evs []*roomserver.Event) error {
		chunk, err := s.formatter(me.UserID, me.DeviceID).many(ctx, evs)
		if err != nil {
			return err
		}
		return httpx.OK(w, map[string]any{"chunk": chunk, "start": start, "end": roomserver.StreamToken(pos)})
	}
	for {
		// Take the channel before reading, so a notification between
		// the read and the wait is not missed (notifier.Broadcaster).
		changed := s.rooms.wake.Changed()
		if head, err = s.rooms.rooms.StreamPosition(ctx); err != nil {
			return err
		}
		if head > pos {
			got, err := s.rooms.rooms.EventsInRange(ctx, roomserver.RangeRequest{
				UserID: me.UserID, RoomIDs: []string{roomID}, From: pos, To: head, Limit: peekBatch,
			})
			if err != nil {
				return err
			}
			pos = got.End
			if len(got.Events) > 0 {
				return answer(got.Events)
			}
			if pos < head {
				continue // a full batch the caller may not see: read on
			}
		}
		if deadline == nil {
			return answer(nil)
		}
		select {
		case <-changed:
		case <-deadline:
			return answer(nil)
		case <-ctx.Done():
			// The client left (or the server stops): an empty answer,
			// not an error to log.
			return answer(nil)
		}
	}
}
