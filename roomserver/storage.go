package roomserver

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/myelin-chat/myelin/internal/mxerr"
	"github.com/myelin-chat/myelin/storage"
)

// tuple is a state key: (event type, state key).
type tuple struct{ Type, StateKey string }

// stateMap maps each state key to the event NID holding it.
type stateMap map[tuple]int64

// maxSnapshotChain bounds how many deltas a snapshot read walks; past it
// the next snapshot is written in full.
const maxSnapshotChain = 32

// roomRow is a row of roomserver_rooms.
type roomRow struct {
	RoomID          string
	Version         string
	CurrentSnapshot int64
	Extremities     []string
	MaxDepth        int64
	// Partial is true while the room has partial state (a row in
	// roomserver_partial_state_rooms); see partial_state.go.
	Partial bool
}

func loadRoom(ctx context.Context, q storage.Querier, roomID string) (*roomRow, error) {
	r := &roomRow{RoomID: roomID}
	var ext string
	err := q.QueryRow(ctx, `SELECT room_version, current_snapshot, extremities, max_depth,
		EXISTS (SELECT 1 FROM roomserver_partial_state_rooms p WHERE p.room_id = roomserver_rooms.room_id)
		FROM roomserver_rooms WHERE room_id = $1`, roomID).Scan(&r.Version, &r.CurrentSnapshot, &ext, &r.MaxDepth, &r.Partial)
	if storage.IsNoRows(err) {
		return nil, mxerr.New(mxerr.NotFound, "unknown room %s", roomID)
	}
	if err != nil {
		return nil, fmt.Errorf("loading room %s: %w", roomID, err)
	}
	if err := json.Unmarshal([]byte(ext), &r.Extremities); err != nil {
		return nil, fmt.Errorf("room %s: bad extremities: %w", roomID, err)
	}
	return r, nil
}

func insertRoom(ctx context.Context, tx storage.Tx, roomID, version string, ts int64) error {
	_, err := tx.Exec(ctx, `INSERT INTO roomserver_rooms (room_id, room_version, created_ts) VALUES ($1, $2, $3)`,
		roomID, version, ts)
	if storage.IsUniqueViolation(err) {
		return mxerr.New(mxerr.RoomInUse, "room %s already exists", roomID)
	}
	return err
}

func saveRoom(ctx context.Context, tx storage.Tx, r *roomRow) error {
	ext, err := extremitiesText(r.Extremities)
	if err != nil {
		return err
	}
	_, err = tx.Exec(ctx, `UPDATE roomserver_rooms SET current_snapshot = $2, extremities = $3, max_depth = $4
		WHERE room_id = $1`, r.RoomID, r.CurrentSnapshot, ext, r.MaxDepth)
	return err
}

// extremitiesText is the text of the extremities column for ids:
// json.Marshal's, byte for byte (saveRoomIf compares the stored text
// with it). IDs that encoding/json writes as themselves between quotes
// (printable ASCII but for the quote, the backslash and the HTML
// characters it escapes), as every event ID of room versions 3 and on
// is, are written directly; any other list is marshalled. Every send
// writes its room's row, and saveRoomIf encodes two lists: reflection
// and a copy to a string for each was ~1 µs of the writer's time per
// message.
func extremitiesText(ids []string) (string, error) {
	if ids == nil {
		return "null", nil
	}
	n := 2
	for _, id := range ids {
		if !marshalsAsItself(id) {
			b, err := json.Marshal(ids)
			return string(b), err
		}
		n += len(id) + 3
	}
	var b strings.Builder
	b.Grow(n)
	b.WriteByte('[')
	for i, id := range ids {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteByte('"')
		b.WriteString(id)
		b.WriteByte('"')
	}
	b.WriteByte(']')
	return b.String(), nil
}

// marshalsAsItself reports whether json.Marshal writes s as s between
// quotes.
func marshalsAsItself(s string) bool {
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c < 0x20 || c > 0x7e, c == '"', c == '\\', c == '<', c == '>', c == '&':
			return false
		}
	}
	return true
}

// saveRoomIf is saveRoom for a write that must refuse unless the stored
// row is still was (a room without partial state): it updates the row
// only where every column still holds was's value and returns
// errPipelineBroken when none did. The stored extremities are compared
// as the text saveRoom writes for them (the only writer of that column);
// a row equal in meaning but not in text is refused too, which only
// costs a rebuild.
func saveRoomIf(ctx context.Context, tx storage.Tx, r, was *roomRow) error {
	if was.Partial {
		return errors.New("roomserver: saveRoomIf on a room with partial state")
	}
	ext, err := extremitiesText(r.Extremities)
	if err != nil {
		return err
	}
	wasExt, err := extremitiesText(was.Extremities)
	if err != nil {
		return err
	}
	res, err := tx.Exec(ctx, `UPDATE roomserver_rooms SET current_snapshot = $2, extremities = $3, max_depth = $4
		WHERE room_id = $1 AND room_version = $5 AND current_snapshot = $6 AND extremities = $7 AND max_depth = $8
		AND NOT EXISTS (SELECT 1 FROM roomserver_partial_state_rooms p WHERE p.room_id = $1)`,
		r.RoomID, r.CurrentSnapshot, ext, r.MaxDepth, was.Version, was.CurrentSnapshot, wasExt, was.MaxDepth)
	if err != nil {
		return err
	}
	if n, err := res.RowsAffected(); err != nil {
		return err
	} else if n != 1 {
		return errPipelineBroken
	}
	return nil
}

// eventRow is a row of roomserver_events.
type eventRow struct {
	NID             int64
	EventID         string
	RoomID          string
	Type            string
	StateKey        *string
	Sender          string
	Membership      *string
	Depth           int64
	OriginServerTS  int64
	Redacts         *string
	JSON            string
	Rejected        bool
	SoftFailed      bool
	RedactedBecause *string
	StateBefore     int64
	StateAfter      int64
	// TxnDevice and TxnID are the client transaction ID a local send
	// came with (both nil otherwise): written by insertEvent, not read
	// back by eventColumns (lookupTxn, TxnIDs and TxnIDsOfEvents read
	// them where they are wanted).
	TxnDevice, TxnID *string
	// TxnRedacts is, for a redaction sent through PUT /redact with a
	// transaction ID, the event ID its path names (nil otherwise): with
	// the type, the part of the endpoint's path the transaction ID is
	// scoped to (lookupTxn, migration 015).
	TxnRedacts *string
}

const eventColumns = `event_nid, event_id, room_id, type, state_key, sender, membership, depth,
	origin_server_ts, redacts, json, rejected, soft_failed, redacted_because, state_before, state_after`

func scanEvent(sc interface{ Scan(...any) error }) (*eventRow, error) {
	e := &eventRow{}
	err := sc.Scan(&e.NID, &e.EventID, &e.RoomID, &e.Type, &e.StateKey, &e.Sender, &e.Membership, &e.Depth,
		&e.OriginServerTS, &e.Redacts, &e.JSON, &e.Rejected, &e.SoftFailed, &e.RedactedBecause, &e.StateBefore, &e.StateAfter)
	return e, err
}

// pgStreamLock serialises stream allocation on PostgreSQL so positions
// become visible in order: a reader that has seen position N has seen
// every position below it. (SQLite has one writer already.)
const pgStreamLock = 4242101

// insertEventQuery writes one event row. On PostgreSQL the new event_nid
// comes back through RETURNING; on SQLite the statement runs as an Exec
// and the row's key is the connection's last insert rowid (event_nid is
// the table's INTEGER PRIMARY KEY, so the two are the same number, and
// the table has no triggers to insert other rows in between). Every send
// runs this statement on the group-commit writer, one message after
// another: with RETURNING SQLite collects the returned row in a temporary
// table and database/sql reads it back through a Rows, which made the
// insert ~7 µs (a third) slower per row than the same INSERT as an Exec
// (docs/benchmarks.md, "send8").
const insertEventQuery = `INSERT INTO roomserver_events (event_id, room_id, type, state_key, sender, membership,
		depth, origin_server_ts, redacts, json, rejected, soft_failed, state_before, state_after, txn_device, txn_id, txn_redacts)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)`

const insertEventReturningQuery = insertEventQuery + ` RETURNING event_nid`

func (s *Server) insertEvent(ctx context.Context, tx storage.Tx, e *eventRow) (int64, error) {
	args := []any{e.EventID, e.RoomID, e.Type, e.StateKey, e.Sender, e.Membership, e.Depth, e.OriginServerTS, e.Redacts,
		e.JSON, e.Rejected, e.SoftFailed, e.StateBefore, e.StateAfter, e.TxnDevice, e.TxnID, e.TxnRedacts}
	var err error
	if s.db.Engine() == storage.Postgres {
		if _, err = tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, pgStreamLock); err != nil {
			return 0, err
		}
		err = tx.QueryRow(ctx, insertEventReturningQuery, args...).Scan(&e.NID)
	} else {
		var res sql.Result
		if res, err = tx.Exec(ctx, insertEventQuery, args...); err == nil {
			e.NID, err = res.LastInsertId()
		}
	}
	if err != nil {
		return 0, fmt.Errorf("inserting event %s: %w", e.EventID, err)
	}
	if err := indexRelationship(ctx, tx, e); err != nil { // relationships.go (MSC2836)
		return 0, err
	}
	if err := indexAnnotation(ctx, tx, e); err != nil { // annotations.go
		return 0, err
	}
	return e.NID, nil
}

func eventRowByID(ctx context.Context, q storage.Querier, eventID string) (*eventRow, error) {
	e, err := scanEvent(q.QueryRow(ctx, `SELECT `+eventColumns+` FROM roomserver_events WHERE event_id = $1`, eventID))
	if storage.IsNoRows(err) {
		return nil, mxerr.New(mxerr.NotFound, "unknown event %s", eventID)
	}
	return e, err
}

func queryEventRows(ctx context.Context, q storage.Querier, query string, args ...any) ([]*eventRow, error) {
	rows, err := q.Query(ctx, query, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []*eventRow
	for rows.Next() {
		e, err := scanEvent(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, e)
	}
	return out, rows.Err()
}

// eventRowsByNID loads events by NID, in the order given.
func eventRowsByNID(ctx context.Context, q storage.Querier, nids []int64) ([]*eventRow, error) {
	if len(nids) == 0 {
		return nil, nil
	}
	byNID, err := eventRowsIn(ctx, q, "event_nid", nids, func(r *eventRow) int64 { return r.NID })
	if err != nil {
		return nil, err
	}
	out := make([]*eventRow, 0, len(nids))
	for _, nid := range nids {
		if r, ok := byNID[nid]; ok {
			out = append(out, r)
		}
	}
	return out, nil
}

// eventRowsByID loads events by ID; unknown IDs are left out.
func eventRowsByID(ctx context.Context, q storage.Querier, ids []string) (map[string]*eventRow, error) {
	return eventRowsIn(ctx, q, "event_id", ids, func(r *eventRow) string { return r.EventID })
}

// eventRowsIn loads the events whose column is one of keys, 500 keys to a
// query, by key (column's value, as key reads it from a row).
func eventRowsIn[K comparable](ctx context.Context, q storage.Querier, column string, keys []K, key func(*eventRow) K) (map[K]*eventRow, error) {
	out := make(map[K]*eventRow, len(keys))
	const chunk = 500
	for start := 0; start < len(keys); start += chunk {
		part := keys[start:min(start+chunk, len(keys))]
		query, args := storage.InList(`SELECT `+eventColumns+` FROM roomserver_events WHERE `+column+` IN `, part)
		rows, err := queryEventRows(ctx, q, query, args...)
		if err != nil {
			return nil, err
		}
		for _, r := range rows {
			out[key(r)] = r
		}
	}
	return out, nil
}

// loadSnapshot returns the state of snapshot nid (empty for 0).
func loadSnapshot(ctx context.Context, q storage.Querier, nid int64) (stateMap, error) {
	if nid == 0 {
		return stateMap{}, nil
	}
	return querySnapshot(ctx, q, nid, "")
}

// loadSnapshotKeys returns only the given keys of snapshot nid.
func loadSnapshotKeys(ctx context.Context, q storage.Querier, nid int64, keys []tuple) (stateMap, error) {
	if nid == 0 || len(keys) == 0 {
		return stateMap{}, nil
	}
	var b strings.Builder
	var args []any
	for i, k := range keys {
		if i > 0 {
			b.WriteString(" OR ")
		}
		fmt.Fprintf(&b, "(e.type = $%d AND e.state_key = $%d)", len(args)+2, len(args)+3)
		args = append(args, k.Type, k.StateKey)
	}
	return querySnapshot(ctx, q, nid, "WHERE "+b.String(), args...)
}

// querySnapshot reads the entries of snapshot nid ($1) and its ancestors
// that match where (an optional WHERE clause over e, whose placeholders
// for args start at $2), deeper (older) levels first so that nearer ones
// override.
func querySnapshot(ctx context.Context, q storage.Querier, nid int64, where string, args ...any) (stateMap, error) {
	out, _, err := querySnapshotLimit(ctx, q, nid, where, 0, args...)
	return out, err
}

// querySnapshotLimit is querySnapshot reading at most limit+1 rows (all
// when limit is 0); it also returns how many it read, so that more than
// limit means the answer is cut short.
func querySnapshotLimit(ctx context.Context, q storage.Querier, nid int64, where string, limit int, args ...any) (stateMap, int, error) {
	limitClause := ""
	if limit > 0 {
		limitClause = " LIMIT " + strconv.Itoa(limit+1)
	}
	rows, err := q.Query(ctx, `WITH RECURSIVE chain(nid, parent, lvl) AS (
			SELECT snapshot_nid, parent_nid, 0 FROM roomserver_snapshots WHERE snapshot_nid = $1
			UNION ALL
			SELECT s.snapshot_nid, s.parent_nid, c.lvl + 1 FROM roomserver_snapshots s JOIN chain c ON s.snapshot_nid = c.parent
		)
		SELECT e.type, e.state_key, e.event_nid FROM chain c
		JOIN roomserver_snapshot_entries e ON e.snapshot_nid = c.nid
		`+where+` ORDER BY c.lvl DESC`+limitClause, append([]any{nid}, args...)...)
	if err != nil {
		return nil, 0, fmt.Errorf("loading snapshot %d: %w", nid, err)
	}
	defer rows.Close()
	out := stateMap{}
	n := 0
	for rows.Next() {
		var t tuple
		var eventNID int64
		if err := rows.Scan(&t.Type, &t.StateKey, &eventNID); err != nil {
			return nil, 0, err
		}
		out[t] = eventNID
		n++
	}
	return out, n, rows.Err()
}

// writeSnapshot stores state as a snapshot. When state equals the
// parent's, the parent is shared and nothing is written; otherwise only
// the changed entries are written as a delta on parent, unless entries
// were removed or the chain is long, when the snapshot is written whole.
func writeSnapshot(ctx context.Context, tx storage.Tx, roomID string, parent int64, parentState, state stateMap) (int64, error) {
	delta := stateMap{}
	removed := false
	for k, v := range state {
		if parentState[k] != v {
			delta[k] = v
		}
	}
	for k := range parentState {
		if _, ok := state[k]; !ok {
			removed = true
			break
		}
	}
	if parent != 0 && len(delta) == 0 && !removed {
		return parent, nil
	}
	chainLen := int64(0)
	if parent != 0 && !removed {
		if err := tx.QueryRow(ctx, `SELECT chain_len FROM roomserver_snapshots WHERE snapshot_nid = $1`, parent).Scan(&chainLen); err != nil {
			return 0, fmt.Errorf("loading snapshot %d: %w", parent, err)
		}
		chainLen++
	}
	var parentArg any
	entries := delta
	if parent == 0 || removed || chainLen >= maxSnapshotChain {
		chainLen, entries = 0, state
	} else {
		parentArg = parent
	}
	var nid int64
	if err := tx.QueryRow(ctx, `INSERT INTO roomserver_snapshots (room_id, parent_nid, chain_len) VALUES ($1, $2, $3)
		RETURNING snapshot_nid`, roomID, parentArg, chainLen).Scan(&nid); err != nil {
		return 0, fmt.Errorf("inserting snapshot: %w", err)
	}
	keys := sortedTuples(entries)
	for _, k := range keys {
		if _, err := tx.Exec(ctx, `INSERT INTO roomserver_snapshot_entries (snapshot_nid, type, state_key, event_nid)
			VALUES ($1, $2, $3, $4)`, nid, k.Type, k.StateKey, entries[k]); err != nil {
			return 0, fmt.Errorf("inserting snapshot entry: %w", err)
		}
	}
	return nid, nil
}

// sortedTuples returns m's keys in compareTuples's order.
func sortedTuples(m stateMap) []tuple {
	keys := make([]tuple, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	// slices.SortFunc, not sort.Slice: sort.Slice's reflection-built
	// swapper and closure cost three allocations per call, and every send sorts twice
	// (its auth events when building and when authorising it).
	slices.SortFunc(keys, compareTuples)
	return keys
}

// compareTuples orders state keys by event type, then state key.
func compareTuples(a, b tuple) int {
	if c := strings.Compare(a.Type, b.Type); c != 0 {
		return c
	}
	return strings.Compare(a.StateKey, b.StateKey)
}

// updateCurrentState brings roomserver_current_state from old to state,
// a change made at room stream position pos: the position of the event
// whose storing makes it, or 0 when no event does (a resync's end, the
// completion of a stretch of partial state), and the change then takes a
// position of its own (allocateStreamPos), notified after the commit.
// Each changed entry records the position (stream_pos), so that /sync
// tells it once, in position order, after any token below it
// (StateDelta). A change that the event at pos does not show — one
// without an event, or entries set to other events (a state reset, e.g.
// a fork resolved back to older events) or removed — is also recorded in
// roomserver_state_changes, where the room stream's readers
// (RoomsWithEvents, StreamTouched, its head) find it.
// Spec: client-server-api, "GET /_matrix/client/v3/sync" (state: the
// updates to the state since the token).
func (s *Server) updateCurrentState(ctx context.Context, tx storage.Tx, roomID string, old, state stateMap, rows map[int64]*eventRow, pos int64) error {
	var removed, set []tuple
	for k := range old {
		if _, ok := state[k]; !ok {
			removed = append(removed, k)
		}
	}
	for _, k := range sortedTuples(state) {
		if old[k] != state[k] {
			set = append(set, k)
		}
	}
	if len(removed) == 0 && len(set) == 0 {
		return nil
	}
	s.forgetMembersAt(tx, roomID)
	// unseen: keys changed otherwise than to the event at pos.
	unseen := removed
	for _, k := range set {
		if state[k] != pos {
			unseen = append(unseen, k)
		}
	}
	if pos == 0 {
		var err error
		if pos, err = s.allocateStreamPos(ctx, tx); err != nil {
			return err
		}
		s.notifyAfter(tx, pos)
	}
	// Of the members whose entry changes otherwise than to the event at
	// pos (a state reset), those joined before: the JoinsEndedHook is
	// told of those the change leaves not joined.
	var resetMembers []string
	for _, k := range unseen {
		if k.Type == "m.room.member" {
			resetMembers = append(resetMembers, k.StateKey)
		}
	}
	joinedBefore, err := s.joinedAmong(ctx, tx, roomID, resetMembers)
	if err != nil {
		return err
	}
	for _, k := range removed {
		if _, err := tx.Exec(ctx, `DELETE FROM roomserver_current_state WHERE room_id = $1 AND type = $2 AND state_key = $3`,
			roomID, k.Type, k.StateKey); err != nil {
			return err
		}
	}
	for _, k := range set {
		nid := state[k]
		row := rows[nid]
		if row == nil {
			return fmt.Errorf("current state: event NID %d not loaded", nid)
		}
		if _, err := tx.Exec(ctx, `INSERT INTO roomserver_current_state (room_id, type, state_key, event_nid, event_id, membership, stream_pos)
			VALUES ($1, $2, $3, $4, $5, $6, $7)
			ON CONFLICT (room_id, type, state_key) DO UPDATE SET event_nid = excluded.event_nid,
				event_id = excluded.event_id, membership = excluded.membership, stream_pos = excluded.stream_pos`,
			roomID, k.Type, k.StateKey, nid, row.EventID, row.Membership, pos); err != nil {
			return err
		}
	}
	if err := s.guestAccessChanged(ctx, tx, roomID, set, removed); err != nil {
		return err
	}
	if err := s.joinsEnded(ctx, tx, roomID, joinedBefore, state, rows); err != nil {
		return err
	}
	if len(unseen) == 0 {
		return nil
	}
	members := []string{""}
	for _, k := range unseen {
		if k.Type == "m.room.member" && !slices.Contains(members, k.StateKey) {
			members = append(members, k.StateKey)
		}
	}
	for _, member := range members {
		if _, err := tx.Exec(ctx, `INSERT INTO roomserver_state_changes (stream_pos, member, room_id) VALUES ($1, $2, $3)
			ON CONFLICT (stream_pos, member) DO NOTHING`, pos, member, roomID); err != nil {
			return err
		}
	}
	return nil
}

// allocateStreamPos takes the next room stream position for a change
// without an event of its own: positions are the events' NIDs, so it
// takes one from their sequence (AUTOINCREMENT on SQLite, a sequence on
// PostgreSQL: neither hands a NID out twice, even once its row is gone)
// by inserting a placeholder row and deleting it in the same
// transaction, which no reader sees. On PostgreSQL it takes the stream
// lock as insertEvent does, so positions still become visible in order.
// One SQL text for both engines (DESIGN.md, "Storage").
func (s *Server) allocateStreamPos(ctx context.Context, tx storage.Tx) (int64, error) {
	if s.db.Engine() == storage.Postgres {
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, pgStreamLock); err != nil {
			return 0, err
		}
	}
	var pos int64
	if err := tx.QueryRow(ctx, `INSERT INTO roomserver_events (event_id, room_id, type, sender, depth, origin_server_ts, json)
		VALUES ('', '', '', '', 0, 0, '') RETURNING event_nid`).Scan(&pos); err != nil {
		return 0, fmt.Errorf("allocating a stream position: %w", err)
	}
	if _, err := tx.Exec(ctx, `DELETE FROM roomserver_events WHERE event_nid = $1`, pos); err != nil {
		return 0, fmt.Errorf("allocating a stream position: %w", err)
	}
	return pos, nil
}

// streamHeadQuery reads the room stream's head: its latest event or
// current-state change (roomserver_state_changes).
const streamHeadQuery = `SELECT COALESCE(MAX(pos), 0) FROM (
	SELECT MAX(event_nid) AS pos FROM roomserver_events
	UNION ALL SELECT MAX(stream_pos) AS pos FROM roomserver_state_changes) heads`

// currentStateNIDs reads the event NIDs of chosen current state keys.
func currentStateNIDs(ctx context.Context, q storage.Querier, roomID string, keys []tuple) (stateMap, error) {
	out := stateMap{}
	for _, k := range keys {
		var nid int64
		err := q.QueryRow(ctx, `SELECT event_nid FROM roomserver_current_state WHERE room_id = $1 AND type = $2 AND state_key = $3`,
			roomID, k.Type, k.StateKey).Scan(&nid)
		if storage.IsNoRows(err) {
			continue
		}
		if err != nil {
			return nil, err
		}
		out[k] = nid
	}
	return out, nil
}

// lookupTxn returns the event userID sent in roomID with txn, "" if none,
// through the same endpoint: PUT /send/{evType} (redacts "") or, for a
// redaction, PUT /redact/{redacts} (the txn_redacts of its row; a
// redaction sent through /send has none, whatever its content.redacts).
// The partial unique index roomserver_events_txn (migrations 013, 015)
// answers it; txn_id = $1 implies the index's txn_id IS NOT NULL on
// both engines.
// Spec: client-server-api, "Transaction identifiers" (scoped to a device
// and an endpoint; a retransmission has the path of the first request).
func lookupTxn(ctx context.Context, q storage.Querier, roomID, userID, evType, redacts string, txn *TxnID) (string, error) {
	var eventID string
	err := q.QueryRow(ctx, `SELECT event_id FROM roomserver_events
		WHERE txn_id = $1 AND txn_device = $2 AND sender = $3 AND room_id = $4 AND type = $5 AND COALESCE(txn_redacts, '') = $6`,
		txn.TxnID, txn.DeviceID, userID, roomID, evType, redacts).Scan(&eventID)
	if storage.IsNoRows(err) {
		return "", nil
	}
	return eventID, err
}

// eventCache holds parsed events by NID and by ID. Bounded, in two
// generations of at most max/2 entries each: entries go into the current
// one; when it is full it becomes the old one and the previous old one is
// let go. A lookup that finds an entry in the old generation moves it to
// the current one, so the events read again and again (a room's state, the
// latest messages) survive a fill, and only what nobody read for a whole
// generation is thrown to the collector — a little at a time, rather than
// the whole cache at once with every hot entry missing afterwards.
//
// A key lives in at most one generation. An entry is replaced when its
// event is redacted (put), and drop removes it from both.
type eventCache struct {
	mu  sync.Mutex
	max int
	// cur takes every new entry; old is searched after it (guarded by mu).
	cur, old eventGeneration
	// gen counts drops (guarded by mu): a read that began before a drop
	// may hold the dropped row, so it is not cached (putLoaded).
	gen uint64
}

// eventGeneration is one generation of the event cache. Its two maps
// normally hold the same entries; each is bounded by the cache's max/2.
type eventGeneration struct {
	byNID map[int64]cachedEvent
	byID  map[string]cachedEvent
}

// cachedEvent is an entry of the event cache with the generation it was
// stored at: a read whose snapshot was taken at an earlier generation
// may not see that row yet (snapshot_read.go), so it is not served one.
// An entry keeps its stamp when it moves to the current generation.
type cachedEvent struct {
	e   *loadedEvent
	gen uint64
}

func newEventCache(max int) *eventCache {
	return &eventCache{max: max, cur: newEventGeneration(), old: newEventGeneration()}
}

func newEventGeneration() eventGeneration {
	return eventGeneration{byNID: make(map[int64]cachedEvent), byID: make(map[string]cachedEvent)}
}

// getNID returns the entry of event NID nid if it was stored at
// generation seen or before (eventsSeen), else nil.
func (c *eventCache) getNID(nid int64, seen uint64) *loadedEvent {
	c.mu.Lock()
	defer c.mu.Unlock()
	ce, ok := c.cur.byNID[nid]
	if !ok {
		if ce, ok = c.old.byNID[nid]; ok {
			c.promote(ce)
		}
	}
	if ok && ce.gen <= seen {
		return ce.e
	}
	return nil
}

// getID is getNID by event ID.
func (c *eventCache) getID(id string, seen uint64) *loadedEvent {
	c.mu.Lock()
	defer c.mu.Unlock()
	ce, ok := c.cur.byID[id]
	if !ok {
		if ce, ok = c.old.byID[id]; ok {
			c.promote(ce)
		}
	}
	if ok && ce.gen <= seen {
		return ce.e
	}
	return nil
}

// promote moves ce, found in the old generation, to the current one,
// stamp unchanged. Each of its keys moves only if the old generation
// holds ce itself under it, and never replaces the current generation's
// entry: a key stays in one generation, the newer entry wins.
func (c *eventCache) promote(ce cachedEvent) {
	nid, id := ce.e.row.NID, ce.e.row.EventID
	moveNID := c.old.byNID[nid].e == ce.e
	moveID := c.old.byID[id].e == ce.e
	if moveNID {
		delete(c.old.byNID, nid)
	}
	if moveID {
		delete(c.old.byID, id)
	}
	c.makeRoom()
	if _, ok := c.cur.byNID[nid]; moveNID && !ok {
		c.cur.byNID[nid] = ce
	}
	if _, ok := c.cur.byID[id]; moveID && !ok {
		c.cur.byID[id] = ce
	}
}

// makeRoom turns a full current generation into the old one. The old
// one's maps, emptied, become the new current one: their storage is
// reused rather than allocated again.
func (c *eventCache) makeRoom() {
	if half := max(c.max/2, 1); len(c.cur.byNID) < half && len(c.cur.byID) < half {
		return
	}
	clear(c.old.byNID)
	clear(c.old.byID)
	c.cur, c.old = c.old, c.cur
}

// size is the number of entries by NID in both generations (tests).
func (c *eventCache) size() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.cur.byNID) + len(c.old.byNID)
}

func (c *eventCache) put(e *loadedEvent) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.putLocked(e)
}

func (c *eventCache) putLocked(e *loadedEvent) {
	nid, id := e.row.NID, e.row.EventID
	_, hasNID := c.cur.byNID[nid]
	if _, hasID := c.cur.byID[id]; !hasNID || !hasID {
		c.makeRoom()
	}
	// After makeRoom: the keys may just have moved to the old generation.
	delete(c.old.byNID, nid)
	delete(c.old.byID, id)
	ce := cachedEvent{e: e, gen: c.gen}
	c.cur.byNID[nid] = ce
	c.cur.byID[id] = ce
}

func (c *eventCache) drop(nid int64, id string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.dropLocked(nid, id)
	c.gen++
}

func (c *eventCache) dropLocked(nid int64, id string) {
	delete(c.cur.byNID, nid)
	delete(c.cur.byID, id)
	delete(c.old.byNID, nid)
	delete(c.old.byID, id)
}

// dropRows is drop for each of rows, under one lock (a resync's OnCommit
// hook runs on the SQLite writer, which must not linger).
func (c *eventCache) dropRows(rows []*eventRow) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, r := range rows {
		c.dropLocked(r.NID, r.EventID)
	}
	c.gen++
}

// generation is read before loading rows from the database, for
// putLoaded.
func (c *eventCache) generation() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.gen
}

// putLoaded caches e, read from the database after generation returned
// gen, unless an entry was dropped since (e may be that stale row).
func (c *eventCache) putLoaded(e *loadedEvent, gen uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.gen == gen {
		c.putLocked(e)
	}
}

// versionCache maps room IDs to room versions. A room's version never
// changes once its row is committed, so entries are never stale; only
// committed reads fill it (committedRoomVersion). Bounded: when full it
// is emptied.
type versionCache struct {
	mu   sync.Mutex
	max  int
	byID map[string]string // guarded by mu
}

func newVersionCache(max int) *versionCache {
	return &versionCache{max: max, byID: make(map[string]string)}
}

func (c *versionCache) get(roomID string) (string, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	v, ok := c.byID[roomID]
	return v, ok
}

func (c *versionCache) put(roomID, version string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.byID) >= c.max {
		c.byID = make(map[string]string)
	}
	c.byID[roomID] = version
}

// nullString returns nil for "" so the column stores NULL.
func nullString(s string) *string {
	if s == "" {
		return nil
	}
	return &s
}

// snapshotKeyCache remembers, per committed state snapshot, the event NID
// at each state key looked up (0: the key is not in the state). A
// snapshot never changes once committed, so an entry is never stale; it
// saves the per-key queries of building and auth-checking every event on
// the same current state. Only reads outside a write transaction fill it
// (a transaction's own snapshots may roll back and their NIDs be reused).
// Bounded: when full it is emptied.
type snapshotKeyCache struct {
	mu   sync.Mutex
	max  int
	byID map[int64]stateMap // guarded by mu
	// members says, per snapshot (guarded by mu), that one member key
	// of it has been loaded on its own (membersOneMiss), that byID holds
	// every m.room.member entry of it (membersAll: a member key it lacks
	// is not in the state) or that the snapshot has more than
	// maxMemberPreload of them (membersTooMany: load keys one by one).
	members map[int64]int8
	// entries counts the keys held in byID (guarded by mu): a preload
	// of all members can hold hundreds per snapshot, so the bound is on
	// keys as well as on snapshots.
	entries int
	// gen counts invalidations (guarded by mu): what a lookup loaded
	// while one happened is not kept.
	gen uint64
}

// Values of snapshotKeyCache.members.
const (
	membersOneMiss int8 = 2
	membersAll     int8 = 1
	membersTooMany int8 = -1
)

// maxSnapshotKeyEntries bounds the keys the snapshot key cache holds in
// all (about 100 bytes each); past it the cache is emptied, as past max
// snapshots.
const maxSnapshotKeyEntries = 32 << 10

// reset empties the cache; c.mu is held.
func (c *snapshotKeyCache) reset() {
	c.byID = make(map[int64]stateMap)
	c.members = make(map[int64]int8)
	c.entries = 0
}

// invalidate forgets everything: an event's NID moved (outlier
// promotion, outlier_promotion.go), so snapshots hold it under a new NID.
func (c *snapshotKeyCache) invalidate() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.reset()
	c.gen++
}

// generation is read before loading entries from the database, for
// lookupKeeping.
func (c *snapshotKeyCache) generation() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.gen
}

func newSnapshotKeyCache(max int) *snapshotKeyCache {
	c := &snapshotKeyCache{max: max}
	c.reset()
	return c
}

// membersOf reports what the cache knows of snapshot nid's member
// entries: membersAll, membersTooMany or 0 (nothing).
func (c *snapshotKeyCache) membersOf(gen uint64, nid int64) int8 {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.gen != gen {
		return 0
	}
	return c.members[nid]
}

// knows reports whether the cache answers snapshot nid's key k (as
// lookupKeeping would without loading) for a read at generation gen.
func (c *snapshotKeyCache) knows(gen uint64, nid int64, k tuple) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.gen != gen {
		return false
	}
	if _, ok := c.byID[nid][k]; ok {
		return true
	}
	return c.members[nid] == membersAll && k.Type == "m.room.member"
}

// lookup returns snapshot nid's entries at keys, calling load (outside the
// lock) for the keys it does not know yet.
func (c *snapshotKeyCache) lookup(nid int64, keys []tuple, load func(missing []tuple) (stateMap, error)) (stateMap, error) {
	return c.lookupKeeping(c.generation(), nid, keys, func(missing []tuple) (snapshotLoad, error) {
		got, err := load(missing)
		return snapshotLoad{got: got}, err
	})
}

// snapshotLoad is what a lookupKeeping load found.
type snapshotLoad struct {
	// got holds the entries found: those of the missing keys that are in
	// the state, and possibly more keys of the snapshot (all its
	// members, with members set), which are remembered too.
	got stateMap
	// keep says which of the event NIDs found may be remembered (nil:
	// all of them); the entries of the others are this read's answer
	// only (cache_shared.go).
	keep func(eventNID int64) bool
	// members, when not 0, is what the load learnt of the snapshot's
	// member entries (membersAll: got holds every one of them).
	members int8
}

// lookupKeeping is lookup whose load also says which of the event NIDs
// it found may be remembered, and may load more than it was asked
// (snapshotLoad). gen is the cache's generation when the read load uses
// began (snapshot_read.go): what it loads is not remembered if the
// cache was invalidated since.
func (c *snapshotKeyCache) lookupKeeping(gen uint64, nid int64, keys []tuple, load func(missing []tuple) (snapshotLoad, error)) (stateMap, error) {
	out := make(stateMap, len(keys))
	var missing []tuple
	c.mu.Lock()
	var known stateMap
	allMembers := false
	if c.gen == gen {
		// Every entry was stored at c.gen (invalidate empties the
		// cache), after the last move of a NID; a read whose snapshot
		// is older (gen < c.gen) may not see that move, so it reads
		// every key from its snapshot (snapshot_read.go).
		known = c.byID[nid]
		allMembers = c.members[nid] == membersAll
	}
	for _, k := range keys {
		if v, ok := known[k]; ok {
			if v != 0 {
				out[k] = v
			}
		} else if !(allMembers && k.Type == "m.room.member") {
			missing = append(missing, k)
		}
	}
	c.mu.Unlock()
	if len(missing) == 0 {
		return out, nil
	}
	l, err := load(missing)
	if err != nil {
		return nil, err
	}
	for _, k := range missing {
		if v := l.got[k]; v != 0 {
			out[k] = v
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.gen != gen {
		// Invalidated while loading: got may hold a moved NID. It is
		// still this read's answer (the read began before the move),
		// but it is not remembered.
		return out, nil
	}
	if len(c.byID) >= c.max || c.entries+len(l.got)+len(missing) > maxSnapshotKeyEntries {
		c.reset()
	}
	known = c.byID[nid]
	if known == nil {
		known = make(stateMap, len(missing))
		c.byID[nid] = known
	}
	remember := func(k tuple, v int64) bool {
		if v != 0 && l.keep != nil && !l.keep(v) {
			return false
		}
		if _, ok := known[k]; !ok {
			c.entries++
		}
		known[k] = v
		return true
	}
	members := l.members
	for k, v := range l.got {
		if !remember(k, v) && k.Type == "m.room.member" && members == membersAll {
			members = 0 // one member entry is not remembered: not all are
		}
	}
	for _, k := range missing {
		if l.got[k] == 0 {
			remember(k, 0)
		}
	}
	if members != 0 && c.members[nid] != membersAll {
		c.members[nid] = members
	}
	return out, nil
}
