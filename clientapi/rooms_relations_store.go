package clientapi

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/myelin-chat/myelin/roomserver"
	"github.com/myelin-chat/myelin/storage"
)

// relationsIndexerName is the indexer's row in room_indexer_positions.
const relationsIndexerName = "relations"

// relationsIndexer keeps room_relations in step with the room event
// stream. It reads the events after its stored position and writes their
// relations and the new position in one transaction, so a crash repeats
// work but loses none. It catches up lazily, before every relations
// read, so a read always sees the relations of every event already sent.
//
// It reads only the events that can change the index (the roomserver's
// RelationCandidatesAfter: redactions and events that may hold an
// m.relates_to), and stores its position with the relations it writes.
// A stretch of the stream without any is passed in memory (indexed) and
// stored only once the stored position trails by relationsPositionLag:
// the first /sync after a burst of sends then makes no write, and a
// restart reads at most that stretch's candidates again.
//
// Concurrency: mu serialises catch-ups within a process; across
// processes the position row is updated with the rows, and re-indexing
// an event is idempotent (a redacted event is read in its redacted
// form, and its redaction deletes again).
type relationsIndexer struct {
	db    *storage.DB
	rooms Rooms
	mu    sync.Mutex
	// indexed is the stream position up to which this process has
	// indexed every event, at or ahead of the one it stored; guarded by mu.
	indexed int64
}

// relation is one indexed m.relates_to.
type relation struct {
	EventID, RoomID, RelatesTo, RelType, EventType, Sender string
	StreamPos, OriginServerTS                              int64
}

// relationOf extracts the relation of an event, if it has one.
// Spec: client-server-api, "Relationship types".
func relationOf(ev *roomserver.Event) (relation, bool) {
	var c struct {
		RelatesTo *struct {
			RelType string `json:"rel_type"`
			EventID string `json:"event_id"`
		} `json:"m.relates_to"`
	}
	if ev.StateKey != nil || json.Unmarshal(ev.Content, &c) != nil || c.RelatesTo == nil ||
		c.RelatesTo.RelType == "" || !strings.HasPrefix(c.RelatesTo.EventID, "$") {
		return relation{}, false
	}
	return relation{
		EventID: ev.EventID, RoomID: ev.RoomID, RelatesTo: c.RelatesTo.EventID, RelType: c.RelatesTo.RelType,
		EventType: ev.Type, Sender: ev.Sender, StreamPos: ev.StreamPos, OriginServerTS: ev.OriginServerTS,
	}, true
}

// relationsIndexerBatch is how many candidate events one catch-up
// transaction reads and indexes. Its events are all in memory at once,
// parsed: up to 1,000 at a time added several MB to a sync's own live
// heap and the process's peak (docs/benchmarks.md, "Memory, part 3").
const relationsIndexerBatch = 200

// relationsPositionLag is how far the stored position may trail the
// indexed one before a catch-up that found nothing to index stores it.
const relationsPositionLag = 10000

// catchUp indexes every event sent since the indexed position.
func (ix *relationsIndexer) catchUp(ctx context.Context) error {
	ix.mu.Lock()
	defer ix.mu.Unlock()
	var stored int64
	err := ix.db.Reader().QueryRow(ctx, `SELECT position FROM room_indexer_positions WHERE name = $1`, relationsIndexerName).Scan(&stored)
	if err != nil && !storage.IsNoRows(err) {
		return err
	}
	// Another process may have stored a position past this one's.
	pos := max(stored, ix.indexed)
	for {
		head, evs, err := ix.rooms.RelationCandidatesAfter(ctx, pos, relationsIndexerBatch)
		if err != nil {
			return err
		}
		if head <= pos {
			return nil
		}
		// A full batch may stop short of the head: the next read goes on
		// from its last event.
		to := head
		if len(evs) == relationsIndexerBatch && evs[len(evs)-1].StreamPos < head {
			to = evs[len(evs)-1].StreamPos
		}
		if len(evs) > 0 || to-stored >= relationsPositionLag {
			err = ix.db.Write(ctx, func(tx storage.Tx) error {
				for _, ev := range evs {
					if err := indexRelation(ctx, tx, ev); err != nil {
						return err
					}
				}
				_, err := tx.Exec(ctx, `INSERT INTO room_indexer_positions (name, position) VALUES ($1, $2)
					ON CONFLICT (name) DO UPDATE SET position = excluded.position`, relationsIndexerName, to)
				return err
			})
			if err != nil {
				return err
			}
			stored = to
		}
		ix.indexed, pos = to, to
	}
}

// indexRelation records ev's relation, or removes the relation of the
// event ev redacts (a redacted event's content, m.relates_to included,
// is gone). Spec: client-server-api, "Redactions" and "Relations".
func indexRelation(ctx context.Context, tx storage.Tx, ev *roomserver.Event) error {
	if ev.Type == "m.room.redaction" && ev.Redacts != "" {
		_, err := tx.Exec(ctx, `DELETE FROM room_relations WHERE event_id = $1 AND room_id = $2`, ev.Redacts, ev.RoomID)
		return err
	}
	if ev.RedactedBecause != "" {
		return nil
	}
	rel, ok := relationOf(ev)
	if !ok {
		return nil
	}
	_, err := tx.Exec(ctx, `INSERT INTO room_relations
		(event_id, room_id, relates_to, rel_type, event_type, sender, stream_pos, origin_server_ts)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (event_id) DO NOTHING`,
		rel.EventID, rel.RoomID, rel.RelatesTo, rel.RelType, rel.EventType, rel.Sender, rel.StreamPos, rel.OriginServerTS)
	return err
}

// relationsQuery selects children of one event.
type relationsQuery struct {
	RoomID             string
	RelType, EventType string // "" for any
	From, To           int64  // stream positions bounding the page (exclusive); 0 for none
	Forward            bool
	Limit              int
}

// children returns relations of parents in stream order (newest first
// unless Forward).
func (s *Server) children(ctx context.Context, q relationsQuery, parents []string) ([]relation, error) {
	var b strings.Builder
	args := []any{q.RoomID}
	b.WriteString(`SELECT event_id, room_id, relates_to, rel_type, event_type, sender, stream_pos, origin_server_ts
		FROM room_relations WHERE room_id = $1 AND relates_to IN (`)
	for i, p := range parents {
		if i > 0 {
			b.WriteString(", ")
		}
		args = append(args, p)
		fmt.Fprintf(&b, "$%d", len(args))
	}
	b.WriteString(")")
	if q.RelType != "" {
		args = append(args, q.RelType)
		fmt.Fprintf(&b, " AND rel_type = $%d", len(args))
	}
	if q.EventType != "" {
		args = append(args, q.EventType)
		fmt.Fprintf(&b, " AND event_type = $%d", len(args))
	}
	lower, upper := q.From, q.To
	if !q.Forward {
		lower, upper = q.To, q.From
	}
	if lower > 0 {
		args = append(args, lower)
		fmt.Fprintf(&b, " AND stream_pos > $%d", len(args))
	}
	if upper > 0 {
		args = append(args, upper)
		fmt.Fprintf(&b, " AND stream_pos < $%d", len(args))
	}
	if q.Forward {
		b.WriteString(" ORDER BY stream_pos")
	} else {
		b.WriteString(" ORDER BY stream_pos DESC")
	}
	args = append(args, q.Limit)
	fmt.Fprintf(&b, " LIMIT $%d", len(args))
	rows, err := s.db.Reader().Query(ctx, b.String(), args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []relation
	for rows.Next() {
		var r relation
		if err := rows.Scan(&r.EventID, &r.RoomID, &r.RelatesTo, &r.RelType, &r.EventType, &r.Sender, &r.StreamPos, &r.OriginServerTS); err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	return out, rows.Err()
}

// childrenOfRooms is children(relationsQuery{RoomID: room, Forward:
// true, Limit: limit}, parents) for each room and its parents in
// byRoom, with one query per 500 parents instead of one per room: an
// initial /sync bundles the aggregations of every room's timeline at
// once. A relation counts for a room only when it is in that room, as
// children's room_id condition requires; each room keeps its first
// limit relations in stream order.
func (s *Server) childrenOfRooms(ctx context.Context, byRoom map[string][]string, limit int) (map[string][]relation, error) {
	roomOf := map[string]string{}
	var parents []string
	for roomID, ids := range byRoom {
		for _, id := range ids {
			roomOf[id] = roomID
			parents = append(parents, id)
		}
	}
	var all []relation
	var query string // the text for a part of len(args) parents
	args := make([]any, 0, min(len(parents), 500))
	for start := 0; start < len(parents); start += 500 {
		part := parents[start:min(start+500, len(parents))]
		args = args[:0]
		for _, p := range part {
			args = append(args, p)
		}
		if query == "" || len(part) < 500 {
			query = childrenOfRoomsQuery(len(part))
		}
		rows, err := s.db.Reader().Query(ctx, query, args...)
		if err != nil {
			return nil, err
		}
		for rows.Next() {
			var r relation
			if err := rows.Scan(&r.EventID, &r.RoomID, &r.RelatesTo, &r.RelType, &r.EventType, &r.Sender, &r.StreamPos, &r.OriginServerTS); err != nil {
				rows.Close()
				return nil, err
			}
			if roomOf[r.RelatesTo] == r.RoomID {
				all = append(all, r)
			}
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return nil, err
		}
	}
	slices.SortFunc(all, func(a, b relation) int { return cmp.Compare(a.StreamPos, b.StreamPos) })
	out := make(map[string][]relation, len(byRoom))
	for _, r := range all {
		if len(out[r.RoomID]) < limit {
			out[r.RoomID] = append(out[r.RoomID], r)
		}
	}
	return out, nil
}

// childrenOfRoomsQuery is childrenOfRooms' query for n parents.
func childrenOfRoomsQuery(n int) string {
	b := make([]byte, 0, 160+n*6)
	b = append(b, `SELECT event_id, room_id, relates_to, rel_type, event_type, sender, stream_pos, origin_server_ts
		FROM room_relations WHERE relates_to IN (`...)
	for i := 1; i <= n; i++ {
		if i > 1 {
			b = append(b, ", "...)
		}
		b = append(b, '$')
		b = strconv.AppendInt(b, int64(i), 10)
	}
	return string(append(b, ')'))
}

// threadRoot is a thread and its latest activity.
type threadRoot struct {
	RootID    string
	LatestPos int64
}

// threadRoots lists a room's threads by latest activity, newest first,
// with latest activity below before (0: no bound); participant, if set,
// keeps only threads they started or replied in.
func (s *Server) threadRoots(ctx context.Context, roomID, participant string, before int64, limit int) ([]threadRoot, error) {
	query := `SELECT relates_to, MAX(stream_pos) AS latest FROM room_relations
		WHERE room_id = $1 AND rel_type = 'm.thread' GROUP BY relates_to`
	args := []any{roomID}
	if before > 0 {
		query += ` HAVING MAX(stream_pos) < $2`
		args = append(args, before)
	}
	query += ` ORDER BY latest DESC`
	rows, err := s.db.Reader().Query(ctx, query, args...)
	if err != nil {
		return nil, err
	}
	var all []threadRoot
	for rows.Next() {
		var t threadRoot
		if err := rows.Scan(&t.RootID, &t.LatestPos); err != nil {
			rows.Close()
			return nil, err
		}
		all = append(all, t)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, err
	}
	var out []threadRoot
	for _, t := range all {
		if len(out) == limit {
			break
		}
		if participant != "" {
			took, err := s.participated(ctx, roomID, t.RootID, participant)
			if err != nil {
				return nil, err
			}
			if !took {
				continue
			}
		}
		out = append(out, t)
	}
	return out, nil
}

// participated reports whether userID sent an m.thread reply to rootID
// or the root itself.
// Spec: client-server-api, "Server-side aggregation of m.thread relationships".
func (s *Server) participated(ctx context.Context, roomID, rootID, userID string) (bool, error) {
	var n int
	err := s.db.Reader().QueryRow(ctx, `SELECT COUNT(*) FROM room_relations
		WHERE room_id = $1 AND relates_to = $2 AND rel_type = 'm.thread' AND sender = $3`, roomID, rootID, userID).Scan(&n)
	if err != nil || n > 0 {
		return n > 0, err
	}
	root, err := s.rooms.rooms.Event(ctx, userID, rootID)
	if err != nil {
		return false, nil
	}
	return root.Sender == userID, nil
}
