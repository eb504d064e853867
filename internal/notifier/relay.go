package notifier

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// Relay carries messages with content between the processes of a split
// deployment, for state that each process keeps in memory rather than in
// the shared database (typing notifications): every process publishes
// what it takes in and applies what the others publish. Unlike Redis
// (positions), a message is data, not "go and read": one lost while
// Redis is down is lost, so only state that expires by itself (typing
// times out) may travel this way.
//
// Publish never blocks the caller: messages wait in a bounded queue for
// a background publisher, and what does not fit, or cannot be published
// within publishTimeout, is dropped with a rate-limited warning. A
// process does not apply its own messages. Messages from one process
// reach another in the order published.
//
// Concurrency: every method is safe for concurrent use.
type Relay struct {
	client  *redis.Client
	pubsub  *redis.PubSub
	channel string
	origin  string // this process's random ID, prefixed to its messages
	apply   func(payload []byte)
	log     *slog.Logger
	queue   chan string
	ctx     context.Context
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	dropLog rateLimitedLog
	once    sync.Once
}

// relayQueue bounds the messages waiting for the publisher.
const relayQueue = 4096

// NewRelay connects to Redis (url as for NewRedis) and subscribes to
// channel before it returns, so a message published elsewhere after
// NewRelay returns is applied. apply receives each other process's
// payload, one at a time, on a goroutine of the Relay. Call Close to
// stop.
func NewRelay(ctx context.Context, url, channel string, logger *slog.Logger, apply func(payload []byte)) (*Relay, error) {
	ropts, err := redis.ParseURL(url)
	if err != nil {
		return nil, fmt.Errorf("notifier: redis URL: %w", err)
	}
	ropts.ContextTimeoutEnabled = true
	if logger == nil {
		logger = slog.Default()
	}
	var id [8]byte
	if _, err := rand.Read(id[:]); err != nil {
		return nil, err
	}
	bg, cancel := context.WithCancel(context.Background())
	r := &Relay{client: redis.NewClient(ropts), channel: channel, origin: hex.EncodeToString(id[:]), apply: apply,
		log: logger, queue: make(chan string, relayQueue), ctx: bg, cancel: cancel, dropLog: rateLimitedLog{every: time.Minute}}
	r.pubsub = r.client.Subscribe(ctx, channel)
	// The first reply confirms the subscription.
	if _, err := r.pubsub.Receive(ctx); err != nil {
		cancel()
		r.pubsub.Close()
		r.client.Close()
		return nil, fmt.Errorf("notifier: redis %s: %w", redactURL(url), err)
	}
	r.wg.Add(2)
	go r.publishLoop()
	go r.receiveLoop()
	return r, nil
}

// Publish queues payload for the other processes.
func (r *Relay) Publish(payload []byte) {
	select {
	case r.queue <- r.origin + " " + string(payload):
	default:
		r.dropLog.warn(r.log, "relay queue full: message dropped", "channel", r.channel)
	}
}

func (r *Relay) publishLoop() {
	defer r.wg.Done()
	for {
		select {
		case <-r.ctx.Done():
			return
		case msg := <-r.queue:
			ctx, cancel := context.WithTimeout(r.ctx, 2*time.Second)
			err := r.client.Publish(ctx, r.channel, msg).Err()
			cancel()
			if err != nil && r.ctx.Err() == nil {
				r.dropLog.warn(r.log, "relay: message not published (Redis unreachable?)", "channel", r.channel, "err", err)
			}
		}
	}
}

func (r *Relay) receiveLoop() {
	defer r.wg.Done()
	// Channel re-subscribes by itself after a lost connection.
	ch := r.pubsub.Channel()
	for {
		select {
		case <-r.ctx.Done():
			return
		case m, ok := <-ch:
			if !ok {
				return
			}
			origin, payload, found := strings.Cut(m.Payload, " ")
			if !found || origin == r.origin {
				continue
			}
			r.apply([]byte(payload))
		}
	}
}

// Close stops the relay; queued messages not yet published are dropped.
func (r *Relay) Close() error {
	var err error
	r.once.Do(func() {
		r.cancel()
		err = r.pubsub.Close()
		r.wg.Wait()
		err = joinClose(err, r.client.Close())
	})
	return err
}

func joinClose(a, b error) error {
	if a != nil {
		return a
	}
	return b
}
