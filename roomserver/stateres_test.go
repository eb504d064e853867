package roomserver

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/matrix-org/gomatrixserverlib"

	"github.com/myelin-chat/myelin/internal/mxerr"
	"github.com/myelin-chat/myelin/storage"
	"github.com/myelin-chat/myelin/storage/storagetest"
)

// dag builds a room DAG by hand: each event names its prev events and
// the state its auth events are chosen from.
type dag struct {
	t       testing.TB
	version string
	roomID  string
	ts      int64
	byName  map[string]gomatrixserverlib.PDU
	// stateAfter is the (unresolved) state after each named event.
	stateAfter map[string]map[tuple]gomatrixserverlib.PDU
}

func newDAG(t testing.TB, version string) *dag {
	roomID := "!dag:test.local"
	if version == "12" {
		roomID = "" // derived from the create event
	}
	return &dag{t: t, version: version, ts: 1_700_000_000_000, roomID: roomID,
		byName: map[string]gomatrixserverlib.PDU{}, stateAfter: map[string]map[tuple]gomatrixserverlib.PDU{}}
}

// add builds event name on prevs; its auth events come from the state
// after authFrom (default: the first prev).
func (d *dag) add(name, sender, eventType string, stateKey *string, content string, prevs ...string) gomatrixserverlib.PDU {
	d.t.Helper()
	impl := gomatrixserverlib.MustGetRoomVersion(gomatrixserverlib.RoomVersion(d.version))
	d.ts++
	var prevIDs []string
	depth := int64(0)
	state := map[tuple]gomatrixserverlib.PDU{}
	for i, p := range prevs {
		ev := d.byName[p]
		prevIDs = append(prevIDs, ev.EventID())
		depth = max(depth, ev.Depth())
		if i == 0 {
			for k, v := range d.stateAfter[p] {
				state[k] = v
			}
		}
	}
	proto := &gomatrixserverlib.ProtoEvent{SenderID: sender, RoomID: d.roomID, Type: eventType, StateKey: stateKey,
		Content: []byte(content), PrevEvents: append([]string{}, prevIDs...), Depth: depth + 1, Version: impl}
	eb := impl.NewEventBuilderFromProtoEvent(proto)
	var authState []gomatrixserverlib.PDU
	for _, e := range state {
		authState = append(authState, e)
	}
	provider, err := gomatrixserverlib.NewAuthEvents(authState)
	if err != nil {
		d.t.Fatal(err)
	}
	if err := eb.AddAuthEvents(provider); err != nil {
		d.t.Fatal(err)
	}
	key := testKey()
	pdu, err := eb.Build(time.UnixMilli(d.ts), testServer, gomatrixserverlib.KeyID(key.ID), key.PrivateKey)
	if err != nil {
		d.t.Fatalf("building %s: %v", name, err)
	}
	if d.roomID == "" {
		d.roomID = pdu.RoomID().String()
	}
	d.byName[name] = pdu
	if stateKey != nil {
		state[tuple{eventType, *stateKey}] = pdu
	}
	d.stateAfter[name] = state
	return pdu
}

func (d *dag) input(t testing.TB, s *Server, name string) *InputEventResponse {
	t.Helper()
	resp, err := s.InputEvent(context.Background(), InputEventRequest{RoomVersion: d.version, JSON: d.byName[name].JSON()})
	if err != nil {
		t.Fatalf("InputEvent(%s): %v", name, err)
	}
	return resp
}

// currentStateIDs returns the room's current state as type|state_key -> event ID.
func currentStateIDs(t testing.TB, s *Server, roomID string) map[string]string {
	t.Helper()
	rows, err := s.db.Reader().Query(context.Background(), `SELECT type, state_key, event_id FROM roomserver_current_state WHERE room_id = $1`, roomID)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	out := map[string]string{}
	for rows.Next() {
		var typ, sk, id string
		if err := rows.Scan(&typ, &sk, &id); err != nil {
			t.Fatal(err)
		}
		out[typ+"|"+sk] = id
	}
	return out
}

// baseRoom builds create, alice's join, power levels (bob 90, power
// levels need 50), a public join rule and bob's join.
func baseRoom(t testing.TB, version string) *dag {
	d := newDAG(t, version)
	createContent := `{"room_version":"` + version + `"}`
	if version != "11" && version != "12" {
		createContent = `{"room_version":"` + version + `","creator":"@alice:test.local"}`
	}
	d.add("create", alice, "m.room.create", ptr(""), createContent)
	d.add("alice-join", alice, "m.room.member", ptr(alice), `{"membership":"join"}`, "create")
	users := `{"@alice:test.local":100,"@bob:test.local":90}`
	if version == "12" {
		users = `{"@bob:test.local":90}` // creators are not listed
	}
	d.add("pl0", alice, "m.room.power_levels", ptr(""), `{"users":`+users+`,"events":{"m.room.power_levels":50},"state_default":50,"ban":50,"kick":50}`, "alice-join")
	d.add("jr", alice, "m.room.join_rules", ptr(""), `{"join_rule":"public"}`, "pl0")
	d.add("bob-join", bob, "m.room.member", ptr(bob), `{"membership":"join"}`, "jr")
	return d
}

// Security case 19: the resolved state does not depend on the order the
// forks arrive in. Spec: rooms/v2 and rooms/v12, "State resolution".
func TestStateResolutionOrderIndependent(t *testing.T) {
	type scenario struct {
		name   string
		forks  func(d *dag)      // adds fork events "a" and "b" on "bob-join"
		expect func(d *dag) bool // checks the resolved state
		state  string            // the state key checked
	}
	scenarios := []scenario{
		{
			name: "concurrent power level changes",
			forks: func(d *dag) {
				users := `{"@alice:test.local":100,"@bob:test.local":10}`
				busers := `{"@alice:test.local":100,"@bob:test.local":90,"@charlie:test.local":80}`
				if d.version == "12" {
					users, busers = `{"@bob:test.local":10}`, `{"@bob:test.local":90,"@charlie:test.local":80}`
				}
				// alice demotes bob; bob (90) concurrently promotes charlie.
				d.add("a", alice, "m.room.power_levels", ptr(""), `{"users":`+users+`,"events":{"m.room.power_levels":50},"state_default":50}`, "bob-join")
				d.add("b", bob, "m.room.power_levels", ptr(""), `{"users":`+busers+`,"events":{"m.room.power_levels":50},"state_default":50}`, "bob-join")
			},
			state: "m.room.power_levels|",
		},
		{
			name: "ban racing a join",
			forks: func(d *dag) {
				d.add("a", alice, "m.room.member", ptr(charlie), `{"membership":"ban"}`, "bob-join")
				d.add("b", charlie, "m.room.member", ptr(charlie), `{"membership":"join"}`, "bob-join")
			},
			state: "m.room.member|" + charlie,
		},
	}
	for _, version := range []string{"2", "6", "10", "11"} {
		for _, sc := range scenarios {
			t.Run("v"+version+"/"+sc.name, func(t *testing.T) {
				storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
					d := baseRoom(t, version)
					sc.forks(d)
					d.add("merge", alice, "m.room.message", nil, `{"body":"merge"}`, "a", "b")
					base := []string{"create", "alice-join", "pl0", "jr", "bob-join"}
					var results []map[string]string
					for i, order := range [][]string{{"a", "b"}, {"b", "a"}} {
						sdb := db
						if i > 0 {
							sdb = storagetest.Open(t, db.Engine())
						}
						s := newTestServer(t, sdb)
						for _, name := range append(append(append([]string{}, base...), order...), "merge") {
							resp := d.input(t, s, name)
							if resp.Outcome == Rejected {
								t.Fatalf("%s rejected: %s", name, resp.Reason)
							}
						}
						results = append(results, currentStateIDs(t, s, d.roomID))
					}
					if len(results[0]) != len(results[1]) {
						t.Fatalf("state sizes differ: %v vs %v", results[0], results[1])
					}
					for k, v := range results[0] {
						if results[1][k] != v {
							t.Fatalf("%s resolved to %s in one order and %s in the other", k, v, results[1][k])
						}
					}
					// alice's change (the higher-powered sender / the ban) wins.
					if got, want := results[0][sc.state], d.byName["a"].EventID(); got != want {
						t.Fatalf("%s = %s, want fork a %s", sc.state, got, want)
					}
				})
			})
		}
	}
}

// resolveStates itself is symmetric in its inputs.
func TestResolveStatesInputOrder(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		for _, version := range []string{"2", "10", "11"} {
			d := baseRoom(t, version)
			d.add("a", alice, "m.room.member", ptr(charlie), `{"membership":"ban"}`, "bob-join")
			d.add("b", charlie, "m.room.member", ptr(charlie), `{"membership":"join"}`, "bob-join")
			s := newTestServer(t, storagetest.Open(t, db.Engine()))
			for _, name := range []string{"create", "alice-join", "pl0", "jr", "bob-join", "b", "a"} {
				d.input(t, s, name)
			}
			ctx := context.Background()
			q := s.db.Reader()
			rows, err := eventRowsByID(ctx, q, []string{d.byName["a"].EventID(), d.byName["b"].EventID()})
			if err != nil {
				t.Fatal(err)
			}
			sa, _ := loadSnapshot(ctx, q, rows[d.byName["a"].EventID()].StateAfter)
			sb, _ := loadSnapshot(ctx, q, rows[d.byName["b"].EventID()].StateAfter)
			ab, err := s.resolveStates(ctx, q, nil, version, []stateMap{sa, sb})
			if err != nil {
				t.Fatal(err)
			}
			ba, err := s.resolveStates(ctx, q, nil, version, []stateMap{sb, sa, sb})
			if err != nil {
				t.Fatal(err)
			}
			if len(ab) != len(ba) {
				t.Fatalf("v%s: %v vs %v", version, ab, ba)
			}
			for k, v := range ab {
				if ba[k] != v {
					t.Fatalf("v%s: %v differs", version, k)
				}
			}
			// One set (or identical sets) must not reach gomatrixserverlib,
			// which panics on fewer than two.
			if one, err := s.resolveStates(ctx, q, nil, version, []stateMap{sa, sa}); err != nil || len(one) != len(sa) {
				t.Fatalf("v%s: resolving identical sets: %v", version, err)
			}
		}
	})
}

// Spec: server-server-api, "Rejection" and "Soft failure"; security case 20.
func TestRejectedAndSoftFailed(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		ctx := context.Background()
		d := baseRoom(t, "10")
		// charlie is not in the room: his message is rejected.
		d.add("intruder", charlie, "m.room.message", nil, `{"body":"hi"}`, "bob-join")
		// bob's topic change, authorised by a state that includes his
		// membership; then alice bans bob on another branch first.
		d.add("ban-bob", alice, "m.room.member", ptr(bob), `{"membership":"ban"}`, "bob-join")
		d.add("bob-topic", bob, "m.room.topic", ptr(""), `{"topic":"late"}`, "bob-join")
		// An event that cites a rejected event among its auth events.
		d.add("charlie-join-invite-only", charlie, "m.room.member", ptr(charlie), `{"membership":"join"}`, "bob-join")

		s := newTestServer(t, db)
		for _, name := range []string{"create", "alice-join", "pl0", "jr", "bob-join"} {
			if r := d.input(t, s, name); r.Outcome != Accepted {
				t.Fatalf("%s: %s %s", name, r.Outcome, r.Reason)
			}
		}
		extBefore := mustRoom(t, db, d.roomID).Extremities
		r := d.input(t, s, "intruder")
		if r.Outcome != Rejected || r.StreamPos != 0 {
			t.Fatalf("intruder: %+v", r)
		}
		if got := mustRoom(t, db, d.roomID).Extremities; !sameSet(got, extBefore) {
			t.Fatalf("rejected event changed extremities: %v", got)
		}
		if _, err := s.Event(ctx, alice, d.byName["intruder"].EventID()); !mxerr.Is(err, mxerr.NotFound) {
			t.Fatalf("rejected event served: %v", err)
		}
		if r := d.input(t, s, "intruder"); r.Outcome != Duplicate {
			t.Fatalf("second input: %s", r.Outcome)
		}

		if r := d.input(t, s, "ban-bob"); r.Outcome != Accepted {
			t.Fatalf("ban: %s %s", r.Outcome, r.Reason)
		}
		r = d.input(t, s, "bob-topic")
		if r.Outcome != SoftFailed {
			t.Fatalf("bob-topic after his ban: %s (%s), want soft_failed", r.Outcome, r.Reason)
		}
		if got := mustRoom(t, db, d.roomID).Extremities; contains(got, d.byName["bob-topic"].EventID()) {
			t.Fatalf("soft-failed event became a forward extremity")
		}
		if _, ok := currentStateIDs(t, s, d.roomID)["m.room.topic|"]; ok {
			t.Fatalf("soft-failed topic entered the current state")
		}
		page, err := s.Messages(ctx, MessagesRequest{UserID: alice, RoomID: d.roomID, Dir: Backward, Limit: 50})
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range page.Events {
			if e.EventID == d.byName["bob-topic"].EventID() || e.EventID == d.byName["intruder"].EventID() {
				t.Fatalf("timeline shows %s", e.EventID)
			}
		}

		// A state event citing a rejected event as an auth event is rejected.
		d2 := baseRoom(t, "10")
		d2.add("jr-invite", alice, "m.room.join_rules", ptr(""), `{"join_rule":"invite"}`, "bob-join")
		d2.add("charlie-join", charlie, "m.room.member", ptr(charlie), `{"membership":"join"}`, "jr-invite")
		d2.add("charlie-msg", charlie, "m.room.message", nil, `{"body":"via rejected join"}`, "charlie-join")
		s2 := newTestServer(t, storagetest.Open(t, db.Engine()))
		for _, name := range []string{"create", "alice-join", "pl0", "jr", "bob-join", "jr-invite"} {
			d2.input(t, s2, name)
		}
		if r := d2.input(t, s2, "charlie-join"); r.Outcome != Rejected {
			t.Fatalf("join to invite-only room: %s", r.Outcome)
		}
		if r := d2.input(t, s2, "charlie-msg"); r.Outcome != Rejected {
			t.Fatalf("event with a rejected auth event: %s", r.Outcome)
		}
		mustMember(t, s2, d2.roomID, charlie, "")
	})
}

// Security case 18 (part): a v12 create event carrying a room_id is refused.
func TestV12CreateWithRoomIDRefused(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		s := newTestServer(t, db)
		d := newDAG(t, "12")
		create := d.add("create", alice, "m.room.create", ptr(""), `{"room_version":"12"}`)
		var m map[string]any
		_ = json.Unmarshal(create.JSON(), &m)
		m["room_id"] = "!forged:test.local"
		raw, _ := json.Marshal(m)
		_, err := s.InputEvent(context.Background(), InputEventRequest{RoomVersion: "12", JSON: raw})
		if err == nil {
			t.Fatalf("v12 create event with room_id accepted")
		}
		if n := countRows(t, db, "roomserver_events"); n != 0 {
			t.Fatalf("stored %d events", n)
		}
	})
}

// gomatrixserverlib cannot resolve v12 state with power events at the
// pinned version (it panics); the roomserver must turn that into an
// error and keep its state as it was.
func TestV12StateResolutionGuarded(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		d := baseRoom(t, "12")
		d.add("a", alice, "m.room.member", ptr(charlie), `{"membership":"ban"}`, "bob-join")
		d.add("b", charlie, "m.room.member", ptr(charlie), `{"membership":"join"}`, "bob-join")
		s := newTestServer(t, db)
		for _, name := range []string{"create", "alice-join", "pl0", "jr", "bob-join", "b"} {
			if r := d.input(t, s, name); r.Outcome != Accepted {
				t.Fatalf("%s: %s", name, r.Outcome)
			}
		}
		before := currentStateIDs(t, s, d.roomID)
		_, err := s.InputEvent(context.Background(), InputEventRequest{RoomVersion: "12", JSON: d.byName["a"].JSON()})
		if err == nil {
			t.Skip("gomatrixserverlib now resolves v12 forks: extend TestStateResolutionOrderIndependent to v12 and drop this test")
		}
		after := currentStateIDs(t, s, d.roomID)
		if len(after) != len(before) || after["m.room.member|"+charlie] != before["m.room.member|"+charlie] {
			t.Fatalf("failed resolution changed the current state")
		}
	})
}
