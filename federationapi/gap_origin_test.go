package federationapi_test

import (
	"encoding/json"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/matrix-org/gomatrixserverlib"

	"github.com/myelin-chat/myelin/internal/signing"
)

// gapOrigin is the fake origin server of the gap tests: A (a Myelin
// server with alice's public room) and mallory's server, which mallory
// has joined to that room. It answers get_missing_events, state_ids and
// /event from what the test puts in it and records what A asked; the
// test changes its answers under mu.
type gapOrigin struct {
	t       *testing.T
	n       *network
	a       *fedServer
	alice   string
	roomID  string
	name    string // mallory's server
	key     *signing.Key
	mallory string
	join    gomatrixserverlib.PDU // mallory's join, accepted by A

	mu sync.Mutex
	// missing is what get_missing_events answers: the newest `limit` of
	// them, oldest first. Guarded by mu.
	missing []json.RawMessage
	// stateAt holds the events whose state state_ids serves (pdu_ids
	// stateIDs, auth_chain_ids authIDs); any other is 404. Guarded by mu.
	stateAt           map[string]bool
	stateIDs, authIDs []string
	// served is what /event answers. Guarded by mu.
	served map[string]gomatrixserverlib.PDU
	// asked counts A's requests by endpoint ("get_missing_events",
	// "state_ids", "event"); stateAsked and eventAsked hold the event
	// IDs A asked state_ids and /event for, in order. Guarded by mu.
	asked      map[string]int
	stateAsked []string
	eventAsked []string

	txn int // transactions sent; only the test goroutine touches it
}

// newGapOrigin starts A and mallory's server, and joins mallory to a
// public room of alice's through a pushed PDU.
func newGapOrigin(t *testing.T, n *network) *gapOrigin {
	t.Helper()
	o := &gapOrigin{t: t, n: n, a: n.start(), stateAt: map[string]bool{},
		served: map[string]gomatrixserverlib.PDU{}, asked: map[string]int{}}
	o.alice = o.a.user("alice")
	o.roomID = publicRoom(t, o.a, o.alice)
	o.name, o.key = n.fakeServer(t, func(name string, mux *http.ServeMux) {
		mux.HandleFunc("/_matrix/federation/v1/get_missing_events/", o.getMissingEvents)
		mux.HandleFunc("/_matrix/federation/v1/state_ids/", o.stateIDsAt)
		mux.HandleFunc("/_matrix/federation/v1/event/", o.event)
	})
	o.mallory = "@mallory:" + o.name
	o.join = o.build("m.room.member", &o.mallory, map[string]string{"membership": "join"}, nil)
	if e, _ := o.send(o.join); e != "" {
		t.Fatalf("mallory's join: %s", e)
	}
	return o
}

func (o *gapOrigin) getMissingEvents(w http.ResponseWriter, r *http.Request) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.asked["get_missing_events"]++
	var body struct {
		Limit int `json:"limit"`
	}
	_ = json.NewDecoder(r.Body).Decode(&body)
	out := append([]json.RawMessage{}, o.missing[max(len(o.missing)-body.Limit, 0):]...)
	_, _ = w.Write(mustJSON(map[string]any{"events": out}))
}

func (o *gapOrigin) stateIDsAt(w http.ResponseWriter, r *http.Request) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.asked["state_ids"]++
	at := r.URL.Query().Get("event_id")
	o.stateAsked = append(o.stateAsked, at)
	if !o.stateAt[at] {
		http.NotFound(w, r)
		return
	}
	_, _ = w.Write(mustJSON(map[string]any{"pdu_ids": o.stateIDs, "auth_chain_ids": o.authIDs}))
}

func (o *gapOrigin) event(w http.ResponseWriter, r *http.Request) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.asked["event"]++
	id, _ := unescape(strings.TrimPrefix(r.URL.EscapedPath(), "/_matrix/federation/v1/event/"))
	o.eventAsked = append(o.eventAsked, id)
	e, ok := o.served[id]
	if !ok {
		http.NotFound(w, r)
		return
	}
	_, _ = w.Write(mustJSON(map[string]any{"origin": o.name, "origin_server_ts": time.Now().UnixMilli(),
		"pdus": []json.RawMessage{e.JSON()}}))
}

// send pushes p to A alone in a new transaction and returns its /send
// result: the error text, and whether the result names p at all.
func (o *gapOrigin) send(p gomatrixserverlib.PDU) (string, bool) {
	o.t.Helper()
	o.txn++
	status, body := o.n.request(o.a, o.name, o.key, o.a.Name, http.MethodPut,
		"/_matrix/federation/v1/send/gap"+strconv.Itoa(o.txn),
		map[string]any{"origin": o.name, "origin_server_ts": time.Now().UnixMilli(), "pdus": []json.RawMessage{p.JSON()}})
	if status != http.StatusOK {
		o.t.Fatalf("send: %d %s", status, body)
	}
	var resp sendResponse
	_ = json.Unmarshal(body, &resp)
	r, ok := resp.PDUs[p.EventID()]
	return r.Error, ok
}

// build makes an event of mallory's in the room, signed by mallory's
// server; edit (if not nil) changes it before signing.
func (o *gapOrigin) build(eventType string, stateKey *string, content any, edit func(*gomatrixserverlib.ProtoEvent)) gomatrixserverlib.PDU {
	o.t.Helper()
	return buildPDU(o.t, o.a, o.roomID, o.mallory, eventType, stateKey, content, o.name, o.key, edit)
}

// stateIDsAsked returns the event IDs state_ids was asked at so far.
func (o *gapOrigin) stateIDsAsked() []string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return slices.Clone(o.stateAsked)
}

// childOf is an edit that makes an event the child of prev.
func childOf(prev gomatrixserverlib.PDU) func(*gomatrixserverlib.ProtoEvent) {
	return func(pe *gomatrixserverlib.ProtoEvent) {
		pe.PrevEvents, pe.Depth = []string{prev.EventID()}, prev.Depth()+1
	}
}
