package syncapi

import (
	"context"
	"math"
	"testing"
	"time"

	"github.com/myelin-chat/myelin/internal/notifier"
	"github.com/myelin-chat/myelin/roomserver"
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
	c := newHeadsCache(n, true)
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

	remote := newHeadsCache(fakeBroadcaster{notifier.New()}, true)
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

// TestHeadsCacheCarriesRoomAndCounts: after a notification of the room
// stream or the push consumer's counts alone, the next generation's
// heads are the cached ones raised to the notified positions (Unread
// never past Room), with no read; a notification of any other stream,
// or an entry whose last read is maxHeadsAge old, reads again. Without
// push, Unread does not follow the counts stream.
func TestHeadsCacheCarriesRoomAndCounts(t *testing.T) {
	ctx := context.Background()
	n := notifier.New()
	c := newHeadsCache(n, true)
	next := syncToken{Room: 20, Receipts: 2, Unread: 18}
	read := func(context.Context) (syncToken, error) { return next, nil }
	get := func(want syncToken, wantReads int) {
		t.Helper()
		h, err := c.get(ctx, false, read)
		if err != nil {
			t.Fatal(err)
		}
		if h != want || c.reads != wantReads {
			t.Fatalf("get = %+v after %d reads, want %+v after %d", h, c.reads, want, wantReads)
		}
	}
	get(next, 1)
	// A database read may be ahead of the notifications: a lower
	// notified position never lowers a head.
	n.Notify(roomserver.Stream, 15)
	get(syncToken{Room: 20, Receipts: 2, Unread: 18}, 1)
	n.Notify(roomserver.Stream, 22)
	get(syncToken{Room: 22, Receipts: 2, Unread: 18}, 1)
	n.Notify(UnreadCountsStream, 21)
	get(syncToken{Room: 22, Receipts: 2, Unread: 21}, 1)
	n.Notify(UnreadCountsStream, 30) // never past Room
	get(syncToken{Room: 22, Receipts: 2, Unread: 22}, 1)
	// Another stream: read again.
	n.Notify(ReceiptStream, 3)
	next = syncToken{Room: 23, Receipts: 3, Unread: 23}
	get(next, 2)
	// The carried entry keeps the age of its last read.
	c.mu.Lock()
	c.at = time.Now().Add(-maxHeadsAge)
	c.mu.Unlock()
	n.Notify(roomserver.Stream, 24)
	next = syncToken{Room: 25, Receipts: 3, Unread: 24}
	get(next, 3)

	noPush := newHeadsCache(n, false)
	next = syncToken{Room: 25, Receipts: 3}
	h, err := noPush.get(ctx, false, read)
	if err != nil || h != next {
		t.Fatalf("get = %+v, %v", h, err)
	}
	n.Notify(UnreadCountsStream, 40)
	n.Notify(roomserver.Stream, 26)
	if h, err = noPush.get(ctx, false, read); err != nil || h != (syncToken{Room: 26, Receipts: 3}) || noPush.reads != 1 {
		t.Fatalf("without push: get = %+v after %d reads, want Room 26 and Unread 0 after 1", h, noPush.reads)
	}
}

// TestHeadsCacheCarriesCountsInTx: with counts written in each event's
// own transaction the push component's counts position is
// math.MaxInt64, and the roomserver notifies the room stream before
// UnreadCountsStream. A get between the two notifications carries Room
// without a read, and Unread must follow it: the counts of every
// committed event are committed. Had Unread stayed behind, a long poll
// woken by the room notification would answer with the message and no
// unread_notifications (fillUnread sees nothing counted past its
// token), and the counts notification would wake it a second time.
// Capping: get never returns Unread past Room, read or carried.
func TestHeadsCacheCarriesCountsInTx(t *testing.T) {
	ctx := context.Background()
	for _, local := range []bool{true, false} {
		var b notifier.Broadcaster = notifier.New()
		if !local {
			b = fakeBroadcaster{notifier.New()}
		}
		c := newHeadsCache(b, true)
		next := syncToken{Room: 20, Receipts: 2, Unread: math.MaxInt64}
		read := func(context.Context) (syncToken, error) { return next, nil }
		h, err := c.get(ctx, false, read)
		if err != nil || h != (syncToken{Room: 20, Receipts: 2, Unread: 20}) {
			t.Fatalf("local %v: first get = %+v, %v; want Unread capped at Room 20", local, h, err)
		}
		if !local {
			continue
		}
		// The room stream is notified; UnreadCountsStream not yet.
		b.Notify(roomserver.Stream, 21)
		if h, err = c.get(ctx, false, read); err != nil || h != (syncToken{Room: 21, Receipts: 2, Unread: 21}) || c.reads != 1 {
			t.Fatalf("get after the room notification alone = %+v after %d reads, want Room 21 Unread 21 after 1 (carried)", h, c.reads)
		}
		b.Notify(UnreadCountsStream, 21)
		if h, err = c.get(ctx, false, read); err != nil || h != (syncToken{Room: 21, Receipts: 2, Unread: 21}) || c.reads != 1 {
			t.Fatalf("get after the counts notification = %+v after %d reads, want Room 21 Unread 21 after 1", h, c.reads)
		}
	}
}
