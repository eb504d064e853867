package roomserver

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"time"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/tidwall/gjson"

	"github.com/myelin-chat/myelin/storage"
)

// Backfill: history a room joined over federation had before we joined.
// Spec: server-server-api, "Backfilling and retrieving missing events".
//
// When a backwards /messages reaches the oldest timeline event held here
// and that event's prev_events are not held (walking through outliers),
// the roomserver asks its Backfiller (federationapi) for the events
// before them, and persists what comes back as historical events:
//   - each must be allowed by its own auth events (held, or in the batch);
//   - they never change the current state, the forward extremities or the
//     room's stream: their event NIDs are negative (below every other),
//     so sync, the federation sender and stream tokens never see them,
//     while /messages orders them by depth as usual;
//   - their state before (for history visibility) is the state before
//     the oldest timeline event held, an approximation: a
//     history_visibility change inside the backfilled span is not seen.

// Backfiller fetches history from other servers in a room.
type Backfiller interface {
	// Backfill returns up to limit events preceding from (event IDs),
	// from a server in the room, each one with signatures and hashes
	// verified, as federation JSON.
	Backfill(ctx context.Context, roomID string, from []string, limit int) ([]json.RawMessage, error)
	// TimestampToEvent returns the ID and federation JSON of the event
	// another server in roomID finds closest to ts in direction dir,
	// with signatures and hash verified.
	TimestampToEvent(ctx context.Context, roomID string, ts int64, dir Direction) (string, json.RawMessage, error)
}

// SetBackfiller sets the Backfiller. Call it before serving.
func (s *Server) SetBackfiller(b Backfiller) { s.backfiller = b }

// pgBackfillLock serialises the allocation of negative event NIDs.
const pgBackfillLock = 4242103

// backfillTimeout bounds the remote requests of one /messages.
const backfillTimeout = 5 * time.Second

// maxOutlierWalk bounds the walk through outliers looking for the
// events to backfill from.
const maxOutlierWalk = 200

// backfillIfAtStart backfills roomID when fewer than limit timeline
// events lie before token from, or when one of the next limit events
// before it has prev events not held (a gap in the middle of the
// timeline). Errors are logged, not returned: the client gets what is
// held.
func (s *Server) backfillIfAtStart(ctx context.Context, roomID string, from pageFrom, limit int) {
	if s.backfiller == nil {
		return
	}
	q := s.db.Reader()
	var n int
	cond, args := from.where(Backward)
	rows, err := q.Query(ctx, `SELECT json FROM roomserver_events WHERE room_id = $1
		AND NOT rejected AND NOT soft_failed AND `+cond+fmt.Sprintf(` ORDER BY depth DESC, event_nid DESC LIMIT $%d`, len(args)+2),
		append(append([]any{roomID}, args...), limit)...)
	if err != nil {
		return
	}
	var prevs []string
	for rows.Next() {
		var raw string
		if rows.Scan(&raw) == nil {
			prevs = append(prevs, prevEventIDsOf(raw)...)
		}
		n++
	}
	rows.Close()
	if rows.Err() != nil {
		return
	}
	// A gap inside the page: prev events not held at all (a room left
	// and joined again, whose timeline went on meanwhile).
	missing, err := s.unheld(ctx, q, prevs)
	if err != nil {
		return
	}
	if len(missing) == 0 && n < limit {
		// The start of what is held: what precedes the oldest event.
		if missing, err = s.backwardExtremities(ctx, q, roomID); err != nil {
			return
		}
	}
	if len(missing) == 0 {
		return
	}
	// A client waits for this; an unreachable server must not hold it.
	ctx, cancel := context.WithTimeout(ctx, backfillTimeout)
	defer cancel()
	evs, err := s.backfiller.Backfill(ctx, roomID, missing, max(limit, 20))
	if err != nil {
		return
	}
	_, _ = s.PersistBackfill(ctx, roomID, evs)
}

// unheld returns those of ids that are not held, outliers included.
func (s *Server) unheld(ctx context.Context, q storage.Querier, ids []string) ([]string, error) {
	if len(ids) == 0 {
		return nil, nil
	}
	query, args := storage.InList(`SELECT event_id FROM roomserver_events WHERE event_id IN `, ids)
	held, err := storage.QueryColumn[string](ctx, q, query, args...)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, id := range ids {
		if !slices.Contains(held, id) && !slices.Contains(out, id) {
			out = append(out, id)
		}
	}
	return out, nil
}

// backwardExtremities returns the prev events of the oldest timeline
// event of roomID that are not held, walking through held outliers.
func (s *Server) backwardExtremities(ctx context.Context, q storage.Querier, roomID string) ([]string, error) {
	var oldest string
	err := q.QueryRow(ctx, `SELECT json FROM roomserver_events WHERE room_id = $1 AND NOT rejected AND NOT soft_failed
		ORDER BY depth, event_nid LIMIT 1`, roomID).Scan(&oldest)
	if err != nil {
		return nil, err
	}
	queue, seen := prevEventIDsOf(oldest), map[string]bool{}
	var missing []string
	for len(queue) > 0 && len(seen) < maxOutlierWalk {
		id := queue[0]
		queue = queue[1:]
		if seen[id] {
			continue
		}
		seen[id] = true
		row, err := eventRowByID(ctx, q, id)
		if err != nil {
			missing = append(missing, id)
			continue
		}
		queue = append(queue, prevEventIDsOf(row.JSON)...)
	}
	return missing, nil
}

// PersistBackfill stores verified backfilled events of roomID that are
// not held yet, or held only as outliers, and are allowed by their auth
// events, as historical events (see above). It returns how many it stored.
func (s *Server) PersistBackfill(ctx context.Context, roomID string, raws []json.RawMessage) (int, error) {
	room, err := loadRoom(ctx, s.db.Reader(), roomID)
	if err != nil {
		return 0, err
	}
	impl, err := roomVersion(room.Version)
	if err != nil {
		return 0, err
	}
	byID := map[string]gomatrixserverlib.PDU{}
	for _, raw := range raws {
		pdu, err := parseUntrustedPDU(impl, raw)
		if err != nil || pdu.RoomID().String() != roomID || CheckPDUFieldLimits(pdu) != nil {
			continue
		}
		byID[pdu.EventID()] = pdu
	}
	unlock := s.lockRoom(ctx, roomID)
	defer unlock()
	stored := 0
	err = s.db.Write(ctx, func(tx storage.Tx) error {
		stored = 0
		if s.db.Engine() == storage.Postgres {
			if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, pgBackfillLock); err != nil {
				return err
			}
		}
		var before int64
		if err := tx.QueryRow(ctx, `SELECT state_before FROM roomserver_events WHERE room_id = $1 AND NOT rejected
			AND NOT soft_failed AND event_nid > 0 ORDER BY depth, event_nid LIMIT 1`, roomID).Scan(&before); err != nil {
			return fmt.Errorf("no timeline event to backfill before: %w", err)
		}
		known, err := eventRowsByID(ctx, tx, mapKeys(byID))
		if err != nil {
			return err
		}
		var nid int64
		if err := tx.QueryRow(ctx, `SELECT COALESCE(MIN(event_nid), 0) FROM roomserver_events`).Scan(&nid); err != nil {
			return err
		}
		nid = min(nid, 0)
		// Decided oldest first, so a batch event's auth events come
		// before it; stored newest first, so that history positions
		// descend as history goes back (the order server-side search
		// lists backfilled history in, newest first).
		var accepted []string
		for _, id := range sortedByDepth(byID) {
			// An outlier reached by backfill takes its place in the
			// history (outlier_promotion.go).
			held := known[id]
			if held != nil && !isOutlierRow(held) {
				continue
			}
			pdu := byID[id]
			var auth []gomatrixserverlib.PDU
			ok := true
			for _, a := range pdu.AuthEventIDs() {
				if ae, in := byID[a]; in {
					auth = append(auth, ae)
					continue
				}
				got, err := s.loadEventsByID(ctx, tx, nil, []string{a})
				if err != nil {
					return err
				}
				e, held := got[a]
				if !held || e.row.Rejected {
					ok = false
					break
				}
				auth = append(auth, e.pdu)
			}
			if !ok || allowed(pdu, auth) != nil {
				delete(byID, id) // never an auth event for later ones
				continue
			}
			accepted = append(accepted, id)
		}
		for _, id := range slices.Backward(accepted) {
			held, pdu := known[id], byID[id]
			nid--
			row := rowFromPDU(pdu)
			row.NID, row.StateBefore, row.StateAfter = nid, before, before
			if held != nil {
				if _, err := tx.Exec(ctx, `DELETE FROM roomserver_events WHERE event_nid = $1`, held.NID); err != nil {
					return err
				}
			}
			if _, err := tx.Exec(ctx, `INSERT INTO roomserver_events (event_nid, event_id, room_id, type, state_key, sender,
				membership, depth, origin_server_ts, redacts, json, rejected, soft_failed, state_before, state_after)
				VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, FALSE, FALSE, $12, $13)`,
				row.NID, row.EventID, row.RoomID, row.Type, row.StateKey, row.Sender, row.Membership, row.Depth,
				row.OriginServerTS, row.Redacts, row.JSON, row.StateBefore, row.StateAfter); err != nil {
				return fmt.Errorf("inserting backfilled event %s: %w", id, err)
			}
			// A local user's annotation can come back in history (a room
			// joined again): it still counts against their duplicates.
			if err := indexAnnotation(ctx, tx, row); err != nil {
				return err
			}
			if held != nil {
				if err := s.moveEventNID(ctx, tx, roomID, id, held.NID, nid); err != nil {
					return err
				}
			}
			// The rule of the normal path (input.go): a redaction already
			// held for this event (it came first, over /send) redacts it
			// now, in this transaction, so that it is never stored, served
			// or indexed for search unredacted; and a backfilled redaction
			// redacts its target if held.
			// Spec: client-server-api, "Redactions".
			loaded, err := parseRow(room.Version, row)
			if err != nil {
				return err
			}
			if err := s.applyRedactions(ctx, tx, room, loaded); err != nil {
				return err
			}
			stored++
		}
		return nil
	})
	return stored, err
}

// prevEventIDsOf reads the prev_events of a stored event's JSON, in
// either format (room versions 1 and 2: [id, hashes] pairs).
func prevEventIDsOf(raw string) []string {
	var out []string
	gjson.Get(raw, "prev_events").ForEach(func(_, p gjson.Result) bool {
		switch {
		case p.Type == gjson.String:
			out = append(out, p.Str)
		case p.IsArray():
			if id := p.Get("0"); id.Type == gjson.String {
				out = append(out, id.Str)
			}
		}
		return true
	})
	return out
}
