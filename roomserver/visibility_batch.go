package roomserver

import (
	"context"
	"fmt"
	"strings"

	"github.com/myelin-chat/myelin/storage"
)

// snapshotWant is a state snapshot a batched timeline read checks events
// against (visibility.canSee, visibility.at): its room and the room's
// version, and whether the user's membership in it is read too: always
// (member), or only where canSee's fast path (visibility.fastPath) does
// not answer at the snapshot's own history visibility (unlessFast: the
// snapshot before an event).
type snapshotWant struct {
	nid        int64
	roomID     string
	version    string
	member     bool
	unlessFast bool
}

// preloadSnapshots reads, with one snapshot chain query per
// snapshotChunk snapshots, what historyVisibilityAt and at would each
// read with a chain query of their own for every snapshot in wants that
// the caches do not answer yet: the history visibility (into the shared
// snapHV cache, as historyVisibilityAt fills it) and the user's member
// key (into the snapshot key cache, as snapshotKeys fills it). The
// per-snapshot reads that follow then find both cached; a snapshot left
// out here is read as before. Nothing is cached that the per-snapshot
// reads would not cache: v.q reads committed data, and a committed
// snapshot never changes (cache_shared.go for split mode).
//
// Why: a user's first initial /sync checks every room's latest events,
// whose snapshots no reader has asked about since they were written: on
// 500 rooms, 500 chain queries took ~140 ms of the first sync
// (docs/benchmarks.md, "inicold" and "hvbatch").
func (v *visibility) preloadSnapshots(ctx context.Context, wants []snapshotWant) error {
	memberKey := tuple{"m.room.member", v.userID}
	gen := v.s.snapKeyGeneration(v.q)
	type need struct {
		roomID, version string
		hv, member      bool
		// ifSlow: the member key is read only if canSee's fast path
		// does not answer, decided once the history visibility is known.
		ifSlow, always bool
		members        int8 // what snapshotKeys' load would record
	}
	needs := map[int64]*need{}
	for _, w := range wants {
		if w.nid == 0 {
			continue // the empty state: no query either way
		}
		if _, ok := v.atSnapshot[w.nid]; ok {
			continue
		}
		n := needs[w.nid]
		if n == nil {
			n = &need{roomID: w.roomID, version: w.version}
			_, cached := v.s.snapHV.get(w.nid)
			n.hv = !cached
			needs[w.nid] = n
		}
		member := w.member
		if !member && w.unlessFast {
			if hv, ok := v.s.snapHV.get(w.nid); !ok {
				member = true // decided after the read, unless always
				n.ifSlow = !n.always
			} else if fast, err := v.fastPath(ctx, w.roomID, hv); err != nil {
				return err
			} else {
				member = !fast
			}
		} else if member {
			n.always, n.ifSlow = true, false // read whatever the history visibility
		}
		if member && !n.member && !v.s.snapKeys.knows(gen, w.nid, memberKey) {
			// As loadSnapshotKeysOrMembers: a snapshot whose member key
			// was read once on its own has all its members read next,
			// by snapshotKeys itself; the others read the key alone.
			switch v.s.snapKeys.membersOf(gen, w.nid) {
			case 0:
				n.member, n.members = true, membersOneMiss
			case membersTooMany:
				n.member, n.members = true, 0
			}
		}
	}
	var roots []int64
	for nid, n := range needs {
		if n.hv || n.member {
			roots = append(roots, nid)
		}
	}
	if len(roots) == 0 {
		return nil
	}
	picked, err := snapshotKeysOfMany(ctx, v.q, roots, []tuple{{"m.room.history_visibility", ""}, memberKey})
	if err != nil {
		return err
	}
	// The history visibility events, by room version (for parsing).
	hvEvents := map[string][]int64{}
	for _, nid := range roots {
		n := needs[nid]
		if eventNID, ok := picked[nid][tuple{"m.room.history_visibility", ""}]; n.hv && ok {
			hvEvents[n.version] = append(hvEvents[n.version], eventNID)
		}
	}
	hvOf := map[int64]string{} // by event NID
	for version, nids := range hvEvents {
		evs, err := v.s.loadEvents(ctx, v.q, nil, version, nids)
		if err != nil {
			// Left to the per-snapshot reads, which meet the same error
			// only for a snapshot they need.
			return nil
		}
		for _, e := range evs {
			hvOf[e.row.NID] = historyVisibilityOf(e)
		}
	}
	var settled map[int64]bool
	if v.s.shared {
		var nids []int64
		for _, nid := range roots {
			if eventNID, ok := picked[nid][memberKey]; needs[nid].member && ok {
				nids = append(nids, eventNID)
			}
		}
		if settled, err = settledNIDList(ctx, v.q, nids); err != nil {
			return err
		}
	}
	for _, nid := range roots {
		n, got := needs[nid], picked[nid]
		hv, known := v.s.snapHV.get(nid)
		if n.hv {
			hv, known = "shared", true // no history visibility event
			if eventNID, ok := got[tuple{"m.room.history_visibility", ""}]; ok {
				// An event loadEvents did not return is left to the
				// per-snapshot read rather than cached as "".
				hv, known = hvOf[eventNID]
			}
			if known {
				v.s.snapHV.put(nid, hv)
			}
		}
		if n.member && n.ifSlow {
			// Only the snapshot before events: canSee reads the member
			// key there only if its fast path does not answer. Not
			// recorded, the key costs nothing; recorded, it marks the
			// snapshot (membersOneMiss) so that its next reader loads
			// every member. Unknown history visibility: left to canSee.
			fast := true
			if known {
				if fast, err = v.fastPath(ctx, n.roomID, hv); err != nil {
					return err
				}
			}
			n.member = !fast
		}
		if !n.member {
			continue
		}
		_, err := v.s.snapKeys.lookupKeeping(gen, nid, []tuple{memberKey}, func(missing []tuple) (snapshotLoad, error) {
			l := snapshotLoad{got: stateMap{}, members: n.members}
			if eventNID, ok := got[memberKey]; ok {
				l.got[memberKey] = eventNID
			}
			if settled != nil {
				l.keep = func(eventNID int64) bool { return settled[eventNID] }
			}
			return l, nil
		})
		if err != nil {
			return err
		}
	}
	return nil
}

// snapshotChunk bounds the snapshots one snapshotKeysOfMany query reads.
var snapshotChunk = 500 // a variable for tests

// snapshotKeysOfMany is loadSnapshotKeys(nid, keys) for each of nids,
// with one query per snapshotChunk snapshots: each snapshot's chain is
// walked from it (root), deeper (older) levels first so that nearer
// ones override, as querySnapshot does. Every nid has a map in the
// answer, empty when none of keys is in its state.
func snapshotKeysOfMany(ctx context.Context, q storage.Querier, nids []int64, keys []tuple) (map[int64]stateMap, error) {
	out := make(map[int64]stateMap, len(nids))
	for _, nid := range nids {
		out[nid] = stateMap{}
	}
	var where strings.Builder
	args := make([]any, 0, 2*len(keys))
	for i, k := range keys {
		if i > 0 {
			where.WriteString(" OR ")
		}
		fmt.Fprintf(&where, "(e.type = $%d AND e.state_key = $%d)", len(args)+1, len(args)+2)
		args = append(args, k.Type, k.StateKey)
	}
	for start := 0; start < len(nids); start += snapshotChunk {
		in, inArgs := storage.InList("", nids[start:min(start+snapshotChunk, len(nids))])
		rows, err := q.Query(ctx, `WITH RECURSIVE chain(root, nid, parent, lvl) AS (
				SELECT snapshot_nid, snapshot_nid, parent_nid, 0 FROM roomserver_snapshots
				WHERE snapshot_nid IN `+shiftPlaceholders(in, len(args))+`
				UNION ALL
				SELECT c.root, s.snapshot_nid, s.parent_nid, c.lvl + 1 FROM roomserver_snapshots s JOIN chain c ON s.snapshot_nid = c.parent
			)
			SELECT c.root, e.type, e.state_key, e.event_nid FROM chain c
			JOIN roomserver_snapshot_entries e ON e.snapshot_nid = c.nid
			WHERE `+where.String()+` ORDER BY c.root, c.lvl DESC`, append(append([]any{}, args...), inArgs...)...)
		if err != nil {
			return nil, fmt.Errorf("loading snapshots: %w", err)
		}
		for rows.Next() {
			var root, eventNID int64
			var t tuple
			if err := rows.Scan(&root, &t.Type, &t.StateKey, &eventNID); err != nil {
				rows.Close()
				return nil, err
			}
			out[root][t] = eventNID
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return nil, err
		}
	}
	return out, nil
}
