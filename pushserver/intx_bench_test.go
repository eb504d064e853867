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

// BenchmarkCountInTx measures what push adds to a local message's
// transaction (CountInTx, the roomserver's TimelineHook), one message
// per transaction, in a room where the sender is the only member (what
// each of myelin-bench send's concurrent senders does) and in a room of
// 200 local members (default rules: everyone else is notified). The
// room's state is cached, as it is for every message after a room's
// first. stmts/msg counts the statements CountInTx runs; cpu-µs/msg is
// this process's CPU per message, commit included (on PostgreSQL the
// server's CPU is not in it).
func BenchmarkCountInTx(b *testing.B) {
	for _, members := range []int{1, 200} {
		for _, engine := range storagetest.Engines() {
			b.Run(fmt.Sprintf("%s/members=%d", engine, members), func(b *testing.B) {
				ctx := context.Background()
				s := newBareServer(b, storagetest.Open(b, engine), time.Now)
				const roomID, sender = "!room:x", "@sender:x"
				info := &roomInfo{names: map[string]string{}, joined: members, local: []string{sender}}
				for i := 1; i < members; i++ {
					info.local = append(info.local, fmt.Sprintf("@u%03d:x", i))
				}
				info.power = parsePowerLevels(nil, nil, sender)
				const stateNID = 7
				s.atState.put(stateKey{roomID: roomID, nid: stateNID}, info)
				content := json.RawMessage(`{"msgtype":"m.text","body":"benchmark message"}`)
				pos, stmts := int64(0), 0
				send := func() {
					pos++
					ev := &roomserver.Event{EventID: fmt.Sprintf("$e%d", pos), RoomID: roomID, Type: "m.room.message",
						Sender: sender, StreamPos: pos, Content: content,
						JSON: json.RawMessage(`{"type":"m.room.message","sender":"@sender:x","room_id":"!room:x","content":` + string(content) + `}`)}
					te := roomserver.TimelineEvent{Event: ev, StateNID: stateNID,
						State: func(context.Context, []string) ([]*roomserver.Event, error) {
							return nil, fmt.Errorf("state read: the room's info is cached")
						}}
					err := s.db.Write(ctx, func(tx storage.Tx) error {
						counted := &countingTx{Tx: tx}
						_, err := s.CountInTx(ctx, counted, te)
						stmts += counted.n
						return err
					})
					if err != nil {
						b.Fatal(err)
					}
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
				var unread int
				if err := s.db.Reader().QueryRow(ctx, `SELECT COALESCE(SUM(notifications), 0) FROM push_unread WHERE room_id = $1`,
					roomID).Scan(&unread); err != nil {
					b.Fatal(err)
				}
				if want := (members - 1) * int(pos); unread != want {
					b.Fatalf("%d unread in the room, want %d", unread, want)
				}
			})
		}
	}
}
