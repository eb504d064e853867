package roomserver

import (
	"container/heap"
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/myelin-chat/myelin/internal/mxerr"
	"github.com/myelin-chat/myelin/storage"
)

// Outlier promotion. An outlier is an event stored without a place in
// the timeline: fetched to complete an auth chain (InputOutliers), as
// part of a state (a send_join answer, a gap's state, the partial-state
// resync). It is stored soft-failed with no state (isOutlierRow). When
// the same event later arrives as a timeline event — in a /send
// transaction, from get_missing_events, through a gap, or by backfill —
// it is decided like a new event (auth against its auth events, the
// state before it from its prev events, the current state for soft
// failure) and its row is replaced by the timeline row, in the
// transaction that commits it:
//
//   - the row gets a new event NID, so the event takes a new stream
//     position: /sync delivers it once, in order of arrival, like any
//     new event (a backfilled one gets a new negative NID instead, below
//     the stream, like every backfilled event);
//   - every reference to the old NID (state snapshots the outlier is
//     part of, the current state) is moved to the new one in the same
//     transaction, so the state it was part of is unchanged;
//   - the caches that hold the old NID are invalidated after the commit
//     (in this process; other processes sharing the database check what
//     they cached against the rows instead: cache_shared.go).
//
// An outlier that a timeline event already names as a prev event (a gap
// filled with the state at it, then the event itself arriving) is not a
// forward extremity: what follows it is (commitFollowed).
// Spec: server-server-api, "Checks performed on receipt of a PDU" (every
// event received as a timeline event is checked this way) and "Room
// State Resolution" (forward extremities).

// isOutlierRow reports whether row is an outlier that may still become a
// timeline event: soft-failed with no state, not rejected (an outlier
// its own auth events reject would be rejected again).
func isOutlierRow(row *eventRow) bool {
	return row.SoftFailed && row.StateBefore == 0 && !row.Rejected
}

// heldOutlier looks eventID up: duplicate when it is held as anything but
// an outlier (nothing to do), otherwise the NID of the outlier row it is
// held as (0 when it is not held).
func heldOutlier(ctx context.Context, q storage.Querier, eventID string) (nid int64, duplicate bool, err error) {
	row, err := eventRowByID(ctx, q, eventID)
	if mxerr.Is(err, mxerr.NotFound) {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, err
	}
	if !isOutlierRow(row) {
		return 0, true, nil
	}
	return row.NID, false, nil
}

// replaceOutlier replaces the outlier row oldNID by row (the same event
// as a timeline event), which gets a new NID: a new stream position.
func (s *Server) replaceOutlier(ctx context.Context, tx storage.Tx, oldNID int64, row *eventRow) error {
	// Only the outlier row: if it changed since it was read (another
	// process's writer), nothing is replaced and the transaction fails.
	res, err := tx.Exec(ctx, `DELETE FROM roomserver_events WHERE event_nid = $1 AND event_id = $2
		AND soft_failed AND state_before = 0 AND NOT rejected`, oldNID, row.EventID)
	if err != nil {
		return err
	}
	if n, err := res.RowsAffected(); err != nil || n != 1 {
		return fmt.Errorf("outlier %s (NID %d) changed before its promotion: %d rows, %v", row.EventID, oldNID, n, err)
	}
	if _, err := s.insertEvent(ctx, tx, row); err != nil {
		return err
	}
	return s.moveEventNID(ctx, tx, row.RoomID, row.EventID, oldNID, row.NID)
}

// moveEventNID points every reference to event NID oldNID at newNID: the
// state snapshots and the current state of roomID. The event row itself
// has already moved. After the commit the caches forget the old NID.
func (s *Server) moveEventNID(ctx context.Context, tx storage.Tx, roomID, eventID string, oldNID, newNID int64) error {
	if _, err := tx.Exec(ctx, `UPDATE roomserver_snapshot_entries SET event_nid = $1 WHERE event_nid = $2`,
		newNID, oldNID); err != nil {
		return err
	}
	if _, err := tx.Exec(ctx, `UPDATE roomserver_current_state SET event_nid = $1,
		stream_pos = CASE WHEN stream_pos < $1 THEN $1 ELSE stream_pos END WHERE room_id = $2 AND event_nid = $3`,
		newNID, roomID, oldNID); err != nil {
		return err
	}
	s.forgetMembersAt(tx, roomID)
	// Dropped right at the commit, on the committing goroutine: a read
	// whose snapshot is taken from then on sees the move, and must find
	// neither the outlier's entry nor a snapshot entry naming its old
	// NID (snapshot_read.go). Again after the commit, before commit's own
	// AfterCommit puts the new row (hooks run in the order they were
	// registered): a read begun before the commit may have cached the
	// outlier meanwhile.
	drop := func() {
		s.events.drop(oldNID, eventID)
		s.snapKeys.invalidate()
	}
	tx.OnCommit(drop)
	tx.AfterCommit(drop)
	return nil
}

// followedInTimeline reports whether an accepted timeline event of row's
// room names row's event as a prev event. Such events sit deeper: a
// candidate is found by its JSON naming the ID, then its prev_events are
// read to be sure.
func followedInTimeline(ctx context.Context, q storage.Querier, row *eventRow) (bool, error) {
	like := "%" + strings.NewReplacer(`\`, `\\`, `%`, `\%`, `_`, `\_`).Replace(row.EventID) + "%"
	rows, err := q.Query(ctx, `SELECT json FROM roomserver_events WHERE room_id = $1 AND depth > $2
		AND NOT rejected AND NOT soft_failed AND json LIKE $3 ESCAPE '\'`, row.RoomID, row.Depth, like)
	if err != nil {
		return false, err
	}
	defer rows.Close()
	for rows.Next() {
		var raw string
		if err := rows.Scan(&raw); err != nil {
			return false, err
		}
		if slices.Contains(prevEventIDsOf(raw), row.EventID) {
			return true, nil
		}
	}
	return false, rows.Err()
}

// commitFollowed finishes commit for an accepted promoted outlier that
// timeline events already follow: it does not become a forward
// extremity, but those of its prev events that were extremities are
// retired (the event now follows them), and the current state becomes
// the resolution of the remaining extremities' states.
func (s *Server) commitFollowed(ctx context.Context, tx storage.Tx, p *prepared, loaded *loadedEvent) error {
	room := p.room
	prevs := p.pdu.PrevEventIDs()
	var ext []string
	for _, id := range room.Extremities {
		if !slices.Contains(prevs, id) {
			ext = append(ext, id)
		}
	}
	if len(ext) > 0 && len(ext) < len(room.Extremities) {
		newCurrent, err := s.resolveExtremities(ctx, tx, room, ext, nil)
		if err != nil {
			return err
		}
		if newCurrent != room.CurrentSnapshot {
			oldState, err := loadSnapshot(ctx, tx, room.CurrentSnapshot)
			if err != nil {
				return err
			}
			newState, err := loadSnapshot(ctx, tx, newCurrent)
			if err != nil {
				return err
			}
			if err := s.replaceCurrentState(ctx, tx, room.RoomID, oldState, newState, p.row.NID); err != nil {
				return err
			}
		}
		room.Extremities = ext
		room.CurrentSnapshot = newCurrent
		if err := saveRoom(ctx, tx, room); err != nil {
			return err
		}
	}
	if err := s.applyRedactions(ctx, tx, room, loaded); err != nil {
		return err
	}
	s.notifyAfter(tx, p.row.NID)
	return nil
}

// inDAGOrder orders rows (given in stream order) so that every event
// comes after those of its prev events that are among rows, otherwise
// keeping stream order. Stream order is the DAG's order until an outlier
// is promoted: the promoted event takes a new, later stream position
// although events already stored follow it (the partial-state replay
// must still check it before them).
func inDAGOrder(rows []*eventRow) []*eventRow {
	index := make(map[string]int, len(rows))
	for i, r := range rows {
		index[r.EventID] = i
	}
	waiting := make([]int, len(rows))    // prev events among rows not yet placed
	children := make([][]int, len(rows)) // rows naming row i as a prev event
	for i, r := range rows {
		for _, p := range prevEventIDsOf(r.JSON) {
			if j, ok := index[p]; ok && j != i {
				waiting[i]++
				children[j] = append(children[j], i)
			}
		}
	}
	ready := &intHeap{}
	for i := range rows {
		if waiting[i] == 0 {
			heap.Push(ready, i)
		}
	}
	out := make([]*eventRow, 0, len(rows))
	placed := make([]bool, len(rows))
	for ready.Len() > 0 {
		i := heap.Pop(ready).(int)
		out = append(out, rows[i])
		placed[i] = true
		for _, c := range children[i] {
			if waiting[c]--; waiting[c] == 0 {
				heap.Push(ready, c)
			}
		}
	}
	// A prev-event cycle (impossible with hashed event IDs): the rest in
	// stream order.
	for i, r := range rows {
		if !placed[i] {
			out = append(out, r)
		}
	}
	return out
}

// intHeap is a min-heap of ints (container/heap).
type intHeap []int

func (h intHeap) Len() int           { return len(h) }
func (h intHeap) Less(i, j int) bool { return h[i] < h[j] }
func (h intHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *intHeap) Push(x any)        { *h = append(*h, x.(int)) }
func (h *intHeap) Pop() any {
	old := *h
	x := old[len(old)-1]
	*h = old[:len(old)-1]
	return x
}

// UnconnectedEvents returns those of ids that are not in the timeline
// here: not stored at all, or stored only as outliers (whose state is
// unknown), in the order given. An event whose prev events these are is
// not connected to the room's DAG yet: the federation API fetches what
// lies between (get_missing_events, which brings the outliers again as
// timeline events) or the state at them. Rejected events count as
// connected: fetching them again changes nothing.
// Spec: server-server-api, "Checks performed on receipt of a PDU" (the
// state before an event comes from its prev events).
func (s *Server) UnconnectedEvents(ctx context.Context, ids []string) ([]string, error) {
	known, err := eventRowsByID(ctx, s.db.Reader(), ids)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, id := range ids {
		if row, ok := known[id]; (!ok || isOutlierRow(row)) && !slices.Contains(out, id) {
			out = append(out, id)
		}
	}
	return out, nil
}
