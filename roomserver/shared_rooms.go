package roomserver

import (
	"context"
	"slices"

	"github.com/myelin-chat/myelin/storage"
)

// Reads of who shares a joined room with this server's users, as a
// transaction sees the current state: a TimelineHook, which runs in the
// transaction that writes an event (and sees the room's state before
// it), asks them to learn whom a member event leaves sharing no room
// with a local user (the key server stops tracking their device lists;
// internal/homeserver), and a JoinsEndedHook (which sees the state after
// the change) whom a state reset leaves so. Read through the transaction, they see the
// events an earlier part of the same group commit wrote, which the
// reader connections do not.

// JoinedUsersInTx is JoinedUsers as q sees the current state.
func (s *Server) JoinedUsersInTx(ctx context.Context, q storage.Querier, roomID string) ([]string, error) {
	return storage.QueryColumn[string](ctx, q, `SELECT state_key FROM roomserver_current_state
		WHERE room_id = $1 AND type = 'm.room.member' AND membership = 'join'`, roomID)
}

// LocalJoinedBesidesInTx reports whether a user of this server other
// than userID is joined to roomID, as q sees the current state: one
// probe of the index on the members' server names (serverJoined),
// whatever the number of members.
func (s *Server) LocalJoinedBesidesInTx(ctx context.Context, q storage.Querier, roomID, userID string) (bool, error) {
	query := localJoinedBesidesSQLite
	if s.db.Engine() == storage.Postgres {
		query = localJoinedBesidesPostgres
	}
	n, err := storage.QueryColumn[int64](ctx, q, query, roomID, string(s.serverName), userID)
	return len(n) > 0, err
}

// SharingLocalRoomInTx returns those of userIDs who are joined to a room
// other than exceptRoomID to which a user of this server is joined too,
// as q sees the current state. Each query takes up to 500 of them: per
// user, the index on members' state keys finds their joined rooms and
// the one on members' server names probes each for a local member.
func (s *Server) SharingLocalRoomInTx(ctx context.Context, q storage.Querier, userIDs []string, exceptRoomID string) ([]string, error) {
	prefix := sharingLocalRoomSQLite
	if s.db.Engine() == storage.Postgres {
		prefix = sharingLocalRoomPostgres
	}
	var out []string
	const chunk = 500
	for start := 0; start < len(userIDs); start += chunk {
		in, args := storage.InList("", userIDs[start:min(start+chunk, len(userIDs))])
		shared, err := storage.QueryColumn[string](ctx, q, prefix+shiftPlaceholders(in, 2),
			append([]any{exceptRoomID, string(s.serverName)}, args...)...)
		if err != nil {
			return nil, err
		}
		out = append(out, shared...)
	}
	slices.Sort(out)
	return slices.Compact(out), nil
}

// The server-name expressions are the index's (migration 012), per
// engine, as in serverJoined.
const (
	localJoinedBesidesSQLite = `SELECT 1 FROM roomserver_current_state
		WHERE room_id = $1 AND type = 'm.room.member' AND membership = 'join'
			AND substr(state_key, instr(state_key, ':') + 1) = $2 AND instr(state_key, ':') > 0 AND state_key <> $3 LIMIT 1`
	localJoinedBesidesPostgres = `SELECT 1 FROM roomserver_current_state
		WHERE room_id = $1 AND type = 'm.room.member' AND membership = 'join'
			AND substr(state_key, strpos(state_key, ':') + 1) = $2 AND strpos(state_key, ':') > 0 AND state_key <> $3 LIMIT 1`

	sharingLocalRoomSQLite = `SELECT DISTINCT m.state_key FROM roomserver_current_state m
		WHERE m.type = 'm.room.member' AND m.membership = 'join' AND m.room_id <> $1
			AND EXISTS (SELECT 1 FROM roomserver_current_state l
				WHERE l.room_id = m.room_id AND l.type = 'm.room.member' AND l.membership = 'join'
					AND substr(l.state_key, instr(l.state_key, ':') + 1) = $2 AND instr(l.state_key, ':') > 0)
			AND m.state_key IN `
	sharingLocalRoomPostgres = `SELECT DISTINCT m.state_key FROM roomserver_current_state m
		WHERE m.type = 'm.room.member' AND m.membership = 'join' AND m.room_id <> $1
			AND EXISTS (SELECT 1 FROM roomserver_current_state l
				WHERE l.room_id = m.room_id AND l.type = 'm.room.member' AND l.membership = 'join'
					AND substr(l.state_key, strpos(l.state_key, ':') + 1) = $2 AND strpos(l.state_key, ':') > 0)
			AND m.state_key IN `
)
