package ratelimit

import (
	"context"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// Shared keeps the token buckets of the limiters it makes in Redis, one
// hash per limiter and key, so that the processes of a split deployment
// (the same Redis and prefix) count a client's requests together: with N
// processes behind a balancer a client still gets the configured rate,
// not N times it.
//
// A bucket is refilled by Redis's clock (TIME inside the script), so the
// processes' clocks do not matter. When Redis does not answer within
// sharedTimeout, the limiter falls back to its process's own bucket for
// that request (fail open per process, as without Redis): a Redis outage
// must not refuse every request.
type Shared struct {
	client *redis.Client
	prefix string
	log    *slog.Logger
	// failedLogAt spaces the warnings about an unreachable Redis (unix
	// nanoseconds of the last one).
	failedLogAt atomic.Int64
}

// sharedTimeout bounds the Redis round trip a limited request waits for.
const sharedTimeout = 250 * time.Millisecond

// NewShared connects to the Redis at url; keys start with prefix.
func NewShared(url, prefix string, logger *slog.Logger) (*Shared, error) {
	opts, err := redis.ParseURL(url)
	if err != nil {
		return nil, fmt.Errorf("ratelimit: redis url: %w", err)
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return &Shared{client: redis.NewClient(opts), prefix: prefix, log: logger}, nil
}

// Close closes the Redis connections.
func (s *Shared) Close() error { return s.client.Close() }

// Limiter returns a limiter like New's whose buckets live in Redis under
// name (unique per limiter: the processes' limiters of one name share
// their buckets).
func (s *Shared) Limiter(name string, perSecond float64, burst int, enabled bool) *Limiter {
	l := New(perSecond, burst, enabled)
	l.shared, l.name = s, name
	return l
}

// takeScript takes a token from the bucket KEYS[1] (fields t: tokens, at:
// Redis time in ms of the last refill), refilled at ARGV[1] tokens per ms
// up to ARGV[2]. It returns -1 when a token was taken, otherwise the ms
// until one will be there. The key expires once the bucket would be full
// again (an absent bucket is a full one).
var takeScript = redis.NewScript(`
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local b = redis.call('HMGET', KEYS[1], 't', 'at')
local tokens, at = tonumber(b[1]), tonumber(b[2])
if tokens == nil or at == nil then
  tokens, at = burst, now
end
tokens = math.min(burst, tokens + math.max(0, now - at) * rate)
local wait = -1
if tokens >= 1 then
  tokens = tokens - 1
else
  wait = math.ceil((1 - tokens) / rate)
end
redis.call('HSET', KEYS[1], 't', tostring(tokens), 'at', now)
redis.call('PEXPIRE', KEYS[1], math.ceil((burst - tokens) / rate) + 1000)
return wait
`)

// take takes a token from name's bucket for key in Redis. wait is 0 when
// one was taken, otherwise how long until one will be; ok is false when
// Redis did not answer.
func (s *Shared) take(name, key string, perSecond, burst float64) (wait time.Duration, ok bool) {
	ctx, cancel := context.WithTimeout(context.Background(), sharedTimeout)
	defer cancel()
	ms, err := takeScript.Run(ctx, s.client, []string{s.prefix + name + ":" + key}, perSecond/1000, burst).Int64()
	if err != nil {
		now := time.Now().UnixNano()
		if last := s.failedLogAt.Load(); now-last > int64(time.Minute) && s.failedLogAt.CompareAndSwap(last, now) {
			s.log.Warn("rate limits: Redis did not answer; counting in this process alone meanwhile", "err", err)
		}
		return 0, false
	}
	if ms < 0 {
		return 0, true
	}
	return time.Duration(max(ms, 1)) * time.Millisecond, true
}
