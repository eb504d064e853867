package keyserver

import (
	"context"

	"github.com/myelin-chat/myelin/storage"
)

// StillShared returns those of userIDs who, as q sees the rooms' current
// state, still share a joined room with a local user once the event
// being written takes effect (roomserver.Server.SharingLocalRoomInTx,
// leaving out the room the event ends their sharing of).
type StillShared func(ctx context.Context, q storage.Querier, userIDs []string) ([]string, error)

// UntrackInTx stops tracking the device lists of those of candidates
// (remote users whom a member event being written in tx may leave
// sharing no room with a local user: their leave, kick or ban, or the
// leave of a room's last local member) who hold a cache row here and
// whom stillShared does not name. Their cached device keys and
// cross-signing keys are deleted and their row marked stale, so that
// tracking them again — they share a room with a local user once more —
// fetches their list afresh (resyncTracked) instead of serving a copy
// that nothing kept current: while they shared no room their server
// sent us none of their updates, and it need not announce their devices
// when they share one again (Myelin does, other servers may not).
// Users still sharing a room keep their cache: their server still sends
// us their updates. The row is kept, marked stale with its updated_ts
// bumped, rather than deleted: a resync under way (Resync) then finds
// its row changed and leaves its answer stale, where a deleted row
// would have let it store as fresh a list fetched before the leave.
//
// It runs in the transaction that writes the member event, so the
// untracking commits (or rolls back) with the membership change and a
// crash cannot keep the one without the other; after the commit
// instead, a crash in between, or a rejoin whose commit came first,
// would keep the stale copy. Only candidates with a cache row are
// checked against the rooms (a few indexed queries per 500), so a room's
// last local member leaving a large room costs little when few of its
// members are tracked.
// Spec: client-server-api, "Tracking the device list for a user" (a
// user who stops sharing rooms may change devices unseen: "When they
// start sharing a room again, Bob has an out-of-date list of Alice's
// devices"); server-server-api, "Device Management" (updates go only to
// servers sharing a room with the user).
//
// On PostgreSQL, two transactions committing at once in different rooms
// (the user's leave of one, and the last local member's leave of the
// other) can each see the other room still shared and keep the cache;
// SQLite writes one transaction at a time.
func UntrackInTx(ctx context.Context, tx storage.Tx, serverName string, candidates []string, stillShared StillShared, nowMillis int64) error {
	var remote []string
	for _, userID := range candidates {
		if server := serverOf(userID); server != "" && server != serverName {
			remote = append(remote, userID)
		}
	}
	var cached []string
	for start := 0; start < len(remote); start += storage.MaxInList {
		in, args := storage.InList(`SELECT user_id FROM keyserver_remote_users WHERE user_id IN `, remote[start:min(start+storage.MaxInList, len(remote))])
		held, err := storage.QueryColumn[string](ctx, tx, in, args...)
		if err != nil {
			return err
		}
		cached = append(cached, held...)
	}
	if len(cached) == 0 {
		return nil
	}
	shared, err := stillShared(ctx, tx, cached)
	if err != nil {
		return err
	}
	keep := make(map[string]bool, len(shared))
	for _, userID := range shared {
		keep[userID] = true
	}
	for _, userID := range cached {
		if keep[userID] {
			continue
		}
		if err := dropRemoteKeys(ctx, tx, userID); err != nil {
			return err
		}
		if err := markStale(ctx, tx, userID, 0, nowMillis); err != nil {
			return err
		}
	}
	return nil
}
