package pushserver

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"syscall"
	"testing"
	"time"

	"github.com/myelin-chat/myelin/roomserver"
	"github.com/myelin-chat/myelin/storage"
	"github.com/myelin-chat/myelin/storage/storagetest"
)

// countingTx counts the statements run through it.
type countingTx struct {
	storage.Tx
	n int
}

func (c *countingTx) Exec(ctx context.Context, query string, args ...any) (sql.Result, error) {
	c.n++
	return c.Tx.Exec(ctx, query, args...)
}

func (c *countingTx) Query(ctx context.Context, query string, args ...any) (*sql.Rows, error) {
	c.n++
	return c.Tx.Query(ctx, query, args...)
}

func (c *countingTx) QueryRow(ctx context.Context, query string, args ...any) *sql.Row {
	c.n++
	return c.Tx.QueryRow(ctx, query, args...)
}

// processCPU is the process's user+system CPU time so far.
func processCPU(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// countInTxRoom is a room of members local users (the first, sender,
// sends) whose state CountInTx finds cached, for BenchmarkCountInTx and
// TestCountInTxStatements.
type countInTxRoom struct {
	s      *Server
	roomID string
	pos    int64
}

const (
	countInTxSender = "@sender:x"
	countInTxState  = 7
)

func newCountInTxRoom(tb testing.TB, db *storage.DB, members int) *countInTxRoom {
	s := newBareServer(tb, db, time.Now)
	info := &roomInfo{names: map[string]string{}, joined: members, local: []string{countInTxSender}}
	for i := 1; i < members; i++ {
		info.local = append(info.local, fmt.Sprintf("@u%03d:x", i))
	}
	info.power = parsePowerLevels(nil, nil, countInTxSender)
	roomID := fmt.Sprintf("!room%d:x", members)
	s.atState.put(stateKey{roomID: roomID, nid: countInTxState}, info)
	return &countInTxRoom{s: s, roomID: roomID}
}

// send writes one message from the sender in its own transaction,
// through CountInTx, and returns the statements CountInTx ran.
func (r *countInTxRoom) send(ctx context.Context) (int, error) {
	r.pos++
	content := `{"msgtype":"m.text","body":"benchmark message"}`
	ev := &roomserver.Event{EventID: fmt.Sprintf("$e%d%s", r.pos, r.roomID), RoomID: r.roomID, Type: "m.room.message",
		Sender: countInTxSender, StreamPos: r.pos, Content: json.RawMessage(content),
		JSON: json.RawMessage(`{"type":"m.room.message","sender":"` + countInTxSender + `","room_id":"` + r.roomID +
			`","content":` + content + `}`)}
	te := roomserver.TimelineEvent{Event: ev, StateNID: countInTxState,
		State: func(context.Context, []string) ([]*roomserver.Event, error) {
			return nil, fmt.Errorf("state read: the room's info is cached")
		}}
	stmts := 0
	err := r.s.db.Write(ctx, func(tx storage.Tx) error {
		counted := &countingTx{Tx: tx}
		_, err := r.s.CountInTx(ctx, counted, te)
		stmts = counted.n
		return err
	})
	return stmts, err
}

// unread is the room's summed unread count.
func (r *countInTxRoom) unread(tb testing.TB) int {
	var n int
	if err := r.s.db.Reader().QueryRow(context.Background(), `SELECT COALESCE(SUM(notifications), 0) FROM push_unread
		WHERE room_id = $1`, r.roomID).Scan(&n); err != nil {
		tb.Fatal(err)
	}
	return n
}

// BenchmarkCountInTx measures what push adds to a local message's
// transaction (CountInTx, the roomserver's TimelineHook), one message
// per transaction, in a room where the sender is the only member (what
// each of myelin-bench send's concurrent senders does) and in rooms of
// 20 and 200 local members (default rules: everyone else is notified;
// 20 is the fan-out target's room). The
// room's state is cached, as it is for every message after a room's
// first. stmts/msg counts the statements CountInTx runs; cpu-µs/msg is
// this process's CPU per message, commit included (on PostgreSQL the
// server's CPU is not in it).
func BenchmarkCountInTx(b *testing.B) {
	for _, members := range []int{1, 20, 200} {
		for _, engine := range storagetest.Engines() {
			b.Run(fmt.Sprintf("%s/members=%d", engine, members), func(b *testing.B) {
				ctx := context.Background()
				r := newCountInTxRoom(b, storagetest.Open(b, engine), members)
				stmts := 0
				send := func() {
					n, err := r.send(ctx)
					if err != nil {
						b.Fatal(err)
					}
					stmts += n
				}
				for range 20 {
					send()
				}
				stmts = 0
				b.ReportAllocs()
				b.ResetTimer()
				cpu := processCPU(b)
				for b.Loop() {
					send()
				}
				b.ReportMetric(float64((processCPU(b)-cpu).Microseconds())/float64(b.N), "cpu-µs/msg")
				b.ReportMetric(float64(stmts)/float64(b.N), "stmts/msg")
				if got, want := r.unread(b), (members-1)*int(r.pos); got != want {
					b.Fatalf("%d unread in the room, want %d", got, want)
				}
			})
		}
	}
}

// TestCountInTxStatements: the statements push adds to a local
// message's transaction (docs/benchmarks.md, "sendsum"). A sender alone
// in their room: the marker's upsert and the summary row's delete, no
// recount (plus the advisory lock on PostgreSQL). A room of 200: the
// rules version, the last notification id, one insert of every row,
// their count into the summary, the marker, the delete, one pusher read.
// And the counts stay right: the other members' messages are unread,
// the sender's own read.
func TestCountInTxStatements(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		lock := 0
		if db.Engine() == storage.Postgres {
			lock = 1
		}
		ctx := context.Background()
		for _, c := range []struct{ members, stmts int }{{1, 2 + lock}, {200, 7 + lock}} {
			r := newCountInTxRoom(t, db, c.members)
			for i := range 3 {
				n, err := r.send(ctx)
				if err != nil {
					t.Fatal(err)
				}
				if i > 0 && n != c.stmts { // the first reads the rules into the cache
					t.Errorf("%d members, message %d: %d statements, want %d", c.members, i+1, n, c.stmts)
				}
			}
			if got, want := r.unread(t), (c.members-1)*3; got != want {
				t.Fatalf("%d members: %d unread, want %d", c.members, got, want)
			}
		}
	})
}
