package roomserver

import (
	"context"
	"math"
	"strings"
	"testing"

	"github.com/myelin-chat/myelin/storage"
	"github.com/myelin-chat/myelin/storage/storagetest"
)

// TestResyncDropsAtCommit: carol was banned before bob's partial-state
// join, the send_join state left the ban out, and her local join passed
// on partial state (accepted, cached when it committed). The resync
// rejects it and rewrites the state of bob's message after it. From its
// commit on, a read sees the rewritten rows, so the event cache must no
// longer serve the ones from before: not only once CompletePartialState
// returns, but already when the commit's notification (an AfterCommit
// hook, which wakes /sync and the federation sender) runs. Observed from
// that notification, which reads carol's join as the federation sender
// would; and once the resync returned, what the reads in the
// notification cached must be the rewritten rows.
func TestResyncDropsAtCommit(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		ctx := context.Background()
		s := newTestServer(t, db)
		p := newPartialRoom(t, s, [3]string{"m.room.member", psCarol, `{"membership":"ban"}`})
		joinResp, err := s.Join(ctx, MembershipRequest{RoomID: p.roomID, Sender: psCarol, Target: psCarol})
		if err != nil {
			t.Fatalf("carol's local join on partial state: %v", err)
		}
		carol := joinResp.EventID
		msg := mustSend(t, s, p.roomID, psBob, "m.room.message", nil, `{"msgtype":"m.text","body":"first"}`)
		rewritten := []string{p.join, carol, msg}
		// Every rewritten row cached, as read before the resync.
		if _, _, err := s.FederationEvent(ctx, carol); err != nil {
			t.Fatalf("carol's join before the resync: %v", err)
		}
		if _, err := s.loadEventsByID(ctx, db.Reader(), nil, rewritten); err != nil {
			t.Fatal(err)
		}
		for _, id := range rewritten {
			if s.events.getID(id, math.MaxUint64) == nil {
				t.Fatalf("%s is not cached; the test needs it cached", id)
			}
		}

		// stale lists the cached rows that differ from the database's.
		stale := func() []string {
			var out []string
			rows, err := eventRowsByID(ctx, db.Reader(), rewritten)
			if err != nil {
				t.Error(err)
				return nil
			}
			for _, id := range rewritten {
				if e := s.events.getID(id, math.MaxUint64); e != nil && stampOf(e.row) != stampOf(rows[id]) {
					out = append(out, "cached "+rowOf(e)+", stored "+rowOf(&loadedEvent{row: rows[id]}))
				}
			}
			return out
		}
		var atNotify []string
		ran := false
		notify := s.notify
		s.notify = func(stream string, pos int64) {
			if ran {
				return
			}
			ran = true
			if _, _, err := s.FederationEvent(ctx, carol); err == nil {
				atNotify = append(atNotify, "carol's rejected join is served to federation")
			}
			atNotify = append(atNotify, stale()...)
		}
		p.complete(t)
		s.notify = notify
		if !ran {
			t.Fatal("the resync's notification did not run")
		}
		if len(atNotify) != 0 {
			t.Errorf("at the resync's notification: %s", strings.Join(atNotify, "; "))
		}
		if _, _, err := s.FederationEvent(ctx, carol); err == nil {
			t.Error("carol's join is still accepted after the resync")
		}
		if got := stale(); len(got) != 0 {
			t.Errorf("after the resync: %s", strings.Join(got, "; "))
		}
	})
}
