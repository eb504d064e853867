package pushserver

import (
	"context"
	"fmt"
	"strings"
)

// UnreadQuery names one user's rooms for UnreadCountsOfUsers.
type UnreadQuery struct {
	UserID  string
	RoomIDs []string
}

// unreadOfUsersQuery is unreadQuery for several users at once: the rows
// carry their user, and the caller adds the user and room lists.
const unreadOfUsersQuery = `SELECT user_id, room_id, thread_id, notifications, highlights FROM push_unread WHERE `

// unreadBatchVars bounds the placeholders of one query of
// UnreadCountsOfUsers (users plus rooms), well under SQLite's 32766 and
// PostgreSQL's 65535.
const unreadBatchVars = 1000

// UnreadCountsOfUsers is UnreadCountsAt with roomPos 0 (no wait for the
// event consumer) for several users at once: out[i] is exactly what
// UnreadCountsAt(ctx, users[i].UserID, users[i].RoomIDs, 0, receiptPos)
// would answer at the same moment, each user's rooms only, and counted
// is the room stream position every answer includes (read after the
// wait and before the counts, as UnreadCountsAt does). Sync's long
// polls woken by one message each need their counts at about the same
// time: one query answers them all (syncapi's countsBatcher), where a
// query each cost more than the rest of a woken response together.
func (s *Server) UnreadCountsOfUsers(ctx context.Context, users []UnreadQuery, receiptPos int64) ([]map[string]RoomCounts, int64, error) {
	out := make([]map[string]RoomCounts, len(users))
	for i := range out {
		out[i] = map[string]RoomCounts{}
	}
	s.waitCaughtUp(ctx, 0, receiptPos)
	counted := s.countedPos()
	// Chunks of users whose user and room lists fit unreadBatchVars.
	for start := 0; start < len(users); {
		end, vars := start, 0
		for end < len(users) && (end == start || vars+1+len(users[end].RoomIDs) <= unreadBatchVars) {
			vars += 1 + len(users[end].RoomIDs)
			end++
		}
		if err := s.unreadOfUsers(ctx, users[start:end], out[start:end]); err != nil {
			return nil, 0, err
		}
		start = end
	}
	return out, counted, nil
}

// unreadOfUsers reads the counts of users into out (one map per user):
// one query over the users and the union of their rooms, each row then
// kept only for the user that asked for its room.
func (s *Server) unreadOfUsers(ctx context.Context, users []UnreadQuery, out []map[string]RoomCounts) error {
	byUser := make(map[string][]int, len(users)) // a user may appear twice (two devices)
	asked := make([]map[string]bool, len(users)) // per query: the rooms asked for
	rooms := map[string]bool{}
	var args []any
	placeholders := func(vals []string) string {
		var b strings.Builder
		for i, v := range vals {
			if i > 0 {
				b.WriteString(", ")
			}
			args = append(args, v)
			fmt.Fprintf(&b, "$%d", len(args))
		}
		return b.String()
	}
	var userIDs, roomIDs []string
	for i, u := range users {
		if len(u.RoomIDs) == 0 {
			continue
		}
		if byUser[u.UserID] == nil {
			userIDs = append(userIDs, u.UserID)
		}
		byUser[u.UserID] = append(byUser[u.UserID], i)
		asked[i] = make(map[string]bool, len(u.RoomIDs))
		for _, r := range u.RoomIDs {
			asked[i][r] = true
			if !rooms[r] {
				rooms[r] = true
				roomIDs = append(roomIDs, r)
			}
		}
	}
	if len(userIDs) == 0 {
		return nil
	}
	query := unreadOfUsersQuery + `user_id IN (` + placeholders(userIDs) + `) AND room_id IN (` +
		placeholders(roomIDs) + `)`
	rows, err := s.db.Reader().Query(ctx, query, args...)
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
		var userID, roomID, thread string
		var c Counts
		if err := rows.Scan(&userID, &roomID, &thread, &c.Notifications, &c.Highlights); err != nil {
			return err
		}
		for _, i := range byUser[userID] {
			if asked[i][roomID] { // else another query's room
				addUnread(out[i], roomID, thread, c)
			}
		}
	}
	return rows.Err()
}

// addUnread adds one (room, thread) row of counts to a user's answer.
func addUnread(out map[string]RoomCounts, roomID, thread string, c Counts) {
	rc := out[roomID]
	rc.Total.add(c)
	if thread == mainThread {
		rc.Main.add(c)
	} else {
		if rc.Threads == nil {
			rc.Threads = map[string]Counts{}
		}
		tc := rc.Threads[thread]
		tc.add(c)
		rc.Threads[thread] = tc
	}
	out[roomID] = rc
}
