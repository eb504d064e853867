package homeserver

import (
	"context"
	"strings"
	"time"

	"github.com/myelin-chat/myelin/keyserver"
	"github.com/myelin-chat/myelin/roomserver"
	"github.com/myelin-chat/myelin/storage"
)

// untrackOnLeave is the part of the roomserver's OnTimeline hook that
// stops tracking the device lists of remote users whom a member event
// leaves sharing no joined room with a local user
// (keyserver.UntrackInTx, which says why it runs in the event's
// transaction). The event is a leave or ban (a leave, kick, ban, or
// withdrawn invite or knock) of:
//   - a remote user: they stop sharing this room, and may share no
//     other;
//   - a local user who is joined, with no other local user joined (the
//     room's state before the event, as the hook sees it): every remote
//     member of the room stops sharing it with a local user. A local
//     user leaving a room other local users stay in changes nothing, at
//     the cost of one index probe.
//
// An event that does not become the room's current state (a fork whose
// resolution keeps the join) costs at most a refetch of a list that was
// still tracked; a membership ended by state resolution alone, with no
// such event, is untrackOnJoinsEnded's.
// Spec: client-server-api, "Tracking the device list for a user".
func untrackOnLeave(rooms *roomserver.Server, engine storage.Engine, serverName string) func(ctx context.Context, tx storage.Tx, ev roomserver.TimelineEvent) error {
	isLocal := localTo(serverName)
	return func(ctx context.Context, tx storage.Tx, ev roomserver.TimelineEvent) error {
		e := ev.Event
		if e.Type != "m.room.member" || e.StateKey == nil || (e.Membership != "leave" && e.Membership != "ban") {
			return nil
		}
		target, roomID := *e.StateKey, e.RoomID
		candidates := []string{target}
		if isLocal(target) {
			others, err := rooms.LocalJoinedBesidesInTx(ctx, tx, roomID, target)
			if err != nil || others {
				return err
			}
			joined, err := rooms.JoinedUsersInTx(ctx, tx, roomID)
			if err != nil {
				return err
			}
			candidates = candidates[:0]
			wasJoined := false
			for _, userID := range joined {
				switch {
				case userID == target:
					wasJoined = true
				case !isLocal(userID):
					candidates = append(candidates, userID)
				}
			}
			if !wasJoined {
				return nil // a local user not joined shared nothing
			}
		}
		return keyserver.UntrackInTx(ctx, tx, engine, serverName, candidates,
			func(ctx context.Context, q storage.Querier, userIDs []string) ([]string, error) {
				return rooms.SharingLocalRoomInTx(ctx, q, userIDs, roomID)
			}, time.Now().UnixMilli())
	}
}

// untrackOnJoinsEnded is the roomserver's JoinsEndedHook: it stops
// tracking the device lists of remote users whom a change of a room's
// current state without a member event of theirs (a state reset: the
// resolution of an incoming event's fork drops their join, or a local
// user's) leaves sharing no joined room with a local user
// (keyserver.UntrackInTx). The candidates are the remote users whose
// join ended and, when a local user's join ended and no local user is
// joined any more, every remote member still joined. The hook runs once
// the current state holds the change, so the sharing check counts this
// room as it now stands.
// Spec: client-server-api, "Tracking the device list for a user".
func untrackOnJoinsEnded(rooms *roomserver.Server, engine storage.Engine, serverName string) roomserver.JoinsEndedHook {
	isLocal := localTo(serverName)
	return func(ctx context.Context, tx storage.Tx, roomID string, ended []string) error {
		var candidates []string
		localEnded := false
		for _, userID := range ended {
			if isLocal(userID) {
				localEnded = true
			} else {
				candidates = append(candidates, userID)
			}
		}
		if localEnded {
			// No user ID has an empty state key: any local member counts.
			others, err := rooms.LocalJoinedBesidesInTx(ctx, tx, roomID, "")
			if err != nil {
				return err
			}
			if !others {
				joined, err := rooms.JoinedUsersInTx(ctx, tx, roomID)
				if err != nil {
					return err
				}
				candidates = append(candidates, joined...) // all remote: no local one is joined
			}
		}
		if len(candidates) == 0 {
			return nil
		}
		return keyserver.UntrackInTx(ctx, tx, engine, serverName, candidates,
			func(ctx context.Context, q storage.Querier, userIDs []string) ([]string, error) {
				return rooms.SharingLocalRoomInTx(ctx, q, userIDs, "")
			}, time.Now().UnixMilli())
	}
}

// localTo reports whether a user ID belongs to serverName.
func localTo(serverName string) func(userID string) bool {
	return func(userID string) bool {
		_, server, ok := strings.Cut(userID, ":")
		return ok && server == serverName
	}
}
