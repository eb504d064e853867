package roomserver

import (
	"context"
	"encoding/json"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/myelin-chat/myelin/storage"
	"github.com/myelin-chat/myelin/storage/storagetest"
)

// partialRoom is a room of other.example that this server (test.local)
// joined as bob with partial state: the send_join state left alice's
// membership out (and whatever extra events the caller added to the DAG
// after the join rules, such as a ban).
type partialRoom struct {
	d      *dag
	s      *Server
	roomID string
	join   string // bob's join, the partial-state join
	prev   string // the join's prev event
	full   []string
}

const (
	psAlice = "@alice:other.example"
	psBob   = "@bob:test.local"
	psCarol = "@carol:test.local"
)

// newPartialRoom builds create, alice's join, power levels, public join
// rules and a name on other.example, then the events of extra (each
// built on the last, named "extra0", ...), and imports bob's join with
// the state before it minus every membership (as omit_members does in a
// room with a name).
func newPartialRoom(t *testing.T, s *Server, extra ...[3]string) *partialRoom {
	t.Helper()
	d := newDAG(t, "12")
	d.add("create", psAlice, "m.room.create", ptr(""), `{"room_version":"12"}`)
	d.add("alice-join", psAlice, "m.room.member", ptr(psAlice), `{"membership":"join"}`, "create")
	d.add("pl", psAlice, "m.room.power_levels", ptr(""), `{"users":{},"ban":50}`, "alice-join")
	d.add("jr", psAlice, "m.room.join_rules", ptr(""), `{"join_rule":"public"}`, "pl")
	d.add("name", psAlice, "m.room.name", ptr(""), `{"name":"partial"}`, "jr")
	last := "name"
	names := []string{"create", "alice-join", "pl", "jr", "name"}
	for i, e := range extra {
		name := "extra" + string(rune('0'+i))
		d.add(name, psAlice, e[0], ptr(e[1]), e[2], last)
		names = append(names, name)
		last = name
	}
	join := d.add("bob-join", psBob, "m.room.member", ptr(psBob), `{"membership":"join"}`, last)
	var state, chain []json.RawMessage
	var full []string
	for _, name := range names {
		ev := d.byName[name]
		chain = append(chain, ev.JSON())
		if name != last {
			full = append(full, ev.EventID())
		}
		if ev.Type() != "m.room.member" {
			state = append(state, ev.JSON())
		}
	}
	r, err := s.ImportJoinedRoom(context.Background(), ImportRoomRequest{RoomVersion: "12", Join: join.JSON(),
		State: state, AuthChain: chain, PartialState: true, Servers: []string{"other.example"}})
	if err != nil || r.Outcome != Accepted {
		t.Fatalf("partial-state join: %v, %v", r, err)
	}
	return &partialRoom{d: d, s: s, roomID: d.roomID, join: join.EventID(), prev: d.byName[last].EventID(), full: full}
}

// complete finishes the resync with the full state before the join.
func (p *partialRoom) complete(t *testing.T) {
	t.Helper()
	err := p.s.CompletePartialState(context.Background(), CompletePartialStateRequest{RoomID: p.roomID,
		AtPrevs: []StateBeforePrev{{PrevEventID: p.prev, StateIDs: p.full}}})
	if err != nil {
		t.Fatalf("CompletePartialState: %v", err)
	}
}

// outbound lists what LocalEventsAfter(0) queues, one "type state_key ->
// destinations" line per event.
func outbound(t *testing.T, s *Server) []string {
	t.Helper()
	evs, _, err := s.LocalEventsAfter(context.Background(), 0, 1000)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, ev := range evs {
		var e struct {
			Type     string `json:"type"`
			StateKey string `json:"state_key"`
		}
		_ = json.Unmarshal(ev.JSON, &e)
		out = append(out, e.Type+" "+e.StateKey+" -> "+strings.Join(ev.Destinations, ","))
	}
	return out
}

// TestOutboundReadAcrossResync is the TestRemoteJoinNotSentBack flake
// made deterministic: the federation sender reads local events (carol's
// join and bob's message, sent while the room was partial) in
// LocalEventsAfter, and the partial-state resync commits between its
// read of the events (their state: the partial one, without alice) and
// its read of the servers send_join named (gone once the room is
// complete). Read in two snapshots, the events went nowhere and the
// sender moved past them: lost. Read in one, they go to other.example
// whether the resync lands before, during or after the read.
func TestOutboundReadAcrossResync(t *testing.T) {
	for _, when := range []string{"during", "before", "after"} {
		t.Run(when, func(t *testing.T) {
			storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
				s := newTestServer(t, db)
				p := newPartialRoom(t, s)
				ctx := context.Background()
				if _, err := s.Join(ctx, MembershipRequest{RoomID: p.roomID, Sender: psCarol, Target: psCarol}); err != nil {
					t.Fatalf("carol's local join: %v", err)
				}
				mustSend(t, s, p.roomID, psBob, "m.room.message", nil, `{"msgtype":"m.text","body":"first"}`)
				var once sync.Once
				switch when {
				case "during":
					s.afterOutboundRead = func() { once.Do(func() { p.complete(t) }) }
				case "before":
					p.complete(t)
				}
				got := outbound(t, s)
				if when == "after" {
					p.complete(t)
				}
				want := []string{"m.room.member " + psCarol + " -> other.example", "m.room.message  -> other.example"}
				if !slices.Equal(got, want) {
					t.Fatalf("queued:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
				}
				if partial, err := s.IsPartialState(ctx, p.roomID); err != nil || partial {
					t.Fatalf("room still partial (%v) after the resync: the hook did not run", err)
				}
			})
		})
	}
}

// TestLocalEventRejectedByResyncStillSent: carol was banned before bob's
// partial-state join, but the send_join state left the ban out (members
// omitted), so her local join during the resync passed the checks on
// partial state and was acknowledged. The resync's full state shows the
// ban: her join is now rejected here, and the room state says ban. The
// join is still sent to other.example, as it would have been had the
// sender read it before the resync: it is signed, other servers check it
// themselves (server-server-api, "Checks performed on receipt of a
// PDU") and reject it as we do, and bob's message after it names it as a
// prev event, so withholding it would only leave a hole in their DAG.
// Whether the event leaves must not depend on how far the sender had got
// when the resync landed.
func TestLocalEventRejectedByResyncStillSent(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		s := newTestServer(t, db)
		p := newPartialRoom(t, s, [3]string{"m.room.member", psCarol, `{"membership":"ban"}`})
		ctx := context.Background()
		joinResp, err := s.Join(ctx, MembershipRequest{RoomID: p.roomID, Sender: psCarol, Target: psCarol})
		if err != nil {
			t.Fatalf("carol's local join on partial state: %v", err)
		}
		msg := mustSend(t, s, p.roomID, psBob, "m.room.message", nil, `{"msgtype":"m.text","body":"first"}`)
		p.complete(t)
		mustMember(t, s, p.roomID, psCarol, "ban")
		if _, _, err := s.FederationEvent(ctx, joinResp.EventID); err == nil {
			t.Fatal("carol's join is still accepted after the resync found her ban")
		}
		if _, _, err := s.FederationEvent(ctx, msg); err != nil {
			t.Fatalf("bob's message after the resync: %v", err)
		}
		got := outbound(t, s)
		want := []string{"m.room.member " + psCarol + " -> other.example", "m.room.message  -> other.example"}
		if !slices.Equal(got, want) {
			t.Fatalf("queued:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
		}
	})
}
