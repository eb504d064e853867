package roomserver

import (
	"context"
	"encoding/json"
	"slices"
	"strings"
	"testing"

	"github.com/myelin-chat/myelin/internal/mxerr"
	"github.com/myelin-chat/myelin/storage"
	"github.com/myelin-chat/myelin/storage/storagetest"
)

// promotionRoom is baseRoom (version 10) input into a new server.
func promotionRoom(t *testing.T, db *storage.DB) (*Server, *dag) {
	t.Helper()
	s := newTestServer(t, db)
	d := baseRoom(t, "10")
	for _, name := range []string{"create", "alice-join", "pl0", "jr", "bob-join"} {
		if r := d.input(t, s, name); r.Outcome != Accepted {
			t.Fatalf("%s: %s %s", name, r.Outcome, r.Reason)
		}
	}
	return s, d
}

// mustOutlier stores the named events as outliers (InputOutliers, as
// when they complete an auth chain).
func (d *dag) mustOutlier(t *testing.T, s *Server, names ...string) {
	t.Helper()
	var raws []json.RawMessage
	for _, n := range names {
		raws = append(raws, d.byName[n].JSON())
	}
	out, err := s.InputOutliers(context.Background(), d.roomID, raws)
	if err != nil {
		t.Fatalf("InputOutliers(%v): %v", names, err)
	}
	for _, n := range names {
		if o := out[d.byName[n].EventID()]; o != Accepted {
			t.Fatalf("outlier %s: %s", n, o)
		}
	}
}

// visibleTo reports how often eventID appears in what alice gets from
// /event, /messages (backwards from the end) and the stream (from
// position from, as /sync reads it).
func visibleTo(t *testing.T, s *Server, roomID, eventID string, from int64) (event bool, messages, stream, recent int) {
	t.Helper()
	ctx := context.Background()
	_, err := s.Event(ctx, alice, eventID)
	if err != nil && !mxerr.Is(err, mxerr.NotFound) {
		t.Fatal(err)
	}
	event = err == nil
	count := func(evs []*Event) int {
		n := 0
		for _, e := range evs {
			if e.EventID == eventID {
				n++
			}
		}
		return n
	}
	msgs, err := s.Messages(ctx, MessagesRequest{UserID: alice, RoomID: roomID, Dir: Backward, Limit: 100})
	if err != nil {
		t.Fatal(err)
	}
	rng, err := s.EventsInRange(ctx, RangeRequest{UserID: alice, RoomIDs: []string{roomID}, From: from, Limit: 100})
	if err != nil {
		t.Fatal(err)
	}
	pos, err := s.StreamPosition(ctx)
	if err != nil {
		t.Fatal(err)
	}
	rec, err := s.RecentEvents(ctx, RecentRequest{UserID: alice, RoomID: roomID, From: from, To: pos, Limit: 100})
	if err != nil {
		t.Fatal(err)
	}
	return event, count(msgs.Events), count(rng.Events), count(rec.Events)
}

// TestOutlierPromotedBySend: an event held only as an outlier that
// arrives again as a timeline event (/send) becomes a timeline event
// with a new stream position: visible through /event, /messages and the
// stream exactly once, a forward extremity, and the prev event of what
// follows. A second delivery changes nothing.
func TestOutlierPromotedBySend(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		ctx := context.Background()
		s, d := promotionRoom(t, db)
		d.add("m1", bob, "m.room.message", nil, `{"msgtype":"m.text","body":"first an outlier"}`, "bob-join")
		d.add("m2", bob, "m.room.message", nil, `{"msgtype":"m.text","body":"after it"}`, "m1")
		m1 := d.byName["m1"].EventID()
		start, _ := s.StreamPosition(ctx)

		d.mustOutlier(t, s, "m1")
		if ev, msgs, stream, recent := visibleTo(t, s, d.roomID, m1, start); ev || msgs+stream+recent != 0 {
			t.Fatalf("outlier visible: /event %v, /messages %d, stream %d, recent %d", ev, msgs, stream, recent)
		}
		afterOutlier, _ := s.StreamPosition(ctx)
		rows := countRows(t, db, "roomserver_events")

		r := d.input(t, s, "m1")
		if r.Outcome != Accepted {
			t.Fatalf("promotion: %s %s", r.Outcome, r.Reason)
		}
		if r.StreamPos <= afterOutlier {
			t.Fatalf("promoted at stream position %d, not after %d", r.StreamPos, afterOutlier)
		}
		if n := countRows(t, db, "roomserver_events"); n != rows {
			t.Fatalf("%d event rows after promotion, %d before", n, rows)
		}
		for _, from := range []int64{start, afterOutlier} {
			ev, msgs, stream, recent := visibleTo(t, s, d.roomID, m1, from)
			if !ev || msgs != 1 || stream != 1 || recent != 1 {
				t.Fatalf("from %d: /event %v, /messages %d, stream %d, recent %d; want visible once each", from, ev, msgs, stream, recent)
			}
		}
		if ext, _ := s.Extremities(ctx, d.roomID); !slices.Equal(ext, []string{m1}) {
			t.Fatalf("extremities %v, want [%s]", ext, m1)
		}

		// A second delivery does nothing.
		pos, _ := s.StreamPosition(ctx)
		if r := d.input(t, s, "m1"); r.Outcome != Duplicate {
			t.Fatalf("second delivery: %s", r.Outcome)
		}
		if again, _ := s.StreamPosition(ctx); again != pos {
			t.Fatalf("second delivery moved the stream from %d to %d", pos, again)
		}
		if _, _, stream, _ := visibleTo(t, s, d.roomID, m1, start); stream != 1 {
			t.Fatalf("after a second delivery the stream holds it %d times", stream)
		}

		// What follows it is connected.
		if r := d.input(t, s, "m2"); r.Outcome != Accepted {
			t.Fatalf("m2: %s %s", r.Outcome, r.Reason)
		}
	})
}

// TestOutlierPromotionKeepsState: a state event first stored as an
// outlier as part of a gap's state (so snapshots and the current state
// hold it), then received as a timeline event, keeps its place in that
// state under its new position; the event that already follows it stays
// the only forward extremity.
func TestOutlierPromotionKeepsState(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		ctx := context.Background()
		s, d, topic, m3 := topicOutlierRoom(t, db)
		if _, err := s.Event(ctx, alice, topic); !mxerr.Is(err, mxerr.NotFound) {
			t.Fatalf("outlier topic: %v, want M_NOT_FOUND", err)
		}
		pos, _ := s.StreamPosition(ctx)

		if r := d.input(t, s, "topic"); r.Outcome != Accepted || r.StreamPos <= pos {
			t.Fatalf("promotion: %+v (stream was at %d)", r, pos)
		}
		if _, err := s.Event(ctx, alice, topic); err != nil {
			t.Fatalf("promoted topic: %v", err)
		}
		if ext, _ := s.Extremities(ctx, d.roomID); !slices.Equal(ext, []string{m3}) {
			t.Fatalf("extremities %v, want [%s]", ext, m3)
		}
		if got := currentStateIDs(t, s, d.roomID)["m.room.topic|"]; got != topic {
			t.Fatalf("current topic %q, want %s", got, topic)
		}
		st, err := s.StateAt(ctx, alice, m3)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.ContainsFunc(st.Before, func(e *Event) bool { return e.EventID == topic }) {
			t.Fatal("the state before m3 lost the promoted topic")
		}
		topicNID, err := s.eventNID(ctx, topic)
		if err != nil {
			t.Fatal(err)
		}
		var stale int
		if err := db.Reader().QueryRow(ctx, `SELECT COUNT(*) FROM roomserver_snapshot_entries e
			WHERE e.type = 'm.room.topic' AND e.event_nid <> $1`, topicNID).Scan(&stale); err != nil {
			t.Fatal(err)
		}
		if stale != 0 {
			t.Fatalf("%d snapshot entries still name the outlier's old NID", stale)
		}
		if ev, err := s.CurrentStateEvent(ctx, alice, d.roomID, "m.room.topic", ""); err != nil || ev.EventID != topic {
			t.Fatalf("current topic: %+v, %v", ev, err)
		}
	})
}

// TestOutlierPromotionRejected: an outlier its auth events allow, whose
// state before (its prev events) does not, is rejected when it arrives
// as a timeline event, as a new event would be, and stays invisible.
func TestOutlierPromotionRejected(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		ctx := context.Background()
		s, d := promotionRoom(t, db)
		d.add("bob-leave", bob, "m.room.member", ptr(bob), `{"membership":"leave"}`, "bob-join")
		d.input(t, s, "bob-leave")
		// Built on bob's leave, but naming his join as an auth event.
		left := d.stateAfter["bob-leave"]
		d.stateAfter["bob-leave"] = d.stateAfter["bob-join"]
		d.add("sneaky", bob, "m.room.message", nil, `{"msgtype":"m.text","body":"after leaving"}`, "bob-leave")
		d.stateAfter["bob-leave"] = left
		sneaky := d.byName["sneaky"].EventID()
		start, _ := s.StreamPosition(ctx)

		d.mustOutlier(t, s, "sneaky")
		if r := d.input(t, s, "sneaky"); r.Outcome != Rejected {
			t.Fatalf("promotion of an event its state before does not allow: %s", r.Outcome)
		}
		if ev, msgs, stream, recent := visibleTo(t, s, d.roomID, sneaky, start); ev || msgs+stream+recent != 0 {
			t.Fatalf("rejected event visible: /event %v, /messages %d, stream %d, recent %d", ev, msgs, stream, recent)
		}
		if ext, _ := s.Extremities(ctx, d.roomID); !slices.Equal(ext, []string{d.byName["bob-leave"].EventID()}) {
			t.Fatalf("extremities %v", ext)
		}
		if r := d.input(t, s, "sneaky"); r.Outcome != Duplicate {
			t.Fatalf("second delivery: %s", r.Outcome)
		}
	})
}

// TestOutlierPromotedByBackfill: an outlier that backfill returns takes
// its place in the history (a backfilled event: below the stream).
func TestOutlierPromotedByBackfill(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		ctx := context.Background()
		s := newTestServer(t, db)
		d := baseRoom(t, "10")
		d.add("old", bob, "m.room.message", nil, `{"msgtype":"m.text","body":"history"}`, "bob-join")
		d.add("later", bob, "m.room.message", nil, `{"msgtype":"m.text","body":"later"}`, "old")
		for _, name := range []string{"create", "alice-join", "pl0", "jr", "bob-join"} {
			d.input(t, s, name)
		}
		d.mustOutlier(t, s, "old")
		old := d.byName["old"].EventID()
		n, err := s.PersistBackfill(ctx, d.roomID, []json.RawMessage{d.byName["old"].JSON()})
		if err != nil || n != 1 {
			t.Fatalf("PersistBackfill: %d, %v", n, err)
		}
		nid, err := s.eventNID(ctx, old)
		if err != nil || nid >= 0 {
			t.Fatalf("backfilled outlier NID %d (%v), want a negative one", nid, err)
		}
		ev, msgs, stream, _ := visibleTo(t, s, d.roomID, old, 0)
		if !ev || msgs != 1 || stream != 0 {
			t.Fatalf("/event %v, /messages %d, stream %d; want visible in history, not in the stream", ev, msgs, stream)
		}
		if n, err := s.PersistBackfill(ctx, d.roomID, []json.RawMessage{d.byName["old"].JSON()}); err != nil || n != 0 {
			t.Fatalf("second backfill: %d, %v", n, err)
		}
	})
}

// eventNID is the NID eventID is stored under.
func (s *Server) eventNID(ctx context.Context, eventID string) (int64, error) {
	row, err := eventRowByID(ctx, s.db.Reader(), eventID)
	if err != nil {
		return 0, err
	}
	return row.NID, nil
}

// TestInDAGOrder: the partial-state replay reads events in stream order,
// but a promoted outlier's stream position comes after events that name
// it as a prev event; inDAGOrder puts every event after its prev events
// and otherwise keeps stream order.
func TestInDAGOrder(t *testing.T) {
	row := func(id string, prevs ...string) *eventRow {
		raw, _ := json.Marshal(map[string]any{"prev_events": prevs})
		return &eventRow{EventID: id, JSON: string(raw)}
	}
	// Stream order: join, t1 (follows o2), late, o1, o2 (promoted late), m.
	rows := []*eventRow{row("join"), row("t1", "o2"), row("late", "join"), row("o1", "late"), row("o2", "o1"), row("m", "t1")}
	var got []string
	for _, r := range inDAGOrder(rows) {
		got = append(got, r.EventID)
	}
	if want := []string{"join", "late", "o1", "o2", "t1", "m"}; !slices.Equal(got, want) {
		t.Fatalf("order %v, want %v", got, want)
	}
	// Already in DAG order: unchanged; room version 1 prev_events ([id, hashes]) read too.
	v1 := &eventRow{EventID: "b", JSON: `{"prev_events":[["a",{"sha256":"x"}]]}`}
	got = nil
	for _, r := range inDAGOrder([]*eventRow{row("a"), v1, row("c", "a")}) {
		got = append(got, r.EventID)
	}
	if want := []string{"a", "b", "c"}; !slices.Equal(got, want) {
		t.Fatalf("order %v, want %v", got, want)
	}
	// Reversed v1 pair: b first in the stream, after a in the DAG.
	got = nil
	for _, r := range inDAGOrder([]*eventRow{v1, row("a")}) {
		got = append(got, r.EventID)
	}
	if want := []string{"a", "b"}; !slices.Equal(got, want) {
		t.Fatalf("order %v, want %v", got, want)
	}
}

// TestEventAfterOutlierIsUnconnected: an event whose prev event is held
// only as an outlier has no known state before it; it is refused as
// unconnected (M_NOT_FOUND, nothing stored, so the federation API
// fetches what lies before it) instead of being checked against an empty
// state and rejected for good. Once the outlier takes its place in the
// timeline, the event is accepted.
func TestEventAfterOutlierIsUnconnected(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		ctx := context.Background()
		s, d := promotionRoom(t, db)
		d.add("m1", bob, "m.room.message", nil, `{"msgtype":"m.text","body":"an outlier"}`, "bob-join")
		d.add("m2", bob, "m.room.message", nil, `{"msgtype":"m.text","body":"after it"}`, "m1")
		m1 := d.byName["m1"].EventID()
		d.mustOutlier(t, s, "m1")
		if got, err := s.UnconnectedEvents(ctx, []string{m1, d.byName["bob-join"].EventID(), "$unknown"}); err != nil ||
			!slices.Equal(got, []string{m1, "$unknown"}) {
			t.Fatalf("UnconnectedEvents: %v, %v", got, err)
		}
		rows := countRows(t, db, "roomserver_events")
		_, err := s.InputEvent(ctx, InputEventRequest{RoomVersion: d.version, JSON: d.byName["m2"].JSON()})
		if !mxerr.Is(err, mxerr.NotFound) {
			t.Fatalf("event after an outlier: %v, want M_NOT_FOUND", err)
		}
		if n := countRows(t, db, "roomserver_events"); n != rows {
			t.Fatalf("%d event rows, %d before", n, rows)
		}
		if r := d.input(t, s, "m1"); r.Outcome != Accepted {
			t.Fatalf("m1: %s %s", r.Outcome, r.Reason)
		}
		if got, _ := s.UnconnectedEvents(ctx, []string{m1}); len(got) != 0 {
			t.Fatalf("UnconnectedEvents after promotion: %v", got)
		}
		if r := d.input(t, s, "m2"); r.Outcome != Accepted {
			t.Fatalf("m2: %s %s", r.Outcome, r.Reason)
		}
	})
}

// topicOutlierRoom is promotionRoom with bob's topic known only as an
// outlier of a gap's state: m3, built on it, was input with that state.
func topicOutlierRoom(t *testing.T, db *storage.DB) (s *Server, d *dag, topic, m3 string) {
	t.Helper()
	ctx := context.Background()
	s, d = promotionRoom(t, db)
	d.add("topic", bob, "m.room.topic", ptr(""), `{"topic":"from the gap"}`, "bob-join")
	d.add("m3", bob, "m.room.message", nil, `{"msgtype":"m.text","body":"after the topic"}`, "topic")
	topic, m3 = d.byName["topic"].EventID(), d.byName["m3"].EventID()
	var state []json.RawMessage
	for _, e := range d.stateAfter["topic"] {
		state = append(state, e.JSON())
	}
	r, err := s.InputWithState(ctx, InputWithStateRequest{RoomVersion: "10", JSON: d.byName["m3"].JSON(),
		PrevStates: [][]json.RawMessage{state}})
	if err != nil || r.Outcome != Accepted {
		t.Fatalf("m3 with the gap's state: %+v, %v", r, err)
	}
	return s, d, topic, m3
}

// TestBackfillAfterItsRedaction: a redaction that came first (here
// accepted on the normal path while its target was unknown) redacts the
// target when backfill stores it, in the same transaction: /event and
// the search indexer's feed (HistoryBefore) see it pruned, never its
// text. A backfilled redaction likewise redacts its held target.
// Spec: client-server-api, "Redactions".
func TestBackfillAfterItsRedaction(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		ctx := context.Background()
		s := newTestServer(t, db)
		d := baseRoom(t, "11")
		d.add("old", bob, "m.room.message", nil, `{"msgtype":"m.text","body":"secret history"}`, "bob-join")
		d.add("red", bob, "m.room.redaction", nil, `{"redacts":"`+d.byName["old"].EventID()+`"}`, "bob-join")
		d.add("old2", bob, "m.room.message", nil, `{"msgtype":"m.text","body":"other secret"}`, "bob-join")
		d.add("red2", bob, "m.room.redaction", nil, `{"redacts":"`+d.byName["old2"].EventID()+`"}`, "bob-join")
		for _, name := range []string{"create", "alice-join", "pl0", "jr", "bob-join", "red", "old2"} {
			d.input(t, s, name)
		}
		old, old2 := d.byName["old"].EventID(), d.byName["old2"].EventID()
		n, err := s.PersistBackfill(ctx, d.roomID, []json.RawMessage{d.byName["old"].JSON(), d.byName["red2"].JSON()})
		if err != nil || n != 2 {
			t.Fatalf("PersistBackfill: %d, %v", n, err)
		}
		s.events = newEventCache(4096)
		for id, because := range map[string]string{old: d.byName["red"].EventID(), old2: d.byName["red2"].EventID()} {
			got, err := s.loadEventsByID(ctx, db.Reader(), nil, []string{id})
			if err != nil || got[id] == nil {
				t.Fatalf("loading %s: %v", id, err)
			}
			if c := got[id].pdu.Content(); string(c) != "{}" {
				t.Fatalf("%s stored with content %s, want it redacted", id, c)
			}
			if rb := got[id].row.RedactedBecause; rb == nil || *rb != because {
				t.Fatalf("%s: redacted_because %v, want %s", id, rb, because)
			}
		}
		hist, err := s.HistoryBefore(ctx, 0, 10)
		if err != nil {
			t.Fatal(err)
		}
		for _, ev := range hist {
			if strings.Contains(string(ev.JSON), "secret") {
				t.Fatalf("the search indexer's feed carries redacted text: %s", ev.JSON)
			}
		}
	})
}
