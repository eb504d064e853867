package clientapi

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/myelin-chat/myelin/storage"
)

// A deactivated account leaves its rooms. deactivateAccount, shared by
// POST /account/deactivate and `myelin user deactivate`, queues the
// account in deactivation_leaves in the deactivation's own transaction;
// a server process leaves the rooms and then deletes the row. The admin
// command never leaves them itself: it runs in another process, outside
// the roomserver's per-room serialisation and without the federation
// sender, so it leaves that work to the server, which takes the queue up
// at its start and every deactivationPoll (the command cannot wake it).
// The HTTP path leaves the rooms before answering.
//
// The spec asks nothing of rooms on deactivation
// (client-server-api, "POST /_matrix/client/v3/account/deactivate");
// leaving them keeps a dead account out of member lists, invites and
// knocks, and tells the other servers, as Synapse does.

// deactivationPoll is how often a server process looks for queued
// leaves: those of accounts another process deactivated, and those a
// failure left behind. A var so that tests can shorten it.
var deactivationPoll = time.Minute

// deactivationLeaves serialises a process's passes over the queue.
type deactivationLeaves struct {
	mu sync.Mutex
	// wake asks the runner for a pass before its next poll
	// (WakeQueuedLeaves); buffered, one pending wake-up is enough.
	wake chan struct{}
}

// startDeactivationLeaves takes the queues up — the deactivated
// accounts' and the guests' of rooms closed to them (guest_leaves.go) —
// now, every deactivationPoll and when woken, until ctx ends.
func (s *Server) startDeactivationLeaves(ctx context.Context) {
	s.background.Add(1)
	go func() {
		defer s.background.Done()
		t := time.NewTicker(deactivationPoll)
		defer t.Stop()
		for {
			if err := s.leaveDeactivatedRooms(ctx, ""); err != nil && ctx.Err() == nil {
				s.log.Warn("leaving the rooms of deactivated accounts", "err", err)
			}
			if err := s.leaveClosedGuestRooms(ctx); err != nil && ctx.Err() == nil {
				s.log.Warn("making guests leave rooms closed to them", "err", err)
			}
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			case <-s.deactivation.wake:
			}
		}
	}()
}

// leaveDeactivatedRooms makes the queued accounts (only localpart's
// when it is not empty) leave every room they are joined to, invited to
// or knocking on, each as its own POST /leave would, and dequeues those
// that have none left. An account whose leaves failed stays queued for
// the next pass.
func (s *Server) leaveDeactivatedRooms(ctx context.Context, localpart string) error {
	s.deactivation.mu.Lock()
	defer s.deactivation.mu.Unlock()
	query, args := `SELECT localpart FROM deactivation_leaves ORDER BY queued_ts`, []any{}
	if localpart != "" {
		query, args = `SELECT localpart FROM deactivation_leaves WHERE localpart = $1`, []any{localpart}
	}
	rows, err := s.db.Reader().Query(ctx, query, args...)
	if err != nil {
		return err
	}
	var queued []string
	for rows.Next() {
		var lp string
		if err := rows.Scan(&lp); err != nil {
			rows.Close()
			return err
		}
		queued = append(queued, lp)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return err
	}
	var errs []error
	for _, lp := range queued {
		if err := s.leaveEveryRoom(ctx, s.userID(lp)); err != nil {
			errs = append(errs, err)
			continue
		}
		err := s.db.Write(ctx, func(tx storage.Tx) error {
			if s.endPendingMemberships != nil {
				// Its pending invites and knocks (and their leaves) end
				// with the account's leaves, in the commit that
				// dequeues it: none outlives it, answered or not.
				if err := s.endPendingMemberships(ctx, tx, s.userID(lp)); err != nil {
					return err
				}
			}
			_, err := tx.Exec(ctx, `DELETE FROM deactivation_leaves WHERE localpart = $1`, lp)
			return err
		})
		if err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// leaveEveryRoom leaves, rejects or withdraws every membership of
// userID that is join, invite or knock, going on past a failure. The
// pending invites to and knocks on rooms only other servers hold are
// rejected or withdrawn through those servers too, but a failure there
// (a server gone for good) does not keep the account queued: those end
// here anyway when the account is dequeued (Deps.EndPendingMemberships).
func (s *Server) leaveEveryRoom(ctx context.Context, userID string) error {
	var errs []error
	done := map[string]bool{}
	for _, membership := range []string{"join", "invite", "knock"} {
		roomIDs, err := s.rooms.rooms.RoomsForUser(ctx, userID, membership)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		for _, roomID := range roomIDs {
			done[roomID] = true
			if err := s.leave(ctx, userID, roomID, ""); err != nil {
				errs = append(errs, err)
			}
		}
	}
	if s.federation == nil {
		return errors.Join(errs...)
	}
	pending, err := s.federation.PendingRemoteRooms(ctx, userID)
	if err != nil {
		return errors.Join(append(errs, err)...)
	}
	for _, roomID := range pending {
		if done[roomID] {
			continue
		}
		if err := s.leave(ctx, userID, roomID, ""); err != nil {
			s.log.Info("a deactivated account's pending invite or knock could not be answered", "room_id", roomID, "err", err)
		}
	}
	return errors.Join(errs...)
}
