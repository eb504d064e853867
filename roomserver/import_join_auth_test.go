package roomserver

import (
	"context"
	"encoding/json"
	"testing"

	"github.com/myelin-chat/myelin/internal/mxerr"
	"github.com/myelin-chat/myelin/storage"
	"github.com/myelin-chat/myelin/storage/storagetest"
)

// TestImportJoinCheckedAgainstOwnAuthEvents is Complement's
// TestPartialStateJoin "Leave during resync / can be triggered by remote
// ban" at its end: a user of ours was banned (we hold the ban), and
// rejoins through a resident server whose send_join state leaves the
// ban out (partial state omits members) while the join's own auth
// events, from its make_join template, name it. The join is refused with
// M_FORBIDDEN, as its auth events do not allow it (server-server-api,
// "Checks performed on receipt of a PDU", step 4), and the ban stays.
// The same join without the ban in the room is accepted.
func TestImportJoinCheckedAgainstOwnAuthEvents(t *testing.T) {
	const remote, local = "@remote:other.example", "@bob:test.local"
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		s := newTestServer(t, db)
		d := newDAG(t, "12")
		d.add("create", remote, "m.room.create", ptr(""), `{"room_version":"12"}`)
		d.add("remote-join", remote, "m.room.member", ptr(remote), `{"membership":"join"}`, "create")
		d.add("pl", remote, "m.room.power_levels", ptr(""), `{"users":{}}`, "remote-join")
		d.add("jr", remote, "m.room.join_rules", ptr(""), `{"join_rule":"public"}`, "pl")
		d.add("bob-join", local, "m.room.member", ptr(local), `{"membership":"join"}`, "jr")
		d.add("ban", remote, "m.room.member", ptr(local), `{"membership":"ban"}`, "bob-join")
		for _, name := range []string{"create", "remote-join", "pl", "jr", "bob-join", "ban"} {
			if r := d.input(t, s, name); r.Outcome != Accepted {
				t.Fatalf("%s: %s %s", name, r.Outcome, r.Reason)
			}
		}
		mustMember(t, s, d.roomID, local, "ban")
		// The template's auth events: the ban among them.
		rejoin := d.add("rejoin", local, "m.room.member", ptr(local), `{"membership":"join"}`, "ban")
		var state []json.RawMessage
		for _, name := range []string{"create", "remote-join", "pl", "jr"} {
			state = append(state, d.byName[name].JSON())
		}
		_, err := s.ImportJoinedRoom(context.Background(), ImportRoomRequest{RoomVersion: "12", Join: rejoin.JSON(),
			State: state, AuthChain: state, PartialState: true, Servers: []string{"other.example"}})
		if !mxerr.Is(err, mxerr.Forbidden) {
			t.Fatalf("rejoin of a banned user through a state without the ban: %v, want M_FORBIDDEN", err)
		}
		mustMember(t, s, d.roomID, local, "ban")

		// The same rejoin in a room bob only left is accepted.
		d2 := newDAG(t, "12")
		d2.add("create", remote, "m.room.create", ptr(""), `{"room_version":"12","n":2}`)
		d2.add("remote-join", remote, "m.room.member", ptr(remote), `{"membership":"join"}`, "create")
		d2.add("pl", remote, "m.room.power_levels", ptr(""), `{"users":{}}`, "remote-join")
		d2.add("jr", remote, "m.room.join_rules", ptr(""), `{"join_rule":"public"}`, "pl")
		d2.add("bob-join", local, "m.room.member", ptr(local), `{"membership":"join"}`, "jr")
		d2.add("leave", local, "m.room.member", ptr(local), `{"membership":"leave"}`, "bob-join")
		for _, name := range []string{"create", "remote-join", "pl", "jr", "bob-join", "leave"} {
			if r := d2.input(t, s, name); r.Outcome != Accepted {
				t.Fatalf("room 2 %s: %s %s", name, r.Outcome, r.Reason)
			}
		}
		rejoin2 := d2.add("rejoin", local, "m.room.member", ptr(local), `{"membership":"join"}`, "leave")
		var state2 []json.RawMessage
		for _, name := range []string{"create", "remote-join", "pl", "jr"} {
			state2 = append(state2, d2.byName[name].JSON())
		}
		r, err := s.ImportJoinedRoom(context.Background(), ImportRoomRequest{RoomVersion: "12", Join: rejoin2.JSON(),
			State: state2, AuthChain: state2, PartialState: true, Servers: []string{"other.example"}})
		if err != nil || r.Outcome != Accepted {
			t.Fatalf("rejoin after a leave: %v, %v", r, err)
		}
		mustMember(t, s, d2.roomID, local, "join")
	})
}
