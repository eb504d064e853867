package roomserver

import (
	"context"
	"encoding/json"
	"math"
	"testing"
	"time"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"
	"github.com/myelin-chat/myelin/storage"
	"github.com/myelin-chat/myelin/storage/storagetest"
)

// queueSend builds, signs and authorises a message on the room's
// committed state and queues its write without waiting for it.
func queueSend(t *testing.T, s *Server, roomID, eventType, content, redacts string) (*prepared, *storage.PendingWrite) {
	t.Helper()
	ctx := context.Background()
	room, err := loadRoom(ctx, s.db.Reader(), roomID)
	if err != nil {
		t.Fatal(err)
	}
	proto := &gomatrixserverlib.ProtoEvent{SenderID: alice, RoomID: roomID, Type: eventType, Content: spec.RawJSON(content)}
	p, err := s.buildAndPrepare(ctx, room, proto, redacts)
	if err != nil {
		t.Fatal(err)
	}
	return p, s.db.WriteQueued(ctx, func(tx storage.Tx) error { return s.writeSend(ctx, tx, p, nil, "") })
}

// A sent event is in the parsed-event cache as soon as its write is
// acknowledged, before its caller's goroutine runs (here: never waits),
// so whoever the commit wakes (push, sync) finds it parsed. A redaction
// of it committed in the same batch leaves no unredacted copy behind.
func TestSentEventCachedAtCommit(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		ctx := context.Background()
		s := newTestServer(t, db)
		room := mustCreate(t, s, CreateRoomRequest{Creator: alice, RoomVersion: "11", Preset: PresetPrivateChat}).RoomID

		p, w := queueSend(t, s, room, "m.room.message", `{"msgtype":"m.text","body":"one"}`, "")
		select {
		case <-w.Done():
		case <-time.After(10 * time.Second):
			t.Fatal("the write did not finish")
		}
		if !w.Committed() {
			t.Fatal("the send did not commit")
		}
		cached := s.events.getNID(p.row.NID, math.MaxUint64)
		if cached == nil || cached.row.EventID != p.row.EventID || cached.pdu == nil {
			t.Fatalf("event %s (NID %d) is not cached when its write is acknowledged", p.row.EventID, p.row.NID)
		}
		if err := w.Wait(); err != nil {
			t.Fatal(err)
		}

		// The target and its redaction in one batch (on SQLite: queued
		// while the writer is held). The target's OnCommit put runs first;
		// the redaction's OnCommit drop must follow it.
		var release chan struct{}
		if db.Engine() == storage.SQLite {
			running := make(chan struct{})
			release = make(chan struct{})
			go func() {
				_ = db.Write(ctx, func(storage.Tx) error { close(running); <-release; return nil })
			}()
			<-running
		}
		target, tw := queueSend(t, s, room, "m.room.message", `{"msgtype":"m.text","body":"secret"}`, "")
		_, rw := queueSend(t, s, room, "m.room.redaction", `{"reason":"oops"}`, target.row.EventID)
		if release != nil {
			close(release)
		}
		for _, w := range []*storage.PendingWrite{tw, rw} {
			select {
			case <-w.Done():
			case <-time.After(10 * time.Second):
				t.Fatal("the writes did not finish")
			}
		}
		// Checked before the callers' AfterCommit hooks run (Wait).
		if c := s.events.getID(target.row.EventID, math.MaxUint64); c != nil && c.row.RedactedBecause == nil {
			t.Fatal("the redacted target's unredacted parse is cached when the writes are acknowledged")
		}
		if err := tw.Wait(); err != nil {
			t.Fatal(err)
		}
		if err := rw.Wait(); err != nil {
			t.Fatal(err)
		}
		if c := s.events.getID(target.row.EventID, math.MaxUint64); c != nil && c.row.RedactedBecause == nil {
			t.Fatal("the redacted target's unredacted parse is still cached")
		}
		got, err := s.loadEventsByID(ctx, db.Reader(), nil, []string{target.row.EventID})
		if err != nil {
			t.Fatal(err)
		}
		if e := got[target.row.EventID]; e == nil || e.row.RedactedBecause == nil || gjsonBody(e.row.JSON) != "" {
			t.Fatalf("the target reads back unredacted: %+v", e)
		}
	})
}

func gjsonBody(js string) string {
	var ev struct {
		Content struct {
			Body string `json:"body"`
		} `json:"content"`
	}
	_ = json.Unmarshal([]byte(js), &ev)
	return ev.Content.Body
}
