package roomserver

import (
	"context"
	"log/slog"
	"slices"

	"github.com/matrix-org/gomatrixserverlib"

	"github.com/myelin-chat/myelin/storage"
)

// replayAfterJoin gives a partial-state join the full state before it,
// then checks the join and every later timeline event again, in stream
// order, against the state now known before each (the rejection checks
// of "Checks performed on receipt of a PDU", steps 4 and 5), rewrites
// their snapshots and rejected flags, and recomputes the current state.
// It returns the rows it changed (for the event cache). room.Partial is
// false: the checks are the full-state ones.
func (s *Server) replayAfterJoin(ctx context.Context, tx storage.Tx, room *roomRow, joinEventID string, full stateMap) ([]*eventRow, error) {
	join, err := eventRowByID(ctx, tx, joinEventID)
	if err != nil {
		return nil, err
	}
	rows, err := queryEventRows(ctx, tx, `SELECT `+eventColumns+` FROM roomserver_events
		WHERE room_id = $1 AND event_nid >= $2 AND state_before != 0 ORDER BY event_nid`, room.RoomID, join.NID)
	if err != nil {
		return nil, err
	}
	rows = inDAGOrder(rows) // promoted outliers come after what follows them (outlier_promotion.go)
	// Snapshots are read from tx, never from the current-state table,
	// which still holds the partial state.
	replayRoom := &roomRow{RoomID: room.RoomID, Version: room.Version, CurrentSnapshot: -1}
	after := map[string]int64{} // state_after of the rows replayed so far
	var touched []*eventRow
	for _, row := range rows {
		loaded, err := parseRow(room.Version, row)
		if err != nil {
			return nil, err
		}
		pdu := loaded.pdu
		beforeNID, beforeState := row.StateBefore, stateMap(nil)
		if row.EventID == joinEventID {
			beforeNID, beforeState = 0, full
		} else if beforeNID, beforeState, err = s.replayStateBefore(ctx, tx, room, row, pdu, after); err != nil {
			return nil, err
		}
		rejected, err := s.replayRejected(ctx, tx, replayRoom, pdu, beforeNID, beforeState)
		if err != nil {
			return nil, err
		}
		if beforeState != nil {
			if beforeNID, err = writeSnapshot(ctx, tx, room.RoomID, 0, nil, beforeState); err != nil {
				return nil, err
			}
		}
		stateAfter := beforeNID
		if !rejected && row.StateKey != nil {
			k := tuple{row.Type, *row.StateKey}
			if stateAfter, err = writeSnapshotDelta(ctx, tx, room.RoomID, beforeNID, beforeState, k, row.NID); err != nil {
				return nil, err
			}
		}
		if _, err := tx.Exec(ctx, `UPDATE roomserver_events SET rejected = $1, state_before = $2, state_after = $3
			WHERE event_nid = $4`, rejected, beforeNID, stateAfter, row.NID); err != nil {
			return nil, err
		}
		if rejected != row.Rejected {
			// An event of ours rejected here is still sent to the other
			// servers (LocalEventsAfter).
			slog.InfoContext(ctx, "partial state resync changed an event's fate", "room_id", room.RoomID,
				"event_id", row.EventID, "rejected", rejected, "local", domainOf(row.Sender) == string(s.serverName))
		}
		row.Rejected, row.StateBefore, row.StateAfter = rejected, beforeNID, stateAfter
		after[row.EventID] = stateAfter
		touched = append(touched, row)
	}
	return touched, s.recomputeCurrentState(ctx, tx, room, after)
}

// replayStateBefore is the state before row from its prev events' new
// state_after; when a prev event is not a timeline event of ours (an
// outlier, or unknown) the state it was stored with stays.
func (s *Server) replayStateBefore(ctx context.Context, tx storage.Tx, room *roomRow, row *eventRow, pdu gomatrixserverlib.PDU, after map[string]int64) (int64, stateMap, error) {
	prevIDs := pdu.PrevEventIDs()
	prevRows, err := eventRowsByID(ctx, tx, prevIDs)
	if err != nil {
		return 0, nil, err
	}
	var snaps []int64
	for _, id := range prevIDs {
		nid, ok := after[id]
		if !ok {
			r, known := prevRows[id]
			if !known || r.StateAfter == 0 {
				return row.StateBefore, nil, nil
			}
			nid = r.StateAfter
		}
		if !slices.Contains(snaps, nid) {
			snaps = append(snaps, nid)
		}
	}
	if len(snaps) == 1 {
		return snaps[0], nil, nil
	}
	sets := make([]stateMap, len(snaps))
	for i, nid := range snaps {
		if sets[i], err = loadSnapshot(ctx, tx, nid); err != nil {
			return 0, nil, err
		}
	}
	state, err := s.resolveStates(ctx, tx, tx, room.Version, sets)
	return 0, state, err
}

// replayRejected decides whether pdu is rejected: by its own auth events
// (read from tx, so flags changed by this replay count) or by the state
// before it.
func (s *Server) replayRejected(ctx context.Context, tx storage.Tx, room *roomRow, pdu gomatrixserverlib.PDU, beforeNID int64, beforeState stateMap) (bool, error) {
	authIDs := pdu.AuthEventIDs()
	authRows, err := eventRowsByID(ctx, tx, authIDs)
	if err != nil {
		return false, err
	}
	authEvents, err := s.loadEventsByID(ctx, tx, tx, authIDs)
	if err != nil {
		return false, err
	}
	var authList []gomatrixserverlib.PDU
	seen := map[tuple]bool{}
	for _, id := range authIDs {
		r, ok := authRows[id]
		ae, loaded := authEvents[id]
		if !ok || !loaded || r.Rejected || r.RoomID != room.RoomID || r.StateKey == nil {
			return true, nil
		}
		k := tuple{r.Type, *r.StateKey}
		if seen[k] {
			return true, nil
		}
		seen[k] = true
		authList = append(authList, ae.pdu)
	}
	if allowed(pdu, authList) != nil {
		return true, nil
	}
	beforeAuth, err := s.stateEventsFor(ctx, tx, tx, room, beforeNID, beforeState, neededTuples(pdu))
	if err != nil {
		return false, err
	}
	return allowed(pdu, beforeAuth) != nil, nil
}

// recomputeCurrentState sets the room's current state to the resolution
// of the state after its forward extremities (after holds the replayed
// ones) and brings the current-state table to it.
func (s *Server) recomputeCurrentState(ctx context.Context, tx storage.Tx, room *roomRow, after map[string]int64) error {
	extRows, err := eventRowsByID(ctx, tx, room.Extremities)
	if err != nil {
		return err
	}
	var snaps []int64
	for _, id := range room.Extremities {
		nid, ok := after[id]
		if !ok {
			if r := extRows[id]; r != nil {
				nid = r.StateAfter
			}
		}
		if nid != 0 && !slices.Contains(snaps, nid) {
			snaps = append(snaps, nid)
		}
	}
	if len(snaps) == 0 {
		return nil
	}
	newNID := snaps[0]
	if len(snaps) > 1 {
		sets := make([]stateMap, len(snaps))
		for i, nid := range snaps {
			if sets[i], err = loadSnapshot(ctx, tx, nid); err != nil {
				return err
			}
		}
		resolved, err := s.resolveStates(ctx, tx, tx, room.Version, sets)
		if err != nil {
			return err
		}
		if newNID, err = writeSnapshot(ctx, tx, room.RoomID, 0, nil, resolved); err != nil {
			return err
		}
	}
	old, err := currentStateMap(ctx, tx, room.RoomID)
	if err != nil {
		return err
	}
	state, err := loadSnapshot(ctx, tx, newNID)
	if err != nil {
		return err
	}
	if err := s.replaceCurrentState(ctx, tx, room.RoomID, old, state, 0); err != nil {
		return err
	}
	room.CurrentSnapshot = newNID
	return saveRoom(ctx, tx, room)
}

// dropRewrittenAtCommit drops rows, rewritten in place by tx (a resync's
// replay, the completion of a stretch's state), from the event cache
// once tx commits, as a promotion drops its outlier (moveEventNID):
//
//   - right at the commit, on the committing goroutine (OnCommit), so
//     that no read whose statements see the commit is served a cached
//     copy from before it: the notification of the commit (an
//     AfterCommit hook) wakes /sync and the federation sender, which
//     read these rows at once;
//   - again after the commit (AfterCommit), before Write returns.
//
// A read that loaded an old copy before the commit cannot cache it
// afterwards: each drop moves the cache's generation on, and a load is
// cached only at the generation it began at (eventCache.putLoaded).
func (s *Server) dropRewrittenAtCommit(tx storage.Tx, rows []*eventRow) {
	if len(rows) == 0 {
		return
	}
	drop := func() { s.events.dropRows(rows) }
	tx.OnCommit(drop)
	tx.AfterCommit(drop)
}
