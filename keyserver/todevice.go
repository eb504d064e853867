package keyserver

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"net/http"
	"slices"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/myelin-chat/myelin/internal/authn"
	"github.com/myelin-chat/myelin/internal/httpx"
	"github.com/myelin-chat/myelin/internal/mxerr"
	"github.com/myelin-chat/myelin/storage"
)

// Send-to-device messaging. Spec: client-server-api, "Send-to-Device
// messaging".
//
// Each message is one row per recipient device in keyserver_to_device, at
// a stream position. Sync reads a device's rows above the position in the
// client's token and deletes rows only once a later token acknowledges
// them, so a response lost in transit (or a restart) redelivers, in order.

// sendToDevice answers PUT /sendToDevice/{eventType}/{txnId}.
func (s *Server) sendToDevice(w http.ResponseWriter, r *http.Request) error {
	d := authn.FromContext(r.Context())
	ctx := r.Context()
	eventType, txnID := chi.URLParam(r, "eventType"), chi.URLParam(r, "txnId")
	if eventType == "" || len(eventType) > 255 || txnID == "" || len(txnID) > 255 {
		return mxerr.New(mxerr.InvalidParam, "event type and transaction ID must be 1-255 bytes")
	}
	var req struct {
		Messages map[string]map[string]json.RawMessage `json:"messages"`
	}
	if err := httpx.DecodeJSON(r, &req); err != nil {
		return err
	}
	if req.Messages == nil {
		return mxerr.New(mxerr.MissingParam, "messages is required")
	}
	var local []delivery
	remote := map[string]map[string]map[string]json.RawMessage{} // server → user → device → content
	for userID, devices := range req.Messages {
		server := serverOf(userID)
		if server == "" {
			return mxerr.New(mxerr.InvalidParam, "%q is not a user ID", userID)
		}
		for deviceID, content := range devices {
			var obj map[string]json.RawMessage
			if err := json.Unmarshal(content, &obj); err != nil || obj == nil {
				return mxerr.New(mxerr.BadJSON, "messages.%s.%s must be an object", userID, deviceID)
			}
		}
		if server != s.serverName {
			if remote[server] == nil {
				remote[server] = map[string]map[string]json.RawMessage{}
			}
			remote[server][userID] = devices
			continue
		}
		deliveries, err := s.localDeliveries(ctx, userID, devices)
		if err != nil {
			return err
		}
		local = append(local, deliveries...)
	}
	err := s.db.Write(ctx, func(tx storage.Tx) error {
		// The transaction ID is recorded with the messages: a retry finds
		// it and stores nothing.
		res, err := tx.Exec(ctx, `
			INSERT INTO keyserver_to_device_txns (user_id, device_id, txn_id, created_ts) VALUES ($1, $2, $3, $4)
			ON CONFLICT (user_id, device_id, txn_id) DO NOTHING`, d.UserID, d.DeviceID, txnID, time.Now().UnixMilli())
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return nil
		}
		now := time.Now().UnixMilli()
		if err := s.insertToDevice(ctx, tx, d.UserID, eventType, local); err != nil {
			return err
		}
		for server, messages := range remote {
			body, err := json.Marshal(messages)
			if err != nil {
				return err
			}
			if _, err := tx.Exec(ctx, `
				INSERT INTO keyserver_to_device_outbound (destination, sender, event_type, message_id, messages, created_ts)
				VALUES ($1, $2, $3, $4, $5, $6)`, server, d.UserID, eventType, newMessageID(), string(body), now); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	if len(remote) > 0 {
		s.flushOutbound(ctx)
	}
	return httpx.OK(w, httpx.EmptyObject)
}

// delivery is one to-device message for one local device.
type delivery struct {
	userID, deviceID string
	content          []byte
}

// localDeliveries expands one local user's messages (device ID or "*")
// to their devices. Only devices that exist receive messages: "*" fans
// out to all of them, and a message for an unknown device is dropped.
func (s *Server) localDeliveries(ctx context.Context, userID string, devices map[string]json.RawMessage) ([]delivery, error) {
	existing, err := s.userDevices(ctx, userID)
	if err != nil {
		return nil, err
	}
	ids := make([]string, 0, len(existing))
	for id := range existing {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	var out []delivery
	for deviceID, content := range devices {
		if deviceID == "*" {
			for _, id := range ids {
				out = append(out, delivery{userID, id, content})
			}
		} else if _, ok := existing[deviceID]; ok {
			out = append(out, delivery{userID, deviceID, content})
		}
	}
	return out, nil
}

// insertToDevice appends messages from sender to the recipients'
// to-device streams inside tx and tells the stream after commit.
func (s *Server) insertToDevice(ctx context.Context, tx storage.Tx, sender, eventType string, messages []delivery) error {
	if len(messages) == 0 {
		return nil
	}
	if err := lockStream(ctx, s.db, tx, toDeviceLock); err != nil {
		return err
	}
	now := time.Now().UnixMilli()
	var pos int64
	for _, m := range messages {
		if err := tx.QueryRow(ctx, `
			INSERT INTO keyserver_to_device (user_id, device_id, sender, event_type, content, created_ts)
			VALUES ($1, $2, $3, $4, $5, $6) RETURNING position`,
			m.userID, m.deviceID, sender, eventType, string(m.content), now).Scan(&pos); err != nil {
			return err
		}
	}
	// Acknowledged rows are deleted, so the head is kept apart (it must
	// never go backwards).
	if _, err := tx.Exec(ctx, `UPDATE keyserver_stream_heads SET position = $1 WHERE stream = 'to_device'`, pos); err != nil {
		return err
	}
	tx.AfterCommit(func() { streamAdvanced(s.notify, ToDeviceStream, pos) })
	return nil
}

// newMessageID returns a random message_id for an m.direct_to_device EDU.
func newMessageID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// ToDevicePosition implements API.
func (s *Server) ToDevicePosition(ctx context.Context) (int64, error) {
	var pos int64
	err := s.db.Reader().QueryRow(ctx, `SELECT position FROM keyserver_stream_heads WHERE stream = 'to_device'`).Scan(&pos)
	return pos, err
}

// ToDeviceSince implements API.
func (s *Server) ToDeviceSince(ctx context.Context, userID, deviceID string, since int64) ([]ToDeviceEvent, int64, error) {
	rows, err := s.db.Reader().Query(ctx, `
		SELECT position, sender, event_type, content FROM keyserver_to_device
		WHERE user_id = $1 AND device_id = $2 AND position > $3
		ORDER BY position LIMIT $4`, userID, deviceID, since, ToDeviceBatchLimit)
	if err != nil {
		return nil, 0, err
	}
	defer rows.Close()
	events := []ToDeviceEvent{}
	latest := since
	for rows.Next() {
		var e ToDeviceEvent
		var content string
		if err := rows.Scan(&e.Position, &e.Sender, &e.Type, &content); err != nil {
			return nil, 0, err
		}
		e.Content = json.RawMessage(content)
		events = append(events, e)
		latest = e.Position
	}
	return events, latest, rows.Err()
}

// AckToDevice implements API.
func (s *Server) AckToDevice(ctx context.Context, userID, deviceID string, upTo int64) error {
	// Every /sync acknowledges; most have nothing left to delete, and a
	// read spares them the write.
	var n int
	if err := s.db.Reader().QueryRow(ctx, `SELECT COUNT(*) FROM (SELECT 1 FROM keyserver_to_device
		WHERE user_id = $1 AND device_id = $2 AND position <= $3 LIMIT 1) AS waiting`, userID, deviceID, upTo).Scan(&n); err != nil {
		return err
	}
	if n == 0 {
		return nil
	}
	return s.db.Write(ctx, func(tx storage.Tx) error {
		_, err := tx.Exec(ctx, `DELETE FROM keyserver_to_device WHERE user_id = $1 AND device_id = $2 AND position <= $3`,
			userID, deviceID, upTo)
		return err
	})
}
