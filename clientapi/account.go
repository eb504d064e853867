package clientapi

import (
	"encoding/json"
	"net/http"
	"strconv"

	"github.com/myelin-chat/myelin/config"
	"github.com/myelin-chat/myelin/internal/authn"
	"github.com/myelin-chat/myelin/internal/httpx"
	"github.com/myelin-chat/myelin/internal/mxerr"
	"github.com/myelin-chat/myelin/roomserver"
	"github.com/myelin-chat/myelin/storage"
)

// whoami tells the caller who they are.
// Spec: client-server-api, "GET /_matrix/client/v3/account/whoami".
func (s *Server) whoami(w http.ResponseWriter, r *http.Request) error {
	d := authn.FromContext(r.Context())
	body := map[string]any{"user_id": d.UserID, "is_guest": d.IsGuest}
	if d.DeviceID != "" {
		// Spec: omitted when no device is associated (application services).
		body["device_id"] = d.DeviceID
	}
	return httpx.OK(w, body)
}

// changePassword answers POST /account/password (UIA). By default every
// other device is logged out.
// Spec: client-server-api, "POST /_matrix/client/v3/account/password".
func (s *Server) changePassword(w http.ResponseWriter, r *http.Request) error {
	d := authn.FromContext(r.Context())
	if d.IsGuest {
		return mxerr.New(mxerr.GuestAccessForbidden, "guests have no password")
	}
	var req struct {
		NewPassword   string          `json:"new_password"`
		LogoutDevices *bool           `json:"logout_devices"`
		Auth          json.RawMessage `json:"auth"`
	}
	if err := httpx.DecodeJSON(r, &req); err != nil {
		return err
	}
	if req.NewPassword == "" {
		return mxerr.New(mxerr.MissingParam, "new_password is required")
	}
	if err := s.accounts.checkPasswordStrength(req.NewPassword); err != nil {
		return err
	}
	ctx := r.Context()
	localpart := s.localpart(d.UserID)
	sess, err := s.userInteractiveAuth(ctx, s.passwordUIA("password", localpart, r), req.Auth)
	if err != nil {
		return err
	}
	hash, err := hashPassword(req.NewPassword)
	if err != nil {
		return err
	}
	logout := req.LogoutDevices == nil || *req.LogoutDevices
	err = s.db.Write(ctx, func(tx storage.Tx) error {
		if err := consumeUIASession(ctx, tx, sess); err != nil {
			return err
		}
		return s.accounts.setPassword(ctx, tx, localpart, hash, logout, d.DeviceID)
	})
	if err != nil {
		return err
	}
	return httpx.OK(w, httpx.EmptyObject)
}

// deactivate answers POST /account/deactivate (UIA): the account is
// deactivated and every token it had is revoked; logging in is refused
// from then on. The account leaves its rooms before the answer
// (deactivation.go).
// Spec: client-server-api, "POST /_matrix/client/v3/account/deactivate".
func (s *Server) deactivate(w http.ResponseWriter, r *http.Request) error {
	d := authn.FromContext(r.Context())
	if d.IsGuest {
		return mxerr.New(mxerr.GuestAccessForbidden, "guest accounts cannot be deactivated")
	}
	var req struct {
		Auth  json.RawMessage `json:"auth"`
		Erase bool            `json:"erase"`
	}
	if err := httpx.DecodeJSON(r, &req); err != nil {
		return err
	}
	ctx := r.Context()
	localpart := s.localpart(d.UserID)
	sess, err := s.userInteractiveAuth(ctx, s.passwordUIA("deactivate", localpart, r), req.Auth)
	if err != nil {
		return err
	}
	err = s.db.Write(ctx, func(tx storage.Tx) error {
		if err := consumeUIASession(ctx, tx, sess); err != nil {
			return err
		}
		return s.accounts.deactivateAccount(ctx, tx, localpart, req.Erase)
	})
	if err != nil {
		return err
	}
	// The account is deactivated; its rooms held here are left now, and
	// what fails here, and its pending memberships of rooms only other
	// servers hold, are left to the background pass (deactivation.go).
	if s.rooms.rooms != nil {
		if err := s.leaveDeactivatedRooms(ctx, localpart, false); err != nil {
			s.log.Warn("leaving the rooms of a deactivated account", "user", d.UserID, "err", err)
		}
	}
	// No third-party identifiers are ever bound here, so there was
	// nothing to unbind: "success".
	return httpx.OK(w, map[string]string{"id_server_unbind_result": "success"})
}

// threepids answers GET /account/3pid: this server binds no third-party
// identifiers, so the list is always empty.
// Spec: client-server-api, "GET /_matrix/client/v3/account/3pid".
func (s *Server) threepids(w http.ResponseWriter, r *http.Request) error {
	return httpx.OK(w, map[string]any{"threepids": []any{}})
}

// threepidAuthFailed answers the endpoints that would add or bind a
// 3PID: they need a validation session from requestToken, which this
// server never issues (those endpoints answer M_THREEPID_DENIED).
// Spec: client-server-api, "POST /_matrix/client/v3/account/3pid" (403 M_THREEPID_AUTH_FAILED).
func threepidAuthFailed(w http.ResponseWriter, r *http.Request) error {
	return mxerr.New(mxerr.ThreepidAuthFailed, "this server does not validate third-party identifiers").WithStatus(http.StatusForbidden)
}

// threepidNotFound answers delete and unbind: no 3PID is ever bound here.
func threepidNotFound(w http.ResponseWriter, r *http.Request) error {
	return mxerr.New(mxerr.ThreepidNotFound, "no third-party identifier is bound to this account")
}

// maxRoomVersion is the newest stable room version offered in
// m.room_versions.
const maxRoomVersion = 12

// defaultRoomVersion is the room version new rooms get when the client
// names none.
func (s *Server) defaultRoomVersion() string {
	if v := s.cfg.RoomServer.DefaultRoomVersion; v != "" {
		return v
	}
	return config.RoomServer{}.Defaults().DefaultRoomVersion
}

// capabilities answers GET /capabilities.
// Spec: client-server-api, "Capabilities negotiation".
func (s *Server) capabilities(w http.ResponseWriter, r *http.Request) error {
	d := authn.FromContext(r.Context())
	versions := map[string]string{}
	for v := 1; v <= maxRoomVersion; v++ {
		versions[strconv.Itoa(v)] = "stable"
	}
	for _, v := range roomserver.UnstableRoomVersions() {
		versions[v] = "unstable"
	}
	return httpx.OK(w, map[string]any{"capabilities": map[string]any{
		"m.change_password": map[string]bool{"enabled": !d.IsGuest},
		// The default is the version createRoom uses (room_server.default_room_version).
		"m.room_versions":   map[string]any{"default": s.defaultRoomVersion(), "available": versions},
		"m.set_displayname": map[string]bool{"enabled": true},
		"m.set_avatar_url":  map[string]bool{"enabled": true},
		"m.3pid_changes":    map[string]bool{"enabled": false},
		"m.get_login_token": map[string]bool{"enabled": !d.IsGuest},
	}})
}
