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
// The HTTP path leaves the rooms held here before answering; the
// pending invites to and knocks on rooms only other servers hold are
// answered through those servers by the runner (leaveDeactivatedRooms),
// which the request wakes, so that it never waits on another server.
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
	// answered (guarded by answeredMu, not mu: the runner answers
	// outside mu) holds, per queued account, the rooms only other servers
	// hold whose pending invite or knock this process already tried to
	// reject or withdraw, so that a pass does not repeat a remote call
	// for an account still queued; dequeueing the account drops its set.
	answeredMu sync.Mutex
	answered   map[string]map[string]bool
}

// remoteAnswerTimeout bounds each rejection or withdrawal, through
// another server, of a deactivated account's pending invite or knock;
// past it the federation API ends the membership with a local leave. A
// var so that tests can shorten it (TestDeactivationRemoteAnswerLimit).
var remoteAnswerTimeout = 20 * time.Second

// startDeactivationLeaves takes the queues up — the deactivated
// accounts' and the guests' of rooms closed to them (guest_leaves.go) —
// now, every deactivationPoll and when woken, until ctx ends.
func (s *Server) startDeactivationLeaves(ctx context.Context, wg *sync.WaitGroup) {
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(deactivationPoll)
		defer t.Stop()
		for {
			if err := s.leaveDeactivatedRooms(ctx, "", true); err != nil && ctx.Err() == nil {
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
//
// The pending invites to and knocks on rooms only other servers hold
// are answered through those servers, which may be slow or gone: only
// when remote is set (the background runner), outside mu and each
// within remoteAnswerTimeout, and once per account and room in this
// process. Without remote (POST /account/deactivate), an account with
// such memberships stays queued and the runner is woken for them, so
// that the request does not wait on other servers.
func (s *Server) leaveDeactivatedRooms(ctx context.Context, localpart string, remote bool) error {
	type pendingRemote struct {
		localpart string
		roomIDs   []string
	}
	var errs []error
	var answer []pendingRemote
	err := func() error {
		s.deactivation.mu.Lock()
		defer s.deactivation.mu.Unlock()
		queued, err := s.queuedDeactivations(ctx, localpart)
		if err != nil {
			return err
		}
		for _, lp := range queued {
			pending, err := s.leaveEveryRoom(ctx, s.userID(lp))
			if err != nil {
				errs = append(errs, err)
				continue
			}
			pending = s.unanswered(lp, pending)
			if len(pending) > 0 {
				if remote {
					answer = append(answer, pendingRemote{lp, pending})
				} else {
					s.WakeQueuedLeaves()
				}
				continue
			}
			if err := s.dequeueDeactivation(ctx, lp); err != nil {
				errs = append(errs, err)
			}
		}
		return nil
	}()
	if err != nil {
		return err
	}
	for _, p := range answer {
		userID := s.userID(p.localpart)
		for _, roomID := range p.roomIDs {
			if ctx.Err() != nil {
				return errors.Join(append(errs, ctx.Err())...)
			}
			callCtx, cancel := context.WithTimeout(ctx, remoteAnswerTimeout)
			err := s.leave(callCtx, userID, roomID, "")
			cancel()
			if err != nil {
				// A server that is gone, refuses or stays silent past
				// remoteAnswerTimeout is no failure: the federation API
				// then ends the invite or knock with a local leave
				// (federationapi.LeaveRemote), as for POST /leave. What
				// fails is on our side (storage); it does not keep the
				// account queued: the membership ends here anyway when
				// the account is dequeued (Deps.EndPendingMemberships).
				s.log.Info("a deactivated account's pending invite or knock could not be answered", "room_id", roomID, "err", err)
			}
			s.deactivation.answeredMu.Lock()
			if s.deactivation.answered == nil {
				s.deactivation.answered = map[string]map[string]bool{}
			}
			if s.deactivation.answered[p.localpart] == nil {
				s.deactivation.answered[p.localpart] = map[string]bool{}
			}
			s.deactivation.answered[p.localpart][roomID] = true
			s.deactivation.answeredMu.Unlock()
		}
		// Dequeued under mu, with its leaves done again in case it was
		// invited or knocked anew meanwhile.
		err := func() error {
			s.deactivation.mu.Lock()
			defer s.deactivation.mu.Unlock()
			pending, err := s.leaveEveryRoom(ctx, userID)
			if err != nil {
				return err
			}
			if len(s.unanswered(p.localpart, pending)) > 0 {
				s.WakeQueuedLeaves()
				return nil
			}
			return s.dequeueDeactivation(ctx, p.localpart)
		}()
		if err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// queuedDeactivations lists the queued accounts, oldest first (only
// localpart when it is not empty and queued).
func (s *Server) queuedDeactivations(ctx context.Context, localpart string) ([]string, error) {
	query, args := `SELECT localpart FROM deactivation_leaves ORDER BY queued_ts`, []any{}
	if localpart != "" {
		query, args = `SELECT localpart FROM deactivation_leaves WHERE localpart = $1`, []any{localpart}
	}
	rows, err := s.db.Reader().Query(ctx, query, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var queued []string
	for rows.Next() {
		var lp string
		if err := rows.Scan(&lp); err != nil {
			return nil, err
		}
		queued = append(queued, lp)
	}
	return queued, rows.Err()
}

// unanswered is roomIDs less the rooms whose pending membership of
// localpart this process already tried to answer.
func (s *Server) unanswered(localpart string, roomIDs []string) []string {
	s.deactivation.answeredMu.Lock()
	defer s.deactivation.answeredMu.Unlock()
	var left []string
	for _, roomID := range roomIDs {
		if !s.deactivation.answered[localpart][roomID] {
			left = append(left, roomID)
		}
	}
	return left
}

// dequeueDeactivation deletes localpart's queue row; its pending invites
// and knocks (and their leaves) end in the same commit, answered or not,
// so that none outlives the account.
func (s *Server) dequeueDeactivation(ctx context.Context, localpart string) error {
	err := s.db.Write(ctx, func(tx storage.Tx) error {
		if s.endPendingMemberships != nil {
			if err := s.endPendingMemberships(ctx, tx, s.userID(localpart)); err != nil {
				return err
			}
		}
		_, err := tx.Exec(ctx, `DELETE FROM deactivation_leaves WHERE localpart = $1`, localpart)
		return err
	})
	if err != nil {
		return err
	}
	s.deactivation.answeredMu.Lock()
	delete(s.deactivation.answered, localpart)
	s.deactivation.answeredMu.Unlock()
	return nil
}

// leaveEveryRoom leaves, rejects or withdraws every membership of
// userID that is join, invite or knock in a room held here, going on
// past a failure, and returns the rooms only other servers hold that
// userID is invited to or knocking on (Deps.Federation, or a membership
// the roomserver knows in a room it does not hold), which it leaves to
// its caller: answering them means calling those servers.
func (s *Server) leaveEveryRoom(ctx context.Context, userID string) ([]string, error) {
	var errs []error
	var remote []string
	done := map[string]bool{}
	for _, membership := range []string{"join", "invite", "knock"} {
		roomIDs, err := s.rooms.rooms.RoomsForUser(ctx, userID, membership)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		for _, roomID := range roomIDs {
			if done[roomID] {
				continue
			}
			done[roomID] = true
			through, err := s.leavesThroughRemote(ctx, userID, roomID)
			if err != nil {
				errs = append(errs, err)
				continue
			}
			if through {
				remote = append(remote, roomID)
				continue
			}
			if err := s.leave(ctx, userID, roomID, ""); err != nil {
				errs = append(errs, err)
			}
		}
	}
	if s.federation == nil {
		return remote, errors.Join(errs...)
	}
	pending, err := s.federation.PendingRemoteRooms(ctx, userID)
	if err != nil {
		return nil, errors.Join(append(errs, err)...)
	}
	for _, roomID := range pending {
		if !done[roomID] {
			remote = append(remote, roomID)
		}
	}
	return remote, errors.Join(errs...)
}
