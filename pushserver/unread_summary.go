package pushserver

import (
	"context"

	"github.com/myelin-chat/myelin/storage"
)

// The unread summary (push_unread).
//
// A user's unread count in a room's thread is the number of their
// push_notifications rows in it past both their unthreaded read marker
// (push_read thread '') and the thread's own marker; the highlight count
// is the same for highlight rows. push_unread holds exactly those two
// numbers per (user, room, thread), a row only while the count is not
// zero, so reading counts costs one row per thread with something
// unread, not one per notification ever counted (docs/benchmarks.md,
// "unreadsum").
//
// Every transaction that changes what the summary describes changes the
// summary with it, so a crash leaves both or neither:
//   - writeNotifications (an event's notifications, in the event's own
//     transaction or the consumer's): countNotes adds each new row that
//     is past the markers as the transaction sees them, in one
//     statement;
//   - moveReadMark (receipts, and a local sender's own event): when a
//     marker moves, the threads it reads are counted again from the new
//     marker on, through the push_notifications_user_pos index
//     (the rows still unread, not the history);
//   - prune: the unread rows it deletes are subtracted.
//
// Concurrency. SQLite has one writer. On PostgreSQL (READ COMMITTED) two
// of those transactions could each miss the other's uncommitted rows: an
// event's notification counted against a marker a receipt is moving
// past it, or a recount that does not see a notification being
// inserted. Each of them therefore takes lockCounts first, one
// transaction-scoped advisory lock, and its statements after the lock
// see what the previous holder committed. Event transactions already
// run one at a time on PostgreSQL (the roomserver's stream lock, taken
// before the TimelineHook), so the lock adds no wait between them; the
// lock order is always the stream lock, then this one.
//
// Spec: client-server-api, "Receiving notifications" (unread counts),
// "Marking notifications as read" and "Threading" (threaded receipts,
// unread_thread_notifications).

// pgCountsLock is the advisory lock of lockCounts.
const pgCountsLock = 4242301

// lockCounts serialises the transactions that write push_unread (see
// above). A no-op on SQLite.
func lockCounts(ctx context.Context, db *storage.DB, tx storage.Tx) error {
	if db.Engine() != storage.Postgres {
		return nil
	}
	_, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, pgCountsLock)
	return err
}

// unreadKey names one row of push_unread.
type unreadKey struct {
	userID, roomID, thread string
}

// countNotesQuery adds to push_unread the notifications with an id above
// $1 (those the caller's transaction has just inserted) that are past
// their user's read markers as the transaction sees them. One statement:
// two read-marker lookups per new row in the database's own code, where
// reading the markers into Go and writing one row per recipient back
// cost a few thousand allocations for a message to 200 members. The new
// rows are taken first, by a range of the primary key (MATERIALIZED:
// without it SQLite grouped by walking a whole index in the GROUP BY's
// order, every notification ever written, to skip the sort; the
// push_notifications_unread_counts index of migration 002 had that
// order). The WHERE clause keeps SQLite from reading
// ON CONFLICT as a join's ON.
const countNotesQuery = `WITH fresh AS MATERIALIZED (
		SELECT user_id, room_id, thread_id, stream_pos, highlight FROM push_notifications WHERE id > $1)
	INSERT INTO push_unread (user_id, room_id, thread_id, notifications, highlights)
	SELECT n.user_id, n.room_id, n.thread_id, COUNT(*), SUM(CASE WHEN n.highlight THEN 1 ELSE 0 END)
	FROM fresh n
	LEFT JOIN push_read ra ON ra.user_id = n.user_id AND ra.room_id = n.room_id AND ra.thread_id = ''
	LEFT JOIN push_read rt ON rt.user_id = n.user_id AND rt.room_id = n.room_id AND rt.thread_id = n.thread_id
	WHERE ` + unreadPast + `
	GROUP BY n.user_id, n.room_id, n.thread_id
	ON CONFLICT (user_id, room_id, thread_id) DO UPDATE SET
		notifications = push_unread.notifications + excluded.notifications,
		highlights = push_unread.highlights + excluded.highlights`

// lastNotificationID returns the highest push_notifications id tx sees
// (0 if none). Taken under lockCounts before inserting, it bounds the
// rows the transaction inserts next from below: every writer of
// push_notifications holds lockCounts (on PostgreSQL, whose sequence
// would otherwise let a concurrent transaction hold lower ids), and ids
// only grow.
func lastNotificationID(ctx context.Context, tx storage.Tx) (int64, error) {
	var id int64
	err := tx.QueryRow(ctx, `SELECT COALESCE(MAX(id), 0) FROM push_notifications`).Scan(&id)
	return id, err
}

// countNotes adds the notifications tx inserted after the id after
// (lastNotificationID) to push_unread, those past the read markers.
func countNotes(ctx context.Context, tx storage.Tx, after int64) error {
	_, err := tx.Exec(ctx, countNotesQuery, after)
	return err
}

// moveReadMarks moves the read markers of receipts in tx (moveReadMark
// under lockCounts).
func (s *Server) moveReadMarks(ctx context.Context, tx storage.Tx, marks []readMark) error {
	if err := lockCounts(ctx, s.db, tx); err != nil {
		return err
	}
	for _, m := range marks {
		if err := moveReadMark(ctx, tx, m); err != nil {
			return err
		}
	}
	return nil
}

// moveReadMark moves a read marker forward, never back, and brings the
// summary of the threads it reads down to what is still past it: the
// marker's own thread, or every thread of the room for an unthreaded
// marker (empty thread ID). The caller holds lockCounts.
func moveReadMark(ctx context.Context, tx storage.Tx, m readMark) error {
	res, err := tx.Exec(ctx, `INSERT INTO push_read (user_id, room_id, thread_id, read_pos) VALUES ($1, $2, $3, $4)
		ON CONFLICT (user_id, room_id, thread_id) DO UPDATE SET read_pos = excluded.read_pos
		WHERE push_read.read_pos < excluded.read_pos`, m.userID, m.roomID, m.thread, m.pos)
	if err != nil {
		return err
	}
	if n, err := res.RowsAffected(); err != nil {
		return err
	} else if n == 0 {
		return nil // not moved: behind or at the stored marker
	}
	if m.newest && m.thread != "" {
		// A local sender's own event, in its transaction: the marker
		// of its thread now stands at the room's newest event, so
		// nothing in the thread is past it and the recount would find
		// zero. Every push_notifications row of the room has an
		// event's position at or below the event's: rows are written
		// for an event in its own transaction (CountInTx), and event
		// transactions take their positions in the order they commit
		// (SQLite's one writer; PostgreSQL's stream lock, held from the
		// event's insert to the commit, around this hook), or by the
		// consumer, for events up to inTxFrom, below every event
		// counted in its own transaction; this event's own rows (the
		// other members', written just before) sit at pos, not past
		// it. The summary row, if any, goes without a count: a message
		// in a room where the sender alone is notified of nothing ran
		// a count and a delete of nothing per message
		// (docs/benchmarks.md, "sendsum").
		_, err := tx.Exec(ctx, `DELETE FROM push_unread WHERE user_id = $1 AND room_id = $2 AND thread_id = $3`,
			m.userID, m.roomID, m.thread)
		return err
	}
	threads := []string{m.thread}
	if m.thread == "" {
		// Only threads with something unread can change.
		if threads, err = storage.QueryColumn[string](ctx, tx,
			`SELECT thread_id FROM push_unread WHERE user_id = $1 AND room_id = $2`, m.userID, m.roomID); err != nil {
			return err
		}
	}
	for _, thread := range threads {
		if err := recountThread(ctx, tx, unreadKey{m.userID, m.roomID, thread}); err != nil {
			return err
		}
	}
	return nil
}

// recountQuery counts user $1's notifications in room $2's thread $3
// past the later of its read markers: a range of the user's entries in
// push_notifications_user_pos, from the marker on (the user's rows in
// every room past it, few when, as usual, a receipt names a recent
// event), with room, thread and highlight read from the index.
const recountQuery = `SELECT COUNT(*), COALESCE(SUM(CASE WHEN highlight THEN 1 ELSE 0 END), 0)
	FROM push_notifications WHERE user_id = $1 AND room_id = $2 AND thread_id = $3
	AND stream_pos > (SELECT COALESCE(MAX(read_pos), 0) FROM push_read
		WHERE user_id = $1 AND room_id = $2 AND thread_id IN ('', $3))`

// recountThread sets k's push_unread row to the notifications past its
// read markers, counted from the later marker on (recountQuery).
func recountThread(ctx context.Context, tx storage.Tx, k unreadKey) error {
	var c Counts
	err := tx.QueryRow(ctx, recountQuery, k.userID, k.roomID, k.thread).Scan(&c.Notifications, &c.Highlights)
	if err != nil {
		return err
	}
	if c.Notifications == 0 {
		_, err = tx.Exec(ctx, `DELETE FROM push_unread WHERE user_id = $1 AND room_id = $2 AND thread_id = $3`,
			k.userID, k.roomID, k.thread)
		return err
	}
	_, err = tx.Exec(ctx, `INSERT INTO push_unread (user_id, room_id, thread_id, notifications, highlights)
		VALUES ($1, $2, $3, $4, $5) ON CONFLICT (user_id, room_id, thread_id) DO UPDATE SET
		notifications = excluded.notifications, highlights = excluded.highlights`,
		k.userID, k.roomID, k.thread, c.Notifications, c.Highlights)
	return err
}

// pruneUnreadQuery sums, per (user, room, thread), the notifications
// written before $1 (ms) that are still unread: push_notifications_ts's
// range, then the read markers by push_read's primary key.
const pruneUnreadQuery = `SELECT n.user_id, n.room_id, n.thread_id, COUNT(*),
	COALESCE(SUM(CASE WHEN n.highlight THEN 1 ELSE 0 END), 0)` + unreadJoins + `
	WHERE n.ts < $1 AND ` + unreadPast + ` GROUP BY n.user_id, n.room_id, n.thread_id`

// pruneNotifications deletes the notifications written before cutoff
// (ms) and subtracts those still unread from push_unread. The caller
// holds lockCounts.
func pruneNotifications(ctx context.Context, tx storage.Tx, cutoff int64) error {
	rows, err := tx.Query(ctx, pruneUnreadQuery, cutoff)
	if err != nil {
		return err
	}
	subs := map[unreadKey]Counts{}
	for rows.Next() {
		var k unreadKey
		var c Counts
		if err := rows.Scan(&k.userID, &k.roomID, &k.thread, &c.Notifications, &c.Highlights); err != nil {
			rows.Close()
			return err
		}
		subs[k] = c
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return err
	}
	if _, err := tx.Exec(ctx, `DELETE FROM push_notifications WHERE ts < $1`, cutoff); err != nil {
		return err
	}
	for k, c := range subs {
		if _, err := tx.Exec(ctx, `UPDATE push_unread SET notifications = notifications - $4, highlights = highlights - $5
			WHERE user_id = $1 AND room_id = $2 AND thread_id = $3`, k.userID, k.roomID, k.thread, c.Notifications, c.Highlights); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `DELETE FROM push_unread WHERE user_id = $1 AND room_id = $2 AND thread_id = $3
			AND notifications <= 0`, k.userID, k.roomID, k.thread); err != nil {
			return err
		}
	}
	return nil
}
