package roomserver

import (
	"context"

	"github.com/myelin-chat/myelin/storage"
)

// JoinsEndedHook is called inside the write transaction of a change of a
// room's current state that ends users' joins otherwise than by a member
// event of theirs entering the timeline (which is the TimelineHook's
// business): a state reset, where the resolution of an incoming event's
// fork drops a join or brings back an older membership, and a current
// state recomputed without an event (a partial-state resync's end, the
// completion of a stretch of partial state). ended holds the users
// joined before the change and not after it. It is called once
// roomserver_current_state holds the change, so reads through tx see
// the room's state after it. Whatever it writes with tx commits or rolls
// back with the change; an error fails the write. On PostgreSQL the
// writer holds the room stream's lock (pgStreamLock) from before the
// change until its commit, so any two such writes, and any two event
// writes, run their hooks one after the other, each seeing what the
// previous one committed.
type JoinsEndedHook func(ctx context.Context, tx storage.Tx, roomID string, ended []string) error

// joinedAmong returns those of the members (state keys of m.room.member
// entries) who are joined in roomID's current state as tx sees it. It
// reads nothing when there is no JoinsEndedHook or no member.
func (s *Server) joinedAmong(ctx context.Context, tx storage.Tx, roomID string, members []string) ([]string, error) {
	if s.onJoinsEnded == nil || len(members) == 0 {
		return nil, nil
	}
	var joined []string
	for start := 0; start < len(members); start += storage.MaxInList {
		in, args := storage.InList("", members[start:min(start+storage.MaxInList, len(members))])
		some, err := storage.QueryColumn[string](ctx, tx, `SELECT state_key FROM roomserver_current_state
			WHERE room_id = $1 AND type = 'm.room.member' AND membership = 'join' AND state_key IN `+shiftPlaceholders(in, 1),
			append([]any{roomID}, args...)...)
		if err != nil {
			return nil, err
		}
		joined = append(joined, some...)
	}
	return joined, nil
}

// joinsEnded calls the hook, when there is one, with those of
// joinedBefore (joinedAmong, read before the change) whom the room's new
// current state, state (whose changed entries' rows are in rows), holds
// as not joined. Call it once roomserver_current_state holds the change.
func (s *Server) joinsEnded(ctx context.Context, tx storage.Tx, roomID string, joinedBefore []string, state stateMap, rows map[int64]*eventRow) error {
	if s.onJoinsEnded == nil || len(joinedBefore) == 0 {
		return nil
	}
	var ended []string
	for _, userID := range joinedBefore {
		nid, ok := state[tuple{"m.room.member", userID}]
		if row := rows[nid]; !ok || row == nil || row.Membership == nil || *row.Membership != "join" {
			ended = append(ended, userID)
		}
	}
	if len(ended) == 0 {
		return nil
	}
	return s.onJoinsEnded(ctx, tx, roomID, ended)
}
