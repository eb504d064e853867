package syncapi

import (
	"context"
	"log/slog"
	"slices"
	"time"

	"sync"
	"sync/atomic"

	"github.com/myelin-chat/myelin/internal/notifier"
	"github.com/myelin-chat/myelin/roomserver"
)

// waiter is one long-polling request's interest.
type waiter struct {
	userID string
	rooms  []string
	// noPresence: the request's filter leaves m.presence out, so
	// presence notifications do not wake it (immutable).
	noPresence bool
	// wake has room for one signal; a waiter woken twice before it looks
	// re-reads once.
	wake chan struct{}
	// parked: the /sync request waits for a wake-up, not computing
	// (for tests: Server.Parked).
	parked atomic.Bool
}

// waker turns stream notifications into wake-ups of the requests they
// concern. Room events wake requests interested in the event's room or
// (for membership events) its member; every other stream wakes all
// requests, which then re-read what concerns them.
type waker struct {
	rooms Rooms
	n     notifier.Broadcaster
	log   *slog.Logger
	// pollEvery is the fallback poll of the room stream head, for
	// notifications lost between processes. In one process it never
	// finds anything the notifier did not already say.
	pollEvery time.Duration
	// news, when set, is given the answer for each room stream window
	// the waker reads whole, before it wakes anyone: the requests it
	// wakes ask which rooms have events in that same window (their
	// token's room position, the notified head], so they need not read
	// it again (immutable after New).
	news *newsCache
	// holdCounts: the push consumer runs, so UnreadCountsStream follows
	// the room stream (see holdForCounts; immutable after New).
	holdCounts bool
	// holdFor bounds a hold (holdMax; tests lengthen it so that their
	// timing does not depend on the scheduler of a loaded machine).
	holdFor time.Duration
	// memo is told every membership touch the waker dispatches, before
	// the window counts as dispatched (membershipmemo.go; immutable
	// after New, never nil).
	memo *membershipMemo

	mu     sync.Mutex
	byRoom map[string]map[*waiter]struct{} // guarded by mu
	byUser map[string]map[*waiter]struct{} // guarded by mu
	// spareSets holds byUser's sets that unregister emptied, for the
	// next registration to reuse: a user has one long poll at a time, so
	// every registration emptied its user's set and made a new one (two
	// allocations per /sync request). At most maxSpareSets; guarded by mu.
	spareSets []map[*waiter]struct{}
	all       map[*waiter]struct{} // guarded by mu
	roomDone  int64                // room stream position dispatched; guarded by mu
	// countsDone is UnreadCountsStream's position dispatched; guarded by mu.
	countsDone int64
	seen       notifier.Positions // other streams' positions dispatched; guarded by mu
}

func newWaker(rooms Rooms, n notifier.Broadcaster, log *slog.Logger) *waker {
	return &waker{
		rooms: rooms, n: n, log: log, pollEvery: 10 * time.Second, holdFor: holdMax,
		memo:   newMembershipMemo(maxMemoUsers),
		byRoom: map[string]map[*waiter]struct{}{},
		byUser: map[string]map[*waiter]struct{}{},
		all:    map[*waiter]struct{}{},
		seen:   notifier.Positions{},
	}
}

// register adds a waiter. Register before reading the streams, so that
// anything committed after the read wakes it.
func (w *waker) register(userID string, rooms []string) *waiter {
	return w.registerFiltered(userID, rooms, true)
}

// registerFiltered is register for a request that says whether it wants
// presence: one that does not is not woken by presence notifications
// alone (with many listeners, every listener's own presence update
// would otherwise wake all the others for nothing).
func (w *waker) registerFiltered(userID string, rooms []string, presence bool) *waiter {
	wt := &waiter{userID: userID, rooms: rooms, noPresence: !presence, wake: make(chan struct{}, 1)}
	w.mu.Lock()
	defer w.mu.Unlock()
	w.all[wt] = struct{}{}
	if set := w.byUser[userID]; set != nil {
		set[wt] = struct{}{}
	} else {
		if n := len(w.spareSets); n > 0 {
			set, w.spareSets = w.spareSets[n-1], w.spareSets[:n-1]
		} else {
			set = map[*waiter]struct{}{}
		}
		set[wt] = struct{}{}
		w.byUser[userID] = set
	}
	for _, r := range rooms {
		add(w.byRoom, r, wt)
	}
	return wt
}

// maxSpareSets bounds waker.spareSets: enough for the long polls that
// return at once when a message wakes a room's listeners, then register
// again.
const maxSpareSets = 256

func (w *waker) unregister(wt *waiter) {
	w.mu.Lock()
	defer w.mu.Unlock()
	delete(w.all, wt)
	if set := w.byUser[wt.userID]; set != nil {
		delete(set, wt)
		if len(set) == 0 {
			delete(w.byUser, wt.userID)
			if len(w.spareSets) < maxSpareSets {
				w.spareSets = append(w.spareSets, set)
			}
		}
	}
	for _, r := range wt.rooms {
		remove(w.byRoom, r, wt)
	}
}

func add(m map[string]map[*waiter]struct{}, key string, wt *waiter) {
	set := m[key]
	if set == nil {
		set = map[*waiter]struct{}{}
		m[key] = set
	}
	set[wt] = struct{}{}
}

func remove(m map[string]map[*waiter]struct{}, key string, wt *waiter) {
	if set := m[key]; set != nil {
		delete(set, wt)
		if len(set) == 0 {
			delete(m, key)
		}
	}
}

func signal(wt *waiter) {
	wt.parked.Store(false)
	select {
	case wt.wake <- struct{}{}:
	default:
	}
}

// run dispatches notifications until ctx ends.
func (w *waker) run(ctx context.Context) {
	if pos, err := w.rooms.StreamPosition(ctx); err == nil {
		w.mu.Lock()
		w.roomDone = pos
		w.mu.Unlock()
	}
	w.mu.Lock()
	w.memo.start(w.roomDone)
	w.mu.Unlock()
	defer w.memo.stop()
	ticker := time.NewTicker(w.pollEvery)
	defer ticker.Stop()
	for {
		changed := w.n.Changed()
		w.dispatch(ctx, w.n.Positions())
		select {
		case <-changed:
		case <-ticker.C:
			if pos, err := w.rooms.StreamPosition(ctx); err == nil {
				w.n.Notify(roomserver.Stream, pos)
			}
		case <-ctx.Done():
			return
		}
	}
}

// touchBatch bounds one read of the room stream by the waker.
const touchBatch = 1000

func (w *waker) dispatch(ctx context.Context, pos notifier.Positions) {
	w.mu.Lock()
	var wakeAll, wakePresence bool
	for stream, p := range pos {
		if stream != roomserver.Stream && stream != UnreadCountsStream && p > w.seen[stream] {
			w.seen[stream] = p
			if stream == PresenceStream {
				wakePresence = true
			} else {
				wakeAll = true
			}
		}
	}
	roomFrom, roomTo := w.roomDone, pos[roomserver.Stream]
	// The push consumer's counts position is a room stream position: its
	// advance concerns the rooms of the events it counted, so it wakes
	// their waiters only (their counts-only response, see fillUnread).
	countsFrom, countsTo := w.countsDone, pos[UnreadCountsStream]
	if wakeAll || wakePresence {
		for wt := range w.all {
			if wakeAll || !wt.noPresence {
				signal(wt)
			}
		}
	}
	if len(w.all) == 0 {
		if roomTo > w.roomDone {
			// Nobody to wake: the window is not read, so the
			// memberships memo cannot tell whose membership it changed.
			w.memo.skipped(roomTo)
		}
		w.roomDone = max(w.roomDone, roomTo)
		w.countsDone = max(w.countsDone, countsTo)
		w.mu.Unlock()
		return
	}
	w.mu.Unlock()
	if roomTo > roomFrom {
		first, err := w.rooms.StreamTouched(ctx, roomFrom, roomTo, touchBatch)
		if err != nil {
			first = nil // wakeTouched reads again and handles the error
		} else if w.holdCounts && countsTo < roomTo && w.waitersOf(first) >= holdMinWaiters {
			countsTo = max(countsTo, w.awaitCounts(ctx, roomTo))
		}
		w.wakeTouchedFrom(ctx, roomFrom, roomTo, true, &w.roomDone, first)
		if countsFrom >= roomFrom && countsTo <= roomTo {
			// The counts window lies within the room window just
			// dispatched (with counts written in the event's own
			// transaction, the two are the same window, notified one
			// after the other): every waiter of a room with an
			// accepted event in it has just been woken, after both
			// positions were committed, so it reads the counts too; a
			// waiter that registered since reads them itself. Reading
			// the window again and waking them a second time would only
			// cost CPU while the woken responses are built.
			w.mu.Lock()
			w.countsDone = max(w.countsDone, countsTo)
			w.mu.Unlock()
			return
		}
	}
	if countsTo > countsFrom {
		w.wakeTouched(ctx, countsFrom, countsTo, false, &w.countsDone)
	}
}

// Holding a wake for the unread counts. A long poll woken by a message
// answers at once, with the unread counts committed so far; when the
// push consumer commits the message's counts, the same listeners are
// woken again for a second, counts-only response (fillUnread). With
// many listeners in the room that second round costs a response each
// (about as much CPU as the first) and competes with the first round's
// deliveries. So when a window wakes at least holdMinWaiters waiters
// and its counts are not committed yet, the waker waits for the
// consumer's commit (at most holdMax) and wakes them once, for the
// message and its counts together. Only when, never what: each woken
// request still reads everything itself (its counts are then complete
// up to the consumer's position, as its token says). Smaller wakes are
// not held: the saving grows with the listeners (one response each)
// while the cost, the consumer's commit (an fsync and a row per member)
// added to every listener's latency, does not shrink; at 200 listeners
// the second round was ~0.8 responses per delivery, at 20 it is a few
// milliseconds of CPU after the deliveries, and one listener's wake
// must not wait for an fsync.
const (
	holdMinWaiters = 64
	holdMax        = 30 * time.Millisecond
)

// waitersOf counts the waiters the accepted events of touched would
// wake through their rooms (a waiter in two of the rooms counts twice:
// it is only a threshold).
func (w *waker) waitersOf(touched []roomserver.StreamTouch) int {
	w.mu.Lock()
	defer w.mu.Unlock()
	n := 0
	var counted []string
	for _, t := range touched {
		if t.Accepted && !slices.Contains(counted, t.RoomID) {
			counted = append(counted, t.RoomID)
			n += len(w.byRoom[t.RoomID])
		}
	}
	return n
}

// awaitCounts waits until UnreadCountsStream reaches pos, at most
// holdMax (w.holdFor), and returns the counts position then heard.
func (w *waker) awaitCounts(ctx context.Context, pos int64) int64 {
	timer := time.NewTimer(w.holdFor)
	defer timer.Stop()
	for {
		changed := w.n.Changed()
		counted := w.n.Positions()[UnreadCountsStream]
		if counted >= pos {
			return counted
		}
		select {
		case <-changed:
		case <-timer.C:
			return w.n.Positions()[UnreadCountsStream]
		case <-ctx.Done():
			return counted
		}
	}
}

// wakeTouched wakes the waiters of the rooms with events in (from, to]
// (and, with members, of the users whose membership they change), and
// records the progress in *done (guarded by mu).
func (w *waker) wakeTouched(ctx context.Context, from, to int64, members bool, done *int64) {
	w.wakeTouchedFrom(ctx, from, to, members, done, nil)
}

// wakeTouchedFrom is wakeTouched given, when not nil, the first batch
// already read: StreamTouched(from, to, touchBatch).
func (w *waker) wakeTouchedFrom(ctx context.Context, from, to int64, members bool, done *int64, first []roomserver.StreamTouch) {
	start := from
	for from < to {
		touched, err := first, error(nil)
		if first == nil || from != start {
			touched, err = w.rooms.StreamTouched(ctx, from, to, touchBatch)
		}
		if err != nil {
			// Wake everyone rather than lose a wake-up; they re-read.
			w.log.Warn("sync waker: reading room stream", "err", err)
			w.mu.Lock()
			for wt := range w.all {
				signal(wt)
			}
			if members {
				w.memo.skipped(to)
			}
			*done = max(*done, to)
			w.mu.Unlock()
			return
		}
		if w.news != nil && from == start && len(touched) < touchBatch {
			// The whole window in one read: it is what RoomsWithEvents
			// would answer for (from, to] (all events, accepted or not;
			// to is a notified, so committed, position).
			w.news.seed(from, to, newsScanLimit, newsOf(touched), len(touched) <= newsScanLimit)
		}
		w.mu.Lock()
		for _, t := range touched {
			if !t.Accepted {
				continue
			}
			for wt := range w.byRoom[t.RoomID] {
				signal(wt)
			}
			if members && t.Member != "" {
				for wt := range w.byUser[t.Member] {
					signal(wt)
				}
			}
		}
		if len(touched) < touchBatch {
			from = to
		} else {
			from = touched[len(touched)-1].StreamPos
		}
		if members {
			// Every touch at a position up to from is in touched
			// (StreamTouched): the memo drops their members first.
			w.memo.dispatched(touched, from)
		}
		*done = max(*done, from)
		w.mu.Unlock()
	}
}

// newsOf is RoomsWithEvents' answer built from the events of a window:
// each room with any event, mapped to whether any of them is a state
// event.
func newsOf(touched []roomserver.StreamTouch) map[string]bool {
	rooms := make(map[string]bool, 1)
	for _, t := range touched {
		rooms[t.RoomID] = rooms[t.RoomID] || t.State
	}
	return rooms
}
