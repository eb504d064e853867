package keyserver

import (
	"context"
	"fmt"
	"slices"

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
// leave of a room's last local member; or whom a state reset may leave
// so) who hold a cache row here and
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
// Two transactions that each may untrack a user (the user's leave of one
// room, and the leave of another room's last local member, or a state
// reset there) must not both decide on what the other has not committed
// yet: each would see the other room still shared and keep the cache.
// On PostgreSQL (READ COMMITTED: each statement sees what committed
// before it started) the candidates' cache rows are locked FOR UPDATE,
// in user ID order (so two transactions locking several rows take them
// in the same order and cannot deadlock on them), before the rooms are
// read: the second transaction waits for the first to commit or roll
// back, and its later statements see the first's commit. The room
// writer's stream lock (roomserver's pgStreamLock, held from an event's
// insert to its commit) serialises them already; the row lock keeps
// this correct without relying on it. It costs no extra statement (the
// read of the candidates' rows takes it), and only leaves and resets
// come here, never an ordinary send. SQLite writes one transaction at a
// time, so there the check always sees every earlier write (and has no
// FOR UPDATE). engine is tx's database's.
func UntrackInTx(ctx context.Context, tx storage.Tx, engine storage.Engine, serverName string, candidates []string, stillShared StillShared, nowMillis int64) error {
	var remote []string
	for _, userID := range candidates {
		if server := serverOf(userID); server != "" && server != serverName {
			remote = append(remote, userID)
		}
	}
	slices.Sort(remote) // the lock order, across chunks too
	remote = slices.Compact(remote)
	query := cachedUsersSQLite
	if engine == storage.Postgres {
		query = cachedUsersPostgres
	}
	var cached []string
	for start := 0; start < len(remote); start += storage.MaxInList {
		in, args := storage.InList("", remote[start:min(start+storage.MaxInList, len(remote))])
		held, err := storage.QueryColumn[string](ctx, tx, fmt.Sprintf(query, in), args...)
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

// The candidates holding a cache row (%s: an InList), per engine: on
// PostgreSQL their rows are locked, in user ID order, until the
// transaction ends (UntrackInTx says why).
const (
	cachedUsersSQLite   = `SELECT user_id FROM keyserver_remote_users WHERE user_id IN %s ORDER BY user_id`
	cachedUsersPostgres = `SELECT user_id FROM keyserver_remote_users WHERE user_id IN %s ORDER BY user_id FOR UPDATE`
)

// untrackSweepBatch is how many cached users untrackUnshared checks per
// transaction.
const untrackSweepBatch = 500

// untrackUnshared stops tracking, once (migration 006 queues it when
// there are cached lists), the remote users whose cached device lists
// older binaries kept although they shared no joined room with a local
// user any more (UntrackInTx, which newer binaries run when the sharing
// ends, says why such a cache must go). It runs before the key server
// serves anything, so no such cache is served first. The cached users
// are checked in batches, in user ID order, each in one transaction
// that reads the rooms' current state (SharedInTx) and untracks those
// sharing none; the mark goes in the last batch's transaction. A failure
// leaves it, and the next start checks again (the check is exact: a
// user still sharing a room keeps their cache). Without SharedInTx (a
// process that does not see the rooms) nothing can be checked and the
// mark stays for one that does.
// Spec: client-server-api, "Tracking the device list for a user".
func (s *Server) untrackUnshared(ctx context.Context) error {
	if s.sharedInTx == nil {
		return nil
	}
	var due int
	if err := s.db.Reader().QueryRow(ctx, `SELECT COUNT(*) FROM keyserver_untrack_sweep`).Scan(&due); err != nil || due == 0 {
		return err
	}
	after, checked := "", 0
	for {
		var batch []string
		if err := s.db.Write(ctx, func(tx storage.Tx) error {
			var err error
			batch, err = storage.QueryColumn[string](ctx, tx, `SELECT user_id FROM keyserver_remote_users
				WHERE user_id > $1 ORDER BY user_id LIMIT $2`, after, untrackSweepBatch)
			if err != nil {
				return err
			}
			if err := UntrackInTx(ctx, tx, s.db.Engine(), s.serverName, batch, s.sharedInTx, s.nowMillis()); err != nil {
				return err
			}
			if len(batch) < untrackSweepBatch {
				_, err = tx.Exec(ctx, `DELETE FROM keyserver_untrack_sweep`)
			}
			return err
		}); err != nil {
			return fmt.Errorf("keyserver: dropping the device lists of users sharing no room: %w", err)
		}
		checked += len(batch)
		if len(batch) < untrackSweepBatch {
			break
		}
		after = batch[len(batch)-1]
	}
	s.log.Info("dropped the cached device lists of remote users sharing no room with a local user", "checked", checked)
	return nil
}
