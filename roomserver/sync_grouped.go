package roomserver

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/myelin-chat/myelin/storage"
)

// This file holds the reads of one room for several users at once: one
// message to a room of L members wakes L long-polling /sync requests
// that each ask the same room for the same new events. The rows are
// the same for every one of them; what each user may see of them
// (history visibility) and its membership at each event stay per user.

// RecentUsersRequest asks for one room's latest timeline events up to
// To as each of Users would get them from RecentEvents.
type RecentUsersRequest struct {
	RoomID string
	To     int64
	Users  []RecentUser
}

// RecentUser is one user of a RecentUsersRequest: RecentRequest's
// per-user fields (its window is (From, RecentUsersRequest.To]).
type RecentUser struct {
	UserID     string
	From       int64
	Limit      int
	JoinedAtTo bool
	// Shown, when not nil, picks the events the caller will show (its
	// filters): only those get a membership in RecentOfUser.Memberships,
	// each costing a snapshot read. A function: in-process callers
	// only. It is called during the read, from another goroutine than
	// the caller's, and must only read.
	Shown func(*Event) bool `json:"-"`
}

// RecentOfUser is one user's answer to RecentUsersRequest.
type RecentOfUser struct {
	RecentResponse
	// Memberships is MembershipsAt(UserID, the IDs of those Events
	// RecentUser.Shown picks), read with them (the user's membership in
	// the state after each event; "leave" when it has none). Spec:
	// client-server-api, "Room Events", unsigned.membership.
	Memberships map[string]string
}

// RecentEventsOfUsers answers out[i] for req.Users[i] exactly as
// RecentEvents(RecentRequest{Users[i].UserID, RoomID, Users[i].From, To,
// Users[i].Limit, Users[i].JoinedAtTo}) answers, with the user's
// memberships at the events as MembershipsAt gives them, all from one
// read: the room's newest rows up to To are read once, back to the
// earliest From and as many as the largest limit takes. A user's rows,
// newest first, are those of them after its own From — a prefix of the
// read's — up to its own limit; the window and the history visibility
// walk are then the user's own. Nothing of one user's view reaches another's answer: each has its
// own visibility (its own caches of snapshots and memberships).
func (s *Server) RecentEventsOfUsers(ctx context.Context, req RecentUsersRequest) ([]*RecentOfUser, error) {
	out := make([]*RecentOfUser, len(req.Users))
	if len(req.Users) == 0 {
		return out, nil
	}
	most, earliest := 1, req.Users[0].From
	for _, u := range req.Users {
		most = max(most, u.Limit)
		earliest = min(earliest, u.From)
	}
	err := s.read(ctx, func(q storage.Querier) error {
		// Newest first, as recentRows gives them: for any From at or
		// after earliest and any limit up to most, the newest limit+1
		// rows of (From, To] are a prefix of these.
		all, err := s.recentRows(ctx, q, req.RoomID, earliest, req.To, most+1)
		if err != nil {
			return err
		}
		// The window (and its gap check) depends on From and the limit
		// only, not on the user.
		type window struct {
			rows      []*eventRow
			limited   bool
			prevBatch string
		}
		type windowKey struct{ from, limit int64 }
		windows := map[windowKey]*window{}
		for i, u := range req.Users {
			limit := max(u.Limit, 1)
			k := windowKey{u.From, int64(limit)}
			w := windows[k]
			if w == nil {
				n := 0
				for n < len(all) && n < limit+1 && all[n].NID > u.From {
					n++
				}
				// recentWindow reorders its rows in place: each window
				// gets its own copy of the prefix.
				rows := slices.Clone(all[:n])
				w = &window{}
				if w.rows, w.limited, w.prevBatch, err = s.recentWindow(ctx, q, rows, limit, req.To); err != nil {
					return err
				}
				windows[k] = w
			}
			vis := s.newVisibility(q, u.UserID)
			vis.ownRejections = true // as filterVisibleFor, for a timeline
			if u.JoinedAtTo {
				// As RecentEvents: v.current is read only under "shared"
				// history visibility, where a join at To makes every row
				// (all at or before To) visible.
				vis.current[req.RoomID] = "join"
			}
			r := &RecentOfUser{RecentResponse: RecentResponse{Limited: w.limited, PrevBatch: w.prevBatch},
				Memberships: map[string]string{}}
			if r.Events, err = s.filterVisibleWith(ctx, q, vis, req.RoomID, w.rows, nil); err != nil {
				return err
			}
			if err := s.membershipsAfter(ctx, q, vis, req.RoomID, w.rows, r.Events, u.Shown, r.Memberships); err != nil {
				return err
			}
			out[i] = r
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// membershipsAfter adds to out, for each of evs (visible rows of rows,
// in order) that shown picks (all when nil), vis's user's membership in
// the state after it, as MembershipsAt does.
func (s *Server) membershipsAfter(ctx context.Context, q storage.Querier, vis *visibility, roomID string, rows []*eventRow,
	evs []*Event, shown func(*Event) bool, out map[string]string) error {
	if len(evs) == 0 {
		return nil
	}
	version, err := s.committedRoomVersion(ctx, q, roomID)
	if err != nil {
		return err
	}
	j := 0
	for _, e := range evs {
		for j < len(rows) && rows[j].EventID != e.EventID {
			j++
		}
		if j == len(rows) {
			return fmt.Errorf("event %s is not among the rows read", e.EventID)
		}
		if shown != nil && !shown(e) {
			continue
		}
		_, m, err := vis.at(ctx, version, rows[j].StateAfter)
		if err != nil {
			return err
		}
		if m == "" {
			m = "leave"
		}
		out[e.EventID] = m
	}
	return nil
}

// maxMembershipUsers bounds the users of one UserMembershipsOfUsers
// query (one IN list).
const maxMembershipUsers = 500

// UserMembershipsOfUsers answers, for each of userIDs, what
// UserMemberships answers for it (a user with none maps to nothing),
// with one query per maxMembershipUsers users: the long polls that
// re-register together after one message read their rooms together.
func (s *Server) UserMembershipsOfUsers(ctx context.Context, userIDs []string) (map[string][]MembershipEntry, error) {
	out := make(map[string][]MembershipEntry, len(userIDs))
	for start := 0; start < len(userIDs); start += maxMembershipUsers {
		part := userIDs[start:min(start+maxMembershipUsers, len(userIDs))]
		in, args := storage.InList("", part)
		rows, err := s.db.Reader().Query(ctx, `SELECT c.state_key, c.room_id, c.membership, c.event_id, c.stream_pos,
			(SELECT COUNT(*) FROM roomserver_forgotten f WHERE f.user_id = c.state_key AND f.room_id = c.room_id)
			FROM roomserver_current_state c
			WHERE c.type = 'm.room.member' AND c.state_key IN `+in+` AND c.membership IS NOT NULL`, args...)
		if err != nil {
			return nil, err
		}
		for rows.Next() {
			var userID string
			var m MembershipEntry
			var forgotten int
			if err := rows.Scan(&userID, &m.RoomID, &m.Membership, &m.EventID, &m.StreamPos, &forgotten); err != nil {
				rows.Close()
				return nil, err
			}
			m.Forgotten = forgotten > 0
			out[userID] = append(out[userID], m)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return nil, err
		}
	}
	// In UserMemberships' order (by room ID).
	for _, ms := range out {
		slices.SortFunc(ms, func(a, b MembershipEntry) int { return strings.Compare(a.RoomID, b.RoomID) })
	}
	return out, nil
}
