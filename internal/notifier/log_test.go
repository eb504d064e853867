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
// consecutive positions; a process that starts later reads the kept
// messages from the first; Head is the last position given out.
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
		if i > 0 && ea[i].Pos != ea[i-1].Pos+1 {
			t.Fatalf("positions %d then %d", ea[i-1].Pos, ea[i].Pos)
		}
		if ea[i].Pos != eb[i].Pos || ea[i].Pos != ec[i].Pos || string(ea[i].Payload) != string(eb[i].Payload) || string(ea[i].Payload) != string(ec[i].Payload) {
			t.Fatalf("message %d differs: %d %q, %d %q, %d %q", i, ea[i].Pos, ea[i].Payload, eb[i].Pos, eb[i].Payload, ec[i].Pos, ec[i].Payload)
		}
	}
	if ea[0].Pos != start+1 || ea[99].Pos != head {
		t.Fatalf("positions %d to %d, Head %d before and %d after", ea[0].Pos, ea[99].Pos, start, head)
	}
	// The counter starts at the clock: positions grow even if Redis
	// loses the counter.
	if first := ea[0].Pos; first < time.Now().Add(-time.Hour).UnixMilli() {
		t.Fatalf("first position %d is not from the clock", first)
	}
}
