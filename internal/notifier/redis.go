package notifier

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// Redis is the Broadcaster for split deployments: several processes that
// share one database learn from each other, through Redis, that a stream
// advanced.
//
// Each process keeps the same max-per-stream table as Notifier (it wraps
// one), so local waiters wake at once on a local Notify. Notify also
// queues the position for a background publisher, which runs a Lua
// script that raises the stream's entry in the hash <prefix>positions
// (never lowers it) and, if it rose, PUBLISHes "stream pos" on the
// channel <prefix>notify. A subscriber goroutine feeds every message on
// that channel into the local table. After each (re)subscription it
// reads the hash, so a process starting later, or one that was cut off
// from Redis for a while, learns the current positions without waiting
// for the next message.
//
// Redis being slow or down never blocks a caller: the publish queue holds
// at most one pending position per stream (newer ones replace older
// ones), and what cannot be published is dropped, with a warning logged
// at most once per interval. That only delays remote readers, which also
// poll the database.
//
// Positions in the hash are compared as Lua numbers (doubles), exact up
// to 2^53. The hash outlives processes: if the database is replaced by an
// older or empty one, delete the hash (or change the prefix) too, or the
// processes will ignore positions below the stale ones.
//
// Concurrency: every method is safe for concurrent use.
type Redis struct {
	local     *Notifier
	client    *redis.Client
	channel   string
	hash      string
	localOnly map[string]bool // immutable
	opts      RedisOptions

	mu      sync.Mutex
	pending map[string]int64 // positions not yet handed to the publisher; guarded by mu
	pubsub  *redis.PubSub    // the current subscription, closed by Close; guarded by mu
	closed  bool             // guarded by mu

	kick   chan struct{} // capacity 1: pending has entries
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	dropLog, subLog rateLimitedLog
}

var _ Broadcaster = (*Redis)(nil)

// RedisOptions configures NewRedis.
type RedisOptions struct {
	// URL is a redis://, rediss:// or unix:// URL as go-redis parses it,
	// e.g. redis://:password@10.0.0.5:6379/0.
	URL string
	// Prefix namespaces the channel (<Prefix>notify) and the hash
	// (<Prefix>positions), so deployments can share one Redis.
	Prefix string
	// LocalStreams are streams whose positions are private to a process
	// (kept in memory, not in the shared database): they are neither
	// published nor taken from Redis, only broadcast locally.
	LocalStreams []string
	// Logger receives the (rate-limited) warnings; nil means slog.Default().
	Logger *slog.Logger

	// Tuning, defaulted by NewRedis; tests shorten them.
	publishTimeout time.Duration // bound on one publish round trip
	logEvery       time.Duration // at most one drop (or reconnect) warning per interval
	minBackoff     time.Duration // first wait before resubscribing
	maxBackoff     time.Duration // longest wait before resubscribing
	healthEvery    time.Duration // PING the subscription after this long without traffic
}

// Redis key suffixes under RedisOptions.Prefix.
const (
	redisChannelSuffix = "notify"
	redisHashSuffix    = "positions"
)

// raiseAndPublish sets each stream's field in KEYS[1] to the given
// position when that is larger, and for each one it raised PUBLISHes
// "stream pos" on KEYS[2]. ARGV holds stream, position pairs. Atomic, so
// the hash and the messages never disagree about order.
var raiseAndPublish = redis.NewScript(`
local raised = 0
for i = 1, #ARGV, 2 do
	local cur = tonumber(redis.call('HGET', KEYS[1], ARGV[i]) or '0')
	if tonumber(ARGV[i + 1]) > cur then
		redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
		redis.call('PUBLISH', KEYS[2], ARGV[i] .. ' ' .. ARGV[i + 1])
		raised = raised + 1
	end
end
return raised
`)

// NewRedis connects to Redis, subscribes to the notification channel and
// seeds the positions from the hash before it returns, so a Notify
// published elsewhere after NewRedis returns is heard. ctx bounds only
// this start; it fails if Redis cannot be reached in time. Call Close to
// stop the background goroutines.
func NewRedis(ctx context.Context, opts RedisOptions) (*Redis, error) {
	ropts, err := redis.ParseURL(opts.URL)
	if err != nil {
		return nil, fmt.Errorf("notifier: redis URL: %w", err)
	}
	// Honour the deadlines given to each call, so a hung Redis costs a
	// publish at most publishTimeout.
	ropts.ContextTimeoutEnabled = true
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	setDefault(&opts.publishTimeout, 2*time.Second)
	setDefault(&opts.logEvery, time.Minute)
	setDefault(&opts.minBackoff, 100*time.Millisecond)
	setDefault(&opts.maxBackoff, 5*time.Second)
	setDefault(&opts.healthEvery, 30*time.Second)

	bg, cancel := context.WithCancel(context.Background())
	r := &Redis{
		local:     New(),
		client:    redis.NewClient(ropts),
		channel:   opts.Prefix + redisChannelSuffix,
		hash:      opts.Prefix + redisHashSuffix,
		localOnly: map[string]bool{},
		opts:      opts,
		pending:   map[string]int64{},
		kick:      make(chan struct{}, 1),
		ctx:       bg,
		cancel:    cancel,
		dropLog:   rateLimitedLog{every: opts.logEvery},
		subLog:    rateLimitedLog{every: opts.logEvery},
	}
	for _, s := range opts.LocalStreams {
		r.localOnly[s] = true
	}
	ps, err := r.subscribe(ctx)
	if err != nil {
		cancel()
		r.client.Close()
		return nil, fmt.Errorf("notifier: redis %s: %w", redactURL(opts.URL), err)
	}
	r.wg.Add(2)
	go r.publishLoop()
	go r.subscribeLoop(ps)
	return r, nil
}

func setDefault(d *time.Duration, v time.Duration) {
	if *d <= 0 {
		*d = v
	}
}

// redactURL drops the password from a Redis URL for error messages.
func redactURL(raw string) string {
	if o, err := redis.ParseURL(raw); err == nil {
		return o.Addr
	}
	return "(unparsable URL)"
}

// Notify records that stream reached pos, wakes local waiters, and
// queues pos for publishing. It never blocks on Redis.
func (r *Redis) Notify(stream string, pos int64) {
	if pos <= r.local.Position(stream) {
		// Already heard (locally or from another process, which
		// published it or something larger).
		return
	}
	r.local.Notify(stream, pos)
	if r.localOnly[stream] {
		return
	}
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return
	}
	if pos > r.pending[stream] {
		r.pending[stream] = pos
	}
	r.mu.Unlock()
	select {
	case r.kick <- struct{}{}:
	default: // the publisher is already due to run
	}
}

// Positions returns a copy of the highest position heard per stream,
// locally or from other processes.
func (r *Redis) Positions() Positions { return r.local.Positions() }

// Position returns the highest position heard for one stream.
func (r *Redis) Position(stream string) int64 { return r.local.Position(stream) }

// Changed returns a channel closed at the next advance of any stream.
func (r *Redis) Changed() <-chan struct{} { return r.local.Changed() }

// Close stops publishing and subscribing and closes the Redis client.
// Positions not yet published are dropped. Safe to call more than once.
func (r *Redis) Close() error {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return nil
	}
	r.closed = true
	ps := r.pubsub
	r.mu.Unlock()
	r.cancel()
	if ps != nil {
		ps.Close() // unblocks a Receive in progress
	}
	r.wg.Wait()
	return r.client.Close()
}

// publishLoop hands pending positions to Redis, one batch at a time.
func (r *Redis) publishLoop() {
	defer r.wg.Done()
	for {
		select {
		case <-r.kick:
		case <-r.ctx.Done():
			return
		}
		r.mu.Lock()
		batch := r.pending
		r.pending = map[string]int64{}
		r.mu.Unlock()
		if len(batch) == 0 {
			continue
		}
		args := make([]any, 0, 2*len(batch))
		for stream, pos := range batch {
			args = append(args, stream, pos)
		}
		ctx, cancel := context.WithTimeout(r.ctx, r.opts.publishTimeout)
		err := raiseAndPublish.Run(ctx, r.client, []string{r.hash, r.channel}, args...).Err()
		cancel()
		if err != nil && r.ctx.Err() == nil {
			r.dropLog.warn(r.opts.Logger, "notifier: cannot publish to redis; remote readers will catch up by polling",
				"dropped", len(batch), "err", err)
		}
	}
}

// subscribe subscribes to the channel, waits for Redis to confirm, then
// seeds the local table from the hash. Subscribing first means nothing
// published after the hash read can be missed.
func (r *Redis) subscribe(ctx context.Context) (*redis.PubSub, error) {
	ps := r.client.Subscribe(ctx) // no channel yet: Subscribe below waits for the reply
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		ps.Close()
		return nil, errors.New("closed")
	}
	r.pubsub = ps
	r.mu.Unlock()
	if err := ps.Subscribe(ctx, r.channel); err != nil {
		ps.Close()
		return nil, fmt.Errorf("subscribing to %s: %w", r.channel, err)
	}
	// The confirmation is the first reply on the connection.
	msg, err := ps.ReceiveTimeout(ctx, r.opts.publishTimeout)
	if err == nil {
		if _, ok := msg.(*redis.Subscription); !ok {
			err = fmt.Errorf("unexpected reply %T", msg)
		}
	}
	if err != nil {
		ps.Close()
		return nil, fmt.Errorf("subscribing to %s: %w", r.channel, err)
	}
	all, err := r.client.HGetAll(ctx, r.hash).Result()
	if err != nil {
		ps.Close()
		return nil, fmt.Errorf("reading %s: %w", r.hash, err)
	}
	for stream, v := range all {
		if pos, err := strconv.ParseInt(v, 10, 64); err == nil && !r.localOnly[stream] {
			r.local.Notify(stream, pos)
		}
	}
	return ps, nil
}

// subscribeLoop receives notifications on ps, and when the subscription
// fails, resubscribes with exponential backoff until Close.
func (r *Redis) subscribeLoop(ps *redis.PubSub) {
	defer r.wg.Done()
	backoff := r.opts.minBackoff
	for {
		if ps != nil {
			backoff = r.opts.minBackoff
			err := r.receive(ps)
			ps.Close()
			if r.ctx.Err() != nil {
				return
			}
			r.subLog.warn(r.opts.Logger, "notifier: redis subscription lost; resubscribing", "err", err)
		}
		select {
		case <-time.After(backoff):
		case <-r.ctx.Done():
			return
		}
		backoff = min(2*backoff, r.opts.maxBackoff)
		ctx, cancel := context.WithTimeout(r.ctx, r.opts.publishTimeout)
		var err error
		ps, err = r.subscribe(ctx)
		cancel()
		if err != nil {
			if r.ctx.Err() != nil {
				return
			}
			r.subLog.warn(r.opts.Logger, "notifier: cannot resubscribe to redis; retrying", "err", err, "retry_in", backoff)
		}
	}
}

// receive feeds messages on ps into the local table until the connection
// fails or the Redis is closed. A quiet connection is PINGed, so a dead
// peer is noticed within two health intervals.
func (r *Redis) receive(ps *redis.PubSub) error {
	pinged := false
	for {
		msg, err := ps.ReceiveTimeout(r.ctx, r.opts.healthEvery)
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() && !pinged && r.ctx.Err() == nil {
				if err := ps.Ping(r.ctx); err != nil {
					return err
				}
				pinged = true
				continue
			}
			return err
		}
		pinged = false
		m, ok := msg.(*redis.Message)
		if !ok {
			continue // Pong, or a subscription reply
		}
		stream, pos, ok := parseNotification(m.Payload)
		if ok && !r.localOnly[stream] {
			r.local.Notify(stream, pos)
		}
	}
}

// parseNotification splits "stream pos".
func parseNotification(payload string) (string, int64, bool) {
	i := strings.LastIndexByte(payload, ' ')
	if i <= 0 {
		return "", 0, false
	}
	pos, err := strconv.ParseInt(payload[i+1:], 10, 64)
	if err != nil {
		return "", 0, false
	}
	return payload[:i], pos, true
}

// rateLimitedLog logs a warning at most once per interval and counts the
// ones it held back.
type rateLimitedLog struct {
	every time.Duration

	mu         sync.Mutex
	last       time.Time // guarded by mu
	suppressed int       // guarded by mu
}

func (l *rateLimitedLog) warn(log *slog.Logger, msg string, args ...any) {
	l.mu.Lock()
	now := time.Now()
	if !l.last.IsZero() && now.Sub(l.last) < l.every {
		l.suppressed++
		l.mu.Unlock()
		return
	}
	l.last = now
	suppressed := l.suppressed
	l.suppressed = 0
	l.mu.Unlock()
	if suppressed > 0 {
		args = append(args, "suppressed_since_last", suppressed)
	}
	log.Warn(msg, args...)
}
