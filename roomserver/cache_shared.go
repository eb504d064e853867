package roomserver

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/myelin-chat/myelin/storage"
)

// Caches when other processes write the same database (split mode,
// Deps.Shared). Three writes rewrite what the caches hold in place
// instead of adding new rows:
//
//   - outlier promotion (outlier_promotion.go) deletes the outlier's row
//     and inserts it again under a new event NID, and moves every state
//     snapshot entry (and current-state entry) from the old NID to the
//     new one;
//   - a redaction (redaction.go) rewrites its target's JSON and
//     redacted_because;
//   - the end of a partial-state resync (partial_state_replay.go)
//     rewrites the rejected flag and the state_before/state_after
//     snapshots of the events after the join.
//
// In one process the writer drops what it changed from its own caches
// at the commit, which is exact. Another process cannot see those
// drops, and a message telling it to (Redis) can be lost or arrive
// late, so in split mode nothing depends on one:
//
//   - an event cache hit is served only after one query (per batch, no
//     JSON, no parsing) has read the columns these writes change — its
//     NID, redacted_because, rejected, soft_failed, state_before,
//     state_after — and found them as cached; a hit that differs is
//     dropped and read again (freshHits); the timeline reads, which
//     read the positions of a room's latest events from the table, read
//     those columns with them (rejected and soft_failed by their
//     condition) and compare them instead (recentHit);
//   - the snapshot key cache remembers an entry only when its event is
//     not an outlier (settledNIDs): promotion is the only write that
//     moves a snapshot entry, and it only moves outliers' entries, so
//     what is remembered can never be moved. An outlier's entry is read
//     from the snapshot every time.
//
// The room version and history visibility caches hold what no write
// changes (a room's version; a snapshot's history visibility, whose
// event keeps history_visibility through redaction and whose snapshot
// is never rewritten but by the NID move above).

// rowStamp is what the in-place rewrites above change in an event row.
type rowStamp struct {
	nid                            int64
	redacted, rejected, softFailed bool
	stateBefore, stateAfter        int64
}

func stampOf(r *eventRow) rowStamp {
	return rowStamp{nid: r.NID, redacted: r.RedactedBecause != nil, rejected: r.Rejected, softFailed: r.SoftFailed,
		stateBefore: r.StateBefore, stateAfter: r.StateAfter}
}

// freshHits checks, in split mode, the cached events hits (nil entries
// are skipped) against the rows q reads now, and returns the indexes of
// those whose row was rewritten or is gone; these are dropped from the
// cache, and the caller reads them again. In one process it returns
// nothing: the writer's own drops keep the cache exact.
func (s *Server) freshHits(ctx context.Context, q storage.Querier, hits []*loadedEvent) (stale []int, err error) {
	if !s.shared {
		return nil, nil
	}
	var ids []string
	for _, e := range hits {
		if e != nil {
			ids = append(ids, e.row.EventID)
		}
	}
	if len(ids) == 0 {
		return nil, nil
	}
	now := make(map[string]rowStamp, len(ids))
	const chunk = 500
	for start := 0; start < len(ids); start += chunk {
		query, args := storage.InList(`SELECT event_id, event_nid, redacted_because, rejected, soft_failed, state_before, state_after
			FROM roomserver_events WHERE event_id IN `, ids[start:min(start+chunk, len(ids))])
		rows, err := q.Query(ctx, query, args...)
		if err != nil {
			return nil, err
		}
		for rows.Next() {
			var id string
			var st rowStamp
			var redactedBecause *string
			if err := rows.Scan(&id, &st.nid, &redactedBecause, &st.rejected, &st.softFailed, &st.stateBefore, &st.stateAfter); err != nil {
				rows.Close()
				return nil, err
			}
			st.redacted = redactedBecause != nil
			now[id] = st
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return nil, err
		}
	}
	for i, e := range hits {
		if e == nil {
			continue
		}
		if st, ok := now[e.row.EventID]; !ok || st != stampOf(e.row) {
			s.events.drop(e.row.NID, e.row.EventID)
			stale = append(stale, i)
		}
	}
	return stale, nil
}

// snapshotKeys returns snapshot nid's entries at keys through the
// snapshot key cache. q must read committed data only (the cache is
// filled from it). In split mode only the entries of events that are not
// outliers are remembered.
func (s *Server) snapshotKeys(ctx context.Context, q storage.Querier, nid int64, keys []tuple) (stateMap, error) {
	gen := s.snapKeyGeneration(q)
	return s.snapKeys.lookupKeeping(gen, nid, keys, func(missing []tuple) (snapshotLoad, error) {
		got, members, err := s.loadSnapshotKeysOrMembers(ctx, q, gen, nid, missing)
		if err != nil || !s.shared {
			return snapshotLoad{got: got, members: members}, err
		}
		settled, err := settledNIDs(ctx, q, got)
		if err != nil {
			return snapshotLoad{}, err
		}
		return snapshotLoad{got: got, keep: func(eventNID int64) bool { return settled[eventNID] }, members: members}, nil
	})
}

// maxMemberPreload bounds the member entries (rows of the snapshot chain)
// loadSnapshotKeysOrMembers reads at once.
var maxMemberPreload = 500 // a variable for tests

// loadSnapshotKeysOrMembers loads the missing keys of snapshot nid and,
// when one of them is a member key and a member key of this snapshot
// was loaded before (membersOneMiss), every member entry of the snapshot
// with them (membersAll), unless the snapshot has more than
// maxMemberPreload (membersTooMany; then only the missing keys).
//
// Why: a message to a room is checked against each recipient's
// membership in the state after it (visibility.at). The first message
// after a membership change is at a new snapshot, which the cache knows
// nothing of, so each of N recipients' /sync cost a query of the
// snapshot chain of its own: 200 listeners, 200 queries (50-130 ms of
// both cores), and that one message arrived 100+ ms after the others
// (docs/benchmarks.md, "stall"). One query for all members, remembered
// with the fact that they are all there, answers every recipient,
// member or not. Only the second member looked up at a snapshot does
// it: one user reading history over many snapshots, or a join checking
// its own member key at the snapshot before it, reads single keys as
// before.
func (s *Server) loadSnapshotKeysOrMembers(ctx context.Context, q storage.Querier, gen uint64, nid int64, missing []tuple) (stateMap, int8, error) {
	wantMember := false
	for _, k := range missing {
		if k.Type == "m.room.member" {
			wantMember = true
			break
		}
	}
	if !wantMember || nid == 0 {
		got, err := loadSnapshotKeys(ctx, q, nid, missing)
		return got, 0, err
	}
	switch s.snapKeys.membersOf(gen, nid) {
	case 0:
		got, err := loadSnapshotKeys(ctx, q, nid, missing)
		return got, membersOneMiss, err
	case membersTooMany:
		got, err := loadSnapshotKeys(ctx, q, nid, missing)
		return got, 0, err
	}
	var b strings.Builder
	b.WriteString("WHERE e.type = 'm.room.member'")
	var args []any
	for _, k := range missing {
		if k.Type == "m.room.member" {
			continue
		}
		fmt.Fprintf(&b, " OR (e.type = $%d AND e.state_key = $%d)", len(args)+2, len(args)+3)
		args = append(args, k.Type, k.StateKey)
	}
	got, rows, err := querySnapshotLimit(ctx, q, nid, b.String(), maxMemberPreload+len(args)/2, args...)
	if err != nil {
		return nil, 0, err
	}
	if rows > maxMemberPreload+len(args)/2 {
		got, err := loadSnapshotKeys(ctx, q, nid, missing)
		return got, membersTooMany, err
	}
	return got, membersAll, nil
}

// settledNIDs returns which of state's event NIDs are rows that are not
// outliers (isOutlierRow): rows no promotion can move. A NID that is not
// found (moved by a promotion since state was read) is not settled.
func settledNIDs(ctx context.Context, q storage.Querier, state stateMap) (map[int64]bool, error) {
	nids := make([]int64, 0, len(state))
	for _, n := range state {
		if n != 0 && !slices.Contains(nids, n) {
			nids = append(nids, n)
		}
	}
	return settledNIDList(ctx, q, nids)
}

// settledNIDList is settledNIDs for a list of event NIDs, 500 to a query.
func settledNIDList(ctx context.Context, q storage.Querier, nids []int64) (map[int64]bool, error) {
	out := make(map[int64]bool, len(nids))
	const chunk = 500
	for start := 0; start < len(nids); start += chunk {
		query, args := storage.InList(`SELECT event_nid FROM roomserver_events
			WHERE NOT (soft_failed AND state_before = 0 AND NOT rejected) AND event_nid IN `, nids[start:min(start+chunk, len(nids))])
		rows, err := q.Query(ctx, query, args...)
		if err != nil {
			return nil, err
		}
		for rows.Next() {
			var n int64
			if err := rows.Scan(&n); err != nil {
				rows.Close()
				return nil, err
			}
			out[n] = true
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// recentHit returns the event cache's row of event NID nid, found by
// recentRows or recentRowsOfRooms in the table with the given columns,
// if it is the row the table holds, else nil (the caller reads the
// row): the same redaction status and state snapshots, and, as their
// query returns neither rejected nor soft-failed rows, neither flag set.
// A partial-state resync in another process can reject an event or
// accept one it had rejected, and accepting it keeps its snapshots when
// its prev events are not timeline events here (replayStateBefore), so
// the flags count as well. In split mode an entry that differs is
// dropped, as freshHits drops one.
func (s *Server) recentHit(nid int64, seen uint64, redacted bool, stateBefore, stateAfter int64) *eventRow {
	e := s.events.getNID(nid, seen)
	if e == nil {
		return nil
	}
	r := e.row
	if (r.RedactedBecause != nil) == redacted && r.StateBefore == stateBefore && r.StateAfter == stateAfter &&
		!r.Rejected && !r.SoftFailed {
		return r
	}
	if s.shared {
		s.events.drop(r.NID, r.EventID)
	}
	return nil
}
