package roomserver

import (
	"context"
	"errors"
	"hash/fnv"
	"slices"
	"sync"

	"github.com/myelin-chat/myelin/storage"
)

// Pipelined sends.
//
// A send holds its room's lock while it reads the room, builds, signs and
// authorises its event and queues the event's write; it then releases the
// lock and waits for the commit outside it. The next send to the room may
// build on the queued event before it commits: prev_events = that event,
// depth one more. So sends to one room share group commits instead of
// taking one fsync each (server-server-api, "Forward extremities", is
// kept: each event names the previous one).
//
// This is exact because:
//   - Only events that leave the room's current state snapshot as it was
//     (accepted, not state events, not redactions — a redaction can
//     change a state event's content — and not in partial-state rooms)
//     may be built on before they commit. The next event reads its auth
//     state from the current snapshot, which is committed, exactly as it
//     would after the commit.
//   - The room row the next send builds on (extremities, depth) is the
//     one the queued event's write produces; that write checks, inside
//     its transaction, that commit computed the same row, and fails
//     otherwise.
//   - Writes run and commit in the order they were queued (one writer).
//     A write built on a queued event checks first, inside its own
//     transaction, that the event it built on did not fail
//     (storage.PendingWrite.Failed); if it did, nothing is written and
//     the send is rebuilt on the committed room. No event is ever stored
//     with a prev event that is not stored, and a send is acknowledged
//     only after the commit that holds its event.
//   - The write of a send built on an uncommitted event, or on the row a
//     committed send left (kept instead of reading the room again),
//     updates the room's row inside its own transaction only where it is
//     still the row the event was built on (saveRoomIf: one conditional
//     UPDATE instead of a read and an UPDATE), and refuses otherwise; the
//     savepoint then rolls back everything the write did.
//   - Every other writer of a room (lockRoom) first waits until the
//     room's queued writes have their outcome, so it reads committed
//     state as before. A send that nothing may build on keeps the room
//     lock until its commit's hooks (event cache, notification) have run,
//     as before.
//
// On PostgreSQL writes are not queued (WriteQueued commits before it
// returns), so nothing is ever built on an uncommitted event there.

// errPipelineBroken is a queued send's write refusing to run because
// the event it was built on did not commit; the send is rebuilt.
var errPipelineBroken = errors.New("roomserver: the event this one was built on was not stored")

// roomTail is the last write queued for a room.
type roomTail struct {
	write *storage.PendingWrite
	// room is the room row as it will be once write commits, when the
	// next send may build on it before then; nil when it must wait.
	// Never modified: users take a copy.
	room *roomRow
}

// maxRoomTails bounds roomTails: past it, the entries of rooms whose
// last write has its outcome are dropped (their next send reads the room
// from the database, as it would have without the entry).
const maxRoomTails = 4096

// roomTails maps a room ID to its last queued write. Each entry is read
// and replaced only by the holder of the room's lock, or dropped by set
// once its write has its outcome and the map is full.
type roomTails struct {
	mu sync.Mutex
	m  map[string]*roomTail // guarded by mu
}

func (t *roomTails) get(roomID string) *roomTail {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.m[roomID]
}

func (t *roomTails) set(roomID string, tail *roomTail) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.m == nil {
		t.m = make(map[string]*roomTail)
	}
	if tail == nil {
		delete(t.m, roomID)
		return
	}
	if _, ok := t.m[roomID]; !ok && len(t.m) >= maxRoomTails {
		for id, other := range t.m {
			select {
			case <-other.write.Done():
				delete(t.m, id)
			default: // in flight: lockRoom must still wait for it
			}
		}
	}
	t.m[roomID] = tail
}

// lockRoom takes the write lock of roomID and waits until the room's
// queued sends have committed or failed, so that the holder reads the
// room's committed state and nothing of it is in flight. Lock order: a
// goroutine holds at most one room lock at a time. The holder counts as
// waiting for a commit (roomLock.committing) from the start: it waits
// for the room's queued writes and writes under the lock. While it
// waits, the write ctx's request announced is suspended (awaitOutcome).
func (s *Server) lockRoom(ctx context.Context, roomID string) func() {
	unlock := s.lockRoomStripe(ctx, roomID)
	s.roomLockOf(roomID).committing()
	if tail := s.tails.get(roomID); tail != nil {
		awaitOutcome(ctx, tail.write)
		s.tails.set(roomID, nil)
	}
	return unlock
}

// lockRoomStripe takes roomID's lock without waiting for queued writes
// (roomLock.lock).
func (s *Server) lockRoomStripe(ctx context.Context, roomID string) func() {
	return s.roomLockOf(roomID).lock(ctx)
}

// roomLockOf returns the lock stripe of roomID.
func (s *Server) roomLockOf(roomID string) *roomLock {
	h := fnv.New32a()
	_, _ = h.Write([]byte(roomID))
	return &s.roomLocks[h.Sum32()%uint32(len(s.roomLocks))]
}

// roomLock is one stripe of the room locks.
//
// A request waiting for the lock may have announced its write to the
// SQLite writer (storage.DB.ExpectWrite), which then holds its commits
// for it. That is right while the holder builds a send that releases the
// lock once its write is queued (pipeline.go): the waiter's write can
// still join the commit. It is wrong once the holder waits for a commit
// while holding the lock (its own write's, a send nothing may build on;
// the room's queued write's; every lockRoom holder): the waiter's write
// cannot come before that commit. So the holder says when it starts
// waiting for a commit (committing), and from then until it unlocks,
// every waiter's announcement is suspended (storage.SuspendAnnouncement);
// each resumes its own once it holds the lock.
type roomLock struct {
	mu sync.Mutex // the lock itself
	// wmu guards waiting and commitBound; taken before the storage
	// intents' lock (SuspendAnnouncement), never while waiting for mu.
	wmu         sync.Mutex
	waiting     map[*lockWaiter]struct{}
	commitBound bool // the holder waits for a commit while holding mu
}

// lockWaiter is a request waiting for a roomLock.
type lockWaiter struct {
	ctx    context.Context
	resume func() // set once its announcement is suspended (guarded by wmu)
}

// lock takes the lock; while it waits behind a holder that waits for a
// commit, the write ctx's request announced is suspended (see roomLock).
func (l *roomLock) lock(ctx context.Context) func() {
	if l.mu.TryLock() {
		return l.unlock
	}
	w := &lockWaiter{ctx: ctx}
	l.wmu.Lock()
	if l.waiting == nil {
		l.waiting = make(map[*lockWaiter]struct{})
	}
	l.waiting[w] = struct{}{}
	if l.commitBound {
		w.resume = storage.SuspendAnnouncement(ctx)
	}
	l.wmu.Unlock()
	l.mu.Lock()
	l.wmu.Lock()
	delete(l.waiting, w)
	resume := w.resume
	l.wmu.Unlock()
	if resume != nil {
		resume()
	}
	return l.unlock
}

// committing is called by the holder when it starts waiting for a
// commit while holding the lock: the announcements of the requests
// waiting for the lock, and of those that come to wait until it is
// unlocked, are suspended.
func (l *roomLock) committing() {
	l.wmu.Lock()
	defer l.wmu.Unlock()
	if l.commitBound {
		return
	}
	l.commitBound = true
	for w := range l.waiting {
		if w.resume == nil {
			w.resume = storage.SuspendAnnouncement(w.ctx)
		}
	}
}

func (l *roomLock) unlock() {
	l.wmu.Lock()
	l.commitBound = false
	l.wmu.Unlock()
	l.mu.Unlock()
}

// awaitOutcome waits until w has its outcome, with the write ctx's
// request announced suspended meanwhile (it cannot come before w's
// commit, which must not be held for it).
func awaitOutcome(ctx context.Context, w *storage.PendingWrite) {
	select {
	case <-w.Done():
		return
	default:
	}
	resume := storage.SuspendAnnouncement(ctx)
	<-w.Done()
	resume()
}

// roomToBuildOn returns, under the room's lock, the room row a send
// builds on and whether it came from the room's last queued send (then
// its write must check the row, see checkBuiltOn), and that send's write
// if it has not finished. A room whose last send left nothing to build on
// (a state event, say), or failed, is read from the database once every
// queued write of the room has its outcome.
func (s *Server) roomToBuildOn(ctx context.Context, roomID string) (room *roomRow, fromTail bool, inFlight *storage.PendingWrite, err error) {
	if tail := s.tails.get(roomID); tail != nil {
		if tail.room != nil {
			select {
			case <-tail.write.Done():
				if tail.write.Committed() {
					return tail.room.clone(), true, nil, nil
				}
			default:
				return tail.room.clone(), true, tail.write, nil
			}
		}
		select {
		case <-tail.write.Done():
		default:
			// Waiting for a commit holding the lock.
			s.roomLockOf(roomID).committing()
			awaitOutcome(ctx, tail.write)
		}
		s.tails.set(roomID, nil)
	}
	room, err = loadRoom(ctx, s.db.Reader(), roomID)
	return room, false, nil, err
}

// checkBuiltOn refuses (errPipelineBroken, and the send is built again)
// the write of a send built on the row of the room's last queued send
// unless that send committed or commits with this one and the room's
// stored row, read inside this write's transaction (so nothing can change
// it before the commit), is the row the event was built on. The second
// check alone suffices; it also catches a write by another process since.
// A send's write normally makes the same check in its room update
// (saveRoomIf); this read is the fallback for a write that did not update
// the room.
func checkBuiltOn(ctx context.Context, tx storage.Tx, builtOn *roomRow, inFlight *storage.PendingWrite) error {
	if inFlight != nil && inFlight.Failed() {
		return errPipelineBroken
	}
	stored, err := loadRoom(ctx, tx, builtOn.RoomID)
	if err != nil {
		return err
	}
	if !sameRoomRow(stored, builtOn) {
		return errPipelineBroken
	}
	return nil
}

// roomAfter predicts the room row that commit leaves after p, when a
// send may build on p before it commits (see the package comment above),
// or returns nil.
func (s *Server) roomAfter(p *prepared) *roomRow {
	room := p.room
	if s.db.Engine() != storage.SQLite || p.outcome != Accepted || room.Partial ||
		p.row.StateKey != nil || p.row.Type == "m.room.redaction" || p.row.Redacts != nil ||
		p.beforeState != nil || p.beforeNID != room.CurrentSnapshot {
		return nil
	}
	prevs := p.pdu.PrevEventIDs()
	if !sameSet(prevs, room.Extremities) {
		return nil
	}
	next := room.clone()
	next.Extremities = []string{p.row.EventID}
	next.MaxDepth = max(room.MaxDepth, p.row.Depth)
	return next
}

func (r *roomRow) clone() *roomRow {
	c := *r
	c.Extremities = slices.Clone(r.Extremities)
	return &c
}

// sameRoomRow reports whether a and b are the same row.
func sameRoomRow(a, b *roomRow) bool {
	return a.RoomID == b.RoomID && a.Version == b.Version && a.CurrentSnapshot == b.CurrentSnapshot &&
		a.MaxDepth == b.MaxDepth && a.Partial == b.Partial && slices.Equal(a.Extremities, b.Extremities)
}
