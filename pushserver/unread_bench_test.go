package pushserver

import (
	"context"
	"fmt"
	"io/fs"
	"log/slog"
	"testing"
	"time"

	"github.com/myelin-chat/myelin/roomserver"
	"github.com/myelin-chat/myelin/storage"
	"github.com/myelin-chat/myelin/storage/storagetest"
)

// newBareServer returns a Server on db (migrated) with only what the
// storage paths need: writeNotifications, moveReadMark, prune and the
// unread-count reads. No consumer or sender runs.
func newBareServer(tb testing.TB, db *storage.DB, now func() time.Time) *Server {
	tb.Helper()
	sub, err := fs.Sub(migrations, "migrations")
	if err != nil {
		tb.Fatal(err)
	}
	if err := db.Migrate(context.Background(), "pushserver", sub); err != nil {
		tb.Fatal(err)
	}
	return &Server{db: db, serverName: "x", now: now, log: slog.Default(),
		rules: newRulesCache(), atState: newStateInfoCache(), txRules: newVersionedRules(),
		progress: make(chan struct{}), roomInfos: map[string]*roomInfo{}, threads: map[string]string{},
		wakeSender: make(chan struct{}, 1)}
}

// benchNotes is one message's notifications: one per user.
func benchNotes(users []string, roomID string, pos int64, info *roomInfo) []notification {
	ev := &roomserver.Event{EventID: fmt.Sprintf("$e%d", pos), RoomID: roomID, Type: "m.room.message",
		Sender: "@sender:x", StreamPos: pos}
	notes := make([]notification, len(users))
	for i, u := range users {
		notes[i] = notification{userID: u, event: ev, thread: mainThread, actions: nil, room: info}
	}
	return notes
}

// BenchmarkUnreadCountsOfUsers measures the grouped read sync makes for
// the listeners a message wakes: 200 users of one room, each with a
// backlog of unread notifications there (none has sent a receipt), as
// in the fan-out benchmark. One op is one UnreadCountsOfUsers call for
// all 200; µs/user is its time divided by 200.
func BenchmarkUnreadCountsOfUsers(b *testing.B) {
	for _, backlog := range []int{1, 60, 500} {
		for _, engine := range storagetest.Engines() {
			b.Run(fmt.Sprintf("%s/backlog=%d", engine, backlog), func(b *testing.B) {
				ctx := context.Background()
				s := newBareServer(b, storagetest.Open(b, engine), time.Now)
				const roomID = "!room:x"
				users := make([]string, 200)
				queries := make([]UnreadQuery, len(users))
				for i := range users {
					users[i] = fmt.Sprintf("@u%03d:x", i)
					queries[i] = UnreadQuery{UserID: users[i], RoomIDs: []string{roomID}}
				}
				info := &roomInfo{names: map[string]string{}}
				for start := 1; start <= backlog; start += 50 {
					err := s.db.Write(ctx, func(tx storage.Tx) error {
						for pos := start; pos < start+50 && pos <= backlog; pos++ {
							if _, err := s.writeNotifications(ctx, tx, benchNotes(users, roomID, int64(pos), info), nil, 1); err != nil {
								return err
							}
						}
						return nil
					})
					if err != nil {
						b.Fatal(err)
					}
				}
				b.ReportAllocs()
				b.ResetTimer()
				for b.Loop() {
					out, _, err := s.UnreadCountsOfUsers(ctx, queries, 0)
					if err != nil {
						b.Fatal(err)
					}
					if got := out[199][roomID].Total.Notifications; got != backlog {
						b.Fatalf("user 199 has %d unread, want %d", got, backlog)
					}
				}
				b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(b.N*len(users)), "µs/user")
			})
		}
	}
}

// BenchmarkWriteNotifications200 measures what a message to a room of
// 200 local members writes for push inside its transaction
// (writeNotifications, as CountInTx calls it, no pushers), one message
// per transaction, with a backlog of 60 messages already unread.
func BenchmarkWriteNotifications200(b *testing.B) {
	for _, engine := range storagetest.Engines() {
		b.Run(string(engine), func(b *testing.B) {
			ctx := context.Background()
			s := newBareServer(b, storagetest.Open(b, engine), time.Now)
			const roomID = "!room:x"
			users := make([]string, 200)
			for i := range users {
				users[i] = fmt.Sprintf("@u%03d:x", i)
			}
			info := &roomInfo{names: map[string]string{}}
			pos := int64(0)
			write := func() {
				pos++
				err := s.db.Write(ctx, func(tx storage.Tx) error {
					mark := readMark{userID: "@sender:x", roomID: roomID, thread: mainThread, pos: pos}
					_, err := s.writeNotifications(ctx, tx, benchNotes(users, roomID, pos, info), []readMark{mark}, 1)
					return err
				})
				if err != nil {
					b.Fatal(err)
				}
			}
			for range 60 {
				write()
			}
			b.ReportAllocs()
			b.ResetTimer()
			for b.Loop() {
				write()
			}
		})
	}
}
