package notifier

import (
	"context"
	"sync"
	"testing"
	"time"
)

// entryRecorder keeps what a Log applied.
type entryRecorder struct {
	mu      sync.Mutex
	entries []LogEntry
}

func (r *entryRecorder) apply(e LogEntry) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.entries = append(r.entries, e)
}

func (r *entryRecorder) seen() []LogEntry {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]LogEntry(nil), r.entries...)
}

// TestLogOrdersEveryProcessAlike: two processes append to one log; each
// applies every message, its own included, in the same order with
// increasing positions, each naming its predecessor; a process that
// starts later reads the kept messages from the first; Head is at least
// the last position given out.
func TestLogOrdersEveryProcessAlike(t *testing.T) {
	u := testRedisURL(t)
	prefix := testPrefix(t, u)
	t.Cleanup(func() { rawClient(t, u).Del(context.Background(), prefix+"log", prefix+"pos") })
	ctx := context.Background()
	var recA, recB, recC entryRecorder
	a, err := NewLog(ctx, u, prefix, time.Minute, nil, recA.apply)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	b, err := NewLog(ctx, u, prefix, time.Minute, nil, recB.apply)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	// Before any message the counter starts at the clock, so positions a
	// process gave out from its own clock before the log read as given.
	start, err := b.Head(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if start < time.Now().Add(-time.Hour).UnixMilli() {
		t.Fatalf("Head before any message is %d, not from the clock", start)
	}
	var wg sync.WaitGroup
	for i, l := range []*Log{a, b, a, b} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range 25 {
				if _, err := l.Append(ctx, []byte{byte('a' + i), byte(j)}); err != nil {
					t.Error(err)
				}
			}
		}()
	}
	wg.Wait()
	head, err := a.Head(ctx)
	if err != nil {
		t.Fatal(err)
	}
	c, err := NewLog(ctx, u, prefix, time.Minute, nil, recC.apply)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	deadline := time.Now().Add(5 * time.Second)
	for len(recA.seen()) < 100 || len(recB.seen()) < 100 || len(recC.seen()) < 100 {
		if time.Now().After(deadline) {
			t.Fatalf("applied %d, %d and %d of 100", len(recA.seen()), len(recB.seen()), len(recC.seen()))
		}
		time.Sleep(10 * time.Millisecond)
	}
	ea, eb, ec := recA.seen(), recB.seen(), recC.seen()
	if len(ea) != 100 || len(eb) != 100 || len(ec) != 100 {
		t.Fatalf("applied %d, %d and %d, want 100 each", len(ea), len(eb), len(ec))
	}
	for i := range ea {
		if i > 0 && (ea[i].Pos <= ea[i-1].Pos || ea[i].Prev != ea[i-1].Pos) {
			t.Fatalf("positions %d then %d (naming %d as its predecessor)", ea[i-1].Pos, ea[i].Pos, ea[i].Prev)
		}
		if ea[i].Prev != eb[i].Prev || ea[i].Prev != ec[i].Prev {
			t.Fatalf("message %d: predecessors %d, %d, %d", i, ea[i].Prev, eb[i].Prev, ec[i].Prev)
		}
		if ea[i].Pos != eb[i].Pos || ea[i].Pos != ec[i].Pos || string(ea[i].Payload) != string(eb[i].Payload) || string(ea[i].Payload) != string(ec[i].Payload) {
			t.Fatalf("message %d differs: %d %q, %d %q, %d %q", i, ea[i].Pos, ea[i].Payload, eb[i].Pos, eb[i].Payload, ec[i].Pos, ec[i].Payload)
		}
	}
	if ea[0].Pos <= start || ea[0].Prev != 0 || ea[99].Pos > head {
		t.Fatalf("positions %d to %d, Head %d before and %d after", ea[0].Pos, ea[99].Pos, start, head)
	}
	// The counter starts at the clock: positions grow even if Redis
	// loses the counter.
	if first := ea[0].Pos; first < time.Now().Add(-time.Hour).UnixMilli() {
		t.Fatalf("first position %d is not from the clock", first)
	}
}

// TestLogFollowsTheClock: a counter behind Redis's clock (left by a
// deployment that then ran as one process without Redis, whose positions
// started at its own clock) is raised to the clock by Head and by Append,
// so that the single process's positions read as given out and every new
// message comes after them.
func TestLogFollowsTheClock(t *testing.T) {
	u := testRedisURL(t)
	prefix := testPrefix(t, u)
	raw := rawClient(t, u)
	t.Cleanup(func() { raw.Del(context.Background(), prefix+"log", prefix+"pos") })
	ctx := context.Background()
	if err := raw.Set(ctx, prefix+"pos", 5, 0).Err(); err != nil {
		t.Fatal(err)
	}
	var rec entryRecorder
	l, err := NewLog(ctx, u, prefix, time.Minute, nil, rec.apply)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	single := time.Now().Add(-time.Second).UnixMilli() + 3 // a single process's position
	head, err := l.Head(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if head < single {
		t.Fatalf("Head %d is behind a position %d a single process gave out", head, single)
	}
	p1, err := l.Append(ctx, []byte("x"))
	if err != nil {
		t.Fatal(err)
	}
	p2, err := l.Append(ctx, []byte("y"))
	if err != nil {
		t.Fatal(err)
	}
	if p1 <= head || p2 <= p1 {
		t.Fatalf("positions %d, %d after Head %d", p1, p2, head)
	}
	deadline := time.Now().Add(5 * time.Second)
	for len(rec.seen()) < 2 {
		if time.Now().After(deadline) {
			t.Fatalf("applied %d of 2", len(rec.seen()))
		}
		time.Sleep(10 * time.Millisecond)
	}
	if e := rec.seen(); e[0].Pos != p1 || e[0].Prev != 0 || e[1].Pos != p2 || e[1].Prev != p1 {
		t.Fatalf("applied %+v, want %d after 0 and %d after %d", e, p1, p2, p1)
	}
}

// TestLogEntriesOnTheProcessClock: a process whose clock is an hour ahead
// of Redis's (and one an hour behind) reads each entry's At on its own
// clock, so a typing timeout counted from it against its clock neither
// ends at once nor lasts an hour too long.
func TestLogEntriesOnTheProcessClock(t *testing.T) {
	u := testRedisURL(t)
	ctx := context.Background()
	for _, off := range []time.Duration{time.Hour, -time.Hour} {
		prefix := testPrefix(t, u)
		t.Cleanup(func() { rawClient(t, u).Del(context.Background(), prefix+"log", prefix+"pos") })
		clock := func() time.Time { return time.Now().Add(off) }
		rec := &entryRecorder{}
		l, err := newLog(ctx, u, prefix, time.Minute, nil, rec.apply, clock)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := l.Append(ctx, []byte("x")); err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(5 * time.Second)
		for len(rec.seen()) == 0 && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
		l.Close()
		seen := rec.seen()
		if len(seen) != 1 {
			t.Fatalf("clock %v: applied %d entries, want 1", off, len(seen))
		}
		if d := clock().Sub(seen[0].At); d < -time.Second || d > 5*time.Second {
			t.Fatalf("clock %v: the entry's At is %v before the process's clock, want within seconds (Redis's clock read on the process's)", off, d)
		}
	}
}

// TestLogAppendFollowsTheClock: Append raises a counter behind Redis's
// clock by itself, without a Head before it (a process whose first act
// after the deployment went back to several processes is a typing
// change), so its message comes after the positions a single process
// gave out from its clock.
func TestLogAppendFollowsTheClock(t *testing.T) {
	u := testRedisURL(t)
	prefix := testPrefix(t, u)
	raw := rawClient(t, u)
	t.Cleanup(func() { raw.Del(context.Background(), prefix+"log", prefix+"pos") })
	ctx := context.Background()
	if err := raw.Set(ctx, prefix+"pos", 5, 0).Err(); err != nil {
		t.Fatal(err)
	}
	l, err := NewLog(ctx, u, prefix, time.Minute, nil, func(LogEntry) {})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	single := time.Now().Add(-time.Second).UnixMilli() + 3 // a single process's position
	p, err := l.Append(ctx, []byte("x"))
	if err != nil {
		t.Fatal(err)
	}
	if p <= single {
		t.Fatalf("Append gave %d, behind a position %d a single process gave out", p, single)
	}
}
