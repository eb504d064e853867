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
//   - an announced write is on its way (one announced within
//     intentFresh: a request that takes longer to reach its write, such
//     as one waiting for a room's lock or for another server, stops
//     counting), or
//   - fewer announced writes are in the batch than the last commit
//     answered, and the batch began within returnWindow of that answer:
//     the clients just answered are sending again (a client that waits
//     for each answer sends its next request ~0.1 ms later; the first
//     one back would otherwise commit alone);
//
// and never longer than commitHold from the batch's first write, nor
// than a COMMIT takes of late (a moving average): waiting longer than a
// commit takes cannot pay, as the writes waited for could have had a
// commit of their own meanwhile (on a disk whose fsync takes 0.07 ms a
// hold is a fraction of a millisecond). This is
// PostgreSQL's commit_delay, with the writes known or seen to be coming
// instead of a count of open transactions: a lone writer, or writes
// that nothing is about to join, commit at once. Durability is
// unchanged (every write is still answered after the fsync of the
// COMMIT that holds it); a write waits at most commitHold longer.
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

// intentKey is the context key of a request's announced write.
type intentKey struct{}

// writeIntent is one announced write.
type writeIntent struct {
	db   *DB
	at   time.Time
	gone atomic.Bool
}

// intents are the announced writes not yet queued nor abandoned.
type intents struct {
	mu   sync.Mutex
	live map[*writeIntent]struct{} // guarded by mu
	// gone wakes a writer holding its commit when an announced write
	// went away without queueing (the request failed first). One slot.
	gone chan struct{}
	// announced counts ExpectWrite calls (AnnouncedWrites).
	announced atomic.Int64
}

// AnnouncedWrites reports how many writes were announced with
// ExpectWrite; always 0 on PostgreSQL. Tests use it to show which
// requests announce theirs.
func (db *DB) AnnouncedWrites() int64 { return db.intents.announced.Load() }

// ExpectWrite announces that the caller is about to queue a write on db
// (SQLite's group-commit writer) and returns a context carrying the
// announcement and a function to call when the request ends. The first
// write queued with that context (Write, WriteQueued) ends the
// announcement once it is in the queue; done ends it otherwise, and may
// be called more than once. On PostgreSQL (no shared writer) it does
// nothing.
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

// end removes the announcement (once), as done: the request ends
// without (more) writes, so a writer holding its commit for it is woken.
func (in *writeIntent) end() {
	if in.remove() {
		select {
		case in.db.intents.gone <- struct{}{}:
		default:
		}
	}
}

// remove removes the announcement if it is still live and reports
// whether it was. Its write queued: the queue wakes the writer, so no
// signal on gone (which the writer might take instead of the write).
func (in *writeIntent) remove() bool {
	if in.gone.Swap(true) {
		return false
	}
	ins := &in.db.intents
	ins.mu.Lock()
	delete(ins.live, in)
	ins.mu.Unlock()
	return true
}

// intentOf returns the live announcement ctx carries for db, or nil.
func (db *DB) intentOf(ctx context.Context) *writeIntent {
	if in, ok := ctx.Value(intentKey{}).(*writeIntent); ok && in.db == db && !in.gone.Load() {
		return in
	}
	return nil
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
	if !db.holdTimes.fixed {
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
