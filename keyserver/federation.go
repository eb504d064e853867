package keyserver

import (
	"context"
	"encoding/json"
	"sync"

	"github.com/myelin-chat/myelin/storage"
)

// The key server's side of federation: to-device messages and device
// list updates from other servers (federationapi's ToDeviceSink and
// DeviceListSink, called only after the federation API checked that the
// user concerned belongs to the sending server: security case 15), and
// to-device messages for users of other servers, handed to the federation
// sender. Spec: server-server-api, "Send-to-device messaging" and
// "Device Management".

// EDUQueue queues an EDU for other servers; delivery is persistent
// (federationapi.EDUQueue).
type EDUQueue func(ctx context.Context, destinations []string, eduType string, content any) error

// RemoteToDevice delivers an m.direct_to_device EDU to the local
// recipients' to-device streams.
func (s *Server) RemoteToDevice(ctx context.Context, sender, eventType, messageID string, messages map[string]map[string]json.RawMessage) error {
	var local []delivery
	for userID, devices := range messages {
		if !s.isLocal(userID) {
			continue
		}
		for deviceID, content := range devices {
			var obj map[string]json.RawMessage
			if json.Unmarshal(content, &obj) != nil || obj == nil {
				delete(devices, deviceID)
			}
		}
		deliveries, err := s.localDeliveries(ctx, userID, devices)
		if err != nil {
			return err
		}
		local = append(local, deliveries...)
	}
	if len(local) == 0 || eventType == "" || len(eventType) > 255 {
		return nil
	}
	return s.db.Write(ctx, func(tx storage.Tx) error {
		return s.insertToDevice(ctx, tx, sender, eventType, local)
	})
}

// outboundBatch bounds one read of keyserver_to_device_outbound.
const outboundBatch = 100

// outboundFlush serialises flushes so a message is never queued twice by
// two flushes at once.
type outboundFlush struct{ mu sync.Mutex }

// FlushOutbound hands every waiting to-device message for other servers
// to the federation sender, one m.direct_to_device EDU per row, deleting
// each row once queued. A crash between the two queues the row again;
// the receiver can tell by message_id. Call it once at start (for rows a
// crash left behind); sendToDevice calls it after each commit.
func (s *Server) FlushOutbound(ctx context.Context) error {
	if s.queueEDU == nil {
		return nil
	}
	s.flush.mu.Lock()
	defer s.flush.mu.Unlock()
	for {
		type row struct {
			pos                                   int64
			destination, sender, eventType, msgID string
			messages                              string
		}
		var batch []row
		err := s.db.Read(ctx, func(q storage.Querier) error {
			rows, err := q.Query(ctx, `SELECT position, destination, sender, event_type, message_id, messages
				FROM keyserver_to_device_outbound ORDER BY position LIMIT $1`, outboundBatch)
			if err != nil {
				return err
			}
			defer rows.Close()
			for rows.Next() {
				var r row
				if err := rows.Scan(&r.pos, &r.destination, &r.sender, &r.eventType, &r.msgID, &r.messages); err != nil {
					return err
				}
				batch = append(batch, r)
			}
			return rows.Err()
		})
		if err != nil || len(batch) == 0 {
			return err
		}
		for _, r := range batch {
			content := map[string]any{"sender": r.sender, "type": r.eventType, "message_id": r.msgID,
				"messages": json.RawMessage(r.messages)}
			if err := s.queueEDU(ctx, []string{r.destination}, "m.direct_to_device", content); err != nil {
				return err
			}
			err := s.db.Write(ctx, func(tx storage.Tx) error {
				_, err := tx.Exec(ctx, `DELETE FROM keyserver_to_device_outbound WHERE position = $1`, r.pos)
				return err
			})
			if err != nil {
				return err
			}
		}
	}
}

// flushOutbound is FlushOutbound for a request that already succeeded:
// a failure is logged, and the rows wait for the next flush.
func (s *Server) flushOutbound(ctx context.Context) {
	if err := s.FlushOutbound(ctx); err != nil {
		s.log.Warn("handing to-device messages to the federation sender", "err", err)
	}
}
