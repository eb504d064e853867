package federationapi

import (
	"context"
	"crypto/ed25519"
	"crypto/tls"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/myelin-chat/myelin/config"
	"github.com/myelin-chat/myelin/internal/httpx"
	"github.com/myelin-chat/myelin/internal/notifier"
	"github.com/myelin-chat/myelin/internal/signing"
	"github.com/myelin-chat/myelin/storage"
)

//go:embed migrations/*.sql
var migrationFiles embed.FS

// OldKey is a signing key this server used before, published in
// old_verify_keys so events signed with it still verify.
type OldKey struct {
	KeyID     string
	Key       ed25519.PublicKey
	ExpiredTS int64
}

// Deps is what the federation API needs.
type Deps struct {
	Config     config.Federation
	ServerName string
	Key        *signing.Key
	OldKeys    []OldKey
	DB         *storage.DB
	Rooms      Rooms
	// TLSConfig is the client TLS config for other servers (the trusted
	// roots). Nil: system roots.
	TLSConfig *tls.Config
	Profiles  Profiles
	Aliases   Aliases
	Directory PublicRoomDirectory
	EDUs      EDUSinks
	// UserKeys serves /user/keys/* and /user/devices (the key server).
	UserKeys UserKeys
	// Spaces serves /hierarchy (the client API's room summaries). Nil:
	// 404 M_NOT_FOUND for every room.
	Spaces SpaceHierarchy
	// OpenID answers /openid/userinfo (the client API's OpenID tokens).
	// Nil: every token is unknown.
	OpenID OpenIDTokens
	// CheckInvite, if non-nil, may refuse an invite of a local user from
	// another server's user (MSC4155 invite filtering); its error is the
	// answer to the inviting server.
	CheckInvite func(ctx context.Context, inviter, invitee string) error
	// Notify, if non-nil, is told after commit that a stream of the
	// federation API (RemoteInviteStream) advanced. It must not block.
	Notify func(stream string, pos int64)
	// Wakes, in split mode (several processes on one database), carries
	// the federation API's own wake-ups between the processes (wakes.go):
	// a queued stretch refetch, a destination's first failure. It must be
	// a broadcaster of its own (its streams mean nothing to /sync), and
	// the caller closes it after Close. Nil: one process.
	Wakes  notifier.Broadcaster
	Logger *slog.Logger
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// Dial and LookupSRV replace the network for tests (custom server
	// names, fake SRV records). Nil: the real ones.
	Dial      func(ctx context.Context, network, addr string) (net.Conn, error)
	LookupSRV func(ctx context.Context, service, proto, name string) (string, []*net.SRV, error)
}

// Server is the federation API.
type Server struct {
	cfg         config.Federation
	serverName  string
	key         *signing.Key
	oldKeys     []OldKey
	keyValidity time.Duration
	db          *storage.DB
	rooms       Rooms
	profiles    Profiles
	aliases     Aliases
	directory   PublicRoomDirectory
	edus        EDUSinks
	userKeys    UserKeys
	spaces      SpaceHierarchy
	openID      OpenIDTokens
	notify      func(stream string, pos int64) // may be nil
	wakes       notifier.Broadcaster           // Deps.Wakes; may be nil
	// checkInvite may be nil.
	checkInvite func(ctx context.Context, inviter, invitee string) error
	log         *slog.Logger
	now         func() time.Time

	keys   *keyRing
	client *client
	sender *sender

	// Partial-state resyncs (partial_state_join.go): resyncCtx is the
	// context of the resyncs, nil while this process runs none, and
	// resyncWG counts them; resyncing holds the rooms whose resync runs
	// (all three guarded by resyncMu).
	resyncCtx context.Context
	resyncWG  *sync.WaitGroup
	resyncMu  sync.Mutex
	resyncing map[string]bool
	// giveUpAfter and giveUpRounds, when giveUpRounds > 0 (tests set
	// them, guarded by resyncMu), replace resyncGiveUp and
	// resyncGiveUpRounds.
	giveUpAfter  time.Duration
	giveUpRounds int
	// beforeResync, when set (by tests, before any join), runs before a
	// room's resync starts.
	beforeResync func(ctx context.Context, roomID string)
	// beforePendingAnswer, when set (by tests), runs in
	// pendingMembershipPDU between its read of the pending membership
	// and its write of the answer.
	beforePendingAnswer func()
	// beforeLocalLeave, when set (by tests), runs in storeLocalLeave
	// between its read of the pending membership and its write.
	beforeLocalLeave func()
	// beforeUnforget, when set (by tests), runs in storePendingMembership
	// after the forgotten mark is cleared and before the pending invite
	// or knock is written; an error it returns stands for a crash at
	// that point.
	beforeUnforget func() error
	// beforeEndPending, when set (by tests), runs in
	// EndPendingMembershipInTx before the row is deleted; an error from
	// it aborts the caller's transaction there, as a crash would.
	beforeEndPending func(userID, roomID string) error
	// fullStateJoins, when set (by tests), makes send_join ignore
	// omit_members and answer the full state, as a server without
	// partial-state joins does (the parameter is a request it may
	// decline: server-server-api, "PUT /_matrix/federation/v2/send_join").
	fullStateJoins atomic.Bool
	// silentJoins, when set (by tests), makes a local user's join of a
	// room held elsewhere announce none of their devices
	// (announceDevices), as servers that do not announce them do.
	silentJoins atomic.Bool
	// refetchHooks, when set (tests only), change the stretch refetch
	// worker (partial_state_refetch.go).
	refetchHooks atomic.Pointer[stretchRefetchHooks]
	// stretchWake wakes the stretch refetch worker (WakeStretchRefetch);
	// stretchReads counts its reads of the queue (for tests).
	stretchWake  chan struct{}
	stretchReads atomic.Int64
	// stretchPublish (split mode) asks for the announcement of a queued
	// stretch refetch to the other processes (wakes.go).
	stretchPublish chan struct{}
	// resyncPublish (split mode) asks for the announcement of a
	// partial-state room this process cannot resync itself (it does not
	// hold the federation lease) to the process that does.
	resyncPublish chan struct{}

	// Kept pushed PDUs (gap_pending.go): pendingWake wakes the retry
	// loop; pendingRooms (guarded by pendingMu) are the rooms whose kept
	// PDUs it checks before their time.
	pendingWake  chan struct{}
	pendingMu    sync.Mutex
	pendingRooms map[string]bool

	// bg, cancelled by stop (Close), is the background work's context;
	// Start starts that work.
	bg        context.Context
	stop      context.CancelFunc
	startOnce sync.Once
	wg        sync.WaitGroup
	closeOnce sync.Once
}

var (
	_ Joiner            = (*Server)(nil)
	_ EDUQueue          = (*Server)(nil)
	_ RemoteMemberships = (*Server)(nil)
)

// New migrates the federation tables and returns the federation API. With
// Config.Enabled it also starts the sender; call Close to stop it.
func New(ctx context.Context, deps Deps) (*Server, error) {
	if deps.DB == nil || deps.Key == nil || deps.ServerName == "" || deps.Rooms == nil {
		return nil, errors.New("federationapi: DB, Key, ServerName and Rooms are required")
	}
	notaries, err := deps.Config.ParseTrustedKeyServers()
	if err != nil {
		return nil, err
	}
	// Former keys come from Deps and from federation_api.old_verify_keys.
	oldKeys := slices.Clone(deps.OldKeys)
	configured, err := deps.Config.ParseOldVerifyKeys()
	if err != nil {
		return nil, err
	}
	for _, k := range configured {
		oldKeys = append(oldKeys, OldKey{KeyID: k.KeyID, Key: ed25519.PublicKey(k.PublicKey), ExpiredTS: k.ExpiredTS})
	}
	for _, k := range oldKeys {
		if k.KeyID == deps.Key.ID {
			return nil, fmt.Errorf("federationapi: old_verify_keys lists %s, the current signing key", k.KeyID)
		}
	}
	sub, err := fs.Sub(migrationFiles, "migrations")
	if err != nil {
		return nil, err
	}
	if err := deps.DB.Migrate(ctx, "federationapi", sub); err != nil {
		return nil, fmt.Errorf("federationapi: %w", err)
	}
	s := &Server{
		cfg:         deps.Config,
		serverName:  deps.ServerName,
		key:         deps.Key,
		oldKeys:     oldKeys,
		keyValidity: deps.Config.KeyValidity.D(),
		db:          deps.DB,
		rooms:       deps.Rooms,
		profiles:    deps.Profiles,
		aliases:     deps.Aliases,
		directory:   deps.Directory,
		edus:        deps.EDUs,
		userKeys:    deps.UserKeys,
		spaces:      deps.Spaces,
		openID:      deps.OpenID,
		notify:      deps.Notify,
		wakes:       deps.Wakes,
		checkInvite: deps.CheckInvite,
		log:         deps.Logger,
		now:         deps.Now,
		pendingWake: make(chan struct{}, 1),
		stretchWake: make(chan struct{}, 1),

		stretchPublish: make(chan struct{}, 1),
		resyncPublish:  make(chan struct{}, 1),
	}
	if s.log == nil {
		s.log = slog.Default()
	}
	if s.now == nil {
		s.now = time.Now
	}
	if s.keyValidity <= 0 {
		s.keyValidity = 7 * 24 * time.Hour
	}
	tlsConfig := deps.TLSConfig
	if tlsConfig == nil {
		tlsConfig = &tls.Config{MinVersion: tls.VersionTLS12}
	}
	s.keys = &keyRing{s: s, notaries: notaries, lastFetch: map[string]fetchOutcome{}, fetching: map[string]*serverFetch{}, missing: map[string]time.Time{},
		slots: make(chan struct{}, maxKeyFetches), slotWait: keyFetchSlotWait}
	s.client = newClient(s, tlsConfig, deps.Dial)
	if deps.LookupSRV != nil {
		s.client.resolver.lookupSRV = deps.LookupSRV
	}
	s.sender = newSender(s, deps.Wakes != nil)
	failing, err := failingDestinations(ctx, deps.DB)
	if err != nil {
		return nil, fmt.Errorf("federationapi: %w", err)
	}
	s.sender.view.add(failing)
	s.bg, s.stop = context.WithCancel(context.Background())
	return s, nil
}

// Start starts the background work (the sender, the partial-state
// resyncs, the stretch refetches, the pending-PDU retries and the
// wake-ups) when federation is enabled. It must be called once every
// component the roomserver's hooks reach is built: that work writes room
// events, whose hooks call back into this server. Later calls do nothing.
func (s *Server) Start() {
	s.startOnce.Do(func() {
		if !s.cfg.Enabled {
			return
		}
		s.startSingletons(s.bg, &s.wg)
		s.startWakes(s.bg)
	})
}

// startSingletons starts the work that must run in one process at a
// time (the sender, the resyncs, the stretch refetches, the pending-PDU
// retries and the clean-up of ended pending memberships), until bg ends;
// wg counts its goroutines.
func (s *Server) startSingletons(bg context.Context, wg *sync.WaitGroup) {
	wg.Add(1)
	go func() {
		defer wg.Done()
		s.sender.run(bg)
	}()
	s.startResyncs(bg, wg)
	s.startStretchRefetch(bg, wg)
	s.startPendingRetries(bg, wg)
	wg.Add(1)
	go func() {
		defer wg.Done()
		if err := s.cleanStalePending(bg); err != nil && bg.Err() == nil {
			s.log.Warn("cleaning pending invites and knocks that had ended (retried at the next start)", "err", err)
		}
	}()
}

// RunSingletons runs what Start starts but the wake-ups (the sender, the
// resyncs, the stretch refetches, the pending-PDU retries) until ctx
// ends and it has stopped, for a process of a split deployment that
// holds the federation lease (internal/lease) after StartWakes. It may
// run again after a later takeover: the sender resumes from the queues
// and positions in the database.
func (s *Server) RunSingletons(ctx context.Context) {
	if !s.cfg.Enabled {
		<-ctx.Done()
		return
	}
	var wg sync.WaitGroup
	s.startSingletons(ctx, &wg)
	<-ctx.Done()
	s.stopResyncs()
	wg.Wait()
}

// StartWakes is Start for a process of a split deployment that does not
// run the federation API (global.components): it starts only the
// wake-ups between processes (wakes.go) — the publisher of the stretch
// refetches this process's roomserver queues and the listener that keeps
// this process's view of failing destinations, used by its on-demand
// requests (remote joins, queries), fresh — and none of the work that
// must run where the federation API runs (the sender, resyncs, stretch
// refetches, pending-PDU retries). Later calls, and Start after it, do
// nothing.
func (s *Server) StartWakes() {
	s.startOnce.Do(func() {
		if s.cfg.Enabled {
			s.startWakes(s.bg)
		}
	})
}

// Close stops the sender and waits for it.
func (s *Server) Close() error {
	s.closeOnce.Do(func() {
		s.stop()
		s.wg.Wait()
	})
	return nil
}

// Notify tells the sender the room event stream advanced. It never
// blocks; the roomserver's Deps.Notify should call it.
func (s *Server) Notify(stream string, pos int64) {
	if stream == "room_events" {
		s.sender.wake()
	}
}

// Routes registers the key endpoints and, when federation is enabled, the
// federation endpoints.
func (s *Server) Routes(r chi.Router) {
	r.Method(http.MethodGet, "/_matrix/key/v2/server", httpx.H(s.serverKey))
	r.Method(http.MethodGet, "/_matrix/key/v2/server/{keyID}", httpx.H(s.serverKey))
	r.Method(http.MethodPost, "/_matrix/key/v2/query", httpx.H(s.notaryQuery))
	r.Method(http.MethodGet, "/_matrix/key/v2/query/{serverName}", httpx.H(s.notaryQueryOne))
	r.Method(http.MethodGet, "/_matrix/key/v2/query/{serverName}/{keyID}", httpx.H(s.notaryQueryOne))
	if !s.cfg.Enabled {
		return
	}
	r.Route("/_matrix/federation", func(r chi.Router) {
		r.Method(http.MethodGet, "/v1/version", httpx.H(s.version))
		r.Method(http.MethodGet, "/v1/openid/userinfo", httpx.H(s.openIDUserInfo))
		r.Method(http.MethodPut, "/v1/3pid/onbind", httpx.H(s.onBind))
		// A Group's middleware runs only once a route matched, so an
		// unknown path is 404 M_UNRECOGNIZED (and a known path with the
		// wrong method 405) before any X-Matrix authentication; a Use on
		// the subrouter itself would answer 401 for those.
		r.Group(func(r chi.Router) {
			r.Use(s.authenticate)
			s.federationRoutes(r)
		})
	})
}
