package roomserver

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"strings"
	"testing"

	"github.com/myelin-chat/myelin/storage"
	"github.com/myelin-chat/myelin/storage/storagetest"
)

// TestSnapshotReadKeepsPromotedOutlier: a read transaction whose
// snapshot predates an outlier's promotion, and which loads the outlier
// row (by its old NID, as a state snapshot taken before the promotion
// names it) after the promotion committed, must not put that row back
// into the event cache: the event that follows the promoted one would
// be refused as unconnected ("held only as an outlier") for as long as
// the stale entry lived, while UnconnectedEvents, which reads the
// database, says it is connected (federationapi
// TestLateKnownJoinerSeesEveryHello lost bob's hello that way).
func TestSnapshotReadKeepsPromotedOutlier(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		ctx := context.Background()
		s, d := promotionRoom(t, db)
		d.add("m1", bob, "m.room.message", nil, `{"msgtype":"m.text","body":"an outlier first"}`, "bob-join")
		// Two prev events, so the state before m2 is read from them
		// (not the room's current state, when they are its extremities).
		d.add("m2", bob, "m.room.message", nil, `{"msgtype":"m.text","body":"after it"}`, "m1", "bob-join")
		m1 := d.byName["m1"].EventID()
		d.mustOutlier(t, s, "m1")

		err := s.read(ctx, func(q storage.Querier) error {
			var oldNID int64
			// The first statement takes the snapshot.
			if err := q.QueryRow(ctx, `SELECT event_nid FROM roomserver_events WHERE event_id = $1`, m1).Scan(&oldNID); err != nil {
				return err
			}
			if r := d.input(t, s, "m1"); r.Outcome != Accepted {
				t.Fatalf("promotion of m1: %s %s", r.Outcome, r.Reason)
			}
			old, err := s.loadEvents(ctx, q, nil, d.version, []int64{oldNID})
			if err != nil {
				return err
			}
			if !isOutlierRow(old[0].row) {
				t.Fatalf("the snapshot read sees m1 promoted; the test needs it to see the outlier row")
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		got, err := s.loadEventsByID(ctx, db.Reader(), nil, []string{m1})
		if err != nil {
			t.Fatal(err)
		}
		if e := got[m1]; e == nil || isOutlierRow(e.row) {
			t.Fatalf("m1 loaded after the snapshot read: %+v, want the promoted row", e)
		}
		if r := d.input(t, s, "m2"); r.Outcome != Accepted {
			t.Fatalf("m2 after the promoted m1: %s %s", r.Outcome, r.Reason)
		}
	})
}

// TestSnapshotReadIgnoresNewerCachedEvent: a read transaction whose
// snapshot predates a rewrite of an event (its promotion from outlier,
// its redaction) must not be served, from the event cache, the row a
// later read loaded after the rewrite: the snapshot's own statements see
// the old row, and the mix answers wrongly — the promoted row's NID and
// state snapshots do not exist in that snapshot (a read of its state
// finds none, and its history visibility falls back to "shared"), and
// the redacted row is served by a read whose timeline does not hold the
// redaction yet (filterVisibleWith served a redacted cached entry for an
// unredacted row).
func TestSnapshotReadIgnoresNewerCachedEvent(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		ctx := context.Background()
		s, d := promotionRoom(t, db)
		d.add("m1", bob, "m.room.message", nil, `{"msgtype":"m.text","body":"an outlier first"}`, "bob-join")
		m1 := d.byName["m1"].EventID()
		d.mustOutlier(t, s, "m1")
		secret, err := s.SendEvent(ctx, SendEventRequest{RoomID: d.roomID, Sender: alice, Type: "m.room.message",
			Content: json.RawMessage(`{"msgtype":"m.text","body":"secret"}`)})
		if err != nil {
			t.Fatal(err)
		}

		err = s.read(ctx, func(q storage.Querier) error {
			var oldNID, secretNID int64
			// The first statement takes the snapshot.
			if err := q.QueryRow(ctx, `SELECT event_nid FROM roomserver_events WHERE event_id = $1`, m1).Scan(&oldNID); err != nil {
				return err
			}
			if err := q.QueryRow(ctx, `SELECT event_nid FROM roomserver_events WHERE event_id = $1`, secret.EventID).Scan(&secretNID); err != nil {
				return err
			}
			// Both rewrites commit, and a read that begins after them
			// caches the new rows.
			if r := d.input(t, s, "m1"); r.Outcome != Accepted {
				t.Fatalf("promotion of m1: %s %s", r.Outcome, r.Reason)
			}
			if _, err := s.SendEvent(ctx, SendEventRequest{RoomID: d.roomID, Sender: alice, Type: "m.room.redaction",
				Content: json.RawMessage(`{}`), Redacts: secret.EventID}); err != nil {
				t.Fatal(err)
			}
			fresh, err := s.loadEventsByID(ctx, db.Reader(), nil, []string{m1, secret.EventID})
			if err != nil {
				return err
			}
			if e := fresh[m1]; e == nil || isOutlierRow(e.row) {
				t.Fatalf("m1 after its promotion: %s, want the promoted row", rowOf(e))
			}
			if e := fresh[secret.EventID]; e == nil || e.row.RedactedBecause == nil {
				t.Fatalf("the secret after its redaction: %s, want it redacted", rowOf(e))
			}
			if s.events.getID(m1, math.MaxUint64) == nil || s.events.getID(secret.EventID, math.MaxUint64) == nil {
				t.Fatal("the new rows are not cached; the test needs them cached")
			}

			got, err := s.loadEventsByID(ctx, q, nil, []string{m1, secret.EventID})
			if err != nil {
				return err
			}
			if e := got[m1]; e == nil || e.row.NID != oldNID || !isOutlierRow(e.row) {
				t.Errorf("the snapshot read's m1 by ID: %s, want the outlier row at NID %d", rowOf(e), oldNID)
			}
			if e := got[secret.EventID]; e == nil || e.row.RedactedBecause != nil {
				t.Errorf("the snapshot read's secret by ID: %s, want it unredacted", rowOf(e))
			}
			byNID, err := s.loadEvents(ctx, q, nil, d.version, []int64{secretNID})
			if err != nil {
				return err
			}
			if byNID[0].row.RedactedBecause != nil {
				t.Errorf("the snapshot read's secret by NID is redacted; its snapshot holds no redaction")
			}
			rows, err := eventRowsByNID(ctx, q, []int64{secretNID})
			if err != nil || len(rows) != 1 {
				return fmt.Errorf("the secret's row: %v, %v", rows, err)
			}
			vis := s.newVisibility(q, alice)
			evs, err := s.filterVisibleWith(ctx, q, vis, d.roomID, rows, map[string]string{})
			if err != nil {
				return err
			}
			if len(evs) != 1 || evs[0].RedactedBecause != "" || !strings.Contains(string(evs[0].Content), "secret") {
				t.Errorf("the snapshot read's visible secret: %d events, %v, want it unredacted", len(evs), evs)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	})
}

// TestSnapshotReadIgnoresNewerSnapshotKeys: a promotion moves the
// snapshot entries of the promoted outlier to its new NID. A read
// transaction whose snapshot predates it must read the entry (the old
// NID) from its snapshot, not the new NID a later read cached: the new
// NID names no row in that snapshot ("event NID not found").
func TestSnapshotReadIgnoresNewerSnapshotKeys(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		ctx := context.Background()
		s, d, topic, m3 := topicOutlierRoom(t, db)
		k := tuple{"m.room.topic", ""}

		err := s.read(ctx, func(q storage.Querier) error {
			var oldNID, before int64
			if err := q.QueryRow(ctx, `SELECT event_nid FROM roomserver_events WHERE event_id = $1`, topic).Scan(&oldNID); err != nil {
				return err
			}
			if err := q.QueryRow(ctx, `SELECT state_before FROM roomserver_events WHERE event_id = $1`, m3).Scan(&before); err != nil {
				return err
			}
			if r := d.input(t, s, "topic"); r.Outcome != Accepted {
				t.Fatalf("promotion of the topic: %s %s", r.Outcome, r.Reason)
			}
			fresh, err := s.snapshotKeys(ctx, db.Reader(), before, []tuple{k})
			if err != nil {
				return err
			}
			if fresh[k] == oldNID || fresh[k] == 0 {
				t.Fatalf("the topic in the state before m3 after the promotion: NID %d (old %d), want the new NID", fresh[k], oldNID)
			}
			got, err := s.snapshotKeys(ctx, q, before, []tuple{k})
			if err != nil {
				return err
			}
			if got[k] != oldNID {
				t.Errorf("the snapshot read's topic in the state before m3: NID %d, want %d (its snapshot's)", got[k], oldNID)
			}
			if _, err := s.loadEvents(ctx, q, nil, d.version, []int64{got[k]}); err != nil {
				t.Errorf("the snapshot read loading that topic: %v", err)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	})
}

// TestSnapshotReadIgnoresNewerCachedResync: the end of a partial-state
// resync rewrites the events after the join (carol's local join, which
// the full state's ban now rejects; bob's message, whose state before
// is now the full one). A read transaction whose snapshot predates the
// resync must get those events' rows as its snapshot holds them
// (accepted, with the partial state's snapshots), not the rewritten
// rows a later read cached, whose new state snapshots it cannot read.
func TestSnapshotReadIgnoresNewerCachedResync(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		s := newTestServer(t, db)
		p := newPartialRoom(t, s, [3]string{"m.room.member", psCarol, `{"membership":"ban"}`})
		ctx := context.Background()
		join, err := s.Join(ctx, MembershipRequest{RoomID: p.roomID, Sender: psCarol, Target: psCarol})
		if err != nil {
			t.Fatalf("carol's local join on partial state: %v", err)
		}
		msg := mustSend(t, s, p.roomID, psBob, "m.room.message", nil, `{"msgtype":"m.text","body":"first"}`)
		ids := []string{join.EventID, msg}

		err = s.read(ctx, func(q storage.Querier) error {
			want := map[string]rowStamp{}
			rows, err := eventRowsByID(ctx, q, ids) // takes the snapshot
			if err != nil {
				return err
			}
			for _, r := range rows {
				want[r.EventID] = stampOf(r)
			}
			if len(want) != 2 || want[join.EventID].rejected {
				t.Fatalf("before the resync: %+v, want both events, carol's join accepted", want)
			}
			p.complete(t)
			fresh, err := s.loadEventsByID(ctx, db.Reader(), nil, ids)
			if err != nil {
				return err
			}
			if e := fresh[join.EventID]; e == nil || !e.row.Rejected {
				t.Fatalf("carol's join after the resync: %s, want it rejected", rowOf(e))
			}
			if e := fresh[msg]; e == nil || stampOf(e.row) == want[msg] {
				t.Fatalf("bob's message after the resync: %s, want its snapshots rewritten", rowOf(e))
			}
			got, err := s.loadEventsByID(ctx, q, nil, ids)
			if err != nil {
				return err
			}
			for _, id := range ids {
				if e := got[id]; e == nil || stampOf(e.row) != want[id] {
					t.Errorf("the snapshot read's %s: %s, want its snapshot's row %+v", id, rowOf(e), want[id])
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	})
}

// rowOf describes a loaded event's row for a test's failure message.
func rowOf(e *loadedEvent) string {
	if e == nil {
		return "not loaded"
	}
	return fmt.Sprintf("%s %+v outlier=%v", e.row.EventID, stampOf(e.row), isOutlierRow(e.row))
}

// TestPromotionDropsAtCommit: from the moment an outlier's promotion
// commits, a read taking its snapshot sees the promoted row, so the
// caches must no longer hold the outlier's row nor a snapshot entry
// naming its old NID — not only once the promoting caller's AfterCommit
// hooks run, later, on its own goroutine. Observed from an OnCommit hook
// the promotion's own transaction registers after its writes (through
// the timeline hook, which runs for a promoted event that becomes the
// room's newest).
func TestPromotionDropsAtCommit(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		ctx := context.Background()
		s, d := promotionRoom(t, db)
		d.add("topic", bob, "m.room.topic", ptr(""), `{"topic":"an outlier first"}`, "bob-join")
		topic := d.byName["topic"].EventID()
		d.mustOutlier(t, s, "topic")
		room, err := loadRoom(ctx, db.Reader(), d.roomID)
		if err != nil {
			t.Fatal(err)
		}
		// Cache the outlier's row and a snapshot entry (the current
		// state's member key: any entry, as a move empties the cache).
		if got, err := s.loadEventsByID(ctx, db.Reader(), nil, []string{topic}); err != nil || got[topic] == nil || !isOutlierRow(got[topic].row) {
			t.Fatalf("the outlier: %v, %v", got, err)
		}
		k := tuple{"m.room.member", bob}
		if _, err := s.snapshotKeys(ctx, db.Reader(), room.CurrentSnapshot, []tuple{k}); err != nil {
			t.Fatal(err)
		}
		if s.events.getID(topic, math.MaxUint64) == nil || s.snapKeys.byID[room.CurrentSnapshot] == nil {
			t.Fatal("the outlier or the snapshot entry is not cached; the test needs them cached")
		}

		var atCommit []string
		ran := false
		s.onTimeline = func(ctx context.Context, tx storage.Tx, ev TimelineEvent) (func(), error) {
			if ev.Event.EventID != topic {
				return nil, nil
			}
			tx.OnCommit(func() {
				ran = true
				if e := s.events.getID(topic, math.MaxUint64); e != nil && isOutlierRow(e.row) {
					atCommit = append(atCommit, "the event cache serves the outlier's row")
				}
				s.snapKeys.mu.Lock()
				if len(s.snapKeys.byID) != 0 {
					atCommit = append(atCommit, "the snapshot key cache still holds entries read before the move")
				}
				s.snapKeys.mu.Unlock()
			})
			return nil, nil
		}
		if r := d.input(t, s, "topic"); r.Outcome != Accepted {
			t.Fatalf("promotion of the topic: %s %s", r.Outcome, r.Reason)
		}
		s.onTimeline = nil
		if !ran {
			t.Fatal("the promotion's OnCommit hook did not run")
		}
		if len(atCommit) != 0 {
			t.Errorf("at the promotion's commit: %s", strings.Join(atCommit, "; "))
		}
	})
}
