package keyserver

import (
	"context"
	"encoding/json"

	"github.com/myelin-chat/myelin/storage"
)

// ToDeviceMessage is one stored to-device message with its recipient,
// for the application service senders.
type ToDeviceMessage struct {
	Position         int64
	UserID, DeviceID string
	Sender, Type     string
	Content          json.RawMessage
}

// ToDeviceAfter returns the first limit stored to-device messages of
// every local device with stream positions above after, in position
// order. Positions commit in order (toDeviceLock), so a reader that read
// up to a position has seen every message below it that was not yet
// acknowledged. It is for server-side consumers (application services
// receiving MSC2409/MSC4203 to-device messages), never for clients.
func (s *Server) ToDeviceAfter(ctx context.Context, after int64, limit int) ([]ToDeviceMessage, error) {
	var out []ToDeviceMessage
	err := s.db.Read(ctx, func(q storage.Querier) error {
		out = out[:0]
		rows, err := q.Query(ctx, `SELECT position, user_id, device_id, sender, event_type, content FROM keyserver_to_device
			WHERE position > $1 ORDER BY position LIMIT $2`, after, limit)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var m ToDeviceMessage
			var content string
			if err := rows.Scan(&m.Position, &m.UserID, &m.DeviceID, &m.Sender, &m.Type, &content); err != nil {
				return err
			}
			m.Content = json.RawMessage(content)
			out = append(out, m)
		}
		return rows.Err()
	})
	return out, err
}
