package storage

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"time"
)

// writeRequest is one Write call waiting for the SQLite writer.
type writeRequest struct {
	ctx context.Context
	fn  func(Tx) error
	// err is the outcome, set by the writer before it closes finished.
	err      error
	finished chan struct{}
	// failed is set by the writer (only ever read on the writer's
	// goroutine, by later write functions: see PendingWrite.Failed) as
	// soon as the request is known not to commit: its function failed
	// or was skipped, or its transaction did not commit.
	failed bool
	// tx is set by the writer when fn ran; the caller reads it (for its
	// AfterCommit hooks) only after finished is closed.
	tx *writeTx
	// announced: this is the write its request announced (ExpectWrite,
	// ForAnnouncedWrite), queued while the announcement stood (intent.go).
	announced bool
	// resume, when set, resumes the request's announcement, suspended
	// while it waits for this write of its own (intent.go); the caller
	// calls it once the outcome is known.
	resume func()
	// walRestart: restartWAL's own write (WALRestarts).
	walRestart bool
}

// finish records req's outcome and wakes its caller.
func (req *writeRequest) finish(err error) {
	req.err = err
	req.failed = err != nil
	close(req.finished)
}

// maxBatch bounds how many write functions share one transaction, so one
// commit never holds a huge batch of callers hostage.
const maxBatch = 256

func (db *DB) enqueueWrite(ctx context.Context, fn func(Tx) error) error {
	req, err := db.queueWrite(ctx, fn)
	if err != nil {
		return err
	}
	return req.wait()
}

// queueWrite hands fn to the writer and returns without waiting for it.
func (db *DB) queueWrite(ctx context.Context, fn func(Tx) error) (*writeRequest, error) {
	return db.queueWriteOf(ctx, fn, false)
}

// queueWriteOf is queueWrite; walRestart marks restartWAL's write.
func (db *DB) queueWriteOf(ctx context.Context, fn func(Tx) error, walRestart bool) (*writeRequest, error) {
	req := &writeRequest{ctx: ctx, fn: fn, finished: make(chan struct{}), walRestart: walRestart}
	in, announcedWrite := db.announcementOf(ctx)
	if in != nil && !announcedWrite && in.suspend(false) {
		// Another write of the announcing request: the request waits for
		// it (Write, PendingWrite.Wait), so its announced write cannot
		// come before this one's commit, which must not be held for it.
		req.resume = in.resume
	}
	if announcedWrite {
		req.announced = in.standing()
	}
	// Holding closeMu (shared) while sending means Close, which takes it
	// exclusively before closing db.closed, cannot slip in between our
	// check and our send: every request that reaches the queue is queued
	// before the writer starts its final drain, so none is stranded.
	db.closeMu.RLock()
	select {
	case <-db.closed:
		db.closeMu.RUnlock()
		req.resumeAnnouncement()
		return nil, ErrClosed
	default:
	}
	select {
	case <-ctx.Done():
		db.closeMu.RUnlock()
		req.resumeAnnouncement()
		return nil, ctx.Err()
	case db.queue <- req:
	}
	db.closeMu.RUnlock()
	if announcedWrite {
		in.queued() // after queueing: the writer sees one or the other
	}
	return req, nil
}

// resumeAnnouncement resumes the request's announcement if it was
// suspended for this write (queueWrite).
func (req *writeRequest) resumeAnnouncement() {
	if req.resume != nil {
		req.resume()
	}
}

// wait returns req's outcome once it is known and, when it committed,
// runs its AfterCommit hooks.
func (req *writeRequest) wait() error {
	// Once queued, wait for the outcome even if ctx ends: the function may
	// already be running inside a transaction that will commit, and the
	// caller must not believe a committed write failed.
	<-req.finished
	req.resumeAnnouncement()
	if req.err != nil {
		return req.err
	}
	// Hooks run here, on the caller's goroutine (as on PostgreSQL), not on
	// the writer: a hook that blocks or calls Write must not stall it.
	req.tx.runAfterCommit()
	return nil
}

// WAL checkpoints in idle spells and under load, off the writer.
//
// SQLite checkpoints the WAL by itself (wal_autocheckpoint) inside the
// COMMIT that crosses the threshold: that write's answer, and the
// delivery of what it wrote, then wait for the whole checkpoint — copying
// the WAL's pages into the database file and an fsync of that file, 2 to
// 50 ms on the shared test machine, where a message's commit takes
// 0.3–0.5 ms (docs/benchmarks.md, "Low-rate sends (lowrate)") — and the
// next commit, the first of a restarted WAL, fsyncs the WAL's new header
// before its frames: a second fsync on a write's path. So once no commit
// has come for checkpointIdle and the WAL holds checkpointPages pages not
// yet in the database file, a checkpoint copies them: every write it
// copies has been answered, and the next write restarts the WAL from its
// beginning, so at low rates the WAL stays far below SQLite's threshold.
//
// The trigger is the WAL's pages, which SQLite reports (a NOOP
// checkpoint), not a count of commits: how many pages a commit writes
// depends on the write. A message to a room of 20 members writes ~36 and
// one to 200 members ~125 (its push rows touch an index page per member),
// so the 32 commits that used to be awaited came after SQLite's 1000
// pages, and SQLite's checkpoint ran inside the COMMIT of every 28th
// message at 2 msg/s to 20 listeners and of every 8th to 200. Nor does it
// run after every idle spell: the first commit after each restart of the
// WAL syncs the WAL's new header before its frames, a second fsync in
// that commit (docs/benchmarks.md, "commitpath").
//
// A server that never pauses for checkpointIdle (eight clients sending
// back to back) keeps SQLite's own checkpoint, the only one that can
// restart the WAL while writes keep coming: it runs on the writer right
// after a COMMIT, when nothing newer is in the WAL. Each costs the
// writer's callers the copy and the fsyncs above, so it comes every
// walAutocheckpointPages pages, not SQLite's 1000: a quarter as often
// (eight senders write ~42 pages a commit, so with 1000 it came every
// ~24 commits; docs/benchmarks.md, "sendwriter"). So that the copy inside
// that COMMIT stays about as small as it was with 1000 pages, the
// checkpointer copies the rest beforehand: every checkpointBusyCommits
// commits, once the WAL holds checkpointBusyPages pages not yet copied,
// a PASSIVE checkpoint runs as the idle one does, while the writer goes
// on, and leaves the WAL's restart to SQLite's checkpoint.
//
// Both run on a reader connection, on a goroutine of their own, not on
// the writer: a PASSIVE checkpoint takes no lock a writer waits for (it
// copies what has committed while the writer appends to the WAL), so a
// write that comes while one runs does not wait for it. Durability is
// unchanged: a write is answered after its COMMIT's fsync of the WAL
// (synchronous=FULL); a checkpoint only copies committed pages, and the
// reader connection, synchronous=FULL too, fsyncs the WAL before copying
// and the database file after.
const (
	checkpointIdle  = 20 * time.Millisecond
	checkpointPages = 256 // a sixteenth of walAutocheckpointPages

	// walAutocheckpointPages is SQLite's own checkpoint threshold on the
	// writer connection (PRAGMA wal_autocheckpoint, storage.go).
	walAutocheckpointPages = 4000
	// checkpointBusyPages leaves SQLite's checkpoint the last 1000 pages,
	// what it copied with its default threshold.
	checkpointBusyPages = walAutocheckpointPages - 1000
	// checkpointBusyCommits spaces the NOOP checkpoints that read the
	// WAL's size for checkpointBusy (a reader connection's query each):
	// one every 8 commits, so that the WAL grows by at most ~1000 pages
	// between two (a message to 200 members writes ~125 pages), and at a
	// few messages a second one every few seconds.
	checkpointBusyCommits = 8
)

// groupCommitLoop is the single SQLite writer. It takes every request that
// is waiting, runs them in one transaction (each but the first in its own
// savepoint), takes in those that arrived meanwhile (see runBatch) and
// commits once.
func (db *DB) groupCommitLoop() {
	defer db.writerWG.Done()
	batch := make([]*writeRequest, 0, maxBatch)
	results := make([]error, 0, maxBatch) // reused: one per commit was ~4 KiB of garbage
	for {
		select {
		case first := <-db.queue:
			db.commitBatch(append(batch[:0], first), results)
		case <-db.closed:
			// Close stops new requests before closing db.closed (see
			// enqueueWrite), so the queue only shrinks: finish it.
			for {
				select {
				case first := <-db.queue:
					db.commitBatch(append(batch[:0], first), results)
				default:
					return
				}
			}
		}
	}
}

// checkpointLoop calls checkpointIdle checkpointIdle after the last
// commit it was told of (db.committed), and checkpointBusy after every
// checkpointBusyCommits commits, until Close.
func (db *DB) checkpointLoop() {
	defer db.writerWG.Done()
	idle := time.NewTimer(time.Hour)
	idle.Stop()
	defer idle.Stop()
	var busyAt int64 // db.commits when checkpointBusy last ran
	for {
		select {
		case <-db.committed:
			idle.Reset(checkpointIdle)
			// One signal may stand for several commits: count them.
			if n := db.commits.Load(); n-busyAt >= checkpointBusyCommits {
				busyAt = n
				db.checkpointBusy()
			}
		case <-idle.C:
			db.checkpointIdle()
		case <-db.closed:
			return
		}
	}
}

// checkpointIdle runs a PASSIVE checkpoint on a reader connection if
// the WAL holds checkpointPages pages not yet in the database file, and
// then restarts the WAL if it copied all of it. A failure is not
// reported: the next idle spell or SQLite's own checkpoint does the work.
func (db *DB) checkpointIdle() {
	all, ok := db.checkpointFrom(checkpointPages)
	if !ok {
		return
	}
	db.idleCheckpoints.Add(1)
	if all {
		db.restartWAL()
	}
}

// checkpointBusy runs a PASSIVE checkpoint on a reader connection if the
// WAL holds checkpointBusyPages pages not yet in the database file. The
// WAL is not restarted here: the writer is busy, and SQLite's checkpoint
// after one of its COMMITs does that (see above).
func (db *DB) checkpointBusy() {
	if _, ok := db.checkpointFrom(checkpointBusyPages); ok {
		db.busyCheckpoints.Add(1)
	}
}

// checkpointFrom runs a PASSIVE checkpoint on a reader connection if the
// WAL holds at least pages pages not yet in the database file. ok reports
// that it ran; all, that it copied the whole WAL.
func (db *DB) checkpointFrom(pages int64) (all, ok bool) {
	ctx := context.Background()
	conn, err := db.reader.Conn(ctx)
	if err != nil {
		return false, false
	}
	defer conn.Close()
	// NOOP copies nothing; it reports the WAL's pages and how many of
	// them are in the database file.
	var busy, walPages, copied int64
	err = conn.QueryRowContext(ctx, "PRAGMA wal_checkpoint(NOOP)").Scan(&busy, &walPages, &copied)
	if err != nil || walPages-copied < pages {
		return false, false
	}
	if db.beforeCheckpoint != nil {
		db.beforeCheckpoint()
	}
	err = conn.QueryRowContext(ctx, "PRAGMA wal_checkpoint(PASSIVE)").Scan(&busy, &walPages, &copied)
	if err != nil {
		return false, false
	}
	return busy == 0 && copied == walPages, true
}

// restartWAL queues a one-row write, so that the WAL restarts now, in
// the idle spell, rather than in the next write a caller waits for.
//
// Once a checkpoint has copied the whole WAL, the next commit writes
// its frames from the WAL's beginning under a new header, and with
// synchronous=FULL SQLite fsyncs that header before the frames: two
// fsyncs in that commit instead of one. At two messages a second to 20
// listeners that was every seventh message, ~1.8 ms more on a disk whose
// fsync takes 1.8 ms, and it set that scenario's p99 (docs/benchmarks.md,
// "holdcommit"). The write changes nothing anyone reads: a counter in
// storage's own table. A write that comes meanwhile shares its commit or
// follows it, as any other. Nobody waits for its answer; a failure is
// not reported (the next commit restarts the WAL as before).
func (db *DB) restartWAL() {
	_, _ = db.queueWriteOf(context.Background(), func(tx Tx) error {
		_, err := tx.Exec(context.Background(), `INSERT INTO myelin_wal_restart (id, n) VALUES (1, 1) ON CONFLICT (id) DO UPDATE SET n = myelin_wal_restart.n + 1`)
		return err
	}, true)
}

// onlyWALRestarts reports whether batch, which committed, held nothing
// but restartWAL's writes: such a commit is counted in WALRestarts. A
// commit that a caller's write shared is the caller's (it would have
// happened without the restart).
func onlyWALRestarts(batch []*writeRequest) bool {
	for _, req := range batch {
		if !req.walRestart {
			return false
		}
	}
	return true
}

// takeWaiting appends to batch whatever is waiting in queue, up to
// maxBatch requests in all.
func takeWaiting(batch []*writeRequest, queue <-chan *writeRequest) []*writeRequest {
	for len(batch) < maxBatch {
		select {
		case req := <-queue:
			batch = append(batch, req)
		default:
			return batch
		}
	}
	return batch
}

// awaitAnnounced waits up to hold for a write to queue, or for an
// announced write to go away, and appends what queued to batch.
func (db *DB) awaitAnnounced(batch []*writeRequest, hold time.Duration) []*writeRequest {
	t := time.NewTimer(hold)
	defer t.Stop()
	select {
	case req := <-db.queue:
		batch = append(batch, req)
	case <-db.intents.gone:
	case <-t.C:
	case <-db.closed:
	}
	// Whichever woke it, what queued meanwhile joins the batch.
	return takeWaiting(batch, db.queue)
}

// commitBatch runs batch and whatever joins it (runBatch) in one
// transaction and commits once; then every request's outcome is known.
// results is scratch space of capacity maxBatch, the writer's own.
//
// The transaction is BEGIN IMMEDIATE … COMMIT run on the writer's one
// connection, taken as a *sql.Conn, not a *sql.Tx: database/sql starts a
// goroutine for every *sql.Tx (to roll it back if its context ends) and
// one more for every query run in it (to close the rows if the
// transaction ends), each started and woken again when the rows close —
// about nine goroutines per commit of eight messages, each message's
// write running queries. On a *sql.Conn with an uncancellable context it
// starts none. What the *sql.Tx did besides is done here: the statements
// run only on this goroutine, and a failed COMMIT is followed by a
// ROLLBACK (as go-sqlite3's Tx.Commit does: SQLite may leave the
// transaction open); a connection whose ROLLBACK fails is in an unknown
// state and is closed rather than used again (discardConn).
func (db *DB) commitBatch(batch []*writeRequest, results []error) {
	ctx := context.Background()
	start := time.Now()
	conn, err := db.beginWrite(ctx)
	if err != nil {
		for _, req := range takeWaiting(batch, db.queue) {
			req.finish(fmt.Errorf("storage: begin write: %w", err))
		}
		return
	}
	defer conn.Close() // back to the pool, for the next batch
	batch, results, ok := db.runBatch(ctx, conn, start, batch, results)
	defer clear(results) // no error kept alive until the slot is reused
	if !ok {
		return // runBatch finished every request
	}
	committing := time.Now()
	_, err = conn.ExecContext(ctx, "COMMIT")
	if err != nil {
		rollbackWrite(conn)
		for i, req := range batch {
			if results[i] == nil {
				results[i] = fmt.Errorf("storage: commit: %w", err)
			}
			req.finish(results[i])
		}
		return
	}
	db.timeCommit(time.Since(committing)) // a failed COMMIT is not timed (intent.go)
	db.commits.Add(1)
	if onlyWALRestarts(batch) {
		db.walRestarts.Add(1)
	}
	select {
	case db.committed <- struct{}{}: // checkpointLoop: a commit to copy
	default: // it has been told already
	}
	// The OnCommit hooks of the writes that committed, in the order the
	// writes ran, before any of them is acknowledged.
	for i, req := range batch {
		if results[i] == nil && req.tx != nil {
			req.tx.runOnCommit()
		}
	}
	for i, req := range batch {
		req.finish(results[i])
	}
	db.answered, db.answeredAt = countAnnounced(batch), time.Now()
}

// beginWrite takes the writer's connection and begins a write
// transaction on it (IMMEDIATE: the write lock now, so that no statement
// of the batch meets SQLITE_BUSY half-way).
func (db *DB) beginWrite(ctx context.Context) (*sql.Conn, error) {
	conn, err := db.writer.Conn(ctx)
	if err != nil {
		return nil, err
	}
	if _, err := conn.ExecContext(ctx, "BEGIN IMMEDIATE"); err != nil {
		// SQLITE_BUSY past busy_timeout (another process writing), say:
		// no transaction is open (a ROLLBACK that failed closed its
		// connection), so the connection serves the next batch.
		conn.Close()
		return nil, err
	}
	return conn, nil
}

// rollbackWrite ends the transaction on conn without its writes.
func rollbackWrite(conn *sql.Conn) {
	if _, err := conn.ExecContext(context.Background(), "ROLLBACK"); err != nil {
		discardConn(conn)
	}
}

// discardConn closes conn's connection instead of handing it back to
// the pool (database/sql closes a connection whose Raw call reports
// driver.ErrBadConn); the next batch opens a fresh one.
func discardConn(conn *sql.Conn) {
	_ = conn.Raw(func(any) error { return driver.ErrBadConn })
}

// runBatch runs the requests of batch in order in the transaction open
// on sqlTx (beginWrite), each after the
// first in its own savepoint (see below for the first). Before it commits, it takes in the requests queued while it ran
// (up to maxBatch in all), and runs them too: a write that arrives while
// a batch is still running shares that batch's commit instead of waiting
// for the commit and then a whole batch of its own. Nothing is committed
// here, so no request is answered before the commit that holds it. It
// returns the whole batch and each request's outcome so far; ok is false
// when the transaction was rolled back and every request finished.
func (db *DB) runBatch(ctx context.Context, sqlTx *sql.Conn, start time.Time, batch []*writeRequest, results []error) (_ []*writeRequest, _ []error, ok bool) {
	results = results[:0]
	for i := 0; ; i++ {
		if i == len(batch) {
			batch = takeWaiting(batch, db.queue)
			for i == len(batch) && len(batch) < maxBatch {
				// Everything queued has run: hold the commit while
				// announced writes are on their way (intent.go).
				hold := db.holdFor(start, countAnnounced(batch))
				if hold <= 0 {
					break
				}
				batch = db.awaitAnnounced(batch, hold)
			}
			if i == len(batch) {
				return batch, results, true
			}
		}
		req := batch[i]
		results = append(results, nil)
		if err := req.ctx.Err(); err != nil {
			results[i] = err
			req.failed = true
			continue
		}
		tx := &writeTx{txQuerier: txQuerier{tx: sqlTx, rewrite: db.rewrite, uncancellable: true}, tracked: true}
		req.tx = tx
		if i == 0 {
			// The first write of the transaction needs no savepoint of
			// its own: if it fails, nothing else has run in the
			// transaction, so the whole of it is rolled back and the
			// write answered; the writer then starts afresh with
			// whatever is queued. (Half the statements of a lone write.)
			err := callWrite(req.fn, tx)
			tx.closeRows()
			if err == nil && !inTransaction(sqlTx) {
				err = errTransactionGone
			}
			if err != nil {
				rollbackWrite(sqlTx)
				req.finish(err)
				return batch, nil, false
			}
			continue
		}
		if _, err := sqlTx.ExecContext(ctx, "SAVEPOINT w"); err != nil {
			results[i] = fmt.Errorf("storage: savepoint: %w", err)
			req.failed = true
			continue
		}
		err := callWrite(req.fn, tx)
		tx.closeRows()
		if err != nil {
			results[i] = err
			req.failed = true
			if _, rbErr := sqlTx.ExecContext(ctx, "ROLLBACK TO w"); rbErr != nil {
				// The transaction is in an unknown state: fail everyone.
				abandonBatch(sqlTx, batch, results, fmt.Errorf("storage: rollback to savepoint: %w", rbErr))
				return batch, nil, false
			}
		}
		_, relErr := sqlTx.ExecContext(ctx, "RELEASE w")
		if relErr != nil || !inTransaction(sqlTx) {
			// The batch's transaction is gone: SQLite rolled it back
			// itself (a disk full or I/O error, say, that the write
			// function did not pass on), so the savepoint is gone too,
			// or a SAVEPOINT after that rollback began a transaction of
			// its own, which RELEASE just committed. Either way what the
			// requests so far wrote is not in one transaction any more:
			// fail them all rather than report a write failed that
			// committed, or committed that was rolled back; and those
			// taken in that have not run (as when ROLLBACK TO fails).
			if relErr == nil {
				relErr = errTransactionGone
			}
			abandonBatch(sqlTx, batch, results, fmt.Errorf("storage: release savepoint: %w", relErr))
			return batch, nil, false
		}
	}
}

// abandonBatch rolls back the transaction on conn and fails every
// request of batch: with its own error where its write failed (results,
// one per request run so far), else with err (what it wrote is rolled
// back, or it never ran).
func abandonBatch(conn *sql.Conn, batch []*writeRequest, results []error, err error) {
	rollbackWrite(conn)
	for j, r := range batch {
		if j < len(results) && results[j] != nil {
			r.finish(results[j])
		} else {
			r.finish(err)
		}
	}
}

// errTransactionGone: a write function returned but the batch's
// transaction is no longer open (SQLite rolled it back).
var errTransactionGone = errors.New("storage: the write transaction was rolled back by SQLite")

// inTransaction reports whether conn is inside a transaction
// (sqlite3_get_autocommit is 0): SQLite ends one by itself after some
// errors (https://sqlite.org/lang_transaction.html, "Response To Errors
// Within A Transaction"). A connection that cannot tell (a build without
// cgo) is taken to be in one.
func inTransaction(conn *sql.Conn) bool {
	in := true
	_ = conn.Raw(func(dc any) error {
		if c, ok := dc.(interface{ AutoCommit() bool }); ok {
			in = !c.AutoCommit()
		}
		return nil
	})
	return in
}

// PendingWrite is a write handed to the database by WriteQueued whose
// outcome may not be known yet.
type PendingWrite struct {
	req *writeRequest // nil when the outcome was known at once
	err error         // the outcome when req is nil
}

// WriteQueued is Write without the wait: on SQLite it queues fn for the
// group-commit writer and returns at once; Wait then returns what Write
// would have. Writes queued by one goroutine run, and commit, in the order
// they were queued, so a later write function sees an earlier one's rows
// (in the same transaction or a committed one) unless Failed says it did
// not commit. On PostgreSQL (no shared writer) it runs fn and commits
// before returning, as Write does.
func (db *DB) WriteQueued(ctx context.Context, fn func(tx Tx) error) *PendingWrite {
	if db.engine != SQLite {
		return &PendingWrite{err: db.writePostgres(ctx, fn)}
	}
	req, err := db.queueWrite(ctx, fn)
	if err != nil {
		return &PendingWrite{err: err}
	}
	return &PendingWrite{req: req}
}

// Wait blocks until the write has committed or failed and returns its
// error; after a commit it first runs the write's AfterCommit hooks on the
// calling goroutine. Call it once.
func (p *PendingWrite) Wait() error {
	if p.req == nil {
		return p.err
	}
	return p.req.wait()
}

// Done is closed once the write's outcome is known (its AfterCommit hooks
// may not have run yet).
func (p *PendingWrite) Done() <-chan struct{} {
	if p.req == nil {
		return closedChan
	}
	return p.req.finished
}

// Committed reports whether the write has committed; false while it is
// in flight (see Done) and when it failed.
func (p *PendingWrite) Committed() bool {
	select {
	case <-p.Done():
	default:
		return false
	}
	if p.req == nil {
		return p.err == nil
	}
	return p.req.err == nil
}

// Failed reports whether the write failed or will not commit. It may be
// called only from inside a write function that was queued after p (on
// SQLite it runs on the writer's goroutine, which alone sets the answer).
// There, false means p's writes are visible to the caller's transaction
// and commit with it or have committed already: p ran earlier in the same
// transaction without error (the transaction then commits or fails as a
// whole) or in an earlier, committed one.
func (p *PendingWrite) Failed() bool {
	if p.req == nil {
		return p.err != nil
	}
	return p.req.failed
}

// closedChan is the Done channel of a write whose outcome is known.
var closedChan = func() chan struct{} { c := make(chan struct{}); close(c); return c }()
