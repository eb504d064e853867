package federationapi_test

import (
	"context"
	"encoding/json"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/myelin-chat/myelin/internal/signing"
	"github.com/myelin-chat/myelin/storage"
)

// fakeRemote is a federation peer run by the test: it publishes its
// signing key and answers what handle is given; requests are counted
// by path prefix.
type fakeRemote struct {
	name string
	key  *signing.Key
	// oldKey, when set, is served in old_verify_keys with oldExpiredTS.
	// Guarded by mu.
	oldKey       *signing.Key
	oldExpiredTS int64
	mux          *http.ServeMux
	mu           sync.Mutex
	hits         map[string]int
	edus         []json.RawMessage // every EDU sent to it; guarded by mu
	// txns records every /send attempt, answered or not; guarded by mu.
	txns []fakeTxn
	// sendGate, if set, runs before a /send is answered and returns the
	// status to answer (200: accepted); it may block (until the
	// request's context ends, say). Guarded by mu.
	sendGate func(r *http.Request) int
	// txnGate, if set, is asked instead of sendGate, with the attempt's
	// transaction ID and contents. Guarded by mu.
	txnGate func(txn fakeTxn) int
	// hideKeys makes GET /_matrix/key/v2/server answer 404; keyValidity
	// (default an hour) is the valid_until_ts it publishes, key the key
	// it publishes (key is set before the fake serves, or under mu).
	// Guarded by mu.
	hideKeys    bool
	keyValidity time.Duration
	// keyGate, if set, runs in GET /_matrix/key/v2/server after the
	// document's key is chosen and before it answers (the document, or
	// 404 when hideKeys); it may block.
	// Guarded by mu.
	keyGate func()
}

// fakeTxn is one /send attempt a fakeRemote saw.
type fakeTxn struct {
	id         string
	pdus, edus []json.RawMessage
	status     int
}

func newFakeRemote(t *testing.T, n *network) *fakeRemote {
	key, err := signing.Generate()
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeRemote{name: "localhost:" + strconv.Itoa(ln.Addr().(*net.TCPAddr).Port), key: key, mux: http.NewServeMux(), hits: map[string]int{}}
	f.mux.HandleFunc("/_matrix/key/v2/server", func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		hide, validity, key, gate := f.hideKeys, f.keyValidity, f.key, f.keyGate
		oldKey, oldExpiredTS := f.oldKey, f.oldExpiredTS
		f.mu.Unlock()
		if gate != nil {
			gate()
		}
		if hide {
			http.Error(w, `{"errcode":"M_NOT_FOUND"}`, http.StatusNotFound)
			return
		}
		if validity == 0 {
			validity = time.Hour
		}
		fields := map[string]any{"server_name": f.name, "valid_until_ts": time.Now().Add(validity).UnixMilli(),
			"verify_keys": map[string]any{key.ID: map[string]string{"key": key.PublicBase64()}}}
		if oldKey != nil {
			fields["old_verify_keys"] = map[string]any{oldKey.ID: map[string]any{"key": oldKey.PublicBase64(), "expired_ts": oldExpiredTS}}
		}
		doc := mustJSON(fields)
		signed, _ := gomatrixserverlib.SignJSON(f.name, gomatrixserverlib.KeyID(key.ID), key.PrivateKey, doc)
		_, _ = w.Write(signed)
	})
	f.mux.HandleFunc("/_matrix/federation/v1/send/", func(w http.ResponseWriter, r *http.Request) {
		var txn struct {
			PDUs []json.RawMessage `json:"pdus"`
			EDUs []json.RawMessage `json:"edus"`
		}
		_ = json.NewDecoder(r.Body).Decode(&txn)
		id, _ := unescape(strings.TrimPrefix(r.URL.EscapedPath(), "/_matrix/federation/v1/send/"))
		f.mu.Lock()
		gate, txnGate := f.sendGate, f.txnGate
		f.mu.Unlock()
		status := http.StatusOK
		if txnGate != nil {
			status = txnGate(fakeTxn{id: id, pdus: txn.PDUs, edus: txn.EDUs})
		} else if gate != nil {
			status = gate(r)
		}
		f.mu.Lock()
		f.txns = append(f.txns, fakeTxn{id: id, pdus: txn.PDUs, edus: txn.EDUs, status: status})
		if status == http.StatusOK {
			f.edus = append(f.edus, txn.EDUs...)
		}
		f.mu.Unlock()
		if status != http.StatusOK {
			http.Error(w, `{"errcode":"M_UNKNOWN","error":"the test says no"}`, status)
			return
		}
		_, _ = w.Write([]byte(`{"pdus":{}}`))
	})
	pair, err := n.ca.Issue(f.name, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		parts := strings.SplitN(r.URL.Path, "/", 6)
		f.hits[strings.Join(parts[:min(5, len(parts))], "/")]++
		f.mu.Unlock()
		f.mux.ServeHTTP(w, r)
	}))
	srv.Listener = ln
	if srv.TLS, err = tlsKeyPair(pair.CertPEM, pair.KeyPEM); err != nil {
		t.Fatal(err)
	}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	return f
}

func (f *fakeRemote) count(prefix string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.hits[prefix]
}

// serveEvents answers /event/{id} with the given events, 404 otherwise,
// and /event_auth/{room}/{id} with authOf[id], 404 if absent.
func (f *fakeRemote) serveEvents(events map[string]gomatrixserverlib.PDU, authOf map[string][]gomatrixserverlib.PDU) {
	f.mux.HandleFunc("/_matrix/federation/v1/event/", func(w http.ResponseWriter, r *http.Request) {
		id, _ := unescape(strings.TrimPrefix(r.URL.EscapedPath(), "/_matrix/federation/v1/event/"))
		ev, ok := events[id]
		if !ok {
			http.Error(w, `{"errcode":"M_NOT_FOUND"}`, http.StatusNotFound)
			return
		}
		_, _ = w.Write(mustJSON(map[string]any{"origin": f.name, "origin_server_ts": 1, "pdus": []json.RawMessage{ev.JSON()}}))
	})
	f.mux.HandleFunc("/_matrix/federation/v1/event_auth/", func(w http.ResponseWriter, r *http.Request) {
		parts := strings.Split(r.URL.EscapedPath(), "/")
		id, _ := unescape(parts[len(parts)-1])
		chain, ok := authOf[id]
		if !ok {
			http.Error(w, `{"errcode":"M_NOT_FOUND"}`, http.StatusNotFound)
			return
		}
		var raw []json.RawMessage
		for _, ev := range chain {
			raw = append(raw, ev.JSON())
		}
		_, _ = w.Write(mustJSON(map[string]any{"auth_chain": raw}))
	})
}

// TestInboundFetchesMissingAuthEvents: a PDU whose auth events we lack
// is not refused with M_NOT_FOUND: the auth events are fetched from the
// origin (/event_auth, else /event), checked and stored as outliers, and
// the PDU is then authorised. An outlier whose own auth events include a
// rejected event is stored rejected, and so is every PDU naming it.
func TestInboundFetchesMissingAuthEvents(t *testing.T) {
	t.Parallel()
	n := newNetwork(t, storage.SQLite)
	a := n.start()
	f := newFakeRemote(t, n)
	ctx := context.Background()
	alice := a.user("alice")
	charlie := "@charlie:" + f.name
	roomID := publicRoom(t, a, alice)

	join := buildPDU(t, a, roomID, charlie, "m.room.member", &charlie, map[string]string{"membership": "join"}, f.name, f.key, nil)
	if status, body := n.request(a, f.name, f.key, a.Name, http.MethodPut,
		"/_matrix/federation/v2/send_join/"+pathEscape(roomID)+"/"+pathEscape(join.EventID()), json.RawMessage(join.JSON())); status != http.StatusOK {
		t.Fatalf("send_join: %d %s", status, body)
	}
	send := func(txnID string, pdus ...gomatrixserverlib.PDU) map[string]string {
		t.Helper()
		var raw []json.RawMessage
		for _, p := range pdus {
			raw = append(raw, p.JSON())
		}
		status, body := n.request(a, f.name, f.key, a.Name, http.MethodPut, "/_matrix/federation/v1/send/"+txnID,
			map[string]any{"origin": f.name, "origin_server_ts": time.Now().UnixMilli(), "pdus": raw})
		var resp struct {
			PDUs map[string]struct {
				Error string `json:"error"`
			} `json:"pdus"`
		}
		if status != http.StatusOK || json.Unmarshal(body, &resp) != nil {
			t.Fatalf("send: %d %s", status, body)
		}
		out := map[string]string{}
		for id, r := range resp.PDUs {
			out[id] = r.Error
		}
		return out
	}

	// R: charlie may not change the power levels; rejected.
	pl, err := a.HS.Rooms.RoomStateEvent(ctx, roomID, "m.room.power_levels", "")
	if err != nil {
		t.Fatal(err)
	}
	empty := ""
	rejected := buildPDU(t, a, roomID, charlie, "m.room.power_levels", &empty, map[string]any{"users": map[string]int{charlie: 100}}, f.name, f.key, nil)
	if res := send("r", rejected); res[rejected.EventID()] != "" || !isRejected(a, rejected.EventID()) {
		t.Fatalf("R: %q, want handled and stored rejected", res[rejected.EventID()])
	}
	// O (bad outlier): charlie's member update authorised by R in place
	// of the real power levels. Good outlier G: a valid update.
	create, err := a.HS.Rooms.RoomStateEvent(ctx, roomID, "m.room.create", "")
	if err != nil {
		t.Fatal(err)
	}
	// withAuth rebuilds ev with auth event replace swapped for with (and
	// prev_events set to prev, if given).
	withAuth := func(ev gomatrixserverlib.PDU, replace, with string, prev ...string) gomatrixserverlib.PDU {
		t.Helper()
		var auth []string
		for _, id := range ev.AuthEventIDs() {
			if id == create.EventID && ev.Version() == "12" {
				continue // implied by the room ID
			}
			if id == replace {
				id = with
			}
			auth = append(auth, id)
		}
		impl := gomatrixserverlib.MustGetRoomVersion(ev.Version())
		if prev == nil {
			prev = ev.PrevEventIDs()
		}
		proto := &gomatrixserverlib.ProtoEvent{SenderID: string(ev.SenderID()), RoomID: roomID, Type: ev.Type(), StateKey: ev.StateKey(),
			Content: ev.Content(), PrevEvents: prev, AuthEvents: auth, Depth: ev.Depth(), Version: impl}
		out, err := impl.NewEventBuilderFromProtoEvent(proto).Build(time.Now(), spec.ServerName(f.name), gomatrixserverlib.KeyID(f.key.ID), f.key.PrivateKey)
		if err != nil {
			t.Fatal(err)
		}
		if with != "" && !slices.Contains(out.AuthEventIDs(), with) {
			t.Fatalf("%s not among the auth events of the rebuilt event", with)
		}
		return out
	}
	bad := withAuth(buildPDU(t, a, roomID, charlie, "m.room.member", &charlie, map[string]any{"membership": "join", "displayname": "bad"},
		f.name, f.key, nil), pl.EventID, rejected.EventID())
	good := buildPDU(t, a, roomID, charlie, "m.room.member", &charlie, map[string]any{"membership": "join", "displayname": "good"},
		f.name, f.key, nil)
	// X names O as charlie's membership; Y names G. X's auth chain comes
	// by /event_auth, Y's (404 there) by /event.
	x := withAuth(buildPDU(t, a, roomID, charlie, "m.room.message", nil, map[string]string{"body": "x"}, f.name, f.key, nil), join.EventID(), bad.EventID())
	y := withAuth(buildPDU(t, a, roomID, charlie, "m.room.message", nil, map[string]string{"body": "y"}, f.name, f.key, nil), join.EventID(), good.EventID())
	f.serveEvents(map[string]gomatrixserverlib.PDU{bad.EventID(): bad, good.EventID(): good},
		map[string][]gomatrixserverlib.PDU{x.EventID(): {join, bad}})

	res := send("x", x)
	t.Logf("X: %q", res[x.EventID()])
	if e := res[x.EventID()]; e != "" || !isRejected(a, x.EventID()) {
		t.Errorf("X: %q, want handled and stored rejected", e)
	}
	if _, _, err := a.HS.Rooms.FederationEvent(ctx, bad.EventID()); err == nil {
		t.Errorf("the outlier authorised by a rejected event was accepted")
	}
	if unknown, _ := a.HS.Rooms.UnknownEvents(ctx, []string{bad.EventID()}); len(unknown) != 0 {
		t.Errorf("the bad outlier was not stored (rejected)")
	}
	if f.count("/_matrix/federation/v1/event_auth") == 0 {
		t.Errorf("/event_auth was not asked")
	}

	// Z, an ordinary message built on the rejected X, is accepted: X
	// left the state as it was.
	zBase := buildPDU(t, a, roomID, charlie, "m.room.message", nil, map[string]string{"body": "z"}, f.name, f.key, nil)
	z := withAuth(zBase, "", "", x.EventID())
	if e := send("z", z)[z.EventID()]; e != "" {
		t.Fatalf("Z (after the rejected X): %q, want accepted", e)
	}
	if !hasEvent(a, alice, z.EventID()) {
		t.Errorf("alice cannot see Z")
	}

	res = send("y", y)
	if e := res[y.EventID()]; e != "" {
		t.Fatalf("Y: %q, want accepted", e)
	}
	if f.count("/_matrix/federation/v1/event") == 0 {
		t.Errorf("/event was not asked")
	}
	if _, _, err := a.HS.Rooms.FederationEvent(ctx, good.EventID()); err != nil {
		t.Errorf("the good outlier: %v", err)
	}
	if !hasEvent(a, alice, y.EventID()) {
		t.Errorf("alice cannot see Y")
	}
}
