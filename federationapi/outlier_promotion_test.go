package federationapi_test

import (
	"context"
	"encoding/json"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/matrix-org/gomatrixserverlib"
	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/id"

	"github.com/myelin-chat/myelin/internal/signing"
)

// outlierGap is a room on A that mallory's server joined, then sent a
// message (tip) after two events A lacked: a display name change and a
// message (between) after it. get_missing_events gave only between, whose
// prev event (the change) is still unknown; A filled that gap with the
// state at the change, which holds the change itself, so A holds it only
// as an outlier. (A pushed PDU is never connected that way: the state_ids
// fallback is for the oldest event get_missing_events returned.)
type outlierGap struct {
	a       *fedServer
	alice   *syncer
	roomID  string
	mallory string
	rename  gomatrixserverlib.PDU // held as an outlier
	between gomatrixserverlib.PDU // after the rename, pulled by get_missing_events
	tip     gomatrixserverlib.PDU // after between, in the timeline
	build   func(eventType string, stateKey *string, content any, prev gomatrixserverlib.PDU) gomatrixserverlib.PDU
	send    func(p gomatrixserverlib.PDU)
	// setMissing sets what get_missing_events answers.
	setMissing func(evs ...gomatrixserverlib.PDU)
}

func newOutlierGap(t *testing.T, n *network) *outlierGap {
	t.Helper()
	g := &outlierGap{a: n.start()}
	ctx := context.Background()
	g.alice = g.a.register("alice")
	g.roomID = publicRoom(t, g.a, string(g.alice.id()))
	var (
		mu       sync.Mutex
		byID     = map[string]gomatrixserverlib.PDU{}
		missing  []gomatrixserverlib.PDU
		stateAt  string
		stateIDs []string
	)
	var name string
	var key *signing.Key
	name, key = n.fakeServer(t, func(_ string, mux *http.ServeMux) {
		mux.HandleFunc("/_matrix/federation/v1/get_missing_events/", func(w http.ResponseWriter, r *http.Request) {
			mu.Lock()
			defer mu.Unlock()
			var out []json.RawMessage
			for _, e := range missing {
				out = append(out, e.JSON())
			}
			_, _ = w.Write(mustJSON(map[string]any{"events": out}))
		})
		mux.HandleFunc("/_matrix/federation/v1/state_ids/", func(w http.ResponseWriter, r *http.Request) {
			mu.Lock()
			defer mu.Unlock()
			if r.URL.Query().Get("event_id") != stateAt {
				http.NotFound(w, r)
				return
			}
			_, _ = w.Write(mustJSON(map[string]any{"pdu_ids": stateIDs, "auth_chain_ids": stateIDs}))
		})
		mux.HandleFunc("/_matrix/federation/v1/event/", func(w http.ResponseWriter, r *http.Request) {
			mu.Lock()
			defer mu.Unlock()
			eventID, _ := unescape(strings.TrimPrefix(r.URL.EscapedPath(), "/_matrix/federation/v1/event/"))
			e, ok := byID[eventID]
			if !ok {
				http.NotFound(w, r)
				return
			}
			_, _ = w.Write(mustJSON(map[string]any{"origin": name, "origin_server_ts": time.Now().UnixMilli(),
				"pdus": []json.RawMessage{e.JSON()}}))
		})
	})
	g.mallory = "@mallory:" + name
	g.setMissing = func(evs ...gomatrixserverlib.PDU) {
		mu.Lock()
		defer mu.Unlock()
		missing = evs
	}
	txn := 0
	g.send = func(p gomatrixserverlib.PDU) {
		t.Helper()
		txn++
		status, body := n.request(g.a, name, key, g.a.Name, http.MethodPut,
			"/_matrix/federation/v1/send/outlier"+strconv.Itoa(txn),
			map[string]any{"origin": name, "origin_server_ts": time.Now().UnixMilli(), "pdus": []json.RawMessage{p.JSON()}})
		var resp sendResponse
		_ = json.Unmarshal(body, &resp)
		if status != http.StatusOK || resp.PDUs[p.EventID()].Error != "" {
			t.Fatalf("send %s: %d %s", p.EventID(), status, body)
		}
	}
	g.build = func(eventType string, stateKey *string, content any, prev gomatrixserverlib.PDU) gomatrixserverlib.PDU {
		var edit func(*gomatrixserverlib.ProtoEvent)
		if prev != nil {
			edit = func(pe *gomatrixserverlib.ProtoEvent) {
				pe.PrevEvents, pe.Depth = []string{prev.EventID()}, prev.Depth()+1
			}
		}
		return buildPDU(t, g.a, g.roomID, g.mallory, eventType, stateKey, content, name, key, edit)
	}
	join := g.build("m.room.member", &g.mallory, map[string]string{"membership": "join"}, nil)
	g.send(join)
	g.alice.syncOnce()

	g.rename = g.build("m.room.member", &g.mallory, map[string]string{"membership": "join", "displayname": "Mallory"}, join)
	g.between = g.build("m.room.message", nil, map[string]string{"msgtype": "m.text", "body": "after the rename"}, g.rename)
	g.tip = g.build("m.room.message", nil, map[string]string{"msgtype": "m.text", "body": "after that"}, g.between)
	state, err := g.a.HS.Rooms.CurrentState(ctx, string(g.alice.id()), g.roomID)
	if err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	byID[g.rename.EventID()] = g.rename
	stateAt = g.rename.EventID()
	missing = []gomatrixserverlib.PDU{g.between}
	for _, e := range state {
		stateIDs = append(stateIDs, e.EventID) // the state before the rename: mallory's join
	}
	mu.Unlock()

	g.send(g.tip)
	if !hasEvent(g.a, string(g.alice.id()), g.tip.EventID()) || !hasEvent(g.a, string(g.alice.id()), g.between.EventID()) {
		t.Fatal("alice cannot see the messages after the gap")
	}
	if hasEvent(g.a, string(g.alice.id()), g.rename.EventID()) {
		t.Fatal("the rename, stored as an outlier, is visible before it arrives")
	}
	if _, err := g.alice.cli.GetEvent(ctx, id.RoomID(g.roomID), id.EventID(g.rename.EventID())); err == nil {
		t.Fatal("GET /event serves the outlier")
	}
	g.alice.await("the message after the gap", func() bool { return g.alice.sawEventID(id.RoomID(g.roomID), g.tip.EventID()) })
	return g
}

// TestOutlierPromotedThroughSend follows Complement's TestPartialStateJoin
// "Resync completes even when events arrive before their prev events"
// in a room with full state: the rename A holds as an outlier
// (newOutlierGap) arrives through /send. It becomes a timeline event:
// GET /event serves it, /messages and /sync show it exactly once, and a
// second delivery changes nothing.
func TestOutlierPromotedThroughSend(t *testing.T) {
	t.Parallel()
	forEachEngine(t, func(t *testing.T, n *network) {
		g := newOutlierGap(t, n)
		ctx := context.Background()
		roomID, alice, rename := id.RoomID(g.roomID), g.alice, g.rename

		g.send(rename)
		if _, err := alice.cli.GetEvent(ctx, roomID, id.EventID(rename.EventID())); err != nil {
			t.Fatalf("GET /event of the promoted rename: %v", err)
		}
		alice.await("the promoted rename", func() bool { return alice.sawEventID(roomID, rename.EventID()) })
		g.send(rename) // a second delivery
		alice.send(roomID, "marker")
		alice.await("the marker", func() bool { return alice.sawMessage(roomID, alice.id(), "marker") })
		count := func(evs []string) int {
			n := 0
			for _, e := range evs {
				if e == rename.EventID() {
					n++
				}
			}
			return n
		}
		var synced []string
		for _, e := range alice.timeline[roomID] {
			synced = append(synced, string(e.ID))
		}
		if c := count(synced); c != 1 {
			t.Fatalf("/sync delivered the rename %d times", c)
		}
		msgs, err := alice.cli.Messages(ctx, roomID, "", "", mautrix.DirectionBackward, nil, 100)
		if err != nil {
			t.Fatal(err)
		}
		var paged []string
		for _, e := range msgs.Chunk {
			paged = append(paged, string(e.ID))
		}
		if c := count(paged); c != 1 {
			t.Fatalf("/messages holds the rename %d times", c)
		}
		ev, err := g.a.HS.Rooms.CurrentStateEvent(ctx, string(alice.id()), g.roomID, "m.room.member", g.mallory)
		if err != nil || ev.EventID != rename.EventID() {
			t.Fatalf("mallory's member event: %+v, %v; want the rename %s", ev, err, rename.EventID())
		}
	})
}

// TestEventAfterOutlierFetchesIt: mallory's next message names the
// rename A holds only as an outlier as its prev event. A treats the
// rename as missing: get_missing_events brings it again, it takes its
// place in the timeline, and the message is accepted (not checked
// against an unknown state and rejected).
func TestEventAfterOutlierFetchesIt(t *testing.T) {
	t.Parallel()
	forEachEngine(t, func(t *testing.T, n *network) {
		g := newOutlierGap(t, n)
		alice := string(g.alice.id())
		fork := g.build("m.room.message", nil, map[string]string{"msgtype": "m.text", "body": "also after the rename"}, g.rename)
		g.setMissing(g.rename)
		g.send(fork)
		if !hasEvent(g.a, alice, fork.EventID()) {
			t.Fatal("alice cannot see the message after the outlier")
		}
		if !hasEvent(g.a, alice, g.rename.EventID()) {
			t.Fatal("the rename was not brought into the timeline")
		}
	})
}
