package roomserver

import (
	"context"
	"encoding/json"
	"sync"
	"testing"
	"time"

	"github.com/myelin-chat/myelin/storage"
	"github.com/myelin-chat/myelin/storage/storagetest"
)

// TestRoomWaitsSuspendAnnouncement: a send whose write cannot come
// before another commit — its room's lock is held (by a send that keeps
// it until its own commit, or any lockRoom holder), or the room's last
// queued write, which nothing may build on, has no outcome yet — does
// not count as on its way while it waits (storage.SuspendAnnouncement),
// so no commit is held for it meanwhile; once the wait is over it counts
// again, and its event write ends the announcement. Only SQLite's writer
// holds commits (ExpectWrite does nothing on PostgreSQL).
func TestRoomWaitsSuspendAnnouncement(t *testing.T) {
	db := storagetest.OpenSQLite(t)
	s := newTestServer(t, db)
	ctx := context.Background()
	room := mustCreate(t, s, CreateRoomRequest{Creator: alice, Preset: PresetPublicChat}).RoomID

	send := func(actx context.Context, body string) <-chan error {
		errc := make(chan error, 1)
		go func() {
			_, err := s.SendEvent(actx, SendEventRequest{RoomID: room, Sender: alice, Type: "m.room.message",
				Content: json.RawMessage(`{"body":"` + body + `"}`)})
			errc <- err
		}()
		return errc
	}
	live := func(t *testing.T, want int, what string) {
		t.Helper()
		deadline := time.Now().Add(3 * time.Second)
		for db.LiveAnnouncements() != want {
			if time.Now().After(deadline) {
				t.Fatalf("%s: %d live announcements, want %d", what, db.LiveAnnouncements(), want)
			}
			time.Sleep(time.Millisecond)
		}
	}
	// waiters waits until n requests wait for the room's lock.
	waiters := func(t *testing.T, n int) {
		t.Helper()
		l := s.roomLockOf(room)
		deadline := time.Now().Add(3 * time.Second)
		for {
			l.wmu.Lock()
			got := len(l.waiting)
			l.wmu.Unlock()
			if got == n {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%d requests wait for the room's lock, want %d", got, n)
			}
			time.Sleep(time.Millisecond)
		}
	}
	finished := func(t *testing.T, errc <-chan error) {
		t.Helper()
		select {
		case err := <-errc:
			if err != nil {
				t.Fatal(err)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("the send did not finish")
		}
	}
	// blockRoom makes the room's last queued write one that nothing may
	// build on and that has no outcome until release is called.
	blockRoom := func(t *testing.T) (release func()) {
		gate := make(chan struct{})
		var once sync.Once
		release = func() { once.Do(func() { close(gate) }) }
		t.Cleanup(release)              // never leave the writer stuck
		unlock := s.lockRoom(ctx, room) // the room's earlier writes have their outcome
		blocker := db.WriteQueued(ctx, func(storage.Tx) error { <-gate; return nil })
		s.tails.set(room, &roomTail{write: blocker})
		unlock()
		return release
	}

	t.Run("room lock held through a commit", func(t *testing.T) {
		var once sync.Once
		locked := s.lockRoom(ctx, room) // a lockRoom holder writes under the lock
		unlock := func() { once.Do(locked) }
		defer unlock() // never leave the room locked
		actx, done := db.ExpectWrite(ctx)
		defer done()
		live(t, 1, "announced")
		errc := send(actx, "after the lock")
		live(t, 0, "a send waiting for its room's lock")
		select {
		case err := <-errc:
			t.Fatalf("the send finished (%v) while its room's lock was held", err)
		default:
		}
		unlock()
		finished(t, errc)
		live(t, 0, "after the send's event write")
	})

	// A holder that builds a send and releases the lock once its write is
	// queued: the waiter's write can still join the commit, so it counts
	// until the holder starts waiting for a commit under the lock.
	t.Run("room lock held by a send building", func(t *testing.T) {
		var once sync.Once
		locked := s.lockRoomStripe(ctx, room)
		unlock := func() { once.Do(locked) }
		defer unlock()
		actx, done := db.ExpectWrite(ctx)
		defer done()
		errc := send(actx, "after the build")
		waiters(t, 1)
		time.Sleep(10 * time.Millisecond)
		if n := db.LiveAnnouncements(); n != 1 {
			t.Fatalf("%d live announcements while the holder builds, want 1", n)
		}
		s.roomLockOf(room).committing() // as a send nothing may build on, once queued
		live(t, 0, "a send waiting for a holder that waits for a commit")
		unlock()
		finished(t, errc)
		live(t, 0, "after the send's event write")
	})

	t.Run("room lock held by a state send until its commit", func(t *testing.T) {
		gate := make(chan struct{})
		var once sync.Once
		release := func() { once.Do(func() { close(gate) }) }
		defer release()
		s.lockRoom(ctx, room)() // no earlier write of the room in flight, no tail
		blocker := db.WriteQueued(ctx, func(storage.Tx) error { <-gate; return nil })
		stateErr := make(chan error, 1)
		go func() {
			_, err := s.SendEvent(ctx, SendEventRequest{RoomID: room, Sender: alice, Type: "m.room.topic",
				StateKey: ptr(""), Content: json.RawMessage(`{"topic":"held"}`)})
			stateErr <- err
		}()
		// The state send queues its write behind the blocker and keeps
		// the room's lock until it commits.
		deadline := time.Now().Add(3 * time.Second)
		for s.tails.get(room) == nil {
			if time.Now().After(deadline) {
				t.Fatal("the state send queued no write")
			}
			time.Sleep(time.Millisecond)
		}
		actx, done := db.ExpectWrite(ctx)
		defer done()
		errc := send(actx, "after the state event")
		waiters(t, 1)
		live(t, 0, "a send waiting for a state send's commit")
		release()
		finished(t, stateErr)
		finished(t, errc)
		if err := blocker.Wait(); err != nil {
			t.Fatal(err)
		}
		live(t, 0, "after the send's event write")
	})

	t.Run("room's queued write in flight", func(t *testing.T) {
		release := blockRoom(t)
		actx, done := db.ExpectWrite(ctx)
		defer done()
		errc := send(actx, "after the queued write")
		live(t, 0, "a send waiting for its room's queued write")
		release()
		finished(t, errc)
		live(t, 0, "after the send's event write")
	})

	// A send that waits under the lock for the room's last queued write
	// (nothing may build on it) waits for a commit holding the lock: a
	// send waiting for the lock behind it does not count meanwhile.
	t.Run("room lock held by a send waiting for the queued write", func(t *testing.T) {
		release := blockRoom(t)
		first := send(ctx, "waits for the queued write")
		l := s.roomLockOf(room)
		deadline := time.Now().Add(3 * time.Second)
		for l.mu.TryLock() { // until the first send holds the lock
			l.mu.Unlock()
			if time.Now().After(deadline) {
				t.Fatal("the first send did not take the room's lock")
			}
			time.Sleep(time.Millisecond)
		}
		actx, done := db.ExpectWrite(ctx)
		defer done()
		errc := send(actx, "behind it")
		waiters(t, 1)
		live(t, 0, "a send waiting for a holder that waits for the room's queued write")
		release()
		finished(t, first)
		finished(t, errc)
		live(t, 0, "after the send's event write")
	})

	// A request whose announcement was suspended while it waited for the
	// lock counts again once it holds it: it goes on to build its write.
	t.Run("the lock's waiter resumes its announcement", func(t *testing.T) {
		holder := s.lockRoom(ctx, room) // waits for a commit under the lock
		var once sync.Once
		unlockHolder := func() { once.Do(holder) }
		defer unlockHolder()
		actx, done := db.ExpectWrite(ctx)
		defer done()
		locked := make(chan func(), 1)
		go func() { locked <- s.lockRoomStripe(actx, room) }()
		waiters(t, 1)
		live(t, 0, "waiting for the lock")
		unlockHolder()
		select {
		case unlock := <-locked:
			defer unlock()
		case <-time.After(5 * time.Second):
			t.Fatal("the waiter did not get the lock")
		}
		if n := db.LiveAnnouncements(); n != 1 {
			t.Fatalf("%d live announcements once the waiter holds the lock, want 1 (resumed)", n)
		}
	})

	t.Run("lockRoom resumes the announcement", func(t *testing.T) {
		release := blockRoom(t)
		actx, done := db.ExpectWrite(ctx)
		defer done()
		locked := make(chan func(), 1)
		go func() { locked <- s.lockRoom(actx, room) }()
		defer func() {
			release()
			(<-locked)() // never leave the room locked
		}()
		live(t, 0, "lockRoom waiting for the room's queued write")
		release()
		var unlock func()
		select {
		case unlock = <-locked:
			locked <- unlock // for the deferred unlock
		case <-time.After(5 * time.Second):
			t.Fatal("lockRoom did not return")
		}
		if n := db.LiveAnnouncements(); n != 1 {
			t.Errorf("%d live announcements once the room is locked, want 1 (resumed)", n)
		}
		done()
		live(t, 0, "after done")
	})
}
