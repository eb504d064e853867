package roomserver

import (
	"context"
	"slices"
	"testing"

	"github.com/myelin-chat/myelin/storage"
	"github.com/myelin-chat/myelin/storage/storagetest"
)

// TestCurrentStateChangeWithoutEventTakesAPosition: a change of a room's
// current state that stores no event (recomputeCurrentState, as at a
// resync's end or a stretch completion) takes a room stream position of
// its own, after every event before it and before every event after it:
// the head moves to it and is notified, StateDelta returns the changed
// entry in the window holding it (and not after it), RoomsWithEvents and
// StreamTouched list the room and the member whose membership changed,
// LatestPositions counts it, and the member's membership is dated by it
// (issue 7).
func TestCurrentStateChangeWithoutEventTakesAPosition(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		ctx := context.Background()
		s, notified := newTestServerNotify(t, db)
		room := mustCreate(t, s, CreateRoomRequest{Creator: alice, Preset: "public_chat"}).RoomID
		join := mustSend(t, s, room, bob, "m.room.member", ptr(bob), `{"membership":"join"}`)
		leave := mustSend(t, s, room, bob, "m.room.member", ptr(bob), `{"membership":"leave"}`)
		joinRow, err := eventRowByID(ctx, db.Reader(), join)
		if err != nil {
			t.Fatal(err)
		}
		// The current-state table says bob is joined while the room's
		// state says he left: recomputing it changes bob's entry back to
		// his leave without any new event.
		if err := db.Write(ctx, func(tx storage.Tx) error {
			_, err := tx.Exec(ctx, `UPDATE roomserver_current_state SET event_nid = $1, event_id = $2, membership = 'join'
				WHERE room_id = $3 AND type = 'm.room.member' AND state_key = $4`, joinRow.NID, join, room, bob)
			return err
		}); err != nil {
			t.Fatal(err)
		}
		head, err := s.StreamPosition(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := db.Write(ctx, func(tx storage.Tx) error {
			r, err := loadRoom(ctx, tx, room)
			if err != nil {
				return err
			}
			return s.recomputeCurrentState(ctx, tx, r, map[string]int64{})
		}); err != nil {
			t.Fatal(err)
		}
		mustMember(t, s, room, bob, "leave")
		pos, err := s.StreamPosition(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if pos <= head {
			t.Fatalf("stream position after the change without event: %d, want above %d", pos, head)
		}
		if got := notified.get(); got != pos {
			t.Errorf("notified %d, want the change's position %d", got, pos)
		}
		delta, err := s.StateDelta(ctx, room, head, pos)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.ContainsFunc(delta, func(e *Event) bool { return e.EventID == leave }) {
			t.Errorf("StateDelta(%d, %d) = %v, want bob's leave %s", head, pos, eventIDs(delta), leave)
		}
		rooms, complete, err := s.RoomsWithEvents(ctx, head, pos, 100)
		if err != nil {
			t.Fatal(err)
		}
		if !complete || !rooms[room] {
			t.Errorf("RoomsWithEvents(%d, %d) = %v, %v; want the room with state news", head, pos, rooms, complete)
		}
		touched, err := s.StreamTouched(ctx, head, pos, 100)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.ContainsFunc(touched, func(t StreamTouch) bool {
			return t.RoomID == room && t.Member == bob && t.Accepted && t.State && t.StreamPos == pos
		}) {
			t.Errorf("StreamTouched(%d, %d) = %+v; want bob's membership in the room at %d", head, pos, touched, pos)
		}
		for _, types := range [][]string{nil, {"m.room.member"}} {
			latest, err := s.LatestPositions(ctx, []string{room}, pos, types)
			if err != nil {
				t.Fatal(err)
			}
			if latest[room] != pos {
				t.Errorf("LatestPositions(%v) = %d, want the change's position %d", types, latest[room], pos)
			}
		}
		ms, err := s.UserMemberships(ctx, bob)
		if err != nil {
			t.Fatal(err)
		}
		if len(ms) != 1 || ms[0].EventID != leave || ms[0].StreamPos != pos {
			t.Errorf("bob's memberships: %+v; want his leave dated %d", ms, pos)
		}

		// Told once: a later event comes after the change, and the next
		// window does not hold it again.
		msg := mustSend(t, s, room, alice, "m.room.message", nil, `{"msgtype":"m.text","body":"after"}`)
		msgRow, err := eventRowByID(ctx, db.Reader(), msg)
		if err != nil {
			t.Fatal(err)
		}
		if msgRow.NID <= pos {
			t.Fatalf("event after the change at %d has position %d", pos, msgRow.NID)
		}
		if delta, err = s.StateDelta(ctx, room, pos, msgRow.NID); err != nil {
			t.Fatal(err)
		}
		if len(delta) != 0 {
			t.Errorf("StateDelta after the change = %v, want nothing", eventIDs(delta))
		}
	})
}

// TestStateResetByEventToldAtItsPosition: an incoming event can reset
// the current state to an older event (here a fork demoting bob drops
// his kick of charlie, whose join becomes current again). The reset
// entry is dated by the incoming event's position, not by its own
// event's: StateDelta returns it in the window holding the incoming
// event, charlie's membership moves there, and StreamTouched names
// charlie there so that his /sync is woken (issue 7).
func TestStateResetByEventToldAtItsPosition(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		ctx := context.Background()
		d, s := kickedCharlieRoom(t, db)
		mustMember(t, s, d.roomID, charlie, "leave")
		head, err := s.StreamPosition(ctx)
		if err != nil {
			t.Fatal(err)
		}
		r := d.input(t, s, "demote")
		if r.Outcome != Accepted {
			t.Fatalf("demote: %s %s", r.Outcome, r.Reason)
		}
		mustMember(t, s, d.roomID, charlie, "join") // the kick is dropped: a reset
		join := d.byName["charlie-join"].EventID()
		if pos, err := s.StreamPosition(ctx); err != nil || pos != r.StreamPos {
			t.Fatalf("stream position %d (%v), want the demotion's %d", pos, err, r.StreamPos)
		}
		delta, err := s.StateDelta(ctx, d.roomID, head, r.StreamPos)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.ContainsFunc(delta, func(e *Event) bool { return e.EventID == join }) {
			t.Errorf("StateDelta(%d, %d) = %v, want charlie's join %s made current again", head, r.StreamPos, eventIDs(delta), join)
		}
		ms, err := s.UserMemberships(ctx, charlie)
		if err != nil {
			t.Fatal(err)
		}
		if len(ms) != 1 || ms[0].EventID != join || ms[0].StreamPos != r.StreamPos {
			t.Errorf("charlie's memberships: %+v; want his join dated %d", ms, r.StreamPos)
		}
		touched, err := s.StreamTouched(ctx, head, r.StreamPos, 100)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.ContainsFunc(touched, func(t StreamTouch) bool {
			return t.RoomID == d.roomID && t.Member == charlie && t.Accepted && t.StreamPos == r.StreamPos
		}) {
			t.Errorf("StreamTouched(%d, %d) = %+v; want charlie's membership at %d", head, r.StreamPos, touched, r.StreamPos)
		}
	})
}

// kickedCharlieRoom inputs a room where bob kicked charlie, with a fork
// "demote" (alice takes bob's power to kick, built beside the kick) added
// but not input: inputting it resets charlie's membership to his join.
func kickedCharlieRoom(t *testing.T, db *storage.DB) (*dag, *Server) {
	t.Helper()
	d := baseRoom(t, "12")
	d.add("charlie-join", charlie, "m.room.member", ptr(charlie), `{"membership":"join"}`, "bob-join")
	d.add("kick", bob, "m.room.member", ptr(charlie), `{"membership":"leave"}`, "charlie-join")
	d.add("demote", alice, "m.room.power_levels", ptr(""),
		`{"users":`+plUsers("12", `"@bob:test.local":0`)+`,"events":{"m.room.power_levels":50},"state_default":50,"ban":50,"kick":50}`,
		"charlie-join")
	s := newTestServer(t, db)
	for _, name := range []string{"create", "alice-join", "pl0", "jr", "bob-join", "charlie-join", "kick"} {
		if r := d.input(t, s, name); r.Outcome != Accepted {
			t.Fatalf("%s: %s %s", name, r.Outcome, r.Reason)
		}
	}
	return d, s
}
