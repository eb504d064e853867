package syncapi_test

import (
	"context"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/myelin-chat/myelin/internal/testserver"
	"github.com/myelin-chat/myelin/roomserver"
)

func bodies(evs []*event.Event) []string {
	var out []string
	for _, e := range evs {
		if e.Type == event.EventMessage {
			out = append(out, e.Content.Raw["body"].(string))
		}
	}
	return out
}

func findState(evs []*event.Event, typ, key string) *event.Event {
	for _, e := range evs {
		if e.Type.Type == typ && e.StateKey != nil && *e.StateKey == key {
			return e
		}
	}
	return nil
}

func TestInitialAndIncrementalSync(t *testing.T) {
	testserver.ForEachEngine(t, nil, func(t *testing.T, srv *testserver.Server) {
		ctx := context.Background()
		alice := newUser(t, srv, "alice")
		bob := newUser(t, srv, "bob")
		roomID := createRoom(t, srv, alice, roomserver.CreateRoomRequest{Preset: "public_chat", Name: "Lobby"})
		membership(t, srv, "join", bob, bob.id, roomID)
		sendText(t, srv, alice, roomID, "one")
		sendText(t, srv, bob, roomID, "two")

		resp, err := alice.client.SyncRequest(ctx, 0, "", "", false, "")
		if err != nil {
			t.Fatal(err)
		}
		jr, ok := resp.Rooms.Join[id.RoomID(roomID)]
		if !ok {
			t.Fatalf("room missing from rooms.join: %+v", resp.Rooms)
		}
		if got := bodies(jr.Timeline.Events); len(got) != 2 || got[0] != "one" || got[1] != "two" {
			t.Fatalf("timeline bodies = %v", got)
		}
		if jr.Timeline.PrevBatch == "" {
			t.Error("prev_batch missing")
		}
		all := append(append([]*event.Event{}, jr.State.Events...), jr.Timeline.Events...)
		if name := findState(all, "m.room.name", ""); name == nil || name.Content.Raw["name"] != "Lobby" {
			t.Errorf("m.room.name missing from state+timeline")
		}
		if findState(all, "m.room.create", "") == nil {
			t.Error("m.room.create missing from state+timeline")
		}
		for _, e := range jr.State.Events {
			for _, te := range jr.Timeline.Events {
				if e.ID == te.ID {
					t.Errorf("event %s in both state and timeline", e.ID)
				}
			}
		}
		if jr.Summary.JoinedMemberCount == nil || *jr.Summary.JoinedMemberCount != 2 {
			t.Errorf("joined member count = %v", jr.Summary.JoinedMemberCount)
		}
		if len(jr.Summary.Heroes) != 1 || jr.Summary.Heroes[0] != id.UserID(bob.id) {
			t.Errorf("heroes = %v", jr.Summary.Heroes)
		}

		// Incremental: only the new message, no state.
		sendText(t, srv, bob, roomID, "three")
		resp2, err := alice.client.SyncRequest(ctx, 0, resp.NextBatch, "", false, "")
		if err != nil {
			t.Fatal(err)
		}
		jr2 := resp2.Rooms.Join[id.RoomID(roomID)]
		if jr2 == nil || len(jr2.Timeline.Events) != 1 || bodies(jr2.Timeline.Events)[0] != "three" {
			t.Fatalf("incremental timeline = %+v", jr2)
		}
		if jr2.Timeline.Limited || len(jr2.State.Events) != 0 {
			t.Errorf("limited=%v state=%d", jr2.Timeline.Limited, len(jr2.State.Events))
		}
		// Nothing new: an immediate empty answer with the same position.
		resp3, err := alice.client.SyncRequest(ctx, 0, resp2.NextBatch, "", false, "")
		if err != nil {
			t.Fatal(err)
		}
		if len(resp3.Rooms.Join) != 0 || resp3.NextBatch != resp2.NextBatch {
			t.Fatalf("empty sync: join=%d next_batch %s -> %s", len(resp3.Rooms.Join), resp2.NextBatch, resp3.NextBatch)
		}
	})
}

func TestLongPollWokenBySend(t *testing.T) {
	testserver.ForEachEngine(t, nil, func(t *testing.T, srv *testserver.Server) {
		ctx := context.Background()
		alice := newUser(t, srv, "alice")
		roomID := createRoom(t, srv, alice, roomserver.CreateRoomRequest{Preset: "private_chat"})
		first, err := alice.client.SyncRequest(ctx, 0, "", "", false, "")
		if err != nil {
			t.Fatal(err)
		}
		type result struct {
			resp *mautrix.RespSync
			err  error
			at   time.Time
		}
		done := make(chan result, 1)
		go func() {
			resp, err := alice.client.SyncRequest(ctx, 30000, first.NextBatch, "", false, "")
			done <- result{resp, err, time.Now()}
		}()
		// Send once the request is waiting (not after a fixed sleep, which
		// a loaded machine may outlast before the request registers).
		for deadline := time.Now().Add(20 * time.Second); srv.HS.Sync.Waiting() < 1; time.Sleep(time.Millisecond) {
			select {
			case r := <-done:
				t.Fatalf("sync returned before anything happened: %+v %v", r.resp, r.err)
			default:
			}
			if time.Now().After(deadline) {
				t.Fatal("the long poll never started waiting")
			}
		}
		sent := time.Now()
		sendText(t, srv, alice, roomID, "wake up")
		select {
		case r := <-done:
			if r.err != nil {
				t.Fatal(r.err)
			}
			if got := bodies(r.resp.Rooms.Join[id.RoomID(roomID)].Timeline.Events); len(got) != 1 || got[0] != "wake up" {
				t.Fatalf("woken sync timeline = %v", got)
			}
			// Unwoken, the request waits for its 30 s timeout (or the
			// waker's 10 s fallback poll, which a 2 s bound catches 80%
			// of the time); 2 s leaves a loaded machine the send's own
			// round trip.
			if d := r.at.Sub(sent); d > 2*time.Second {
				t.Fatalf("woken %v after the send", d)
			}
		case <-time.After(20 * time.Second):
			t.Fatal("long-poll was not woken by the send")
		}
	})
}

func TestLongPollTimeoutReturnsEmpty(t *testing.T) {
	testserver.ForEachEngine(t, nil, func(t *testing.T, srv *testserver.Server) {
		ctx := context.Background()
		alice := newUser(t, srv, "alice")
		bob := newUser(t, srv, "bob")
		createRoom(t, srv, alice, roomserver.CreateRoomRequest{Preset: "private_chat"})
		bobRoom := createRoom(t, srv, bob, roomserver.CreateRoomRequest{Preset: "private_chat"})
		first, err := alice.client.SyncRequest(ctx, 0, "", "", false, "")
		if err != nil {
			t.Fatal(err)
		}
		type result struct {
			resp *mautrix.RespSync
			err  error
			at   time.Time
		}
		done := make(chan result, 1)
		start := time.Now()
		go func() {
			resp, err := alice.client.SyncRequest(ctx, 3000, first.NextBatch, "", false, "")
			done <- result{resp, err, time.Now()}
		}()
		// Bob sends once alice's request is waiting, not after a fixed
		// sleep a loaded machine may stretch past her timeout.
		for deadline := time.Now().Add(20 * time.Second); srv.HS.Sync.Waiting() < 1; time.Sleep(time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatal("alice's long poll never started waiting")
			}
		}
		sendText(t, srv, bob, bobRoom, "not for alice")
		sent := time.Now()
		r := <-done
		resp, err := r.resp, r.err
		if err != nil {
			t.Fatal(err)
		}
		if d := r.at.Sub(start); d < 2900*time.Millisecond {
			t.Fatalf("returned after %v, before the timeout; bob's room woke alice", d)
		}
		if r.at.Before(sent) {
			t.Fatalf("bob's send took until %v, after alice's timeout: the test saw nothing", sent.Sub(start))
		}
		if len(resp.Rooms.Join) != 0 {
			t.Fatalf("timeout response has rooms: %v", resp.Rooms.Join)
		}
	})
}
