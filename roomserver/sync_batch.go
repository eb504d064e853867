package roomserver

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"unsafe"

	"github.com/matrix-org/gomatrixserverlib/spec"
	"github.com/tidwall/gjson"

	"github.com/myelin-chat/myelin/storage"
)

// This file holds batched forms of the sync reads in sync_queries.go: an
// initial sync asks the same few questions of every room the user is
// in, and one query over many rooms costs far less than one per room.
// Each answers exactly what the per-room read answers for each room (the
// sync component's tests compare the two); the notes at the top of
// sync_queries.go about visibility apply to them as well.

// batchRooms is how many rooms one batched query names: the per-room
// sub-selects of RecentEventsOfRooms are joined by UNION ALL, and
// SQLite allows at most 500 terms in a compound select.
const batchRooms = 100

// roomChunks splits roomIDs into pieces of at most batchRooms.
func roomChunks(roomIDs []string) [][]string {
	var out [][]string
	for start := 0; start < len(roomIDs); start += batchRooms {
		out = append(out, roomIDs[start:min(start+batchRooms, len(roomIDs))])
	}
	return out
}

// RecentRoomsRequest asks for the latest timeline events of several
// rooms, each as RecentEvents would answer RecentRequest{UserID, RoomID,
// From, To, Limit}.
type RecentRoomsRequest struct {
	UserID  string
	RoomIDs []string
	From    int64
	To      int64
	Limit   int
}

// RecentRooms answers RecentRoomsRequest.
type RecentRooms struct {
	Rooms map[string]*RecentResponse // by room ID, every room asked for
	// Memberships is MembershipsAt(UserID, the IDs of every event in
	// Rooms), read with the events.
	Memberships map[string]string
}

// RecentEventsOfRooms is RecentEvents for many rooms in one read: the
// answer maps each room of the request to what RecentEvents returns for
// it. One query per batchRooms rooms reads the positions (each room's
// part is its own indexed, limited sub-select), the rows come from the
// event cache or one query, and one visibility check runs over all.
func (s *Server) RecentEventsOfRooms(ctx context.Context, req RecentRoomsRequest) (*RecentRooms, error) {
	limit := max(req.Limit, 1)
	out := &RecentRooms{Rooms: make(map[string]*RecentResponse, len(req.RoomIDs)), Memberships: map[string]string{}}
	err := s.read(ctx, func(q storage.Querier) error {
		byRoom := make(map[string][]*eventRow, len(req.RoomIDs))
		for _, part := range roomChunks(req.RoomIDs) {
			if err := s.recentRowsOfRooms(ctx, q, part, req.From, req.To, limit+1, byRoom); err != nil {
				return err
			}
		}
		vis := s.newVisibility(q, req.UserID)
		vis.ownRejections = true
		if err := vis.preloadCurrent(ctx, req.RoomIDs); err != nil {
			return err
		}
		// Each room's window first, then the snapshots its events are
		// checked against read for all rooms at once (preloadSnapshots),
		// then each room's visibility check.
		var wants []snapshotWant
		for _, roomID := range req.RoomIDs {
			rr := &RecentResponse{}
			rows := byRoom[roomID]
			var err error
			if rows, rr.Limited, rr.PrevBatch, err = s.recentWindow(ctx, q, rows, limit, req.To); err != nil {
				return err
			}
			byRoom[roomID] = rows
			out.Rooms[roomID] = rr
			if len(rows) == 0 {
				continue
			}
			version, err := s.committedRoomVersion(ctx, q, roomID)
			if err != nil {
				return err
			}
			// canSee reads the state before each event, and the user's
			// membership in it where its fast path does not answer (and
			// the state after a history visibility or own member event);
			// filterVisibleWith reads the membership in the state after
			// every event it keeps.
			for _, r := range rows {
				if r.Rejected || r.SoftFailed {
					continue // canSee reads nothing
				}
				wants = append(wants, snapshotWant{nid: r.StateBefore, roomID: roomID, version: version, unlessFast: true},
					snapshotWant{nid: r.StateAfter, roomID: roomID, version: version, member: true})
			}
		}
		if err := vis.preloadSnapshots(ctx, wants); err != nil {
			return err
		}
		for _, roomID := range req.RoomIDs {
			rr := out.Rooms[roomID]
			var err error
			if rr.Events, err = s.filterVisibleWith(ctx, q, vis, roomID, byRoom[roomID], out.Memberships); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// recentRowsOfRooms is recentRows for each of roomIDs (at most
// batchRooms), adding each room's rows, newest first, to byRoom.
func (s *Server) recentRowsOfRooms(ctx context.Context, q storage.Querier, roomIDs []string, from, to int64, limit int, byRoom map[string][]*eventRow) error {
	args := make([]any, 0, 3+len(roomIDs))
	args = append(args, from, to, limit)
	for _, roomID := range roomIDs {
		args = append(args, roomID)
	}
	rs, err := q.Query(ctx, recentRowsOfRoomsQuery(len(roomIDs)), args...)
	if err != nil {
		return err
	}
	type pending struct {
		roomID string
		index  int
		nid    int64
	}
	seen := eventsSeen(q)
	var missing []pending
	for rs.Next() {
		var roomID string
		var nid, before, after int64
		var redactedBecause *string
		if err := rs.Scan(&roomID, &nid, &redactedBecause, &before, &after); err != nil {
			rs.Close()
			return err
		}
		if r := s.recentHit(nid, seen, redactedBecause != nil, before, after); r != nil {
			byRoom[roomID] = append(byRoom[roomID], r)
		} else {
			missing = append(missing, pending{roomID, len(byRoom[roomID]), nid})
			byRoom[roomID] = append(byRoom[roomID], nil)
		}
	}
	rs.Close()
	if err := rs.Err(); err != nil {
		return err
	}
	if len(missing) == 0 {
		return nil
	}
	nids := make([]int64, len(missing))
	for i, m := range missing {
		nids[i] = m.nid
	}
	loaded, err := eventRowsByNID(ctx, q, nids)
	if err != nil {
		return err
	}
	got := make(map[int64]*eventRow, len(loaded))
	for _, r := range loaded {
		got[r.NID] = r
	}
	for _, m := range missing {
		r := got[m.nid]
		if r == nil {
			return fmt.Errorf("event NID %d vanished", m.nid)
		}
		byRoom[m.roomID][m.index] = r
	}
	return nil
}

// recentRowsOfRoomsQuery is recentRowsOfRooms' query for n rooms ($4
// onwards; $1, $2, $3 are from, to and the limit). Each term is the
// per-room query of recentRows, so each reads only the index
// roomserver_events_room_stream_covering and stops after limit rows.
func recentRowsOfRoomsQuery(n int) string {
	b := make([]byte, 0, n*260)
	for i := range n {
		if i > 0 {
			b = append(b, " UNION ALL "...)
		}
		b = append(b, `SELECT * FROM (SELECT room_id, event_nid, redacted_because, state_before, state_after FROM roomserver_events
			WHERE room_id = $`...)
		b = strconv.AppendInt(b, int64(i+4), 10)
		b = append(b, ` AND event_nid > $1 AND event_nid <= $2 AND NOT rejected AND NOT soft_failed
			ORDER BY event_nid DESC LIMIT $3) AS r`...)
		b = strconv.AppendInt(b, int64(i), 10)
	}
	return string(b)
}

// preloadCurrent reads the user's current membership in every one of
// roomIDs with one query per batchRooms rooms, as currentMembership
// would one room at a time (through the same read).
func (v *visibility) preloadCurrent(ctx context.Context, roomIDs []string) error {
	for _, part := range roomChunks(roomIDs) {
		in, args := storage.InList("", part)
		query := `SELECT room_id, membership FROM roomserver_current_state
			WHERE type = 'm.room.member' AND state_key = $1 AND room_id IN ` + shiftPlaceholders(in, 1)
		rows, err := v.q.Query(ctx, query, append([]any{v.userID}, args...)...)
		if err != nil {
			return err
		}
		for _, roomID := range part {
			v.current[roomID] = "" // no row: no membership
		}
		for rows.Next() {
			var roomID string
			var m *string
			if err := rows.Scan(&roomID, &m); err != nil {
				rows.Close()
				return err
			}
			if m != nil {
				v.current[roomID] = *m
			}
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return err
		}
	}
	return nil
}

// filterVisibleWith is filterVisible for rows of one room, with a
// visibility shared across rooms and the room version from the version
// cache; it adds to memberships (when not nil) the user's membership
// after each event it keeps, as MembershipsAt. An event not in the cache is not parsed
// (see eventFromRow): the visibility rules read only its row.
func (s *Server) filterVisibleWith(ctx context.Context, q storage.Querier, vis *visibility, roomID string, rows []*eventRow,
	memberships map[string]string) ([]*Event, error) {
	if len(rows) == 0 {
		return nil, nil
	}
	version, err := s.committedRoomVersion(ctx, q, roomID)
	if err != nil {
		return nil, err
	}
	var out []*Event
	seen := eventsSeen(q)
	for _, r := range rows {
		e := s.events.getNID(r.NID, seen)
		// r is the row as this read's snapshot has it. A cached parse
		// of another version of it (redacted, or with other snapshots
		// or status) is not this read's event: in split mode another
		// process's rewrite moves no generation here, so a row cached
		// after it can be newer than the snapshot (snapshot_read.go).
		stale := e == nil || e.row != r && stampOf(e.row) != stampOf(r)
		if stale {
			e = &loadedEvent{row: r}
		}
		ok, err := vis.canSee(ctx, version, e)
		if err != nil || !ok {
			if err != nil {
				return nil, err
			}
			continue
		}
		var ev *Event
		if stale {
			ev, err = eventFromRow(version, r)
		} else {
			ev = toEvent(e)
		}
		if err != nil {
			return nil, err
		}
		out = append(out, ev)
		if memberships == nil {
			continue // the caller reads them itself (RecentEventsOfUsers)
		}
		// As MembershipsAt: the membership in the state after the event.
		_, m, err := vis.at(ctx, version, r.StateAfter)
		if err != nil {
			return nil, err
		}
		if m == "" {
			m = "leave"
		}
		memberships[r.EventID] = m
	}
	return out, nil
}

// eventFromRow is toEvent(parseRow(version, r)) without building the
// PDU, for the many events a batched read renders once: Content is what
// the PDU's Content returns (the "content" member, decoded the same way
// gomatrixserverlib decodes it) and JSON the stored bytes, which is what
// the PDU's JSON returns. A redacted row is parsed as before (its
// content is the redaction algorithm's).
func eventFromRow(version string, r *eventRow) (*Event, error) {
	if r.RedactedBecause != nil {
		e, err := parseRow(version, r)
		if err != nil {
			return nil, err
		}
		return toEvent(e), nil
	}
	// The Event shares the row's bytes, as toEvent shares the cached
	// PDU's: an Event's JSON and Content are read-only, and the row's
	// string is never written.
	js := unsafe.Slice(unsafe.StringData(r.JSON), len(r.JSON))
	content, err := eventContent(js)
	if err != nil {
		return nil, fmt.Errorf("parsing stored event %s: %w", r.EventID, err)
	}
	return eventOf(r, content, js), nil
}

// eventContent is the content a PDU parsed from js returns: the
// "content" member as encoding/json decodes it into spec.RawJSON.
func eventContent(js []byte) ([]byte, error) {
	if content, ok := contentMember(js); ok {
		return content, nil
	}
	var fields struct {
		Content spec.RawJSON `json:"content"`
	}
	err := json.Unmarshal(js, &fields)
	return fields.Content, err
}

// contentMember finds the bytes of the top-level "content" member of a
// valid JSON object, as encoding/json hands them to spec.RawJSON (a
// slice of js), scanning only the top level. ok is false when
// encoding/json could pick another member (a key that differs from
// "content" only in case, or "content" twice: it takes the last match)
// or js is not a valid object: the caller then decodes it.
func contentMember(js []byte) (content []byte, ok bool) {
	if !gjson.ValidBytes(js) {
		return nil, false
	}
	// Parsed in place: gjson.ParseBytes would copy js to a string first.
	root := gjson.Parse(unsafe.String(unsafe.SliceData(js), len(js)))
	if !root.IsObject() {
		return nil, false
	}
	ok = true
	root.ForEach(func(key, value gjson.Result) bool {
		if !strings.EqualFold(key.Str, "content") {
			return true
		}
		if content != nil || key.Str != "content" || value.Index <= 0 || value.Index+len(value.Raw) > len(js) {
			ok = false
			return false
		}
		content = js[value.Index : value.Index+len(value.Raw)]
		return true
	})
	return content, ok
}

// CurrentStateOfRooms is IndexedCurrentState(roomID, nil, skipMembers)
// for each of roomIDs: every room's current state events (without
// m.room.member when skipMembers is set), ordered by type and state key.
// Rooms without state are absent. No visibility check: see the top of
// sync_queries.go.
func (s *Server) CurrentStateOfRooms(ctx context.Context, roomIDs []string, skipMembers bool) (map[string][]*Event, error) {
	out := make(map[string][]*Event, len(roomIDs))
	err := s.read(ctx, func(q storage.Querier) error {
		nidsByRoom := map[string][]int64{}
		for _, part := range roomChunks(roomIDs) {
			query, args := storage.InList(`SELECT room_id, event_nid FROM roomserver_current_state WHERE room_id IN `, part)
			if skipMembers {
				query += ` AND type <> 'm.room.member'`
			}
			rows, err := q.Query(ctx, query+` ORDER BY room_id, type, state_key`, args...)
			if err != nil {
				return err
			}
			for rows.Next() {
				var roomID string
				var nid int64
				if err := rows.Scan(&roomID, &nid); err != nil {
					rows.Close()
					return err
				}
				nidsByRoom[roomID] = append(nidsByRoom[roomID], nid)
			}
			rows.Close()
			if err := rows.Err(); err != nil {
				return err
			}
		}
		var err error
		out, err = s.loadEventsOfRooms(ctx, q, nidsByRoom)
		return err
	})
	return out, err
}

// loadEventsOfRooms is loadEvents and toEvent for the events of several
// rooms: cached events from the cache, the others with one query per
// 500, rendered by eventFromRow with their room's version.
func (s *Server) loadEventsOfRooms(ctx context.Context, q storage.Querier, nidsByRoom map[string][]int64) (map[string][]*Event, error) {
	out := make(map[string][]*Event, len(nidsByRoom))
	var missing []int64
	roomIDs := slices.Collect(maps.Keys(nidsByRoom))
	var hits []*loadedEvent // every room's, in roomIDs' order
	seen := eventsSeen(q)
	for _, roomID := range roomIDs {
		for _, nid := range nidsByRoom[roomID] {
			hits = append(hits, s.events.getNID(nid, seen))
		}
	}
	stale, err := s.freshHits(ctx, q, hits) // one check for every room
	if err != nil {
		return nil, err
	}
	for _, i := range stale {
		hits[i] = nil
	}
	for _, roomID := range roomIDs {
		nids := nidsByRoom[roomID]
		evs := make([]*Event, len(nids))
		for i, nid := range nids {
			if e := hits[0]; e != nil {
				evs[i] = toEvent(e)
			} else {
				missing = append(missing, nid)
			}
			hits = hits[1:]
		}
		out[roomID] = evs
	}
	if len(missing) == 0 {
		return out, nil
	}
	rows, err := eventRowsByNID(ctx, q, missing)
	if err != nil {
		return nil, err
	}
	got := make(map[int64]*Event, len(rows))
	for _, row := range rows {
		version, err := s.committedRoomVersion(ctx, q, row.RoomID)
		if err != nil {
			return nil, err
		}
		if got[row.NID], err = eventFromRow(version, row); err != nil {
			return nil, err
		}
	}
	for roomID, evs := range out {
		for i, e := range evs {
			if e == nil {
				nid := nidsByRoom[roomID][i]
				if evs[i] = got[nid]; evs[i] == nil {
					return nil, fmt.Errorf("event NID %d not found", nid) // as loadEvents
				}
			}
		}
	}
	return out, nil
}

// RoomMemberSummaries is RoomMemberSummary for each of roomIDs, with two
// queries per batchRooms rooms: the counts, and each room's first six
// joined-or-invited and first six left-or-banned members by join order,
// of which the summary keeps the first six.
// Spec: client-server-api, "GET /_matrix/client/v3/sync", RoomSummary.
func (s *Server) RoomMemberSummaries(ctx context.Context, roomIDs []string) (map[string]*MemberSummary, error) {
	out := make(map[string]*MemberSummary, len(roomIDs))
	for _, roomID := range roomIDs {
		out[roomID] = &MemberSummary{}
	}
	err := s.read(ctx, func(q storage.Querier) error {
		for _, part := range roomChunks(roomIDs) {
			query, args := storage.InList(`SELECT room_id,
				COALESCE(SUM(CASE WHEN membership = 'join' THEN 1 ELSE 0 END), 0),
				COALESCE(SUM(CASE WHEN membership = 'invite' THEN 1 ELSE 0 END), 0)
				FROM roomserver_current_state WHERE type = 'm.room.member' AND room_id IN `, part)
			rows, err := q.Query(ctx, query+` GROUP BY room_id`, args...)
			if err != nil {
				return err
			}
			for rows.Next() {
				var roomID string
				var joined, invited int
				if err := rows.Scan(&roomID, &joined, &invited); err != nil {
					rows.Close()
					return err
				}
				if sum := out[roomID]; sum != nil {
					sum.Joined, sum.Invited = joined, invited
				}
			}
			rows.Close()
			if err := rows.Err(); err != nil {
				return err
			}
			// Group 0 (join, invite) comes before group 1 (leave, ban);
			// within a group, by event_nid, as RoomMemberSummary's two
			// ordered reads.
			query, args = storage.InList(`SELECT room_id, state_key, grp FROM (
				SELECT room_id, state_key, event_nid,
					CASE WHEN membership IN ('join', 'invite') THEN 0 ELSE 1 END AS grp,
					ROW_NUMBER() OVER (PARTITION BY room_id,
						CASE WHEN membership IN ('join', 'invite') THEN 0 ELSE 1 END ORDER BY event_nid) AS n
				FROM roomserver_current_state
				WHERE type = 'm.room.member' AND membership IN ('join', 'invite', 'leave', 'ban') AND room_id IN `, part)
			rows, err = q.Query(ctx, query+`) AS ranked WHERE n <= 6 ORDER BY room_id, grp, event_nid`, args...)
			if err != nil {
				return err
			}
			for rows.Next() {
				var roomID, member string
				var group int
				if err := rows.Scan(&roomID, &member, &group); err != nil {
					rows.Close()
					return err
				}
				if sum := out[roomID]; sum != nil && len(sum.Heroes) < 6 {
					sum.Heroes = append(sum.Heroes, member)
				}
			}
			rows.Close()
			if err := rows.Err(); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// TxnIDsOfEvents is TxnIDs for events of several rooms: roomOf maps
// each event ID to its room, and an event's transaction ID counts only
// when recorded for that room, as TxnIDs requires.
// Spec: client-server-api, "Transaction identifiers".
func (s *Server) TxnIDsOfEvents(ctx context.Context, userID, deviceID string, roomOf map[string]string) (map[string]string, error) {
	out := map[string]string{}
	if len(roomOf) == 0 || deviceID == "" {
		return out, nil
	}
	ids := make([]string, 0, len(roomOf))
	for id := range roomOf {
		ids = append(ids, id)
	}
	for start := 0; start < len(ids); start += 500 {
		batch := ids[start:min(start+500, len(ids))]
		query, args := txnIDsOfEventsQuery(batch, userID, deviceID)
		rows, err := s.db.Reader().Query(ctx, query, args...)
		if err != nil {
			return nil, err
		}
		for rows.Next() {
			var eventID, roomID, txnID string
			if err := rows.Scan(&eventID, &roomID, &txnID); err != nil {
				rows.Close()
				return nil, err
			}
			if roomOf[eventID] == roomID {
				out[eventID] = txnID
			}
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// txnIDsOfEventsQuery selects the transaction IDs userID's deviceID sent
// events with, among eventIDs, with each event's room (the caller checks
// it): each event's own row, found by its ID's unique index (migration
// 013 keeps the transaction ID in the row).
func txnIDsOfEventsQuery(eventIDs []string, userID, deviceID string) (string, []any) {
	query, args := storage.InList(`SELECT event_id, room_id, txn_id FROM roomserver_events WHERE event_id IN `, eventIDs)
	args = append(args, userID, deviceID)
	query += ` AND sender = ` + placeholder(len(args)-1) + ` AND txn_device = ` + placeholder(len(args)) +
		` AND txn_id IS NOT NULL`
	return query, args
}

// MemberEventsOfRooms is IndexedStateKeys(room, "m.room.member", keys)
// for each room and its keys in stateKeys: the current member events
// with those state keys (those that exist), ordered by state key.
// No visibility check: see the top of sync_queries.go.
func (s *Server) MemberEventsOfRooms(ctx context.Context, stateKeys map[string][]string) (map[string][]*Event, error) {
	out := make(map[string][]*Event, len(stateKeys))
	roomIDs := make([]string, 0, len(stateKeys))
	for roomID, keys := range stateKeys {
		if len(keys) > 0 {
			roomIDs = append(roomIDs, roomID)
		}
	}
	slices.Sort(roomIDs)
	err := s.read(ctx, func(q storage.Querier) error {
		nidsByRoom := map[string][]int64{}
		for _, part := range roomChunks(roomIDs) {
			// The rooms' keys together, each row then kept only if its
			// room asked for its key.
			var keys []string
			for _, roomID := range part {
				for _, k := range stateKeys[roomID] {
					if !slices.Contains(keys, k) {
						keys = append(keys, k)
					}
				}
			}
			roomIn, args := storage.InList("", part)
			keyIn, keyArgs := storage.InList("", keys)
			rows, err := q.Query(ctx, `SELECT room_id, state_key, event_nid FROM roomserver_current_state
				WHERE type = 'm.room.member' AND room_id IN `+roomIn+` AND state_key IN `+shiftPlaceholders(keyIn, len(args))+
				` ORDER BY room_id, state_key`, append(args, keyArgs...)...)
			if err != nil {
				return err
			}
			for rows.Next() {
				var roomID, key string
				var nid int64
				if err := rows.Scan(&roomID, &key, &nid); err != nil {
					rows.Close()
					return err
				}
				if slices.Contains(stateKeys[roomID], key) {
					nidsByRoom[roomID] = append(nidsByRoom[roomID], nid)
				}
			}
			rows.Close()
			if err := rows.Err(); err != nil {
				return err
			}
		}
		var err error
		out, err = s.loadEventsOfRooms(ctx, q, nidsByRoom)
		return err
	})
	return out, err
}
