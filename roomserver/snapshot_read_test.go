package roomserver

import (
	"context"
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
