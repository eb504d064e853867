package roomserver

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/myelin-chat/myelin/storage"
)

// This file holds the reads the sync component needs beyond API: they
// answer from the indexed current state and the event log by position,
// so an initial sync of many rooms never walks history or snapshots.
// Methods that return state without a user ID do no visibility check:
// the caller must already know the user may see the room's current
// state (it is joined), or use the result only for what any invitee may
// see (stripped state).

// MembershipEntry is a user's current membership in one room.
type MembershipEntry struct {
	RoomID     string
	Membership string // join, invite, knock, leave, ban
	EventID    string // the m.room.member event holding it
	// StreamPos is the stream position the membership became current
	// at: its event's, or that of a later change that made the event
	// current again without storing one (updateCurrentState), so a
	// membership that moves is seen after any token below it.
	StreamPos int64
	// Forgotten: the user left and forgot the room. Sync still reports
	// the leave to a client whose token predates it, so other devices
	// learn of it; nothing else of the room is shown.
	Forgotten bool
}

// UserMemberships lists userID's current memberships, forgotten rooms
// marked.
func (s *Server) UserMemberships(ctx context.Context, userID string) ([]MembershipEntry, error) {
	rows, err := s.db.Reader().Query(ctx, `SELECT c.room_id, c.membership, c.event_id, c.stream_pos,
		(SELECT COUNT(*) FROM roomserver_forgotten f WHERE f.user_id = $1 AND f.room_id = c.room_id)
		FROM roomserver_current_state c
		WHERE c.type = 'm.room.member' AND c.state_key = $1 AND c.membership IS NOT NULL`, userID)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []MembershipEntry
	for rows.Next() {
		var m MembershipEntry
		var forgotten int
		if err := rows.Scan(&m.RoomID, &m.Membership, &m.EventID, &m.StreamPos, &forgotten); err != nil {
			return nil, err
		}
		m.Forgotten = forgotten > 0
		out = append(out, m)
	}
	// Sorted here rather than with ORDER BY: every /sync (and every
	// wake-up of a waiting one) reads this, and a SQLite sorter costs
	// more than the indexed lookup itself.
	slices.SortFunc(out, func(a, b MembershipEntry) int { return strings.Compare(a.RoomID, b.RoomID) })
	return out, rows.Err()
}

// ForgottenRooms lists the rooms userID has forgotten (POST /forget),
// held here or not: a room only other servers hold, whose invite or knock
// ended in a leave, can be forgotten too, and UserMemberships, which
// lists the rooms held here, cannot tell it.
func (s *Server) ForgottenRooms(ctx context.Context, userID string) (map[string]bool, error) {
	rows, err := s.db.Reader().Query(ctx, `SELECT room_id FROM roomserver_forgotten WHERE user_id = $1`, userID)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := map[string]bool{}
	for rows.Next() {
		var roomID string
		if err := rows.Scan(&roomID); err != nil {
			return nil, err
		}
		out[roomID] = true
	}
	return out, rows.Err()
}

// RecentRequest asks for the latest timeline events of one room in
// stream positions (From, To].
type RecentRequest struct {
	UserID string
	RoomID string
	From   int64
	To     int64
	Limit  int
	// JoinedAtTo tells that UserID's membership in the room as of stream
	// position To is join (the caller read it; sync's memberships are
	// exact as of its room head). Under "shared" history visibility
	// every event up to To is then visible — the user joined at a
	// point after it was sent — so the user's current membership is not
	// read again. Leave it false when unsure.
	// Spec: client-server-api, "Room History Visibility", "Server
	// behaviour" ("shared": the user joined the room at any point after
	// the event was sent).
	JoinedAtTo bool `json:",omitempty"`
}

// RecentResponse holds up to Limit events in stream order, whether more
// events were left out (Limited), and a /messages token (PrevBatch)
// that pages backwards from the first returned event.
type RecentResponse struct {
	Events    []*Event
	Limited   bool
	PrevBatch string
}

// RecentEvents returns the last Limit events of a room in (From, To]
// that UserID may see.
func (s *Server) RecentEvents(ctx context.Context, req RecentRequest) (*RecentResponse, error) {
	limit := max(req.Limit, 1)
	out := &RecentResponse{}
	err := s.read(ctx, func(q storage.Querier) error {
		rows, err := s.recentRows(ctx, q, req.RoomID, req.From, req.To, limit+1)
		if err != nil {
			return err
		}
		if rows, out.Limited, out.PrevBatch, err = s.recentWindow(ctx, q, rows, limit, req.To); err != nil {
			return err
		}
		vis := s.newVisibility(q, req.UserID)
		if req.JoinedAtTo {
			// v.current is read only under "shared" history visibility
			// (canSee's fast path, allows), where a join at To makes
			// every row (all at or before To) visible.
			vis.current[req.RoomID] = "join"
		}
		out.Events, err = s.filterVisibleFor(ctx, vis, rows)
		return err
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// recentRows returns the rows of a room's last limit accepted events in
// (from, to], newest first. It reads only positions (and redaction
// status) from the table and takes the rows of recent events, the hot
// set, from the event cache: a timeline read does not copy every event's
// JSON out of SQLite again. A cached entry that differs from the table's
// row is stale (rewritten by another process: cache_shared.go,
// recentHit) and read again.
// recentRowsQuery reads a room's ($1) latest events in (from, to] ($2,
// $3), at most $4, newest first. The index
// roomserver_events_room_stream_covering holds every column it reads
// (migration 007): it never reads the table.
const recentRowsQuery = `SELECT event_nid, redacted_because, state_before, state_after FROM roomserver_events
		WHERE room_id = $1 AND event_nid > $2 AND event_nid <= $3 AND NOT rejected AND NOT soft_failed
		ORDER BY event_nid DESC LIMIT $4`

func (s *Server) recentRows(ctx context.Context, q storage.Querier, roomID string, from, to int64, limit int) ([]*eventRow, error) {
	rs, err := q.Query(ctx, recentRowsQuery, roomID, from, to, limit)
	if err != nil {
		return nil, err
	}
	var rows []*eventRow
	var missing []int64
	seen := eventsSeen(q)
	for rs.Next() {
		var nid, before, after int64
		var redactedBecause *string
		if err := rs.Scan(&nid, &redactedBecause, &before, &after); err != nil {
			rs.Close()
			return nil, err
		}
		if r := s.recentHit(nid, seen, redactedBecause != nil, before, after); r != nil {
			rows = append(rows, r)
		} else {
			rows = append(rows, nil)
			missing = append(missing, nid)
		}
	}
	rs.Close()
	if err := rs.Err(); err != nil {
		return nil, err
	}
	if len(missing) == 0 {
		return rows, nil
	}
	loaded, err := eventRowsByNID(ctx, q, missing)
	if err != nil {
		return nil, err
	}
	byNID := make(map[int64]*eventRow, len(loaded))
	for _, r := range loaded {
		byNID[r.NID] = r
	}
	out := rows[:0]
	for _, r := range rows {
		if r == nil {
			if r = byNID[missing[0]]; r == nil {
				return nil, fmt.Errorf("event NID %d vanished", missing[0])
			}
			missing = missing[1:]
		}
		out = append(out, r)
	}
	return out, nil
}

// recentWindow turns the newest limit+1 rows of a room (newest first, as
// recentRows reads them) into a timeline batch: at most limit rows,
// oldest first, starting at the last gap if there is one, with whether
// the batch is limited and the token that pages back from it.
func (s *Server) recentWindow(ctx context.Context, q storage.Querier, rows []*eventRow, limit int, to int64) ([]*eventRow, bool, string, error) {
	limited := false
	if len(rows) > limit {
		limited = true
		rows = rows[:limit]
	}
	slices.Reverse(rows)
	gap, err := s.lastGapEvent(ctx, q, rows)
	if err != nil {
		return nil, false, "", err
	}
	if gap >= 0 {
		// Events before a gap are not continuous with it: the batch
		// starts at the gap and is limited, so clients paginate
		// (and the server backfills) to see what lies between.
		// Spec: client-server-api, "Syncing" ("limited" ... the
		// client may "fill the gap" with /messages).
		limited = true
		rows = rows[gap:]
	}
	// The token pages back from just before the first event in stream
	// order: /messages from it returns the events this server had
	// before that point, newest first, even those whose depth is
	// greater than the first event's (an event that arrives late over
	// federation, Complement's TestNetworkPartitionOrdering).
	if len(rows) > 0 {
		return rows, limited, StreamToken(rows[0].NID - 1), nil
	}
	return rows, limited, StreamToken(to), nil
}

// lastGapEvent returns the index in rows (stream order) of the last
// event received over federation whose prev events are not all in the
// timeline here (it was accepted with state fetched for a gap, or its
// prev events are outliers), -1 when there is none. An event deeper in
// the room than every event before it in rows is history that arrived
// late, not a gap between them and it: it does not count.
// Events sent here always extend the timeline, so only other servers'
// events are looked at.
func (s *Server) lastGapEvent(ctx context.Context, q storage.Querier, rows []*eventRow) (int, error) {
	suffix := ":" + string(s.serverName)
	inBatch := make(map[string]bool, len(rows))
	for _, r := range rows {
		inBatch[r.EventID] = true
	}
	// A prev event in the batch is a timeline event; only the others
	// are looked up, all at once.
	outside := map[int][]string{}
	var ask []string
	for i, r := range rows {
		if strings.HasSuffix(r.Sender, suffix) {
			continue
		}
		for _, p := range prevEventIDsOf(r.JSON) {
			if !inBatch[p] {
				outside[i] = append(outside[i], p)
				ask = append(ask, p)
			}
		}
	}
	if len(ask) == 0 {
		return -1, nil
	}
	query, args := storage.InList(`SELECT event_id FROM roomserver_events WHERE state_after <> 0 AND event_id IN `, ask)
	held, err := storage.QueryColumn[string](ctx, q, query, args...)
	if err != nil {
		return 0, err
	}
	// shallowest[i] is the least depth among rows[:i].
	shallowest := make([]int64, len(rows))
	for i := 1; i < len(rows); i++ {
		shallowest[i] = rows[i-1].Depth
		if i > 1 {
			shallowest[i] = min(shallowest[i], shallowest[i-1])
		}
	}
	for i := len(rows) - 1; i >= 0; i-- {
		if i > 0 && rows[i].Depth < shallowest[i] {
			// Deeper in the room than every event before it in the
			// batch: history that arrived late (get_missing_events
			// brought events held as outliers, promoted to new stream
			// positions: outlier_promotion.go). What lies behind it
			// also lies behind the events before it, so starting the
			// batch here would hide newer events behind old ones
			// (issue 7's three-server flake: a joiner's initial sync
			// showed the room's creation and not the messages after
			// its join).
			continue
		}
		for _, p := range outside[i] {
			if !slices.Contains(held, p) {
				return i, nil
			}
		}
	}
	return -1, nil
}

// StreamToken is a /messages token for a stream position: paging
// backwards from it returns the events at or before that position in
// topological order (depth, then stream position, newest first); paging
// forwards, those after it. Spec: client-server-api, "Syncing"
// (prev_batch) and "GET /rooms/{roomId}/messages".
func StreamToken(streamPos int64) string { return "s" + itoa(streamPos) }

// TopologicalToken is a /messages token for the position (depth, stream
// position): paging backwards from it returns the events before it.
func TopologicalToken(depth, streamPos int64) string {
	return topoToken{depth, streamPos}.String()
}

// IndexedCurrentState returns a room's current state events from the
// indexed current state: all of them, or only those of the given types,
// leaving out m.room.member events when skipMembers is set (lazy-loading
// clients ask for members separately). No visibility check: see the
// note at the top of this file.
func (s *Server) IndexedCurrentState(ctx context.Context, roomID string, types []string, skipMembers bool) ([]*Event, error) {
	query, args := `SELECT event_nid FROM roomserver_current_state WHERE room_id = $1`, []any{roomID}
	if len(types) > 0 {
		in, typeArgs := storage.InList("", types)
		// inList numbers from $1; shift past room_id.
		query += ` AND type IN ` + shiftPlaceholders(in, 1)
		args = append(args, typeArgs...)
	}
	if skipMembers {
		query += ` AND type <> 'm.room.member'`
	}
	return s.currentStateEvents(ctx, roomID, query+` ORDER BY type, state_key`, args...)
}

// IndexedStateKeys returns the current state events of one type with the
// given state keys (those that exist). No visibility check: see the top
// of this file.
func (s *Server) IndexedStateKeys(ctx context.Context, roomID, eventType string, stateKeys []string) ([]*Event, error) {
	if len(stateKeys) == 0 {
		return nil, nil
	}
	if eventType == "m.room.member" && s.memberMemoUsable(ctx) {
		return s.memberEvents(ctx, roomID, stateKeys) // membermemo.go
	}
	in, keyArgs := storage.InList("", stateKeys)
	args := append([]any{roomID, eventType}, keyArgs...)
	return s.currentStateEvents(ctx, roomID, `SELECT event_nid FROM roomserver_current_state
		WHERE room_id = $1 AND type = $2 AND state_key IN `+shiftPlaceholders(in, 2)+` ORDER BY state_key`, args...)
}

// StateDelta returns the current state entries of a room that became
// current at a stream position in (from, to]: the state that changed in
// that range and is still current, whether its event was stored then or
// earlier (a change without an event, a state reset: updateCurrentState).
// No visibility check: see the top of this file.
func (s *Server) StateDelta(ctx context.Context, roomID string, from, to int64) ([]*Event, error) {
	return s.currentStateEvents(ctx, roomID, `SELECT event_nid FROM roomserver_current_state
		WHERE room_id = $1 AND stream_pos > $2 AND stream_pos <= $3 ORDER BY type, state_key`, roomID, from, to)
}

func (s *Server) currentStateEvents(ctx context.Context, roomID, query string, args ...any) ([]*Event, error) {
	var out []*Event
	err := s.read(ctx, func(q storage.Querier) error {
		nids, err := storage.QueryColumn[int64](ctx, q, query, args...)
		if err != nil {
			return err
		}
		out, err = s.eventsOfNIDs(ctx, q, roomID, nids)
		return err
	})
	return out, err
}

// eventsOfNIDs loads the events of roomID with the given NIDs, in order.
func (s *Server) eventsOfNIDs(ctx context.Context, q storage.Querier, roomID string, nids []int64) ([]*Event, error) {
	version, err := s.committedRoomVersion(ctx, q, roomID)
	if err != nil {
		return nil, err
	}
	return s.loadClientEvents(ctx, q, nil, version, nids)
}

// MemberSummary is what a room summary needs: member counts and the
// first members by join order (joined and invited first, then those who
// left or were banned), at most 6 so the caller can drop itself.
type MemberSummary struct {
	Joined, Invited int
	Heroes          []string
}

// RoomMemberSummary reads a room's member counts and hero candidates
// from the indexed current state.
// Spec: client-server-api, "GET /_matrix/client/v3/sync", RoomSummary.
func (s *Server) RoomMemberSummary(ctx context.Context, roomID string) (*MemberSummary, error) {
	out := &MemberSummary{}
	err := s.read(ctx, func(q storage.Querier) error {
		if err := q.QueryRow(ctx, `SELECT
			COALESCE(SUM(CASE WHEN membership = 'join' THEN 1 ELSE 0 END), 0),
			COALESCE(SUM(CASE WHEN membership = 'invite' THEN 1 ELSE 0 END), 0)
			FROM roomserver_current_state WHERE room_id = $1 AND type = 'm.room.member'`, roomID).
			Scan(&out.Joined, &out.Invited); err != nil {
			return err
		}
		for _, memberships := range []string{`('join', 'invite')`, `('leave', 'ban')`} {
			if len(out.Heroes) >= 6 {
				break
			}
			heroes, err := storage.QueryColumn[string](ctx, q, `SELECT state_key FROM roomserver_current_state
				WHERE room_id = $1 AND type = 'm.room.member' AND membership IN `+memberships+`
				ORDER BY event_nid LIMIT $2`, roomID, 6-len(out.Heroes))
			if err != nil {
				return err
			}
			out.Heroes = append(out.Heroes, heroes...)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// StreamTouch is one event of the log, reduced to what decides who must
// be woken: its room and, for membership events, the member.
type StreamTouch struct {
	StreamPos int64
	RoomID    string
	Member    string // state_key of an m.room.member event, else ""
	// Accepted: neither rejected nor soft-failed. Only accepted events
	// wake anyone; the others are listed so that a reader can also tell
	// what RoomsWithEvents would answer for the same window.
	Accepted bool
	State    bool // a state event (state_key present), accepted or not
}

// StreamTouched lists the events in (from, to], accepted or not, at most
// limit, in stream order, without loading their JSON, and with them the
// current-state changes their events do not show (roomserver_state_changes,
// as accepted state touches: one per room and one per member whose
// membership changed) up to the last event listed, or to when fewer than
// limit events were: every touch at a listed position is listed, so a
// reader that goes on from the last position misses none.
func (s *Server) StreamTouched(ctx context.Context, from, to int64, limit int) ([]StreamTouch, error) {
	rows, err := s.db.Reader().Query(ctx, `SELECT event_nid, room_id, type, state_key, NOT rejected AND NOT soft_failed
		FROM roomserver_events WHERE event_nid > $1 AND event_nid <= $2
		ORDER BY event_nid LIMIT $3`, from, to, limit)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []StreamTouch
	for rows.Next() {
		var t StreamTouch
		var typ string
		var stateKey *string
		if err := rows.Scan(&t.StreamPos, &t.RoomID, &typ, &stateKey, &t.Accepted); err != nil {
			return nil, err
		}
		t.State = stateKey != nil
		if typ == "m.room.member" && stateKey != nil {
			t.Member = *stateKey
		}
		out = append(out, t)
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	if len(out) >= limit {
		to = out[len(out)-1].StreamPos
	}
	changes, err := s.stateChanges(ctx, from, to)
	if err != nil || len(changes) == 0 {
		return out, err
	}
	merged := make([]StreamTouch, 0, len(out)+len(changes))
	for len(out) > 0 || len(changes) > 0 {
		if len(changes) == 0 || (len(out) > 0 && out[0].StreamPos <= changes[0].StreamPos) {
			merged, out = append(merged, out[0]), out[1:]
		} else {
			merged, changes = append(merged, changes[0]), changes[1:]
		}
	}
	return merged, nil
}

// stateChanges lists the rows of roomserver_state_changes in (from, to]
// in stream order, as accepted state touches.
func (s *Server) stateChanges(ctx context.Context, from, to int64) ([]StreamTouch, error) {
	rows, err := s.db.Reader().Query(ctx, `SELECT stream_pos, room_id, member FROM roomserver_state_changes
		WHERE stream_pos > $1 AND stream_pos <= $2 ORDER BY stream_pos, member`, from, to)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []StreamTouch
	for rows.Next() {
		t := StreamTouch{Accepted: true, State: true}
		if err := rows.Scan(&t.StreamPos, &t.RoomID, &t.Member); err != nil {
			return nil, err
		}
		out = append(out, t)
	}
	return out, rows.Err()
}

// RoomsWithEvents returns the rooms that have any event (accepted or
// not) or current-state change (roomserver_state_changes) with a stream
// position in (from, to], mapped to whether any of those is a state
// event or change, reading at most limit of them; complete is false
// when there were more, and the caller must then assume every room may
// have news. Incremental sync uses it to skip rooms with nothing new: a
// room's timeline in (from, to] is events of that room in the range, and
// its state changes there (StateDelta) are state events or changes in
// the range.
func (s *Server) RoomsWithEvents(ctx context.Context, from, to int64, limit int) (rooms map[string]bool, complete bool, err error) {
	rows, err := s.db.Reader().Query(ctx, `SELECT room_id, state_key IS NOT NULL FROM roomserver_events
		WHERE event_nid > $1 AND event_nid <= $2 LIMIT $3`, from, to, limit+1)
	if err != nil {
		return nil, false, err
	}
	defer rows.Close()
	rooms = map[string]bool{}
	n := 0
	for rows.Next() {
		var roomID string
		var state bool
		if err := rows.Scan(&roomID, &state); err != nil {
			return nil, false, err
		}
		rooms[roomID] = rooms[roomID] || state
		n++
	}
	if err := rows.Err(); err != nil {
		return nil, false, err
	}
	if n > limit {
		return rooms, false, nil
	}
	changes, err := s.stateChanges(ctx, from, to)
	if err != nil {
		return nil, false, err
	}
	for _, c := range changes {
		rooms[c.RoomID] = true
	}
	return rooms, n+len(changes) <= limit, nil
}

// LatestPositions returns, for each of roomIDs that has any, the stream
// position of its latest accepted event at or before to, counting only
// the given types when types is non-empty. Sync uses it to find rooms
// with news and to order rooms by recency. Current-state changes that no
// event shows (roomserver_state_changes) count as well when types is
// empty, and those of a membership when types holds m.room.member: the
// room has news there too.
func (s *Server) LatestPositions(ctx context.Context, roomIDs []string, to int64, types []string) (map[string]int64, error) {
	out := make(map[string]int64, len(roomIDs))
	changes := len(types) == 0 || slices.Contains(types, "m.room.member")
	const chunk = 400
	for start := 0; start < len(roomIDs); start += chunk {
		part := roomIDs[start:min(start+chunk, len(roomIDs))]
		query, args := storage.InList(`SELECT room_id, MAX(event_nid) FROM roomserver_events WHERE room_id IN `, part)
		args = append(args, to)
		query += ` AND event_nid <= ` + placeholder(len(args)) + ` AND NOT rejected AND NOT soft_failed`
		if len(types) > 0 {
			in, typeArgs := storage.InList("", types)
			query += ` AND type IN ` + shiftPlaceholders(in, len(args))
			args = append(args, typeArgs...)
		}
		if err := s.maxPositions(ctx, out, query+` GROUP BY room_id`, args...); err != nil {
			return nil, err
		}
		if !changes {
			continue
		}
		query, args = storage.InList(`SELECT room_id, MAX(stream_pos) FROM roomserver_state_changes WHERE room_id IN `, part)
		args = append(args, to)
		query += ` AND stream_pos <= ` + placeholder(len(args))
		if len(types) > 0 {
			query += ` AND member <> ''`
		}
		if err := s.maxPositions(ctx, out, query+` GROUP BY room_id`, args...); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// maxPositions raises out[room] to each (room, position) row query reads.
func (s *Server) maxPositions(ctx context.Context, out map[string]int64, query string, args ...any) error {
	rows, err := s.db.Reader().Query(ctx, query, args...)
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
		var id string
		var pos int64
		if err := rows.Scan(&id, &pos); err != nil {
			return err
		}
		out[id] = max(out[id], pos)
	}
	return rows.Err()
}

// TxnIDs maps those of eventIDs (all in roomID) that userID's deviceID sent with a
// transaction ID to that ID, so sync can echo unsigned.transaction_id.
// Spec: client-server-api, "Transaction identifiers".
func (s *Server) TxnIDs(ctx context.Context, roomID, userID, deviceID string, eventIDs []string) (map[string]string, error) {
	out := map[string]string{}
	if len(eventIDs) == 0 || deviceID == "" {
		return out, nil
	}
	// Each event's own row (migration 013), found by its ID.
	query, args := storage.InList(`SELECT event_id, txn_id FROM roomserver_events WHERE event_id IN `, eventIDs)
	args = append(args, roomID, userID, deviceID)
	query += ` AND room_id = ` + placeholder(len(args)-2) + ` AND sender = ` + placeholder(len(args)-1) +
		` AND txn_device = ` + placeholder(len(args)) + ` AND txn_id IS NOT NULL`
	rows, err := s.db.Reader().Query(ctx, query, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	for rows.Next() {
		var eventID, txnID string
		if err := rows.Scan(&eventID, &txnID); err != nil {
			return nil, err
		}
		out[eventID] = txnID
	}
	return out, rows.Err()
}

func placeholder(n int) string { return "$" + itoa(int64(n)) }

// shiftPlaceholders renumbers "$1, $2, ..." in an inList fragment by n.
func shiftPlaceholders(fragment string, n int) string {
	var b []byte
	for i := 0; i < len(fragment); i++ {
		if fragment[i] != '$' {
			b = append(b, fragment[i])
			continue
		}
		j := i + 1
		num := 0
		for j < len(fragment) && fragment[j] >= '0' && fragment[j] <= '9' {
			num = num*10 + int(fragment[j]-'0')
			j++
		}
		b = append(b, placeholder(num+n)...)
		i = j - 1
	}
	return string(b)
}
