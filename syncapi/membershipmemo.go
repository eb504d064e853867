package syncapi

import (
	"slices"
	"sync"

	"github.com/myelin-chat/myelin/roomserver"
)

// membershipMemo keeps each user's memberships (Rooms.UserMemberships)
// as last read, so that a long poll's registration and the incremental
// responses of its wake-ups do not read them again while they cannot
// have changed. With L listeners woken by one message that is 2L reads
// per message (the woken response's heads and the next long poll's
// registration) answered from memory.
//
// Why it is exact. A user's entries — rows of the room's current state
// of type m.room.member with the user as state key, and the user's
// forgotten rooms — change only:
//   - at a room stream position whose event is an m.room.member event
//     with the user as state key (accepted or not: a rejected one
//     changes nothing, and dropping on it costs a read only), or where
//     roomserver_state_changes has a row for the user (a current-state
//     change no event shows: a state reset, a resync's end; see
//     roomserver's updateCurrentState). StreamTouched lists both, with
//     Member set to the user, and the waker reads every window it
//     dispatches with it, from the database: another process's commits
//     are read like this process's own, whether the notification came
//     through Redis or the waker's fallback poll;
//   - when the user forgets a room (roomserver_forgotten), which has no
//     stream position and no notification. Only the Forgotten flag of a
//     room the user left or was banned from changes then (rejoining
//     un-forgets in the join's own transaction, a member touch), and an
//     incremental sync without full_state reads Forgotten only for rooms
//     whose membership did not change since its token, which it leaves
//     out of the response whether forgotten or not (joined.go, "leave",
//     "ban"). So only incremental syncs without full_state use the memo;
//     initial syncs, full_state and sliding sync read afresh.
//
// The waker drops a user's entry when it dispatches a membership touch
// of the user, before it records the window as dispatched (done). An
// entry read when the waker had dispatched up to asOf is then the user's
// memberships as of every position in [asOf, done]: the read saw at
// least asOf (dispatched positions are committed), and no membership of
// the user changed in (asOf, done]. It may also show changes past done
// that the read already saw; those raise the response's room head, as a
// fresh read's would. A response whose room head lies in [asOf, done]
// may use it; any other reads. A read that overlaps the dispatch of any
// membership touch (gen moved) is not memoized: the touch may have been
// dropped before the read's answer was put.
//
// Only while the waker runs (on): a stopped waker drops nothing. A
// window the waker does not read (no waiter registered) or fails to read
// drops every entry.
//
// Concurrency: guarded by mu. Entries are never written after they are
// put; get returns the caller's own copy.
type membershipMemo struct {
	mu     sync.Mutex
	on     bool                 // the waker is dispatching; guarded by mu
	done   int64                // room stream position dispatched; guarded by mu
	gen    uint64               // bumped whenever an entry may have been dropped; guarded by mu
	byUser map[string]memoEntry // guarded by mu
	max    int                  // users kept at most (immutable)
}

type memoEntry struct {
	memberships []roomserver.MembershipEntry
	asOf        int64 // the waker's done when the read began
}

// memoTicket is what a read saw of the memo when it began.
type memoTicket struct {
	gen  uint64
	asOf int64
	ok   bool
}

// maxMemoUsers bounds the users the memo holds; when full it starts
// again (an entry is a few dozen bytes per room of the user's).
const maxMemoUsers = 20000

func newMembershipMemo(maxUsers int) *membershipMemo {
	return &membershipMemo{byUser: map[string]memoEntry{}, max: maxUsers}
}

// start is called by the waker when it begins dispatching after done.
func (m *membershipMemo) start(done int64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.on, m.done = true, done
	m.dropAll()
}

// stop is called when the waker stops: nothing drops entries any more.
func (m *membershipMemo) stop() {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.on = false
	m.dropAll()
}

// dispatched records that the waker has read the room stream up to upTo
// and that touched are the window's touches: the users whose membership
// they change lose their entries first.
func (m *membershipMemo) dispatched(touched []roomserver.StreamTouch, upTo int64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, t := range touched {
		if t.Member == "" {
			continue
		}
		delete(m.byUser, t.Member)
		m.gen++
	}
	m.done = max(m.done, upTo)
}

// skipped records that the waker moved on to upTo without reading the
// window: every entry goes.
func (m *membershipMemo) skipped(upTo int64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.dropAll()
	m.done = max(m.done, upTo)
}

func (m *membershipMemo) dropAll() {
	clear(m.byUser)
	m.gen++
}

// get returns userID's memberships when the memo holds them exact as of
// room (see the type's doc); room < 0 asks for them as of any position
// from the waker's done on (a long poll's registration: a change not yet
// dispatched wakes it through its user). ok is false when the caller
// must read.
func (m *membershipMemo) get(userID string, room int64) (memberships []roomserver.MembershipEntry, ok bool) {
	if m == nil {
		return nil, false
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	e, found := m.byUser[userID]
	if !m.on || !found || (room >= 0 && (room < e.asOf || room > m.done)) {
		return nil, false
	}
	return slices.Clone(e.memberships), true
}

// begin is called before a read whose answer put will keep.
func (m *membershipMemo) begin() memoTicket {
	if m == nil {
		return memoTicket{}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	return memoTicket{gen: m.gen, asOf: m.done, ok: m.on}
}

// put keeps the memberships of users read since t was taken (a user
// absent from got has none), unless an entry may have been dropped
// meanwhile. The lists are kept as they are: the caller must not
// change them afterwards.
func (m *membershipMemo) put(t memoTicket, users []string, got map[string][]roomserver.MembershipEntry) {
	if m == nil || !t.ok {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if !m.on || m.gen != t.gen {
		return
	}
	if len(m.byUser)+len(users) > m.max {
		m.dropAll()
		return
	}
	for _, u := range users {
		m.byUser[u] = memoEntry{memberships: got[u], asOf: t.asOf}
	}
}
