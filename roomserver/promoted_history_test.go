package roomserver

import (
	"context"
	"encoding/json"
	"slices"
	"testing"

	"github.com/myelin-chat/myelin/storage"
	"github.com/myelin-chat/myelin/storage/storagetest"
)

// TestPromotedHistoryDoesNotHideNewerEvents is issue 7's three-server
// flake in one server. Carol (here) joined alice's room (on
// other.example) through send_join, so the room's history before her
// join is held as outliers. Carol and alice talk. Then an event built
// before the other server heard of carol's join names an event carol's
// server holds only as an outlier; get_missing_events brings the room's
// history as timeline events, and it is promoted (outlier_promotion.go)
// to stream positions after the two messages. The oldest promoted event
// follows the create event, which stays an outlier, so it counts as a
// gap; but it lies deeper in the room than the messages before it in the
// stream, so the timeline batch must not start at it: carol's sync must
// still show both messages, not only the room's creation.
func TestPromotedHistoryDoesNotHideNewerEvents(t *testing.T) {
	const (
		remoteAlice = "@alice:other.example"
		carol       = "@carol:test.local"
	)
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		ctx := context.Background()
		s := newTestServer(t, db)
		d := newDAG(t, "12")
		d.add("create", remoteAlice, "m.room.create", ptr(""), `{"room_version":"12"}`)
		d.add("alice-join", remoteAlice, "m.room.member", ptr(remoteAlice), `{"membership":"join"}`, "create")
		d.add("pl", remoteAlice, "m.room.power_levels", ptr(""), `{"users":{}}`, "alice-join")
		d.add("jr", remoteAlice, "m.room.join_rules", ptr(""), `{"join_rule":"public"}`, "pl")
		d.add("hv", remoteAlice, "m.room.history_visibility", ptr(""), `{"history_visibility":"shared"}`, "jr")
		d.add("name", remoteAlice, "m.room.name", ptr(""), `{"name":"history"}`, "hv")
		history := []string{"create", "alice-join", "pl", "jr", "hv", "name"}
		join := d.add("carol-join", carol, "m.room.member", ptr(carol), `{"membership":"join"}`, "name")
		var state []json.RawMessage
		for _, name := range history {
			state = append(state, d.byName[name].JSON())
		}
		if r, err := s.ImportJoinedRoom(ctx, ImportRoomRequest{RoomVersion: "12", Join: join.JSON(),
			State: state, AuthChain: state}); err != nil || r.Outcome != Accepted {
			t.Fatalf("carol's join: %+v, %v", r, err)
		}
		hello, err := s.SendEvent(ctx, SendEventRequest{RoomID: d.roomID, Sender: carol, Type: "m.room.message",
			Content: json.RawMessage(`{"msgtype":"m.text","body":"hello from carol"}`)})
		if err != nil {
			t.Fatal(err)
		}
		d.add("alice-hello", remoteAlice, "m.room.message", nil, `{"msgtype":"m.text","body":"hello from alice"}`, "carol-join")
		if r := d.input(t, s, "alice-hello"); r.Outcome != Accepted {
			t.Fatalf("alice's hello: %s %s", r.Outcome, r.Reason)
		}

		// The history comes again as timeline events: the oldest with the
		// state at its prev event (the create event, held as an outlier),
		// as fillGap inputs it, then the rest on it.
		r, err := s.InputWithState(ctx, InputWithStateRequest{RoomVersion: "12", JSON: d.byName["alice-join"].JSON(),
			PrevStates: [][]json.RawMessage{{d.byName["create"].JSON()}}})
		if err != nil || r.Outcome != Accepted {
			t.Fatalf("promoting alice's join: %+v, %v", r, err)
		}
		for _, name := range history[2:] {
			if r := d.input(t, s, name); r.Outcome != Accepted || r.StreamPos <= hello.StreamPos {
				t.Fatalf("promoting %s: %+v (carol's hello is at %d)", name, r, hello.StreamPos)
			}
		}

		head, err := s.StreamPosition(ctx)
		if err != nil {
			t.Fatal(err)
		}
		rr, err := s.RecentEvents(ctx, RecentRequest{UserID: carol, RoomID: d.roomID, From: 0, To: head, Limit: 10})
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, e := range rr.Events {
			got = append(got, e.EventID)
		}
		for _, want := range []string{hello.EventID, d.byName["alice-hello"].EventID()} {
			if !slices.Contains(got, want) {
				t.Errorf("carol's timeline batch %v (limited %v) lacks %s", got, rr.Limited, want)
			}
		}
		if !slices.Contains(got, d.byName["alice-join"].EventID()) {
			t.Errorf("carol's timeline batch %v lacks the promoted history", got)
		}
	})
}
