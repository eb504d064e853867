package pushserver

import (
	"context"
	"log/slog"
	"math"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/myelin-chat/myelin/clientapi"
	"github.com/myelin-chat/myelin/internal/notifier"
	"github.com/myelin-chat/myelin/roomserver"
)

// countingStreams stands in for the roomserver and clientapi: it counts
// the consumer's reads of each stream and has nothing new to give.
type countingStreams struct {
	Rooms
	eventReads, receiptReads atomic.Int64
	lastEventRead            atomic.Int64 // time.Now().UnixNano()
}

func (c *countingStreams) StreamPosition(context.Context) (int64, error) {
	c.lastEventRead.Store(time.Now().UnixNano())
	c.eventReads.Add(1)
	return 0, nil
}

func (c *countingStreams) JoinsAfter(context.Context, int64, int) (int64, []*roomserver.Event, error) {
	c.lastEventRead.Store(time.Now().UnixNano())
	c.eventReads.Add(1)
	return 0, nil, nil
}

func (c *countingStreams) ReceiptsAfter(context.Context, int64, int) ([]clientapi.Receipt, error) {
	c.receiptReads.Add(1)
	return nil, nil
}

// A wake reads only the stream whose position moved: typing or the
// consumer's own counts stream read nothing, a receipt reads receipts
// only, a room event reads room events only. The first run reads both.
func TestConsumerReadsOnlyAdvancedStreams(t *testing.T) {
	streams := &countingStreams{}
	n := notifier.New()
	s := &Server{rooms: streams, receipts: streams, notifier: n, log: slog.Default()}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.runConsumer(ctx)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	want := func(what string, events, receipts int64) {
		t.Helper()
		deadline := time.Now().Add(20 * time.Second)
		for streams.eventReads.Load() != events || streams.receiptReads.Load() != receipts {
			if time.Now().After(deadline) {
				t.Fatalf("%s: %d room event reads, %d receipt reads; want %d, %d", what,
					streams.eventReads.Load(), streams.receiptReads.Load(), events, receipts)
			}
			time.Sleep(time.Millisecond)
		}
		// And nothing more follows.
		time.Sleep(50 * time.Millisecond)
		if streams.eventReads.Load() != events || streams.receiptReads.Load() != receipts {
			t.Fatalf("%s: %d room event reads, %d receipt reads; want %d, %d", what,
				streams.eventReads.Load(), streams.receiptReads.Load(), events, receipts)
		}
	}
	want("start", 1, 1)
	n.Notify("typing", 1)
	n.Notify(CountsStream, 1)
	want("typing and counts", 1, 1)
	n.Notify(receiptsStream, 1)
	want("a receipt", 1, 2)
	n.Notify(roomserver.Stream, 1)
	want("a room event", 2, 2)
}

// A busy consumer's passes are at least passEvery apart: 200 room-event
// notifications 100µs apart (a commit every 100µs) are read in a handful
// of passes, not one per notification, and the last one is read: nothing
// is left behind. A wake after a quiet spell is served at once.
func TestConsumerPassesSpacedUnderLoad(t *testing.T) {
	streams := &countingStreams{}
	n := notifier.New()
	// Still counting events from before CountInTx (inTxFrom ahead): the
	// passes that evaluate events are passEvery apart.
	s := &Server{rooms: streams, receipts: streams, notifier: n, log: slog.Default(), inTxFrom: math.MaxInt64}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.runConsumer(ctx)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	waitReads := func(what string, atLeast int64) {
		t.Helper()
		deadline := time.Now().Add(20 * time.Second)
		for streams.eventReads.Load() < atLeast {
			if time.Now().After(deadline) {
				t.Fatalf("%s: %d room event reads, want at least %d", what, streams.eventReads.Load(), atLeast)
			}
			time.Sleep(50 * time.Microsecond)
		}
	}
	waitReads("start", 1)
	time.Sleep(10 * time.Millisecond) // quiet: the next wake is served at once
	before := streams.eventReads.Load()
	start := time.Now()
	n.Notify(roomserver.Stream, 1)
	waitReads("a wake after a quiet spell", before+1)
	if d := time.Since(start); d >= time.Second {
		t.Fatalf("a wake after a quiet spell was read after %v", d)
	}
	time.Sleep(10 * time.Millisecond)
	before = streams.eventReads.Load()
	const notifications = 200
	start = time.Now()
	var last time.Time
	for i := range notifications {
		notified := time.Now()
		n.Notify(roomserver.Stream, int64(2+i))
		last = time.Now()
		for time.Since(notified) < 100*time.Microsecond {
		}
	}
	elapsed := time.Since(start)
	// The last notification is read by a pass that starts after it.
	// Wait for that read rather than for a fixed spell: on a loaded
	// machine the consumer goroutine can be off the CPU for longer than
	// a few passEvery, and the read then comes later than 4*passEvery.
	deadline := time.Now().Add(20 * time.Second)
	for !time.Unix(0, streams.lastEventRead.Load()).After(last) {
		if time.Now().After(deadline) {
			t.Fatalf("no read after the last notification (last read %v before it)",
				last.Sub(time.Unix(0, streams.lastEventRead.Load())))
		}
		time.Sleep(50 * time.Microsecond)
	}
	reads := streams.eventReads.Load() - before
	// One pass per passEvery while the burst lasted, plus the one for
	// its last notification; the burst lasts at least 20ms.
	if limit := int64(elapsed/passEvery) + 2; reads > limit || reads >= notifications/2 {
		t.Fatalf("%d passes for %d notifications over %v, want at most %d", reads, notifications, elapsed, limit)
	}
	before = streams.eventReads.Load()
	time.Sleep(3 * passEvery)
	if got := streams.eventReads.Load(); got != before {
		t.Fatalf("passes went on after the burst: %d more", got-before)
	}
	t.Logf("%d passes for %d notifications over %v", reads, notifications, elapsed)
}

// readRecorder stands in for the roomserver's event stream: a head at 10,
// a join (of a remote user) at 7 and a message at 9, and a count of each
// read.
type readRecorder struct {
	Rooms
	streamPos, eventsAfter, joinsAfter int
}

func (r *readRecorder) StreamPosition(context.Context) (int64, error) {
	r.streamPos++
	return 10, nil
}

func (r *readRecorder) EventsAfter(_ context.Context, after int64, _ int) ([]*roomserver.Event, error) {
	r.eventsAfter++
	return []*roomserver.Event{{StreamPos: 9, Type: "m.room.message"}}, nil
}

func (r *readRecorder) JoinsAfter(_ context.Context, after int64, _ int) (int64, []*roomserver.Event, error) {
	r.joinsAfter++
	return 10, []*roomserver.Event{{StreamPos: 7, Type: "m.room.member", Membership: "join", StateKey: new("@x:elsewhere")}}, nil
}

// Past inTxFrom every event was counted in its own transaction, so a pass
// reads the joins and the head in one read (JoinsAfter), not every event
// and the head in two; before it, the consumer still reads every event.
// Either way it advances to the head.
func TestConsumerPastInTxReadsJoinsOnly(t *testing.T) {
	for _, tc := range []struct {
		name                    string
		inTxFrom                int64
		streamPos, after, joins int
	}{
		{"past inTxFrom", 0, 0, 0, 1},
		{"before inTxFrom", 8, 1, 1, 0}, // from 5: the message at 9 is past it
	} {
		t.Run(tc.name, func(t *testing.T) {
			rooms := &readRecorder{}
			s := &Server{rooms: rooms, notifier: notifier.New(), log: slog.Default(), inTxFrom: tc.inTxFrom,
				serverName: "test.local", progress: make(chan struct{}), eventsStoredAt: time.Now()}
			if tc.inTxFrom > 0 {
				s.eventsPos.Store(5)
			}
			if _, err := s.consumeEvents(context.Background()); err != nil {
				t.Fatal(err)
			}
			if rooms.streamPos != tc.streamPos || rooms.eventsAfter != tc.after || rooms.joinsAfter != tc.joins {
				t.Errorf("reads: StreamPosition %d, EventsAfter %d, JoinsAfter %d; want %d, %d, %d",
					rooms.streamPos, rooms.eventsAfter, rooms.joinsAfter, tc.streamPos, tc.after, tc.joins)
			}
			if got := s.eventsPos.Load(); got != 10 {
				t.Errorf("position %d after the pass, want the head 10", got)
			}
		})
	}
}

// Past inTxFrom a room-event pass only looks for joins (JoinsAfter), and
// the passes are joinsPassEvery apart: a burst of 300 notifications at
// least 500µs apart takes a handful of passes (at passEvery: dozens), and
// the last notification is still read. Shared, so that the passes are
// not put off further for want of a local join
// (TestConsumerQuietWithoutLocalJoins).
func TestConsumerJoinPassesSpaced(t *testing.T) {
	streams := &countingStreams{}
	n := notifier.New()
	s := &Server{rooms: streams, receipts: streams, notifier: n, log: slog.Default(), shared: true}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.runConsumer(ctx)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	deadline := time.Now().Add(20 * time.Second)
	for streams.eventReads.Load() < 1 {
		if time.Now().After(deadline) {
			t.Fatal("no first read")
		}
		time.Sleep(time.Millisecond)
	}
	before := streams.eventReads.Load()
	const notifications = 300
	start := time.Now()
	var last time.Time
	for i := range notifications {
		last = time.Now()
		n.Notify(roomserver.Stream, int64(2+i))
		time.Sleep(500 * time.Microsecond) // the consumer may run meanwhile
	}
	elapsed := time.Since(start)
	deadline = time.Now().Add(20 * time.Second)
	for !time.Unix(0, streams.lastEventRead.Load()).After(last) {
		if time.Now().After(deadline) {
			t.Fatal("the last notification was never read")
		}
		time.Sleep(time.Millisecond)
	}
	reads := streams.eventReads.Load() - before
	// One pass per joinsPassEvery while the burst lasted (at least
	// 150ms), plus the one for its last notification.
	if limit := int64(elapsed/joinsPassEvery) + 2; reads > limit {
		t.Fatalf("%d passes for %d notifications over %v, want at most %d", reads, notifications, elapsed, limit)
	}
	t.Logf("%d passes for %d notifications over %v", reads, notifications, elapsed)
}

// Past inTxFrom, while no local join has committed since the last pass
// (localJoins unchanged), notifications of other events (messages) do
// not make the consumer read: a pass then has nothing to act on, and at
// a message every few hundred ms it was a read transaction per message.
// A committed local join makes the next pass come joinsPassEvery after
// the last one; and with no join counted at all, a pass still comes
// quietJoinsPassEvery after the last, so a join the counter missed is
// found. With Shared (another process writes joins the counter does not
// see) the passes keep the joinsPassEvery spacing.
func TestConsumerQuietWithoutLocalJoins(t *testing.T) {
	for _, shared := range []bool{false, true} {
		t.Run(map[bool]string{false: "one process", true: "shared"}[shared], func(t *testing.T) {
			streams := &countingStreams{}
			n := notifier.New()
			s := &Server{rooms: streams, receipts: streams, notifier: n, log: slog.Default(), shared: shared}
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan struct{})
			go func() {
				defer close(done)
				s.runConsumer(ctx)
			}()
			t.Cleanup(func() {
				cancel()
				<-done
			})
			waitReads := func(want int64, within time.Duration) time.Duration {
				t.Helper()
				start := time.Now()
				for streams.eventReads.Load() < want {
					if time.Since(start) > within {
						t.Fatalf("%d room-event reads after %v, want %d", streams.eventReads.Load(), within, want)
					}
					time.Sleep(time.Millisecond)
				}
				return time.Since(start)
			}
			waitReads(1, 5*time.Second) // the first run reads
			// 60 messages 2ms apart: 120ms or more, several joinsPassEvery.
			start := time.Now()
			for i := range 60 {
				n.Notify(roomserver.Stream, int64(2+i))
				time.Sleep(2 * time.Millisecond)
			}
			elapsed := time.Since(start)
			reads := streams.eventReads.Load() - 1
			if shared {
				if min := int64(elapsed/joinsPassEvery) - 1; reads < min {
					t.Fatalf("shared: %d passes in %v of messages, want at least %d (joinsPassEvery spacing)", reads, elapsed, min)
				}
				return
			}
			if elapsed < quietJoinsPassEvery/2 && reads != 0 {
				t.Fatalf("%d passes for 60 messages and no join in %v, want none", reads, elapsed)
			}
			// A local join commits: the next pass comes within joinsPassEvery.
			s.localJoins.Add(1)
			n.Notify(roomserver.Stream, 100)
			if took := waitReads(2, time.Second); took > joinsPassEvery+200*time.Millisecond {
				t.Errorf("the pass after a join came %v after it", took)
			}
			// More messages, no join: nothing until quietJoinsPassEvery
			// after that pass, then one pass that reads the rest.
			n.Notify(roomserver.Stream, 101)
			time.Sleep(100 * time.Millisecond)
			if got := streams.eventReads.Load(); got != 2 {
				t.Fatalf("%d reads 100ms after a message, want 2", got)
			}
			took := waitReads(3, quietJoinsPassEvery+time.Second)
			t.Logf("the quiet pass came %v after the message", took+100*time.Millisecond)
		})
	}
}

// timedStreams records when each room-event pass read.
type timedStreams struct {
	countingStreams
	mu    sync.Mutex
	reads []time.Time
}

func (c *timedStreams) JoinsAfter(ctx context.Context, from int64, n int) (int64, []*roomserver.Event, error) {
	c.mu.Lock()
	c.reads = append(c.reads, time.Now())
	c.mu.Unlock()
	return c.countingStreams.JoinsAfter(ctx, from, n)
}

// A quiet room-event pass runs in the lull after a message. Spaced from
// the previous pass's start alone, as they were, the quiet passes kept
// the phase of the pass they followed: after one run at a message (a
// local join's, committed with it) they fell on every tenth message of a
// message every 200ms (a divisor of quietJoinsPassEvery, as the fan-out
// benchmark's 500ms are), at its commit or during its delivery; after one
// run in a gap just before a message, just before every tenth message.
// Here every quiet pass after the first in a gap comes at least
// quietPassLull after the message before it, and in that message's
// lull (less than 2*quietPassLull after it, where the next pass is
// spaced from), not late in the gap; the passes still come, and the last
// message is read. Both are measured on the consumer's own clock (when
// it heard the message, when the pass began), so that a late sender or
// a late consumer does not fail the test.
func TestConsumerQuietPassWaitsForLull(t *testing.T) {
	// The join with the first message: the passes come due at a
	// message's lull.
	t.Run("due at a message", func(t *testing.T) { testQuietPassLull(t, 0, 1) })
	// The join alone, 190ms after the first message, 10ms before the
	// second: the first quiet pass comes due in the gap, just before a
	// message, and runs there; the ones after it are spaced from the
	// gap's lull, so they come due at a message's lull.
	t.Run("due in a gap", func(t *testing.T) { testQuietPassLull(t, 190*time.Millisecond, 2) })
}

// eventsPass is one room-event pass as runConsumer saw it begin.
type eventsPass struct {
	started, roomMovedAt time.Time
	roomPos              int64
}

// testQuietPassLull sends a message every 200ms for 8.4s and a local
// join joinAfter the first, and checks the passes after the first skip.
func testQuietPassLull(t *testing.T, joinAfter time.Duration, skip int) {
	streams := &timedStreams{}
	n := notifier.New()
	var mu sync.Mutex
	var seen []eventsPass
	s := &Server{rooms: streams, receipts: streams, notifier: n, log: slog.Default(),
		onEventsPass: func(started time.Time, roomPos int64, roomMovedAt time.Time) {
			mu.Lock()
			defer mu.Unlock()
			seen = append(seen, eventsPass{started: started, roomMovedAt: roomMovedAt, roomPos: roomPos})
		}}
	passes := func() []eventsPass {
		mu.Lock()
		defer mu.Unlock()
		return slices.Clone(seen)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.runConsumer(ctx)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	deadline := time.Now().Add(5 * time.Second)
	for len(passes()) < 1 {
		if time.Now().After(deadline) {
			t.Fatal("no first read")
		}
		time.Sleep(time.Millisecond)
	}
	const every, messages = 200 * time.Millisecond, 43
	pos := int64(1)
	start := time.Now()
	for i := range messages {
		time.Sleep(time.Until(start.Add(time.Duration(i) * every)))
		if i == 0 && joinAfter == 0 {
			s.localJoins.Add(1)
		}
		pos++
		n.Notify(roomserver.Stream, pos)
		if i == 0 && joinAfter > 0 {
			time.Sleep(time.Until(start.Add(joinAfter)))
			s.localJoins.Add(1)
			pos++
			n.Notify(roomserver.Stream, pos)
		}
	}
	last := pos
	deadline = time.Now().Add(quietJoinsPassEvery + 5*time.Second)
	for !slices.ContainsFunc(passes(), func(p eventsPass) bool { return p.roomPos == last }) {
		if time.Now().After(deadline) {
			t.Fatal("the last message was never read")
		}
		time.Sleep(time.Millisecond)
	}
	checked, late, i := 0, 0, 0
	for _, p := range passes() {
		if p.roomPos < 2 { // before the first message
			continue
		}
		if i++; i <= skip {
			continue
		}
		after := p.started.Sub(p.roomMovedAt)
		if after < quietPassLull {
			t.Errorf("pass %d began %v after the consumer heard position %d, want at least %v", i, after, p.roomPos, quietPassLull)
		}
		if p.roomPos == last {
			continue // after the last message: no next one to come before
		}
		checked++
		if after >= 2*quietPassLull {
			// Late in the gap, where the next message may come at any
			// moment. One such pass is let through (a consumer or
			// sender delayed past the lull; the next pass is spaced
			// from that gap's lull again); passes keeping that phase
			// are not.
			late++
			t.Logf("pass %d began %v after the consumer heard position %d", i, after, p.roomPos)
		}
	}
	// 8.4s of messages: the passes skipped, then a quiet pass each
	// quietJoinsPassEvery (and one after the last message).
	if checked < 2 {
		t.Fatalf("%d passes past the skipped %d during %d messages, want at least 2", checked, skip, messages)
	}
	if late > 1 {
		t.Errorf("%d of %d passes began %v or more after a message, in the gap before the next, want at most 1", late, checked, 2*quietPassLull)
	}
	t.Logf("%d passes checked", checked)
}
