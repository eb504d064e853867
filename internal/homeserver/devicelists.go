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
// such event, is not seen here.
// Spec: client-server-api, "Tracking the device list for a user".
func untrackOnLeave(rooms *roomserver.Server, serverName string) func(ctx context.Context, tx storage.Tx, ev roomserver.TimelineEvent) error {
	isLocal := func(userID string) bool {
		_, server, ok := strings.Cut(userID, ":")
		return ok && server == serverName
	}
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
		return keyserver.UntrackInTx(ctx, tx, serverName, candidates,
			func(ctx context.Context, q storage.Querier, userIDs []string) ([]string, error) {
				return rooms.SharingLocalRoomInTx(ctx, q, userIDs, roomID)
			}, time.Now().UnixMilli())
	}
}
