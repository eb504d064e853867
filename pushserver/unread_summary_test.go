package pushserver

import (
	"context"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"reflect"
	"sync"
	"sync/atomic"
	"testing"
	"testing/fstest"
	"time"

	"github.com/myelin-chat/myelin/config"
	"github.com/myelin-chat/myelin/roomserver"
	"github.com/myelin-chat/myelin/storage"
	"github.com/myelin-chat/myelin/storage/storagetest"
)

// fromScratchQuery is how unread counts were read before push_unread
// (and what the summary must equal): every notification past both the
// user's unthreaded read marker and its thread's marker, counted.
const fromScratchQuery = `SELECT n.user_id, n.room_id, n.thread_id, COUNT(*),
		COALESCE(SUM(CASE WHEN n.highlight THEN 1 ELSE 0 END), 0)
	FROM push_notifications n
	LEFT JOIN push_read ra ON ra.user_id = n.user_id AND ra.room_id = n.room_id AND ra.thread_id = ''
	LEFT JOIN push_read rt ON rt.user_id = n.user_id AND rt.room_id = n.room_id AND rt.thread_id = n.thread_id
	WHERE n.stream_pos > COALESCE(ra.read_pos, 0) AND n.stream_pos > COALESCE(rt.read_pos, 0)
	GROUP BY n.user_id, n.room_id, n.thread_id`

// fromScratch returns the counts by user as fromScratchQuery gives them.
func fromScratch(t *testing.T, db *storage.DB) map[string]map[string]RoomCounts {
	t.Helper()
	rows, err := db.Reader().Query(context.Background(), fromScratchQuery)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	out := map[string]map[string]RoomCounts{}
	for rows.Next() {
		var userID, roomID, thread string
		var c Counts
		if err := rows.Scan(&userID, &roomID, &thread, &c.Notifications, &c.Highlights); err != nil {
			t.Fatal(err)
		}
		if out[userID] == nil {
			out[userID] = map[string]RoomCounts{}
		}
		addUnread(out[userID], roomID, thread, c)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// checkSummary compares every way counts are read (UnreadCountsOfUsers,
// UnreadCountsAt, the gateway's totalUnread) with fromScratch, and the
// summary's own invariants (no row at zero, highlights ≤ notifications).
func checkSummary(t *testing.T, s *Server, users, rooms []string, step string) {
	t.Helper()
	ctx := context.Background()
	want := fromScratch(t, s.db)
	queries := make([]UnreadQuery, 0, 2*len(users))
	for _, u := range users {
		queries = append(queries, UnreadQuery{UserID: u, RoomIDs: rooms}, UnreadQuery{UserID: u, RoomIDs: rooms[:1]})
	}
	got, _, err := s.UnreadCountsOfUsers(ctx, queries, 0)
	if err != nil {
		t.Fatal(err)
	}
	for i, q := range queries {
		w := map[string]RoomCounts{}
		for _, r := range q.RoomIDs {
			if c, ok := want[q.UserID][r]; ok {
				w[r] = c
			}
		}
		if !reflect.DeepEqual(got[i], w) {
			t.Fatalf("after %s: UnreadCountsOfUsers for %s in %v: %+v, from scratch %+v", step, q.UserID, q.RoomIDs, got[i], w)
		}
		alone, _, err := s.UnreadCountsAt(ctx, q.UserID, q.RoomIDs, 0, 0)
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(alone, w) {
			t.Fatalf("after %s: UnreadCountsAt for %s in %v: %+v, from scratch %+v", step, q.UserID, q.RoomIDs, alone, w)
		}
	}
	for _, u := range users {
		total := 0
		for _, rc := range want[u] {
			total += rc.Total.Notifications
		}
		n, err := totalUnread(ctx, s.db.Reader(), u)
		if err != nil {
			t.Fatal(err)
		}
		if n != total {
			t.Fatalf("after %s: totalUnread(%s) = %d, from scratch %d", step, u, n, total)
		}
	}
	var bad int
	if err := s.db.Reader().QueryRow(ctx, `SELECT COUNT(*) FROM push_unread
		WHERE notifications <= 0 OR highlights < 0 OR highlights > notifications`).Scan(&bad); err != nil {
		t.Fatal(err)
	}
	if bad != 0 {
		t.Fatalf("after %s: %d push_unread rows at zero or with impossible highlights", step, bad)
	}
}

// TestUnreadSummaryMatchesFromScratch runs random sequences of messages
// (main timeline and threads, highlights, several recipients, a local
// or remote sender whose own message moves their marker, a batch of
// several events in one transaction as the catching-up consumer writes
// them), receipts (unthreaded, main, threaded, for events older than the
// marker, for events not yet notified) and prunes of old notifications,
// on both engines, and after every step compares each read of the
// counts with a count from scratch over push_notifications and
// push_read.
func TestUnreadSummaryMatchesFromScratch(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		ctx := context.Background()
		clock := time.UnixMilli(1_000_000)
		s := newBareServer(t, db, func() time.Time { return clock })
		s.cfg = config.Push{NotificationRetention: config.Duration(time.Hour)}
		users := []string{"@a:x", "@b:x", "@c:x", "@d:x"}
		rooms := []string{"!r1:x", "!r2:x", "!r3:x"}
		threads := []string{mainThread, "$t1", "$t2"}
		info := &roomInfo{names: map[string]string{}}
		steps := 400
		if testing.Short() {
			steps = 100
		}
		prunedUnread := 0 // prunes that deleted unread notifications
		for seed := range uint64(3) {
			rng := rand.New(rand.NewPCG(seed, 42))
			pos := int64(seed * 100000)
			// message returns one event's notifications and its sender's mark.
			message := func() ([]notification, []readMark) {
				pos++
				roomID, thread := rooms[rng.IntN(len(rooms))], threads[rng.IntN(len(threads))]
				sender := "@remote:y"
				if rng.IntN(3) > 0 {
					sender = users[rng.IntN(len(users))]
				}
				ev := &roomserver.Event{EventID: fmt.Sprintf("$e%d", pos), RoomID: roomID, Type: "m.room.message", Sender: sender, StreamPos: pos}
				var notes []notification
				for _, u := range users {
					if u != sender && rng.IntN(4) > 0 {
						notes = append(notes, notification{userID: u, event: ev, thread: thread, highlight: rng.IntN(4) == 0, room: info})
					}
				}
				var marks []readMark
				if sender != "@remote:y" {
					marks = append(marks, readMark{userID: sender, roomID: roomID, thread: thread, pos: pos})
				}
				return notes, marks
			}
			for step := range steps {
				var what string
				var err error
				switch op := rng.IntN(10); {
				case op < 5: // one message in its own transaction (CountInTx)
					notes, marks := message()
					for i := range marks {
						marks[i].newest = true // the room's newest event, as CountInTx marks it
					}
					what = fmt.Sprintf("seed %d step %d: message at %d (%d notes, %d marks)", seed, step, pos, len(notes), len(marks))
					err = db.Write(ctx, func(tx storage.Tx) error {
						_, err := s.writeNotifications(ctx, tx, notes, marks, clock.UnixMilli())
						return err
					})
				case op < 6: // a batch of events in one transaction (the consumer)
					var notes []notification
					var marks []readMark
					for range 1 + rng.IntN(4) {
						n, m := message()
						notes, marks = append(notes, n...), append(marks, m...)
					}
					what = fmt.Sprintf("seed %d step %d: batch up to %d (%d notes, %d marks)", seed, step, pos, len(notes), len(marks))
					err = db.Write(ctx, func(tx storage.Tx) error {
						_, err := s.writeNotifications(ctx, tx, notes, marks, clock.UnixMilli())
						return err
					})
				case op < 9: // receipts (the receipt consumer)
					var marks []readMark
					for range 1 + rng.IntN(3) {
						thread := ""
						switch rng.IntN(4) {
						case 1:
							thread = mainThread
						case 2, 3:
							thread = threads[1+rng.IntN(2)]
						}
						// Anywhere up to a little past the latest event:
						// older than the marker, or not notified yet.
						at := pos - int64(rng.IntN(30)) + int64(rng.IntN(3))
						marks = append(marks, readMark{userID: users[rng.IntN(len(users))], roomID: rooms[rng.IntN(len(rooms))], thread: thread, pos: at})
					}
					what = fmt.Sprintf("seed %d step %d: receipts %+v", seed, step, marks)
					err = db.Write(ctx, func(tx storage.Tx) error { return s.moveReadMarks(ctx, tx, marks) })
				default: // time passes; notifications past retention go
					clock = clock.Add(time.Duration(rng.IntN(40)) * time.Minute)
					what = fmt.Sprintf("seed %d step %d: prune at %d", seed, step, clock.UnixMilli())
					before := fromScratch(t, db)
					if err = s.prune(ctx); err == nil && !reflect.DeepEqual(before, fromScratch(t, db)) {
						prunedUnread++
					}
				}
				if err != nil {
					t.Fatalf("%s: %v", what, err)
				}
				clock = clock.Add(time.Duration(rng.IntN(3)) * time.Minute)
				checkSummary(t, s, users, rooms, what)
			}
		}
		// The sequences left something unread and something read, and
		// prunes deleted unread notifications: the comparison covered
		// each way the summary changes.
		var unread, read int
		if err := db.Reader().QueryRow(ctx, `SELECT COUNT(*) FROM push_unread`).Scan(&unread); err != nil {
			t.Fatal(err)
		}
		if err := db.Reader().QueryRow(ctx, `SELECT COUNT(*) FROM push_read`).Scan(&read); err != nil {
			t.Fatal(err)
		}
		if unread == 0 || read == 0 || prunedUnread == 0 {
			t.Fatalf("summary rows %d, read markers %d, prunes of unread notifications %d: the sequences did not exercise the counts",
				unread, read, prunedUnread)
		}
	})
}

// TestUnreadSummaryMigration: migration 004 fills push_unread from the
// notifications and read markers a database already has, exactly as
// they counted before.
func TestUnreadSummaryMigration(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		ctx := context.Background()
		sub, err := fs.Sub(migrations, "migrations")
		if err != nil {
			t.Fatal(err)
		}
		old := fstest.MapFS{}
		for _, name := range []string{"001_push.sql", "002_unread_covering_index.sql", "003_counts_in_tx.sql"} {
			data, err := fs.ReadFile(sub, name)
			if err != nil {
				t.Fatal(err)
			}
			old[name] = &fstest.MapFile{Data: data}
		}
		if err := db.Migrate(ctx, "pushserver", old); err != nil {
			t.Fatal(err)
		}
		// Rows as version 003 wrote them: two users, two rooms, threads,
		// highlights, and markers unthreaded, main and threaded.
		rng := rand.New(rand.NewPCG(7, 7))
		err = db.Write(ctx, func(tx storage.Tx) error {
			for pos := int64(1); pos <= 300; pos++ {
				user := []string{"@a:x", "@b:x"}[rng.IntN(2)]
				room := []string{"!r1:x", "!r2:x"}[rng.IntN(2)]
				thread := []string{mainThread, "$t1", "$t2"}[rng.IntN(3)]
				if _, err := tx.Exec(ctx, `INSERT INTO push_notifications (user_id, room_id, event_id, stream_pos, thread_id, highlight, actions, ts)
					VALUES ($1, $2, $3, $4, $5, $6, '[]', 1)`, user, room, fmt.Sprintf("$e%d", pos), pos, thread, rng.IntN(3) == 0); err != nil {
					return err
				}
			}
			for _, m := range []readMark{{"@a:x", "!r1:x", "", 100, false}, {"@a:x", "!r1:x", "$t1", 200, false}, {"@a:x", "!r2:x", mainThread, 250, false},
				{"@b:x", "!r2:x", "", 280, false}, {"@b:x", "!r1:x", "$t2", 50, false}, {"@b:x", "!r1:x", "", 120, false}} {
				if _, err := tx.Exec(ctx, `INSERT INTO push_read (user_id, room_id, thread_id, read_pos) VALUES ($1, $2, $3, $4)`,
					m.userID, m.roomID, m.thread, m.pos); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		want := fromScratch(t, db)
		s := newBareServer(t, db, time.Now) // migrates to the latest
		if v, err := db.SchemaVersion(ctx, "pushserver"); err != nil || v < 4 {
			t.Fatalf("schema version %d, %v; want at least 4", v, err)
		}
		checkSummary(t, s, []string{"@a:x", "@b:x"}, []string{"!r1:x", "!r2:x"}, "migration 004")
		if len(want["@a:x"]) == 0 || len(want["@b:x"]) == 0 {
			t.Fatalf("nothing unread before the migration: %+v", want)
		}
	})
}

// TestUnreadSummaryConcurrentReceipts: receipts committed while messages
// are being written (on PostgreSQL, in parallel transactions) leave the
// summary equal to the count from scratch. Receipts name the newest
// position handed out, possibly a message whose transaction has not
// committed: the interleavings where the receipt's recount misses an
// uncommitted notification, or the notification is counted against a
// marker being moved past it.
func TestUnreadSummaryConcurrentReceipts(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		ctx := context.Background()
		s := newBareServer(t, db, time.Now)
		// Rounds in rooms of their own: an interleaving that loses a
		// count does not come every time.
		for round := range 5 {
			users, rooms := []string{"@a:x", "@b:x"}, []string{fmt.Sprintf("!r%d:x", round)}
			info := &roomInfo{names: map[string]string{}}
			var next atomic.Int64
			next.Store(int64(round * 1000))
			base := next.Load()
			const messages, writers = 200, 4
			var wg sync.WaitGroup
			errs := make(chan error, writers+1)
			done := make(chan struct{})
			for w := range writers {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for range messages / writers {
						pos := next.Add(1)
						thread := []string{mainThread, "$t"}[pos%2]
						ev := &roomserver.Event{EventID: fmt.Sprintf("$e%d", pos), RoomID: rooms[0], Sender: "@remote:y", StreamPos: pos}
						notes := []notification{{userID: users[0], event: ev, thread: thread, highlight: w == 0, room: info},
							{userID: users[1], event: ev, thread: thread, room: info}}
						if err := db.Write(ctx, func(tx storage.Tx) error {
							_, err := s.writeNotifications(ctx, tx, notes, nil, 1)
							return err
						}); err != nil {
							errs <- err
							return
						}
					}
				}()
			}
			receipts := 0
			go func() {
				defer close(done)
				for i := 0; ; i++ {
					select {
					case <-errs:
						return
					default:
					}
					if next.Load() >= base+messages {
						return
					}
					m := readMark{userID: users[0], roomID: rooms[0], thread: []string{"", mainThread, "$t"}[i%3], pos: next.Load() + int64(i%2)}
					if err := db.Write(ctx, func(tx storage.Tx) error { return s.moveReadMarks(ctx, tx, []readMark{m}) }); err != nil {
						errs <- err
						return
					}
					receipts++
				}
			}()
			wg.Wait()
			<-done
			select {
			case err := <-errs:
				t.Fatal(err)
			default:
			}
			checkSummary(t, s, users, rooms, fmt.Sprintf("%d messages and %d receipts at once", messages, receipts))
			if receipts < 10 {
				t.Fatalf("only %d receipts ran alongside the messages", receipts)
			}
		}
	})
}
