package syncapi

import (
	"context"
	"encoding/json"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/myelin-chat/myelin/roomserver"
)

// windowRooms is a Rooms whose RoomsWithEvents answers from a fixed
// log and counts its calls; gate, when set, holds every call until it
// is closed.
type windowRooms struct {
	Rooms
	calls atomic.Int32
	gate  chan struct{}
	fail  atomic.Bool
}

func (r *windowRooms) RoomsWithEvents(_ context.Context, from, to int64, limit int) (map[string]bool, bool, error) {
	r.calls.Add(1)
	if r.gate != nil {
		<-r.gate
	}
	if r.fail.Load() {
		return nil, false, errors.New("database is gone")
	}
	// The log: position p is an event in room "!r<p%2>", a state event
	// when p is a multiple of 3.
	out := map[string]bool{}
	n := 0
	for p := from + 1; p <= to; p++ {
		n++
		room := "!r0"
		if p%2 == 1 {
			room = "!r1"
		}
		out[room] = out[room] || p%3 == 0
	}
	return out, n <= limit, nil
}

// TestNewsCache: requests asking about the same window share one read,
// even when they ask at once (the others wait for the first); each
// window has its own entry with its own answer; a failed read is not
// kept; the cache holds at most max windows.
func TestNewsCache(t *testing.T) {
	ctx := context.Background()
	src := &windowRooms{gate: make(chan struct{})}
	c := newNewsCache(src, 2)
	var wg sync.WaitGroup
	answers := make([]map[string]bool, 20)
	for i := range answers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rooms, complete, err := c.roomsWithEvents(ctx, 2, 4, 10)
			if err != nil || !complete {
				t.Errorf("roomsWithEvents: %v, complete %v", err, complete)
			}
			answers[i] = rooms
		}()
	}
	for src.calls.Load() == 0 {
		time.Sleep(time.Millisecond)
	}
	time.Sleep(10 * time.Millisecond) // the others are now waiting for the first
	close(src.gate)
	wg.Wait()
	if n := src.calls.Load(); n != 1 {
		t.Fatalf("20 requests for one window read %d times, want 1", n)
	}
	for _, a := range answers {
		if len(a) != 2 || !a["!r1"] || a["!r0"] {
			t.Fatalf("answer %v, want !r1 with a state event (3) and !r0 without", a)
		}
	}
	// Another window, another limit: their own reads and answers.
	if rooms, complete, _ := c.roomsWithEvents(ctx, 3, 4, 10); len(rooms) != 1 || !complete || rooms["!r0"] {
		t.Fatalf("window (3, 4]: %v, %v", rooms, complete)
	}
	if _, complete, _ := c.roomsWithEvents(ctx, 0, 4, 2); complete {
		t.Fatal("4 events with limit 2 reported complete")
	}
	if n := src.calls.Load(); n != 3 {
		t.Fatalf("reads = %d, want 3", n)
	}
	if len(c.entries) > 2 {
		t.Fatalf("cache holds %d windows, max 2", len(c.entries))
	}
	// A failed read is reported and not kept.
	src.fail.Store(true)
	if _, _, err := c.roomsWithEvents(ctx, 7, 9, 10); err == nil {
		t.Fatal("a failed read returned no error")
	}
	src.fail.Store(false)
	if rooms, _, err := c.roomsWithEvents(ctx, 7, 9, 10); err != nil || len(rooms) != 2 {
		t.Fatalf("after a failure: %v, %v (the failure must not be kept)", rooms, err)
	}
	if n := src.calls.Load(); n != 5 {
		t.Fatalf("reads = %d, want 5", n)
	}
}

// countingPush is a Push that counts UnreadCounts calls.
type countingPush struct{ calls int }

func (p *countingPush) UnreadCounts(_ context.Context, _ string, roomIDs []string, roomPos, _ int64) (map[string]RoomUnread, int64, error) {
	p.calls++
	out := map[string]RoomUnread{}
	for _, id := range roomIDs {
		out[id] = RoomUnread{Total: UnreadCounts{Notifications: 3, Highlights: 1}}
	}
	return out, 6, nil
}
func (p *countingPush) CountsPosition(context.Context) (int64, error) { return 6, nil }
func (p *countingPush) PushRules(context.Context, string) (json.RawMessage, error) {
	return json.RawMessage(`{}`), nil
}

// TestFillUnreadSkipsUncountedLongPoll: a long poll whose push consumer
// has counted nothing past its token's Unread, with no receipt since the
// token and no room sent whole, does not read counts (the client has
// them) and keeps its Unread; the counts are read as soon as any of
// those differs, and by any sync that is not a long poll.
func TestFillUnreadSkipsUncountedLongPoll(t *testing.T) {
	ctx := context.Background()
	since := syncToken{Room: 5, Receipts: 2, Unread: 5}
	base := syncToken{Room: 6, Receipts: 2, Unread: 5}
	memberships := []roomserver.MembershipEntry{{RoomID: "!a:x", Membership: "join", StreamPos: 1}}
	for _, tc := range []struct {
		name      string
		heads     syncToken
		timeout   time.Duration
		whole     bool
		wantRead  bool
		wantUnrd  int64
		wantCount int
	}{
		{name: "nothing counted since the token", heads: base, timeout: time.Second, wantUnrd: 5},
		{name: "counted past the token", heads: syncToken{Room: 6, Receipts: 2, Unread: 6}, timeout: time.Second, wantRead: true, wantUnrd: 6, wantCount: 3},
		{name: "a receipt since the token", heads: syncToken{Room: 6, Receipts: 3, Unread: 5}, timeout: time.Second, wantRead: true, wantUnrd: 6, wantCount: 3},
		{name: "a room sent whole", heads: base, timeout: time.Second, whole: true, wantRead: true, wantUnrd: 6, wantCount: 3},
		{name: "not a long poll", heads: base, wantRead: true, wantUnrd: 6, wantCount: 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			push := &countingPush{}
			s := &Server{push: push, news: newNewsCache(&windowRooms{}, 8)}
			tok := since
			b := &roomBuilder{s: s, req: &syncRequest{userID: "@u:x", since: &tok, timeout: tc.timeout},
				since: since, heads: tc.heads, news: map[string]bool{"!a:x": false}, sentWhole: tc.whole}
			joined := map[string]*joinedRoom{"!a:x": {Timeline: timeline{Events: []json.RawMessage{}}}}
			if err := s.fillUnread(ctx, b, memberships, joined); err != nil {
				t.Fatal(err)
			}
			if read := push.calls > 0; read != tc.wantRead {
				t.Fatalf("counts read: %v, want %v", read, tc.wantRead)
			}
			if b.heads.Unread != tc.wantUnrd {
				t.Fatalf("next token's Unread = %d, want %d", b.heads.Unread, tc.wantUnrd)
			}
			got := joined["!a:x"].UnreadNotifications
			switch {
			case tc.wantCount == 0 && got != nil:
				t.Fatalf("unread_notifications %+v, want none", got)
			case tc.wantCount > 0 && (got == nil || got.NotificationCount != tc.wantCount):
				t.Fatalf("unread_notifications %+v, want %d", got, tc.wantCount)
			}
		})
	}
}
