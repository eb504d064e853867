package mediaapi

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/go-chi/chi/v5"
	"golang.org/x/sync/singleflight"

	"github.com/myelin-chat/myelin/config"
	"github.com/myelin-chat/myelin/internal/authn"
	"github.com/myelin-chat/myelin/internal/httpx"
	"github.com/myelin-chat/myelin/storage"
)

//go:embed migrations/*.sql
var migrations embed.FS

// Deps is everything the media repository needs.
type Deps struct {
	// NoBackground leaves out the background work (the sweeper of
	// expired rows and orphaned files, and the start-up removal of
	// interrupted uploads' temporary files): a process of a split
	// deployment that does not run the media API serves its library
	// calls (the federation media endpoints) only.
	NoBackground bool
	Config       *config.Config
	DB           *storage.DB
	Logger       *slog.Logger
	// Verifier checks access tokens (clientapi).
	Verifier authn.Verifier
	// FederationClient is the base of the client that fetches remote
	// media: its TLS settings are kept, its dialer is replaced by the
	// guarded one. Nil: http.DefaultTransport's settings.
	FederationClient *http.Client
	// Resolve maps server names to federation base URLs (federationapi's
	// discovery); media_api.remote_base_urls entries come first. Nil: those
	// entries, then https://<name>:8448.
	Resolve Resolver
	// SignFederationRequest adds X-Matrix authentication to a request
	// for destination's federation API (federationapi provides it). Nil:
	// requests go unsigned, which conforming servers refuse; the fetcher
	// then fails, or falls back as the spec allows on 404 M_UNRECOGNIZED.
	SignFederationRequest func(r *http.Request, destination string) error
	// Remote fetches remote media. Nil: an HTTP fetcher built from
	// FederationClient, Resolve and SignFederationRequest.
	Remote RemoteFetcher
	// ClientIP finds the client address of unauthenticated (legacy)
	// downloads, whose byte budget is per IP. Nil: a resolver trusting
	// global.trusted_proxies, as the HTTP server's.
	ClientIP *httpx.ClientIPResolver
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// Server is the media repository.
type Server struct {
	cfg        config.MediaAPI // immutable
	serverName string
	store      *store
	blobs      *blobStore
	log        *slog.Logger
	verifier   authn.Verifier
	remote     RemoteFetcher
	// previewClient fetches pages and og:images, through the guarded dialer.
	previewClient *http.Client
	outbound      *ipPolicy
	sizes         []config.ThumbnailSize
	// freeze: media created at or after it is not served by the legacy
	// unauthenticated endpoints.
	freeze time.Time
	now    clock

	// budget limits download bytes per user, and per client IP (found
	// by clientIP) on the legacy endpoints.
	budget   *byteBudget
	clientIP *httpx.ClientIPResolver

	thumbJobs chan struct{} // semaphore bounding concurrent decodes
	flights   singleflight.Group

	stopBackground context.CancelFunc
	background     sync.WaitGroup
	closeOnce      sync.Once
}

// New runs the media migrations, prepares the store (sweeping temporary
// files a crash left), fixes the legacy freeze time and starts the
// background expiry. Call Close to stop it.
func New(ctx context.Context, deps Deps) (*Server, error) {
	cfg := deps.Config.MediaAPI
	logger := deps.Logger
	if logger == nil {
		logger = slog.Default()
	}
	now := deps.Now
	if now == nil {
		now = time.Now
	}
	sub, err := fs.Sub(migrations, "migrations")
	if err != nil {
		return nil, err
	}
	if err := deps.DB.Migrate(ctx, "mediaapi", sub); err != nil {
		return nil, err
	}
	root := cfg.StorePath
	if root == "" {
		root = filepath.Join(deps.Config.Global.DataDir, "media")
	}
	blobs, err := newBlobStore(root)
	if err != nil {
		return nil, err
	}
	s := &Server{
		cfg:        cfg,
		serverName: deps.Config.Global.ServerName,
		store:      &store{db: deps.DB},
		blobs:      blobs,
		log:        logger.With("component", "mediaapi"),
		verifier:   deps.Verifier,
		now:        now,
		thumbJobs:  make(chan struct{}, cfg.MaxThumbnailJobs),
		budget:     newByteBudget(cfg.DownloadBytesPerSecond, cfg.DownloadBurstBytes, now),
		clientIP:   deps.ClientIP,
	}
	if s.clientIP == nil {
		if s.clientIP, err = httpx.NewClientIPResolver(deps.Config.Global.TrustedProxies); err != nil {
			return nil, err
		}
	}
	for _, raw := range cfg.ThumbnailSizes {
		size, err := config.ParseThumbnailSize(raw)
		if err != nil {
			return nil, err
		}
		s.sizes = append(s.sizes, size)
	}
	if s.freeze, err = cfg.LegacyFreezeTime(); err != nil {
		return nil, err
	}
	if s.freeze.IsZero() {
		if s.freeze, err = s.store.freezeTime(ctx, now()); err != nil {
			return nil, fmt.Errorf("mediaapi: legacy freeze time: %w", err)
		}
	}
	policy, err := newIPPolicy(cfg.OutboundIPDeny, cfg.OutboundIPAllow)
	if err != nil {
		return nil, err
	}
	s.outbound = policy
	s.previewClient = guardedClient(nil, policy, 5)
	s.remote = deps.Remote
	if s.remote == nil {
		// media_api.remote_base_urls entries win over discovery.
		resolve, err := staticResolver(cfg.RemoteBaseURLs, deps.Resolve)
		if err != nil {
			return nil, err
		}
		s.remote = &httpFetcher{client: guardedClient(deps.FederationClient, policy, 3), resolve: resolve, policy: policy, sign: deps.SignFederationRequest}
	}
	bg, cancel := context.WithCancel(context.Background())
	s.stopBackground = cancel
	if deps.NoBackground {
		return s, nil
	}
	if err := s.sweepTempFiles(); err != nil {
		cancel()
		return nil, err
	}
	s.background.Add(1)
	go func() {
		defer s.background.Done()
		s.runSweeper(bg)
	}()
	return s, nil
}

// sweepTempFiles removes the temporary files of uploads that an earlier
// process left behind (older than an hour: none of this process's).
func (s *Server) sweepTempFiles() error {
	n, err := s.blobs.sweepTemp(s.now().Add(-time.Hour))
	if n > 0 {
		s.log.Info("removed temporary files of interrupted uploads", "count", n)
	}
	return err
}

// RunBackground runs the background work (the removal of interrupted
// uploads' temporary files, then the sweeper) until ctx ends, for a
// server built with NoBackground in a process that holds the media
// lease (split mode: internal/lease).
func (s *Server) RunBackground(ctx context.Context) {
	if err := s.sweepTempFiles(); err != nil {
		s.log.Warn("removing temporary files of interrupted uploads", "err", err)
	}
	s.runSweeper(ctx)
}

// Close stops the background work. Call it before closing the database.
func (s *Server) Close() error {
	s.closeOnce.Do(func() {
		s.stopBackground()
		s.background.Wait()
	})
	return nil
}

// sweepInterval is how often expired rows and orphaned files are removed.
const sweepInterval = 10 * time.Minute

func (s *Server) runSweeper(ctx context.Context) {
	t := time.NewTicker(sweepInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if err := s.sweep(ctx); err != nil && ctx.Err() == nil {
				s.log.Warn("media sweep failed", "err", err)
			}
		}
	}
}

// sweep expires unused create IDs, stale remote media and previews, and
// removes files nothing references and temp files of crashed uploads.
func (s *Server) sweep(ctx context.Context) error {
	now := s.now()
	orphans, err := s.store.expire(ctx, s.serverName, now.UnixMilli(),
		now.Add(-s.cfg.RemoteCacheTTL.D()).UnixMilli(), now.Add(-s.cfg.URLPreviewCacheTTL.D()).UnixMilli())
	if err != nil {
		return err
	}
	// Files touched recently may be about to gain a row (an identical
	// upload in flight): removeOrphans spares them until a later sweep.
	errs := []error{s.removeOrphans(ctx, orphans)}
	_, err = s.blobs.sweepTemp(now.Add(-time.Hour))
	return errors.Join(append(errs, err)...)
}

// The client-facing media endpoints' path prefixes.
const (
	clientMediaPrefix = "/_matrix/client/v1/media"
	legacyMediaPrefix = "/_matrix/media/v3"
)

// guestEndpoints are the authenticated media endpoints guests may call:
// downloads and thumbnails. They are refused uploads (and /create), the
// config and URL previews, as Synapse refuses them. The deprecated
// unauthenticated downloads take no token and serve anyone.
//
// Spec: client-server-api, "Guest Access", "Client behaviour" (GET
// /media/download/{serverName}/{mediaId}[/{fileName}] and
// /media/thumbnail/{serverName}/{mediaId}, added in v1.12).
var guestEndpoints authn.Guests

func init() {
	const v1 = clientMediaPrefix
	guestEndpoints.Allow(http.MethodGet, v1+"/download/{serverName}/{mediaId}",
		v1+"/download/{serverName}/{mediaId}/{fileName}", v1+"/thumbnail/{serverName}/{mediaId}")
}

// Routes registers the client-facing media endpoints on r.
//
// Spec: client-server-api, "Content repository" (authenticated
// /_matrix/client/v1/media/* since v1.11; /_matrix/media/v3/upload and
// /_matrix/media/v1/create; the deprecated /_matrix/media/v3/* reads).
func (s *Server) Routes(r chi.Router) {
	const v1, legacy = clientMediaPrefix, legacyMediaPrefix
	// Deprecated and unauthenticated, frozen (see freeze).
	r.Method(http.MethodGet, legacy+"/download/{serverName}/{mediaId}", httpx.H(s.legacyDownload))
	r.Method(http.MethodGet, legacy+"/download/{serverName}/{mediaId}/{fileName}", httpx.H(s.legacyDownload))
	r.Method(http.MethodGet, legacy+"/thumbnail/{serverName}/{mediaId}", httpx.H(s.legacyThumbnail))
	r.Group(func(r chi.Router) {
		r.Use(authn.Middleware(s.verifier, &guestEndpoints))
		r.Method(http.MethodPost, legacy+"/upload", httpx.H(s.upload))
		r.Method(http.MethodPut, legacy+"/upload/{serverName}/{mediaId}", httpx.H(s.uploadToMXC))
		r.Method(http.MethodPost, "/_matrix/media/v1/create", httpx.H(s.create))
		r.Method(http.MethodGet, legacy+"/config", httpx.H(s.config))
		r.Method(http.MethodGet, legacy+"/preview_url", httpx.H(s.previewURL))

		r.Method(http.MethodGet, v1+"/download/{serverName}/{mediaId}", httpx.H(s.download))
		r.Method(http.MethodGet, v1+"/download/{serverName}/{mediaId}/{fileName}", httpx.H(s.download))
		r.Method(http.MethodGet, v1+"/thumbnail/{serverName}/{mediaId}", httpx.H(s.thumbnail))
		r.Method(http.MethodGet, v1+"/config", httpx.H(s.config))
		r.Method(http.MethodGet, v1+"/preview_url", httpx.H(s.previewURL))
	})
}

// FederationRoutes registers GET /_matrix/federation/v1/media/download
// and /thumbnail, answering only requests authenticateOrigin accepts.
// Until it is registered, those paths are 404 M_UNRECOGNIZED, which tells
// peers to fall back to the legacy endpoints (spec: server-server-api,
// "Content Repository").
func (s *Server) FederationRoutes(r chi.Router, authenticateOrigin OriginAuthenticator) {
	const v1 = "/_matrix/federation/v1/media"
	auth := func(fn httpx.HandlerFunc) http.Handler {
		return httpx.H(func(w http.ResponseWriter, r *http.Request) error {
			origin, err := authenticateOrigin(r)
			if err != nil {
				return err
			}
			r = r.WithContext(httpx.WithLoggerAttrs(r.Context(), "origin", origin))
			return fn(w, r)
		})
	}
	r.Method(http.MethodGet, v1+"/download/{mediaId}", auth(s.federationDownload))
	r.Method(http.MethodGet, v1+"/thumbnail/{mediaId}", auth(s.federationThumbnail))
}

// IsUpload reports whether r is a media upload, whose body limit is
// media_api.max_upload_bytes (applied by the upload handlers while
// streaming) instead of http.max_body_bytes.
func IsUpload(r *http.Request) bool {
	return (r.Method == http.MethodPost && r.URL.Path == "/_matrix/media/v3/upload") ||
		(r.Method == http.MethodPut && strings.HasPrefix(r.URL.Path, "/_matrix/media/v3/upload/"))
}
