package notifier_test

import (
	"context"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/id"

	"github.com/myelin-chat/myelin/internal/testserver"
)

// TestSplitProcessesWakeSyncThroughRedis runs two homeserver processes
// of one deployment (same server name, signing key, PostgreSQL schema and
// Redis), as a split deployment would. A message sent through A must
// wake a /sync long-polling on B promptly: B only learns of it through
// Redis (its own fallback poll runs every 10 s), three times in a row.
func TestSplitProcessesWakeSyncThroughRedis(t *testing.T) {
	a, b := testserver.StartSplit(t)
	ctx := context.Background()

	cliA, _ := mautrix.NewClient(a.URL, "", "")
	reg, err := cliA.RegisterDummy(ctx, &mautrix.ReqRegister[any]{Username: "alice", Password: "alice's long password"})
	if err != nil {
		t.Fatalf("register on A: %v", err)
	}
	cliA.SetCredentials(reg.UserID, reg.AccessToken)
	room, err := cliA.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "private_chat", Name: "split"})
	if err != nil {
		t.Fatalf("create room on A: %v", err)
	}
	// The same device, served by B: its token and the room come from the
	// shared database.
	cliB, _ := mautrix.NewClient(b.URL, reg.UserID, reg.AccessToken)
	first, err := cliB.SyncRequest(ctx, 0, "", "", false, "")
	if err != nil {
		t.Fatalf("initial sync on B: %v", err)
	}
	if _, ok := first.Rooms.Join[room.RoomID]; !ok {
		t.Fatalf("B's initial sync lacks the room A created (joined: %v)", keys(first.Rooms.Join))
	}
	since := first.NextBatch

	// B's waker also polls the room stream every 10 s, at a phase the
	// test does not know, so one round tells Redis from the poll only
	// by chance: a poll-woken sync takes over 3 s 70% of the time, and
	// five rounds catch it 99.8% of the time. 3 s leaves a loaded
	// machine room for the round trip through Redis.
	for i := range 5 {
		type result struct {
			resp *mautrix.RespSync
			err  error
			at   time.Time
		}
		done := make(chan result, 1)
		go func() {
			resp, err := cliB.SyncRequest(ctx, 30000, since, "", false, "")
			done <- result{resp, err, time.Now()}
		}()
		time.Sleep(300 * time.Millisecond) // let B's request start waiting
		select {
		case r := <-done:
			t.Fatalf("round %d: B's sync returned before the message: %+v, %v", i, r.resp, r.err)
		default:
		}
		sent := time.Now()
		ev, err := cliA.SendText(ctx, room.RoomID, "hello from A")
		if err != nil {
			t.Fatalf("round %d: send on A: %v", i, err)
		}
		select {
		case r := <-done:
			if r.err != nil {
				t.Fatalf("round %d: sync on B: %v", i, r.err)
			}
			if d := r.at.Sub(sent); d > 3*time.Second {
				t.Fatalf("round %d: B's sync woke %v after A's send; want it through Redis, not the 10 s poll", i, d)
			}
			if !hasEvent(r.resp, room.RoomID, ev.EventID) {
				t.Fatalf("round %d: B's sync lacks %s", i, ev.EventID)
			}
			// The long poll may have answered before B's push consumer
			// counted the message; its count then follows in the next
			// long poll. Take it with a sync that waits for the consumer,
			// so the next round's long poll has nothing before the send.
			settled, err := cliB.SyncRequest(ctx, 0, r.resp.NextBatch, "", false, "")
			if err != nil {
				t.Fatalf("round %d: settling sync on B: %v", i, err)
			}
			since = settled.NextBatch
		case <-time.After(8 * time.Second):
			t.Fatalf("round %d: B's long-poll did not wake within 8 s of A's send", i)
		}
	}
}

func hasEvent(resp *mautrix.RespSync, roomID id.RoomID, eventID id.EventID) bool {
	jr, ok := resp.Rooms.Join[roomID]
	if !ok {
		return false
	}
	for _, ev := range jr.Timeline.Events {
		if ev.ID == eventID {
			return true
		}
	}
	return false
}

func keys[M ~map[K]V, K comparable, V any](m M) []K {
	var out []K
	for k := range m {
		out = append(out, k)
	}
	return out
}
