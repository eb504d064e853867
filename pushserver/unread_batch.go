package pushserver

import (
	"context"
	"slices"
	"strconv"
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
//
// Sync calls this for every long poll a message wakes, most often for
// one user and one room: the lists of who asked for what are scanned
// when short, and the query text is appended into one buffer, so such a
// read allocates for little besides its answer. The text and arguments
// are the same as with maps and fmt (TestUnreadCountsOfUsers,
// TestUnreadOfUsersAllocations).
func (s *Server) unreadOfUsers(ctx context.Context, users []UnreadQuery, out []map[string]RoomCounts) error {
	var byUser map[string][]int // a user may appear twice (two devices); nil: look through users
	if len(users) > smallList {
		byUser = make(map[string][]int, len(users))
	}
	var rooms map[string]bool // the rooms already listed; nil while roomIDs is short
	var userIDs, roomIDs []string
	nArgs := 0
	for _, u := range users {
		nArgs += 1 + len(u.RoomIDs)
	}
	for i, u := range users {
		if len(u.RoomIDs) == 0 {
			continue
		}
		if byUser != nil {
			if byUser[u.UserID] == nil {
				userIDs = append(userIDs, u.UserID)
			}
			byUser[u.UserID] = append(byUser[u.UserID], i)
		} else if !asksBefore(users[:i], u.UserID) {
			userIDs = append(userIDs, u.UserID)
		}
		for _, r := range u.RoomIDs {
			if rooms == nil && len(roomIDs) >= smallList {
				rooms = make(map[string]bool, 2*smallList)
				for _, seen := range roomIDs {
					rooms[seen] = true
				}
			}
			switch {
			case rooms != nil:
				if !rooms[r] {
					rooms[r] = true
					roomIDs = append(roomIDs, r)
				}
			case !slices.Contains(roomIDs, r):
				roomIDs = append(roomIDs, r)
			}
		}
	}
	if len(userIDs) == 0 {
		return nil
	}
	args := make([]any, 0, nArgs)
	query := make([]byte, 0, len(unreadOfUsersQuery)+48+6*(len(userIDs)+len(roomIDs)))
	query = append(query, unreadOfUsersQuery...)
	placeholders := func(vals []string) {
		for i, v := range vals {
			if i > 0 {
				query = append(query, ", "...)
			}
			args = append(args, v)
			query = append(query, '$')
			query = strconv.AppendInt(query, int64(len(args)), 10)
		}
	}
	query = append(query, "user_id IN ("...)
	placeholders(userIDs)
	query = append(query, ") AND room_id IN ("...)
	placeholders(roomIDs)
	query = append(query, ')')
	// asked: query i wants roomID's rows; long lists get a set, made
	// when first needed.
	var sets map[int]map[string]bool
	asked := func(i int, roomID string) bool {
		ids := users[i].RoomIDs
		if len(ids) <= smallList {
			return slices.Contains(ids, roomID)
		}
		set := sets[i]
		if set == nil {
			if sets == nil {
				sets = map[int]map[string]bool{}
			}
			set = make(map[string]bool, len(ids))
			for _, r := range ids {
				set[r] = true
			}
			sets[i] = set
		}
		return set[roomID]
	}
	rows, err := s.db.Reader().Query(ctx, string(query), args...)
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
		if byUser != nil {
			for _, i := range byUser[userID] {
				if asked(i, roomID) { // else another query's room
					addUnread(out[i], roomID, thread, c)
				}
			}
			continue
		}
		for i, u := range users {
			if u.UserID == userID && asked(i, roomID) {
				addUnread(out[i], roomID, thread, c)
			}
		}
	}
	return rows.Err()
}

// smallList is how long a list of users or rooms unreadOfUsers scans
// rather than indexes with a map.
const smallList = 8

// asksBefore reports whether a query in users is userID's.
func asksBefore(users []UnreadQuery, userID string) bool {
	for _, u := range users {
		if u.UserID == userID && len(u.RoomIDs) > 0 {
			return true
		}
	}
	return false
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
