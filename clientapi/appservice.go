package clientapi

import (
	"context"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/myelin-chat/myelin/appservice"
	"github.com/myelin-chat/myelin/internal/authn"
	"github.com/myelin-chat/myelin/internal/mxerr"
	"github.com/myelin-chat/myelin/storage"
)

// errUnknownDevice is the identity assertion's answer for a device_id
// that is not the user's.
const errUnknownDevice mxerr.Code = "M_UNKNOWN_DEVICE"

// loginTypeAppService is the registration (and login) type application
// services use. Spec: application-service-api, "Server admin style permissions".
const loginTypeAppService = "m.login.application_service"

// AppServiceQueries ask application services about users and aliases in
// their namespaces that this server does not know yet (appservice.Server).
type AppServiceQueries interface {
	QueryUser(ctx context.Context, userID string) bool
	QueryAlias(ctx context.Context, alias string) bool
	// Protocols, Protocol and ThirdPartyLookup ask the services about
	// third-party networks (thirdparty.go).
	Protocols(ctx context.Context) map[string]map[string]any
	Protocol(ctx context.Context, protocol string) (map[string]any, bool)
	ThirdPartyLookup(ctx context.Context, kind appservice.ThirdPartyKind, protocol string, fields url.Values) ([]map[string]any, bool)
}

// verifyAppService authenticates an as_token: as the service's sender, or
// as the user named by ?user_id= in its namespaces, optionally on one of
// that user's devices (?device_id=, or MSC3202's
// org.matrix.msc3202.device_id).
//
// Spec: application-service-api, "Identity assertion".
func (s *Server) verifyAppService(ctx context.Context, reg *appservice.Registration, r *http.Request) (*authn.Device, error) {
	d := &authn.Device{UserID: reg.SenderID(s.serverName), AppServiceID: reg.ID, AppServiceRateLimited: reg.RateLimited}
	if r == nil {
		return d, nil
	}
	q := r.URL.Query()
	if userID := q.Get("user_id"); userID != "" {
		if !reg.OwnsUser(userID, s.serverName) {
			return nil, mxerr.New(mxerr.Exclusive, "the application service cannot masquerade as %s: it is outside its namespaces", userID).
				WithStatus(http.StatusForbidden)
		}
		d.UserID = userID
	}
	localpart := s.localpart(d.UserID)
	if localpart == "" {
		return nil, mxerr.New(mxerr.Forbidden, "%s is not a user of this server", d.UserID)
	}
	acct, exists, err := lookupAccount(ctx, s.db.Reader(), localpart)
	if err != nil {
		return nil, err
	}
	if !exists || acct.deactivated {
		return nil, mxerr.New(mxerr.Forbidden, "the application service has not registered %s", d.UserID)
	}
	deviceID := q.Get("device_id")
	if deviceID == "" {
		deviceID = q.Get("org.matrix.msc3202.device_id")
	}
	if deviceID != "" {
		var n int
		if err := s.db.Reader().QueryRow(ctx, `SELECT COUNT(*) FROM devices WHERE localpart = $1 AND device_id = $2`,
			localpart, deviceID).Scan(&n); err != nil {
			return nil, err
		}
		if n == 0 {
			return nil, mxerr.New(errUnknownDevice, "device %s does not belong to %s", deviceID, d.UserID)
		}
		d.DeviceID = deviceID
	}
	return d, nil
}

// ensureAppServiceSenders creates the account of every service's
// sender_localpart, so the sender can join rooms and set a profile like
// any user. The accounts have no password.
func (s *Server) ensureAppServiceSenders(ctx context.Context) error {
	for _, reg := range s.appservices.All() {
		if err := s.accounts.validateLocalpart(reg.SenderLocalpart); err != nil {
			return err
		}
		err := s.db.Write(ctx, func(tx storage.Tx) error {
			_, exists, err := lookupAccount(ctx, tx, reg.SenderLocalpart)
			if err != nil || exists {
				return err
			}
			return insertAccount(ctx, tx, reg.SenderLocalpart, "", false, false, time.Now())
		})
		if err != nil {
			return err
		}
	}
	return nil
}

// exclusiveUser refuses userID when an application service holds it in
// an exclusive namespace and the caller is not that service.
// Spec: application-service-api, "Server admin style permissions".
func (s *Server) exclusiveUser(userID string, caller *appservice.Registration) error {
	if owner := s.appservices.ExclusiveUserOwner(userID); owner != nil && owner != caller {
		return mxerr.New(mxerr.Exclusive, "%s is reserved by an application service", userID)
	}
	return nil
}

// exclusiveAlias is exclusiveUser for room aliases; an application
// service may moreover only create aliases in its own namespaces.
func (s *Server) exclusiveAlias(alias, callerAppService string) error {
	if reg := s.appservices.ByID(callerAppService); reg != nil && !reg.OwnsAlias(alias) {
		return mxerr.New(mxerr.Exclusive, "%s is outside the application service's namespaces", alias)
	}
	if owner := s.appservices.ExclusiveAliasOwner(alias); owner != nil && owner.ID != callerAppService {
		return mxerr.New(mxerr.Exclusive, "%s is reserved by an application service", alias)
	}
	return nil
}

// registerAppService registers a user of an application service's
// namespace: no UIA, no password, allowed whatever the registration mode.
// Spec: application-service-api, "Server admin style permissions", and
// client-server-api "POST /_matrix/client/v3/register".
func (s *Server) registerAppService(w http.ResponseWriter, r *http.Request, req registerRequest) error {
	token, ok := authn.Token(r)
	if !ok {
		return mxerr.New(mxerr.MissingToken, "registering with %s needs the as_token", loginTypeAppService)
	}
	reg := s.appservices.ByToken(token)
	if reg == nil {
		return mxerr.New(mxerr.UnknownToken, "unknown application service token").With("soft_logout", false)
	}
	if reg.RateLimited {
		if err := s.registerLimit.Allow(s.clientIP.ClientIP(r)); err != nil {
			return err
		}
	}
	if req.Username == "" {
		return mxerr.New(mxerr.MissingParam, "username is required")
	}
	localpart, err := s.accounts.mapUsername(req.Username)
	if err != nil {
		return err
	}
	userID := s.userID(localpart)
	if !reg.OwnsUser(userID, s.serverName) {
		return mxerr.New(mxerr.Exclusive, "%s is outside the application service's namespaces", userID)
	}
	if err := s.exclusiveUser(userID, reg); err != nil {
		return err
	}
	if err := validateDeviceID(req.DeviceID); err != nil {
		return err
	}
	if err := validateDeviceDisplayName(req.InitialDeviceDisplayName); err != nil {
		return err
	}
	ctx := r.Context()
	return s.createAccount(ctx, w, req, localpart, "", func(tx storage.Tx) error {
		if _, taken, err := lookupAccount(ctx, tx, localpart); err != nil {
			return err
		} else if taken {
			return mxerr.New(mxerr.UserInUse, "the user ID is already taken")
		}
		return nil
	})
}

// massagedTS reads the ?ts= of an application service's send or state
// request: 0 when absent or when the caller is not an application service
// (the parameter is theirs alone), M_INVALID_PARAM when not a valid
// origin_server_ts.
// Spec: application-service-api, "Timestamp massaging".
func massagedTS(r *http.Request, me *authn.Device) (int64, error) {
	raw := r.URL.Query().Get("ts")
	if raw == "" || me.AppServiceID == "" {
		return 0, nil
	}
	ts, err := strconv.ParseInt(raw, 10, 64)
	if err != nil || ts <= 0 || ts > 1<<53-1 {
		return 0, mxerr.New(mxerr.InvalidParam, "ts must be a positive integer of milliseconds")
	}
	return ts, nil
}

// allowMessage applies the per-user message rate limit, except to the
// users of an application service registered with rate_limited: false.
func (s *Server) allowMessage(me *authn.Device) error {
	if me.AppServiceID != "" && !me.AppServiceRateLimited {
		return nil
	}
	return s.rooms.messageLimit.Allow(me.UserID)
}

// RoomAliases lists a room's local aliases, for the application service
// sender's alias-namespace interest test.
func (s *Server) RoomAliases(ctx context.Context, roomID string) ([]string, error) {
	return s.aliasesOf(ctx, roomID)
}

// appServiceLoginLocalpart checks an m.login.application_service login:
// the as_token authenticates, and the user must be an existing account in
// the service's namespaces.
// Spec: application-service-api, "Server admin style permissions".
func (s *Server) appServiceLoginLocalpart(r *http.Request, req loginRequest) (string, error) {
	token, ok := authn.Token(r)
	if !ok {
		return "", mxerr.New(mxerr.MissingToken, "logging in with %s needs the as_token", loginTypeAppService)
	}
	reg := s.appservices.ByToken(token)
	if reg == nil {
		return "", mxerr.New(mxerr.UnknownToken, "unknown application service token").With("soft_logout", false)
	}
	localpart, err := s.identifiedLocalpart(req.Identifier, req.User)
	if err != nil {
		return "", err
	}
	if !reg.OwnsUser(s.userID(localpart), s.serverName) {
		return "", mxerr.New(mxerr.Exclusive, "%s is outside the application service's namespaces", s.userID(localpart))
	}
	acct, exists, err := lookupAccount(r.Context(), s.db.Reader(), localpart)
	if err != nil {
		return "", err
	}
	if !exists {
		return "", mxerr.New(mxerr.Forbidden, "the application service has not registered %s", s.userID(localpart))
	}
	if acct.deactivated {
		return "", mxerr.New(mxerr.UserDeactivated, "this account has been deactivated")
	}
	return localpart, nil
}

// createAppServiceDevice creates deviceID for an application service's
// user if it does not exist yet, and reports whether it did.
// Spec: client-server-api, "PUT /_matrix/client/v3/devices/{deviceId}"
// (v1.17: only application services may create devices; 201 on creation).
func (s *Server) createAppServiceDevice(ctx context.Context, d *authn.Device, deviceID string, displayName *string) (bool, error) {
	if deviceID == "" {
		return false, mxerr.New(mxerr.InvalidParam, "the device ID is empty")
	}
	if err := validateDeviceID(deviceID); err != nil {
		return false, err
	}
	if d.AppServiceRateLimited {
		if err := s.loginLimit.Allow(d.UserID); err != nil {
			return false, err
		}
	}
	localpart := s.localpart(d.UserID)
	created := false
	err := s.db.Write(ctx, func(tx storage.Tx) error {
		var err error
		created, err = s.accounts.insertDevice(ctx, tx, localpart, deviceID, displayName, time.Now())
		return err
	})
	return created, err
}
