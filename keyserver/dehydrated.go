package keyserver

import (
	"context"
	"encoding/json"
	"net/http"
	"strconv"
	"strings"
	"time"
	"unicode"

	"github.com/go-chi/chi/v5"

	"github.com/myelin-chat/myelin/internal/authn"
	"github.com/myelin-chat/myelin/internal/httpx"
	"github.com/myelin-chat/myelin/internal/mxerr"
	"github.com/myelin-chat/myelin/storage"
)

// Dehydrated devices (MSC3814, unstable prefix org.matrix.msc3814.v1).
//
// A user may keep one dehydrated device: a real device of the account
// (a row of clientapi's devices table, keys in the key tables, a
// to-device inbox) that has no access token. Other users' clients see it
// in /keys/query and encrypt room keys to it; when the user logs in
// again, the new client fetches the device's encrypted private keys
// (device_data) and reads the to-device messages that waited for it.
//
// The device's row is written by Deps.Devices inside the key server's
// transaction, so a replacement (old device, its keys and inbox deleted;
// new device and its keys stored) commits as one.

// DeviceStore creates and deletes a local user's devices inside a
// transaction of the caller's (clientapi's Accounts implements it).
type DeviceStore interface {
	// CreateDeviceTx creates userID's device deviceID, with no session,
	// running the device-created hook. A device of that ID that already
	// exists is an *mxerr.Error (M_INVALID_PARAM).
	CreateDeviceTx(ctx context.Context, tx storage.Tx, userID, deviceID string, displayName *string) error
	// DeleteDevicesTx deletes userID's devices deviceIDs as a device
	// deletion does (sessions, per-device data, the devices-deleted hook:
	// the key server's DevicesDeletedHook, which also forgets the
	// dehydrated device).
	DeleteDevicesTx(ctx context.Context, tx storage.Tx, userID string, deviceIDs []string) error
}

// dehydratedPrefix is where the MSC's endpoints live until it is merged.
const dehydratedPrefix = "/_matrix/client/unstable/org.matrix.msc3814.v1"

// maxDeviceDataBytes bounds the stored device_data (an encrypted pickle
// of a few hundred bytes plus one-time keys; 64 KiB is generous).
const maxDeviceDataBytes = 64 << 10

// dehydratedRoutes registers the MSC3814 endpoints on r (authenticated).
func (s *Server) dehydratedRoutes(r chi.Router) {
	handle(r, http.MethodPut, dehydratedPrefix+"/dehydrated_device", s.putDehydratedDevice)
	handle(r, http.MethodGet, dehydratedPrefix+"/dehydrated_device", s.getDehydratedDevice)
	handle(r, http.MethodDelete, dehydratedPrefix+"/dehydrated_device", s.deleteDehydratedDevice)
	// The MSC's text says GET with next_batch in the query; clients
	// (matrix-rust-sdk) and Synapse use POST with next_batch in the body.
	handle(r, http.MethodPost, dehydratedPrefix+"/dehydrated_device/{deviceId}/events", s.dehydratedDeviceEvents)
	handle(r, http.MethodGet, dehydratedPrefix+"/dehydrated_device/{deviceId}/events", s.dehydratedDeviceEvents)
}

// putDehydratedRequest is the body of PUT /dehydrated_device.
type putDehydratedRequest struct {
	DeviceID    *string         `json:"device_id"`
	DeviceData  json.RawMessage `json:"device_data"`
	DisplayName *string         `json:"initial_device_display_name"`
	uploadRequest
}

// putDehydratedDevice answers PUT /dehydrated_device: it replaces the
// user's dehydrated device by a new one with its keys, in one transaction.
//
// Spec: MSC3814, "Dehydrating a device".
func (s *Server) putDehydratedDevice(w http.ResponseWriter, r *http.Request) error {
	d := authn.FromContext(r.Context())
	if s.devices == nil {
		return mxerr.New(mxerr.Unrecognized, "dehydrated devices are not available").WithStatus(http.StatusNotFound)
	}
	var req putDehydratedRequest
	if err := httpx.DecodeJSON(r, &req); err != nil {
		return err
	}
	if req.DeviceID == nil {
		return mxerr.New(mxerr.MissingParam, "device_id is required")
	}
	deviceID := *req.DeviceID
	if deviceID == "" || len(deviceID) > maxKeyIDLength || strings.ContainsFunc(deviceID, unicode.IsControl) {
		return mxerr.New(mxerr.InvalidParam, "device_id must be 1-%d bytes without control characters", maxKeyIDLength)
	}
	if len(req.DeviceData) == 0 || string(req.DeviceData) == "null" {
		return mxerr.New(mxerr.MissingParam, "device_data is required")
	}
	var data struct {
		Algorithm *string `json:"algorithm"`
	}
	if err := json.Unmarshal(req.DeviceData, &data); err != nil || req.DeviceData[0] != '{' {
		return mxerr.New(mxerr.BadJSON, "device_data must be a JSON object")
	}
	if data.Algorithm == nil || *data.Algorithm == "" {
		return mxerr.New(mxerr.MissingParam, "device_data.algorithm is required")
	}
	if len(req.DeviceData) > maxDeviceDataBytes {
		return mxerr.New(mxerr.TooLarge, "device_data is over %d bytes", maxDeviceDataBytes).WithStatus(http.StatusRequestEntityTooLarge)
	}
	if len(req.DeviceKeys) == 0 || string(req.DeviceKeys) == "null" {
		// The MSC uploads the keys with the device so that no dehydrated
		// device exists without them.
		return mxerr.New(mxerr.MissingParam, "device_keys is required")
	}
	if len(req.OneTimeKeys) > maxOneTimeKeysPerUpload {
		return mxerr.New(mxerr.InvalidParam, "at most %d one-time keys per upload", maxOneTimeKeysPerUpload)
	}
	dk, err := validateDeviceKeys(req.DeviceKeys, d.UserID, deviceID)
	if err != nil {
		return err
	}
	if req.DisplayName != nil && (len(*req.DisplayName) > 1000 || strings.ContainsRune(*req.DisplayName, 0)) {
		return mxerr.New(mxerr.InvalidParam, "initial_device_display_name must be at most 1000 bytes, without NUL")
	}
	// The device's own identity: the keys are stored as its, not the caller's.
	dev := &authn.Device{UserID: d.UserID, DeviceID: deviceID}
	ctx := r.Context()
	err = s.db.Write(ctx, func(tx storage.Tx) error {
		// Raised here first so that this transaction, like a claim, takes
		// the key-count stream head before any key-count row (the
		// replaced device's deletion below deletes its row): the same
		// lock order everywhere, no deadlock with a concurrent claim.
		if err := s.keyCountsChanged(ctx, tx, d.UserID, deviceID); err != nil {
			return err
		}
		old, _, err := loadDehydrated(ctx, tx, d.UserID)
		if err != nil {
			return err
		}
		if old != "" {
			s.counts.dropOnCommit(tx, d.UserID, old)
			if err := s.devices.DeleteDevicesTx(ctx, tx, d.UserID, []string{old}); err != nil {
				return err
			}
		}
		// A device of that ID that is not the dehydrated one being
		// replaced is refused: the request would otherwise take over a
		// logged-in device's keys and inbox.
		if err := s.devices.CreateDeviceTx(ctx, tx, d.UserID, deviceID, req.DisplayName); err != nil {
			return err
		}
		if err := s.storeUploadTx(ctx, tx, dev, dk, req.OneTimeKeys, req.FallbackKeys); err != nil {
			return err
		}
		// Again after the replaced device's deletion, which removes its
		// row when it had the same ID.
		if err := s.keyCountsChanged(ctx, tx, d.UserID, deviceID); err != nil {
			return err
		}
		_, err = tx.Exec(ctx, `
			INSERT INTO keyserver_dehydrated_devices (user_id, device_id, device_data, created_ts)
			VALUES ($1, $2, $3, $4)
			ON CONFLICT (user_id) DO UPDATE SET device_id = excluded.device_id,
				device_data = excluded.device_data, created_ts = excluded.created_ts`,
			d.UserID, deviceID, string(req.DeviceData), time.Now().UnixMilli())
		return err
	})
	if err != nil {
		return err
	}
	return httpx.OK(w, map[string]string{"device_id": deviceID})
}

// loadDehydrated returns userID's dehydrated device ID and data ("" when
// there is none).
func loadDehydrated(ctx context.Context, q storage.Querier, userID string) (deviceID, data string, err error) {
	err = q.QueryRow(ctx, `SELECT device_id, device_data FROM keyserver_dehydrated_devices WHERE user_id = $1`,
		userID).Scan(&deviceID, &data)
	if storage.IsNoRows(err) {
		return "", "", nil
	}
	return deviceID, data, err
}

// IsDehydratedDevice reports whether deviceID is userID's dehydrated
// device: clientapi's Deps.SessionlessDevice, so that no login hands it
// an access token. The key server's tables must exist (Migrate).
func IsDehydratedDevice(ctx context.Context, q storage.Querier, userID, deviceID string) (bool, error) {
	current, _, err := loadDehydrated(ctx, q, userID)
	return err == nil && current != "" && current == deviceID, err
}

// getDehydratedDevice answers GET /dehydrated_device.
// Spec: MSC3814, "Rehydrating a device": 404 M_NOT_FOUND when none.
func (s *Server) getDehydratedDevice(w http.ResponseWriter, r *http.Request) error {
	d := authn.FromContext(r.Context())
	deviceID, data, err := loadDehydrated(r.Context(), s.db.Reader(), d.UserID)
	if err != nil {
		return err
	}
	if deviceID == "" {
		return mxerr.New(mxerr.NotFound, "no dehydrated device")
	}
	return httpx.OK(w, map[string]any{"device_id": deviceID, "device_data": json.RawMessage(data)})
}

// deleteDehydratedDevice answers DELETE /dehydrated_device: the device
// goes as a deleted device does (keys, inbox, device-list change). No
// user-interactive authentication, as the MSC says.
// Spec: MSC3814, "Deleting a dehydrated device".
func (s *Server) deleteDehydratedDevice(w http.ResponseWriter, r *http.Request) error {
	d := authn.FromContext(r.Context())
	if s.devices == nil {
		return mxerr.New(mxerr.Unrecognized, "dehydrated devices are not available").WithStatus(http.StatusNotFound)
	}
	ctx := r.Context()
	var deviceID string
	err := s.db.Write(ctx, func(tx storage.Tx) error {
		var err error
		deviceID, _, err = loadDehydrated(ctx, tx, d.UserID)
		if err != nil {
			return err
		}
		if deviceID == "" {
			return mxerr.New(mxerr.NotFound, "no dehydrated device")
		}
		s.counts.dropOnCommit(tx, d.UserID, deviceID)
		return s.devices.DeleteDevicesTx(ctx, tx, d.UserID, []string{deviceID})
	})
	if err != nil {
		return err
	}
	return httpx.OK(w, map[string]string{"device_id": deviceID})
}

// dehydratedDeviceEvents answers GET and POST
// /dehydrated_device/{deviceId}/events: the to-device messages waiting
// for the dehydrated device, a batch at a time, oldest first. A token is
// the position of the last message handed out. Messages are not deleted
// when read: a rehydration that is interrupted can start again from
// another device (the device's deletion or replacement deletes them).
//
// Two shapes of the endpoint are in use (MSC3814's revisions; Synapse
// serves both):
//   - GET ?from=TOKEN&limit=N, the current text, paged as the spec's
//     pagination appendix says: next_batch is omitted once nothing
//     remains. (?next_batch= is read when from is absent, as an
//     intermediate draft had it.)
//   - POST {"next_batch": TOKEN}, the first text, which shipped clients
//     (matrix-rust-sdk) use: next_batch is always returned, and a call
//     with the last one returns no events.
//
// Spec: MSC3814, "Rehydrating a device": M_FORBIDDEN for a device ID that
// is not the user's dehydrated device (M_NOT_FOUND when the user has none,
// as GET /dehydrated_device answers).
func (s *Server) dehydratedDeviceEvents(w http.ResponseWriter, r *http.Request) error {
	d := authn.FromContext(r.Context())
	ctx := r.Context()
	deviceID := chi.URLParam(r, "deviceId")
	limit := ToDeviceBatchLimit
	var token string
	post := r.Method == http.MethodPost
	if post {
		var req struct {
			NextBatch *string `json:"next_batch"`
		}
		if err := httpx.DecodeJSON(r, &req); err != nil {
			return err
		}
		if req.NextBatch != nil {
			token = *req.NextBatch
		}
	} else {
		q := r.URL.Query()
		token = q.Get("from")
		if !q.Has("from") {
			token = q.Get("next_batch")
		}
		if v := q.Get("limit"); v != "" {
			n, err := strconv.Atoi(v)
			if err != nil || n < 1 {
				return mxerr.New(mxerr.InvalidParam, "limit must be a positive integer")
			}
			limit = min(n, ToDeviceBatchLimit)
		}
	}
	var since int64
	if token != "" {
		p, err := strconv.ParseInt(token, 10, 64)
		if err != nil || p < 0 {
			return mxerr.New(mxerr.InvalidParam, "%q is not a token this server gave", token)
		}
		since = p
	}
	current, _, err := loadDehydrated(ctx, s.db.Reader(), d.UserID)
	if err != nil {
		return err
	}
	if current == "" {
		return mxerr.New(mxerr.NotFound, "no dehydrated device")
	}
	if current != deviceID {
		return mxerr.New(mxerr.Forbidden, "%q is not your dehydrated device", deviceID)
	}
	events, latest, more, err := s.toDevicePage(ctx, d.UserID, deviceID, since, limit)
	if err != nil {
		return err
	}
	resp := map[string]any{"events": events}
	if post || more {
		resp["next_batch"] = strconv.FormatInt(latest, 10)
	}
	return httpx.OK(w, resp)
}

// toDevicePage returns up to limit of the device's to-device messages
// above position since, the position of the last one (since when none),
// and whether more follow.
func (s *Server) toDevicePage(ctx context.Context, userID, deviceID string, since int64, limit int) ([]ToDeviceEvent, int64, bool, error) {
	rows, err := s.db.Reader().Query(ctx, `
		SELECT position, sender, event_type, content FROM keyserver_to_device
		WHERE user_id = $1 AND device_id = $2 AND position > $3
		ORDER BY position LIMIT $4`, userID, deviceID, since, limit+1)
	if err != nil {
		return nil, 0, false, err
	}
	defer rows.Close()
	events := []ToDeviceEvent{}
	latest, more := since, false
	for rows.Next() {
		if len(events) == limit {
			more = true
			break
		}
		var e ToDeviceEvent
		var content string
		if err := rows.Scan(&e.Position, &e.Sender, &e.Type, &content); err != nil {
			return nil, 0, false, err
		}
		e.Content = json.RawMessage(content)
		events = append(events, e)
		latest = e.Position
	}
	return events, latest, more, rows.Err()
}
