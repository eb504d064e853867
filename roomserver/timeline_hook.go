package roomserver

import (
	"context"

	"github.com/myelin-chat/myelin/storage"
)

// TimelineEvent is a new event entering a room's timeline, as handed to
// a TimelineHook inside the transaction that writes it.
type TimelineEvent struct {
	// Event is the event; its StreamPos is final.
	Event *Event
	// StateNID names the room's current state just before the event: a
	// state snapshot, immutable once committed (the same NID in the same
	// room is always the same state). It may name a snapshot written by
	// this very transaction, so it identifies that state only once the
	// transaction has committed.
	StateNID int64
	// State reads that state (only the given types; none given: all)
	// inside the transaction. Valid only during the hook call.
	State func(ctx context.Context, types []string) ([]*Event, error)
}

// TimelineHook is called inside the write transaction of every accepted
// event that enters a room's timeline as it is persisted: events sent
// here, events received over federation (transactions, joins, missing
// events filling a gap), including an event held as an outlier that now
// arrives as the room's newest. Not for outliers, rejected or
// soft-failed events, an outlier placed behind later timeline events
// (commitFollowed), nor backfilled events: history, not news. Whatever it writes
// with tx commits or rolls back with the event; an error fails the
// event's write. afterNotify, when not nil, runs after the commit, right
// after the room stream is notified of the event.
type TimelineHook func(ctx context.Context, tx storage.Tx, ev TimelineEvent) (afterNotify func(), err error)

// runTimelineHook calls the hook, when there is one, for the event
// loaded, which commit has just written to room (whose current state is
// still the one before the event).
func (s *Server) runTimelineHook(ctx context.Context, tx storage.Tx, room *roomRow, loaded *loadedEvent) (func(), error) {
	if s.onTimeline == nil {
		return nil, nil
	}
	roomID, version := room.RoomID, room.Version
	return s.onTimeline(ctx, tx, TimelineEvent{
		Event:    toEvent(loaded),
		StateNID: room.CurrentSnapshot,
		State: func(ctx context.Context, types []string) ([]*Event, error) {
			return s.currentStateInTx(ctx, tx, roomID, version, types)
		},
	})
}

// currentStateInTx reads roomID's current state events of the given
// types (none: all) as tx sees it.
func (s *Server) currentStateInTx(ctx context.Context, tx storage.Tx, roomID, version string, types []string) ([]*Event, error) {
	query, args := `SELECT event_nid FROM roomserver_current_state WHERE room_id = $1`, []any{roomID}
	if len(types) > 0 {
		in, typeArgs := storage.InList("", types)
		query += ` AND type IN ` + shiftPlaceholders(in, 1)
		args = append(args, typeArgs...)
	}
	nids, err := storage.QueryColumn[int64](ctx, tx, query+` ORDER BY type, state_key`, args...)
	if err != nil {
		return nil, err
	}
	return s.loadClientEvents(ctx, tx, tx, version, nids)
}
