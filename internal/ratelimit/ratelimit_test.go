package ratelimit

import (
	"testing"
	"time"

	"github.com/myelin-chat/myelin/internal/mxerr"
)

func TestBucket(t *testing.T) {
	now := time.Unix(1000, 0)
	l := New(2, 3, true)
	l.now = func() time.Time { return now }
	for i := 0; i < 3; i++ {
		if err := l.Allow("a"); err != nil {
			t.Fatalf("request %d within burst refused: %v", i, err)
		}
	}
	err := l.Allow("a")
	if !mxerr.Is(err, mxerr.LimitExceeded) {
		t.Fatalf("4th request: got %v, want M_LIMIT_EXCEEDED", err)
	}
	e, _ := mxerr.As(err)
	if ms := e.Fields["retry_after_ms"].(int64); ms != 500 {
		t.Errorf("retry_after_ms = %d, want 500 (one token at 2/s)", ms)
	}
	if err := l.Allow("b"); err != nil {
		t.Errorf("another key is limited: %v", err)
	}
	now = now.Add(500 * time.Millisecond)
	if err := l.Allow("a"); err != nil {
		t.Errorf("after refill: %v", err)
	}
	if err := l.Allow("a"); err == nil {
		t.Errorf("bucket should be empty again")
	}
}

func TestDisabled(t *testing.T) {
	l := New(0.001, 1, false)
	for i := 0; i < 10; i++ {
		if err := l.Allow("a"); err != nil {
			t.Fatalf("disabled limiter refused: %v", err)
		}
	}
}
