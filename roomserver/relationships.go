package roomserver

import (
	"context"
	"crypto/sha256"
	"embed"
	"encoding/base64"
	"encoding/json"
	"io/fs"
	"slices"
	"strconv"
	"strings"

	"github.com/tidwall/gjson"

	"github.com/myelin-chat/myelin/internal/mxerr"
	"github.com/myelin-chat/myelin/storage"
)

// MSC2836 threading: events name the event they reply to in
// content."m.relationship" ({"rel_type", "event_id"}); POST
// /event_relationships walks the tree of such replies from one event,
// for clients (clientapi) and for other servers (federationapi). This
// file holds the index of relationships and the children figures other
// servers report; relationships_walk.go the walk itself.
// Spec: MSC2836 (proposals/2836-threading.md), "Making relationships",
// "Querying relationships" and "Exploring dense threads".

// The relationship tables are a migration set of their own, so their
// numbering never collides with the roomserver's main set.
//
//go:embed relationships_migrations/*.sql
var relationshipMigrations embed.FS

// relationshipsComponent is the schema component name of
// relationshipMigrations.
const relationshipsComponent = "roomserver_relationships"

// maxRelTypeLen bounds the rel_type indexed: it is echoed as a key of
// unsigned.children, so it must stay small.
const maxRelTypeLen = 255

// migrateRelationships creates the relationship tables and, once,
// indexes the events stored before they existed.
func migrateRelationships(ctx context.Context, db *storage.DB) error {
	sub, err := fs.Sub(relationshipMigrations, "relationships_migrations")
	if err != nil {
		return err
	}
	if err := db.Migrate(ctx, relationshipsComponent, sub); err != nil {
		return err
	}
	return db.Write(ctx, func(tx storage.Tx) error {
		var n int
		if err := tx.QueryRow(ctx, `SELECT COUNT(*) FROM roomserver_relationships_backfilled`).Scan(&n); err != nil || n > 0 {
			return err
		}
		rows, err := tx.Query(ctx, `SELECT event_id, room_id, json, origin_server_ts, rejected FROM roomserver_events
			WHERE json LIKE '%m.relationship%'`)
		if err != nil {
			return err
		}
		var found []*eventRow
		for rows.Next() {
			e := &eventRow{}
			if err := rows.Scan(&e.EventID, &e.RoomID, &e.JSON, &e.OriginServerTS, &e.Rejected); err != nil {
				rows.Close()
				return err
			}
			found = append(found, e)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return err
		}
		for _, e := range found {
			if err := indexRelationship(ctx, tx, e); err != nil {
				return err
			}
		}
		_, err = tx.Exec(ctx, `INSERT INTO roomserver_relationships_backfilled (done) VALUES ($1)`, true)
		return err
	})
}

// relationshipOf reads an event's m.relationship: the event it relates
// to and the relation type. ok is false when there is none, or it is
// malformed (no rel_type, or an event_id that is not an event ID), or
// the event names itself.
func relationshipOf(eventID, eventJSON string) (parentID, relType string, ok bool) {
	parentID, relType, ok = parseRelationship(gjson.Get(eventJSON, `content.m\.relationship`))
	if !ok || parentID == eventID {
		return "", "", false
	}
	return parentID, relType, true
}

// ContentRelationship reads the m.relationship of event content, as
// relationshipOf does (a client's new event has no ID yet, so it cannot
// name itself).
func ContentRelationship(content []byte) (parentID, relType string, ok bool) {
	return parseRelationship(gjson.GetBytes(content, `m\.relationship`))
}

func parseRelationship(rel gjson.Result) (parentID, relType string, ok bool) {
	if !rel.IsObject() {
		return "", "", false
	}
	parent, typ := rel.Get("event_id"), rel.Get("rel_type")
	if parent.Type != gjson.String || typ.Type != gjson.String {
		return "", "", false
	}
	parentID, relType = parent.Str, typ.Str
	if !validEventID(parentID) || relType == "" || len(relType) > maxRelTypeLen {
		return "", "", false
	}
	return parentID, relType, true
}

// validEventID reports whether id has an event ID's shape: the $ sigil
// and at most 255 bytes. Spec: appendices, "Event IDs".
func validEventID(id string) bool {
	return len(id) >= 2 && len(id) <= 255 && id[0] == '$'
}

// indexRelationship records e's m.relationship, if it has one, in tx:
// insertEvent calls it for every event stored, timeline events and
// outliers alike, so the index never lags the events. Rejected events
// are left out: they are never shown and must not count as children.
// The relationship is read from the event as first stored, so redacting
// the event later keeps it (MSC2836: a redaction does not break the
// thread).
func indexRelationship(ctx context.Context, tx storage.Tx, e *eventRow) error {
	if e.Rejected {
		return nil
	}
	parentID, relType, ok := relationshipOf(e.EventID, e.JSON)
	if !ok {
		return nil
	}
	_, err := tx.Exec(ctx, `INSERT INTO roomserver_relationships (event_id, room_id, parent_id, rel_type, origin_server_ts)
		VALUES ($1, $2, $3, $4, $5) ON CONFLICT (event_id) DO NOTHING`,
		e.EventID, e.RoomID, parentID, relType, e.OriginServerTS)
	return err
}

// relChild is one known child of an event.
type relChild struct {
	EventID, RelType string
	OriginServerTS   int64
}

// childrenOf lists the known children of parentID in roomID, oldest
// first (ties by event ID, so the order is stable).
func childrenOf(ctx context.Context, q storage.Querier, roomID, parentID string) ([]relChild, error) {
	rows, err := q.Query(ctx, `SELECT event_id, rel_type, origin_server_ts FROM roomserver_relationships
		WHERE parent_id = $1 AND room_id = $2 ORDER BY origin_server_ts, event_id`, parentID, roomID)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []relChild
	for rows.Next() {
		var c relChild
		if err := rows.Scan(&c.EventID, &c.RelType, &c.OriginServerTS); err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	return out, rows.Err()
}

// parentOf returns the event eventID relates to ("" if none is indexed).
func parentOf(ctx context.Context, q storage.Querier, eventID string) (string, error) {
	var parent string
	err := q.QueryRow(ctx, `SELECT parent_id FROM roomserver_relationships WHERE event_id = $1`, eventID).Scan(&parent)
	if storage.IsNoRows(err) {
		return "", nil
	}
	return parent, err
}

// ChildrenSummary is an event's unsigned children figures: the number
// of children per rel_type and the unpadded base64 SHA-256 of their
// event IDs, deduplicated, sorted and concatenated.
// Spec: MSC2836, "Exploring dense threads".
type ChildrenSummary struct {
	Children map[string]int64
	Hash     string
}

// Total is the number of children over all relation types.
func (c ChildrenSummary) Total() int64 {
	var n int64
	for _, v := range c.Children {
		n += v
	}
	return n
}

// summarise computes the summary of a set of children.
func summarise(children []relChild) ChildrenSummary {
	sum := ChildrenSummary{Children: map[string]int64{}}
	ids := make([]string, 0, len(children))
	for _, c := range children {
		sum.Children[c.RelType]++
		ids = append(ids, c.EventID)
	}
	slices.Sort(ids)
	ids = slices.Compact(ids)
	h := sha256.Sum256([]byte(strings.Join(ids, "")))
	sum.Hash = base64.RawStdEncoding.EncodeToString(h[:])
	return sum
}

// remoteChildren is what other servers reported about an event's
// children, and what that was when this server last asked about them.
type remoteChildren struct {
	ChildrenSummary
	total         int64
	exploredTotal int64
	exploredHash  string
}

func loadRemoteChildren(ctx context.Context, q storage.Querier, eventID string) (*remoteChildren, error) {
	var raw string
	r := &remoteChildren{}
	err := q.QueryRow(ctx, `SELECT children, total, children_hash, explored_total, explored_hash
		FROM roomserver_relationship_children WHERE event_id = $1`, eventID).
		Scan(&raw, &r.total, &r.Hash, &r.exploredTotal, &r.exploredHash)
	if storage.IsNoRows(err) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	if err := json.Unmarshal([]byte(raw), &r.Children); err != nil {
		return nil, err
	}
	return r, nil
}

// maxReportedChildren bounds a count another server reports (it is only
// ever compared and echoed; no server has more children than this).
const maxReportedChildren = 1 << 40

// ParseUnsignedChildren reads unsigned.children and
// unsigned.children_hash of an event another server sent; ok is false
// when they are absent, malformed, or report no children.
func ParseUnsignedChildren(eventJSON []byte) (ChildrenSummary, bool) {
	unsigned := gjson.GetBytes(eventJSON, "unsigned")
	children, hash := unsigned.Get("children"), unsigned.Get("children_hash")
	if !children.IsObject() || hash.Type != gjson.String {
		return ChildrenSummary{}, false
	}
	if _, err := base64.RawStdEncoding.DecodeString(hash.Str); err != nil || len(hash.Str) != 43 {
		return ChildrenSummary{}, false
	}
	sum := ChildrenSummary{Children: map[string]int64{}, Hash: hash.Str}
	ok := true
	children.ForEach(func(k, v gjson.Result) bool {
		if k.Str == "" || len(k.Str) > maxRelTypeLen || v.Type != gjson.Number || v.Raw != strconv.FormatInt(v.Int(), 10) ||
			v.Int() < 0 || v.Int() > maxReportedChildren || len(sum.Children) >= 64 {
			ok = false
			return false
		}
		sum.Children[k.Str] = v.Int()
		return true
	})
	if !ok || sum.Total() == 0 {
		return ChildrenSummary{}, false
	}
	return sum, true
}

// RecordRemoteChildren keeps the children figures another server
// reported for eventID (a stored event), when they count more children
// than the figures kept so far: MSC2836 has a server return "the
// unsigned section which produces the most children".
func (s *Server) RecordRemoteChildren(ctx context.Context, eventID string, sum ChildrenSummary) error {
	if sum.Total() == 0 {
		return nil
	}
	if known, err := eventRowsByID(ctx, s.db.Reader(), []string{eventID}); err != nil {
		return err
	} else if _, ok := known[eventID]; !ok {
		return mxerr.New(mxerr.NotFound, "unknown event %s", eventID)
	}
	raw, err := json.Marshal(sum.Children)
	if err != nil {
		return err
	}
	return s.db.Write(ctx, func(tx storage.Tx) error {
		_, err := tx.Exec(ctx, `INSERT INTO roomserver_relationship_children (event_id, children, total, children_hash)
			VALUES ($1, $2, $3, $4)
			ON CONFLICT (event_id) DO UPDATE SET children = excluded.children, total = excluded.total,
				children_hash = excluded.children_hash
			WHERE roomserver_relationship_children.total < excluded.total`,
			eventID, string(raw), sum.Total(), sum.Hash)
		return err
	})
}

// markExplored records that other servers were asked about eventID's
// children: the figures reported so far count as explored, and the walk
// does not ask again until a server reports something new.
func (s *Server) markExplored(ctx context.Context, eventID string) error {
	return s.db.Write(ctx, func(tx storage.Tx) error {
		_, err := tx.Exec(ctx, `UPDATE roomserver_relationship_children SET explored_total = total, explored_hash = children_hash
			WHERE event_id = $1`, eventID)
		return err
	})
}
