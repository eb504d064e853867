package federationapi

import (
	"testing"
	"time"

	"github.com/myelin-chat/myelin/config"
)

// TestSenderBackoffIsCapped: the wait before retrying a destination is
// min_backoff doubled per failure and never more than max_backoff, also
// after very many failures (no overflow); unset values fall back to the
// defaults (10 s, 24 h). Issue 7: "exponential backoff per destination
// (capped)".
func TestSenderBackoffIsCapped(t *testing.T) {
	t.Parallel()
	q := &sender{s: &Server{cfg: config.Federation{
		MinBackoff: config.Duration(time.Second), MaxBackoff: config.Duration(time.Minute)}}}
	want := map[int]time.Duration{
		1: time.Second, 2: 2 * time.Second, 3: 4 * time.Second, 6: 32 * time.Second,
		7: time.Minute, 8: time.Minute, 64: time.Minute, 1 << 20: time.Minute,
	}
	for failures, w := range want {
		if got := q.backoff(failures); got != w {
			t.Errorf("backoff(%d) = %v, want %v", failures, got, w)
		}
	}
	prev := time.Duration(0)
	for failures := 1; failures < 200; failures++ {
		got := q.backoff(failures)
		if got < prev || got > time.Minute || got <= 0 {
			t.Fatalf("backoff(%d) = %v after %v: not monotonic within (0, max_backoff]", failures, got, prev)
		}
		prev = got
	}

	defaults := &sender{s: &Server{cfg: config.Federation{}}}
	if got := defaults.backoff(1); got != 10*time.Second {
		t.Errorf("default first backoff %v, want 10s", got)
	}
	if got := defaults.backoff(1000); got != 24*time.Hour {
		t.Errorf("default cap %v, want 24h", got)
	}
}
