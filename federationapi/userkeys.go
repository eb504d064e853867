package federationapi

import (
	"context"
	"encoding/json"
	"net/http"

	"github.com/myelin-chat/myelin/internal/httpx"
	"github.com/myelin-chat/myelin/internal/mxerr"
)

// UserKeys answers other servers' key requests for local users (the key
// server). Spec: server-server-api, "Device Management" and "End-to-End
// Encryption".
type UserKeys interface {
	FederationQueryKeys(ctx context.Context, deviceKeys map[string][]string) (any, error)
	FederationClaimKeys(ctx context.Context, oneTimeKeys map[string]map[string]string) (any, error)
	FederationUserDevices(ctx context.Context, userID string) (any, error)
}

// Bounds on one inbound key request, so another server cannot make us
// read every user's keys in one go.
const (
	maxKeyQueryUsers   = 1000
	maxKeyClaimDevices = 1000
)

// userKeysQuery is POST /v1/user/keys/query.
func (s *Server) userKeysQuery(w http.ResponseWriter, r *http.Request) error {
	if s.userKeys == nil {
		return mxerr.New(mxerr.Unrecognized, "keys are not served")
	}
	var req struct {
		DeviceKeys map[string][]string `json:"device_keys"`
	}
	if err := httpx.DecodeJSON(r, &req); err != nil {
		return err
	}
	if len(req.DeviceKeys) > maxKeyQueryUsers {
		return mxerr.New(mxerr.TooLarge, "at most %d users per query", maxKeyQueryUsers)
	}
	resp, err := s.userKeys.FederationQueryKeys(r.Context(), req.DeviceKeys)
	if err != nil {
		return err
	}
	return httpx.OK(w, resp)
}

// userKeysClaim is POST /v1/user/keys/claim.
func (s *Server) userKeysClaim(w http.ResponseWriter, r *http.Request) error {
	if s.userKeys == nil {
		return mxerr.New(mxerr.Unrecognized, "keys are not served")
	}
	var req struct {
		OneTimeKeys map[string]map[string]string `json:"one_time_keys"`
	}
	if err := httpx.DecodeJSON(r, &req); err != nil {
		return err
	}
	n := 0
	for _, devices := range req.OneTimeKeys {
		n += len(devices)
	}
	if n > maxKeyClaimDevices {
		return mxerr.New(mxerr.TooLarge, "at most %d devices per claim", maxKeyClaimDevices)
	}
	resp, err := s.userKeys.FederationClaimKeys(r.Context(), req.OneTimeKeys)
	if err != nil {
		return err
	}
	return httpx.OK(w, resp)
}

// userDevices is GET /v1/user/devices/{userID}, for local users only.
func (s *Server) userDevices(w http.ResponseWriter, r *http.Request) error {
	if s.userKeys == nil {
		return mxerr.New(mxerr.Unrecognized, "keys are not served")
	}
	userID := pathParam(r, "userID")
	if domainOf(userID) != s.serverName {
		return mxerr.New(mxerr.Forbidden, "%s is not a user of this server", userID).WithStatus(http.StatusForbidden)
	}
	resp, err := s.userKeys.FederationUserDevices(r.Context(), userID)
	if err != nil {
		return err
	}
	return httpx.OK(w, resp)
}

// QueryRemoteKeys is POST /_matrix/federation/v1/user/keys/query to
// server; it returns the answer's body.
func (s *Server) QueryRemoteKeys(ctx context.Context, server string, deviceKeys map[string][]string) (json.RawMessage, error) {
	var out json.RawMessage
	err := s.client.signed(ctx, server, http.MethodPost, "/_matrix/federation/v1/user/keys/query",
		map[string]any{"device_keys": deviceKeys}, &out)
	return out, err
}

// ClaimRemoteKeys is POST /_matrix/federation/v1/user/keys/claim.
func (s *Server) ClaimRemoteKeys(ctx context.Context, server string, oneTimeKeys map[string]map[string]string) (json.RawMessage, error) {
	var out json.RawMessage
	err := s.client.signed(ctx, server, http.MethodPost, "/_matrix/federation/v1/user/keys/claim",
		map[string]any{"one_time_keys": oneTimeKeys}, &out)
	return out, err
}

// RemoteUserDevices is GET /_matrix/federation/v1/user/devices/{userID}.
func (s *Server) RemoteUserDevices(ctx context.Context, server, userID string) (json.RawMessage, error) {
	var out json.RawMessage
	err := s.client.signed(ctx, server, http.MethodGet, "/_matrix/federation/v1/user/devices/"+pathEscape(userID), nil, &out)
	return out, err
}

// DestinationBackingOff reports whether the sender is backing off from
// server: its last transactions to it failed and retry_at_ts is still
// ahead (gmeFallbacks skips such servers too). The key server's
// device-list resync loops skip a retry meanwhile rather than send the
// server one GET /user/devices per tracked user. It reads nothing for a
// server this process's sender holds healthy (backoffView), and answers
// false when it cannot read.
func (s *Server) DestinationBackingOff(ctx context.Context, server string) bool {
	if s.sender != nil {
		s.sender.view.mu.Lock()
		_, failing := s.sender.view.failing[server]
		s.sender.view.mu.Unlock()
		if !failing && !s.sender.view.shared {
			return false
		}
	}
	var failures int
	var retryAt int64
	err := s.db.Reader().QueryRow(ctx, `SELECT failures, retry_at_ts FROM federation_destinations WHERE server_name = $1`,
		server).Scan(&failures, &retryAt)
	return err == nil && failures > 0 && retryAt > s.now().UnixMilli()
}
