package clientapi

import (
	"context"
	"embed"
	"errors"
	"log/slog"
	"net/http"
	"sync"

	"github.com/go-chi/chi/v5"

	"github.com/myelin-chat/myelin/appservice"
	"github.com/myelin-chat/myelin/config"
	"github.com/myelin-chat/myelin/internal/authn"
	"github.com/myelin-chat/myelin/internal/httpx"
	"github.com/myelin-chat/myelin/internal/notifier"
	"github.com/myelin-chat/myelin/internal/ratelimit"
	"github.com/myelin-chat/myelin/internal/signing"
	"github.com/myelin-chat/myelin/storage"
)

//go:embed migrations/*.sql
var migrations embed.FS

// Deps is everything the client API needs.
type Deps struct {
	// NoBackground leaves out the background work (the sweeper of
	// expired account state, the delayed-event scheduler, the leaves of
	// deactivated accounts and of guests): a process of a split
	// deployment that does not run the client API serves its library
	// calls only, and the process that runs it does that work.
	NoBackground bool
	// TypingLog, when set (split mode), orders the typing changes of
	// every process: each change this process takes in (PUT /typing, a
	// remote server's m.typing EDU) is appended to it, and takes effect
	// when the log hands it to ApplyTypingEntry, as every other
	// process's change does (typingTracker).
	TypingLog TypingLog
	// Shared says that other processes of a split deployment write the
	// same database (global.redis_url): this process then keeps no
	// memory of rows they may rewrite (the presence a /sync stored).
	Shared bool
	Config *config.Config
	DB     *storage.DB
	Key    *signing.Key
	Logger *slog.Logger
	// ClientIP resolves the real client address (trusted proxies).
	ClientIP *httpx.ClientIPResolver
	// Notify, if non-nil, is told after commit that a stream (such as
	// "account_data") advanced to a position. It must not block.
	Notify func(stream string, pos int64)
	// Rooms is the roomserver; nil leaves the room endpoints out.
	Rooms Rooms
	// Wake, if non-nil, carries the room stream's notifications (as
	// /sync's); GET /events (room previews, rooms_peek.go) waits on it,
	// and is not served without it.
	Wake notifier.Broadcaster
	// OnDevicesDeleted, if non-nil, runs inside every transaction that
	// deletes devices; the key server's keyserver.DevicesDeletedHook
	// deletes their keys there.
	OnDevicesDeleted DevicesDeletedHook
	// OnDeviceCreated, if non-nil, runs inside every transaction that
	// creates a device; the key server's keyserver.DeviceCreatedHook
	// forgets what it kept in memory about an earlier device of that ID.
	OnDeviceCreated DeviceCreatedHook
	// SessionlessDevice, if non-nil, reports whether userID's device
	// deviceID must never be given a session: the key server's dehydrated
	// device (MSC3814), which has keys but no access token. A login naming
	// it is refused.
	SessionlessDevice func(ctx context.Context, q storage.Querier, userID, deviceID string) (bool, error)
	// OnDeviceRenamed, if non-nil, runs inside the transaction that gives
	// a device a new display name; the key server's
	// keyserver.DeviceRenamedHook records the device-list change there.
	OnDeviceRenamed DeviceRenamedHook
	// Federation reaches rooms and users on other servers; nil keeps the
	// client API to this server.
	Federation Federation
	// EndPendingMemberships, if non-nil, deletes inside tx every
	// membership of userID kept outside room events (pending invites to
	// and knocks on rooms only other servers hold, and their leaves;
	// federationapi.EndPendingMembershipsInTx). A deactivated account's
	// leaves end with it, in the transaction that dequeues the account.
	EndPendingMemberships func(ctx context.Context, tx storage.Tx, userID string) error
	// AppServices are the registered application services (nil: none).
	AppServices *appservice.Registry
	// AppServiceQueries, if non-nil, asks services about unknown users
	// and aliases in their namespaces.
	AppServiceQueries AppServiceQueries
}

// Server is the client API.
type Server struct {
	noBackground bool // Deps.NoBackground; immutable
	shared       bool // Deps.Shared; immutable
	cfg          *config.Config
	serverName   string
	db           *storage.DB
	key          *signing.Key
	log          *slog.Logger
	clientIP     *httpx.ClientIPResolver
	accounts     *Accounts
	lastSeen     lastSeenCache
	notify       func(stream string, pos int64) // nil-safe via s.streamAdvanced
	// onDeviceRenamed is Deps.OnDeviceRenamed (nil: nothing to announce).
	onDeviceRenamed DeviceRenamedHook
	// onProfileChange, if non-nil, is called after a user's displayname or
	// avatar_url changed, to update their m.room.member events. Nil until
	// the room component exists.
	onProfileChange func(ctx context.Context, userID string)

	// Per-client-IP limits (security case 29: keyed on the trusted
	// client IP, so a forged X-Forwarded-For does not reset them).
	registerLimit *ratelimit.Limiter
	loginLimit    *ratelimit.Limiter
	// sharedLimits, in split mode (global.redis_url) with rate limits on,
	// keeps every limiter's buckets in Redis so that the processes count
	// a client's requests together (internal/ratelimit.Shared); nil
	// otherwise.
	sharedLimits *ratelimit.Shared

	stopBackground context.CancelFunc
	// backgroundCtx is cancelled by stopBackground; Start's work runs
	// under it.
	backgroundCtx context.Context
	background    sync.WaitGroup
	closeOnce     sync.Once
	// rooms is the state of the room endpoints (rooms.go).
	rooms roomsPart
	// federation is nil when federation is off; immutable.
	federation Federation
	// endPendingMemberships is Deps.EndPendingMemberships; immutable,
	// may be nil.
	endPendingMemberships func(ctx context.Context, tx storage.Tx, userID string) error
	// notices is the server notices module (server_notices.go).
	notices serverNotices
	// delayed is the delayed events module (delayed_events.go).
	delayed delayedEvents
	// deactivation serialises the leaves of deactivated accounts
	// (deactivation.go).
	deactivation deactivationLeaves
	// appservices are the registered application services; immutable.
	appservices *appservice.Registry
	// asQueries asks them about unknown users and aliases; nil-safe
	// via appservice.go.
	asQueries AppServiceQueries
	// sso is single sign-on through OpenID Connect providers (sso.go).
	sso ssoState
}

// New runs clientapi's migrations, starts the background sweep of
// expired state, and returns the server. Call Close to stop the sweep.
func New(ctx context.Context, deps Deps) (*Server, error) {
	accounts, err := OpenAccounts(ctx, deps.Config, deps.DB)
	if err != nil {
		return nil, err
	}
	logger := deps.Logger
	if logger == nil {
		logger = slog.Default()
	}
	if deps.Config.Global.RedisURL == "" && accounts.revocationMark != "" {
		// One server process on SQLite: every session change in it passes
		// through accounts, and other processes on the same database (the
		// `myelin user` commands) rewrite the revocation mark
		// (tokencache.go). With PostgreSQL the commands may run on another
		// machine, so the cache is off.
		tokens, err := newTokenCache(accounts.revocationMark, logger)
		if err != nil {
			// Without the mark the commands' revocations would go
			// unseen: no cache (a session read per request).
			logger.Warn("access tokens are not cached: cannot open the revocation mark", "path", accounts.revocationMark, "err", err)
		}
		accounts.tokens = tokens
	}
	if accounts.tokens == nil {
		// A server process that caches nothing (Redis, or no mark) has no
		// one to tell about its own changes: it writes no mark.
		accounts.revocationMark = ""
	}
	limits := deps.Config.ClientAPI.RateLimits
	var sharedLimits *ratelimit.Shared
	if limits.Enabled && deps.Config.Global.RedisURL != "" {
		sharedLimits, err = ratelimit.NewShared(deps.Config.Global.RedisURL, deps.Config.Global.RedisPrefix+"ratelimit:", logger)
		if err != nil {
			return nil, err
		}
	}
	s := &Server{
		cfg:                   deps.Config,
		serverName:            deps.Config.Global.ServerName,
		db:                    deps.DB,
		key:                   deps.Key,
		log:                   logger.With("component", "clientapi"),
		clientIP:              deps.ClientIP,
		accounts:              accounts,
		notify:                deps.Notify,
		federation:            deps.Federation,
		endPendingMemberships: deps.EndPendingMemberships,
		appservices:           deps.AppServices,
		asQueries:             deps.AppServiceQueries,
		sharedLimits:          sharedLimits,
	}
	s.registerLimit = s.newLimiter("register", limits.Register.PerSecond, limits.Register.Burst)
	s.loginLimit = s.newLimiter("login", limits.Login.PerSecond, limits.Login.Burst)
	s.deactivation.wake = make(chan struct{}, 1)
	accounts.onDevicesDeleted = deps.OnDevicesDeleted
	accounts.notify = deps.Notify
	accounts.onDeviceCreated = deps.OnDeviceCreated
	accounts.sessionless = deps.SessionlessDevice
	s.onDeviceRenamed = deps.OnDeviceRenamed
	s.initSSO()
	if err := s.ensureAppServiceSenders(ctx); err != nil {
		return nil, err
	}
	bg, cancel := context.WithCancel(context.Background())
	s.stopBackground, s.backgroundCtx = cancel, bg
	s.noBackground = deps.NoBackground
	if !s.noBackground {
		s.background.Add(1)
		go func() {
			defer s.background.Done()
			s.runSweeper(bg)
		}()
	}
	if err := s.initRooms(ctx, deps.Rooms); err != nil {
		cancel()
		return nil, err
	}
	s.rooms.wake = deps.Wake
	s.shared = deps.Shared
	if deps.TypingLog != nil && s.rooms.typing != nil {
		s.rooms.typing.share(deps.TypingLog, s.log)
	}
	if err := s.initServerNotices(ctx); err != nil {
		cancel()
		return nil, err
	}
	s.initDelayedEvents()
	if s.rooms.rooms != nil && !s.noBackground {
		s.startDelayedEvents(bg, &s.background)
	}
	return s, nil
}

// Start begins the background work that writes room events on its own
// (the leaves of deactivated accounts): call it once every component is
// built, since a room event written earlier would miss the components
// built later (the push component's counts in the event's transaction).
func (s *Server) Start() {
	if s.rooms.rooms != nil && !s.noBackground {
		s.startDeactivationLeaves(s.backgroundCtx, &s.background)
	}
}

// RunBackground runs the background work that New and Start leave out
// with NoBackground (the sweeper of expired account state, the
// delayed-event scheduler, the leaves of deactivated accounts and of
// guests from rooms closed to them) until ctx ends and it has stopped,
// for a process of a split deployment that holds the client API's lease
// (internal/lease). Call it after Start.
func (s *Server) RunBackground(ctx context.Context) {
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		s.runSweeper(ctx)
	}()
	if s.rooms.rooms != nil {
		s.startDelayedEvents(ctx, &wg)
		s.startDeactivationLeaves(ctx, &wg)
	}
	wg.Wait()
}

// Close stops the background work. Call it before closing the database.
func (s *Server) Close() error {
	s.closeOnce.Do(func() {
		s.stopBackground()
		s.background.Wait()
		if s.rooms.typing != nil {
			s.rooms.typing.close()
		}
		if s.sharedLimits != nil {
			s.sharedLimits.Close()
		}
	})
	return nil
}

// newLimiter returns the limiter called name (one per kind of request)
// with the configured rate and burst; its buckets are in Redis in split
// mode (sharedLimits), so a client behind a balancer gets the configured
// rate, not once per process.
func (s *Server) newLimiter(name string, perSecond float64, burst int) *ratelimit.Limiter {
	enabled := s.cfg.ClientAPI.RateLimits.Enabled
	if s.sharedLimits != nil {
		return s.sharedLimits.Limiter(name, perSecond, burst, enabled)
	}
	return ratelimit.New(perSecond, burst, enabled)
}

// Accounts is the account store behind the server, for administration.
func (s *Server) Accounts() *Accounts { return s.accounts }

// Routes registers clientapi's endpoints on r (mounted at the root).
func (s *Server) Routes(r chi.Router) {
	s.discoveryRoutes(r)
	s.userDataRoutes(r)
	s.publicRoutes(r)
	s.roomPublicRoutes(r)
	if s.rooms.rooms != nil {
		s.delayedEventPublicRoutes(r)
	}
	// Endpoints that need an access token.
	r.Group(func(r chi.Router) {
		r.Use(authn.Middleware(s, &guestEndpoints)) // guest_gate.go
		s.authedRoutes(r)
	})
}

// publicRoutes registers the endpoints that take no access token.
func (s *Server) publicRoutes(r chi.Router) {
	const v3 = "/_matrix/client/v3"
	handle(r, http.MethodGet, v3+"/login", s.loginFlows)
	handle(r, http.MethodPost, v3+"/login", s.login)
	handle(r, http.MethodPost, v3+"/refresh", s.refresh)
	handle(r, http.MethodPost, v3+"/register", s.register)
	handle(r, http.MethodGet, v3+"/register/available", s.registerAvailable)
	handle(r, http.MethodGet, "/_matrix/client/v1/register/m.login.registration_token/validity", s.registrationTokenValidity)
	for _, p := range []string{"/register", "/account/password", "/account/3pid"} {
		handle(r, http.MethodPost, v3+p+"/email/requestToken", threepidDenied)
		handle(r, http.MethodPost, v3+p+"/msisdn/requestToken", threepidDenied)
	}
	handle(r, http.MethodGet, "/_synapse/admin/v1/register", s.adminRegisterNonce)
	handle(r, http.MethodPost, "/_synapse/admin/v1/register", s.adminRegister)
	s.ssoRoutes(r)
}

// authedRoutes registers the endpoints that require an access token.
func (s *Server) authedRoutes(r chi.Router) {
	const v3 = "/_matrix/client/v3"
	handle(r, http.MethodGet, v3+"/account/whoami", s.whoami)
	handle(r, http.MethodPost, v3+"/logout", s.logout)
	handle(r, http.MethodPost, v3+"/logout/all", s.logoutAll)
	handle(r, http.MethodPost, "/_matrix/client/v1/login/get_token", s.getLoginToken)
	handle(r, http.MethodPost, v3+"/user/{userId}/openid/request_token", s.requestOpenIDToken)
	handle(r, http.MethodGet, v3+"/capabilities", s.capabilities)
	handle(r, http.MethodGet, v3+"/voip/turnServer", s.getTurnServer)

	handle(r, http.MethodGet, v3+"/devices", s.getDevices)
	handle(r, http.MethodGet, v3+"/devices/{deviceId}", s.getDevice)
	handle(r, http.MethodPut, v3+"/devices/{deviceId}", s.putDevice)
	handle(r, http.MethodDelete, v3+"/devices/{deviceId}", s.deleteDevice)
	handle(r, http.MethodPost, v3+"/delete_devices", s.deleteDevicesBulk)

	handle(r, http.MethodPost, v3+"/account/password", s.changePassword)
	handle(r, http.MethodPost, v3+"/account/deactivate", s.deactivate)
	handle(r, http.MethodGet, v3+"/account/3pid", s.threepids)
	handle(r, http.MethodPost, v3+"/account/3pid", threepidAuthFailed)
	handle(r, http.MethodPost, v3+"/account/3pid/add", threepidAuthFailed)
	handle(r, http.MethodPost, v3+"/account/3pid/bind", threepidAuthFailed)
	handle(r, http.MethodPost, v3+"/account/3pid/delete", threepidNotFound)
	handle(r, http.MethodPost, v3+"/account/3pid/unbind", threepidNotFound)
	handle(r, http.MethodGet, v3+"/admin/whois/{userId}", s.whois)
	s.thirdPartyRoutes(r)
	s.roomRoutes(r)
	if s.rooms.rooms != nil {
		s.serverNoticeRoutes(r)
		s.delayedEventRoutes(r)
	}
}

// handle registers an error-returning handler. A UIA challenge is
// written as its own 401 body; every other error goes to httpx.
// (Guests are refused by authn.Middleware: guest_gate.go.)
func handle(r chi.Router, method, pattern string, fn httpx.HandlerFunc) {
	r.Method(method, pattern, httpx.H(func(w http.ResponseWriter, r *http.Request) error {
		err := fn(w, r)
		var c *uiaChallenge
		if errors.As(err, &c) {
			httpx.WriteJSON(w, http.StatusUnauthorized, c.body)
			return nil
		}
		return err
	}))
}
