package syncapi

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"
)

// gatedPush is a PushBatch whose reads each block until released; every
// answer carries the read's number (its notification count) and the
// asking user (its highlight count is the user's index), so a test sees
// which read answered whom.
type gatedPush struct {
	mu      sync.Mutex
	reads   []([]UnreadQuery) // the queries of each read, in order
	started chan int          // the number of each read, when it starts
	release chan struct{}     // one receive per read
}

func (p *gatedPush) UnreadCountsOfUsers(_ context.Context, queries []UnreadQuery, _ int64) ([]map[string]RoomUnread, int64, error) {
	p.mu.Lock()
	p.reads = append(p.reads, append([]UnreadQuery(nil), queries...))
	n := len(p.reads)
	p.mu.Unlock()
	p.started <- n
	<-p.release
	out := make([]map[string]RoomUnread, len(queries))
	for i, q := range queries {
		out[i] = map[string]RoomUnread{}
		var user int
		fmt.Sscanf(q.UserID, "@u%d:x", &user)
		for _, r := range q.RoomIDs {
			out[i][r] = RoomUnread{Total: UnreadCounts{Notifications: n, Highlights: user}}
		}
	}
	return out, int64(10 * n), nil
}

// TestCountsBatcher: the long polls' counts reads are grouped, and a
// grouped answer is never staler or anyone else's: a request that asks
// while a read is running is answered by a later read (one read for all
// who asked meanwhile), each request gets its own user's rooms only,
// and the first request ending does not fail the others.
func TestCountsBatcher(t *testing.T) {
	push := &gatedPush{started: make(chan int, 10), release: make(chan struct{})}
	c := &countsBatcher{push: push}
	type answer struct {
		counts  map[string]RoomUnread
		counted int64
		err     error
	}
	ask := func(ctx context.Context, user int, rooms ...string) chan answer {
		ch := make(chan answer, 1)
		go func() {
			counts, counted, err := c.unreadCounts(ctx, fmt.Sprintf("@u%d:x", user), rooms, 0)
			ch <- answer{counts, counted, err}
		}()
		return ch
	}
	leadCtx, cancelLead := context.WithCancel(context.Background())
	first := ask(leadCtx, 0, "!a:x")
	if n := <-push.started; n != 1 {
		t.Fatalf("read %d started first", n)
	}
	// Asked while read 1 runs: they wait for read 2, which they share.
	var later []chan answer
	for u := 1; u <= 5; u++ {
		rooms := []string{"!a:x"}
		if u%2 == 0 {
			rooms = []string{"!b:x"}
		}
		later = append(later, ask(context.Background(), u, rooms...))
	}
	waitFor(t, func() bool {
		var ok bool
		c.reads.inspect(struct{}{}, func(_ bool, next *countsQueries) {
			ok = next != nil && len(next.queries) == 5
		})
		return ok
	})
	cancelLead() // the first request ends; the reads go on
	push.release <- struct{}{}
	<-first // its read's answer or its context's error: either is right
	if n := <-push.started; n != 2 {
		t.Fatalf("read %d started second", n)
	}
	push.release <- struct{}{}
	for i, ch := range later {
		user := i + 1
		a := <-ch
		if a.err != nil {
			t.Fatal(a.err)
		}
		want := "!a:x"
		if user%2 == 0 {
			want = "!b:x"
		}
		if len(a.counts) != 1 || a.counts[want].Total.Notifications != 2 || a.counts[want].Total.Highlights != user || a.counted != 20 {
			t.Errorf("user %d: %+v (counted %d), want read 2's answer for %s alone", user, a.counts, a.counted, want)
		}
	}
	push.mu.Lock()
	defer push.mu.Unlock()
	if len(push.reads) != 2 || len(push.reads[0]) != 1 || len(push.reads[1]) != 5 {
		t.Fatalf("reads: %v", push.reads)
	}
	// Nothing runs now: the next request reads at once.
	var idle bool
	c.reads.inspect(struct{}{}, func(running bool, next *countsQueries) {
		idle = !running && next == nil
	})
	if !idle {
		t.Fatal("batcher still busy after the last read")
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not reached")
		}
		time.Sleep(time.Millisecond)
	}
}
