package storage

import (
	"context"
	"sync"
	"sync/atomic"
	"time"
)

// Holding a commit for the writes about to join it.
//
// Group commit shares one COMMIT, and so one fsync, among the writes
// queued while a batch runs. With several clients each waiting for its
// answer before sending again, that is not enough: the clients answered
// by one commit send their next requests while the writer already runs
// the requests that queued during that commit's fsync, and the writer
// commits those alone. The clients then settle into groups that take
// turns, each commit holding one group (on a disk whose fsync takes
// 1.8 ms, 8 senders made two groups of 4, ~590 commits for 2,400
// messages: docs/benchmarks.md, "slowdisk").
//
// So a request that will write a room event says so when it starts
// (ExpectWrite), before it has built its write (read the room, build,
// sign, authorise), and the writer, having run everything queued, holds
// its COMMIT, taking writes into the batch as they queue, while
//   - an announced write is on its way (one announced, or resumed,
//     within intentFresh: a request that takes longer to reach its
//     write, such as one waiting for another server, stops counting), or
//   - fewer announced writes are in the batch than the last commit
//     answered, and the batch began within returnWindow of that answer:
//     the clients just answered are sending again (a client that waits
//     for each answer sends its next request ~0.1 ms later; the first
//     one back would otherwise commit alone);
//
// and never longer than commitHold from the batch's first write, nor
// than a COMMIT takes of late (a moving average of the COMMITs that
// succeeded; commitHold alone until one has): waiting longer than a
// commit takes cannot pay, as the writes waited for could have had a
// commit of their own meanwhile (on a disk whose fsync takes 0.07 ms a
// hold is a fraction of a millisecond). This is
// PostgreSQL's commit_delay, with the writes known or seen to be coming
// instead of a count of open transactions: a lone writer, or writes
// that nothing is about to join, commit at once. Durability is
// unchanged (every write is still answered after the fsync of the
// COMMIT that holds it); a write waits at most commitHold longer.
//
// A request that waits for something which may itself wait for a commit
// cannot write before that commit, so holding the commit for it only
// delays both: a send waiting for its room's lock (held by a send that
// keeps it until its own commit) or for the outcome of the room's queued
// write, or a request waiting for a write of its own that is not the
// announced one. For such a wait the announcement is suspended
// (SuspendAnnouncement; Write does it itself) and resumed afterwards, as
// if made then. Only the write the request announced ends it
// (ForAnnouncedWrite); a request that learns it will write nothing ends
// it at once (the done function ExpectWrite returns).
const (
	commitHold   = 1 * time.Millisecond
	intentFresh  = 2 * time.Millisecond
	returnWindow = 2 * time.Millisecond
)

// holdTimes are a database's commitHold, intentFresh and returnWindow
// (tests lengthen them to make timing-free assertions).
type holdTimes struct {
	hold, fresh, window time.Duration
	// fixed: hold is not bounded by the recent COMMIT duration (tests).
	fixed bool
}

// intentKey is the context key of a request's announced write;
// announcedWriteKey marks the context of the write it announced.
type (
	intentKey         struct{}
	announcedWriteKey struct{}
)

// intentState is where an announced write stands.
type intentState uint8

const (
	intentLive      intentState = iota // on its way: in intents.live
	intentSuspended                    // waiting for something that may wait for a commit
	intentEnded                        // its write queued, or the request ended
)

// writeIntent is one announced write.
type writeIntent struct {
	db *DB
	// at is when the write was announced or last resumed; state where it
	// stands. Both guarded by db.intents.mu.
	at    time.Time
	state intentState
}

// intents are the announced writes.
type intents struct {
	mu   sync.Mutex
	live map[*writeIntent]struct{} // guarded by mu: the announced writes in state intentLive
	// gone wakes a writer holding its commit when an announced write
	// stopped being on its way without queueing (the request failed or
	// will write nothing, or waits for something that may wait for a
	// commit). One slot.
	gone chan struct{}
	// announced counts ExpectWrite calls (AnnouncedWrites).
	announced atomic.Int64
}

// AnnouncedWrites reports how many writes were announced with
// ExpectWrite; always 0 on PostgreSQL. Tests use it to show which
// requests announce theirs.
func (db *DB) AnnouncedWrites() int64 { return db.intents.announced.Load() }

// LiveAnnouncements reports how many announced writes a held commit
// would wait for now, fresh or not: announced, neither queued, ended nor
// suspended. Always 0 on PostgreSQL. Tests use it to show when a request
// stops counting.
func (db *DB) LiveAnnouncements() int {
	db.intents.mu.Lock()
	defer db.intents.mu.Unlock()
	return len(db.intents.live)
}

// ExpectWrite announces that the caller is about to queue a write on db
// (SQLite's group-commit writer) and returns a context carrying the
// announcement and a function to call when the request will write
// nothing more (at the latest when it ends). The write queued (Write,
// WriteQueued) with the context ForAnnouncedWrite makes of it ends the
// announcement once it is in the queue; done ends it otherwise, and may
// be called more than once. Other writes made with the context leave it
// standing (suspended while they run, see SuspendAnnouncement). On
// PostgreSQL (no shared writer) it does nothing.
func (db *DB) ExpectWrite(ctx context.Context) (context.Context, func()) {
	if db.engine != SQLite {
		return ctx, func() {}
	}
	in := &writeIntent{db: db, at: time.Now()}
	db.intents.announced.Add(1)
	db.intents.mu.Lock()
	if db.intents.live == nil {
		db.intents.live = make(map[*writeIntent]struct{})
	}
	db.intents.live[in] = struct{}{}
	db.intents.mu.Unlock()
	return context.WithValue(ctx, intentKey{}, in), in.end
}

// ForAnnouncedWrite returns ctx marked for the write its request
// announced (ExpectWrite): the first write queued with the returned
// context is taken as that write and ends the announcement. Without an
// announcement in ctx it returns ctx.
func ForAnnouncedWrite(ctx context.Context) context.Context {
	in, ok := ctx.Value(intentKey{}).(*writeIntent)
	if !ok {
		return ctx
	}
	return context.WithValue(ctx, announcedWriteKey{}, in)
}

// SuspendAnnouncement takes the write ctx's request announced
// (ExpectWrite) off what a held commit waits for while the caller waits
// for something that may itself wait for a commit, such as a room's lock
// or the outcome of a queued write: the commit would otherwise be held
// for a write that cannot come before it. resume puts the announcement
// back as if made then; call it when the wait is over, before the
// request goes on to build its write. Without a standing announcement
// (none, queued, ended or already suspended) both do nothing.
func SuspendAnnouncement(ctx context.Context) (resume func()) {
	in, ok := ctx.Value(intentKey{}).(*writeIntent)
	if !ok || !in.suspend(true) {
		return noResume
	}
	return in.resume
}

// noResume is the resume of a suspension that did not happen.
func noResume() {}

// end ends the announcement (once), as done: the request will write
// nothing more, so a writer holding its commit for it is woken.
func (in *writeIntent) end() {
	ins := &in.db.intents
	ins.mu.Lock()
	wasLive := in.state == intentLive
	if in.state != intentEnded {
		delete(ins.live, in)
		in.state = intentEnded
	}
	ins.mu.Unlock()
	if wasLive {
		in.db.wakeHeld()
	}
}

// queued ends the announcement because its write queued. The queue
// wakes the writer, so no signal on gone (which the writer might take
// instead of the write).
func (in *writeIntent) queued() {
	ins := &in.db.intents
	ins.mu.Lock()
	defer ins.mu.Unlock()
	delete(ins.live, in)
	in.state = intentEnded
}

// standing reports whether the announcement stands (live or suspended).
func (in *writeIntent) standing() bool {
	ins := &in.db.intents
	ins.mu.Lock()
	defer ins.mu.Unlock()
	return in.state != intentEnded
}

// suspend takes a live announcement off what a held commit waits for
// and reports whether it was live; wake wakes a writer holding its
// commit (not for a write of the request's own about to queue: its
// queueing wakes the writer).
func (in *writeIntent) suspend(wake bool) bool {
	ins := &in.db.intents
	ins.mu.Lock()
	if in.state != intentLive {
		ins.mu.Unlock()
		return false
	}
	delete(ins.live, in)
	in.state = intentSuspended
	ins.mu.Unlock()
	if wake {
		in.db.wakeHeld()
	}
	return true
}

// resume puts a suspended announcement back, made now.
func (in *writeIntent) resume() {
	ins := &in.db.intents
	ins.mu.Lock()
	defer ins.mu.Unlock()
	if in.state != intentSuspended {
		return // ended meanwhile
	}
	in.state, in.at = intentLive, time.Now()
	ins.live[in] = struct{}{}
}

// wakeHeld wakes the writer if it holds its commit for announced writes.
func (db *DB) wakeHeld() {
	select {
	case db.intents.gone <- struct{}{}:
	default:
	}
}

// announcementOf returns the announcement ctx carries for db, if it
// still stands (live or suspended), and whether ctx is that of the write
// it announced (ForAnnouncedWrite).
func (db *DB) announcementOf(ctx context.Context) (in *writeIntent, announcedWrite bool) {
	in, ok := ctx.Value(intentKey{}).(*writeIntent)
	if !ok || in.db != db {
		return nil, false
	}
	marked, _ := ctx.Value(announcedWriteKey{}).(*writeIntent)
	return in, marked == in
}

// countAnnounced counts the announced writes of batch.
func countAnnounced(batch []*writeRequest) int {
	n := 0
	for _, req := range batch {
		if req.announced {
			n++
		}
	}
	return n
}

// holdFor reports how much longer the writer should hold the commit of
// a batch whose first write it took at start and which holds n announced
// writes (see above): 0 means commit now.
func (db *DB) holdFor(start time.Time, n int) time.Duration {
	select {
	case <-db.closed: // closing: commit what there is
		return 0
	default:
	}
	now := time.Now()
	hold := db.holdTimes.hold
	if !db.holdTimes.fixed && db.commitTime > 0 {
		// Bounded by how long a COMMIT takes once one has been timed;
		// commitHold alone before.
		hold = min(hold, db.commitTime)
	}
	limit := start.Add(hold)
	if !now.Before(limit) {
		return 0
	}
	if n < db.answered && start.Sub(db.answeredAt) < db.holdTimes.window {
		return limit.Sub(now)
	}
	ins := &db.intents
	ins.mu.Lock()
	defer ins.mu.Unlock()
	var until time.Time
	for in := range ins.live {
		if fresh := in.at.Add(db.holdTimes.fresh); fresh.After(now) && fresh.After(until) {
			until = fresh
		}
	}
	if until.IsZero() {
		return 0
	}
	if until.After(limit) {
		until = limit
	}
	return until.Sub(now)
}

// timeCommit takes the duration of a COMMIT that succeeded into
// commitTime (a failed one says nothing of how long commits take): the
// first sets it, then each moves it by an eighth of the difference.
// Called by the writer only.
func (db *DB) timeCommit(d time.Duration) {
	if db.commitTime == 0 {
		db.commitTime = max(d, 1) // 0 means none timed yet
		return
	}
	db.commitTime += (d - db.commitTime) / 8
}
