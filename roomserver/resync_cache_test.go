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

// TestResyncRacingReadKeepsOldRowOut: a read transaction whose snapshot
// predates the resync loads carol's join (accepted, in that snapshot)
// once the resync has committed, here from the commit's notification.
// That row is this read's answer, but it must not enter the event
// cache, where every later read would be served a join the database
// now holds as rejected.
func TestResyncRacingReadKeepsOldRowOut(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		ctx := context.Background()
		s := newTestServer(t, db)
		p := newPartialRoom(t, s, [3]string{"m.room.member", psCarol, `{"membership":"ban"}`})
		joinResp, err := s.Join(ctx, MembershipRequest{RoomID: p.roomID, Sender: psCarol, Target: psCarol})
		if err != nil {
			t.Fatalf("carol's local join on partial state: %v", err)
		}
		carol := joinResp.EventID
		if e := s.events.getID(carol, math.MaxUint64); e != nil {
			s.events.drop(e.row.NID, carol) // the read below loads it
		}
		ran := false
		notify := s.notify
		err = s.read(ctx, func(q storage.Querier) error {
			if _, err := eventRowsByID(ctx, q, []string{p.join}); err != nil { // takes the snapshot
				return err
			}
			s.notify = func(string, int64) {
				if ran {
					return
				}
				ran = true
				got, err := s.loadEventsByID(ctx, q, nil, []string{carol})
				if err != nil || got[carol] == nil || got[carol].row.Rejected {
					t.Errorf("the read's snapshot: carol's join %v, %v; want it accepted", got[carol], err)
				}
				if e := s.events.getID(carol, math.MaxUint64); e != nil && !e.row.Rejected {
					t.Error("at the resync's notification the event cache holds carol's join as accepted, loaded by a read older than the resync")
				}
			}
			p.complete(t)
			return nil
		})
		s.notify = notify
		if err != nil {
			t.Fatal(err)
		}
		if !ran {
			t.Fatal("the resync's notification did not run")
		}
		if _, _, err := s.FederationEvent(ctx, carol); err == nil {
			t.Error("carol's join is served to federation after the resync")
		}
	})
}

// TestSplitModeTimelineSeesAcceptedAgain: process B has cached a message
// its room rejected (carol, not a member, sent it); process A's
// partial-state resync then accepts it, keeping its state snapshots (as
// replayStateBefore does for an event whose prev events are not
// timeline events here), which B is not told of. B's timeline reads,
// which take the rows of the events they find in the table from the
// event cache, must not take that rejected row for the accepted event:
// the message is in B's timeline, as in A's.
func TestSplitModeTimelineSeesAcceptedAgain(t *testing.T) {
	ctx := context.Background()
	a, b := splitPair(t)
	d := baseRoom(t, "10")
	for _, name := range []string{"create", "alice-join", "pl0", "jr", "bob-join"} {
		if r := d.input(t, a, name); r.Outcome != Accepted {
			t.Fatalf("%s: %s %s", name, r.Outcome, r.Reason)
		}
	}
	d.add("carol-msg", psCarol, "m.room.message", nil, `{"msgtype":"m.text","body":"from a non-member"}`, "bob-join")
	if r := d.input(t, a, "carol-msg"); r.Outcome != Rejected {
		t.Fatalf("carol's message: %s %s, want it rejected", r.Outcome, r.Reason)
	}
	msg := d.byName["carol-msg"].EventID()
	got, err := b.loadEventsByID(ctx, b.db.Reader(), nil, []string{msg})
	if err != nil || got[msg] == nil || !got[msg].row.Rejected {
		t.Fatalf("B caches carol's message: %v, %v, want its rejected row", got[msg], err)
	}
	// A's resync accepts it: the replay's UPDATE, with its snapshots as
	// they were.
	if err := a.db.Write(ctx, func(tx storage.Tx) error {
		_, err := tx.Exec(ctx, `UPDATE roomserver_events SET rejected = FALSE WHERE event_id = $1`, msg)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	timeline := func(evs []*Event) bool {
		for _, ev := range evs {
			if ev.EventID == msg {
				return true
			}
		}
		return false
	}
	rec, err := b.RecentEvents(ctx, RecentRequest{UserID: alice, RoomID: d.roomID, To: 1 << 62, Limit: 10})
	if err != nil {
		t.Fatal(err)
	}
	if !timeline(rec.Events) {
		t.Error("B's RecentEvents leaves out the message A accepted")
	}
	if e := b.events.getID(msg, math.MaxUint64); e != nil && e.row.Rejected {
		t.Error("B's event cache still holds the rejected row after its timeline read")
	}
	// The grouped read, with the rejected row cached again.
	b.events.put(got[msg])
	batch, err := b.RecentEventsOfRooms(ctx, RecentRoomsRequest{UserID: alice, RoomIDs: []string{d.roomID}, To: 1 << 62, Limit: 10})
	if err != nil {
		t.Fatal(err)
	}
	if rr := batch.Rooms[d.roomID]; rr == nil || !timeline(rr.Events) {
		t.Error("B's RecentEventsOfRooms leaves out the message A accepted")
	}
}

// TestStretchCompletionDropsAtCommit: completing the state of an event
// queued for StretchRefetch rewrites its state_before and state_after.
// From the commit on, a read sees the new snapshots, so the event cache
// must no longer serve the row from before (cached when the event was
// sent), not only once CompleteStretchState returns. Observed from an
// OnCommit hook the completion's own transaction registers after its
// rewrites (inStretchWrite). The event is queued as markAfterPartialStretch
// queues one; its prev event lies in no stretch, so its state is
// completed from what is held.
func TestStretchCompletionDropsAtCommit(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		ctx := context.Background()
		s := newTestServer(t, db)
		roomID := mustCreate(t, s, CreateRoomRequest{Creator: alice, Preset: "public_chat"}).RoomID
		msg := mustSend(t, s, roomID, alice, "m.room.message", nil, `{"msgtype":"m.text","body":"on a stretch"}`)
		row, err := eventRowByID(ctx, db.Reader(), msg)
		if err != nil {
			t.Fatal(err)
		}
		if err := db.Write(ctx, func(tx storage.Tx) error { return s.queueStretchRefetch(ctx, tx, roomID, row.NID) }); err != nil {
			t.Fatal(err)
		}
		if _, err := s.loadEventsByID(ctx, db.Reader(), nil, []string{msg}); err != nil {
			t.Fatal(err)
		}
		if e := s.events.getID(msg, math.MaxUint64); e == nil || stampOf(e.row) != stampOf(row) {
			t.Fatalf("the message is not cached as stored (%v); the test needs it cached", e)
		}

		var atCommit *loadedEvent
		ran := false
		s.inStretchWrite = func(tx storage.Tx) {
			tx.OnCommit(func() {
				ran = true
				atCommit = s.events.getID(msg, math.MaxUint64)
			})
		}
		if err := s.CompleteStretchState(ctx, StretchStateRequest{EventID: msg}); err != nil {
			t.Fatalf("CompleteStretchState: %v", err)
		}
		s.inStretchWrite = nil
		if !ran {
			t.Fatal("the completion's OnCommit hook did not run")
		}
		now, err := eventRowByID(ctx, db.Reader(), msg)
		if err != nil {
			t.Fatal(err)
		}
		if stampOf(now) == stampOf(row) {
			t.Fatalf("the completion did not rewrite the message's row (%+v); the test needs a rewrite", stampOf(now))
		}
		if atCommit != nil && stampOf(atCommit.row) != stampOf(now) {
			t.Errorf("at the completion's commit the event cache serves %s, stored %s", rowOf(atCommit), rowOf(&loadedEvent{row: now}))
		}
		if e := s.events.getID(msg, math.MaxUint64); e != nil && stampOf(e.row) != stampOf(now) {
			t.Errorf("after the completion the event cache serves %s, stored %s", rowOf(e), rowOf(&loadedEvent{row: now}))
		}
	})
}
