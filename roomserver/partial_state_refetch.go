package roomserver

// Completing the state of events built on a stretch of partial state.
//
// After a rejoin, an event whose prev events lie in a stretch of partial
// state (partial_state_purge.go) is stored with a state derived from that
// partial state and marked as a stretch of its own
// (markAfterPartialStretch), as is everything built on it: GET /state and
// /state_ids at them are refused. The mark also queues the event here
// (roomserver_stretch_refetch). The federation API, in the background,
// asks a server in the room for the state at (before) each prev event of
// it that lies in a stretch — GET /state_ids and the events it lacks,
// fetched and checked as for a gap (federationapi/gap.go) — and hands it
// to CompleteStretchState, which
//
//   - checks the given events as a gap's are (each against its own auth
//     events; a state naming one that fails is refused) and checks that
//     each given state allows the prev event it is the state at (an
//     event we hold and accepted: a state that does not allow it is not
//     the state at it — a server lying about it is refused);
//   - takes the state before the event as the resolution of the states
//     after its prev events (the given ones, ours for the others), and
//     checks the event against it: its fate must stay what it was (an
//     event accepted on the partial state and rejected on the full one,
//     or the other way round, keeps its mark: the timeline clients saw
//     is not rewritten);
//   - stores that state before the event, its state after, clears its
//     mark, then does the same, from their prev events' states, for the
//     marked events built on it whose prev events no longer lie in a
//     stretch, in stream order; when one of them is a forward extremity
//     the room's current state is resolved again.
//
// If no server answers, or only with a state that fails the checks, the
// mark stays (no guessed state is ever served) and the federation API
// tries again later, with backoff (StretchRefetchFailed); the queue is in
// the database, so it outlives a restart.
// Spec: MSC3706 (no partial state answered as the full state);
// server-server-api, "GET /_matrix/federation/v1/state_ids/{roomId}",
// "Checks performed on receipt of a PDU".

import (
	"context"
	"encoding/json"
	"log/slog"
	"slices"
	"time"

	"github.com/myelin-chat/myelin/internal/mxerr"
	"github.com/myelin-chat/myelin/storage"
)

const (
	// stretchRefetchBackoff is the wait after a first failed attempt;
	// it doubles with each failure up to stretchRefetchMaxBackoff.
	stretchRefetchBackoff    = 10 * time.Second
	stretchRefetchMaxBackoff = time.Hour
)

// StretchRefetch is an event whose state derives from a stretch of
// partial state, to be completed with the state at its prev events in a
// stretch.
type StretchRefetch struct {
	RoomID      string
	RoomVersion string
	EventID     string
	Sender      string
	// Prevs are its prev events that lie in a stretch of partial state
	// left by a join (not marked for being built on one): the state at
	// each is to be fetched. Empty, with WaitsFor empty too, when the
	// event can be completed from what is held (CompleteStretchState
	// with no states).
	Prevs []string
	// WaitsFor are its prev events that are themselves queued here:
	// their state is completed first (and then this event's, from
	// theirs), never fetched, so that a state another server gives is
	// only ever taken at an event of a stretch, checked against it.
	WaitsFor []string
	Attempts int
}

// queueStretchRefetch queues the event numbered nid of roomID, just
// marked, for CompleteStretchState (in tx), and wakes the worker
// (Deps.StretchRefetchQueued) once tx commits.
func (s *Server) queueStretchRefetch(ctx context.Context, tx storage.Tx, roomID string, nid int64) error {
	_, err := tx.Exec(ctx, `INSERT INTO roomserver_stretch_refetch (event_nid, room_id, next_try_ts)
		VALUES ($1, $2, $3) ON CONFLICT (event_nid) DO NOTHING`, nid, roomID, s.now().UnixMilli())
	if err == nil && s.onRefetch != nil {
		tx.AfterCommit(s.onRefetch)
	}
	return err
}

// NextStretchRefetch returns when the queued event tried first is due
// (it may be already); the zero time when none is queued.
func (s *Server) NextStretchRefetch(ctx context.Context) (time.Time, error) {
	var next *int64
	if err := s.db.Reader().QueryRow(ctx, `SELECT MIN(next_try_ts) FROM roomserver_stretch_refetch`).Scan(&next); err != nil {
		return time.Time{}, err
	}
	if next == nil {
		return time.Time{}, nil
	}
	return time.UnixMilli(*next), nil
}

// DueStretchRefetches returns up to limit queued events whose next try
// is due, oldest first.
func (s *Server) DueStretchRefetches(ctx context.Context, limit int) ([]StretchRefetch, error) {
	q := s.db.Reader()
	rows, err := q.Query(ctx, `SELECT e.event_id, j.attempts FROM roomserver_stretch_refetch j
		JOIN roomserver_events e ON e.event_nid = j.event_nid
		WHERE j.next_try_ts <= $1 ORDER BY j.event_nid LIMIT $2`, s.now().UnixMilli(), limit)
	if err != nil {
		return nil, err
	}
	type job struct {
		eventID  string
		attempts int
	}
	var jobs []job
	for rows.Next() {
		var j job
		if err := rows.Scan(&j.eventID, &j.attempts); err != nil {
			rows.Close()
			return nil, err
		}
		jobs = append(jobs, j)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, err
	}
	out := make([]StretchRefetch, 0, len(jobs))
	for _, j := range jobs {
		ev, version, err := s.loadByID(ctx, q, j.eventID)
		if err != nil {
			return nil, err
		}
		prevs, waits, err := prevsInStretch(ctx, q, ev.row.RoomID, ev.pdu.PrevEventIDs())
		if err != nil {
			return nil, err
		}
		out = append(out, StretchRefetch{RoomID: ev.row.RoomID, RoomVersion: version, EventID: j.eventID,
			Sender: ev.row.Sender, Prevs: prevs, WaitsFor: waits, Attempts: j.attempts})
	}
	return out, nil
}

// prevsInStretch returns those of prevIDs that are timeline events of
// roomID lying in a stretch of partial state: in one left by a join
// (left), or queued for StretchRefetch themselves (queued).
func prevsInStretch(ctx context.Context, q storage.Querier, roomID string, prevIDs []string) (left, queued []string, err error) {
	rows, err := eventRowsByID(ctx, q, prevIDs)
	if err != nil {
		return nil, nil, err
	}
	for _, id := range prevIDs {
		r, ok := rows[id]
		if !ok || r.RoomID != roomID || isOutlierRow(r) {
			continue
		}
		in, err := partialStateLeftAt(ctx, q, roomID, r.NID)
		if err != nil || !in {
			if err != nil {
				return nil, nil, err
			}
			continue
		}
		var n int
		if err := q.QueryRow(ctx, `SELECT COUNT(*) FROM roomserver_stretch_refetch WHERE event_nid = $1`,
			r.NID).Scan(&n); err != nil {
			return nil, nil, err
		}
		if n > 0 {
			queued = append(queued, id)
		} else {
			left = append(left, id)
		}
	}
	return left, queued, nil
}

// StretchRefetchFailed records a failed attempt to complete eventID's
// state (cause, for the log and the table) and sets its next try, with
// backoff.
func (s *Server) StretchRefetchFailed(ctx context.Context, eventID string, cause error) error {
	return s.db.Write(ctx, func(tx storage.Tx) error {
		row, err := eventRowByID(ctx, tx, eventID)
		if err != nil {
			return err
		}
		var attempts int
		if err := tx.QueryRow(ctx, `SELECT attempts FROM roomserver_stretch_refetch WHERE event_nid = $1`,
			row.NID).Scan(&attempts); err != nil {
			if storage.IsNoRows(err) {
				return nil // completed meanwhile
			}
			return err
		}
		wait := stretchRefetchBackoff << min(attempts, 20)
		wait = min(wait, stretchRefetchMaxBackoff)
		_, err = tx.Exec(ctx, `UPDATE roomserver_stretch_refetch SET attempts = attempts + 1, next_try_ts = $1,
			last_error = $2 WHERE event_nid = $3`, s.now().Add(wait).UnixMilli(), cause.Error(), row.NID)
		return err
	})
}

// StretchStateRequest is the state at the prev events of an event
// queued for StretchRefetch, as another server gave it.
type StretchStateRequest struct {
	EventID string
	// StatesBefore holds, for each prev event that lies in a stretch
	// (StretchRefetch.Prevs), the state before it (full events).
	StatesBefore map[string][]json.RawMessage
	// AuthEvents are further events the states' events need for their
	// own auth checks (their auth chain), those not held here.
	AuthEvents []json.RawMessage
}

// CompleteStretchState completes the state of req.EventID, queued for
// StretchRefetch, and of the events built on it (see the file comment).
// It answers M_FORBIDDEN when the given state fails a check (the mark
// stays), M_BAD_JSON for malformed events. An event no longer queued is
// a no-op. Signatures and hashes must already be verified.
func (s *Server) CompleteStretchState(ctx context.Context, req StretchStateRequest) error {
	q := s.db.Reader()
	ev, version, err := s.loadByID(ctx, q, req.EventID)
	if err != nil {
		return err
	}
	roomID := ev.row.RoomID
	impl, err := roomVersion(version)
	if err != nil {
		return err
	}
	prevIDs := ev.pdu.PrevEventIDs()
	var order []string
	var states [][]json.RawMessage
	for _, id := range prevIDs {
		if st, ok := req.StatesBefore[id]; ok {
			order = append(order, id)
			states = append(states, st)
		}
	}
	if len(order) != len(req.StatesBefore) {
		return mxerr.New(mxerr.BadJSON, "a state is given at an event that is not a prev event of %s", req.EventID)
	}
	given, sets, err := parseGivenStates(impl, roomID, states, req.AuthEvents)
	if err != nil {
		return err
	}

	unlock := s.lockRoom(ctx, roomID)
	defer unlock()
	var touched []*eventRow
	err = s.db.Write(ctx, func(tx storage.Tx) error {
		touched = nil
		var queued int
		if err := tx.QueryRow(ctx, `SELECT COUNT(*) FROM roomserver_stretch_refetch WHERE event_nid = $1`,
			ev.row.NID).Scan(&queued); err != nil || queued == 0 {
			return err
		}
		room, err := loadRoom(ctx, tx, roomID)
		if err != nil {
			return err
		}
		if err := refuseForeignCreate(ctx, tx, roomID, given); err != nil {
			return err
		}
		nids, err := s.storeGapOutliers(ctx, tx, room, given)
		if err != nil {
			return err
		}
		inStretch, waits, err := prevsInStretch(ctx, tx, roomID, prevIDs)
		if err != nil {
			return err
		}
		if len(waits) > 0 {
			return mxerr.New(mxerr.NotFound, "the state of %v, on which %s is built, is not complete yet", waits, req.EventID)
		}
		prevRows, err := eventRowsByID(ctx, tx, prevIDs)
		if err != nil {
			return err
		}
		var snaps []stateMap
		for _, id := range prevIDs {
			i := slices.Index(order, id)
			switch {
			case !slices.Contains(inStretch, id):
				// Ours, which is complete (whatever was given at it).
				r := prevRows[id]
				if r == nil || r.RoomID != roomID || isOutlierRow(r) || r.StateAfter == 0 {
					continue // not a state this event's state derives from (as in markAfterPartialStretch)
				}
				m, err := loadSnapshot(ctx, tx, r.StateAfter)
				if err != nil {
					return err
				}
				snaps = append(snaps, m)
			case i >= 0:
				after, err := s.givenStateAfter(ctx, tx, room, prevRows[id], sets[i], nids)
				if err != nil {
					return err
				}
				snaps = append(snaps, after)
			default:
				return mxerr.New(mxerr.NotFound, "no state given at %s, which lies in a stretch of partial state", id)
			}
		}
		if len(snaps) == 0 {
			return mxerr.New(mxerr.NotFound, "no state for the prev events of %s", req.EventID)
		}
		before := snaps[0]
		if len(snaps) > 1 {
			if before, err = s.resolveStates(ctx, tx, tx, room.Version, snaps); err != nil {
				return err
			}
		}
		after := map[string]int64{}
		row, err := eventRowByID(ctx, tx, req.EventID)
		if err != nil {
			return err
		}
		ok, err := s.completeRowState(ctx, tx, room, row, 0, before, after)
		if err != nil {
			return err
		}
		if !ok {
			return mxerr.New(mxerr.Forbidden, "on the state given, the fate of %s would change", req.EventID)
		}
		touched = append(touched, row)
		more, err := s.completeBuiltOn(ctx, tx, room, row.NID, after)
		if err != nil {
			return err
		}
		touched = append(touched, more...)
		s.dropRewrittenAtCommit(tx, touched)
		if s.inStretchWrite != nil {
			defer s.inStretchWrite(tx)
		}
		for _, r := range touched {
			if slices.Contains(room.Extremities, r.EventID) {
				return s.recomputeCurrentState(ctx, tx, room, after)
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	if len(touched) > 0 {
		s.stretches.removed(roomID)
		slog.InfoContext(ctx, "completed the state of events built on partial state", "room_id", roomID,
			"event_id", req.EventID, "events", len(touched))
	}
	return nil
}

// givenStateAfter is the state after the held prev event prev, from the
// state before it another server gave (st, as stored by
// storeGapOutliers): that state must allow prev, which we accepted, or
// it is not the state at prev (M_FORBIDDEN).
func (s *Server) givenStateAfter(ctx context.Context, tx storage.Tx, room *roomRow, prev *eventRow, st map[tuple]string, nids map[string]int64) (stateMap, error) {
	before, err := givenStateMap(st, nids)
	if err != nil {
		return nil, err
	}
	if prev == nil {
		return nil, mxerr.New(mxerr.NotFound, "a state is given at an event not held")
	}
	loaded, err := parseRow(room.Version, prev)
	if err != nil {
		return nil, err
	}
	// The state before prev is the state its auth events were picked
	// from (server-server-api, "Auth events selection"): a state that
	// holds another event at one of their keys is not the state at it.
	authRows, err := eventRowsByID(ctx, tx, loaded.pdu.AuthEventIDs())
	if err != nil {
		return nil, err
	}
	for _, id := range loaded.pdu.AuthEventIDs() {
		ar := authRows[id]
		if ar == nil || ar.StateKey == nil {
			continue
		}
		if nid := before[tuple{ar.Type, *ar.StateKey}]; nid != ar.NID {
			return nil, mxerr.New(mxerr.Forbidden, "the state given at %s does not hold its auth event %s", prev.EventID, id)
		}
	}
	checkRoom := &roomRow{RoomID: room.RoomID, Version: room.Version, CurrentSnapshot: -1}
	if !prev.Rejected {
		events, err := s.stateEventsFor(ctx, tx, tx, checkRoom, 0, before, neededTuples(loaded.pdu))
		if err != nil {
			return nil, err
		}
		if err := allowed(loaded.pdu, events); err != nil {
			return nil, mxerr.New(mxerr.Forbidden, "the state given at %s does not allow it: %v", prev.EventID, err)
		}
	}
	after := before
	if !prev.Rejected && prev.StateKey != nil {
		after = make(stateMap, len(before)+1)
		for k, v := range before {
			after[k] = v
		}
		after[tuple{prev.Type, *prev.StateKey}] = prev.NID
	}
	return after, nil
}

// completeRowState stores row's state before (beforeNID, or beforeState
// when it is 0) and after, and clears its mark, if its fate on that
// state is the one it was stored with; it reports whether it did.
// after gets row's new state after.
func (s *Server) completeRowState(ctx context.Context, tx storage.Tx, room *roomRow, row *eventRow, beforeNID int64, beforeState stateMap, after map[string]int64) (bool, error) {
	loaded, err := parseRow(room.Version, row)
	if err != nil {
		return false, err
	}
	checkRoom := &roomRow{RoomID: room.RoomID, Version: room.Version, CurrentSnapshot: -1}
	rejected, err := s.replayRejected(ctx, tx, checkRoom, loaded.pdu, beforeNID, beforeState)
	if err != nil {
		return false, err
	}
	if rejected != row.Rejected {
		slog.InfoContext(ctx, "the full state would change an event's fate; its state stays partial",
			"room_id", room.RoomID, "event_id", row.EventID, "rejected", row.Rejected)
		return false, nil
	}
	if beforeState != nil {
		if beforeNID, err = writeSnapshot(ctx, tx, room.RoomID, 0, nil, beforeState); err != nil {
			return false, err
		}
	}
	stateAfter := beforeNID
	if !rejected && row.StateKey != nil {
		if stateAfter, err = writeSnapshotDelta(ctx, tx, room.RoomID, beforeNID, beforeState, tuple{row.Type, *row.StateKey}, row.NID); err != nil {
			return false, err
		}
	}
	if _, err := tx.Exec(ctx, `UPDATE roomserver_events SET state_before = $1, state_after = $2 WHERE event_nid = $3`,
		beforeNID, stateAfter, row.NID); err != nil {
		return false, err
	}
	if _, err := tx.Exec(ctx, `DELETE FROM roomserver_partial_state_left WHERE room_id = $1 AND from_nid = $2
		AND through_nid = $2`, room.RoomID, row.NID); err != nil {
		return false, err
	}
	if _, err := tx.Exec(ctx, `DELETE FROM roomserver_stretch_refetch WHERE event_nid = $1`, row.NID); err != nil {
		return false, err
	}
	row.StateBefore, row.StateAfter = beforeNID, stateAfter
	after[row.EventID] = stateAfter
	return true, nil
}

// completeBuiltOn completes, in stream order, the queued events of room
// after nid whose prev events no longer lie in a stretch, from their
// prev events' states (after holds those completed so far).
func (s *Server) completeBuiltOn(ctx context.Context, tx storage.Tx, room *roomRow, nid int64, after map[string]int64) ([]*eventRow, error) {
	nids, err := storage.QueryColumn[int64](ctx, tx, `SELECT event_nid FROM roomserver_stretch_refetch
		WHERE room_id = $1 AND event_nid > $2 ORDER BY event_nid`, room.RoomID, nid)
	if err != nil {
		return nil, err
	}
	rows, err := eventRowsByNID(ctx, tx, nids)
	if err != nil {
		return nil, err
	}
	var touched []*eventRow
	for _, row := range inDAGOrder(rows) {
		loaded, err := parseRow(room.Version, row)
		if err != nil {
			return nil, err
		}
		if settled, err := prevsSettled(ctx, tx, room.RoomID, loaded.pdu.PrevEventIDs()); err != nil || !settled {
			if err != nil {
				return nil, err
			}
			continue // still built on partial state (its own turn comes), or on events whose state is unknown
		}
		beforeNID, beforeState, err := s.replayStateBefore(ctx, tx, room, row, loaded.pdu, after)
		if err != nil {
			return nil, err
		}
		ok, err := s.completeRowState(ctx, tx, room, row, beforeNID, beforeState, after)
		if err != nil {
			return nil, err
		}
		if ok {
			touched = append(touched, row)
		}
	}
	return touched, nil
}

// prevsSettled reports whether every one of prevIDs is a timeline event
// of roomID held with a state that lies in no stretch, so the state
// before an event built on them derives from complete states only.
func prevsSettled(ctx context.Context, q storage.Querier, roomID string, prevIDs []string) (bool, error) {
	rows, err := eventRowsByID(ctx, q, prevIDs)
	if err != nil {
		return false, err
	}
	for _, id := range prevIDs {
		r, ok := rows[id]
		if !ok || r.RoomID != roomID || isOutlierRow(r) || r.StateAfter == 0 {
			return false, nil
		}
		if in, err := partialStateLeftAt(ctx, q, roomID, r.NID); err != nil || in {
			return false, err
		}
	}
	return true, nil
}
