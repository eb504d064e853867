package roomserver

// Purging the partial-state bookkeeping of a room this server left.
//
// A partial-state join whose local users all left (leave, kick or ban)
// before the resync completed leaves this server out of the room with a
// state it never completed. The resync then stops (federationapi), and
// what only served the resync and the partial room goes:
//
//   - the partial-state record (roomserver_partial_state_rooms): the
//     flag, the join to resync for and the servers send_join named. The
//     room no longer counts as partial (no resync at start, readers that
//     wait for the full state stop waiting, a local join goes through
//     make_join/send_join as for any room this server left) and its
//     events and device-list updates stop going to the servers only the
//     record named;
//   - the delivered marks (roomserver_delivered_events) of the room's
//     events: they only tell the federation sender which local events a
//     resident server sent for us, and the sender is past all of them.
//
// What stays: every event (the local users' joins and leaves, the
// messages they saw) and its stream position, so /sync, /messages and
// the users' history are as before, and nothing acknowledged is lost.
// The state those events were stored with is the partial state; a later
// join starts from a new send_join answer (ImportJoinedRoom replaces the
// stale state) and, if partial again, a new resync.
//
// Which events have that partial state stays known: the purge records
// the stretch from the partial-state join on (roomserver_partial_state_left),
// open until a later join imports the room's state again; a rejoin that
// ends a partial-state join without replaying its events records its
// stretch too, closed at once (ImportJoinedRoom). An event stored after
// a stretch was closed whose state derives from it (one of its prev
// events lies in a stretch) is recorded as a stretch of its own
// (markAfterPartialStretch), and so on down the DAG, until its state is
// completed from the state at those prev events fetched again from a
// server in the room (partial_state_refetch.go). Another server's GET
// /state and /state_ids at an event of a stretch are refused as they
// were while the room was partial (MSC3706: a server must not answer
// partial state as if it were the full state), and while a stretch is
// open the servers the record named keep reading the room's events
// (/event, /backfill, ...) as before the purge, since the partial
// current state lacks their members.
//
// Synapse stops such a resync too and deletes the whole room, leave
// events included; Myelin keeps the history its users saw.
// Spec: MSC3706, MSC3902 (partial-state joins); client-server-api,
// "GET /_matrix/client/v3/sync" (rooms.leave).

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"

	"github.com/myelin-chat/myelin/storage"
)

// ErrPurgeBeforeSent is PurgePartialState's answer when the room has an
// event past the position the caller's sender has read: that event's
// destinations may still need the partial-state record's servers
// (LocalEventsAfter). The caller waits for its sender and asks again.
var ErrPurgeBeforeSent = errors.New("the federation sender has not read every event of the room yet")

// PurgePartialState drops roomID's partial-state bookkeeping (see the
// file comment) if the room still has partial state, no local user is
// joined to it, and sentThrough — the stream position up to which the
// federation sender has queued local events for their destinations — is
// at or past the room's last event (else ErrPurgeBeforeSent). It
// reports whether it purged: false, with no error, when the room has
// full state or a local user is joined (a rejoin won the race; its
// resync goes on). The checks and the deletes are one transaction under
// the room's lock, so a concurrent local join either comes first and
// keeps the record or comes after and finds a room that is not partial.
func (s *Server) PurgePartialState(ctx context.Context, roomID string, sentThrough int64) (bool, error) {
	unlock := s.lockRoom(ctx, roomID)
	defer unlock()
	purged := false
	err := s.db.Write(ctx, func(tx storage.Tx) error {
		purged = false
		room, err := loadRoom(ctx, tx, roomID)
		if err != nil || !room.Partial {
			return err
		}
		joined, err := storage.QueryColumn[string](ctx, tx, `SELECT state_key FROM roomserver_current_state
			WHERE room_id = $1 AND type = 'm.room.member' AND membership = 'join'`, roomID)
		if err != nil {
			return err
		}
		for _, userID := range joined {
			if domainOf(userID) == string(s.serverName) {
				return nil
			}
		}
		var last int64
		if err := tx.QueryRow(ctx, `SELECT COALESCE(MAX(event_nid), 0) FROM roomserver_events WHERE room_id = $1`,
			roomID).Scan(&last); err != nil {
			return err
		}
		if last > sentThrough {
			return ErrPurgeBeforeSent
		}
		if _, err := tx.Exec(ctx, `DELETE FROM roomserver_delivered_events WHERE event_nid IN
			(SELECT event_nid FROM roomserver_events WHERE room_id = $1)`, roomID); err != nil {
			return err
		}
		// The events from the partial-state join on keep their partial
		// state: remember them (and the servers the record named) so
		// that reads of that state stay refused (StateForServer).
		if err := s.keepPartialStretch(ctx, tx, roomID, nil); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `DELETE FROM roomserver_partial_state_rooms WHERE room_id = $1`, roomID); err != nil {
			return err
		}
		purged = true
		return nil
	})
	if err != nil {
		return false, err
	}
	if purged {
		// AwaitFullState callers (a left user's /members) stop waiting:
		// no resync will complete this room.
		s.partial.wake(roomID)
	}
	return purged, nil
}

// partialStateLeftAt reports whether the event numbered nid of roomID
// lies in a stretch of events stored with partial state that no resync
// will complete (see the file comment).
func partialStateLeftAt(ctx context.Context, q storage.Querier, roomID string, nid int64) (bool, error) {
	var n int
	err := q.QueryRow(ctx, `SELECT COUNT(*) FROM roomserver_partial_state_left WHERE room_id = $1
		AND from_nid <= $2 AND (through_nid IS NULL OR through_nid >= $2)`, roomID, nid).Scan(&n)
	return n > 0, err
}

// leftPartialServer reports whether server is among the servers of an
// open stretch of roomID: one whose partial state is still the room's
// current state, which lacks that server's members.
func leftPartialServer(ctx context.Context, q storage.Querier, roomID, server string) (bool, error) {
	lists, err := storage.QueryColumn[string](ctx, q, `SELECT servers FROM roomserver_partial_state_left
		WHERE room_id = $1 AND through_nid IS NULL`, roomID)
	if err != nil {
		return false, err
	}
	for _, raw := range lists {
		var servers []string
		if err := json.Unmarshal([]byte(raw), &servers); err != nil {
			return false, fmt.Errorf("partial state left in room %s: bad servers: %w", roomID, err)
		}
		if slices.Contains(servers, server) {
			return true, nil
		}
	}
	return false, nil
}

// keepPartialStretch records the stretch of roomID's events from its
// partial-state join on, with the servers of its partial-state record,
// before the record goes or moves: open (through nil) when the purge
// drops it, closed at *through when a rejoin ends that join's partial
// state without a replay (the record moves to a later partial join that
// does not follow our timeline, or a rejoin answered with the full state
// clears it: ImportJoinedRoom). Those events keep their partial state.
func (s *Server) keepPartialStretch(ctx context.Context, tx storage.Tx, roomID string, through *int64) error {
	s.stretches.added(roomID) // before the commit: see stretchCache
	_, err := tx.Exec(ctx, `INSERT INTO roomserver_partial_state_left (room_id, from_nid, through_nid, servers)
		SELECT p.room_id, e.event_nid, $2, p.servers FROM roomserver_partial_state_rooms p
		JOIN roomserver_events e ON e.event_id = p.join_event_id WHERE p.room_id = $1
		ON CONFLICT (room_id, from_nid) DO NOTHING`, roomID, through)
	return err
}

// closePartialStateLeft ends roomID's open stretch at the last event
// stored so far: a join is importing the room's state again (in tx,
// before it stores anything), and events from then on are computed from
// that state.
func closePartialStateLeft(ctx context.Context, tx storage.Tx, roomID string) error {
	_, err := tx.Exec(ctx, `UPDATE roomserver_partial_state_left SET through_nid =
		(SELECT COALESCE(MAX(event_nid), 0) FROM roomserver_events WHERE room_id = $1)
		WHERE room_id = $1 AND through_nid IS NULL`, roomID)
	return err
}

// markAfterPartialStretch records the event numbered nid of roomID, just
// stored with a state derived from its prev events (prevIDs), as a
// stretch of its own (closed, no servers) when one of those prev events
// lies in a stretch: its state then derives from a partial state too,
// wholly or in part (state resolution with a state that lacks members
// need not give the room's state), so GET /state and /state_ids at it
// are refused like at the stretch's events, until the event's state is
// completed (it is queued for that: partial_state_refetch.go). That
// happens after a rejoin closed a stretch: an event of another server,
// or ours built on one, whose prev events are events of the stretch.
// Events whose prev events follow the rejoin take the state the rejoin
// imported and are served. Whether the room has stretches at all is
// known without a query for nearly every event (stretch_cache.go).
// Spec: MSC3706 (no partial state answered as the full state).
func (s *Server) markAfterPartialStretch(ctx context.Context, tx storage.Tx, roomID string, prevIDs []string, nid int64) error {
	if len(prevIDs) == 0 {
		return nil
	}
	if has, err := s.roomHasStretches(ctx, tx, roomID); err != nil || !has {
		return err
	}
	if covered, err := partialStateLeftAt(ctx, tx, roomID, nid); err != nil || covered {
		return err // an open stretch holds it already
	}
	prevs, err := eventRowsByID(ctx, tx, prevIDs)
	if err != nil {
		return err
	}
	for _, id := range prevIDs {
		pe, ok := prevs[id]
		if !ok || pe.RoomID != roomID || isOutlierRow(pe) {
			continue // not a state this event's state derives from here
		}
		partial, err := partialStateLeftAt(ctx, tx, roomID, pe.NID)
		if err != nil {
			return err
		}
		if partial {
			if _, err := tx.Exec(ctx, `INSERT INTO roomserver_partial_state_left (room_id, from_nid, through_nid, servers)
				VALUES ($1, $2, $2, '[]') ON CONFLICT (room_id, from_nid) DO NOTHING`, roomID, nid); err != nil {
				return err
			}
			// The state at the prev events in a stretch is fetched
			// again in the background (partial_state_refetch.go), never
			// on this path.
			return s.queueStretchRefetch(ctx, tx, roomID, nid)
		}
	}
	return nil
}
