package roomserver

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/myelin-chat/myelin/internal/mxerr"
	"github.com/myelin-chat/myelin/storage"
)

// ClientReads are reads the client API needs beyond API: transaction IDs
// for unsigned.transaction_id, timestamp lookups, the public summary
// state of a room (directory, hierarchy, room summary) and the raw event
// stream for clientapi's own indexes (relations). They live in this file
// so the room DAG code stays untouched by client concerns.
type ClientReads interface {
	// TransactionIDs maps those of eventIDs that userID sent from
	// deviceID with a transaction ID to that transaction ID.
	TransactionIDs(ctx context.Context, roomID, userID, deviceID string, eventIDs []string) (map[string]string, error)
	// EventAtTimestamp returns the visible timeline event of roomID
	// closest to ts in direction dir (Forward: at or after ts, Backward:
	// at or before ts), or M_NOT_FOUND.
	EventAtTimestamp(ctx context.Context, userID, roomID string, ts int64, dir Direction) (*Event, error)
	// PublicState returns the current state events of roomID with the
	// given types (every state key), without history visibility checks.
	// Callers only show what the spec makes public to would-be joiners
	// (names, topics, join rules, space children, ...).
	PublicState(ctx context.Context, roomID string, types []string) ([]*Event, error)
	// JoinedMemberCount counts the users joined to roomID.
	JoinedMemberCount(ctx context.Context, roomID string) (int, error)
	// EventsAfter returns up to limit accepted timeline events of every
	// room with stream positions above after, in stream order, without
	// visibility checks, for server-side indexers. The events are in
	// their current (possibly redacted) form.
	EventsAfter(ctx context.Context, after int64, limit int) ([]*Event, error)
	// RelationCandidatesAfter is EventsAfter for the relations index: the
	// room stream's position, and up to limit of the events above after
	// that can change the index (see relationCandidatesQuery), read in
	// one transaction so that none is above the position.
	RelationCandidatesAfter(ctx context.Context, after int64, limit int) (int64, []*Event, error)
	// HistoryBefore returns up to limit accepted events stored below the
	// stream (backfilled history, outliers that backfill promoted: their
	// positions are negative) with positions below before, highest
	// first, without visibility checks, for server-side indexers. Such
	// positions are handed out downwards, one writer at a time, so an
	// indexer that remembers the lowest it read misses none. The events
	// are in their current (possibly redacted) form.
	HistoryBefore(ctx context.Context, before int64, limit int) ([]*Event, error)
	// ResyncedAfter maps the rooms whose partial-state resync completed
	// at a stream position above after to that position, for indexers:
	// a resync changes a room's state without a timeline event.
	ResyncedAfter(ctx context.Context, after int64) (map[string]int64, error)
	// JoinedServers lists the servers with a user joined to roomID, this
	// one included, sorted.
	JoinedServers(ctx context.Context, roomID string) ([]string, error)
	// TopologicalTokenAt converts a stream position (as in a /sync
	// token) into a /messages token of roomID for paging in dir: paging
	// Backward from it returns the room's events at or before streamPos,
	// paging Forward the events after the last of those.
	TopologicalTokenAt(ctx context.Context, roomID string, streamPos int64, dir Direction) (string, error)
	// MembershipsAt maps each of eventIDs (known to this server) to
	// userID's membership in the state after that event, "leave" when
	// the user had none, for unsigned.membership.
	MembershipsAt(ctx context.Context, userID string, eventIDs []string) (map[string]string, error)
	// PartialStateServers reports whether roomID has partial state here
	// (a partial-state join's resync has not finished) and, if so, the
	// servers to reach the room through: the server the partial-state
	// join went through, then the servers send_join said were in the
	// room (partial_state.go).
	PartialStateServers(ctx context.Context, roomID string) (servers []string, partial bool, err error)
}

var _ ClientReads = (*Server)(nil)

// TransactionIDs implements ClientReads; it is TxnIDs under the name
// clientapi's interface gives it.
func (s *Server) TransactionIDs(ctx context.Context, roomID, userID, deviceID string, eventIDs []string) (map[string]string, error) {
	return s.TxnIDs(ctx, roomID, userID, deviceID, eventIDs)
}

// EventAtTimestamp implements ClientReads. It walks candidates in
// timestamp order and returns the first the user may see. Where this
// server lacks part of the room's history (the room was joined over
// federation, or has gaps), the local answer may be missing or stale:
// then it also asks another server in the room, and when that server's
// event is closer to ts, fetches it, stores it as history (like
// backfill) and answers from what it now holds.
// Spec: client-server-api, "GET /_matrix/client/v1/rooms/{roomId}/timestamp_to_event"
// ("If the server does not have all of the room history ... it can use
// the corresponding federation endpoint").
func (s *Server) EventAtTimestamp(ctx context.Context, userID, roomID string, ts int64, dir Direction) (*Event, error) {
	local, err := s.localEventAtTimestamp(ctx, userID, roomID, ts, dir)
	if err != nil && !mxerr.Is(err, mxerr.NotFound) {
		return nil, err
	}
	if s.backfiller == nil || !s.historyIncomplete(ctx, roomID) {
		return local, err
	}
	rctx, cancel := context.WithTimeout(ctx, backfillTimeout)
	defer cancel()
	remoteID, raw, rerr := s.backfiller.TimestampToEvent(rctx, roomID, ts, dir)
	if rerr != nil {
		return local, err // the local answer stands
	}
	var remote struct {
		TS int64 `json:"origin_server_ts"`
	}
	_ = json.Unmarshal(raw, &remote)
	closer := dir == Forward && remote.TS >= ts && (local == nil || remote.TS < local.OriginServerTS) ||
		dir == Backward && remote.TS <= ts && (local == nil || remote.TS > local.OriginServerTS)
	if !closer {
		return local, err
	}
	// The remote event is backfilled unless it already has a place in
	// the timeline. An event held only as an outlier (the state and auth
	// chain a join brought, the create event among them) has none: no
	// local lookup can return it, so it is promoted like any backfilled
	// outlier. Spec: server-server-api, "GET /timestamp_to_event" ("it
	// should try to backfill this event ... so that it is available for a
	// client to query").
	_, timeline, herr := heldOutlier(ctx, s.db.Reader(), remoteID)
	if herr != nil {
		return local, err
	}
	if !timeline {
		if _, perr := s.PersistBackfill(ctx, roomID, []json.RawMessage{raw}); perr != nil {
			return local, err
		}
	}
	return s.localEventAtTimestamp(ctx, userID, roomID, ts, dir)
}

// historyIncomplete reports whether this server lacks part of roomID's
// history: the oldest event it received as part of the live timeline
// (positive NID) is not the create event, so the room was joined over
// federation. Backfilled events (negative NIDs) do not change that: they
// fill the history in pieces (a timestamp lookup backfills one event,
// possibly the create event), never proving that no gap is left.
func (s *Server) historyIncomplete(ctx context.Context, roomID string) bool {
	var eventType string
	err := s.db.Reader().QueryRow(ctx, `SELECT type FROM roomserver_events WHERE room_id = $1
		AND NOT rejected AND NOT soft_failed AND event_nid > 0 ORDER BY depth, event_nid LIMIT 1`, roomID).Scan(&eventType)
	return err == nil && eventType != "m.room.create"
}

func (s *Server) localEventAtTimestamp(ctx context.Context, userID, roomID string, ts int64, dir Direction) (*Event, error) {
	var out *Event
	err := s.read(ctx, func(q storage.Querier) error {
		room, err := loadRoom(ctx, q, roomID)
		if err != nil {
			return err
		}
		query := `SELECT ` + eventColumns + ` FROM roomserver_events WHERE room_id = $1
			AND NOT rejected AND NOT soft_failed AND `
		if dir == Forward {
			query += `origin_server_ts >= $2 ORDER BY origin_server_ts, depth, event_nid LIMIT 100 OFFSET $3`
		} else {
			query += `origin_server_ts <= $2 ORDER BY origin_server_ts DESC, depth DESC, event_nid DESC LIMIT 100 OFFSET $3`
		}
		vis := s.newVisibility(q, userID)
		for offset := 0; offset < 10000; offset += 100 {
			rows, err := queryEventRows(ctx, q, query, roomID, ts, offset)
			if err != nil {
				return err
			}
			for _, r := range rows {
				e, err := parseRow(room.Version, r)
				if err != nil {
					return err
				}
				ok, err := vis.canSee(ctx, room.Version, e)
				if err != nil {
					return err
				}
				if ok {
					out = toEvent(e)
					return nil
				}
			}
			if len(rows) < 100 {
				break
			}
		}
		return mxerr.New(mxerr.NotFound, "no event found %s the timestamp", map[Direction]string{Forward: "after", Backward: "before"}[dir])
	})
	return out, err
}

// PublicState implements ClientReads.
func (s *Server) PublicState(ctx context.Context, roomID string, types []string) ([]*Event, error) {
	var out []*Event
	err := s.read(ctx, func(q storage.Querier) error {
		room, err := loadRoom(ctx, q, roomID)
		if err != nil {
			return err
		}
		if len(types) == 0 {
			return nil
		}
		query, args := storage.InList(`SELECT event_nid FROM roomserver_current_state WHERE type IN `, types)
		query += fmt.Sprintf(` AND room_id = $%d ORDER BY type, state_key`, len(args)+1)
		args = append(args, roomID)
		nids, err := storage.QueryColumn[int64](ctx, q, query, args...)
		if err != nil {
			return err
		}
		loaded, err := s.loadEvents(ctx, q, nil, room.Version, nids)
		if err != nil {
			return err
		}
		for _, e := range loaded {
			out = append(out, toEvent(e))
		}
		return nil
	})
	return out, err
}

// JoinedMemberCount implements ClientReads.
func (s *Server) JoinedMemberCount(ctx context.Context, roomID string) (int, error) {
	var n int
	err := s.db.Reader().QueryRow(ctx, `SELECT COUNT(*) FROM roomserver_current_state
		WHERE room_id = $1 AND type = 'm.room.member' AND membership = 'join'`, roomID).Scan(&n)
	return n, err
}

// EventsAfter implements ClientReads.
func (s *Server) EventsAfter(ctx context.Context, after int64, limit int) ([]*Event, error) {
	if limit <= 0 || limit > 1000 {
		limit = 1000
	}
	var out []*Event
	err := s.read(ctx, func(q storage.Querier) error {
		rows, err := queryEventRows(ctx, q, `SELECT `+eventColumns+` FROM roomserver_events
			WHERE event_nid > $1 AND NOT rejected AND NOT soft_failed ORDER BY event_nid LIMIT $2`, after, limit)
		if err != nil {
			return err
		}
		out, err = s.eventsOfRows(ctx, q, rows)
		return err
	})
	return out, err
}

// HistoryBefore implements ClientReads. Backfill (PersistBackfill) hands
// out each new history position below every position held, under its
// global lock, so they commit in descending order.
func (s *Server) HistoryBefore(ctx context.Context, before int64, limit int) ([]*Event, error) {
	if limit <= 0 || limit > 1000 {
		limit = 1000
	}
	before = min(before, 0)
	var out []*Event
	err := s.read(ctx, func(q storage.Querier) error {
		rows, err := queryEventRows(ctx, q, `SELECT `+eventColumns+` FROM roomserver_events
			WHERE event_nid < $1 AND NOT rejected AND NOT soft_failed ORDER BY event_nid DESC LIMIT $2`, before, limit)
		if err != nil {
			return err
		}
		out, err = s.eventsOfRows(ctx, q, rows)
		return err
	})
	return out, err
}

// JoinsAfter returns the room stream's position and up to limit of the
// accepted m.room.member events with membership "join" above after, in
// stream order, read in one transaction (so none is above the position).
// It is EventsAfter for a consumer that acts on joins only (push's copy
// of a user's rules to an upgraded room): it reads no other event's JSON
// and needs no StreamPosition read of its own.
func (s *Server) JoinsAfter(ctx context.Context, after int64, limit int) (int64, []*Event, error) {
	return s.selectedEventsAfter(ctx, after, limit, joinsAfterQuery)
}

// selectedEventsAfter reads the room stream's position and up to limit
// (1000 at most) of the events query selects above after, in stream
// order, in one transaction (so none is above the position). query
// takes $1 = after and $2 = limit.
func (s *Server) selectedEventsAfter(ctx context.Context, after int64, limit int, query string) (int64, []*Event, error) {
	if limit <= 0 || limit > 1000 {
		limit = 1000
	}
	var head int64
	var out []*Event
	err := s.read(ctx, func(q storage.Querier) error {
		if err := q.QueryRow(ctx, streamHeadQuery).Scan(&head); err != nil {
			return err
		}
		if head <= after {
			return nil
		}
		rows, err := queryEventRows(ctx, q, query, after, limit)
		if err != nil {
			return err
		}
		out, err = s.eventsOfRows(ctx, q, rows)
		return err
	})
	return head, out, err
}

// RelationCandidatesAfter implements ClientReads, as JoinsAfter does for
// joins: the relations index needs only redactions and the events whose
// content may hold an m.relates_to, so the JSON of every other message
// is neither read into Go nor parsed (the first /sync after a burst of
// sends caught the index up over every one of them; docs/benchmarks.md,
// "inicold").
func (s *Server) RelationCandidatesAfter(ctx context.Context, after int64, limit int) (int64, []*Event, error) {
	query := relationCandidatesQuery
	if s.db.Engine() == storage.Postgres {
		query = relationCandidatesQueryPostgres
	}
	return s.selectedEventsAfter(ctx, after, limit, query)
}

// relationCandidatesQuery reads RelationCandidatesAfter's events: every
// redaction, and every event whose JSON holds "m.relate" in any ASCII
// case or any \u escape. That is a superset of the events a relations
// indexer keeps: a content key that decodes to m.relates_to, even under
// encoding/json's case-insensitive field matching (the key's letters
// m, r, e, l, a, t have no non-ASCII case folds; "s" has, so it is not
// in the pattern), is written either with those bytes or with an
// escape. SQLite's LIKE ignores ASCII case, PostgreSQL's ILIKE does; LIKE's
// escape character is set to '!' so that the backslash is literal on
// both engines (PostgreSQL's default escape is '\'). Like
// joinsAfterQuery it walks the key's range; TestRelationCandidatesAfter
// holds both texts to the same answer.
const relationCandidatesQuery = `SELECT ` + eventColumns + ` FROM roomserver_events
	WHERE event_nid > $1 AND NOT rejected AND NOT soft_failed
	AND (type = 'm.room.redaction' OR json LIKE '%m.relate%' OR json LIKE '%\u%' ESCAPE '!')
	ORDER BY event_nid LIMIT $2`

const relationCandidatesQueryPostgres = `SELECT ` + eventColumns + ` FROM roomserver_events
	WHERE event_nid > $1 AND NOT rejected AND NOT soft_failed
	AND (type = 'm.room.redaction' OR json ILIKE '%m.relate%' OR json LIKE '%\u%' ESCAPE '!')
	ORDER BY event_nid LIMIT $2`

// joinsAfterQuery reads JoinsAfter's events. It walks the key's range
// (SQLite: SEARCH USING INTEGER PRIMARY KEY), not the partial member
// index, which would visit every member event ever stored
// (TestJoinsAfterPlanWalksStreamRange).
const joinsAfterQuery = `SELECT ` + eventColumns + ` FROM roomserver_events
	WHERE event_nid > $1 AND type = 'm.room.member' AND membership = 'join'
	AND NOT rejected AND NOT soft_failed ORDER BY event_nid LIMIT $2`

// eventsOfRows turns rows read with q (a read transaction) into Events.
func (s *Server) eventsOfRows(ctx context.Context, q storage.Querier, rows []*eventRow) ([]*Event, error) {
	if len(rows) == 0 {
		return nil, nil
	}
	out := make([]*Event, 0, len(rows))
	for _, r := range rows {
		// The event just sent is usually still in the cache, parsed:
		// reuse its PDU when it was parsed from the very bytes and
		// redaction state stored now (a redaction rewrites both), so
		// the consumers (push, search, relations, appservices) do not
		// parse every new event a second time.
		if c := s.events.getNID(r.NID, eventsSeen(q)); c != nil && c.row.EventID == r.EventID && c.row.JSON == r.JSON &&
			(c.row.RedactedBecause == nil) == (r.RedactedBecause == nil) {
			out = append(out, toEvent(&loadedEvent{row: r, pdu: c.pdu}))
			continue
		}
		version, err := s.committedRoomVersion(ctx, q, r.RoomID)
		if err != nil {
			return nil, err
		}
		e, err := parseRow(version, r)
		if err != nil {
			return nil, err
		}
		out = append(out, toEvent(e))
	}
	return out, nil
}

// committedRoomVersion returns roomID's version, from the version cache
// or read with q, which must see only committed rows (a read outside any
// write transaction): a room's version is fixed by its create event and
// never changes, so a committed value cached once is never stale.
func (s *Server) committedRoomVersion(ctx context.Context, q storage.Querier, roomID string) (string, error) {
	if v, ok := s.versions.get(roomID); ok {
		return v, nil
	}
	var version string
	if err := q.QueryRow(ctx, `SELECT room_version FROM roomserver_rooms WHERE room_id = $1`, roomID).Scan(&version); err != nil {
		if storage.IsNoRows(err) {
			return "", mxerr.New(mxerr.NotFound, "unknown room %s", roomID)
		}
		return "", fmt.Errorf("loading the version of room %s: %w", roomID, err)
	}
	s.versions.put(roomID, version)
	return version, nil
}

// TopologicalTokenAt implements ClientReads. The token is placed at the
// room's latest accepted event at or before streamPos; an event stored
// later at a lower depth (a fork) pages as if it came before it.
func (s *Server) TopologicalTokenAt(ctx context.Context, roomID string, streamPos int64, dir Direction) (string, error) {
	var depth, nid int64
	err := s.db.Reader().QueryRow(ctx, `SELECT depth, event_nid FROM roomserver_events
		WHERE room_id = $1 AND event_nid <= $2 AND NOT rejected AND NOT soft_failed
		ORDER BY event_nid DESC LIMIT 1`, roomID, streamPos).Scan(&depth, &nid)
	if storage.IsNoRows(err) {
		return topoToken{0, 0}.String(), nil // before the room: nothing back, everything forward
	}
	if err != nil {
		return "", err
	}
	if dir == Backward {
		nid++ // Messages pages backwards from a token exclusively
	}
	return topoToken{depth, nid}.String(), nil
}

// MembershipsAt implements ClientReads. It reads one snapshot per
// distinct state, so a page of messages sharing a state costs one read.
// Spec: client-server-api, "Room Event Format", unsigned.membership ("the
// membership property of the requesting user's m.room.member state at
// the point of the event, including any changes caused by the event ...
// set to leave" when there is none).
func (s *Server) MembershipsAt(ctx context.Context, userID string, eventIDs []string) (map[string]string, error) {
	out := make(map[string]string, len(eventIDs))
	if len(eventIDs) == 0 {
		return out, nil
	}
	err := s.read(ctx, func(q storage.Querier) error {
		loaded, err := s.loadEventsByID(ctx, q, nil, eventIDs)
		if err != nil {
			return err
		}
		vis := s.newVisibility(q, userID)
		versions := map[string]string{}
		for id, e := range loaded {
			version, ok := versions[e.row.RoomID]
			if !ok {
				v, err := s.committedRoomVersion(ctx, q, e.row.RoomID)
				if err != nil {
					return err
				}
				version = v
				versions[e.row.RoomID] = version
			}
			_, m, err := vis.at(ctx, version, e.row.StateAfter)
			if err != nil {
				return err
			}
			if m == "" {
				m = "leave"
			}
			out[id] = m
		}
		return nil
	})
	return out, err
}

// PrevState is the state event another one replaced at its (type,
// state_key): what a client sees as unsigned.prev_content, prev_sender
// and replaces_state.
type PrevState struct {
	EventID string
	Sender  string
	Content json.RawMessage
}

// PrevStates maps each state event of eventIDs (known to this server)
// to the event it replaced, for those that replaced one. The caller has
// already decided the events are visible.
// Spec: client-server-api, "Room Event Format" (unsigned.prev_content);
// Complement TestFederationRoomsInvite reads is_direct from it.
func (s *Server) PrevStates(ctx context.Context, eventIDs []string) (map[string]*PrevState, error) {
	out := map[string]*PrevState{}
	if len(eventIDs) == 0 {
		return out, nil
	}
	err := s.read(ctx, func(q storage.Querier) error {
		loaded, err := s.loadEventsByID(ctx, q, nil, eventIDs)
		if err != nil {
			return err
		}
		replaced := map[int64][]string{} // NID of the replaced event -> events replacing it
		for id, e := range loaded {
			if e.row.StateKey == nil || e.row.StateBefore == 0 {
				continue
			}
			k := tuple{e.row.Type, *e.row.StateKey}
			before, err := loadSnapshotKeys(ctx, q, e.row.StateBefore, []tuple{k})
			if err != nil {
				return err
			}
			if nid := before[k]; nid != 0 && nid != e.row.NID {
				replaced[nid] = append(replaced[nid], id)
			}
		}
		if len(replaced) == 0 {
			return nil
		}
		nids := make([]int64, 0, len(replaced))
		for nid := range replaced {
			nids = append(nids, nid)
		}
		rows, err := eventRowsByNID(ctx, q, nids)
		if err != nil {
			return err
		}
		for _, row := range rows {
			var ev struct {
				Content json.RawMessage `json:"content"`
			}
			if json.Unmarshal([]byte(row.JSON), &ev) != nil {
				continue
			}
			for _, id := range replaced[row.NID] {
				out[id] = &PrevState{EventID: row.EventID, Sender: row.Sender, Content: ev.Content}
			}
		}
		return nil
	})
	return out, err
}
