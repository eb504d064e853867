package clientapi

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"slices"
	"sync"
	"testing"
	"time"
)

// memTypingLog is a shared typing log in memory: one counter, and every
// tracker subscribed gets every change in position order.
type memTypingLog struct {
	mu       sync.Mutex
	pos      int64
	trackers []*typingTracker
	// hold, when set, keeps changes from being delivered (a reader that
	// lags); release delivers them.
	hold    bool
	pending []memEntry
}

type memEntry struct {
	pos     int64
	payload []byte
}

func (l *memTypingLog) Append(_ context.Context, payload []byte) (int64, error) {
	l.mu.Lock()
	l.pos++
	e := memEntry{l.pos, payload}
	if l.hold {
		l.pending = append(l.pending, e)
		l.mu.Unlock()
		return e.pos, nil
	}
	l.mu.Unlock()
	l.deliver(e)
	return e.pos, nil
}

func (l *memTypingLog) deliver(e memEntry) {
	var c typingChange
	_ = json.Unmarshal(e.payload, &c)
	for _, t := range l.trackers {
		t.apply(e.pos, e.pos-1, time.Now(), c)
	}
}

func (l *memTypingLog) release() {
	l.mu.Lock()
	pending := l.pending
	l.pending, l.hold = nil, false
	l.mu.Unlock()
	for _, e := range pending {
		l.deliver(e)
	}
}

func sharedTrackers(n int) (*memTypingLog, []*typingTracker) {
	log := &memTypingLog{}
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	for range n {
		t := newTypingTracker(func(string, int64) {})
		t.share(log, quiet)
		log.trackers = append(log.trackers, t)
	}
	return log, log.trackers
}

// state returns who types in roomID, the room's last change and the head.
func state(t *typingTracker, roomID string) ([]string, int64, int64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	var users []string
	for u := range t.rooms[roomID] {
		users = append(users, u)
	}
	slices.Sort(users)
	return users, t.changed[roomID], t.pos
}

// TestSharedTypingSameStateAtEachPosition: changes taken in by two
// trackers hold the same sets at the same positions in both; a refresh
// moves the head but not the room's change; an expired entry's stop does
// not end a later start of the same user.
func TestSharedTypingSameStateAtEachPosition(t *testing.T) {
	log, tr := sharedTrackers(2)
	defer tr[0].close()
	defer tr[1].close()
	ctx := context.Background()
	tr[0].set(ctx, "!r", "@a:x", true, time.Minute)
	tr[1].set(ctx, "!r", "@b:x", true, time.Minute)
	tr[1].set(ctx, "!r", "@a:x", true, time.Minute) // a refresh
	for i, tk := range tr {
		users, changed, head := state(tk, "!r")
		if !slices.Equal(users, []string{"@a:x", "@b:x"}) || changed != 2 || head != 3 {
			t.Fatalf("tracker %d: %v changed at %d, head %d; want [@a:x @b:x] at 2, head 3", i, users, changed, head)
		}
	}
	// A stop of the entry started at 1 (its timeout) finds the entry
	// renewed at 3: nothing changes.
	payload, _ := json.Marshal(typingChange{RoomID: "!r", UserID: "@a:x", IfPos: 1})
	if _, err := log.Append(ctx, payload); err != nil {
		t.Fatal(err)
	}
	for i, tk := range tr {
		if users, changed, head := state(tk, "!r"); len(users) != 2 || changed != 2 || head != 4 {
			t.Fatalf("tracker %d after a stale stop: %v changed at %d, head %d", i, users, changed, head)
		}
	}
	// The stop of the renewed entry ends it.
	payload, _ = json.Marshal(typingChange{RoomID: "!r", UserID: "@a:x", IfPos: 3})
	if _, err := log.Append(ctx, payload); err != nil {
		t.Fatal(err)
	}
	for i, tk := range tr {
		if users, changed, head := state(tk, "!r"); !slices.Equal(users, []string{"@b:x"}) || changed != 5 || head != 5 {
			t.Fatalf("tracker %d after the stop: %v changed at %d, head %d", i, users, changed, head)
		}
	}
}

// TestSharedTypingWaitsForItsChange: set returns once the tracker has
// applied its own change (read your writes), not before.
func TestSharedTypingWaitsForItsChange(t *testing.T) {
	log, tr := sharedTrackers(1)
	defer tr[0].close()
	log.hold = true
	done := make(chan struct{})
	go func() {
		tr[0].set(context.Background(), "!r", "@a:x", true, time.Minute)
		close(done)
	}()
	select {
	case <-done:
		t.Fatal("set returned before its change was applied")
	case <-time.After(200 * time.Millisecond):
	}
	log.release()
	select {
	case <-done:
	case <-time.After(2 * time.Second):
		t.Fatal("set did not return once its change was applied")
	}
	if users, _, _ := state(tr[0], "!r"); len(users) != 1 {
		t.Fatalf("typing %v, want @a:x", users)
	}
}

// TestSharedTypingExpiresOnce: the tracker that took a change in ends it
// at its timeout; the other's stop, later, changes nothing.
func TestSharedTypingExpiresOnce(t *testing.T) {
	_, tr := sharedTrackers(2)
	defer tr[0].close()
	defer tr[1].close()
	tr[0].set(context.Background(), "!r", "@a:x", true, 100*time.Millisecond)
	deadline := time.Now().Add(2 * time.Second)
	for {
		users0, _, _ := state(tr[0], "!r")
		users1, _, _ := state(tr[1], "!r")
		if len(users0) == 0 && len(users1) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("not expired: %v %v", users0, users1)
		}
		time.Sleep(10 * time.Millisecond)
	}
	_, changed, _ := state(tr[1], "!r")
	time.Sleep(typingExpiryGrace + 300*time.Millisecond)
	for i, tk := range tr {
		if _, c, _ := state(tk, "!r"); c != changed {
			t.Fatalf("tracker %d: the room changed again at %d after its expiry at %d", i, c, changed)
		}
	}
}

// TestSharedTypingGap: a tracker that missed positions drops its sets
// and reports their rooms as changed.
func TestSharedTypingGap(t *testing.T) {
	_, tr := sharedTrackers(1)
	tk := tr[0]
	defer tk.close()
	tk.apply(1, 0, time.Now(), typingChange{RoomID: "!r", UserID: "@a:x", Typing: true, TimeoutMS: 60000})
	tk.apply(5, 3, time.Now(), typingChange{RoomID: "!s", UserID: "@b:x", Typing: true, TimeoutMS: 60000})
	if users, changed, head := state(tk, "!r"); len(users) != 0 || changed != 5 || head != 5 {
		t.Fatalf("!r after the gap: %v changed at %d, head %d; want none, changed at 5", users, changed, head)
	}
	if users, _, _ := state(tk, "!s"); len(users) != 1 {
		t.Fatalf("!s after the gap: %v", users)
	}
}

// TestSharedTypingJumpWithoutGap: positions follow the clock, so they may
// jump; a change whose predecessor is the last one applied is no gap,
// and a change that names no predecessor (an earlier version's) falls
// back to positions one apart.
func TestSharedTypingJumpWithoutGap(t *testing.T) {
	_, tr := sharedTrackers(1)
	tk := tr[0]
	defer tk.close()
	tk.apply(1000, 0, time.Now(), typingChange{RoomID: "!r", UserID: "@a:x", Typing: true, TimeoutMS: 60000})
	tk.apply(5000, 1000, time.Now(), typingChange{RoomID: "!s", UserID: "@b:x", Typing: true, TimeoutMS: 60000})
	if users, changed, head := state(tk, "!r"); len(users) != 1 || changed != 1000 || head != 5000 {
		t.Fatalf("!r after a jump that missed nothing: %v changed at %d, head %d; want @a:x, changed at 1000", users, changed, head)
	}
	tk.apply(5001, -1, time.Now(), typingChange{RoomID: "!t", UserID: "@c:x", Typing: true, TimeoutMS: 60000})
	if users, _, _ := state(tk, "!r"); len(users) != 1 {
		t.Fatalf("!r after the next position without a predecessor: %v", users)
	}
	tk.apply(9000, -1, time.Now(), typingChange{RoomID: "!t", UserID: "@d:x", Typing: true, TimeoutMS: 60000})
	if users, changed, _ := state(tk, "!r"); len(users) != 0 || changed != 9000 {
		t.Fatalf("!r after a jump without a predecessor: %v changed at %d; want none, changed at 9000", users, changed)
	}
}

// TestSharedTypingAppliedOnce: a change handed back again (a reader that
// reads a stretch twice) is ignored: the head does not go back and no
// other room's typers are dropped as after a gap.
func TestSharedTypingAppliedOnce(t *testing.T) {
	_, tr := sharedTrackers(1)
	tk := tr[0]
	defer tk.close()
	start := func(user, room string) typingChange {
		return typingChange{RoomID: room, UserID: user, Typing: true, TimeoutMS: 60000}
	}
	tk.apply(1, 0, time.Now(), start("@a:x", "!r"))
	tk.apply(2, 1, time.Now(), start("@b:x", "!s"))
	tk.apply(1, 0, time.Now(), start("@a:x", "!r"))
	if users, changed, head := state(tk, "!s"); len(users) != 1 || changed != 2 || head != 2 {
		t.Fatalf("!s after change 1 came again: %v changed at %d, head %d; want @b:x changed at 2, head 2", users, changed, head)
	}
	tk.apply(3, 2, time.Now(), typingChange{RoomID: "!r", UserID: "@a:x"})
	if users, changed, head := state(tk, "!r"); len(users) != 0 || changed != 3 || head != 3 {
		t.Fatalf("!r after its stop: %v changed at %d, head %d", users, changed, head)
	}
}

// TestSharedTypingTimeoutFromWhenAdded: a start read late (a process
// that starts reads the log's last minutes) keeps only what is left of
// its timeout, counted from when the log added it, so a typer whose
// notification has all but run out is not shown for a whole timeout
// more.
func TestSharedTypingTimeoutFromWhenAdded(t *testing.T) {
	log, tr := sharedTrackers(1)
	tk := tr[0]
	defer tk.close()
	added := time.Now().Add(-59900 * time.Millisecond)
	log.pos = 1 // the start below takes the log's first position
	tk.apply(1, 0, added, typingChange{RoomID: "!r", UserID: "@a:x", Typing: true, TimeoutMS: 60000, Origin: tk.origin})
	if users, _, _ := state(tk, "!r"); len(users) != 1 {
		t.Fatalf("typing %v right after the start was read, want @a:x", users)
	}
	deadline := time.Now().Add(2 * time.Second)
	for {
		users, _, _ := state(tk, "!r")
		if len(users) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("typing %v 2s after a start with 0.1s of its timeout left", users)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
