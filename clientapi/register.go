package clientapi

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/myelin-chat/myelin/internal/httpx"
	"github.com/myelin-chat/myelin/internal/mxerr"
	"github.com/myelin-chat/myelin/storage"
)

// Registration modes (config client_api.registration).
const (
	registrationToken  = "token"
	registrationOpen   = "open"
	registrationClosed = "closed"
)

// localpartAlphabet is used for generated localparts (guests, or no
// username given).
const localpartAlphabet = "abcdefghijklmnopqrstuvwxyz0123456789"

// validateLocalpart checks a localpart for a new account against the
// user ID grammar: non-empty, only a-z 0-9 . _ = - / +, and the whole
// user ID at most 255 bytes.
//
// Spec: appendices, "User Identifiers". Historical (non-lowercase)
// localparts are accepted from other servers but never created here.
// M_EXCLUSIVE (application-service namespaces) is checked by the callers.
func (a *Accounts) validateLocalpart(localpart string) error {
	if localpart == "" {
		return mxerr.New(mxerr.InvalidUsername, "the username is empty")
	}
	for i := 0; i < len(localpart); i++ {
		c := localpart[i]
		switch {
		case c >= 'a' && c <= 'z', c >= '0' && c <= '9':
		case c == '.', c == '_', c == '=', c == '-', c == '/', c == '+':
		default:
			return mxerr.New(mxerr.InvalidUsername, "user IDs may only contain a-z, 0-9, and . _ = - / +")
		}
	}
	if len(a.userID(localpart)) > 255 {
		return mxerr.New(mxerr.InvalidUsername, "the user ID would be longer than 255 bytes")
	}
	return nil
}

// checkPasswordStrength enforces client_api.password_min_length.
func (a *Accounts) checkPasswordStrength(password string) error {
	if utf8.RuneCountInString(password) < a.cfg.PasswordMinLength {
		return mxerr.New(mxerr.WeakPassword, "the password must be at least %d characters long", a.cfg.PasswordMinLength)
	}
	return nil
}

// mapUsername turns a requested username into the localpart to create:
// lower-cased, as the spec asks servers to do ("requiring homeservers to
// downcase usernames when creating user IDs"), then validated.
func (a *Accounts) mapUsername(username string) (string, error) {
	localpart := strings.ToLower(username)
	return localpart, a.validateLocalpart(localpart)
}

type registerRequest struct {
	Auth                     json.RawMessage `json:"auth"`
	Username                 string          `json:"username"`
	Password                 string          `json:"password"`
	DeviceID                 string          `json:"device_id"`
	InitialDeviceDisplayName *string         `json:"initial_device_display_name"`
	InhibitLogin             bool            `json:"inhibit_login"`
	RefreshToken             bool            `json:"refresh_token"`
	Type                     string          `json:"type"`
}

// register answers POST /register.
//
// Spec: client-server-api, "POST /_matrix/client/v3/register". The
// username and password checks run before UIA, as the spec requires;
// the account is created in the same transaction that consumes the UIA
// session (and with it the registration-token use).
func (s *Server) register(w http.ResponseWriter, r *http.Request) error {
	var req registerRequest
	if err := httpx.DecodeJSON(r, &req); err != nil {
		return err
	}
	if req.Type == loginTypeAppService {
		return s.registerAppService(w, r, req)
	}
	ip := s.clientIP.ClientIP(r)
	if err := s.registerLimit.Allow(ip); err != nil {
		return err
	}
	switch kind := r.URL.Query().Get("kind"); kind {
	case "", "user":
	case "guest":
		return s.registerGuest(w, r, req)
	default:
		return mxerr.New(mxerr.InvalidParam, "kind must be user or guest")
	}
	var flows [][]string
	switch s.cfg.ClientAPI.Registration {
	case registrationToken:
		flows = [][]string{{stageRegistrationToken}}
	case registrationOpen:
		flows = [][]string{{stageDummy}}
	default:
		return mxerr.New(mxerr.Forbidden, "registration is disabled on this server")
	}
	ctx := r.Context()
	localpart := ""
	if req.Username != "" {
		var err error
		if localpart, err = s.accounts.mapUsername(req.Username); err != nil {
			return err
		}
		if err := s.exclusiveUser(s.userID(localpart), nil); err != nil {
			return err
		}
		if _, taken, err := lookupAccount(ctx, s.db.Reader(), localpart); err != nil {
			return err
		} else if taken {
			return mxerr.New(mxerr.UserInUse, "the user ID is already taken")
		}
	}
	if req.Password != "" {
		if err := s.accounts.checkPasswordStrength(req.Password); err != nil {
			return err
		}
	}
	if err := validateDeviceID(req.DeviceID); err != nil {
		return err
	}
	if err := validateDeviceDisplayName(req.InitialDeviceDisplayName); err != nil {
		return err
	}
	sess, err := s.userInteractiveAuth(ctx, uiaSpec{purpose: "register", flows: flows, clientIP: ip}, req.Auth)
	if err != nil {
		return err
	}
	// Only now, so that clients can fetch the flows with an empty body.
	// The session survives, so the client can retry with a password.
	if req.Password == "" {
		return mxerr.New(mxerr.MissingParam, "a password is required")
	}
	hash, err := hashPassword(req.Password)
	if err != nil {
		return err
	}
	if localpart == "" {
		localpart = randomString(12, localpartAlphabet)
	}
	return s.createAccount(ctx, w, req, localpart, hash, func(tx storage.Tx) error {
		return consumeUIASession(ctx, tx, sess)
	})
}

// createAccount writes the account localpart (with password hash, empty
// for none) and, unless req.InhibitLogin, its first session, in one
// transaction after first (which may refuse), and answers the register
// request. Spec: client-server-api, "POST /_matrix/client/v3/register".
func (s *Server) createAccount(ctx context.Context, w http.ResponseWriter, req registerRequest, localpart, hash string,
	first func(tx storage.Tx) error) error {
	now := time.Now()
	var out issued
	err := s.db.Write(ctx, func(tx storage.Tx) error {
		if err := first(tx); err != nil {
			return err
		}
		if err := insertAccount(ctx, tx, localpart, hash, false, false, now); err != nil {
			return err
		}
		if req.InhibitLogin {
			return nil
		}
		var err error
		out, err = s.accounts.issueSession(ctx, tx, localpart, sessionOptions{
			deviceID: req.DeviceID, displayName: req.InitialDeviceDisplayName, refresh: req.RefreshToken,
		}, now)
		return err
	})
	if err != nil {
		return err
	}
	if req.InhibitLogin {
		return httpx.OK(w, map[string]any{"user_id": s.userID(localpart)})
	}
	return httpx.OK(w, s.sessionResponse(localpart, out))
}

// registerGuest creates a guest account. Spec: for guests every request
// parameter except initial_device_display_name is ignored, and there is
// no UIA.
func (s *Server) registerGuest(w http.ResponseWriter, r *http.Request, req registerRequest) error {
	if !s.cfg.ClientAPI.GuestAccess {
		return mxerr.New(mxerr.Forbidden, "guest access is disabled on this server")
	}
	ctx := r.Context()
	localpart := randomString(12, localpartAlphabet)
	now := time.Now()
	var out issued
	err := s.db.Write(ctx, func(tx storage.Tx) error {
		if err := insertAccount(ctx, tx, localpart, "", true, false, now); err != nil {
			return err
		}
		var err error
		out, err = s.accounts.issueSession(ctx, tx, localpart, sessionOptions{displayName: req.InitialDeviceDisplayName}, now)
		return err
	})
	if err != nil {
		return err
	}
	return httpx.OK(w, s.sessionResponse(localpart, out))
}

// registerAvailable answers GET /register/available.
// Spec: client-server-api, "GET /_matrix/client/v3/register/available".
func (s *Server) registerAvailable(w http.ResponseWriter, r *http.Request) error {
	if err := s.registerLimit.Allow(s.clientIP.ClientIP(r)); err != nil {
		return err
	}
	username := r.URL.Query().Get("username")
	if username == "" {
		return mxerr.New(mxerr.MissingParam, "username is required")
	}
	localpart, err := s.accounts.mapUsername(username)
	if err != nil {
		return err
	}
	if err := s.exclusiveUser(s.userID(localpart), nil); err != nil {
		return err
	}
	_, taken, err := lookupAccount(r.Context(), s.db.Reader(), localpart)
	if err != nil {
		return err
	}
	if taken {
		return mxerr.New(mxerr.UserInUse, "the user ID is already taken")
	}
	return httpx.OK(w, map[string]bool{"available": true})
}

// registrationTokenValidity answers the validity check.
// Spec: client-server-api, "GET /_matrix/client/v1/register/m.login.registration_token/validity".
func (s *Server) registrationTokenValidity(w http.ResponseWriter, r *http.Request) error {
	if err := s.registerLimit.Allow(s.clientIP.ClientIP(r)); err != nil {
		return err
	}
	if s.cfg.ClientAPI.Registration != registrationToken {
		return mxerr.New(mxerr.Forbidden, "registration with tokens is not enabled on this server")
	}
	token := r.URL.Query().Get("token")
	if token == "" {
		return mxerr.New(mxerr.MissingParam, "token is required")
	}
	var n int
	err := s.db.Reader().QueryRow(r.Context(), `
		SELECT COUNT(*) FROM registration_tokens
		WHERE token = $1 AND (expiry_ts IS NULL OR expiry_ts > $2)
		  AND (uses_allowed IS NULL OR pending + completed < uses_allowed)`,
		token, time.Now().UnixMilli()).Scan(&n)
	if err != nil {
		return err
	}
	return httpx.OK(w, map[string]bool{"valid": n > 0})
}

// threepidDenied answers the requestToken endpoints: this server does not
// validate email addresses or phone numbers.
// Spec: client-server-api, "POST /_matrix/client/v3/register/email/requestToken" (403 M_THREEPID_DENIED).
func threepidDenied(w http.ResponseWriter, r *http.Request) error {
	return mxerr.New(mxerr.ThreepidDenied, "this server does not use third-party identifiers")
}
