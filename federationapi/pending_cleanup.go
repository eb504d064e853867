package federationapi

import (
	"context"
	"encoding/json"

	"github.com/myelin-chat/myelin/internal/mxerr"
	"github.com/myelin-chat/myelin/storage"
)

// stalePending is a pending membership row read by cleanStalePending.
type stalePending struct{ userID, roomID, eventID string }

// pendingCleanupBatch is how many rows cleanStalePending reads, and
// deletes at most, per transaction.
const pendingCleanupBatch = 200

// maxMemberChain bounds the walk back through a user's member events.
const maxMemberChain = 1000

// cleanStalePending deletes, once (migration 009 queues it), the pending
// invites and knocks (and their leaves) that binaries before session 18
// left behind although the room's own events had superseded them: a
// newer binary ends a row in the commit of the user's member event in the
// room (EndPendingMembershipInTx), the older ones did not.
//
// A row is stale only if rowSuperseded says so: its own event is an
// earlier member event of the user that the user's current member event
// in a room held here, with full state, was built on. Every other row is
// kept (any doubt keeps it): the current member event may be the row's
// own event (the invite is still open), the room's state may not yet
// reflect the row's event (a later invite), or the state may be partial.
// The rows are read and deleted in batches, one transaction each, each
// row only as read (its event ID), so a row replaced meanwhile by a new
// invite or knock is kept. The mark goes in the last batch's
// transaction; a failure leaves it, and the next start checks again (the
// check is exact, so running it again deletes nothing it should keep).
func (s *Server) cleanStalePending(ctx context.Context) error {
	var due int
	if err := s.db.Reader().QueryRow(ctx, `SELECT COUNT(*) FROM federation_pending_cleanup`).Scan(&due); err != nil || due == 0 {
		return err
	}
	removed := 0
	afterUser, afterRoom := "", ""
	for {
		batch, err := s.pendingRowsAfter(ctx, afterUser, afterRoom)
		if err != nil {
			return err
		}
		var stale []stalePending
		for _, p := range batch {
			ok, err := s.rowSuperseded(ctx, p)
			if err != nil {
				return err
			}
			if ok {
				stale = append(stale, p)
			}
		}
		last := len(batch) < pendingCleanupBatch
		n := 0
		err = s.db.Write(ctx, func(tx storage.Tx) error {
			n = 0
			for _, p := range stale {
				res, err := tx.Exec(ctx, `DELETE FROM federation_remote_invites WHERE user_id = $1 AND room_id = $2 AND event_id = $3`,
					p.userID, p.roomID, p.eventID)
				if err != nil {
					return err
				}
				k, err := res.RowsAffected()
				if err != nil {
					return err
				}
				n += int(k)
			}
			if last {
				_, err := tx.Exec(ctx, `DELETE FROM federation_pending_cleanup`)
				return err
			}
			return nil
		})
		if err != nil {
			return err
		}
		removed += n
		if last {
			break
		}
		afterUser, afterRoom = batch[len(batch)-1].userID, batch[len(batch)-1].roomID
	}
	s.log.Info("removed the pending invites and knocks that the room's own events had superseded", "rows", removed)
	return nil
}

// pendingRowsAfter reads the next batch of pending rows, in key order.
func (s *Server) pendingRowsAfter(ctx context.Context, afterUser, afterRoom string) ([]stalePending, error) {
	rows, err := s.db.Reader().Query(ctx, `SELECT user_id, room_id, event_id FROM federation_remote_invites
		WHERE user_id > $1 OR (user_id = $1 AND room_id > $2) ORDER BY user_id, room_id LIMIT $3`,
		afterUser, afterRoom, pendingCleanupBatch)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []stalePending
	for rows.Next() {
		var p stalePending
		if err := rows.Scan(&p.userID, &p.roomID, &p.eventID); err != nil {
			return nil, err
		}
		out = append(out, p)
	}
	return out, rows.Err()
}

// rowSuperseded reports whether the room's own events have superseded
// p's event: the room is held here (a local user is joined) with full
// state, and the user's member event in its current state, M, is not
// p's event but comes after it in the user's membership history. That
// history is the chain of the user's member events through auth_events:
// each m.room.member event names the target's member event it was
// authorised against among its auth events (spec: server-server-api,
// "Auth events selection": "the current m.room.member event of the
// target"), so p's event on that chain means M was built on it. The
// stream order alone does not say this (state imported at a join is
// stored in one go, in no causal order), nor does M's mere existence (the
// held state may predate a later invite, or be partial).
func (s *Server) rowSuperseded(ctx context.Context, p stalePending) (bool, error) {
	held, err := s.heldHere(ctx, p.roomID)
	if err != nil || !held {
		return false, err
	}
	if partial, err := s.rooms.IsPartialState(ctx, p.roomID); err != nil || partial {
		return false, err
	}
	m, err := s.rooms.RoomStateEvent(ctx, p.roomID, "m.room.member", p.userID)
	if mxerr.Is(err, mxerr.NotFound) {
		return false, nil
	} else if err != nil {
		return false, err
	}
	if m.EventID == p.eventID {
		return false, nil // the row's own event is the user's membership
	}
	cur := m
	for range maxMemberChain {
		prev := ""
		for _, id := range authEventIDs(cur.JSON) {
			e, _, err := s.rooms.FederationEvent(ctx, id)
			if mxerr.Is(err, mxerr.NotFound) {
				continue
			} else if err != nil {
				return false, err
			}
			if e.RoomID == p.roomID && e.Type == "m.room.member" && e.StateKey != nil && *e.StateKey == p.userID {
				prev = e.EventID
				cur = e
				break
			}
		}
		if prev == "" {
			return false, nil
		}
		if prev == p.eventID {
			return true, nil
		}
	}
	return false, nil
}

// authEventIDs reads an event's auth_events in either format: event IDs
// (room versions 3 and later) or [event ID, hashes] pairs (1 and 2).
func authEventIDs(raw json.RawMessage) []string {
	var ev struct {
		AuthEvents []json.RawMessage `json:"auth_events"`
	}
	if json.Unmarshal(raw, &ev) != nil {
		return nil
	}
	var out []string
	for _, a := range ev.AuthEvents {
		var id string
		if json.Unmarshal(a, &id) == nil {
			out = append(out, id)
			continue
		}
		var pair []json.RawMessage
		if json.Unmarshal(a, &pair) == nil && len(pair) > 0 && json.Unmarshal(pair[0], &id) == nil {
			out = append(out, id)
		}
	}
	return out
}
