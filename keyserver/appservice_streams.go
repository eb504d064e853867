package keyserver

import (
	"context"

	"github.com/myelin-chat/myelin/storage"
)

// The streams the application service senders read for MSC3202
// (device_lists, device_one_time_keys_count and
// device_unused_fallback_key_types in transactions). They are for
// server-side consumers, never for clients.

// DeviceListChange is one row of the device-list stream.
type DeviceListChange struct {
	Position int64
	UserID   string
}

// DeviceListChangesAfter returns the first limit device-list changes with
// positions above after, in position order. Positions commit in order
// (deviceListLock), so a reader that read up to a position has seen every
// change below it.
func (s *Server) DeviceListChangesAfter(ctx context.Context, after int64, limit int) ([]DeviceListChange, error) {
	var out []DeviceListChange
	err := s.db.Read(ctx, func(q storage.Querier) error {
		out = out[:0]
		rows, err := q.Query(ctx, `SELECT position, user_id FROM keyserver_device_list_changes
			WHERE position > $1 ORDER BY position LIMIT $2`, after, limit)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var c DeviceListChange
			if err := rows.Scan(&c.Position, &c.UserID); err != nil {
				return err
			}
			out = append(out, c)
		}
		return rows.Err()
	})
	return out, err
}

// KeyCountChange says that a watched device's key counts changed at
// Position (its latest change).
type KeyCountChange struct {
	Position         int64
	UserID, DeviceID string
}

// KeyCountPosition is the head of the key-count change stream.
func (s *Server) KeyCountPosition(ctx context.Context) (int64, error) {
	var pos int64
	err := s.db.Reader().QueryRow(ctx, `SELECT position FROM keyserver_stream_heads WHERE stream = 'key_counts'`).Scan(&pos)
	return pos, err
}

// KeyCountChangesAfter returns the first limit devices of watched users
// (Deps.WatchKeyCounts) whose latest key-count change has a position
// above after, in position order. A device appears once, at its latest
// change: a reader reading later sees it again after each further change.
func (s *Server) KeyCountChangesAfter(ctx context.Context, after int64, limit int) ([]KeyCountChange, error) {
	var out []KeyCountChange
	err := s.db.Read(ctx, func(q storage.Querier) error {
		out = out[:0]
		rows, err := q.Query(ctx, `SELECT position, user_id, device_id FROM keyserver_key_count_changes
			WHERE position > $1 ORDER BY position LIMIT $2`, after, limit)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var c KeyCountChange
			if err := rows.Scan(&c.Position, &c.UserID, &c.DeviceID); err != nil {
				return err
			}
			out = append(out, c)
		}
		return rows.Err()
	})
	return out, err
}

// keyCountsChanged is called inside tx, which changes the device's
// one-time or fallback keys: it drops the device's CountMemo entry on
// commit and, when an application service watches the user, moves the
// device's row in keyserver_key_count_changes to a new stream position.
// The UPDATE of the stream head takes its row lock until tx ends, so
// positions commit in order.
func (s *Server) keyCountsChanged(ctx context.Context, tx storage.Tx, userID, deviceID string) error {
	s.counts.dropOnCommit(tx, userID, deviceID)
	if s.watchKeyCounts == nil || !s.watchKeyCounts(userID) {
		return nil
	}
	var pos int64
	if err := tx.QueryRow(ctx, `UPDATE keyserver_stream_heads SET position = position + 1
		WHERE stream = 'key_counts' RETURNING position`).Scan(&pos); err != nil {
		return err
	}
	if _, err := tx.Exec(ctx, `INSERT INTO keyserver_key_count_changes (user_id, device_id, position)
		VALUES ($1, $2, $3) ON CONFLICT (user_id, device_id) DO UPDATE SET position = excluded.position`,
		userID, deviceID, pos); err != nil {
		return err
	}
	if s.keyCountsNotify != nil {
		tx.AfterCommit(func() { s.keyCountsNotify(pos) })
	}
	return nil
}

// lockKeyCountHead takes the row lock of the key-count stream head until
// tx ends (PostgreSQL; SQLite has one writer).
func (s *Server) lockKeyCountHead(ctx context.Context, tx storage.Tx) error {
	if s.db.Engine() != storage.Postgres {
		return nil
	}
	var pos int64
	return tx.QueryRow(ctx, `SELECT position FROM keyserver_stream_heads WHERE stream = 'key_counts' FOR UPDATE`).Scan(&pos)
}

// KeyCountsOfDevicesFromDB is KeyCountsOfDevices read from the database,
// never from the CountMemo: a key write is visible to other readers when
// it commits, but its memo entry is dropped only right after, so a reader
// that has seen a key-count change row could otherwise get the counts
// from before it. A service told those would keep them until the next
// change.
func (s *Server) KeyCountsOfDevicesFromDB(ctx context.Context, devices []DeviceRef) ([]DeviceKeyCounts, error) {
	return s.readKeyCountsOfDevices(ctx, devices)
}
