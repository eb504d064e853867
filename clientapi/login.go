package clientapi

import (
	"encoding/json"
	"net/http"
	"strings"
	"time"
	"unicode"

	"github.com/myelin-chat/myelin/internal/authn"
	"github.com/myelin-chat/myelin/internal/httpx"
	"github.com/myelin-chat/myelin/internal/mxerr"
	"github.com/myelin-chat/myelin/storage"
)

// Login types. Spec: client-server-api, "Login".
const (
	loginPassword = "m.login.password"
	loginToken    = "m.login.token"
)

// userIdentifier is the identifier object of login and m.login.password.
// Spec: client-server-api, "Identifier types".
type userIdentifier struct {
	Type    string `json:"type"`
	User    string `json:"user"`
	Medium  string `json:"medium"`
	Address string `json:"address"`
	Country string `json:"country"`
	Phone   string `json:"phone"`
}

// identifiedLocalpart returns the local user an identifier (or the
// deprecated top-level user field) names. Localparts are matched
// lower-cased: user IDs here are created lower-case, and @USER must reach
// @user (spec appendices, "User Identifiers", rationale).
func (s *Server) identifiedLocalpart(id *userIdentifier, user string) (string, error) {
	if id != nil && id.Type != "" {
		switch id.Type {
		case "m.id.user":
			user = id.User
		case "m.id.thirdparty", "m.id.phone":
			// Spec: "In the case that the homeserver does not know about
			// the supplied 3PID, the homeserver must respond with 403".
			// No third-party identifiers are bound here.
			return "", mxerr.New(mxerr.Forbidden, "no account is bound to that third-party identifier")
		default:
			return "", mxerr.New(mxerr.Unknown, "unknown identifier type %q", id.Type).WithStatus(http.StatusBadRequest)
		}
	}
	if user == "" {
		return "", mxerr.New(mxerr.BadJSON, "identifier.user is missing")
	}
	if strings.HasPrefix(user, "@") {
		local, server, ok := strings.Cut(user[1:], ":")
		if !ok || server != s.serverName {
			return "", mxerr.New(mxerr.Forbidden, "invalid user or password")
		}
		user = local
	}
	return strings.ToLower(user), nil
}

// loginFlows answers GET /login.
// Spec: client-server-api, "GET /_matrix/client/v3/login".
// With identity providers configured, m.login.sso lists them
// (sso_login_flow.yaml); m.login.token, which ends an SSO login, is
// listed either way.
func (s *Server) loginFlows(w http.ResponseWriter, r *http.Request) error {
	flows := []map[string]any{
		{"type": loginPassword},
		{"type": loginToken, "get_login_token": true},
		{"type": loginTypeAppService},
	}
	if sso := s.ssoLoginFlow(); sso != nil {
		flows = append(flows, sso)
	}
	return httpx.OK(w, map[string]any{"flows": flows})
}

type loginRequest struct {
	Type                     string          `json:"type"`
	Identifier               *userIdentifier `json:"identifier"`
	User                     string          `json:"user"`
	Medium                   string          `json:"medium"`
	Address                  string          `json:"address"`
	Password                 string          `json:"password"`
	Token                    string          `json:"token"`
	DeviceID                 string          `json:"device_id"`
	InitialDeviceDisplayName *string         `json:"initial_device_display_name"`
	RefreshToken             bool            `json:"refresh_token"`
}

// login answers POST /login.
//
// Spec: client-server-api, "POST /_matrix/client/v3/login". Wrong
// credentials are 403 M_FORBIDDEN; a deactivated account is 403
// M_USER_DEACTIVATED and gets no token (security case 30).
func (s *Server) login(w http.ResponseWriter, r *http.Request) error {
	if err := s.loginLimit.Allow(s.clientIP.ClientIP(r)); err != nil {
		return err
	}
	var req loginRequest
	if err := httpx.DecodeJSON(r, &req); err != nil {
		return err
	}
	ctx := r.Context()
	var localpart string
	switch req.Type {
	case loginPassword:
		if req.Medium != "" || req.Address != "" {
			return mxerr.New(mxerr.Forbidden, "no account is bound to that third-party identifier")
		}
		named, err := s.identifiedLocalpart(req.Identifier, req.User)
		if err != nil {
			return err
		}
		acct, ok, err := lookupAccount(ctx, s.db.Reader(), named)
		if err != nil {
			return err
		}
		// checkPassword spends a bcrypt comparison even for unknown users.
		if !checkPassword(acct.passwordHash, req.Password) || !ok {
			return mxerr.New(mxerr.Forbidden, "invalid user or password")
		}
		if acct.deactivated {
			return mxerr.New(mxerr.UserDeactivated, "this account has been deactivated")
		}
		localpart = acct.localpart
	case loginToken:
		var (
			expires int64
			err     error
		)
		err = s.db.Write(ctx, func(tx storage.Tx) error {
			// Deleting as it is read makes the token single-use.
			return tx.QueryRow(ctx, `DELETE FROM login_tokens WHERE token_hash = $1 RETURNING localpart, expires_ts`,
				hashToken(req.Token)).Scan(&localpart, &expires)
		})
		if storage.IsNoRows(err) || (err == nil && time.Now().UnixMilli() >= expires) {
			return mxerr.New(mxerr.Forbidden, "invalid or expired login token")
		}
		if err != nil {
			return err
		}
		acct, ok, err := lookupAccount(ctx, s.db.Reader(), localpart)
		if err != nil {
			return err
		}
		if !ok || acct.deactivated {
			return mxerr.New(mxerr.UserDeactivated, "this account has been deactivated")
		}
	case loginTypeAppService:
		var err error
		if localpart, err = s.appServiceLoginLocalpart(r, req); err != nil {
			return err
		}
	default:
		// Spec: 400 M_UNKNOWN "Bad login type".
		return mxerr.New(mxerr.Unknown, "unsupported login type %q", req.Type).WithStatus(http.StatusBadRequest)
	}
	if err := validateDeviceID(req.DeviceID); err != nil {
		return err
	}
	if err := validateDeviceDisplayName(req.InitialDeviceDisplayName); err != nil {
		return err
	}
	var out issued
	err := s.db.Write(ctx, func(tx storage.Tx) error {
		var err error
		out, err = s.accounts.issueSession(ctx, tx, localpart, sessionOptions{
			deviceID: req.DeviceID, displayName: req.InitialDeviceDisplayName, refresh: req.RefreshToken,
		}, time.Now())
		return err
	})
	if err != nil {
		return err
	}
	return httpx.OK(w, s.sessionResponse(localpart, out))
}

// sessionResponse is the body of a successful login or registration.
func (s *Server) sessionResponse(localpart string, out issued) map[string]any {
	body := map[string]any{
		"user_id":      s.userID(localpart),
		"access_token": out.AccessToken,
		"device_id":    out.DeviceID,
	}
	if out.RefreshToken != "" {
		body["refresh_token"] = out.RefreshToken
		body["expires_in_ms"] = out.ExpiresInMS
	}
	return body
}

// validateDeviceID bounds client-chosen device IDs. A control character
// (NUL above all: a PostgreSQL text column cannot hold it) is refused
// too, as for dehydrated devices' IDs: device IDs travel to other users'
// clients and other servers in device lists and key queries.
func validateDeviceID(id string) error {
	if len(id) > 255 {
		return mxerr.New(mxerr.InvalidParam, "device_id is longer than 255 bytes")
	}
	if strings.ContainsFunc(id, unicode.IsControl) {
		return mxerr.New(mxerr.InvalidParam, "device_id must not contain control characters")
	}
	return nil
}

// validateDeviceDisplayName refuses a device display name holding NUL,
// which a PostgreSQL text column cannot store (the request would end in
// a 500 there and succeed on SQLite).
func validateDeviceDisplayName(name *string) error {
	if name != nil && strings.ContainsRune(*name, 0) {
		return mxerr.New(mxerr.InvalidParam, "the device display name must not contain NUL")
	}
	return nil
}

// getLoginToken answers POST /login/get_token: after re-authenticating
// (always: every call needs a fresh UIA session), the caller gets a
// single-use, short-lived m.login.token for another client.
//
// Spec: client-server-api, "POST /_matrix/client/v1/login/get_token".
func (s *Server) getLoginToken(w http.ResponseWriter, r *http.Request) error {
	d := authn.FromContext(r.Context())
	if d.IsGuest {
		return mxerr.New(mxerr.GuestAccessForbidden, "guests cannot create login tokens")
	}
	var req struct {
		Auth json.RawMessage `json:"auth"`
	}
	if err := httpx.DecodeJSON(r, &req); err != nil {
		return err
	}
	ctx := r.Context()
	localpart := s.localpart(d.UserID)
	sess, err := s.userInteractiveAuth(ctx, s.passwordUIA("login_token", localpart, r), req.Auth)
	if err != nil {
		return err
	}
	lifetime := s.cfg.ClientAPI.LoginTokenLifetime.D()
	token := newToken(loginTokenPrefix)
	err = s.db.Write(ctx, func(tx storage.Tx) error {
		if err := consumeUIASession(ctx, tx, sess); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, `INSERT INTO login_tokens (token_hash, localpart, expires_ts) VALUES ($1, $2, $3)`,
			hashToken(token), localpart, time.Now().Add(lifetime).UnixMilli())
		return err
	})
	if err != nil {
		return err
	}
	return httpx.OK(w, map[string]any{"login_token": token, "expires_in_ms": lifetime.Milliseconds()})
}

// refresh answers POST /refresh: the refresh token buys a new access
// token and a new refresh token. The used refresh token stays valid only
// until the new access or refresh token is used.
//
// Spec: client-server-api, "POST /_matrix/client/v3/refresh" and
// "Refreshing access tokens".
func (s *Server) refresh(w http.ResponseWriter, r *http.Request) error {
	if err := s.loginLimit.Allow(s.clientIP.ClientIP(r)); err != nil {
		return err
	}
	var req struct {
		RefreshToken string `json:"refresh_token"`
	}
	if err := httpx.DecodeJSON(r, &req); err != nil {
		return err
	}
	if req.RefreshToken == "" {
		return mxerr.New(mxerr.MissingParam, "refresh_token is required")
	}
	ctx := r.Context()
	used := hashToken(req.RefreshToken)
	now := time.Now()
	lifetime := s.cfg.ClientAPI.AccessTokenLifetime.D()
	access, next := newToken(accessTokenPrefix), newToken(refreshTokenPrefix)
	err := s.db.Write(ctx, func(tx storage.Tx) error {
		var (
			sessionID   int64
			deactivated bool
		)
		err := tx.QueryRow(ctx, `
			SELECT s.session_id, a.deactivated FROM sessions s JOIN accounts a ON a.localpart = s.localpart
			WHERE s.refresh_token_hash = $1 OR s.prev_refresh_token_hash = $1`, used).Scan(&sessionID, &deactivated)
		if storage.IsNoRows(err) {
			return mxerr.New(mxerr.UnknownToken, "unknown or already used refresh token").With("soft_logout", false)
		}
		if err != nil {
			return err
		}
		if deactivated {
			return mxerr.New(mxerr.UserDeactivated, "this account has been deactivated")
		}
		if err := s.accounts.sessionsChanged(tx); err != nil {
			return err
		}
		_, err = tx.Exec(ctx, `
			UPDATE sessions SET access_token_hash = $1, access_expires_ts = $2,
				refresh_token_hash = $3, prev_refresh_token_hash = $4
			WHERE session_id = $5`,
			hashToken(access), now.Add(lifetime).UnixMilli(), hashToken(next), used, sessionID)
		return err
	})
	if err != nil {
		return err
	}
	return httpx.OK(w, map[string]any{"access_token": access, "refresh_token": next, "expires_in_ms": lifetime.Milliseconds()})
}

// logout answers POST /logout: the caller's device and its session go.
// Spec: client-server-api, "POST /_matrix/client/v3/logout".
func (s *Server) logout(w http.ResponseWriter, r *http.Request) error {
	d := authn.FromContext(r.Context())
	ctx := r.Context()
	err := s.db.Write(ctx, func(tx storage.Tx) error {
		return s.accounts.deleteDevices(ctx, tx, s.localpart(d.UserID), []string{d.DeviceID}, "")
	})
	if err != nil {
		return err
	}
	return httpx.OK(w, httpx.EmptyObject)
}

// logoutAll answers POST /logout/all: every device of the user goes.
// Spec: client-server-api, "POST /_matrix/client/v3/logout/all".
func (s *Server) logoutAll(w http.ResponseWriter, r *http.Request) error {
	d := authn.FromContext(r.Context())
	ctx := r.Context()
	err := s.db.Write(ctx, func(tx storage.Tx) error {
		return s.accounts.deleteDevices(ctx, tx, s.localpart(d.UserID), nil, "")
	})
	if err != nil {
		return err
	}
	return httpx.OK(w, httpx.EmptyObject)
}
