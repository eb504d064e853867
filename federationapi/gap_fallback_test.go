package federationapi_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/matrix-org/gomatrixserverlib"

	"github.com/myelin-chat/myelin/federationapi"
	"github.com/myelin-chat/myelin/internal/signing"
	"github.com/myelin-chat/myelin/storage"
)

// fakeGME is a fake server's POST /get_missing_events: it fails (500)
// or answers the events set, and records what it was asked.
type fakeGME struct {
	mu     sync.Mutex
	fail   bool
	events []json.RawMessage
	latest [][]string // latest_events of each request
}

func (f *fakeGME) set(fail bool, events ...json.RawMessage) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.fail, f.events = fail, events
}

func (f *fakeGME) asked() [][]string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.latest)
}

func (f *fakeGME) serve(w http.ResponseWriter, r *http.Request) {
	var body struct {
		Latest []string `json:"latest_events"`
	}
	_ = json.NewDecoder(r.Body).Decode(&body)
	f.mu.Lock()
	defer f.mu.Unlock()
	f.latest = append(f.latest, body.Latest)
	if f.fail {
		http.Error(w, `{"errcode":"M_UNKNOWN","error":"down"}`, http.StatusInternalServerError)
		return
	}
	_, _ = w.Write(mustJSON(map[string]any{"events": append([]json.RawMessage{}, f.events...)}))
}

// gapPeer is a fake server of the room with one joined user.
type gapPeer struct {
	name, user string
	key        *signing.Key
	gme        *fakeGME
}

// gapScene is A's room with fake servers joined to it.
type gapScene struct {
	n      *network
	a      *fedServer
	alice  string
	roomID string
	txn    int
}

func newGapScene(t *testing.T, n *network) *gapScene {
	a := n.start()
	alice := a.user("alice")
	return &gapScene{n: n, a: a, alice: alice, roomID: publicRoom(t, a, alice)}
}

// peer starts a fake server whose user joins each of rooms (the scene's
// room if none is given).
func (g *gapScene) peer(t *testing.T, rooms ...string) *gapPeer {
	p := &gapPeer{gme: &fakeGME{fail: true}}
	p.name, p.key = g.n.fakeServer(t, func(name string, mux *http.ServeMux) {
		mux.HandleFunc("/_matrix/federation/v1/get_missing_events/", p.gme.serve)
		// A's transactions are taken, so its sender does not back off
		// from p (the fallback skips servers in backoff).
		mux.HandleFunc("/_matrix/federation/v1/send/", func(w http.ResponseWriter, r *http.Request) {
			_, _ = w.Write([]byte(`{"pdus":{}}`))
		})
	})
	p.user = "@user:" + p.name
	if len(rooms) == 0 {
		rooms = []string{g.roomID}
	}
	for _, roomID := range rooms {
		join := buildPDU(t, g.a, roomID, p.user, "m.room.member", &p.user, map[string]string{"membership": "join"}, p.name, p.key, nil)
		if res := g.send(t, p, join); res[join.EventID()] != "" {
			t.Fatalf("%s's join: %s", p.user, res[join.EventID()])
		}
	}
	return p
}

// send pushes pdus from p to A in one transaction and returns each
// PDU's result ("" accepted; missing from the answer: "missing").
func (g *gapScene) send(t *testing.T, p *gapPeer, pdus ...gomatrixserverlib.PDU) map[string]string {
	t.Helper()
	g.txn++
	raws := make([]json.RawMessage, len(pdus))
	for i, e := range pdus {
		raws[i] = e.JSON()
	}
	status, body := g.n.request(g.a, p.name, p.key, g.a.Name, http.MethodPut,
		fmt.Sprintf("/_matrix/federation/v1/send/gap%d", g.txn),
		map[string]any{"origin": p.name, "origin_server_ts": time.Now().UnixMilli(), "pdus": raws})
	var resp sendResponse
	if status != http.StatusOK || json.Unmarshal(body, &resp) != nil {
		t.Fatalf("send: %d %s", status, body)
	}
	out := map[string]string{}
	for _, e := range pdus {
		r, ok := resp.PDUs[e.EventID()]
		out[e.EventID()] = r.Error
		if !ok {
			out[e.EventID()] = "missing"
		}
	}
	return out
}

// gap builds, in roomID, a message of p's user that A does not hold
// (hidden) and one after it (tip).
func (g *gapScene) gap(t *testing.T, p *gapPeer, roomID, label string) (hidden, tip gomatrixserverlib.PDU) {
	hidden = buildPDU(t, g.a, roomID, p.user, "m.room.message", nil, map[string]string{"body": "unseen " + label}, p.name, p.key, nil)
	tip = buildPDU(t, g.a, roomID, p.user, "m.room.message", nil, map[string]string{"body": "after " + label}, p.name, p.key,
		func(pe *gomatrixserverlib.ProtoEvent) {
			pe.PrevEvents, pe.Depth = []string{hidden.EventID()}, hidden.Depth()+1
		})
	return hidden, tip
}

func (g *gapScene) pending(t *testing.T) map[string][]string {
	t.Helper()
	got, err := g.a.HS.Federation.PendingPDUs(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return got
}

// TestGapFilledByAnotherServer: the origin of a pushed PDU whose prev
// event A lacks answers get_missing_events with a 500; another server of
// the room answers the same request with the prev event, which A checks
// (signed by the origin, whose event it is) and inputs, then the PDU: it
// is accepted in the same /send, nothing is kept for a retry.
// Spec: server-server-api, "Backfilling and retrieving missing events".
func TestGapFilledByAnotherServer(t *testing.T) {
	t.Parallel()
	forEachEngine(t, func(t *testing.T, n *network) {
		g := newGapScene(t, n)
		origin, other := g.peer(t), g.peer(t)
		hidden, tip := g.gap(t, origin, g.roomID, "a")
		// other relays a copy of hidden that it altered and re-signed: not
		// signed by the origin, so it does not count (no trust in the
		// relaying server), and the PDU is kept, not accepted.
		forged := buildPDU(t, g.a, g.roomID, origin.user, "m.room.message", nil, map[string]string{"body": "forged"}, other.name, other.key,
			func(pe *gomatrixserverlib.ProtoEvent) {
				pe.PrevEvents, pe.Depth = hidden.PrevEventIDs(), hidden.Depth()
			})
		var forgedJSON map[string]any
		_ = json.Unmarshal(forged.JSON(), &forgedJSON)
		var hiddenJSON map[string]any
		_ = json.Unmarshal(hidden.JSON(), &hiddenJSON)
		hiddenJSON["signatures"] = forgedJSON["signatures"]
		other.gme.set(false, mustJSON(hiddenJSON))
		if res := g.send(t, origin, tip); res[tip.EventID()] == "" || hasEvent(g.a, g.alice, tip.EventID()) {
			t.Fatalf("the PDU after an event only a non-origin signature vouches for: result %q; want an error, not input", res[tip.EventID()])
		}
		if hasEvent(g.a, g.alice, hidden.EventID()) {
			t.Fatal("an event signed only by the server that relayed it was accepted")
		}

		tip2 := buildPDU(t, g.a, g.roomID, origin.user, "m.room.message", nil, map[string]string{"body": "after a, again"}, origin.name, origin.key,
			func(pe *gomatrixserverlib.ProtoEvent) {
				pe.PrevEvents, pe.Depth = []string{tip.EventID()}, tip.Depth()+1
			})
		other.gme.set(false, hidden.JSON(), tip.JSON())
		res := g.send(t, origin, tip2)
		if res[tip2.EventID()] != "" {
			t.Fatalf("PDU result %q; want it accepted with the other server's answer", res[tip2.EventID()])
		}
		for _, e := range []gomatrixserverlib.PDU{hidden, tip, tip2} {
			if !hasEvent(g.a, g.alice, e.EventID()) {
				t.Errorf("alice cannot see %s", e.EventID())
			}
		}
		if asked := origin.gme.asked(); len(asked) != 2 || !slices.Equal(asked[1], []string{tip2.EventID()}) {
			t.Errorf("origin asked %v; want twice, last for %s", asked, tip2.EventID())
		}
		if asked := other.gme.asked(); len(asked) != 2 || !slices.Equal(asked[1], []string{tip2.EventID()}) {
			t.Errorf("other server asked %v; want the same requests as the origin", asked)
		}
		// tip was kept after the first /send and input with tip2's gap.
		eventually(t, "no PDU kept", func() bool { return len(g.pending(t)) == 0 })
	})
}

// TestGapRetriedInBackground: neither the origin nor the room's other
// server answers get_missing_events; the PDU gets an error in its /send
// result but is kept, and once the origin answers again A inputs it by
// itself, with no new event sent to it.
func TestGapRetriedInBackground(t *testing.T) {
	federationapi.SetPendingLimits(t, 50, 100, 1000, 200*time.Millisecond, time.Second)
	forEachEngine(t, func(t *testing.T, n *network) {
		g := newGapScene(t, n)
		origin, other := g.peer(t), g.peer(t)
		hidden, tip := g.gap(t, origin, g.roomID, "b")
		res := g.send(t, origin, tip)
		if res[tip.EventID()] == "" || !strings.Contains(res[tip.EventID()], "kept") {
			t.Fatalf("PDU result %q; want an error saying it is kept", res[tip.EventID()])
		}
		if got := g.pending(t); !slices.Equal(got[origin.name], []string{tip.EventID()}) {
			t.Fatalf("kept PDUs %v; want %s from %s", got, tip.EventID(), origin.name)
		}
		if len(other.gme.asked()) == 0 {
			t.Error("the room's other server was not asked")
		}
		// A few retries fail (waited for, not slept for: on a loaded
		// machine a second may hold fewer than two asks).
		eventually(t, "the origin asked again", func() bool { return len(origin.gme.asked()) >= 3 })
		if hasEvent(g.a, g.alice, tip.EventID()) {
			t.Fatal("PDU input while nobody gave its prev event")
		}
		origin.gme.set(false, hidden.JSON())
		eventually(t, "the kept PDU input", func() bool { return hasEvent(g.a, g.alice, tip.EventID()) })
		if !hasEvent(g.a, g.alice, hidden.EventID()) {
			t.Error("alice cannot see the prev event")
		}
		eventually(t, "no PDU kept", func() bool { return len(g.pending(t)) == 0 })
	})
}

// TestGapRetriedAfterRestart: a PDU kept for a retry survives a restart
// of A; the restarted server retries it and inputs it once the origin
// answers.
func TestGapRetriedAfterRestart(t *testing.T) {
	federationapi.SetPendingLimits(t, 50, 100, 1000, 200*time.Millisecond, time.Second)
	forEachEngine(t, func(t *testing.T, n *network) {
		g := newGapScene(t, n)
		origin := g.peer(t)
		hidden, tip := g.gap(t, origin, g.roomID, "c")
		if res := g.send(t, origin, tip); res[tip.EventID()] == "" {
			t.Fatal("PDU accepted though nobody gave its prev event")
		}
		g.a.restart()
		if got := g.pending(t); !slices.Equal(got[origin.name], []string{tip.EventID()}) {
			t.Fatalf("kept PDUs after the restart %v; want %s", got, tip.EventID())
		}
		origin.gme.set(false, hidden.JSON())
		eventually(t, "the kept PDU input after the restart", func() bool { return hasEvent(g.a, g.alice, tip.EventID()) })
		eventually(t, "no PDU kept", func() bool { return len(g.pending(t)) == 0 })
	})
}

// TestGapKeptPDUInputByLaterEvent: with a long backoff, a kept PDU is
// input as soon as a later pushed event's get_missing_events brings its
// prev event in (the room is rechecked), not at its next retry.
func TestGapKeptPDUInputByLaterEvent(t *testing.T) {
	federationapi.SetPendingLimits(t, 50, 100, 1000, time.Hour, time.Hour)
	forEachEngine(t, func(t *testing.T, n *network) {
		g := newGapScene(t, n)
		origin, other := g.peer(t), g.peer(t)
		hidden, tip := g.gap(t, origin, g.roomID, "e")
		if res := g.send(t, origin, tip); res[tip.EventID()] == "" {
			t.Fatal("PDU accepted though nobody gave its prev event")
		}
		// other's next event follows hidden, which other now serves.
		later := buildPDU(t, g.a, g.roomID, other.user, "m.room.message", nil, map[string]string{"body": "later"}, other.name, other.key,
			func(pe *gomatrixserverlib.ProtoEvent) {
				pe.PrevEvents, pe.Depth = []string{hidden.EventID()}, hidden.Depth()+1
			})
		other.gme.set(false, hidden.JSON())
		if res := g.send(t, other, later); res[later.EventID()] != "" {
			t.Fatalf("later event: %q", res[later.EventID()])
		}
		eventually(t, "the kept PDU input", func() bool { return hasEvent(g.a, g.alice, tip.EventID()) })
		eventually(t, "no PDU kept", func() bool { return len(g.pending(t)) == 0 })
	})
}

// TestGapKeptPDUsBounded: a flood of PDUs with gaps nobody fills is kept
// only up to the bounds, per origin, per room and in total (security:
// a hostile server cannot fill the disk); those past a bound get an error
// saying so and are not stored.
func TestGapKeptPDUsBounded(t *testing.T) {
	federationapi.SetPendingLimits(t, 5, 7, 9, time.Hour, time.Hour)
	forEachEngine(t, func(t *testing.T, n *network) {
		g := newGapScene(t, n)
		room2 := publicRoom(t, g.a, g.alice)
		f, h := g.peer(t), g.peer(t, g.roomID, room2)
		flood := func(p *gapPeer, roomID string, count int) (kept, refused []string) {
			var tips []gomatrixserverlib.PDU
			for i := range count {
				_, tip := g.gap(t, p, roomID, fmt.Sprintf("%s-%d", p.name, i))
				tips = append(tips, tip)
			}
			res := g.send(t, p, tips...)
			for _, tip := range tips {
				switch e := res[tip.EventID()]; {
				case strings.Contains(e, "not kept"):
					refused = append(refused, e)
					if unknown, _ := g.a.HS.Rooms.UnknownEvents(context.Background(), []string{tip.EventID()}); len(unknown) != 1 {
						t.Errorf("refused PDU %s stored", tip.EventID())
					}
				case strings.Contains(e, "kept"):
					kept = append(kept, tip.EventID())
				default:
					t.Errorf("PDU result %q; want kept or not kept", e)
				}
			}
			return kept, refused
		}
		checks := []struct {
			p            *gapPeer
			roomID       string
			kept         int
			refusedBound string
		}{
			{f, g.roomID, 5, "of this origin"}, // 5 per origin
			{h, g.roomID, 2, "of this room"},   // 7 per room
			{h, room2, 2, "of this server"},    // 9 in all
		}
		for i, c := range checks {
			kept, refused := flood(c.p, c.roomID, 7)
			if len(kept) != c.kept || len(refused) != 7-c.kept {
				t.Errorf("flood %d: %d kept, %d refused; want %d kept", i, len(kept), len(refused), c.kept)
			}
			for _, e := range refused {
				if !strings.Contains(e, c.refusedBound) {
					t.Errorf("flood %d: refusal %q; want it to name the bound %q", i, e, c.refusedBound)
				}
			}
		}
		got := g.pending(t)
		if total := len(got[f.name]) + len(got[h.name]); total != 9 || len(got[f.name]) != 5 || len(got[h.name]) != 4 {
			t.Errorf("kept per origin: %d and %d; want 5 and 4", len(got[f.name]), len(got[h.name]))
		}
	})
}

// setBackoff records in A's federation_destinations that A's last
// transactions to server failed failures times and that the next may go
// at retryAt, as the sender does, once A's queue to server is empty (so
// the sender does not overwrite it).
func (g *gapScene) setBackoff(t *testing.T, server string, failures int, retryAt time.Time) {
	t.Helper()
	ctx := context.Background()
	eventually(t, "A's queue to "+server+" drained", func() bool {
		var n int
		err := g.a.HS.DB.Reader().QueryRow(ctx, `SELECT COUNT(*) FROM federation_queue_pdus WHERE destination = $1`, server).Scan(&n)
		return err == nil && n == 0
	})
	err := g.a.HS.DB.Write(ctx, func(tx storage.Tx) error {
		_, err := tx.Exec(ctx, `INSERT INTO federation_destinations (server_name, failures, retry_at_ts) VALUES ($1, $2, $3)
			ON CONFLICT (server_name) DO UPDATE SET failures = excluded.failures, retry_at_ts = excluded.retry_at_ts`,
			server, failures, retryAt.UnixMilli())
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestGapFallbackSkipsServersInBackoff: when the origin of a pushed PDU
// does not answer get_missing_events, A asks up to three of the room's
// other servers, but never one its sender is backing off from (a failed
// transaction, retry_at_ts still ahead), and those whose last exchange
// succeeded before those just out of backoff. Here the other servers, in
// JoinedServers order, are: one in backoff, one out of backoff after
// failures, two that fail get_missing_events and one that answers. A
// asks the three healthy ones, so the last answers and the PDU is
// accepted; the two others are not asked. Then the answering one goes
// into backoff too: A asks the two healthy ones and the one out of
// backoff, which answers.
func TestGapFallbackSkipsServersInBackoff(t *testing.T) {
	t.Parallel()
	forEachEngine(t, func(t *testing.T, n *network) {
		g := newGapScene(t, n)
		origin := g.peer(t)
		var others []*gapPeer
		for range 5 {
			others = append(others, g.peer(t))
		}
		slices.SortFunc(others, func(a, b *gapPeer) int { return strings.Compare(a.name, b.name) }) // JoinedServers order
		backedOff, recovering, answers := others[0], others[1], others[4]
		g.setBackoff(t, backedOff.name, 3, time.Now().Add(time.Hour))
		g.setBackoff(t, recovering.name, 4, time.Now().Add(-time.Minute))

		hidden, tip := g.gap(t, origin, g.roomID, "backoff")
		answers.gme.set(false, hidden.JSON())
		if res := g.send(t, origin, tip); res[tip.EventID()] != "" {
			t.Fatalf("PDU result %q; want it accepted with the answer of the fifth server (the first two skipped)", res[tip.EventID()])
		}
		if !hasEvent(g.a, g.alice, tip.EventID()) || !hasEvent(g.a, g.alice, hidden.EventID()) {
			t.Error("alice cannot see the PDU and its prev event")
		}
		for i, p := range others {
			want := i >= 2
			if got := len(p.gme.asked()) == 1; got != want {
				t.Errorf("server %d asked %v; want asked once: %v", i, p.gme.asked(), want)
			}
		}

		g.setBackoff(t, answers.name, 1, time.Now().Add(time.Hour))
		hidden2, tip2 := g.gap(t, origin, g.roomID, "backoff 2")
		recovering.gme.set(false, hidden2.JSON())
		if res := g.send(t, origin, tip2); res[tip2.EventID()] != "" {
			t.Fatalf("second PDU result %q; want it accepted with the answer of the server out of backoff", res[tip2.EventID()])
		}
		if asked := backedOff.gme.asked(); len(asked) != 0 {
			t.Errorf("the server in backoff was asked %v", asked)
		}
		if asked := answers.gme.asked(); len(asked) != 1 {
			t.Errorf("the fifth server, now in backoff, asked %d times; want once (before its backoff)", len(asked))
		}
		for _, p := range []*gapPeer{others[2], others[3], recovering} {
			if asked := p.gme.asked(); len(asked) == 0 || !slices.Equal(asked[len(asked)-1], []string{tip2.EventID()}) {
				t.Errorf("%s asked %v; want asked for %s", p.name, asked, tip2.EventID())
			}
		}
	})
}

// TestGapKeptPDUsBoundedConcurrently: the bounds on kept PDUs are exact
// when several origins push PDUs with gaps at once (on PostgreSQL the
// transactions that keep them run concurrently: each must see the rows
// the others kept). First the per-room bound, then the total.
func TestGapKeptPDUsBoundedConcurrently(t *testing.T) {
	const origins, each = 8, 6
	forEachEngine(t, func(t *testing.T, n *network) {
		g := newGapScene(t, n)
		var peers []*gapPeer
		for range origins {
			peers = append(peers, g.peer(t))
		}
		round := 0
		// flood has every peer push each PDUs with a gap in one /send,
		// all at once, and returns how many were kept.
		flood := func() int {
			t.Helper()
			round++
			type sent struct {
				p    *gapPeer
				txn  string
				pdus []json.RawMessage
				ids  []string
			}
			var all []sent
			for i, p := range peers {
				s := sent{p: p, txn: fmt.Sprintf("flood%d-%d", round, i)}
				for j := range each {
					_, tip := g.gap(t, p, g.roomID, fmt.Sprintf("flood %d %d %d", round, i, j))
					s.pdus = append(s.pdus, tip.JSON())
					s.ids = append(s.ids, tip.EventID())
				}
				all = append(all, s)
			}
			results := make([]map[string]string, len(all))
			var wg sync.WaitGroup
			start := make(chan struct{})
			for i, s := range all {
				wg.Add(1)
				go func() {
					defer wg.Done()
					<-start
					status, body := n.request(g.a, s.p.name, s.p.key, g.a.Name, http.MethodPut, "/_matrix/federation/v1/send/"+s.txn,
						map[string]any{"origin": s.p.name, "origin_server_ts": time.Now().UnixMilli(), "pdus": s.pdus})
					var resp sendResponse
					if status != http.StatusOK || json.Unmarshal(body, &resp) != nil {
						return // results[i] stays nil: reported below
					}
					results[i] = map[string]string{}
					for id, r := range resp.PDUs {
						results[i][id] = r.Error
					}
				}()
			}
			close(start)
			wg.Wait()
			kept := 0
			for i, s := range all {
				if results[i] == nil {
					t.Fatalf("round %d: /send of %s failed", round, s.p.name)
				}
				for _, id := range s.ids {
					switch e := results[i][id]; {
					case strings.Contains(e, "not kept"):
					case strings.Contains(e, "kept"):
						kept++
					default:
						t.Errorf("round %d: PDU result %q; want kept or not kept", round, e)
					}
				}
			}
			return kept
		}
		count := func() int {
			total := 0
			for _, ids := range g.pending(t) {
				total += len(ids)
			}
			return total
		}

		federationapi.SetPendingLimits(t, 50, 10, 1000, time.Hour, time.Hour)
		if kept, rows := flood(), count(); kept != 10 || rows != 10 {
			t.Errorf("per-room bound 10: %d PDUs said kept, %d rows kept; want 10 (%d pushed at once)", kept, rows, origins*each)
		}
		federationapi.SetPendingLimits(t, 50, 1000, 25, time.Hour, time.Hour)
		if kept, rows := flood(), count(); kept != 15 || rows != 25 {
			t.Errorf("total bound 25: %d more PDUs said kept, %d rows kept; want 15 more, 25 in all", kept, rows)
		}
	})
}
