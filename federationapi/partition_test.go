package federationapi_test

import (
	"context"
	"encoding/json"
	"math"
	"net"
	"slices"
	"sync"
	"testing"

	"github.com/myelin-chat/myelin/roomserver"
)

// gate is a federation listener that can be cut off: while closed, every
// connection it holds or accepts is closed at once, so the server is
// unreachable over federation while it keeps serving its own users.
type gate struct {
	net.Listener
	mu     sync.Mutex
	closed bool
	conns  map[net.Conn]bool
}

func (g *gate) Accept() (net.Conn, error) {
	for {
		c, err := g.Listener.Accept()
		if err != nil {
			return nil, err
		}
		g.mu.Lock()
		if g.closed {
			g.mu.Unlock()
			_ = c.Close()
			continue
		}
		g.conns[c] = true
		g.mu.Unlock()
		return c, nil
	}
}

func (g *gate) set(closed bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.closed = closed
	if closed {
		for c := range g.conns {
			_ = c.Close()
		}
		clear(g.conns)
	}
}

// partitionable makes n's servers' listeners gates and returns a
// function that cuts (true) or heals (false) the links of the servers
// named.
func partitionable(n *network) func(closed bool, servers ...*fedServer) {
	var mu sync.Mutex
	gates := map[*fedServer]*gate{}
	n.wrapListener = func(s *fedServer, ln net.Listener) net.Listener {
		g := &gate{Listener: ln, conns: map[net.Conn]bool{}}
		mu.Lock()
		gates[s] = g
		mu.Unlock()
		return g
	}
	return func(closed bool, servers ...*fedServer) {
		mu.Lock()
		defer mu.Unlock()
		for _, s := range servers {
			gates[s].set(closed)
		}
	}
}

func sendState(t testing.TB, s *fedServer, roomID, sender, eventType, stateKey string, content any) string {
	t.Helper()
	raw, _ := json.Marshal(content)
	resp, err := s.HS.Rooms.SendEvent(context.Background(), roomserver.SendEventRequest{
		RoomID: roomID, Sender: sender, Type: eventType, StateKey: &stateKey, Content: raw,
	})
	if err != nil {
		t.Fatalf("%s sending %s: %v", sender, eventType, err)
	}
	return resp.EventID
}

// stateIDs maps each (type, state key) of roomID's current state on s to
// its event ID.
func stateIDs(t testing.TB, s *fedServer, userID, roomID string) map[[2]string]string {
	t.Helper()
	evs, err := s.HS.Rooms.CurrentState(context.Background(), userID, roomID)
	if err != nil {
		t.Fatal(err)
	}
	out := map[[2]string]string{}
	for _, e := range evs {
		out[[2]string{e.Type, *e.StateKey}] = e.EventID
	}
	return out
}

// timeline pages backwards through all of roomID on s, as userID, and
// returns the events newest first.
func timeline(t testing.TB, s *fedServer, userID, roomID string) []*roomserver.Event {
	t.Helper()
	var out []*roomserver.Event
	from := ""
	for {
		page, err := s.HS.Rooms.Messages(context.Background(), roomserver.MessagesRequest{
			UserID: userID, RoomID: roomID, From: from, Dir: roomserver.Backward, Limit: 100})
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, page.Events...)
		if page.End == page.Start {
			return out
		}
		from = page.End
	}
}

// TestPartitionConvergence: A and B share a room in which alice (A) and
// bob (B) both hold power level 100. The link between the servers is
// cut; each side changes the power levels and the topic and sends
// messages. When the link heals, both servers hold every event of both
// sides, the same current state (state resolution picks the same
// winners on both) and the same topological timeline (the same events
// at the same depths). Then, on A, a /sync batch of the late events
// from B has a prev_batch from which /messages returns A's own events of
// the partition, newest first (Complement's
// TestNetworkPartitionOrdering). Security case 38.
func TestPartitionConvergence(t *testing.T) {
	t.Parallel()
	forEachEngine(t, func(t *testing.T, n *network) {
		ctx := context.Background()
		cut := partitionable(n)
		a, b := n.start(), n.start()
		alice, bob := a.user("alice"), b.user("bob")
		roomID := publicRoom(t, a, alice)
		if _, err := b.HS.Federation.JoinRemote(ctx, roomID, bob, []string{a.Name}); err != nil {
			t.Fatalf("bob's join: %v", err)
		}
		pl := map[string]any{"users": map[string]int{bob: 100}, "users_default": 0,
			"events": map[string]int{"m.room.power_levels": 100, "m.room.topic": 50}}
		plID := sendState(t, a, roomID, alice, "m.room.power_levels", "", pl)
		eventually(t, "B to get bob's power", func() bool { return hasEvent(b, bob, plID) })

		cut(true, a, b)
		var onA, onB []string
		plA := map[string]any{"users": map[string]int{bob: 100, "@x:" + a.Name: 50}, "users_default": 0,
			"events": map[string]int{"m.room.power_levels": 100, "m.room.topic": 50}}
		plB := map[string]any{"users": map[string]int{bob: 100, "@y:" + b.Name: 60}, "users_default": 10,
			"events": map[string]int{"m.room.power_levels": 100, "m.room.topic": 100}}
		onA = append(onA, sendState(t, a, roomID, alice, "m.room.power_levels", "", plA))
		onB = append(onB, sendState(t, b, roomID, bob, "m.room.power_levels", "", plB))
		onA = append(onA, sendState(t, a, roomID, alice, "m.room.topic", "", map[string]string{"topic": "A's topic"}))
		onB = append(onB, sendState(t, b, roomID, bob, "m.room.topic", "", map[string]string{"topic": "B's topic"}))
		for i := 0; i < 4; i++ {
			onA = append(onA, sendText(t, a, roomID, alice, "A while partitioned"))
			onB = append(onB, sendText(t, b, roomID, bob, "B while partitioned"))
		}
		lastA, err := a.HS.Rooms.Event(ctx, alice, onA[len(onA)-1])
		if err != nil {
			t.Fatal(err)
		}
		if hasEvent(a, alice, onB[0]) || hasEvent(b, bob, onA[0]) {
			t.Fatal("an event crossed the partition")
		}

		cut(false, a, b)
		for _, id := range onA {
			eventually(t, "B to get "+id, func() bool { return hasEvent(b, bob, id) })
		}
		for _, id := range onB {
			eventually(t, "A to get "+id, func() bool { return hasEvent(a, alice, id) })
		}
		// One more message on each side merges the forward extremities.
		mergeA := sendText(t, a, roomID, alice, "healed, from A")
		mergeB := sendText(t, b, roomID, bob, "healed, from B")
		eventually(t, "both merges everywhere", func() bool {
			return hasEvent(a, alice, mergeB) && hasEvent(b, bob, mergeA)
		})
		eventually(t, "the same current state on A and B", func() bool {
			sa, sb := stateIDs(t, a, alice, roomID), stateIDs(t, b, bob, roomID)
			return len(sa) == len(sb) && func() bool {
				for k, v := range sa {
					if sb[k] != v {
						return false
					}
				}
				return true
			}()
		})
		sa := stateIDs(t, a, alice, roomID)
		if w := sa[[2]string{"m.room.power_levels", ""}]; w != onA[0] && w != onB[0] {
			t.Errorf("power levels resolved to %s, neither side's change (%s, %s)", w, onA[0], onB[0])
		}
		if w := sa[[2]string{"m.room.topic", ""}]; w != onA[1] && w != onB[1] {
			t.Errorf("topic resolved to %s, neither side's (%s, %s)", w, onA[1], onB[1])
		}

		// The same events at the same depths, nothing lost.
		type at struct {
			id    string
			depth int64
		}
		flat := func(evs []*roomserver.Event) []at {
			var out []at
			for _, e := range evs {
				out = append(out, at{e.EventID, e.Depth})
			}
			slices.SortFunc(out, func(x, y at) int {
				if x.depth != y.depth {
					return int(x.depth - y.depth)
				}
				if x.id < y.id {
					return -1
				}
				return 1
			})
			return out
		}
		// B's timeline starts at bob's join (the state before it came
		// with send_join, as outliers): compare from there.
		ta, tb := timeline(t, a, alice, roomID), timeline(t, b, bob, roomID)
		fa, fb := flat(ta), flat(tb)
		fa = slices.DeleteFunc(fa, func(x at) bool { return x.depth < fb[0].depth })
		if len(fb) < len(onA)+len(onB)+3 || !slices.Equal(fa, fb) {
			t.Fatalf("timelines differ:\nA %v\nB %v", fa, fb)
		}
		for _, list := range [][]*roomserver.Event{ta, tb} {
			for i := 1; i < len(list); i++ {
				if list[i].Depth > list[i-1].Depth {
					t.Fatalf("/messages out of topological order at %d: depth %d after %d", i, list[i].Depth, list[i-1].Depth)
				}
			}
		}
		for _, id := range append(append([]string{}, onA...), onB...) {
			if !slices.ContainsFunc(ta, func(e *roomserver.Event) bool { return e.EventID == id }) {
				t.Fatalf("%s missing from A's timeline", id)
			}
		}

		// Sync on A from the end of A's partition events: B's events
		// arrived after them, and the batch's prev_batch pages back
		// through A's own partition events, newest first, though B's
		// events have the same depths.
		rr, err := a.HS.Rooms.RecentEvents(ctx, roomserver.RecentRequest{UserID: alice, RoomID: roomID,
			From: lastA.StreamPos, To: math.MaxInt64, Limit: 100})
		if err != nil {
			t.Fatal(err)
		}
		if len(rr.Events) == 0 || !slices.ContainsFunc(rr.Events, func(e *roomserver.Event) bool { return e.EventID == onB[len(onB)-1] }) {
			t.Fatalf("A's sync after the partition lacks B's events: %d events", len(rr.Events))
		}
		page, err := a.HS.Rooms.Messages(ctx, roomserver.MessagesRequest{UserID: alice, RoomID: roomID,
			From: rr.PrevBatch, Dir: roomserver.Backward, Limit: len(onA)})
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, e := range page.Events {
			got = append(got, e.EventID)
		}
		want := slices.Clone(onA)
		slices.Reverse(want)
		if !slices.Equal(got, want) {
			t.Fatalf("/messages back from prev_batch %s = %v, want A's partition events newest first %v", rr.PrevBatch, got, want)
		}
	})
}
