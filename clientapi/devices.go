package clientapi

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/myelin-chat/myelin/internal/authn"
	"github.com/myelin-chat/myelin/internal/httpx"
	"github.com/myelin-chat/myelin/internal/mxerr"
	"github.com/myelin-chat/myelin/storage"
)

// Device management. Spec: client-server-api, "Device management".

// passwordUIA is the flow of endpoints that ask the user to re-enter
// their password.
func (s *Server) passwordUIA(purpose, localpart string, r *http.Request) uiaSpec {
	return uiaSpec{purpose: purpose, localpart: localpart, flows: [][]string{{stagePassword}}, clientIP: s.clientIP.ClientIP(r)}
}

// getDevices answers GET /devices.
func (s *Server) getDevices(w http.ResponseWriter, r *http.Request) error {
	d := authn.FromContext(r.Context())
	devices, err := listDevices(r.Context(), s.db.Reader(), s.localpart(d.UserID))
	if err != nil {
		return err
	}
	return httpx.OK(w, map[string]any{"devices": devices})
}

// getDevice answers GET /devices/{deviceId}.
func (s *Server) getDevice(w http.ResponseWriter, r *http.Request) error {
	d := authn.FromContext(r.Context())
	dev, err := scanDevice(s.db.Reader().QueryRow(r.Context(), `
		SELECT device_id, display_name, last_seen_ip, last_seen_ts
		FROM devices WHERE localpart = $1 AND device_id = $2`, s.localpart(d.UserID), chi.URLParam(r, "deviceId")))
	if storage.IsNoRows(err) {
		return mxerr.New(mxerr.NotFound, "no such device")
	}
	if err != nil {
		return err
	}
	return httpx.OK(w, dev)
}

// putDevice answers PUT /devices/{deviceId}: it renames an existing
// device. Creating devices is reserved to application services (spec
// v1.17), which are not supported yet, so an unknown device is 404.
func (s *Server) putDevice(w http.ResponseWriter, r *http.Request) error {
	d := authn.FromContext(r.Context())
	var req struct {
		DisplayName *string `json:"display_name"`
	}
	if err := httpx.DecodeJSON(r, &req); err != nil {
		return err
	}
	if err := validateDeviceDisplayName(req.DisplayName); err != nil {
		return err
	}
	ctx := r.Context()
	if d.AppServiceID != "" {
		if created, err := s.createAppServiceDevice(ctx, d, chi.URLParam(r, "deviceId"), req.DisplayName); err != nil || created {
			if err != nil {
				return err
			}
			httpx.WriteJSON(w, http.StatusCreated, httpx.EmptyObject)
			return nil
		}
	}
	localpart, deviceID := s.localpart(d.UserID), chi.URLParam(r, "deviceId")
	err := s.db.Write(ctx, func(tx storage.Tx) error {
		var old *string
		err := tx.QueryRow(ctx, `SELECT display_name FROM devices WHERE localpart = $1 AND device_id = $2`,
			localpart, deviceID).Scan(&old)
		if storage.IsNoRows(err) {
			return mxerr.New(mxerr.NotFound, "no such device")
		}
		if err != nil {
			return err
		}
		// A missing display_name, or the name the device already has,
		// changes nothing and announces nothing.
		if req.DisplayName == nil || (old != nil && *old == *req.DisplayName) {
			return nil
		}
		if _, err := tx.Exec(ctx, `UPDATE devices SET display_name = $1 WHERE localpart = $2 AND device_id = $3`,
			*req.DisplayName, localpart, deviceID); err != nil {
			return err
		}
		// Spec: client-server-api, "Tracking the device list for a user":
		// a new display name is a change to the user's device list, seen by
		// users sharing a room in /sync device_lists.changed and by servers
		// sharing a room as an m.device_list_update (server-server-api,
		// "Device Management"). It is recorded in this same transaction.
		if s.onDeviceRenamed != nil {
			return s.onDeviceRenamed(ctx, tx, d.UserID, deviceID)
		}
		return nil
	})
	if err != nil {
		return err
	}
	return httpx.OK(w, httpx.EmptyObject)
}

// DeviceRenamedHook is called inside the transaction that gives userID's
// device deviceID a new display name, so the device-list change it makes
// commits with the rename. An error rolls the rename back.
type DeviceRenamedHook func(ctx context.Context, tx storage.Tx, userID, deviceID string) error

// deleteDevice answers DELETE /devices/{deviceId} (UIA). Deleting a
// device ends its session; a device already gone is still 200.
func (s *Server) deleteDevice(w http.ResponseWriter, r *http.Request) error {
	var req struct {
		Auth json.RawMessage `json:"auth"`
	}
	if err := httpx.DecodeJSON(r, &req); err != nil {
		return err
	}
	return s.deleteDevicesUIA(w, r, req.Auth, []string{chi.URLParam(r, "deviceId")})
}

// deleteDevicesBulk answers POST /delete_devices (UIA).
func (s *Server) deleteDevicesBulk(w http.ResponseWriter, r *http.Request) error {
	var req struct {
		Devices []string        `json:"devices"`
		Auth    json.RawMessage `json:"auth"`
	}
	if err := httpx.DecodeJSON(r, &req); err != nil {
		return err
	}
	if req.Devices == nil {
		return mxerr.New(mxerr.MissingParam, "devices is required")
	}
	return s.deleteDevicesUIA(w, r, req.Auth, req.Devices)
}

func (s *Server) deleteDevicesUIA(w http.ResponseWriter, r *http.Request, auth json.RawMessage, deviceIDs []string) error {
	d := authn.FromContext(r.Context())
	if d.IsGuest {
		return mxerr.New(mxerr.GuestAccessForbidden, "guests cannot delete devices")
	}
	ctx := r.Context()
	localpart := s.localpart(d.UserID)
	// Spec: application-service-api, "Deleting devices" (v1.17): no UIA
	// for application services.
	var sess *uiaSession
	if d.AppServiceID == "" {
		var err error
		if sess, err = s.userInteractiveAuth(ctx, s.passwordUIA("delete_devices", localpart, r), auth); err != nil {
			return err
		}
	}
	err := s.db.Write(ctx, func(tx storage.Tx) error {
		if sess != nil {
			if err := consumeUIASession(ctx, tx, sess); err != nil {
				return err
			}
		}
		return s.accounts.deleteDevices(ctx, tx, localpart, deviceIDs, "")
	})
	if err != nil {
		return err
	}
	return httpx.OK(w, httpx.EmptyObject)
}

// DeviceNames returns a local user's devices: device ID → display name
// ("" when unnamed). Other components (the key server) use it to know
// which devices exist without reading clientapi's tables.
func (a *Accounts) DeviceNames(ctx context.Context, userID string) (map[string]string, error) {
	local, server, ok := strings.Cut(strings.TrimPrefix(userID, "@"), ":")
	out := map[string]string{}
	if !ok || server != a.serverName || !strings.HasPrefix(userID, "@") {
		return out, nil
	}
	devices, err := listDevices(ctx, a.db.Reader(), local)
	if err != nil {
		return nil, err
	}
	for _, d := range devices {
		name := ""
		if d.DisplayName != nil {
			name = *d.DisplayName
		}
		out[d.DeviceID] = name
	}
	return out, nil
}

// localpartOf returns the localpart of a user ID on this server.
func (a *Accounts) localpartOf(userID string) (string, bool) {
	local := localpartOn(userID, a.serverName)
	return local, local != ""
}

// insertDevice adds localpart's device deviceID unless it exists, running
// the device-created hook for a new one; created says which happened.
func (a *Accounts) insertDevice(ctx context.Context, tx storage.Tx, localpart, deviceID string, displayName *string, now time.Time) (created bool, err error) {
	res, err := tx.Exec(ctx, `
		INSERT INTO devices (localpart, device_id, display_name, created_ts)
		VALUES ($1, $2, $3, $4)
		ON CONFLICT (localpart, device_id) DO NOTHING`, localpart, deviceID, displayName, now.UnixMilli())
	if err != nil {
		return false, err
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return false, nil
	}
	return true, a.deviceCreated(ctx, tx, localpart, deviceID)
}

// CreateDeviceTx creates userID's device deviceID without a session (no
// access token), inside tx, running the device-created hook. The key
// server calls it for a dehydrated device (MSC3814). An existing device of
// that ID is refused with M_INVALID_PARAM.
func (a *Accounts) CreateDeviceTx(ctx context.Context, tx storage.Tx, userID, deviceID string, displayName *string) error {
	local, ok := a.localpartOf(userID)
	if !ok {
		return mxerr.New(mxerr.InvalidParam, "%s is not a user of this server", userID)
	}
	created, err := a.insertDevice(ctx, tx, local, deviceID, displayName, time.Now())
	if err != nil {
		return err
	}
	if !created {
		return mxerr.New(mxerr.InvalidParam, "device ID %s is already one of your devices", deviceID)
	}
	return nil
}

// DeleteDevicesTx deletes userID's devices deviceIDs inside tx, as a
// device deletion does (sessions, per-device account data, the
// devices-deleted hook). The key server calls it to replace or delete a
// dehydrated device (MSC3814).
func (a *Accounts) DeleteDevicesTx(ctx context.Context, tx storage.Tx, userID string, deviceIDs []string) error {
	local, ok := a.localpartOf(userID)
	if !ok {
		return mxerr.New(mxerr.InvalidParam, "%s is not a user of this server", userID)
	}
	if deviceIDs == nil {
		deviceIDs = []string{} // nil would mean every device
	}
	return a.deleteDevices(ctx, tx, local, deviceIDs, "")
}
