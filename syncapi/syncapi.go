package syncapi

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/myelin-chat/myelin/internal/authn"
	"github.com/myelin-chat/myelin/internal/httpx"
	"github.com/myelin-chat/myelin/internal/notifier"
)

// Deps are the sync component's dependencies. Rooms, AccountData,
// Filters, Notifier and Verifier are required; Ephemeral and E2EE may be
// nil until their components exist.
type Deps struct {
	Rooms       Rooms
	AccountData AccountData
	Filters     Filters
	Ephemeral   Ephemeral
	E2EE        E2EE
	Invites     RemoteInvites
	Notifier    notifier.Broadcaster
	// Aggregations bundles relations into limited timelines; may be nil.
	Aggregations Aggregations
	// Push supplies unread counts and default push rules; may be nil.
	Push Push
	// Threads supplies MSC4306 thread subscriptions to sliding sync's
	// MSC4308 extension; may be nil (the extension is then empty).
	Threads ThreadSubscriptions
	// Verifier checks access tokens (clientapi).
	Verifier authn.Verifier
	Logger   *slog.Logger
	// Now returns the current time; nil means time.Now.
	Now func() time.Time
	// RedisURL and RedisPrefix (global.redis_url and redis_prefix), when
	// RedisURL is set, keep the sliding sync connections in Redis so
	// that every sync process of a split deployment continues any of
	// them; otherwise they stay in this process's memory.
	RedisURL, RedisPrefix string
}

// Server serves /sync and sliding sync.
type Server struct {
	rooms   Rooms
	acct    AccountData
	filters Filters
	eph     Ephemeral     // may be nil
	e2ee    E2EE          // may be nil
	invites RemoteInvites // may be nil
	push    Push          // may be nil
	// counts groups the long polls' counts reads (countsbatch.go); nil
	// when push does not implement PushBatch.
	counts *countsBatcher
	// keyCounts groups the key counts reads (keycountsbatch.go); nil
	// when the E2EE has no batched read.
	keyCounts *keyCountsBatcher
	threads   ThreadSubscriptions // may be nil
	aggs      Aggregations        // may be nil
	verifier  authn.Verifier
	log       *slog.Logger
	now       func() time.Time
	waker     *waker
	// sharedHeads caches the user-independent stream heads between
	// notifications (heads.go).
	sharedHeads *headsCache
	acctHead    AccountDataHead // s.acct's, or nil
	// storedFilters is s.filters behind a cache (filtercache.go).
	storedFilters *filterCache
	inline        inlineFilters
	members       *memberCache
	// memberReads groups the lazy-loaded members reads of requests
	// asking for the same room at once (membersbatch.go).
	memberReads *memberBatcher
	// timelines groups the timeline reads of requests asking for the
	// same room and window at once (timelinebatch.go); nil when rooms
	// has no grouped read.
	timelines *timelineBatcher
	// memberships groups the users' memberships reads (membershipsbatch.go);
	// nil when rooms has no grouped read.
	memberships *membershipsBatcher
	// news shares RoomsWithEvents answers (newscache.go).
	news    *newsCache
	ignores *ignoreCache
	sliding *slidingConns
	// slidingRedis holds the sliding sync connections instead of
	// sliding in split mode (sliding_redis.go); nil in one process.
	slidingRedis *redisConns
	// timelineSplit is how many rooms one of the concurrent timeline
	// reads of an initial sync covers (initial_batch.go); 0: the default.
	// Tests set it to make every such sync split its reads.
	timelineSplit int
}

// New builds the sync component and starts its waker, which runs until
// ctx ends.
func New(ctx context.Context, deps Deps) (*Server, error) {
	if deps.Rooms == nil || deps.AccountData == nil || deps.Filters == nil || deps.Notifier == nil || deps.Verifier == nil {
		return nil, errors.New("syncapi: Rooms, AccountData, Filters, Notifier and Verifier are required")
	}
	logger := deps.Logger
	if logger == nil {
		logger = slog.Default()
	}
	logger = logger.With("component", "syncapi")
	now := deps.Now
	if now == nil {
		now = time.Now
	}
	s := &Server{
		rooms: deps.Rooms, acct: deps.AccountData, filters: deps.Filters,
		eph: deps.Ephemeral, e2ee: deps.E2EE, invites: deps.Invites, push: deps.Push, threads: deps.Threads, aggs: deps.Aggregations, verifier: deps.Verifier,
		log: logger, now: now,
		waker:         newWaker(deps.Rooms, deps.Notifier, logger),
		sharedHeads:   newHeadsCache(deps.Notifier, deps.Push != nil),
		storedFilters: newFilterCache(deps.Filters, 100000),
		members:       newMemberCache(100000),
		news:          newNewsCache(deps.Rooms, 256),
		memberReads:   newMemberBatcher(deps.Rooms),
		ignores:       newIgnoreCache(100000),
		sliding:       newSlidingConns(10000),
	}
	if deps.RedisURL != "" {
		rc, err := newRedisConns(deps.RedisURL, deps.RedisPrefix)
		if err != nil {
			return nil, err
		}
		s.slidingRedis = rc
		go func() {
			<-ctx.Done()
			rc.client.Close()
		}()
	}
	s.acctHead, _ = deps.AccountData.(AccountDataHead)
	if batch, ok := deps.Push.(PushBatch); ok {
		s.counts = &countsBatcher{push: batch}
	}
	if batch, ok := deps.Rooms.(RoomsGrouped); ok {
		s.timelines = &timelineBatcher{rooms: deps.Rooms, batch: batch}
		s.memberships = &membershipsBatcher{rooms: deps.Rooms, batch: batch, memo: s.waker.memo}
	}
	if batch, ok := deps.E2EE.(E2EEBatch); ok {
		s.keyCounts = &keyCountsBatcher{e2ee: batch}
	}
	s.waker.news = s.news
	s.waker.holdCounts = deps.Push != nil
	go s.waker.run(ctx)
	return s, nil
}

// The sync endpoints' paths.
const (
	syncPath        = "/_matrix/client/v3/sync"
	slidingSyncPath = "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync"
)

// guestEndpoints are the sync endpoints guests may call: both.
//
// Spec: client-server-api, "Guest Access", "Client behaviour" lists GET
// /sync. Sliding sync (MSC4186) is its replacement, which clients such
// as Element X use alone; Synapse serves it to guests too.
var guestEndpoints authn.Guests

func init() {
	guestEndpoints.Allow(http.MethodGet, syncPath)
	guestEndpoints.Allow(http.MethodPost, slidingSyncPath)
}

// Routes registers the sync endpoints on r.
func (s *Server) Routes(r chi.Router) {
	r.Group(func(r chi.Router) {
		r.Use(authn.Middleware(s.verifier, &guestEndpoints))
		r.Method(http.MethodGet, syncPath, httpx.H(s.sync))
		r.Method(http.MethodPost, slidingSyncPath, httpx.H(s.slidingSync))
	})
}
