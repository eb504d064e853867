package federationapi

import (
	"context"

	"github.com/myelin-chat/myelin/storage"
)

// stalePending is a pending membership row read by cleanStalePending.
type stalePending struct{ userID, roomID, eventID string }

// cleanStalePending deletes, once (migration 009 queues it), the pending
// invites and knocks (and their leaves) that older binaries left behind
// although their membership had ended: rows of a room this server now
// holds (a local user is joined to it) in which the room's own events
// hold the user's member event. Such a row is never current: pending
// rows are written only for rooms this server does not hold, and since
// session 17 the commit of the user's member event in a held room ends
// it (EndPendingMembershipInTx); the room's events say where the user
// stands. A row of a room not held, or with no member event of the user
// in it, is kept. Each row is deleted only as read (its event ID), so a
// row replaced meanwhile by a new invite or knock is kept; the deletes
// and the marker's are one transaction, so a failure leaves the cleanup
// to the next start.
func (s *Server) cleanStalePending(ctx context.Context) error {
	var due int
	if err := s.db.Reader().QueryRow(ctx, `SELECT COUNT(*) FROM federation_pending_cleanup`).Scan(&due); err != nil || due == 0 {
		return err
	}
	rows, err := s.db.Reader().Query(ctx, `SELECT user_id, room_id, event_id FROM federation_remote_invites ORDER BY room_id, user_id`)
	if err != nil {
		return err
	}
	var all []stalePending
	for rows.Next() {
		var p stalePending
		if err := rows.Scan(&p.userID, &p.roomID, &p.eventID); err != nil {
			rows.Close()
			return err
		}
		all = append(all, p)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return err
	}
	var stale []stalePending
	held := map[string]bool{}
	for _, p := range all {
		h, ok := held[p.roomID]
		if !ok {
			var err error
			if h, err = s.heldHere(ctx, p.roomID); err != nil {
				return err
			}
			held[p.roomID] = h
		}
		if !h {
			continue
		}
		m, err := s.rooms.Membership(ctx, p.roomID, p.userID)
		if err != nil {
			return err
		}
		if m != "" {
			stale = append(stale, p)
		}
	}
	err = s.db.Write(ctx, func(tx storage.Tx) error {
		for _, p := range stale {
			if _, err := tx.Exec(ctx, `DELETE FROM federation_remote_invites WHERE user_id = $1 AND room_id = $2 AND event_id = $3`,
				p.userID, p.roomID, p.eventID); err != nil {
				return err
			}
		}
		_, err := tx.Exec(ctx, `DELETE FROM federation_pending_cleanup`)
		return err
	})
	if err == nil && len(stale) > 0 {
		s.log.Info("deleted pending invites and knocks that had ended in rooms held here", "rows", len(stale))
	}
	return err
}
