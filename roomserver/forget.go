package roomserver

import (
	"context"
	"hash/fnv"
	"net/http"

	"github.com/myelin-chat/myelin/internal/mxerr"
	"github.com/myelin-chat/myelin/storage"
)

// pgForgetLockClass is the first key of the PostgreSQL advisory lock
// that orders a Forget with a new pending membership in the same room
// (UnforgetInTx); the second key is a hash of the room ID. PostgreSQL
// keeps two-key advisory locks apart from the one-key ones used
// elsewhere, so this never waits on those.
const pgForgetLockClass = 4242110

// lockForget takes, on PostgreSQL, roomID's forget lock until tx ends.
// Forget and UnforgetInTx both hold it while they read and write, so
// neither can commit between the other's read and write, even from
// another process and for a room with no roomserver_rooms row to lock
// (one only other servers hold). SQLite needs none: it runs one write
// transaction at a time.
func (s *Server) lockForget(ctx context.Context, tx storage.Tx, roomID string) error {
	if s.db.Engine() != storage.Postgres {
		return nil
	}
	h := fnv.New32a()
	_, _ = h.Write([]byte(roomID))
	_, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1, $2)`, int32(pgForgetLockClass), int32(h.Sum32()))
	return err
}

// Forget hides a room the user is no longer in from RoomsForUser and
// from /sync. A user still joined to, invited to or knocking on the room
// gets 400 M_UNKNOWN, whether the membership is an event of a room held
// here or a pending invite or knock this server keeps for a room only
// other servers hold (Deps.PendingMembership).
// Spec: client-server-api, "POST /_matrix/client/v3/rooms/{roomId}/forget"
// (400: "The user has not left the room"); "Leaving rooms" ("A user can
// also forget a room which they have left").
//
// The membership checks and the write are one transaction under the
// room's lock, so a join (or invite, or knock) cannot commit between
// them and be left with a forgotten row: every writer of the room's
// membership holds that lock until its commit, and a rejoin deletes the
// row in its own transaction (input.go). On PostgreSQL the room's row is
// also locked FOR UPDATE, as every event write updates it, so the check
// holds even against a writer outside this process; a pending membership
// is written under the forget lock instead (UnforgetInTx).
//
// A forgotten room's pending membership row, the leave that ended it (or
// one out of date in a room a local user is in), is deleted in the same
// transaction (Deps.EndPendingMembership): nothing is kept for it after.
func (s *Server) Forget(ctx context.Context, userID, roomID string) error {
	unlock := s.lockRoom(ctx, roomID)
	defer unlock()
	return s.db.Write(ctx, func(tx storage.Tx) error {
		if s.db.Engine() == storage.Postgres {
			if _, err := tx.Exec(ctx, `SELECT 1 FROM roomserver_rooms WHERE room_id = $1 FOR UPDATE`, roomID); err != nil {
				return err
			}
		}
		if err := s.lockForget(ctx, tx, roomID); err != nil {
			return err
		}
		var m *string
		err := tx.QueryRow(ctx, `SELECT membership FROM roomserver_current_state
			WHERE room_id = $1 AND type = 'm.room.member' AND state_key = $2`, roomID, userID).Scan(&m)
		if err != nil && !storage.IsNoRows(err) {
			return err
		}
		if s.inForget != nil {
			s.inForget()
		}
		if m != nil && stillInRoom(*m) {
			return notLeft(userID, roomID)
		}
		if pending, err := s.pendingInRoomNotHeld(ctx, tx, userID, roomID); err != nil {
			return err
		} else if pending {
			return notLeft(userID, roomID)
		}
		if _, err := tx.Exec(ctx, `INSERT INTO roomserver_forgotten (user_id, room_id) VALUES ($1, $2)
			ON CONFLICT (user_id, room_id) DO NOTHING`, userID, roomID); err != nil {
			return err
		}
		// What is left of a pending membership — its leave, or one out
		// of date in a room a local user is in — ends with the room
		// forgotten: a forgotten room's leave is shown to no sync, and
		// the row would otherwise be kept forever.
		if s.endPendingMembership != nil {
			return s.endPendingMembership(ctx, tx, userID, roomID)
		}
		return nil
	})
}

// stillInRoom reports whether membership is one a user must leave before
// forgetting the room.
func stillInRoom(membership string) bool {
	return membership == "join" || membership == "invite" || membership == "knock"
}

func notLeft(userID, roomID string) error {
	return mxerr.New(mxerr.Unknown, "%s has not left %s: leave the room (or reject the invite, or withdraw the knock) before forgetting it",
		userID, roomID).WithStatus(http.StatusBadRequest)
}

// pendingInRoomNotHeld reports whether userID has a pending invite or
// knock (Deps.PendingMembership) in roomID while no user of this server
// is joined to it. In a room this server is in, the room's own member
// events say where the user stands: a pending row left from before this
// server joined is out of date.
func (s *Server) pendingInRoomNotHeld(ctx context.Context, tx storage.Tx, userID, roomID string) (bool, error) {
	if s.pendingMembership == nil {
		return false, nil
	}
	pending, err := s.pendingMembership(ctx, tx, userID, roomID)
	if err != nil || (pending != "invite" && pending != "knock") {
		return false, err
	}
	joined, err := storage.QueryColumn[string](ctx, tx, `SELECT state_key FROM roomserver_current_state
		WHERE room_id = $1 AND type = 'm.room.member' AND membership = 'join'`, roomID)
	if err != nil {
		return false, err
	}
	for _, u := range joined {
		if domainOf(u) == string(s.serverName) {
			return false, nil
		}
	}
	return true, nil
}

// UnforgetInTx clears userID's forgotten mark on roomID inside tx, the
// caller's transaction that stores a new invite or knock outside the
// room's events: an invite to (or a knock on) a room only other servers
// hold, which the federation API writes. Both are then one commit, and
// no crash can leave the invite stored with the room still forgotten.
// Spec: client-server-api, "Leaving rooms": rooms which have been
// forgotten never appear in /sync "until the user re-joins, is
// re-invited, or knocks". A join, invite or knock stored as an event of a
// room held here clears it in input.go.
//
// It takes the forget lock (lockForget), so a concurrent Forget either
// commits first (and its mark is deleted here) or reads the caller's
// pending membership once tx commits and refuses. The caller writes its
// invite or knock after this call, under the lock: a Forget, which ends
// the room's pending row, then cannot delete it, nor wait on its row
// while holding the lock. On SQLite, tx is the only write transaction
// running.
func (s *Server) UnforgetInTx(ctx context.Context, tx storage.Tx, userID, roomID string) error {
	if err := s.lockForget(ctx, tx, roomID); err != nil {
		return err
	}
	_, err := tx.Exec(ctx, `DELETE FROM roomserver_forgotten WHERE user_id = $1 AND room_id = $2`, userID, roomID)
	return err
}
