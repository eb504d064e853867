package keyserver

import (
	"context"
	"net/http"
	"slices"
	"time"

	"github.com/myelin-chat/myelin/internal/authn"
	"github.com/myelin-chat/myelin/internal/httpx"
	"github.com/myelin-chat/myelin/internal/mxerr"
	"github.com/myelin-chat/myelin/storage"
	"github.com/myelin-chat/myelin/syncapi"
)

// Device lists. Spec: client-server-api, "Tracking the device list for a
// user" and "Extensions to /sync".

// recordDeviceListChange appends one change per user to the device-list
// stream inside tx, and tells notify after commit. For local users such a
// change (no device) means their cross-signing keys or signatures changed.
func recordDeviceListChange(ctx context.Context, db *storage.DB, tx storage.Tx, notify func(string, int64), userIDs ...string) error {
	changes := make([][2]string, len(userIDs))
	for i, u := range userIDs {
		changes[i] = [2]string{u, ""}
	}
	return recordChanges(ctx, db, tx, notify, changes)
}

// recordDeviceChanges appends one change per device of a local user (its
// keys were uploaded or it was deleted).
func recordDeviceChanges(ctx context.Context, db *storage.DB, tx storage.Tx, notify func(string, int64), userID string, deviceIDs ...string) error {
	changes := make([][2]string, len(deviceIDs))
	for i, d := range deviceIDs {
		changes[i] = [2]string{userID, d}
	}
	return recordChanges(ctx, db, tx, notify, changes)
}

// recordChanges appends (user, device) changes to the stream.
func recordChanges(ctx context.Context, db *storage.DB, tx storage.Tx, notify func(string, int64), changes [][2]string) error {
	if len(changes) == 0 {
		return nil
	}
	if err := lockStream(ctx, db, tx, deviceListLock); err != nil {
		return err
	}
	now := time.Now().UnixMilli()
	var pos int64
	for _, c := range changes {
		if err := tx.QueryRow(ctx, `
			INSERT INTO keyserver_device_list_changes (user_id, device_id, changed_ts) VALUES ($1, $2, $3)
			RETURNING position`, c[0], c[1], now).Scan(&pos); err != nil {
			return err
		}
	}
	tx.AfterCommit(func() { streamAdvanced(notify, DeviceListStream, pos) })
	return nil
}

// DevicesDeletedHook returns the function clientapi calls (as
// clientapi.Deps.OnDevicesDeleted) inside the transaction that deletes a
// user's devices: it deletes the devices' keys, one-time and fallback
// keys, signatures by and of them, their to-device inbox and transaction
// IDs, and records a device-list change, all in that same transaction,
// so a deleted device never lingers in /keys/query. The key server's
// tables must exist (Migrate) before the hook runs. counts is the key
// server's Deps.CountMemo (nil when it has none): the deleted devices'
// entries are dropped when the transaction commits, so a device created
// later with the same ID starts from its own keys.
func DevicesDeletedHook(db *storage.DB, counts *CountMemo, notify func(stream string, pos int64)) func(ctx context.Context, tx storage.Tx, userID string, deviceIDs []string) error {
	return func(ctx context.Context, tx storage.Tx, userID string, deviceIDs []string) error {
		if len(deviceIDs) == 0 {
			return nil
		}
		counts.dropOnCommit(tx, userID, deviceIDs...)
		for _, d := range deviceIDs {
			for _, q := range []string{
				`DELETE FROM keyserver_device_keys WHERE user_id = $1 AND device_id = $2`,
				`DELETE FROM keyserver_one_time_keys WHERE user_id = $1 AND device_id = $2`,
				`DELETE FROM keyserver_fallback_keys WHERE user_id = $1 AND device_id = $2`,
				`DELETE FROM keyserver_key_count_changes WHERE user_id = $1 AND device_id = $2`,
				`DELETE FROM keyserver_signatures WHERE target_user_id = $1 AND target_key_id = $2`,
				`DELETE FROM keyserver_to_device WHERE user_id = $1 AND device_id = $2`,
				`DELETE FROM keyserver_to_device_txns WHERE user_id = $1 AND device_id = $2`,
				// MSC3814: deleting the dehydrated device by any route
				// (DELETE /devices, /delete_devices, logout/all) ends it.
				`DELETE FROM keyserver_dehydrated_devices WHERE user_id = $1 AND device_id = $2`,
			} {
				if _, err := tx.Exec(ctx, q, userID, d); err != nil {
					return err
				}
			}
			if _, err := tx.Exec(ctx, `DELETE FROM keyserver_signatures WHERE signer_user_id = $1 AND signer_key_id = $2`,
				userID, "ed25519:"+d); err != nil {
				return err
			}
		}
		return recordDeviceChanges(ctx, db, tx, notify, userID, deviceIDs...)
	}
}

// DeviceRenamedHook returns the function clientapi calls (as
// clientapi.Deps.OnDeviceRenamed) inside the transaction that renames a
// local user's device: it records a device-list change for that device,
// so roommates see the user in /sync device_lists.changed and the
// federation sender sends an m.device_list_update carrying the new
// device_display_name. Spec: client-server-api, "Tracking the device list
// for a user"; server-server-api, "Device Management".
func DeviceRenamedHook(db *storage.DB, notify func(stream string, pos int64)) func(ctx context.Context, tx storage.Tx, userID, deviceID string) error {
	return func(ctx context.Context, tx storage.Tx, userID, deviceID string) error {
		return recordDeviceChanges(ctx, db, tx, notify, userID, deviceID)
	}
}

// DeviceListPosition is the device-list stream head.
func (s *Server) DeviceListPosition(ctx context.Context) (int64, error) {
	var pos int64
	err := s.db.Reader().QueryRow(ctx, `SELECT COALESCE(MAX(position), 0) FROM keyserver_device_list_changes`).Scan(&pos)
	return pos, err
}

// DeviceListChanges returns device_lists.changed and .left for userID.
//
// changed holds every user who shares a room with userID now
// (Deps.SharedRoomUsers), or is userID, and whose device list changed at
// a position in (from, to]; plus rooms.Joined (userID too, when it
// joined a room). left holds rooms.Left
// minus anyone who still shares a room. Both are sorted and disjoint.
func (s *Server) DeviceListChanges(ctx context.Context, userID string, from, to int64, rooms MembershipDelta) (changed, left []string, err error) {
	shared := map[string]bool{userID: true}
	if s.sharedRoomUsers != nil {
		users, err := s.sharedRoomUsers(ctx, userID)
		if err != nil {
			return nil, nil, err
		}
		for _, u := range users {
			shared[u] = true
		}
	}
	changedSet := map[string]bool{}
	if to > from {
		rows, err := s.db.Reader().Query(ctx, `
			SELECT DISTINCT user_id FROM keyserver_device_list_changes
			WHERE position > $1 AND position <= $2`, from, to)
		if err != nil {
			return nil, nil, err
		}
		defer rows.Close()
		for rows.Next() {
			var u string
			if err := rows.Scan(&u); err != nil {
				return nil, nil, err
			}
			if shared[u] {
				changedSet[u] = true
			}
		}
		if err := rows.Err(); err != nil {
			return nil, nil, err
		}
	}
	// Joined holds who started sharing a room with userID in the window,
	// and userID itself when it joined a room: like Synapse, the joiner
	// is told to refresh its own list too (Complement
	// TestDeviceListsUpdateOverFederation).
	for _, u := range rooms.Joined {
		changedSet[u] = true
	}
	leftSet := map[string]bool{}
	for _, u := range rooms.Left {
		if !shared[u] {
			leftSet[u] = true
			delete(changedSet, u)
		}
	}
	return sortedKeys(changedSet), sortedKeys(leftSet), nil
}

func sortedKeys(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// keyChanges answers GET /keys/changes.
//
// Spec: client-server-api, "GET /_matrix/client/v3/keys/changes". from
// and to are sync tokens (next_batch values): the device-list positions
// in them bound the device changes, and their room positions the window
// whose joins and leaves (Deps.MembershipDelta) add to changed and left,
// as in /sync.
func (s *Server) keyChanges(w http.ResponseWriter, r *http.Request) error {
	d := authn.FromContext(r.Context())
	q := r.URL.Query()
	if q.Get("from") == "" || q.Get("to") == "" {
		return mxerr.New(mxerr.MissingParam, "from and to are required")
	}
	from, err := parsePosition(q.Get("from"))
	if err != nil {
		return err
	}
	to, err := parsePosition(q.Get("to"))
	if err != nil {
		return err
	}
	var delta MembershipDelta
	if s.membershipDelta != nil && to.Room > from.Room {
		if delta, err = s.membershipDelta(r.Context(), d.UserID, from.Room, to.Room); err != nil {
			return err
		}
	}
	changed, left, err := s.DeviceListChanges(r.Context(), d.UserID, from.DeviceLists, to.DeviceLists, delta)
	if err != nil {
		return err
	}
	return httpx.OK(w, map[string]any{"changed": changed, "left": left})
}

// parsePosition reads a sync token given to GET /keys/changes.
func parsePosition(token string) (syncapi.TokenPositions, error) {
	pos, err := syncapi.DecodeToken(token)
	if err != nil {
		return pos, mxerr.New(mxerr.InvalidParam, "invalid token %q: want a sync token (next_batch)", token)
	}
	return pos, nil
}
