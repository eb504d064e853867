package mediaapi

import (
	"math"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/myelin-chat/myelin/internal/mxerr"
)

// byteBudget is a token bucket of bytes per key (a user ID or a client
// IP): media_api.download_burst_bytes refilled at
// download_bytes_per_second (security case 27).
//
// A download is let through when the bucket holds its cost, or is full
// when the cost is more than a full bucket (so files larger than the burst
// can still be fetched, one per refill); the whole cost is then taken,
// which may leave the bucket in debt. Refused downloads take nothing.
//
// Concurrency: safe for concurrent use; buckets are guarded by mu.
type byteBudget struct {
	rate  float64 // bytes per second; immutable; 0 disables
	burst float64 // immutable
	now   clock

	mu      sync.Mutex
	buckets map[string]*byteBucket // guarded by mu
	sweepAt time.Time              // guarded by mu
}

type byteBucket struct {
	tokens float64
	last   time.Time
}

func newByteBudget(perSecond, burst int64, now clock) *byteBudget {
	return &byteBudget{rate: float64(perSecond), burst: float64(burst), now: now, buckets: map[string]*byteBucket{}}
}

// take charges cost bytes to key, or returns 429 M_LIMIT_EXCEEDED with
// retry_after_ms (the time until the bucket holds enough) without charging
// anything. take(key, 0) only checks that the bucket is not empty or in
// debt: handlers call it before doing work whose size is not known yet.
func (b *byteBudget) take(key string, cost int64) error {
	if b == nil || b.rate <= 0 {
		return nil
	}
	now := b.now()
	b.mu.Lock()
	defer b.mu.Unlock()
	b.sweep(now)
	bk, ok := b.buckets[key]
	if !ok {
		bk = &byteBucket{tokens: b.burst, last: now}
		b.buckets[key] = bk
	}
	if elapsed := now.Sub(bk.last); elapsed > 0 {
		bk.tokens = math.Min(b.burst, bk.tokens+elapsed.Seconds()*b.rate)
	}
	bk.last = now
	need := math.Max(1, math.Min(float64(cost), b.burst))
	if bk.tokens >= need {
		bk.tokens -= float64(cost)
		return nil
	}
	retry := int64(math.Ceil((need - bk.tokens) / b.rate * 1000))
	return mxerr.New(mxerr.LimitExceeded, "media download budget exceeded").With("retry_after_ms", max(retry, 1))
}

// sweep drops buckets that have refilled completely, so memory is bounded
// by the number of recently active keys.
func (b *byteBudget) sweep(now time.Time) {
	if now.Before(b.sweepAt) {
		return
	}
	for k, bk := range b.buckets {
		if bk.tokens+now.Sub(bk.last).Seconds()*b.rate >= b.burst {
			delete(b.buckets, k)
		}
	}
	b.sweepAt = now.Add(time.Minute)
}

// servedBytes is how many bytes of a size-byte file r will be sent: the
// whole file, or the part a single "bytes=" range asks for. Multiple or
// unparsable ranges count as the whole file.
func servedBytes(r *http.Request, size int64) int64 {
	spec, ok := strings.CutPrefix(r.Header.Get("Range"), "bytes=")
	if !ok || strings.Contains(spec, ",") || size <= 0 {
		return size
	}
	first, last, ok := strings.Cut(strings.TrimSpace(spec), "-")
	if !ok {
		return size
	}
	if first == "" {
		n, err := strconv.ParseInt(last, 10, 64)
		if err != nil || n < 0 {
			return size
		}
		return min(n, size)
	}
	start, err := strconv.ParseInt(first, 10, 64)
	if err != nil || start < 0 || start >= size {
		return size
	}
	end := size - 1
	if last != "" {
		e, err := strconv.ParseInt(last, 10, 64)
		if err != nil || e < start {
			return size
		}
		end = min(e, size-1)
	}
	return end - start + 1
}
