package ratelimit

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"os"
	"testing"
	"time"

	"github.com/myelin-chat/myelin/internal/mxerr"
)

// testShared returns two Shareds on the test Redis with one fresh prefix,
// as two processes of one deployment hold; the test is skipped without
// MYELIN_TEST_REDIS.
func testShared(t *testing.T) (a, b *Shared) {
	t.Helper()
	url := os.Getenv("MYELIN_TEST_REDIS")
	if url == "" {
		t.Skip("Redis test skipped: set MYELIN_TEST_REDIS to a Redis URL (e.g. redis://127.0.0.1:6379/0) to run it")
	}
	var r [6]byte
	_, _ = rand.Read(r[:])
	prefix := "myelin-test:" + hex.EncodeToString(r[:]) + ":ratelimit:"
	a, err := NewShared(url, prefix, nil)
	if err != nil {
		t.Fatal(err)
	}
	b, err = NewShared(url, prefix, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx := context.Background()
		iter := a.client.Scan(ctx, 0, prefix+"*", 100).Iterator()
		for iter.Next(ctx) {
			a.client.Del(ctx, iter.Val())
		}
		a.Close()
		b.Close()
	})
	return a, b
}

func retryAfter(t *testing.T, err error) int64 {
	t.Helper()
	if !mxerr.Is(err, mxerr.LimitExceeded) {
		t.Fatalf("got %v, want M_LIMIT_EXCEEDED", err)
	}
	e, _ := mxerr.As(err)
	return e.Fields["retry_after_ms"].(int64)
}

// Two processes' limiters of one name count a key's requests in one
// bucket: the burst is spent across both, and the refusal says when the
// next token comes.
func TestSharedBucketAcrossProcesses(t *testing.T) {
	sa, sb := testShared(t)
	a, b := sa.Limiter("login", 0.1, 3, true), sb.Limiter("login", 0.1, 3, true)
	for i, l := range []*Limiter{a, b, a} {
		if err := l.Allow("@alice:hs"); err != nil {
			t.Fatalf("request %d within the burst refused: %v", i+1, err)
		}
	}
	if ms := retryAfter(t, b.Allow("@alice:hs")); ms < 9000 || ms > 10000 {
		t.Fatalf("retry_after_ms = %d, want ~10000 (one token at 0.1/s)", ms)
	}
	retryAfter(t, a.Allow("@alice:hs"))
	// Another key, and another limiter name, have buckets of their own.
	if err := b.Allow("@bob:hs"); err != nil {
		t.Fatalf("another key limited: %v", err)
	}
	if err := sb.Limiter("register", 0.1, 3, true).Allow("@alice:hs"); err != nil {
		t.Fatalf("another limiter's bucket spent: %v", err)
	}
}

// A bucket refills at the rate (by Redis's clock), for either process.
func TestSharedBucketRefills(t *testing.T) {
	sa, sb := testShared(t)
	a, b := sa.Limiter("msg", 20, 1, true), sb.Limiter("msg", 20, 1, true)
	if err := a.Allow("k"); err != nil {
		t.Fatal(err)
	}
	if ms := retryAfter(t, b.Allow("k")); ms > 50 {
		t.Fatalf("retry_after_ms = %d, want at most 50 (20/s)", ms)
	}
	time.Sleep(120 * time.Millisecond)
	if err := b.Allow("k"); err != nil {
		t.Fatalf("after the refill: %v", err)
	}
	// The refill is counted once: the token just taken leaves none.
	retryAfter(t, a.Allow("k"))
}

// With Redis unreachable a limiter counts in its own process, as
// without Redis: it still limits, and answers without hanging.
func TestSharedFallsBackToLocalBuckets(t *testing.T) {
	s, err := NewShared("redis://127.0.0.1:1/0", "x:", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	l := s.Limiter("login", 0.1, 2, true)
	start := time.Now()
	for i := range 2 {
		if err := l.Allow("k"); err != nil {
			t.Fatalf("request %d refused: %v", i+1, err)
		}
	}
	retryAfter(t, l.Allow("k"))
	if d := time.Since(start); d > 3*sharedTimeout+time.Second {
		t.Fatalf("three requests took %v with Redis down", d)
	}
}
