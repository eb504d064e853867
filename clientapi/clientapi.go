package clientapi

import (
	"context"
	"embed"
	"io/fs"
	"log/slog"
	"net/http"

	"github.com/go-chi/chi/v5"

	"github.com/myelin-chat/myelin/config"
	"github.com/myelin-chat/myelin/internal/authn"
	"github.com/myelin-chat/myelin/internal/httpx"
	"github.com/myelin-chat/myelin/internal/signing"
	"github.com/myelin-chat/myelin/storage"
)

//go:embed migrations/*.sql
var migrations embed.FS

// Deps is everything the client API needs.
type Deps struct {
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
}

// Server is the client API.
type Server struct {
	cfg        *config.Config
	serverName string
	db         *storage.DB
	key        *signing.Key
	log        *slog.Logger
	clientIP   *httpx.ClientIPResolver
	lastSeen   lastSeenCache
	notify     func(stream string, pos int64) // nil-safe via s.streamAdvanced
	// onProfileChange, if non-nil, is called after a user's displayname or
	// avatar_url changed, to update their m.room.member events. Nil until
	// the room component exists.
	onProfileChange func(ctx context.Context, userID string)
	// rooms is the state of the room endpoints (rooms.go).
	rooms roomsPart
}

// New runs clientapi's migrations and returns the server.
func New(ctx context.Context, deps Deps) (*Server, error) {
	sub, err := fs.Sub(migrations, "migrations")
	if err != nil {
		return nil, err
	}
	if err := deps.DB.Migrate(ctx, "clientapi", sub); err != nil {
		return nil, err
	}
	logger := deps.Logger
	if logger == nil {
		logger = slog.Default()
	}
	s := &Server{
		cfg:        deps.Config,
		serverName: deps.Config.Global.ServerName,
		db:         deps.DB,
		key:        deps.Key,
		log:        logger.With("component", "clientapi"),
		clientIP:   deps.ClientIP,
		notify:     deps.Notify,
	}
	if err := s.initRooms(ctx, deps.Rooms); err != nil {
		return nil, err
	}
	return s, nil
}

// Routes registers clientapi's endpoints on r (mounted at the root).
func (s *Server) Routes(r chi.Router) {
	s.discoveryRoutes(r)
	s.userDataRoutes(r)
	s.roomPublicRoutes(r)
	// Endpoints that need an access token.
	r.Group(func(r chi.Router) {
		r.Use(authn.Middleware(s))
		s.authedRoutes(r)
	})
}

// authedRoutes registers the endpoints that require an access token.
func (s *Server) authedRoutes(r chi.Router) {
	handle(r, http.MethodGet, "/_matrix/client/v3/account/whoami", s.whoami)
	s.roomRoutes(r)
}

// whoami tells the caller who they are.
// Spec: client-server-api, "GET /_matrix/client/v3/account/whoami".
func (s *Server) whoami(w http.ResponseWriter, r *http.Request) error {
	d := authn.FromContext(r.Context())
	body := map[string]any{"user_id": d.UserID, "device_id": d.DeviceID}
	if d.IsGuest {
		body["is_guest"] = true
	}
	return httpx.OK(w, body)
}

// handle registers an error-returning handler.
func handle(r chi.Router, method, pattern string, fn httpx.HandlerFunc) {
	r.Method(method, pattern, httpx.H(fn))
}
