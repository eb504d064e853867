package roomserver

import (
	"context"
	"encoding/json"
	"io"
	"maps"
	"os"
	"slices"
	"sort"
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

// srScenario is a fork of baseRoom: events added on "bob-join", the fork
// tips whose states are resolved, and the expected resolved state at some
// keys ("type|state_key" -> event name, "" for absent), worked out by hand
// from the spec's algorithm (rooms/v2, rooms/v12 "State resolution").
type srScenario struct {
	name  string
	forks func(d *dag) []string
	want  map[string]string
}

// plUsers is a power levels "users" object: alice (the creator) is listed
// at 100 before v12 and never in v12, where creators cannot be listed.
func plUsers(version, rest string) string {
	if version == "12" {
		return "{" + rest + "}"
	}
	if rest == "" {
		return `{"@alice:test.local":100}`
	}
	return `{"@alice:test.local":100,` + rest + "}"
}

func srScenarios() []srScenario {
	return []srScenario{
		{
			// alice demotes bob to 10; bob (90) concurrently promotes
			// charlie. alice sorts first (more power) and is allowed; bob's
			// change is then checked against alice's and fails.
			name: "concurrent power level changes",
			forks: func(d *dag) []string {
				d.add("a", alice, "m.room.power_levels", ptr(""), `{"users":`+plUsers(d.version, `"@bob:test.local":10`)+`,"events":{"m.room.power_levels":50},"state_default":50}`, "bob-join")
				d.add("b", bob, "m.room.power_levels", ptr(""), `{"users":`+plUsers(d.version, `"@bob:test.local":90,"@charlie:test.local":80`)+`,"events":{"m.room.power_levels":50},"state_default":50}`, "bob-join")
				return []string{"a", "b"}
			},
			want: map[string]string{"m.room.power_levels|": "a"},
		},
		{
			// The ban is a power event, applied first; the join is then
			// checked against a state where charlie is banned.
			name: "ban racing a join",
			forks: func(d *dag) []string {
				d.add("a", alice, "m.room.member", ptr(charlie), `{"membership":"ban"}`, "bob-join")
				d.add("b", charlie, "m.room.member", ptr(charlie), `{"membership":"join"}`, "bob-join")
				return []string{"a", "b"}
			},
			want: map[string]string{"m.room.member|" + charlie: "a"},
		},
		{
			// alice demotes bob to 0 on one branch; on the other bob (still
			// 90 there) sets the topic, charlie joins and bob promotes him.
			// The demotion wins however late it arrives: bob's power level
			// change and topic fail against it, charlie's join (which
			// needs no power) stands.
			name: "late-arriving demotion",
			forks: func(d *dag) []string {
				d.add("a", alice, "m.room.power_levels", ptr(""), `{"users":`+plUsers(d.version, `"@bob:test.local":0`)+`,"events":{"m.room.power_levels":50},"state_default":50}`, "bob-join")
				d.add("b", bob, "m.room.topic", ptr(""), `{"topic":"bob was here"}`, "bob-join")
				d.add("b2", charlie, "m.room.member", ptr(charlie), `{"membership":"join"}`, "b")
				d.add("b3", bob, "m.room.power_levels", ptr(""), `{"users":`+plUsers(d.version, `"@bob:test.local":90,"@charlie:test.local":50`)+`,"events":{"m.room.power_levels":50},"state_default":50}`, "b2")
				return []string{"a", "b3"}
			},
			want: map[string]string{"m.room.power_levels|": "a", "m.room.topic|": "", "m.room.member|" + charlie: "b2"},
		},
		{
			// alice makes the room invite-only while charlie joins under
			// the public rule: both join rules are power events (the old
			// one sorts first, earlier ts), the join is checked last against
			// "invite" and fails.
			name: "join rules change racing a join",
			forks: func(d *dag) []string {
				d.add("a", alice, "m.room.join_rules", ptr(""), `{"join_rule":"invite"}`, "bob-join")
				d.add("b", charlie, "m.room.member", ptr(charlie), `{"membership":"join"}`, "bob-join")
				return []string{"a", "b"}
			},
			want: map[string]string{"m.room.join_rules|": "a", "m.room.member|" + charlie: ""},
		},
	}
}

// topoOrders returns every order of d's events in which each event comes
// after its prev events (at most limit of them).
func topoOrders(d *dag, limit int) [][]string {
	nameOf := map[string]string{}
	for n, e := range d.byName {
		nameOf[e.EventID()] = n
	}
	var names []string
	for n := range d.byName {
		names = append(names, n)
	}
	sort.Strings(names)
	var out [][]string
	done := map[string]bool{}
	var cur []string
	var rec func()
	rec = func() {
		if len(out) >= limit {
			return
		}
		if len(cur) == len(names) {
			out = append(out, slices.Clone(cur))
			return
		}
		for _, n := range names {
			if done[n] {
				continue
			}
			ready := true
			for _, p := range d.byName[n].PrevEventIDs() {
				if !done[nameOf[p]] {
					ready = false
				}
			}
			if !ready {
				continue
			}
			done[n] = true
			cur = append(cur, n)
			rec()
			cur = cur[:len(cur)-1]
			done[n] = false
		}
	}
	rec()
	return out
}

// checkWant compares resolved state (key -> event ID) with a scenario's
// expectations.
func checkWant(t testing.TB, d *dag, got map[string]string, want map[string]string) {
	t.Helper()
	for k, name := range want {
		wantID := ""
		if name != "" {
			wantID = d.byName[name].EventID()
		}
		if got[k] != wantID {
			t.Errorf("%s = %q, want %q (%s)", k, got[k], wantID, name)
		}
	}
}

// Security case 19: the resolved state does not depend on the order the
// events arrive in — every causal order of the fork events is tried, each
// on a fresh database — and is the one the spec gives.
// Spec: rooms/v2 and rooms/v12, "State resolution".
func TestStateResolutionOrderIndependent(t *testing.T) {
	for _, version := range []string{"2", "6", "10", "11", "12"} {
		for _, sc := range srScenarios() {
			t.Run("v"+version+"/"+sc.name, func(t *testing.T) {
				storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
					d := baseRoom(t, version)
					tips := sc.forks(d)
					d.add("merge", alice, "m.room.message", nil, `{"body":"merge"}`, tips...)
					checkEveryOrder(t, db, d, 100, sc.want)
				})
			})
		}
	}
}

// checkEveryOrder inputs d's events into a fresh server (the first on
// db, the others on new databases of its engine) in up to limit
// topological orders: none may be rejected or print to stdout, all must
// end in the same current state, and that state must hold want.
func checkEveryOrder(t *testing.T, db *storage.DB, d *dag, limit int, want map[string]string) {
	t.Helper()
	orders := topoOrders(d, limit)
	if len(orders) < 2 {
		t.Fatalf("only %d orders", len(orders))
	}
	var first map[string]string
	for i, order := range orders {
		sdb := db
		if i > 0 {
			sdb = storagetest.Open(t, db.Engine())
		}
		s := newTestServer(t, sdb)
		var resps []*InputEventResponse
		out := captureStdout(t, func() {
			for _, name := range order {
				resps = append(resps, d.input(t, s, name))
			}
		})
		if out != "" {
			t.Fatalf("order %v printed to stdout: %q", order, out)
		}
		for j, r := range resps {
			if r.Outcome == Rejected {
				t.Fatalf("order %v: %s rejected: %s", order, order[j], r.Reason)
			}
		}
		got := currentStateIDs(t, s, d.roomID)
		if first == nil {
			first = got
			checkWant(t, d, got, want)
			continue
		}
		if !maps.Equal(first, got) {
			t.Fatalf("order %v resolved to\n%v\nbut order %v to\n%v", orders[0], first, order, got)
		}
	}
}

// resolveStates itself is symmetric in its inputs.
func TestResolveStatesInputOrder(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		for _, version := range []string{"2", "10", "11", "12"} {
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
			// One set (or identical sets) is returned as it is.
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

// captureStdout runs fn and returns what it wrote to os.Stdout
// (gomatrixserverlib's v2.1 printed event IDs there). fn must not log
// through t, whose -v output also goes to os.Stdout.
func captureStdout(t testing.TB, fn func()) string {
	t.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	saved := os.Stdout
	os.Stdout = w
	done := make(chan string)
	go func() {
		b, _ := io.ReadAll(r)
		done <- string(b)
	}()
	func() {
		defer func() { os.Stdout = saved; w.Close() }()
		fn()
	}()
	return <-done
}
