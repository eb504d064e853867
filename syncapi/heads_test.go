package syncapi

import (
	"context"
	"testing"
	"time"

	"github.com/myelin-chat/myelin/internal/notifier"
)

// fakeBroadcaster is a Broadcaster that is not the in-process Notifier.
type fakeBroadcaster struct{ *notifier.Notifier }

// TestHeadsCache: within one notification generation the shared heads
// are read once; a notification, fresh, or maxHeadsAge makes the next
// get read again; two reads in one generation keep the higher position
// of each stream; a Broadcaster other than the in-process Notifier
// (Redis) reads every time.
func TestHeadsCache(t *testing.T) {
	ctx := context.Background()
	n := notifier.New()
	c := newHeadsCache(n)
	reads := 0
	next := syncToken{Room: 5, Receipts: 2}
	read := func(context.Context) (syncToken, error) { reads++; return next, nil }
	get := func(fresh bool) syncToken {
		t.Helper()
		h, err := c.get(ctx, fresh, read)
		if err != nil {
			t.Fatal(err)
		}
		return h
	}
	if h := get(false); h != next || reads != 1 {
		t.Fatalf("first get = %+v after %d reads", h, reads)
	}
	next = syncToken{Room: 6}
	if h := get(false); h.Room != 5 || reads != 1 {
		t.Fatalf("second get in one generation = %+v after %d reads, want the cached entry", h, reads)
	}
	// fresh reads; the entry keeps the higher of each position.
	next = syncToken{Room: 4, Receipts: 3}
	if h := get(true); h != (syncToken{Room: 5, Receipts: 3}) || reads != 2 {
		t.Fatalf("fresh get = %+v after %d reads, want Room 5 Receipts 3 after 2", h, reads)
	}
	n.Notify("receipts", 3)
	next = syncToken{Room: 7, Receipts: 3}
	if h := get(false); h != next || reads != 3 {
		t.Fatalf("get after a notification = %+v after %d reads", h, reads)
	}
	c.mu.Lock()
	c.at = time.Now().Add(-maxHeadsAge)
	c.mu.Unlock()
	next = syncToken{Room: 8}
	if h := get(false); h != next || reads != 4 {
		t.Fatalf("get after maxHeadsAge = %+v after %d reads", h, reads)
	}

	remote := newHeadsCache(fakeBroadcaster{notifier.New()})
	reads = 0
	for range 3 {
		if _, err := remote.get(ctx, false, read); err != nil {
			t.Fatal(err)
		}
	}
	if reads != 3 {
		t.Fatalf("a non-local notifier read %d times for 3 gets, want 3", reads)
	}
}
