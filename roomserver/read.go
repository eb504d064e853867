package roomserver

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync"

	"github.com/myelin-chat/myelin/internal/mxerr"
	"github.com/myelin-chat/myelin/storage"
)

// visibility decides history visibility for one user across many
// events, caching what events share (snapshots, memberships). Its q
// reads committed data only: never a write transaction.
// Spec: client-server-api, "Room History Visibility", "Server behaviour".
type visibility struct {
	s      *Server
	q      storage.Querier
	userID string
	// atSnapshot caches (history_visibility, membership) per snapshot.
	atSnapshot map[int64][2]string
	// lastJoin caches, per room, the NID of the user's latest accepted
	// join (0 if none); current caches their current membership.
	lastJoin map[string]int64
	current  map[string]string
	// ownRejections shows the user their own rejection of an invite (or
	// withdrawal of a knock). Only timelines set it: the event, not the
	// room state around it, is what the user may then see.
	ownRejections bool
}

func (s *Server) newVisibility(q storage.Querier, userID string) *visibility {
	return &visibility{s: s, q: q, userID: userID, atSnapshot: map[int64][2]string{},
		lastJoin: map[string]int64{}, current: map[string]string{}}
}

// at returns the history visibility and the user's membership in
// snapshot nid of room.
func (v *visibility) at(ctx context.Context, version string, nid int64) (hv, membership string, err error) {
	if got, ok := v.atSnapshot[nid]; ok {
		return got[0], got[1], nil
	}
	// The history visibility is the same for every user: the shared
	// answer (snapHV) spares each reader of the snapshot — every listener
	// woken by one message — loading and parsing its event again.
	if hv, err = v.historyVisibilityAt(ctx, version, nid); err != nil {
		return "", "", err
	}
	k := tuple{"m.room.member", v.userID}
	// v.q only ever reads committed data (visibility is for reads), so
	// the snapshot key cache may answer and be filled.
	picked, err := v.s.snapshotKeys(ctx, v.q, nid, []tuple{k})
	if err != nil {
		return "", "", err
	}
	if eventNID, ok := picked[k]; ok {
		evs, err := v.s.loadEvents(ctx, v.q, nil, version, []int64{eventNID})
		if err != nil {
			return "", "", err
		}
		if evs[0].row.Membership != nil {
			membership = *evs[0].row.Membership
		}
	}
	v.atSnapshot[nid] = [2]string{hv, membership}
	return hv, membership, nil
}

// currentMembership is the user's current membership in roomID, read
// through v.q: a visibility inside a Read holds a pooled connection, and
// taking a second one here (Server.Membership uses the pool) could
// exhaust the pool with every holder waiting for another.
func (v *visibility) currentMembership(ctx context.Context, roomID string) (string, error) {
	if cur, ok := v.current[roomID]; ok {
		return cur, nil
	}
	var m *string
	err := v.q.QueryRow(ctx, `SELECT membership FROM roomserver_current_state
		WHERE room_id = $1 AND type = 'm.room.member' AND state_key = $2`, roomID, v.userID).Scan(&m)
	if err != nil && !storage.IsNoRows(err) {
		return "", err
	}
	cur := ""
	if m != nil {
		cur = *m
	}
	v.current[roomID] = cur
	return cur, nil
}

// historyVisibilityAt is the history visibility of snapshot nid, as at
// returns it, without the user's membership.
func (v *visibility) historyVisibilityAt(ctx context.Context, version string, nid int64) (string, error) {
	if got, ok := v.atSnapshot[nid]; ok {
		return got[0], nil
	}
	// Every reader of an event asks this of the same snapshots: the
	// answer is shared (v.q reads committed data only, and a committed
	// snapshot never changes).
	if hv, ok := v.s.snapHV.get(nid); ok {
		return hv, nil
	}
	k := tuple{"m.room.history_visibility", ""}
	picked, err := v.s.snapshotKeys(ctx, v.q, nid, []tuple{k})
	if err != nil {
		return "", err
	}
	hv := "shared" // no history visibility event
	if eventNID, ok := picked[k]; ok {
		evs, err := v.s.loadEvents(ctx, v.q, nil, version, []int64{eventNID})
		if err != nil {
			return "", err
		}
		hv = historyVisibilityOf(evs[0])
	}
	v.s.snapHV.put(nid, hv)
	return hv, nil
}

// historyVisibilityOf is the history visibility an m.room.history_visibility
// event sets, "shared" for an unknown or unreadable value.
func historyVisibilityOf(e *loadedEvent) string {
	hv := "shared"
	if h, err := e.pdu.HistoryVisibility(); err == nil {
		hv = string(h)
	}
	switch hv {
	case "world_readable", "shared", "invited", "joined":
	default:
		hv = "shared" // unknown values mean shared
	}
	return hv
}

// snapshotHVCache maps committed state snapshot NIDs to their history
// visibility as historyVisibilityAt returns it. A committed snapshot
// never changes, and only reads of committed data (visibility) fill it,
// so an entry is never stale (a rolled-back transaction's snapshot NIDs
// are never seen by those reads). Bounded: when full it is emptied.
type snapshotHVCache struct {
	mu    sync.Mutex
	max   int
	byNID map[int64]string // guarded by mu
}

func newSnapshotHVCache(max int) *snapshotHVCache {
	return &snapshotHVCache{max: max, byNID: make(map[int64]string)}
}

func (c *snapshotHVCache) get(nid int64) (string, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	hv, ok := c.byNID[nid]
	return hv, ok
}

func (c *snapshotHVCache) put(nid int64, hv string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.byNID) >= c.max {
		c.byNID = make(map[int64]string)
	}
	c.byNID[nid] = hv
}

func (v *visibility) allows(ctx context.Context, e *loadedEvent, hv, membership string) (bool, error) {
	switch {
	case hv == "world_readable", membership == "join":
		return true, nil
	case hv == "invited" && membership == "invite":
		return true, nil
	case hv == "shared":
		// Allowed if the user joined at any point after the event.
		cur, err := v.currentMembership(ctx, e.row.RoomID)
		if err != nil {
			return false, err
		}
		if cur == "join" {
			return true, nil
		}
		last, ok := v.lastJoin[e.row.RoomID]
		if !ok {
			err := v.q.QueryRow(ctx, `SELECT COALESCE(MAX(event_nid), 0) FROM roomserver_events
				WHERE type = 'm.room.member' AND state_key = $1 AND room_id = $2 AND membership = 'join'
				AND NOT rejected AND NOT soft_failed`, v.userID, e.row.RoomID).Scan(&last)
			if err != nil {
				return false, err
			}
			v.lastJoin[e.row.RoomID] = last
		}
		return last > e.row.NID, nil
	}
	return false, nil
}

// fastPath reports whether canSee's fast path answers (the event is
// visible) for an event of roomID whose state before it has history
// visibility hv: world_readable, or shared with the user joined now.
// Only then does canSee not read the user's membership at that state;
// preloadSnapshots asks it too, to preload the membership only where
// canSee reads it.
func (v *visibility) fastPath(ctx context.Context, roomID, hv string) (bool, error) {
	switch hv {
	case "world_readable":
		return true, nil
	case "shared":
		cur, err := v.currentMembership(ctx, roomID)
		return err == nil && cur == "join", err
	}
	return false, nil
}

// canSee applies the rules to one stored event. Rejected and soft-failed
// events are never shown.
func (v *visibility) canSee(ctx context.Context, version string, e *loadedEvent) (bool, error) {
	if e.row.Rejected || e.row.SoftFailed {
		return false, nil
	}
	// Fast path: under world_readable, or shared with the user joined
	// now, every event is visible. That needs only the snapshot's history
	// visibility, which every user shares (and the snapshot cache keeps),
	// not the user's own membership at the snapshot: a room full of new
	// members has a new snapshot per join, and reading each one per
	// reader made a busy room's timeline quadratic.
	if hv, err := v.historyVisibilityAt(ctx, version, e.row.StateBefore); err != nil {
		return false, err
	} else if fast, err := v.fastPath(ctx, e.row.RoomID, hv); err != nil || fast {
		return fast, err
	}
	hv, membership, err := v.at(ctx, version, e.row.StateBefore)
	if err != nil {
		return false, err
	}
	ok, err := v.allows(ctx, e, hv, membership)
	if err != nil || ok {
		return ok, err
	}
	// History visibility events and the user's own membership events are
	// visible if the state before or after allows it.
	if e.row.StateAfter != e.row.StateBefore && (e.row.Type == "m.room.history_visibility" ||
		(e.row.Type == "m.room.member" && e.row.StateKey != nil && *e.row.StateKey == v.userID)) {
		hv, membership, err := v.at(ctx, version, e.row.StateAfter)
		if err != nil {
			return false, err
		}
		if v.ownRejections && e.row.Type == "m.room.member" && membership == "leave" {
			// The user's own rejection of an invite or withdrawal of a
			// knock: without it the room could not leave their /sync
			// (it would stay under invite). Synapse shows it too.
			// Complement: TestRoomsInvite "Invited user can reject
			// invite for empty room", TestLeaveEventInviteRejection.
			_, before, err := v.at(ctx, version, e.row.StateBefore)
			if err != nil {
				return false, err
			}
			if before == "invite" || before == "knock" {
				return true, nil
			}
		}
		return v.allows(ctx, e, hv, membership)
	}
	return false, nil
}

// loadByID loads one event with its room version.
func (s *Server) loadByID(ctx context.Context, q storage.Querier, eventID string) (*loadedEvent, string, error) {
	got, err := s.loadEventsByID(ctx, q, nil, []string{eventID})
	if err != nil {
		return nil, "", err
	}
	e, ok := got[eventID]
	if !ok {
		return nil, "", mxerr.New(mxerr.NotFound, "event not found")
	}
	room, err := loadRoom(ctx, q, e.row.RoomID)
	if err != nil {
		return nil, "", err
	}
	return e, room.Version, nil
}

// CanSee reports whether userID may see eventID.
func (s *Server) CanSee(ctx context.Context, userID, eventID string) (bool, error) {
	e, version, err := s.loadByID(ctx, s.db.Reader(), eventID)
	if mxerr.Is(err, mxerr.NotFound) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	return s.newVisibility(s.db.Reader(), userID).canSee(ctx, version, e)
}

// Event returns an event userID may see; M_NOT_FOUND otherwise (not
// M_FORBIDDEN, so existence does not leak).
func (s *Server) Event(ctx context.Context, userID, eventID string) (*Event, error) {
	e, version, err := s.loadByID(ctx, s.db.Reader(), eventID)
	if err != nil {
		return nil, err
	}
	ok, err := s.newVisibility(s.db.Reader(), userID).canSee(ctx, version, e)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, mxerr.New(mxerr.NotFound, "event not found")
	}
	return toEvent(e), nil
}

// stateSnapshotFor returns the snapshot of room userID may read: the
// current state for members and world-readable rooms, the state after
// their leave or ban for former members; M_FORBIDDEN otherwise.
// Spec: client-server-api, "GET /rooms/{roomId}/state".
func (s *Server) stateSnapshotFor(ctx context.Context, q storage.Querier, userID string, room *roomRow) (int64, error) {
	memberNID, err := currentStateNIDs(ctx, q, room.RoomID, []tuple{{"m.room.member", userID}})
	if err != nil {
		return 0, err
	}
	if nid, ok := memberNID[tuple{"m.room.member", userID}]; ok {
		evs, err := s.loadEvents(ctx, q, nil, room.Version, []int64{nid})
		if err != nil {
			return 0, err
		}
		switch m := evs[0].row.Membership; {
		case m != nil && *m == "join":
			return room.CurrentSnapshot, nil
		case m != nil && (*m == "leave" || *m == "ban"):
			// A former member who forgot the room reads it as a
			// non-member: "After this API is called, however, a user
			// will no longer be able to retrieve history for this room."
			// (POST /rooms/{roomId}/forget).
			var forgotten int
			err := q.QueryRow(ctx, `SELECT COUNT(*) FROM roomserver_forgotten
				WHERE user_id = $1 AND room_id = $2`, userID, room.RoomID).Scan(&forgotten)
			if err != nil {
				return 0, err
			}
			if forgotten > 0 {
				break
			}
			hv, _, err := s.newVisibility(q, userID).at(ctx, room.Version, room.CurrentSnapshot)
			if err != nil {
				return 0, err
			}
			if hv == "world_readable" {
				return room.CurrentSnapshot, nil
			}
			return evs[0].row.StateAfter, nil
		}
	}
	hv, _, err := s.newVisibility(q, userID).at(ctx, room.Version, room.CurrentSnapshot)
	if err != nil {
		return 0, err
	}
	if hv == "world_readable" {
		return room.CurrentSnapshot, nil
	}
	return 0, mxerr.New(mxerr.Forbidden, "you are not a member of this room")
}

func (s *Server) snapshotEvents(ctx context.Context, q storage.Querier, version string, nid int64) ([]*Event, error) {
	state, err := loadSnapshot(ctx, q, nid)
	if err != nil {
		return nil, err
	}
	return s.stateEvents(ctx, q, version, state)
}

// currentStateMap reads a room's current state from the indexed
// current-state table: the state of the room's current snapshot when read
// in the same Read as the room row, without walking the snapshot chain.
func currentStateMap(ctx context.Context, q storage.Querier, roomID string) (stateMap, error) {
	rows, err := q.Query(ctx, `SELECT type, state_key, event_nid FROM roomserver_current_state WHERE room_id = $1`, roomID)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := stateMap{}
	for rows.Next() {
		var k tuple
		var nid int64
		if err := rows.Scan(&k.Type, &k.StateKey, &nid); err != nil {
			return nil, err
		}
		out[k] = nid
	}
	return out, rows.Err()
}

// stateEvents loads state's events, sorted by (type, state_key).
func (s *Server) stateEvents(ctx context.Context, q storage.Querier, version string, state stateMap) ([]*Event, error) {
	nids := make([]int64, 0, len(state))
	for _, k := range sortedTuples(state) {
		nids = append(nids, state[k])
	}
	return s.loadClientEvents(ctx, q, nil, version, nids)
}

// CurrentState returns the room state userID may read (see
// stateSnapshotFor), sorted by (type, state_key).
func (s *Server) CurrentState(ctx context.Context, userID, roomID string) ([]*Event, error) {
	var out []*Event
	err := s.read(ctx, func(q storage.Querier) error {
		room, err := loadRoom(ctx, q, roomID)
		if err != nil {
			return err
		}
		nid, err := s.stateSnapshotFor(ctx, q, userID, room)
		if err != nil {
			return err
		}
		if nid == room.CurrentSnapshot {
			// Members (device lists, on every woken /sync) land here.
			state, err := currentStateMap(ctx, q, roomID)
			if err != nil {
				return err
			}
			out, err = s.stateEvents(ctx, q, room.Version, state)
			return err
		}
		out, err = s.snapshotEvents(ctx, q, room.Version, nid)
		return err
	})
	return out, err
}

// CurrentStateEvent returns one state event userID may read.
func (s *Server) CurrentStateEvent(ctx context.Context, userID, roomID, eventType, stateKey string) (*Event, error) {
	var out *Event
	err := s.read(ctx, func(q storage.Querier) error {
		room, err := loadRoom(ctx, q, roomID)
		if err != nil {
			return err
		}
		nid, err := s.stateSnapshotFor(ctx, q, userID, room)
		if err != nil {
			return err
		}
		k := tuple{eventType, stateKey}
		picked, err := loadSnapshotKeys(ctx, q, nid, []tuple{k})
		if err != nil {
			return err
		}
		eventNID, ok := picked[k]
		if !ok {
			return mxerr.New(mxerr.NotFound, "no %s state with key %q", eventType, stateKey)
		}
		evs, err := s.loadEvents(ctx, q, nil, room.Version, []int64{eventNID})
		if err != nil {
			return err
		}
		out = toEvent(evs[0])
		return nil
	})
	return out, err
}

// StateAt returns the state before and after an event userID may see.
func (s *Server) StateAt(ctx context.Context, userID, eventID string) (*StateAtEvent, error) {
	out := &StateAtEvent{}
	err := s.read(ctx, func(q storage.Querier) error {
		e, version, err := s.loadByID(ctx, q, eventID)
		if err != nil {
			return err
		}
		ok, err := s.newVisibility(q, userID).canSee(ctx, version, e)
		if err != nil {
			return err
		}
		if !ok {
			return mxerr.New(mxerr.NotFound, "event not found")
		}
		if out.Before, err = s.snapshotEvents(ctx, q, version, e.row.StateBefore); err != nil {
			return err
		}
		out.After, err = s.snapshotEvents(ctx, q, version, e.row.StateAfter)
		return err
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// Membership returns userID's current membership in roomID ("" if none).
func (s *Server) Membership(ctx context.Context, roomID, userID string) (string, error) {
	var m *string
	err := s.db.Reader().QueryRow(ctx, `SELECT membership FROM roomserver_current_state
		WHERE room_id = $1 AND type = 'm.room.member' AND state_key = $2`, roomID, userID).Scan(&m)
	if storage.IsNoRows(err) || m == nil {
		return "", nil
	}
	return *m, err
}

// JoinedRooms lists the rooms userID is joined to.
func (s *Server) JoinedRooms(ctx context.Context, userID string) ([]string, error) {
	return s.RoomsForUser(ctx, userID, "join")
}

// RoomsForUser lists the rooms where userID's current membership is
// membership; forgotten rooms are left out.
func (s *Server) RoomsForUser(ctx context.Context, userID, membership string) ([]string, error) {
	return storage.QueryColumn[string](ctx, s.db.Reader(), `SELECT c.room_id FROM roomserver_current_state c
		WHERE c.type = 'm.room.member' AND c.state_key = $1 AND c.membership = $2
		AND NOT EXISTS (SELECT 1 FROM roomserver_forgotten f WHERE f.user_id = $1 AND f.room_id = c.room_id)
		ORDER BY c.room_id`, userID, membership)
}

// Members returns the m.room.member events of the state userID may read,
// optionally only those with the given membership.
func (s *Server) Members(ctx context.Context, userID, roomID, membership string) ([]*Event, error) {
	state, err := s.CurrentState(ctx, userID, roomID)
	if err != nil {
		return nil, err
	}
	var out []*Event
	for _, e := range state {
		if e.Type == "m.room.member" && (membership == "" || e.Membership == membership) {
			out = append(out, e)
		}
	}
	return out, nil
}

// EventsInRange returns the timeline events in stream positions
// (From, To] that UserID may see, in rooms RoomIDs (default: every room
// the user has a membership in), at most Limit. End is the position read
// up to, which advances even when everything read was filtered out.
func (s *Server) EventsInRange(ctx context.Context, req RangeRequest) (*RangeResponse, error) {
	limit := req.Limit
	if limit <= 0 || limit > 1000 {
		limit = 100
	}
	to := req.To
	if to <= 0 {
		to = 1<<63 - 1
	}
	out := &RangeResponse{End: req.From}
	err := s.read(ctx, func(q storage.Querier) error {
		rooms := req.RoomIDs
		if len(rooms) == 0 {
			joined, err := storage.QueryColumn[string](ctx, q, `SELECT room_id FROM roomserver_current_state
				WHERE type = 'm.room.member' AND state_key = $1`, req.UserID)
			if err != nil {
				return err
			}
			rooms = append(rooms, joined...)
		}
		if len(rooms) == 0 {
			if to != 1<<63-1 {
				out.End = to
			}
			return nil
		}
		query, args := storage.InList(`SELECT `+eventColumns+` FROM roomserver_events WHERE room_id IN `, rooms)
		n := len(args)
		query += fmt.Sprintf(` AND event_nid > $%d AND event_nid <= $%d AND NOT rejected AND NOT soft_failed
			ORDER BY event_nid LIMIT $%d`, n+1, n+2, n+3)
		args = append(args, req.From, to, limit)
		rows, err := queryEventRows(ctx, q, query, args...)
		if err != nil {
			return err
		}
		if out.Events, err = s.filterVisible(ctx, q, req.UserID, rows); err != nil {
			return err
		}
		if len(rows) > 0 {
			out.End = rows[len(rows)-1].NID
		}
		if len(rows) < limit && to != 1<<63-1 {
			out.End = to
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// filterVisible parses rows and keeps those userID may see. q reads
// committed data only (every caller's read transaction), so room
// versions come from the version cache.
func (s *Server) filterVisible(ctx context.Context, q storage.Querier, userID string, rows []*eventRow) ([]*Event, error) {
	return s.filterVisibleFor(ctx, s.newVisibility(q, userID), rows)
}

// filterVisibleFor is filterVisible with a visibility the caller may
// have told more (RecentRequest.JoinedAtTo).
func (s *Server) filterVisibleFor(ctx context.Context, vis *visibility, rows []*eventRow) ([]*Event, error) {
	vis.ownRejections = true
	versions := map[string]string{}
	var out []*Event
	for _, r := range rows {
		version, ok := versions[r.RoomID]
		if !ok {
			var err error
			if version, err = s.committedRoomVersion(ctx, vis.q, r.RoomID); err != nil {
				return nil, err
			}
			versions[r.RoomID] = version
		}
		e := s.events.getNID(r.NID, eventsSeen(vis.q))
		switch {
		case e == nil || e.row.EventID != r.EventID || (e.row.RedactedBecause == nil) != (r.RedactedBecause == nil):
			var err error
			if e, err = parseRow(version, r); err != nil {
				return nil, err
			}
		case e.row != r:
			// The cached parse (same bytes: same redaction status), with
			// the row just read: in split mode another process may have
			// rewritten its other columns (cache_shared.go).
			e = &loadedEvent{row: r, pdu: e.pdu}
		}
		ok, err := vis.canSee(ctx, version, e)
		if err != nil {
			return nil, err
		}
		if ok {
			out = append(out, toEvent(e))
		}
	}
	return out, nil
}

// topoToken is a position in a room's topological order:
// "t<depth>_<stream>". Spec: client-server-api, "Pagination".
type topoToken struct{ depth, stream int64 }

func (t topoToken) String() string { return "t" + itoa(t.depth) + "_" + itoa(t.stream) }

func parseTopoToken(s string) (topoToken, error) {
	rest, ok := strings.CutPrefix(s, "t")
	d, st, ok2 := strings.Cut(rest, "_")
	if !ok || !ok2 {
		return topoToken{}, mxerr.New(mxerr.InvalidParam, "invalid pagination token %q", s)
	}
	depth, err1 := strconv.ParseInt(d, 10, 64)
	stream, err2 := strconv.ParseInt(st, 10, 64)
	if err1 != nil || err2 != nil {
		return topoToken{}, mxerr.New(mxerr.InvalidParam, "invalid pagination token %q", s)
	}
	return topoToken{depth, stream}, nil
}

// pageFrom is where a /messages page starts: a topological position
// (a "t" token), or a stream position (an "s" token, as /sync's
// prev_batch): backwards, the events at or before it; forwards, those
// after it; either way in topological order.
type pageFrom struct {
	stream bool
	topo   topoToken
	pos    int64
}

func parsePageFrom(s string) (pageFrom, error) {
	if rest, ok := strings.CutPrefix(s, "s"); ok {
		pos, err := strconv.ParseInt(rest, 10, 64)
		if err != nil || itoa(pos) != rest {
			return pageFrom{}, mxerr.New(mxerr.InvalidParam, "invalid pagination token %q", s)
		}
		return pageFrom{stream: true, pos: pos}, nil
	}
	t, err := parseTopoToken(s)
	return pageFrom{topo: t}, err
}

func (f pageFrom) String() string {
	if f.stream {
		return StreamToken(f.pos)
	}
	return f.topo.String()
}

// where is the SQL condition for the events after f in direction dir,
// with f's values as $2 and $3.
func (f pageFrom) where(dir Direction) (string, []any) {
	switch {
	case f.stream && dir == Forward:
		return `event_nid > $2`, []any{f.pos}
	case f.stream:
		return `event_nid <= $2`, []any{f.pos}
	case dir == Forward:
		return `(depth > $2 OR (depth = $2 AND event_nid > $3))`, []any{f.topo.depth, f.topo.stream}
	default:
		return `(depth < $2 OR (depth = $2 AND event_nid < $3))`, []any{f.topo.depth, f.topo.stream}
	}
}

// Messages pages through a room's timeline in topological order (depth,
// then stream position), returning what UserID may see. End is set even
// when every event in the page was filtered out (security case 22).
// Spec: client-server-api, "GET /rooms/{roomId}/messages".
func (s *Server) Messages(ctx context.Context, req MessagesRequest) (*MessagesResponse, error) {
	limit := req.Limit
	if limit <= 0 || limit > 1000 {
		limit = 10
	}
	var from pageFrom
	switch {
	case req.From != "":
		var err error
		if from, err = parsePageFrom(req.From); err != nil {
			return nil, err
		}
	case req.Dir == Forward:
		from = pageFrom{topo: topoToken{0, 0}}
	default:
		from = pageFrom{topo: topoToken{1<<63 - 1, 1<<63 - 1}}
	}
	if req.Dir == Backward {
		s.backfillIfAtStart(ctx, req.RoomID, from, limit) // federation_backfill.go
	}
	out := &MessagesResponse{Start: from.String(), End: from.String()}
	err := s.read(ctx, func(q storage.Querier) error {
		if _, err := loadRoom(ctx, q, req.RoomID); err != nil {
			return err
		}
		cond, args := from.where(req.Dir)
		query := `SELECT ` + eventColumns + ` FROM roomserver_events WHERE room_id = $1 AND NOT rejected AND NOT soft_failed AND ` + cond
		if req.Dir == Forward {
			query += ` ORDER BY depth, event_nid`
		} else {
			query += ` ORDER BY depth DESC, event_nid DESC`
		}
		query += fmt.Sprintf(` LIMIT $%d`, len(args)+2)
		rows, err := queryEventRows(ctx, q, query, append(append([]any{req.RoomID}, args...), limit)...)
		if err != nil {
			return err
		}
		if len(rows) > 0 {
			last := rows[len(rows)-1]
			out.End = topoToken{last.Depth, last.NID}.String()
		}
		out.Events, err = s.filterVisible(ctx, q, req.UserID, rows)
		return err
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// JoinedUsers lists the users (local and remote) joined to roomID now,
// for the application service sender's interest test.
func (s *Server) JoinedUsers(ctx context.Context, roomID string) ([]string, error) {
	return storage.QueryColumn[string](ctx, s.db.Reader(), `SELECT state_key FROM roomserver_current_state
		WHERE room_id = $1 AND type = 'm.room.member' AND membership = 'join'`, roomID)
}
