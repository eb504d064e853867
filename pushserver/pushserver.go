package pushserver

import (
	"context"
	"embed"
	"encoding/json"
	"errors"
	"io/fs"
	"log/slog"
	"math"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/myelin-chat/myelin/clientapi"
	"github.com/myelin-chat/myelin/config"
	"github.com/myelin-chat/myelin/internal/authn"
	"github.com/myelin-chat/myelin/internal/notifier"
	"github.com/myelin-chat/myelin/roomserver"
	"github.com/myelin-chat/myelin/storage"
)

//go:embed migrations/*.sql
var migrations embed.FS

// Rooms is what push reads from the roomserver (*roomserver.Server).
type Rooms interface {
	StreamPosition(ctx context.Context) (int64, error)
	EventsAfter(ctx context.Context, after int64, limit int) ([]*roomserver.Event, error)
	JoinsAfter(ctx context.Context, after int64, limit int) (int64, []*roomserver.Event, error)
	IndexedCurrentState(ctx context.Context, roomID string, types []string, skipMembers bool) ([]*roomserver.Event, error)
	Event(ctx context.Context, userID, eventID string) (*roomserver.Event, error)
}

// Receipts is clientapi's receipt stream (*clientapi.Server).
type Receipts interface {
	ReceiptsAfter(ctx context.Context, since int64, limit int) ([]clientapi.Receipt, error)
}

// ThreadSubscriptions is clientapi's MSC4306 store (*clientapi.Server).
type ThreadSubscriptions interface {
	// ThreadSubscribed reports whether userID is subscribed to the
	// thread rooted at threadRoot in roomID.
	ThreadSubscribed(ctx context.Context, userID, roomID, threadRoot string) (bool, error)
}

// Deps are the push component's dependencies; all are required except
// Logger, HTTPClient and Now.
type Deps struct {
	// NoSender leaves out the gateway sender (deliveries to push
	// gateways and the pruning of old notifications); NoConsumer the
	// consumer that counts notifications and follows receipts, whose
	// positions UnreadCounts waits for. A process of a split deployment
	// runs the sender where it runs the push server, and the consumer
	// where it runs the push server or /sync.
	NoSender, NoConsumer bool
	DB                   *storage.DB
	ServerName           string
	Config               config.Push
	Rooms                Rooms
	Receipts             Receipts
	// Threads answers MSC4306's thread_subscription condition; nil means
	// nobody is subscribed to any thread.
	Threads ThreadSubscriptions
	// WriteAccountData stores server-managed global account data inside
	// the caller's transaction (clientapi.Server.WriteServerAccountData).
	WriteAccountData func(ctx context.Context, tx storage.Tx, userID, dataType string, content json.RawMessage) error
	// Notifier wakes the consumers when the room or receipt stream advances.
	Notifier notifier.Broadcaster
	Verifier authn.Verifier
	Logger   *slog.Logger
	// HTTPClient sends to push gateways; nil means a client that refuses
	// non-public addresses except Config.OutboundIPAllow.
	HTTPClient *http.Client
	// Now returns the current time; nil means time.Now.
	Now func() time.Time
	// Shared says other processes write to the same database (Redis
	// configured): their joins are not counted in localJoins, so the
	// consumer does not space its passes by it.
	Shared bool
}

// Server is the push component.
type Server struct {
	db         *storage.DB
	serverName string
	cfg        config.Push
	rooms      Rooms
	receipts   Receipts
	threadSubs ThreadSubscriptions // may be nil
	writeAcct  func(ctx context.Context, tx storage.Tx, userID, dataType string, content json.RawMessage) error
	notifier   notifier.Broadcaster
	verifier   authn.Verifier
	log        *slog.Logger
	client     *http.Client
	now        func() time.Time

	rules *rulesCache

	// Consumer progress, for UnreadCounts to wait on. Updated after
	// the consumer's transaction commits.
	eventsPos   atomic.Int64
	receiptsPos atomic.Int64
	progressMu  sync.Mutex
	progress    chan struct{} // guarded by progressMu; closed and replaced on advance

	// consumer-only state (the consumer goroutine alone touches it).
	roomInfos map[string]*roomInfo
	// eventsStored is the events consumer's stored position, written at
	// eventsStoredAt; eventsPos may run ahead of it (consumeEvents).
	eventsStored   int64
	eventsStoredAt time.Time

	threadsMu sync.Mutex
	threads   map[string]string // event ID -> thread root, for events in a thread (threadOf); guarded by threadsMu

	// inTxFrom is the room stream position after which every event's
	// notifications are written in the event's own transaction
	// (CountInTx); the consumer counts only the events up to it, left
	// from before this way of counting (immutable after New).
	inTxFrom int64
	// localJoins counts the local users' joins CountInTx has seen
	// commit (bumped in OnCommit, before the commit is notified): while
	// it has not moved since the consumer's last room-event pass, a pass
	// would find no join to act on, and the consumer spaces its passes
	// by quietJoinsPassEvery instead of joinsPassEvery. Not used when
	// shared (joins written by other processes are not counted).
	localJoins atomic.Int64
	shared     bool
	// onEventsPass, if set (tests only), is called as each room-event
	// pass of runConsumer begins, with the room stream position it last
	// heard and when it first heard it (quietPassLull), so that a test
	// can check the spacing on the consumer's own clock.
	onEventsPass func(started time.Time, roomPos int64, roomMovedAt time.Time)
	// atState caches roomInfo by committed state snapshot (CountInTx).
	atState *stateInfoCache
	// txRules caches compiled rules for CountInTx.
	txRules *versionedRules

	wakeSender chan struct{} // buffered 1
	stop       context.CancelFunc
	wg         sync.WaitGroup
	closeOnce  sync.Once
}

// Migrate applies the push server's migrations to db. New calls it; it is
// exported for processes that write push tables in their own
// transactions (DeletePushersForDevices, run by the admin commands)
// without a push server.
func Migrate(ctx context.Context, db *storage.DB) error {
	sub, err := fs.Sub(migrations, "migrations")
	if err != nil {
		return err
	}
	return db.Migrate(ctx, "pushserver", sub)
}

// New runs the migrations, reads the consumers' positions and starts
// the consumer and the sender; Close stops them.
func New(ctx context.Context, deps Deps) (*Server, error) {
	if deps.DB == nil || deps.Rooms == nil || deps.Receipts == nil || deps.WriteAccountData == nil ||
		deps.Notifier == nil || deps.Verifier == nil || deps.ServerName == "" {
		return nil, errors.New("pushserver: DB, ServerName, Rooms, Receipts, WriteAccountData, Notifier and Verifier are required")
	}
	if err := Migrate(ctx, deps.DB); err != nil {
		return nil, err
	}
	logger := deps.Logger
	if logger == nil {
		logger = slog.Default()
	}
	now := deps.Now
	if now == nil {
		now = time.Now
	}
	client := deps.HTTPClient
	var err error
	if client == nil {
		if client, err = gatewayClient(deps.Config); err != nil {
			return nil, err
		}
	}
	s := &Server{
		db: deps.DB, serverName: deps.ServerName, cfg: deps.Config, rooms: deps.Rooms, receipts: deps.Receipts, threadSubs: deps.Threads,
		writeAcct: deps.WriteAccountData, notifier: deps.Notifier, verifier: deps.Verifier,
		log: logger.With("component", "pushserver"), client: client, now: now,
		rules:      newRulesCache(),
		atState:    newStateInfoCache(),
		txRules:    newVersionedRules(),
		progress:   make(chan struct{}),
		roomInfos:  map[string]*roomInfo{},
		threads:    map[string]string{},
		wakeSender: make(chan struct{}, 1),
		shared:     deps.Shared,
	}
	if s.inTxFrom, err = s.loadInTxFrom(ctx); err != nil {
		return nil, err
	}
	evPos, rcPos, err := s.loadPositions(ctx)
	if err != nil {
		return nil, err
	}
	s.eventsPos.Store(evPos)
	s.eventsStored, s.eventsStoredAt = evPos, time.Now()
	s.receiptsPos.Store(rcPos)
	bg, cancel := context.WithCancel(context.Background())
	s.stop = cancel
	if !deps.NoConsumer {
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			s.runConsumer(bg)
		}()
	}
	if !deps.NoSender {
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			s.runSender(bg)
		}()
	}
	return s, nil
}

// RunSender runs the push gateway sender (and the pruning of old
// notifications) until ctx ends, for a server built with NoSender in a
// process that holds the sender's lease (split mode: internal/lease).
func (s *Server) RunSender(ctx context.Context) { s.runSender(ctx) }

// Close stops the background work. Call it before closing the database.
func (s *Server) Close() error {
	s.closeOnce.Do(func() {
		s.stop()
		s.wg.Wait()
	})
	return nil
}

// Routes registers the push endpoints on r. Guests may call none of
// them (push rules, pushers, notifications): the spec's guest lists
// (client-server-api, "Guest Access", "Client behaviour") name none, and
// Synapse refuses guests on each.
func (s *Server) Routes(r chi.Router) {
	r.Group(func(r chi.Router) {
		r.Use(authn.Middleware(s.verifier, nil))
		s.ruleRoutes(r)
		s.pusherRoutes(r)
		s.notificationRoutes(r)
	})
}

// advanced records the consumers' new positions and wakes waiters.
func (s *Server) advanced(eventsPos, receiptsPos int64) {
	if eventsPos > 0 {
		s.eventsPos.Store(eventsPos)
	}
	if receiptsPos > 0 {
		s.receiptsPos.Store(receiptsPos)
	}
	s.progressMu.Lock()
	ch := s.progress
	s.progress = make(chan struct{})
	s.progressMu.Unlock()
	close(ch)
	if n := min(eventsPos, s.inTxFrom); n > 0 {
		// Sync answers long polls with the counts committed so far and
		// sends the rest when this says they moved (syncapi fillUnread).
		// Past inTxFrom the events' own commits say it (CountInTx): the
		// consumer, which may read an event before the roomserver has
		// notified it, must not announce its counts first.
		s.notifier.Notify(CountsStream, n)
	}
}

// CountsStream is the notifier stream the event consumer advances after
// each commit of notifications: its position is the room stream
// position up to which every event's notifications are committed
// (CountsPosition). Sync hears it as syncapi.UnreadCountsStream.
const CountsStream = "push_counts"

// CountsPosition returns the room stream position up to which every
// event's notifications (and the read markers its sender's own event
// moves) are committed; unread counts read now include them.
//
// Once the consumer has counted the events left from before inTxFrom,
// every committed event's notifications are committed with it, so the
// counts include every committed position: CountsPosition then returns
// math.MaxInt64 (callers take the lower of it and their room position).
func (s *Server) CountsPosition() int64 {
	return s.countedPos()
}

// countedPos is CountsPosition.
func (s *Server) countedPos() int64 {
	if p := s.eventsPos.Load(); p < s.inTxFrom {
		return p
	}
	return math.MaxInt64
}

// maxCountWait bounds how long UnreadCounts waits for the consumers.
const maxCountWait = 3 * time.Second

// waitCaughtUp waits until the consumers have processed the room event
// stream to roomPos and the receipt stream to receiptPos, at most
// maxCountWait; after that counts are served as they are.
func (s *Server) waitCaughtUp(ctx context.Context, roomPos, receiptPos int64) {
	deadline := time.NewTimer(maxCountWait)
	defer deadline.Stop()
	for {
		s.progressMu.Lock()
		ch := s.progress
		s.progressMu.Unlock()
		if s.countedPos() >= roomPos && s.receiptsPos.Load() >= receiptPos {
			return
		}
		select {
		case <-ch:
		case <-deadline.C:
			s.log.Warn("unread counts served before push caught up", "room_pos", roomPos,
				"consumed", s.eventsPos.Load(), "receipt_pos", receiptPos, "receipts_consumed", s.receiptsPos.Load())
			return
		case <-ctx.Done():
			return
		}
	}
}

// isLocal reports whether userID belongs to this server.
func (s *Server) isLocal(userID string) bool {
	n := len(userID) - len(s.serverName)
	return n > 1 && userID[0] == '@' && userID[n-1] == ':' && userID[n:] == s.serverName
}
