package keyserver

import (
	"context"
	"embed"
	"encoding/json"
	"errors"
	"io/fs"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/myelin-chat/myelin/internal/authn"
	"github.com/myelin-chat/myelin/internal/httpx"
	"github.com/myelin-chat/myelin/internal/mxerr"
	"github.com/myelin-chat/myelin/storage"
)

//go:embed migrations/*.sql
var migrations embed.FS

// Deps is everything the key server needs. Function fields keep its view
// of other components narrow: it never reads their tables.
type Deps struct {
	// NoBackground leaves out the device-list update sender that
	// StartFederation starts: a process of a split deployment that does
	// not run the key server answers its library calls (the federation
	// API's key queries and EDUs, /sync's key counts) only, remote
	// resyncs included.
	NoBackground bool
	// ServerName is this homeserver's name; users on it are local.
	ServerName string
	DB         *storage.DB
	// Verifier authenticates access tokens (clientapi).
	Verifier authn.Verifier
	Logger   *slog.Logger
	// Notify, if non-nil, is told after commit that ToDeviceStream or
	// DeviceListStream advanced to a position. It must not block.
	Notify func(stream string, pos int64)
	// UserDevices returns a local user's devices: device ID → display
	// name ("" when unnamed). clientapi's Accounts.DeviceNames provides
	// it. It decides who receives "*" to-device messages, drops messages
	// for devices that do not exist, fills unsigned.device_display_name
	// in /keys/query, and keeps cross-signing keys from colliding with
	// device IDs. Required.
	UserDevices func(ctx context.Context, userID string) (map[string]string, error)
	// RequirePassword runs user-interactive authentication with
	// m.login.password for the request's caller (clientapi's
	// Server.RequirePassword). When the caller has not authenticated yet
	// it returns an error carrying the 401 challenge (see uiaChallenge);
	// otherwise consume, which the caller runs inside the write that does
	// the authorised operation. Required for replacing cross-signing keys.
	RequirePassword func(ctx context.Context, r *http.Request, purpose string, auth json.RawMessage) (consume func(context.Context, storage.Tx) error, err error)
	// SharedRoomUsers returns the users who currently share at least one
	// joined room with userID (the roomserver's membership). Nil until the
	// roomserver exists: then only userID's own changes are reported.
	SharedRoomUsers func(ctx context.Context, userID string) ([]string, error)
	// SharedInTx returns those of the given users who share a joined
	// room with a local user as a transaction sees the rooms' current
	// state. Resync checks with it, in the transaction that stores a
	// fetched list, that the user is still tracked (UntrackInTx). Nil:
	// not checked.
	SharedInTx StillShared
	// MembershipDelta returns who started or stopped sharing a room with
	// userID between two room-stream positions (syncapi's
	// MembershipChanges), for GET /keys/changes. Nil: that endpoint
	// reports device changes only, without the window's joins and leaves.
	MembershipDelta func(ctx context.Context, userID string, fromRoom, toRoom int64) (MembershipDelta, error)
	// QueueEDU hands EDUs for other servers to the federation sender. Nil:
	// to-device messages for remote users wait in
	// keyserver_to_device_outbound.
	QueueEDU EDUQueue
	// Federation reaches other servers' key endpoints (/keys/query and
	// /keys/claim fan-out, device-list resyncs). Nil: remote users are
	// reported in failures.
	Federation RemoteKeys
	// SharedServers lists the other servers with a user joined to a room
	// userID is joined to: where m.device_list_update and
	// m.signing_key_update about userID go. Nil: no updates are sent.
	SharedServers func(ctx context.Context, userID string) ([]string, error)
	// CountMemo, if non-nil, keeps KeyCounts' answers in memory; the same
	// memo must be given to DevicesDeletedHook. Nil when another process
	// may write the key tables (split mode): see CountMemo.
	CountMemo *CountMemo
	// Devices creates and deletes devices for dehydrated devices
	// (dehydrated.go; clientapi's Accounts). Nil: the MSC3814 endpoints
	// answer 404 M_UNRECOGNIZED.
	Devices DeviceStore
	// WatchKeyCounts, if non-nil, says whether an application service
	// that receives MSC3202's key counts owns userID: the key-count
	// changes of that user's devices are recorded for it
	// (KeyCountChangesAfter). Nil: none are.
	WatchKeyCounts func(userID string) bool
	// KeyCountsNotify, if non-nil, is told after commit that the
	// key-count change stream advanced to pos. It must not block.
	KeyCountsNotify func(pos int64)
}

// Server is the key server. It is safe for concurrent use: all state is
// in the database, apart from the CountMemo's copies of key counts.
type Server struct {
	noBackground    bool        // Deps.NoBackground; immutable
	serverName      string      // immutable
	db              *storage.DB // immutable
	verifier        authn.Verifier
	log             *slog.Logger
	notify          func(stream string, pos int64)
	userDevices     func(ctx context.Context, userID string) (map[string]string, error)
	requirePassword func(ctx context.Context, r *http.Request, purpose string, auth json.RawMessage) (func(context.Context, storage.Tx) error, error)
	sharedRoomUsers func(ctx context.Context, userID string) ([]string, error)
	sharedInTx      StillShared // may be nil
	membershipDelta func(ctx context.Context, userID string, fromRoom, toRoom int64) (MembershipDelta, error)
	queueEDU        EDUQueue // may be nil
	flush           outboundFlush
	fed             RemoteKeys // may be nil
	sharedServers   func(ctx context.Context, userID string) ([]string, error)
	counts          *CountMemo               // may be nil
	devices         DeviceStore              // may be nil
	watchKeyCounts  func(userID string) bool // may be nil
	keyCountsNotify func(pos int64)          // may be nil
	// deviceListWake wakes the device-list sender (capacity 1).
	deviceListWake chan struct{}

	// nowMillis is the clock of keyserver_remote_users.updated_ts
	// (tests freeze it: setClock).
	nowMillis func() int64

	resyncMu  sync.Mutex
	bg        context.Context          // set by StartFederation; resyncs run under it
	resyncing map[string]chan struct{} // users being resynced, closed when done; guarded by resyncMu
	// tracking holds the users whose background resync loop
	// (startTracking) runs; true when startTracking was called for the
	// user since the loop last read the cache's state. Guarded by
	// resyncMu.
	tracking map[string]bool
	retry    resyncRetry // guarded by resyncMu
	// failing holds the servers whose GET /user/devices failed (could
	// not be reached, or answered 401, 429 or 5xx), for the background
	// resync loops to share one backoff per server (awaitServer); guarded
	// by resyncMu.
	failing map[string]*serverBackoff
}

// New runs the key server's migrations and returns the server.
func New(ctx context.Context, deps Deps) (*Server, error) {
	if deps.DB == nil || deps.Verifier == nil || deps.UserDevices == nil || deps.ServerName == "" {
		return nil, errors.New("keyserver: DB, Verifier, UserDevices and ServerName are required")
	}
	if err := Migrate(ctx, deps.DB); err != nil {
		return nil, err
	}
	logger := deps.Logger
	if logger == nil {
		logger = slog.Default()
	}
	s := &Server{
		noBackground:    deps.NoBackground,
		serverName:      deps.ServerName,
		db:              deps.DB,
		verifier:        deps.Verifier,
		log:             logger.With("component", "keyserver"),
		notify:          deps.Notify,
		userDevices:     deps.UserDevices,
		requirePassword: deps.RequirePassword,
		sharedRoomUsers: deps.SharedRoomUsers,
		sharedInTx:      deps.SharedInTx,
		membershipDelta: deps.MembershipDelta,
		queueEDU:        deps.QueueEDU,
		fed:             deps.Federation,
		sharedServers:   deps.SharedServers,
		counts:          deps.CountMemo,
		devices:         deps.Devices,
		watchKeyCounts:  deps.WatchKeyCounts,
		keyCountsNotify: deps.KeyCountsNotify,
		deviceListWake:  make(chan struct{}, 1),
		resyncing:       map[string]chan struct{}{},
		tracking:        map[string]bool{},
		failing:         map[string]*serverBackoff{},
		retry:           defaultResyncRetry,
		nowMillis:       func() int64 { return time.Now().UnixMilli() },
	}
	s.notify = func(stream string, pos int64) {
		streamAdvanced(deps.Notify, stream, pos)
		s.Notified(stream, pos)
	}
	if err := s.untrackUnshared(ctx); err != nil {
		return nil, err
	}
	return s, nil
}

// Migrate applies the key server's migrations to db. New calls it; it is
// exported for components that write key-server tables in their own
// transactions (DevicesDeletedHook) before New has run.
func Migrate(ctx context.Context, db *storage.DB) error {
	sub, err := fs.Sub(migrations, "migrations")
	if err != nil {
		return err
	}
	return db.Migrate(ctx, "keyserver", sub)
}

// guestEndpoints are the key server's endpoints guests may call; they
// are refused the others (cross-signing and signature uploads, key
// backup, dehydrated devices) before any handler runs.
//
// Spec: client-server-api, "Guest Access", "Client behaviour" lists POST
// /keys/upload, /keys/query, /keys/claim and PUT /sendToDevice. One
// addition, as Synapse serves guests: GET /keys/changes, which a client
// reads to learn whose devices changed while it was away, and without
// which a guest's encryption would go on with stale device lists.
var guestEndpoints authn.Guests

func init() {
	const v3 = "/_matrix/client/v3"
	guestEndpoints.Allow(http.MethodPost, v3+"/keys/upload", v3+"/keys/query", v3+"/keys/claim")
	guestEndpoints.Allow(http.MethodGet, v3+"/keys/changes")
	guestEndpoints.Allow(http.MethodPut, v3+"/sendToDevice/{eventType}/{txnId}")
}

// Routes registers the key server's endpoints on r (mounted at the root).
// Every one needs an access token; guests may call only guestEndpoints.
func (s *Server) Routes(r chi.Router) {
	const v3 = "/_matrix/client/v3"
	r.Group(func(r chi.Router) {
		r.Use(authn.Middleware(s.verifier, &guestEndpoints))
		handle(r, http.MethodPost, v3+"/keys/upload", s.uploadKeys)
		handle(r, http.MethodPost, v3+"/keys/query", s.queryKeys)
		handle(r, http.MethodPost, v3+"/keys/claim", s.claimKeys)
		handle(r, http.MethodGet, v3+"/keys/changes", s.keyChanges)
		handle(r, http.MethodPost, v3+"/keys/device_signing/upload", s.uploadCrossSigningKeys)
		handle(r, http.MethodPost, v3+"/keys/signatures/upload", s.uploadSignatures)

		handle(r, http.MethodPut, v3+"/sendToDevice/{eventType}/{txnId}", s.sendToDevice)

		handle(r, http.MethodPost, v3+"/room_keys/version", s.createBackupVersion)
		handle(r, http.MethodGet, v3+"/room_keys/version", s.getBackupVersion)
		handle(r, http.MethodGet, v3+"/room_keys/version/{version}", s.getBackupVersion)
		handle(r, http.MethodPut, v3+"/room_keys/version/{version}", s.updateBackupVersion)
		handle(r, http.MethodDelete, v3+"/room_keys/version/{version}", s.deleteBackupVersion)
		for _, p := range []string{"/room_keys/keys", "/room_keys/keys/{roomId}", "/room_keys/keys/{roomId}/{sessionId}"} {
			handle(r, http.MethodGet, v3+p, s.getBackupKeys)
			handle(r, http.MethodPut, v3+p, s.putBackupKeys)
			handle(r, http.MethodDelete, v3+p, s.deleteBackupKeys)
		}
		s.dehydratedRoutes(r)
	})
}

// uiaChallenge is the error Deps.RequirePassword returns while the client
// still has to authenticate; its body is written as is with status 401
// (a challenge carries no errcode unless a stage failed).
type uiaChallenge interface {
	error
	ChallengeBody() map[string]any
}

// handle registers an error-returning handler, writing UIA challenges as
// 401 bodies and every other error through httpx.
//
// Path parameters reach fn with their percent-escapes decoded: chi
// matches on the raw path when the client escaped characters (a room
// ID's '!', a session ID's '/'), and its parameters then keep them.
func handle(r chi.Router, method, pattern string, fn httpx.HandlerFunc) {
	r.Method(method, pattern, httpx.H(func(w http.ResponseWriter, r *http.Request) error {
		if rctx := chi.RouteContext(r.Context()); rctx != nil {
			for i, v := range rctx.URLParams.Values {
				u, err := url.PathUnescape(v)
				if err != nil {
					return mxerr.New(mxerr.InvalidParam, "path parameter %s is not correctly escaped", rctx.URLParams.Keys[i])
				}
				rctx.URLParams.Values[i] = u
			}
		}
		err := fn(w, r)
		var c uiaChallenge
		if errors.As(err, &c) {
			httpx.WriteJSON(w, http.StatusUnauthorized, c.ChallengeBody())
			return nil
		}
		return err
	}))
}

// Advisory locks that make each stream's positions commit in order on
// PostgreSQL (positions come from a sequence; without the lock a
// transaction holding position 5 could commit after one holding 6, and a
// reader that saw 6 would never see 5). SQLite has one writer.
const (
	deviceListLock = 4242501
	toDeviceLock   = 4242502
)

// lockStream takes a stream's advisory lock until the transaction ends.
func lockStream(ctx context.Context, db *storage.DB, tx storage.Tx, lock int64) error {
	if db.Engine() != storage.Postgres {
		return nil
	}
	_, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, lock)
	return err
}

// streamAdvanced tells Deps.Notify, if set, that stream reached pos.
func streamAdvanced(notify func(string, int64), stream string, pos int64) {
	if notify != nil {
		notify(stream, pos)
	}
}

// isLocal reports whether userID is on this server.
func (s *Server) isLocal(userID string) bool {
	return serverOf(userID) == s.serverName
}

// serverOf returns the server name part of a user ID ("" if malformed).
func serverOf(userID string) string {
	if !strings.HasPrefix(userID, "@") {
		return ""
	}
	_, server, ok := strings.Cut(userID, ":")
	if !ok {
		return ""
	}
	return server
}
