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

// TestOutlierPromotedThroughSend follows Complement's TestPartialStateJoin
// "Resync completes even when events arrive before their prev events"
// in a room with full state: mallory's server sends A a message whose
// prev event (a display name change) A lacks; get_missing_events gives
// nothing older, so A fills the gap with the state at the change, which
// holds the change itself: A stores it as an outlier. Then the change
// arrives through /send. It becomes a timeline event: GET /event serves
// it, /messages and /sync show it exactly once, and a second delivery
// changes nothing.
func TestOutlierPromotedThroughSend(t *testing.T) {
	forEachEngine(t, func(t *testing.T, n *network) {
		a := n.start()
		ctx := context.Background()
		alice := a.register("alice")
		roomID := publicRoom(t, a, string(alice.id()))

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
		mallory := "@mallory:" + name
		txn := 0
		send := func(p gomatrixserverlib.PDU) {
			t.Helper()
			txn++
			status, body := n.request(a, name, key, a.Name, http.MethodPut,
				"/_matrix/federation/v1/send/outlier"+strconv.Itoa(txn),
				map[string]any{"origin": name, "origin_server_ts": time.Now().UnixMilli(), "pdus": []json.RawMessage{p.JSON()}})
			var resp sendResponse
			_ = json.Unmarshal(body, &resp)
			if status != http.StatusOK || resp.PDUs[p.EventID()].Error != "" {
				t.Fatalf("send %s: %d %s", p.EventID(), status, body)
			}
		}
		join := buildPDU(t, a, roomID, mallory, "m.room.member", &mallory, map[string]string{"membership": "join"}, name, key, nil)
		send(join)
		alice.syncOnce()

		after := func(prev gomatrixserverlib.PDU) func(*gomatrixserverlib.ProtoEvent) {
			return func(pe *gomatrixserverlib.ProtoEvent) {
				pe.PrevEvents, pe.Depth = []string{prev.EventID()}, prev.Depth()+1
			}
		}
		rename := buildPDU(t, a, roomID, mallory, "m.room.member", &mallory,
			map[string]string{"membership": "join", "displayname": "Mallory"}, name, key, after(join))
		tip := buildPDU(t, a, roomID, mallory, "m.room.message", nil, map[string]string{"msgtype": "m.text", "body": "after the rename"},
			name, key, after(rename))
		state, err := a.HS.Rooms.CurrentState(ctx, string(alice.id()), roomID)
		if err != nil {
			t.Fatal(err)
		}
		mu.Lock()
		byID[rename.EventID()] = rename
		stateAt = rename.EventID()
		for _, e := range state {
			stateIDs = append(stateIDs, e.EventID) // the state before the rename: mallory's join
		}
		mu.Unlock()

		send(tip)
		if !hasEvent(a, string(alice.id()), tip.EventID()) {
			t.Fatal("alice cannot see the message after the gap")
		}
		if hasEvent(a, string(alice.id()), rename.EventID()) {
			t.Fatal("the rename, stored as an outlier, is visible before it arrives")
		}
		if _, err := alice.cli.GetEvent(ctx, id.RoomID(roomID), id.EventID(rename.EventID())); err == nil {
			t.Fatal("GET /event serves the outlier")
		}
		alice.await("the message after the gap", func() bool { return alice.sawEventID(id.RoomID(roomID), tip.EventID()) })

		send(rename)
		if _, err := alice.cli.GetEvent(ctx, id.RoomID(roomID), id.EventID(rename.EventID())); err != nil {
			t.Fatalf("GET /event of the promoted rename: %v", err)
		}
		alice.await("the promoted rename", func() bool { return alice.sawEventID(id.RoomID(roomID), rename.EventID()) })
		send(rename) // a second delivery
		alice.send(id.RoomID(roomID), "marker")
		alice.await("the marker", func() bool { return alice.sawMessage(id.RoomID(roomID), alice.id(), "marker") })
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
		for _, e := range alice.timeline[id.RoomID(roomID)] {
			synced = append(synced, string(e.ID))
		}
		if c := count(synced); c != 1 {
			t.Fatalf("/sync delivered the rename %d times", c)
		}
		msgs, err := alice.cli.Messages(ctx, id.RoomID(roomID), "", "", mautrix.DirectionBackward, nil, 100)
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
		ev, err := a.HS.Rooms.CurrentStateEvent(ctx, string(alice.id()), roomID, "m.room.member", mallory)
		if err != nil || ev.EventID != rename.EventID() {
			t.Fatalf("mallory's member event: %+v, %v; want the rename %s", ev, err, rename.EventID())
		}
	})
}
