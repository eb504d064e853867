// Package ratelimit is a keyed token-bucket rate limiter: each key (a user
// ID or client IP) has a bucket of Burst tokens refilled at PerSecond.
// Spec: client-server-api, "Rate limiting": a limited request gets
// 429 M_LIMIT_EXCEEDED with retry_after_ms.
//
// Concurrency: a Limiter is safe for concurrent use; buckets are guarded by mu.
//
// In split mode (docs/split.md) several processes serve the same clients:
// limiters made by a Shared keep their buckets in Redis, so a client's
// requests count against one bucket whichever process takes them.
package ratelimit

import (
	"math"
	"sync"
	"time"

	"github.com/myelin-chat/myelin/internal/mxerr"
)

// Limiter limits events per key.
type Limiter struct {
	rate    float64 // tokens per second; immutable
	burst   float64 // immutable
	enabled bool    // immutable
	now     func() time.Time

	// shared, when set, holds the buckets in Redis under name (see
	// Shared); the local buckets below are then used only while Redis
	// cannot be reached.
	shared *Shared
	name   string

	mu      sync.Mutex
	buckets map[string]*bucket // guarded by mu
	sweepAt time.Time          // guarded by mu
}

type bucket struct {
	tokens float64
	last   time.Time
}

// New returns a limiter. When enabled is false, Allow always succeeds.
func New(perSecond float64, burst int, enabled bool) *Limiter {
	return &Limiter{rate: perSecond, burst: float64(burst), enabled: enabled, now: time.Now, buckets: map[string]*bucket{}}
}

// Allow takes one token from key's bucket. When none is left it returns an
// M_LIMIT_EXCEEDED error carrying retry_after_ms.
func (l *Limiter) Allow(key string) error {
	if l == nil || !l.enabled {
		return nil
	}
	if l.shared != nil {
		if wait, ok := l.shared.take(l.name, key, l.rate, l.burst); ok {
			if wait <= 0 {
				return nil
			}
			return limitExceeded(wait)
		}
		// Redis did not answer: this process's own bucket, as without
		// Redis (a client may then get up to once per process).
	}
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	l.sweep(now)
	b, ok := l.buckets[key]
	if !ok {
		b = &bucket{tokens: l.burst, last: now}
		l.buckets[key] = b
	}
	b.tokens = math.Min(l.burst, b.tokens+now.Sub(b.last).Seconds()*l.rate)
	b.last = now
	if b.tokens >= 1 {
		b.tokens--
		return nil
	}
	return limitExceeded(time.Duration((1 - b.tokens) / l.rate * float64(time.Second)))
}

// limitExceeded is the error of a request refused for wait.
func limitExceeded(wait time.Duration) error {
	retry := wait.Milliseconds()
	if retry < 1 {
		retry = 1
	}
	return mxerr.New(mxerr.LimitExceeded, "too many requests").With("retry_after_ms", retry)
}

// sweep drops buckets that have refilled completely, so memory stays
// bounded by the number of recently active keys.
func (l *Limiter) sweep(now time.Time) {
	if now.Before(l.sweepAt) {
		return
	}
	full := time.Duration(l.burst / l.rate * float64(time.Second))
	for k, b := range l.buckets {
		if now.Sub(b.last) > full {
			delete(l.buckets, k)
		}
	}
	l.sweepAt = now.Add(time.Minute)
}
