package roomserver

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"sync"
	"time"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"
	"github.com/sirupsen/logrus"

	"github.com/myelin-chat/myelin/config"
	"github.com/myelin-chat/myelin/internal/edsign"
	"github.com/myelin-chat/myelin/internal/mxerr"
	"github.com/myelin-chat/myelin/internal/signing"
	"github.com/myelin-chat/myelin/storage"
)

//go:embed migrations/*.sql
var migrationFiles embed.FS

// Deps are the roomserver's dependencies.
type Deps struct {
	DB         *storage.DB
	ServerName string
	Key        *signing.Key
	Config     config.RoomServer
	// Notify is told that stream advanced to pos. It is called only after
	// the transaction that wrote pos has committed. May be nil.
	Notify func(stream string, pos int64)
	// Now returns the current time; nil means time.Now (tests pin it).
	Now func() time.Time
	// Shared says other processes write the same database (split mode:
	// global.redis_url is set): cached events are then checked against
	// their rows before they are served (cache_shared.go).
	Shared bool
	// OnTimeline, when set, is called inside the write transaction of
	// every new event that enters a room's timeline (timeline_hook.go).
	// May be nil.
	OnTimeline TimelineHook
	// StretchRefetchQueued, when set, is called after the commit of a
	// transaction that queued an event for StretchRefetch (the federation
	// API's worker waits on it instead of polling the queue). It must not
	// block. May be nil.
	StretchRefetchQueued func()
	// OnGuestAccess, when set, is called inside the write transaction
	// that changes a room's current m.room.guest_access
	// (guest_access_hook.go). May be nil.
	OnGuestAccess GuestAccessHook
	// OnJoinsEnded, when set, is called inside the write transaction of
	// a change of a room's current state that ends joins without a
	// member event of theirs (a state reset; joins_ended_hook.go). May
	// be nil.
	OnJoinsEnded JoinsEndedHook
	// PendingMembership, when set, reads inside Forget's transaction
	// userID's membership of roomID as recorded outside the room's
	// events: an invite to, or knock on, a room only other servers hold
	// (the federation API's pending memberships,
	// federationapi.PendingMembershipInTx). It returns "" when there is
	// none. Nil: no such memberships exist.
	PendingMembership func(ctx context.Context, tx storage.Tx, userID, roomID string) (string, error)
	// EndPendingMembership, when set, deletes inside tx userID's
	// membership of roomID recorded outside the room's events (the one
	// PendingMembership reads; federationapi.EndPendingMembershipInTx).
	// It is called in the transaction that ends it: the commit of a
	// member event of a local user (the room's events now say where the
	// user stands), and Forget (a room forgotten after the user left
	// it). Nil: no such memberships exist.
	EndPendingMembership func(ctx context.Context, tx storage.Tx, userID, roomID string) error
}

// Server implements API.
type Server struct {
	db         *storage.DB
	serverName spec.ServerName
	keyID      gomatrixserverlib.KeyID
	key        *signing.Key
	signer     *edsign.Signer // key's, for buildSigned; immutable
	cfg        config.RoomServer
	notify     func(string, int64)
	now        func() time.Time
	shared     bool         // Deps.Shared; immutable
	onTimeline TimelineHook // Deps.OnTimeline; immutable, may be nil
	onRefetch  func()       // Deps.StretchRefetchQueued; immutable, may be nil
	// onGuestAccess is Deps.OnGuestAccess; immutable, may be nil.
	onGuestAccess GuestAccessHook
	// onJoinsEnded is Deps.OnJoinsEnded; immutable, may be nil.
	onJoinsEnded JoinsEndedHook
	// pendingMembership is Deps.PendingMembership; immutable, may be nil.
	pendingMembership func(ctx context.Context, tx storage.Tx, userID, roomID string) (string, error)
	// endPendingMembership is Deps.EndPendingMembership; immutable, may be nil.
	endPendingMembership func(ctx context.Context, tx storage.Tx, userID, roomID string) error

	// roomLocks serialise writes per room (striped by room ID hash): the
	// holder reads extremities and state, builds, and commits before
	// releasing (a send only queues its write; see pipeline.go), so
	// prev_events and extremities never race.
	roomLocks [256]roomLock
	// tails holds each room's last queued send (pipeline.go).
	tails roomTails

	// events caches parsed events by event ID. Entries are immutable
	// except for redaction, which replaces the entry.
	events *eventCache
	// snapKeys caches state lookups by (immutable) snapshot NID.
	snapKeys *snapshotKeyCache
	// members memoises current member entries (membermemo.go).
	members *memberMemo
	// versions caches room versions (immutable per room).
	versions *versionCache
	// snapHV caches the history visibility of (immutable) snapshots.
	snapHV *snapshotHVCache

	// createMu guards lastCreateMS, the timestamp of the last create
	// event built with a hash-derived room ID (see createTime).
	createMu     sync.Mutex
	lastCreateMS int64

	backfiller Backfiller // federation_backfill.go; set before serving
	// policySigner asks rooms' policy servers to sign events (policy.go);
	// set before serving, nil when federation is off.
	policySigner PolicySigner
	// policyBackoff remembers unreachable policy servers
	// (policy_backoff.go).
	policyBackoff policyBackoff
	// policyTimeout bounds one request to a policy server;
	// policySignTimeout unless a test sets it.
	policyTimeout time.Duration
	// afterPolicyAsk, if set (tests only), runs in buildAndQueue after
	// a send's policy server answered, before it takes the room lock
	// again.
	afterPolicyAsk func()

	partial partialWaiters // partial_state.go
	// stretches knows which rooms have stretches of partial state
	// (stretch_cache.go).
	stretches *stretchCache

	// afterOutboundRead, if set (tests only), runs in LocalEventsAfter
	// between its read of the events and its reads of their servers, so
	// a test can commit a write there (partial_state_outbound_test.go).
	afterOutboundRead func()
	// inStretchWrite, if set (tests only), runs at the end of
	// CompleteStretchState's write transaction, after its rewrites, so
	// a test can register an OnCommit hook there (resync_cache_test.go).
	inStretchWrite func(tx storage.Tx)
	// inForget, if set (tests only), runs in Forget between its read of
	// the membership and its write, so a test can start a join there
	// (membership_forget_test.go).
	inForget func()
}

var _ API = (*Server)(nil)

// supportedVersions is Myelin's room version table: the stable versions
// 1–12. gomatrixserverlib also knows experimental versions (MSC4014,
// hydra, state DAGs); they are not offered or accepted here.
var supportedVersions = map[string]bool{
	"1": true, "2": true, "3": true, "4": true, "5": true, "6": true,
	"7": true, "8": true, "9": true, "10": true, "11": true, "12": true,
}

// roomVersion returns the gomatrixserverlib implementation of a supported
// version (stable, or one of the unstable owned-state versions, never a
// default: auth_ownedstate.go), or M_UNSUPPORTED_ROOM_VERSION.
func roomVersion(v string) (gomatrixserverlib.IRoomVersion, error) {
	if _, owned := ownedStateVersions[v]; !supportedVersions[v] && !owned {
		return nil, mxerr.New(mxerr.UnsupportedRoomVersion, "room version %q is not supported", v)
	}
	impl, err := gomatrixserverlib.GetRoomVersion(gomatrixserverlib.RoomVersion(v))
	if err != nil {
		return nil, mxerr.New(mxerr.UnsupportedRoomVersion, "room version %q is not supported", v)
	}
	return impl, nil
}

var routeLogrusOnce sync.Once

// routeLogrus sends gomatrixserverlib's logrus output to slog at debug
// level: its warnings are about peers' events, which we report ourselves.
func routeLogrus() {
	routeLogrusOnce.Do(func() {
		logrus.SetOutput(io.Discard)
		logrus.AddHook(slogHook{})
	})
}

type slogHook struct{}

func (slogHook) Levels() []logrus.Level { return logrus.AllLevels }
func (slogHook) Fire(e *logrus.Entry) error {
	slog.Debug("gomatrixserverlib: "+e.Message, "level", e.Level.String())
	return nil
}

// New migrates the roomserver's tables and returns a Server.
func New(ctx context.Context, deps Deps) (*Server, error) {
	if deps.DB == nil || deps.Key == nil || deps.ServerName == "" {
		return nil, errors.New("roomserver: DB, Key and ServerName are required")
	}
	if _, _, ok := spec.ParseAndValidateServerName(spec.ServerName(deps.ServerName)); !ok {
		return nil, fmt.Errorf("roomserver: invalid server name %q", deps.ServerName)
	}
	if deps.Config.DefaultRoomVersion == "" {
		deps.Config.DefaultRoomVersion = config.RoomServer{}.Defaults().DefaultRoomVersion
	}
	if !supportedVersions[deps.Config.DefaultRoomVersion] {
		return nil, fmt.Errorf("roomserver: default room version %q is not supported", deps.Config.DefaultRoomVersion)
	}
	routeLogrus()
	sub, err := fs.Sub(migrationFiles, "migrations")
	if err != nil {
		return nil, err
	}
	if err := deps.DB.Migrate(ctx, "roomserver", sub); err != nil {
		return nil, err
	}
	if err := migrateRelationships(ctx, deps.DB); err != nil {
		return nil, err
	}
	if err := migrateAnnotations(ctx, deps.DB); err != nil {
		return nil, err
	}
	now := deps.Now
	if now == nil {
		now = time.Now
	}
	// Pooled nonces only when asked for (edsign's package comment: a
	// copied process would reuse them).
	var signer *edsign.Signer
	if deps.Config.PrecomputedSignatureNonces {
		signer, err = edsign.New(deps.Key.PrivateKey, edsign.DefaultPoolSize)
	} else {
		signer, err = edsign.NewDirect(deps.Key.PrivateKey)
	}
	if err != nil {
		return nil, fmt.Errorf("roomserver: signing key: %w", err)
	}
	s := &Server{
		db:                   deps.DB,
		serverName:           spec.ServerName(deps.ServerName),
		keyID:                gomatrixserverlib.KeyID(deps.Key.ID),
		key:                  deps.Key,
		signer:               signer,
		cfg:                  deps.Config,
		notify:               deps.Notify,
		onTimeline:           deps.OnTimeline,
		onRefetch:            deps.StretchRefetchQueued,
		now:                  now,
		shared:               deps.Shared,
		events:               newEventCache(4096),
		snapKeys:             newSnapshotKeyCache(4096),
		members:              newMemberMemo(),
		versions:             newVersionCache(65536),
		snapHV:               newSnapshotHVCache(65536),
		stretches:            newStretchCache(),
		pendingMembership:    deps.PendingMembership,
		endPendingMembership: deps.EndPendingMembership,
		onGuestAccess:        deps.OnGuestAccess,
		onJoinsEnded:         deps.OnJoinsEnded,
	}
	return s, nil
}

// notifyAfter tells the notifier about pos once tx commits.
func (s *Server) notifyAfter(tx storage.Tx, pos int64) {
	s.notifyAfterThen(tx, pos, nil)
}

// notifyAfterThen is notifyAfter followed, once the stream is notified,
// by then (when not nil; it runs after the commit even without a
// notifier).
func (s *Server) notifyAfterThen(tx storage.Tx, pos int64, then func()) {
	if (s.notify == nil || pos == 0) && then == nil {
		return
	}
	tx.AfterCommit(func() {
		if s.notify != nil && pos != 0 {
			s.notify(Stream, pos)
		}
		if then != nil {
			then()
		}
	})
}

// userIDForSender is the lenient sender lookup handed to
// gomatrixserverlib: historical user IDs are allowed, so a sender that an
// older server accepted does not make auth fail here.
func userIDForSender(_ spec.RoomID, senderID spec.SenderID) (*spec.UserID, error) {
	return spec.NewUserID(string(senderID), true)
}

// guard runs fn, turning a gomatrixserverlib panic (it panics on some bad
// room IDs and state sets) into an error.
func guard[T any](what string, fn func() (T, error)) (out T, err error) {
	defer func() {
		if v := recover(); v != nil {
			err = fmt.Errorf("roomserver: %s: gomatrixserverlib panicked: %v", what, v)
		}
	}()
	return fn()
}
