package roomserver

import (
	"context"
	"strings"
	"testing"

	"github.com/myelin-chat/myelin/storage"
	"github.com/myelin-chat/myelin/storage/storagetest"
)

// JoinsAfter answers what EventsAfter answers filtered to joins, with the
// stream position read in the same transaction: push's consumer relies on
// it to see every join after its position (a user's rules follow a room
// upgrade) and on the position to advance past everything else.
func TestJoinsAfter(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		ctx := context.Background()
		s := newTestServer(t, db)
		room := mustCreate(t, s, CreateRoomRequest{Creator: alice, RoomVersion: "12", Preset: PresetPublicChat}).RoomID
		start, err := s.StreamPosition(ctx)
		if err != nil {
			t.Fatal(err)
		}
		mustSend(t, s, room, alice, "m.room.message", nil, `{"msgtype":"m.text","body":"one"}`)
		join := func(user string) {
			t.Helper()
			if _, err := s.Join(ctx, MembershipRequest{RoomID: room, Sender: user, Target: user}); err != nil {
				t.Fatal(err)
			}
		}
		join(bob)
		mustSend(t, s, room, bob, "m.room.message", nil, `{"msgtype":"m.text","body":"two"}`)
		// A profile change is a join too (join -> join): the consumer
		// sees it as EventsAfter would have shown it.
		mustSend(t, s, room, bob, "m.room.member", ptr(bob), `{"membership":"join","displayname":"Bob"}`)
		if _, err := s.Leave(ctx, MembershipRequest{RoomID: room, Sender: bob, Target: bob}); err != nil {
			t.Fatal(err)
		}
		join(charlie)
		mustSend(t, s, room, charlie, "m.room.message", nil, `{"msgtype":"m.text","body":"three"}`)

		all, err := s.EventsAfter(ctx, start, 100)
		if err != nil {
			t.Fatal(err)
		}
		var want []string
		for _, ev := range all {
			if ev.Type == "m.room.member" && ev.Membership == "join" {
				want = append(want, ev.EventID)
			}
		}
		if len(want) != 3 || len(all) != 7 {
			t.Fatalf("set-up: %d events, %d joins; want 7 and 3", len(all), len(want))
		}
		head, joins, err := s.JoinsAfter(ctx, start, 100)
		if err != nil {
			t.Fatal(err)
		}
		if head != all[len(all)-1].StreamPos {
			t.Errorf("head %d, want the last event's position %d", head, all[len(all)-1].StreamPos)
		}
		if got := eventIDs(joins); strings.Join(got, " ") != strings.Join(want, " ") {
			t.Errorf("joins %v, want %v", got, want)
		}
		for _, ev := range joins {
			if ev.RoomID != room || ev.StateKey == nil || len(ev.JSON) == 0 {
				t.Errorf("join %s lacks its room, state key or JSON: %+v", ev.EventID, ev)
			}
		}
		// After the first join: the two others; limit 1: the next one only.
		_, rest, err := s.JoinsAfter(ctx, joins[0].StreamPos, 100)
		if err != nil {
			t.Fatal(err)
		}
		if got := eventIDs(rest); strings.Join(got, " ") != strings.Join(want[1:], " ") {
			t.Errorf("joins after the first %v, want %v", got, want[1:])
		}
		_, one, err := s.JoinsAfter(ctx, joins[0].StreamPos, 1)
		if err != nil {
			t.Fatal(err)
		}
		if got := eventIDs(one); len(got) != 1 || got[0] != want[1] {
			t.Errorf("joins after the first, limit 1: %v, want [%s]", got, want[1])
		}
		// At the head: the head and nothing else.
		h, none, err := s.JoinsAfter(ctx, head, 100)
		if err != nil || h != head || len(none) != 0 {
			t.Errorf("at the head: %d, %v, %v; want %d and no events", h, none, err, head)
		}
	})
}

// The joins are found by a walk of the stream positions above the
// consumer's, not of every member event ever stored (the partial member
// index): checked on SQLite's plan.
func TestJoinsAfterPlanWalksStreamRange(t *testing.T) {
	db := storagetest.OpenSQLite(t)
	newTestServer(t, db) // migrations
	plan := sqlitePlan(t, db, joinsAfterQuery, 0, 200)
	joined := strings.Join(plan, "; ")
	if !strings.Contains(joined, "INTEGER PRIMARY KEY") || strings.Contains(joined, "roomserver_events_member") {
		t.Errorf("plan %q: want a range of the key, not the member index", joined)
	}
}

func eventIDs(evs []*Event) []string {
	var out []string
	for _, ev := range evs {
		out = append(out, ev.EventID)
	}
	return out
}
