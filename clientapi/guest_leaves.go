package clientapi

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"sync/atomic"

	"github.com/myelin-chat/myelin/storage"
)

// Guests leave a room whose guest access is withdrawn.
// Spec: client-server-api, "Guest Access", "Server behaviour": "If the
// m.room.guest_access event is changed to stop this [can_join] from
// being the case, the server MUST set those users' m.room.member state
// to leave."
//
// The roomserver calls QueueGuestLeaves (through its Deps.OnGuestAccess)
// inside the transaction that changes a room's current guest_access, so
// the work is as durable as the change; a room is queued only if a local
// guest is joined to it. The queue is taken up by the runner
// of the deactivation leaves (deactivation.go): at start, every poll,
// and when woken after such a commit. For each queued room it reads the
// current guest_access and, unless it is can_join, sends a leave on
// behalf of every local guest joined to the room, as the guest's own
// POST /leave would, so it syncs and federates like any leave. The row
// goes only once that succeeded and only if no change bumped its
// generation meanwhile; a pass is idempotent (a guest already gone is
// not joined any more). A guest's join that races the change re-checks
// guest_access after it commits (join, rooms_membership.go).

// QueueGuestLeaves queues roomID's guests for the check, in tx, when a
// local guest is among joinedLocal (the room's joined local users as the
// change leaves them); the roomserver's GuestAccessHook calls it. A room
// no local guest has joined has no one to make leave, so its change —
// each private room's creation, which sets guest_access can_join, among
// them — costs no queue row, runner pass or commit of the row's removal. A
// guest whose join is not yet among joinedLocal joins after the change
// (the roomserver writes a room's changes one at a time), and its join's
// re-check of guest_access, after its commit, sees the change.
// It reports whether it queued the room (then wake the runner after the
// commit: WakeQueuedLeaves).
func QueueGuestLeaves(ctx context.Context, tx storage.Tx, roomID string, joinedLocal []string) (queued bool, err error) {
	if ok, err := anyGuest(ctx, tx, joinedLocal); err != nil || !ok {
		return false, err
	}
	_, err = tx.Exec(ctx, `INSERT INTO guest_access_leaves (room_id, generation) VALUES ($1, 1)
		ON CONFLICT (room_id) DO UPDATE SET generation = guest_access_leaves.generation + 1`, roomID)
	return err == nil, err
}

// anyGuest reports whether any of userIDs, all local, is a guest
// account.
func anyGuest(ctx context.Context, q storage.Querier, userIDs []string) (bool, error) {
	localparts := make([]string, 0, len(userIDs))
	for _, u := range userIDs {
		// A localpart holds no ':' (its grammar), a server name may.
		if i := strings.IndexByte(u, ':'); i > 1 && u[0] == '@' {
			localparts = append(localparts, u[1:i])
		}
	}
	for len(localparts) > 0 {
		n := min(len(localparts), storage.MaxInList)
		in, args := storage.InList(`SELECT localpart FROM accounts WHERE is_guest AND localpart IN `, localparts[:n])
		localparts = localparts[n:]
		guests, err := storage.QueryColumn[string](ctx, q, in+` LIMIT 1`, args...)
		if err != nil || len(guests) > 0 {
			return len(guests) > 0, err
		}
	}
	return false, nil
}

// WakeQueuedLeaves asks the runner for a pass now (after the commit of a
// QueueGuestLeaves). It does not block.
func (s *Server) WakeQueuedLeaves() {
	select {
	case s.deactivation.wake <- struct{}{}:
	default:
	}
}

// afterGuestJoinCheck, if set (tests only), runs in a guest's join
// between the check of guest_access and the join, so that a test can
// change guest_access there.
var afterGuestJoinCheck func()

// holdGuestLeaves, when set (tests only), makes passes leave the queue
// alone, so that a test can restart the server between a change and its
// leaves.
var holdGuestLeaves atomic.Bool

// leaveClosedGuestRooms takes up the queued rooms: see the top of the
// file. A room whose leaves failed stays queued for the next pass.
func (s *Server) leaveClosedGuestRooms(ctx context.Context) error {
	if holdGuestLeaves.Load() {
		return nil
	}
	type queued struct {
		roomID     string
		generation int64
	}
	rows, err := s.db.Reader().Query(ctx, `SELECT room_id, generation FROM guest_access_leaves ORDER BY room_id`)
	if err != nil {
		return err
	}
	var rooms []queued
	for rows.Next() {
		var q queued
		if err := rows.Scan(&q.roomID, &q.generation); err != nil {
			rows.Close()
			return err
		}
		rooms = append(rooms, q)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return err
	}
	var errs []error
	for _, q := range rooms {
		if err := s.removeGuests(ctx, q.roomID); err != nil {
			errs = append(errs, err)
			continue
		}
		err := s.db.Write(ctx, func(tx storage.Tx) error {
			_, err := tx.Exec(ctx, `DELETE FROM guest_access_leaves WHERE room_id = $1 AND generation = $2`, q.roomID, q.generation)
			return err
		})
		if err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// removeGuests makes every local guest joined to roomID leave, unless the
// room's current guest_access is can_join.
func (s *Server) removeGuests(ctx context.Context, roomID string) error {
	if ok, err := s.guestsMayJoin(ctx, roomID); err != nil || ok {
		return err
	}
	members, err := s.rooms.rooms.PublicState(ctx, roomID, []string{"m.room.member"})
	if err != nil {
		return err
	}
	var local []string
	for _, m := range members {
		if m.Membership != "join" || m.StateKey == nil {
			continue
		}
		if lp := s.localpart(*m.StateKey); lp != "" {
			local = append(local, lp)
		}
	}
	guests, err := s.guestLocalparts(ctx, local)
	if err != nil {
		return err
	}
	var errs []error
	for _, lp := range guests {
		if err := s.leave(ctx, s.userID(lp), roomID, ""); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// guestsMayJoin reports whether roomID's current m.room.guest_access is
// can_join.
func (s *Server) guestsMayJoin(ctx context.Context, roomID string) (bool, error) {
	state, err := s.rooms.rooms.PublicState(ctx, roomID, []string{"m.room.guest_access"})
	if err != nil {
		return false, err
	}
	for _, e := range state {
		var c struct {
			GuestAccess string `json:"guest_access"`
		}
		if e.StateKey != nil && *e.StateKey == "" && json.Unmarshal(e.Content, &c) == nil && c.GuestAccess == "can_join" {
			return true, nil
		}
	}
	return false, nil
}

// guestLocalparts returns those of localparts that are guest accounts.
func (s *Server) guestLocalparts(ctx context.Context, localparts []string) ([]string, error) {
	var out []string
	for len(localparts) > 0 {
		n := min(len(localparts), storage.MaxInList)
		in, args := storage.InList(`SELECT localpart FROM accounts WHERE is_guest AND localpart IN `, localparts[:n])
		localparts = localparts[n:]
		lps, err := storage.QueryColumn[string](ctx, s.db.Reader(), in, args...)
		if err != nil {
			return nil, err
		}
		out = append(out, lps...)
	}
	return out, nil
}
