package storage_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/myelin-chat/myelin/storage"
)

// openHeld opens a SQLite database whose commit hold is long (hold) so
// that the tests below assert on outcomes, not on the machine's speed.
func openHeld(t *testing.T, hold, fresh, window time.Duration) *storage.DB {
	t.Helper()
	db, err := storage.Open(context.Background(), storage.Options{Engine: storage.SQLite, SQLitePath: t.TempDir() + "/held.db"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	db.SetHoldTimes(hold, fresh, window)
	exec(t, db, `CREATE TABLE t (v INTEGER)`)
	return db
}

func insert(v int) func(storage.Tx) error {
	return func(tx storage.Tx) error {
		_, err := tx.Exec(context.Background(), `INSERT INTO t (v) VALUES ($1)`, v)
		return err
	}
}

// An announced write that queues while a batch is being held shares its
// commit: the first write is answered only with it.
func TestCommitHeldForAnnouncedWrite(t *testing.T) {
	db := openHeld(t, 5*time.Second, 5*time.Second, 0)
	ctx := context.Background()
	before := commitsOf(db)
	actx, done := db.ExpectWrite(ctx)
	defer done()
	first := db.WriteQueued(ctx, insert(1))
	time.Sleep(50 * time.Millisecond)
	select {
	case <-first.Done():
		t.Fatal("the first write was answered while an announced write was still on its way")
	default:
	}
	second := db.WriteQueued(storage.ForAnnouncedWrite(actx), insert(2))
	within(t, 3*time.Second, "the held batch", func() {
		if err := first.Wait(); err != nil {
			t.Error(err)
		}
		if err := second.Wait(); err != nil {
			t.Error(err)
		}
	})
	if n := commitsOf(db) - before; n != 1 {
		t.Fatalf("%d commits for the write and the announced one, want 1", n)
	}
}

// An announcement that ends without a write releases the held commit at
// once, not after the hold's limit.
func TestAbandonedAnnouncementReleasesCommit(t *testing.T) {
	db := openHeld(t, 10*time.Second, 10*time.Second, 0)
	ctx := context.Background()
	_, done := db.ExpectWrite(ctx)
	w := db.WriteQueued(ctx, insert(1))
	time.Sleep(20 * time.Millisecond)
	select {
	case <-w.Done():
		t.Fatal("the write was answered while an announced write was still on its way")
	default:
	}
	done()
	done() // a second call changes nothing
	within(t, 3*time.Second, "the write after the announcement ended", func() {
		if err := w.Wait(); err != nil {
			t.Error(err)
		}
	})
}

// A stale announcement (older than its freshness) holds no commit.
func TestStaleAnnouncementHoldsNothing(t *testing.T) {
	db := openHeld(t, 10*time.Second, 20*time.Millisecond, 0)
	ctx := context.Background()
	_, done := db.ExpectWrite(ctx)
	defer done()
	w := db.WriteQueued(ctx, insert(1))
	within(t, 3*time.Second, "a write beside a stale announcement", func() {
		if err := w.Wait(); err != nil {
			t.Error(err)
		}
	})
}

// Writes nobody announced, and one client's announced writes one after
// the other, are never held: each commits as soon as it has run.
func TestLoneWritesNotHeld(t *testing.T) {
	db := openHeld(t, 10*time.Second, 10*time.Second, 10*time.Second)
	ctx := context.Background()
	within(t, 5*time.Second, "10 writes, announced and not", func() {
		for i := range 5 {
			exec(t, db, `INSERT INTO t (v) VALUES ($1)`, i)
		}
		for i := range 5 {
			actx, done := db.ExpectWrite(ctx)
			if err := db.Write(storage.ForAnnouncedWrite(actx), insert(i)); err != nil {
				t.Error(err)
			}
			done()
		}
	})
}

// After a commit that answered 3 announced writes, the next batch is held
// until 3 announced writes are in it (their clients sending again), then
// commits at once: one commit for the second round, none held longer.
func TestCommitHeldForAnsweredWritesComingBack(t *testing.T) {
	db := openHeld(t, 10*time.Second, 10*time.Second, 10*time.Second)
	ctx := context.Background()
	round := func(gap time.Duration) {
		var ctxs []context.Context
		for range 3 {
			actx, done := db.ExpectWrite(ctx)
			defer done()
			ctxs = append(ctxs, actx)
		}
		var ws []*storage.PendingWrite
		for i, actx := range ctxs {
			if i > 0 {
				time.Sleep(gap)
			}
			ws = append(ws, db.WriteQueued(storage.ForAnnouncedWrite(actx), insert(i)))
		}
		for _, w := range ws {
			if err := w.Wait(); err != nil {
				t.Fatal(err)
			}
		}
	}
	within(t, 5*time.Second, "the first round", func() { round(0) })
	before := commitsOf(db)
	// The second round's writes are announced one by one, each just
	// before it queues: only the count the last commit answered holds
	// the first of them.
	within(t, 5*time.Second, "the second round", func() {
		var ws []*storage.PendingWrite
		for i := range 3 {
			if i > 0 {
				time.Sleep(30 * time.Millisecond)
			}
			actx, done := db.ExpectWrite(ctx)
			ws = append(ws, db.WriteQueued(storage.ForAnnouncedWrite(actx), insert(10+i)))
			done()
		}
		for _, w := range ws {
			if err := w.Wait(); err != nil {
				t.Error(err)
			}
		}
	})
	if n := commitsOf(db) - before; n != 1 {
		t.Fatalf("%d commits for 3 answered writes coming back, want 1", n)
	}
}

// notAnswered fails the test if w is answered within d (a held commit).
func notAnswered(t *testing.T, w *storage.PendingWrite, d time.Duration, why string) {
	t.Helper()
	select {
	case <-w.Done():
		t.Fatalf("the write was answered while %s", why)
	case <-time.After(d):
	}
}

// A request waiting for something that may itself wait for a commit (a
// room's lock, a queued write's outcome) suspends its announcement: a
// commit held for it is released at once, and while suspended it holds
// nothing. Resumed, it counts again, as if announced then, and its write
// shares the commit of a write held for it.
func TestSuspendedAnnouncementHoldsNothing(t *testing.T) {
	db := openHeld(t, 10*time.Second, 10*time.Second, 0)
	ctx := context.Background()
	actx, done := db.ExpectWrite(ctx)
	defer done()
	w := db.WriteQueued(ctx, insert(1))
	notAnswered(t, w, 30*time.Millisecond, "an announced write was on its way")
	resume := storage.SuspendAnnouncement(actx)
	if n := db.LiveAnnouncements(); n != 0 {
		t.Fatalf("%d live announcements while suspended, want 0", n)
	}
	within(t, 3*time.Second, "the write held for a suspended announcement", func() {
		if err := w.Wait(); err != nil {
			t.Error(err)
		}
	})
	within(t, 3*time.Second, "a write beside a suspended announcement", func() {
		exec(t, db, `INSERT INTO t (v) VALUES (2)`)
	})
	// A second suspension while suspended changes nothing, and its
	// resume does nothing either.
	storage.SuspendAnnouncement(actx)()
	if n := db.LiveAnnouncements(); n != 0 {
		t.Fatalf("%d live announcements after a nested suspension, want 0", n)
	}
	resume()
	if n := db.LiveAnnouncements(); n != 1 {
		t.Fatalf("%d live announcements once resumed, want 1", n)
	}
	before := commitsOf(db)
	w = db.WriteQueued(ctx, insert(3))
	notAnswered(t, w, 30*time.Millisecond, "a resumed announced write was on its way")
	announced := db.WriteQueued(storage.ForAnnouncedWrite(actx), insert(4))
	within(t, 3*time.Second, "the held batch", func() {
		if err := w.Wait(); err != nil {
			t.Error(err)
		}
		if err := announced.Wait(); err != nil {
			t.Error(err)
		}
	})
	if n := commitsOf(db) - before; n != 1 {
		t.Fatalf("%d commits for the held write and the resumed announced one, want 1", n)
	}
	if n := db.LiveAnnouncements(); n != 0 {
		t.Fatalf("%d live announcements after the announced write queued, want 0", n)
	}
	resume() // after the write: nothing to resume
	if n := db.LiveAnnouncements(); n != 0 {
		t.Fatalf("%d live announcements after a late resume, want 0", n)
	}
}

// Another write made with the announcing request's context is not the
// announced write: its commit is not held for the announcement (the
// request waits for it, so its announced write cannot come first), and
// the announcement stands once it is answered, until the announced write
// (ForAnnouncedWrite) queues.
func TestOtherWriteKeepsAnnouncement(t *testing.T) {
	db := openHeld(t, 10*time.Second, 10*time.Second, 0)
	ctx := context.Background()
	actx, done := db.ExpectWrite(ctx)
	defer done()
	within(t, 3*time.Second, "a write of the announcing request", func() {
		if err := db.Write(actx, insert(1)); err != nil {
			t.Error(err)
		}
	})
	within(t, 3*time.Second, "a queued write of the announcing request", func() {
		if err := db.WriteQueued(actx, insert(2)).Wait(); err != nil {
			t.Error(err)
		}
	})
	if n := db.LiveAnnouncements(); n != 1 {
		t.Fatalf("%d live announcements after the request's other writes, want 1", n)
	}
	before := commitsOf(db)
	w := db.WriteQueued(ctx, insert(3))
	notAnswered(t, w, 30*time.Millisecond, "the announced write was still on its way")
	within(t, 3*time.Second, "the announced write", func() {
		if err := db.Write(storage.ForAnnouncedWrite(actx), insert(4)); err != nil {
			t.Error(err)
		}
		if err := w.Wait(); err != nil {
			t.Error(err)
		}
	})
	if n := commitsOf(db) - before; n != 1 {
		t.Fatalf("%d commits for the held write and the announced one, want 1", n)
	}
	if n := db.LiveAnnouncements(); n != 0 {
		t.Fatalf("%d live announcements after the announced write, want 0", n)
	}
}

// Before any COMMIT has been timed the hold is bounded by its limit
// alone, not off: the first commit of a fresh database is held for an
// announced write as any other.
func TestHoldBeforeFirstCommitTimed(t *testing.T) {
	db, err := storage.Open(context.Background(), storage.Options{Engine: storage.SQLite, SQLitePath: t.TempDir() + "/fresh.db"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	db.SetBoundedHoldTimes(10*time.Second, 10*time.Second, 0)
	ctx := context.Background()
	actx, done := db.ExpectWrite(ctx)
	defer done()
	first := db.WriteQueued(ctx, func(tx storage.Tx) error {
		_, err := tx.Exec(ctx, `CREATE TABLE t (v INTEGER)`)
		return err
	})
	notAnswered(t, first, 30*time.Millisecond, "an announced write was on its way")
	announced := db.WriteQueued(storage.ForAnnouncedWrite(actx), insert(1))
	within(t, 3*time.Second, "the held batch", func() {
		if err := first.Wait(); err != nil {
			t.Error(err)
		}
		if err := announced.Wait(); err != nil {
			t.Error(err)
		}
	})
	if n := commitsOf(db); n != 1 {
		t.Fatalf("%d commits for the first write and the announced one, want 1", n)
	}
	if db.CommitTime() <= 0 {
		t.Fatalf("commit time %v after a commit, want > 0", db.CommitTime())
	}
}

// A COMMIT that fails says nothing of how long commits take: the moving
// average that bounds the hold is left as it was.
func TestFailedCommitNotTimed(t *testing.T) {
	db := openHeld(t, time.Millisecond, time.Millisecond, 0)
	exec(t, db, `CREATE TABLE parent (id INTEGER PRIMARY KEY)`)
	exec(t, db, `CREATE TABLE child (id INTEGER PRIMARY KEY, parent INTEGER REFERENCES parent (id) DEFERRABLE INITIALLY DEFERRED)`)
	exec(t, db, `INSERT INTO parent (id) VALUES (1)`)
	exec(t, db, `INSERT INTO child (id, parent) VALUES (1, 1)`)
	before, commits := db.CommitTime(), commitsOf(db)
	if before <= 0 {
		t.Fatalf("commit time %v after four commits, want > 0", before)
	}
	// The deferred foreign key is checked at COMMIT, which fails.
	err := db.Write(context.Background(), func(tx storage.Tx) error {
		_, err := tx.Exec(context.Background(), `INSERT INTO child (id, parent) VALUES (2, 2)`)
		return err
	})
	if err == nil || !strings.Contains(err.Error(), "commit") {
		t.Fatalf("write whose COMMIT breaks a deferred foreign key: %v, want a commit error", err)
	}
	if n := commitsOf(db) - commits; n != 0 {
		t.Fatalf("%d commits counted for a failed COMMIT, want 0", n)
	}
	if after := db.CommitTime(); after != before {
		t.Fatalf("commit time %v after a failed COMMIT, was %v", after, before)
	}
	exec(t, db, `INSERT INTO child (id, parent) VALUES (3, 1)`) // the writer goes on
}

// WALRestarts counts only the commits that held nothing but the idle
// checkpointer's WAL-restart write: one that a caller's write shared is
// the caller's commit, so CommitCount less WALRestarts is the commits of
// callers' writes either way.
func TestWALRestartsCountsOwnCommitsOnly(t *testing.T) {
	db := openHeld(t, 10*time.Second, 10*time.Second, 0)
	ctx := context.Background()
	commits, restarts := db.CommitCount(), db.WALRestarts()
	// Alone: its own commit.
	db.RestartWAL()
	within(t, 3*time.Second, "a lone WAL restart", func() {
		for db.WALRestarts() == restarts {
			time.Sleep(time.Millisecond)
		}
	})
	if c, r := db.CommitCount()-commits, db.WALRestarts()-restarts; c != 1 || r != 1 {
		t.Fatalf("a lone WAL restart: %d commits, %d counted as restarts; want 1 and 1", c, r)
	}
	// Sharing a commit held for an announced write with a caller's write.
	commits, restarts = db.CommitCount(), db.WALRestarts()
	actx, done := db.ExpectWrite(ctx)
	defer done()
	w := db.WriteQueued(ctx, insert(1))
	notAnswered(t, w, 30*time.Millisecond, "an announced write was on its way")
	db.RestartWAL()
	within(t, 3*time.Second, "the held batch", func() {
		if err := db.Write(storage.ForAnnouncedWrite(actx), insert(2)); err != nil {
			t.Error(err)
		}
		if err := w.Wait(); err != nil {
			t.Error(err)
		}
	})
	if c, r := db.CommitCount()-commits, db.WALRestarts()-restarts; c != 1 || r != 0 {
		t.Fatalf("a WAL restart sharing a caller's commit: %d commits, %d counted as restarts; want 1 and 0", c, r)
	}
}

// A fresh announcement whose write does not come holds the commit only
// up to the hold's limit, not for as long as it stays fresh.
func TestHoldEndsAtItsLimit(t *testing.T) {
	db := openHeld(t, 100*time.Millisecond, 20*time.Second, 0)
	ctx := context.Background()
	_, done := db.ExpectWrite(ctx)
	defer done()
	w := db.WriteQueued(ctx, insert(1))
	within(t, 5*time.Second, "a write beside an announcement fresh for longer than the hold", func() {
		if err := w.Wait(); err != nil {
			t.Error(err)
		}
	})
}

// Another write of the announcing request that is refused before it
// queues (its context ended) gives the announcement back: it is live
// again afterwards, not left suspended.
func TestRefusedOtherWriteResumesAnnouncement(t *testing.T) {
	db := openHeld(t, time.Second, time.Second, 0)
	actx, done := db.ExpectWrite(context.Background())
	defer done()
	for i := range 20 { // queueing and refusing race: either must resume
		cctx, cancel := context.WithCancel(actx)
		cancel()
		if err := db.Write(cctx, insert(i)); err == nil {
			t.Fatal("a write with an ended context succeeded")
		}
		if n := db.LiveAnnouncements(); n != 1 {
			t.Fatalf("try %d: %d live announcements after the refused write, want 1", i, n)
		}
	}
}
