package federationapi_test

import (
	"context"
	"encoding/json"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/tidwall/sjson"

	"github.com/myelin-chat/myelin/internal/signing"
	"github.com/myelin-chat/myelin/storage"
)

// joinedPair starts A and B with a public room on A that bob (B) joined.
func joinedPair(t *testing.T, n *network) (a, b *fedServer, roomID string) {
	t.Helper()
	a, b = n.start(), n.start()
	roomID = publicRoom(t, a, a.user("alice"))
	if _, err := b.HS.Federation.JoinRemote(context.Background(), roomID, b.user("bob"), []string{a.Name}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "A to see bob join", func() bool {
		m, _ := a.HS.Rooms.Membership(context.Background(), roomID, b.user("bob"))
		return m == "join"
	})
	return a, b, roomID
}

type sendResponse struct {
	PDUs map[string]struct {
		Error string `json:"error"`
	} `json:"pdus"`
}

// TestSendMixedPDUs: in one transaction, good PDUs are accepted and each
// bad one gets its own error (security cases 2, 5, 6, 9, 10).
func TestSendMixedPDUs(t *testing.T) {
	t.Parallel()
	forEachEngine(t, func(t *testing.T, n *network) {
		a, b, roomID := joinedPair(t, n)
		bob := b.user("bob")
		msg := map[string]string{"msgtype": "m.text", "body": "hi"}
		good := buildPDU(t, a, roomID, bob, "m.room.message", nil, msg, b.Name, b.HS.Key, nil)
		// Signed by B but sent as a user of another server (case 9).
		forged := buildPDU(t, a, roomID, "@mallory:elsewhere.example", "m.room.message", nil, msg, b.Name, b.HS.Key, nil)
		// Depth beyond 2^53 (case 5).
		deep := buildPDU(t, a, roomID, bob, "m.room.message", nil, map[string]string{"body": "deep"}, b.Name, b.HS.Key, nil)
		deepJSON, _ := sjson.SetBytes(deep.JSON(), "depth", int64(1)<<60)
		// Event type longer than 255 bytes (case 2).
		long := buildPDU(t, a, roomID, bob, "m.long", nil, map[string]string{"body": "long"}, b.Name, b.HS.Key, nil)
		longJSON, _ := sjson.SetBytes(long.JSON(), "type", strings.Repeat("x", 300))
		// Valid signature, content changed afterwards: stored redacted (case 10).
		tampered := buildPDU(t, a, roomID, bob, "m.room.message", nil, map[string]string{"msgtype": "m.text", "body": "original"},
			b.Name, b.HS.Key, func(p *gomatrixserverlib.ProtoEvent) { p.PrevEvents = []string{good.EventID()}; p.Depth++ })
		tamperedJSON, _ := sjson.SetBytes(tampered.JSON(), "content.body", "changed in transit")

		txn := map[string]any{"origin": b.Name, "origin_server_ts": time.Now().UnixMilli(), "pdus": []json.RawMessage{
			good.JSON(), forged.JSON(), deepJSON, longJSON, tamperedJSON, json.RawMessage(`{"not":"an event"}`),
		}, "edus": []any{}}
		status, body := n.request(a, b.Name, b.HS.Key, a.Name, http.MethodPut, "/_matrix/federation/v1/send/mixed1", txn)
		if status != http.StatusOK {
			t.Fatalf("send: %d %s", status, body)
		}
		var resp sendResponse
		if err := json.Unmarshal(body, &resp); err != nil {
			t.Fatal(err)
		}
		if r, ok := resp.PDUs[good.EventID()]; !ok || r.Error != "" {
			t.Errorf("good PDU: %+v (present %v)", r, ok)
		}
		if r := resp.PDUs[tampered.EventID()]; r.Error != "" {
			t.Errorf("tampered PDU should be accepted (redacted), got %q", r.Error)
		}
		for name, id := range map[string]string{"forged": forged.EventID(), "deep": deep.EventID()} {
			if r, ok := resp.PDUs[id]; ok && r.Error == "" {
				t.Errorf("%s PDU accepted", name)
			}
		}
		errorsSeen := 0
		for _, r := range resp.PDUs {
			if r.Error != "" {
				errorsSeen++
			}
		}
		if errorsSeen < 4 {
			t.Errorf("want 4 errors (forged, deep, long, not an event), got %d: %s", errorsSeen, body)
		}
		alice := a.user("alice")
		if !hasEvent(a, alice, good.EventID()) {
			t.Errorf("good PDU not stored")
		}
		if hasEvent(a, alice, forged.EventID()) || hasEvent(a, alice, deep.EventID()) {
			t.Errorf("bad PDU stored")
		}
		ev, err := a.HS.Rooms.Event(context.Background(), alice, tampered.EventID())
		if err != nil {
			t.Fatalf("tampered PDU not stored: %v", err)
		}
		if strings.Contains(string(ev.Content), "changed") || strings.Contains(string(ev.Content), "original") {
			t.Errorf("tampered PDU not redacted: %s", ev.Content)
		}
	})
}

// TestDuplicateTransaction: the same (origin, txnId) is processed once;
// a retry gets the first answer and its new contents are ignored. A
// transaction over the spec's limits (50 PDUs, 100 EDUs) is refused
// whole with 400 M_BAD_JSON and none of it is processed.
// Spec: server-server-api, "Transactions".
func TestDuplicateTransaction(t *testing.T) {
	t.Parallel()
	forEachEngine(t, func(t *testing.T, n *network) {
		a, b, roomID := joinedPair(t, n)
		bob := b.user("bob")
		first := buildPDU(t, a, roomID, bob, "m.room.message", nil, map[string]string{"body": "1"}, b.Name, b.HS.Key, nil)
		second := buildPDU(t, a, roomID, bob, "m.room.message", nil, map[string]string{"body": "2"}, b.Name, b.HS.Key, nil)
		send := func(pdu gomatrixserverlib.PDU) []byte {
			status, body := n.request(a, b.Name, b.HS.Key, a.Name, http.MethodPut, "/_matrix/federation/v1/send/dup1",
				map[string]any{"origin": b.Name, "origin_server_ts": 1, "pdus": []json.RawMessage{pdu.JSON()}})
			if status != http.StatusOK {
				t.Fatalf("send: %d %s", status, body)
			}
			return body
		}
		r1, r2 := send(first), send(second)
		if string(r1) != string(r2) {
			t.Errorf("retry answered %s, first answer was %s", r2, r1)
		}
		if _, _, err := a.HS.Rooms.FederationEvent(context.Background(), first.EventID()); err != nil {
			t.Errorf("the first transaction's PDU was not stored: %v", err)
		}
		if _, _, err := a.HS.Rooms.FederationEvent(context.Background(), second.EventID()); err == nil {
			t.Errorf("the retried transaction's new PDU was processed")
		}

		// Over the limits: 400 M_BAD_JSON, nothing processed.
		third := buildPDU(t, a, roomID, bob, "m.room.message", nil, map[string]string{"body": "3"}, b.Name, b.HS.Key, nil)
		many := make([]json.RawMessage, 51)
		for i := range many {
			many[i] = third.JSON()
		}
		typing := json.RawMessage(`{"edu_type":"m.typing","content":{"room_id":"` + roomID + `","user_id":"` + bob + `","typing":true}}`)
		manyEDUs := make([]json.RawMessage, 101)
		for i := range manyEDUs {
			manyEDUs[i] = typing
		}
		for _, c := range []struct {
			name       string
			pdus, edus []json.RawMessage
		}{
			{"51 PDUs", many, nil},
			{"101 EDUs", []json.RawMessage{third.JSON()}, manyEDUs},
		} {
			status, body := n.request(a, b.Name, b.HS.Key, a.Name, http.MethodPut, "/_matrix/federation/v1/send/big"+strconv.Itoa(len(c.edus)),
				map[string]any{"origin": b.Name, "origin_server_ts": 1, "pdus": c.pdus, "edus": c.edus})
			if status != http.StatusBadRequest || !strings.Contains(string(body), "M_BAD_JSON") {
				t.Errorf("%s: %d %s, want 400 M_BAD_JSON", c.name, status, body)
			}
		}
		if _, _, err := a.HS.Rooms.FederationEvent(context.Background(), third.EventID()); err == nil {
			t.Errorf("a PDU of a refused transaction was processed")
		}
		// Exactly the limits are accepted.
		atLimit := make([]json.RawMessage, 50)
		for i := range atLimit {
			atLimit[i] = third.JSON()
		}
		status, body := n.request(a, b.Name, b.HS.Key, a.Name, http.MethodPut, "/_matrix/federation/v1/send/atlimit",
			map[string]any{"origin": b.Name, "origin_server_ts": 1, "pdus": atLimit, "edus": manyEDUs[:100]})
		if status != http.StatusOK {
			t.Fatalf("50 PDUs and 100 EDUs: %d %s", status, body)
		}
		if _, _, err := a.HS.Rooms.FederationEvent(context.Background(), third.EventID()); err != nil {
			t.Errorf("the PDU of a transaction at the limits was not stored: %v", err)
		}
	})
}

// TestInviteForgery: PUT /v2/invite from an origin that is not the
// sender's server, or for a user of another server, is 403 and nothing
// is signed (security case 13). A genuine invite is signed.
func TestInviteForgery(t *testing.T) {
	t.Parallel()
	n := newNetwork(t, storage.SQLite)
	a, b := n.start(), n.start()
	ctx := context.Background()
	roomID := publicRoom(t, b, b.user("bob"))
	invite := func(sender, target string) gomatrixserverlib.PDU {
		return buildPDU(t, b, roomID, sender, "m.room.member", &target, map[string]string{"membership": "invite"}, b.Name, b.HS.Key, nil)
	}
	put := func(origin string, key *signing.Key, pdu gomatrixserverlib.PDU) (int, []byte) {
		return n.request(a, origin, key, a.Name, http.MethodPut,
			"/_matrix/federation/v2/invite/"+pathEscape(roomID)+"/"+pathEscape(pdu.EventID()),
			map[string]any{"room_version": "12", "event": json.RawMessage(pdu.JSON()), "invite_room_state": []any{}})
	}
	carol := a.user("carol")
	// C (a third server, here: a key we control named as C) forwards B's invite.
	c := n.start()
	if status, body := put(c.Name, c.HS.Key, invite(b.user("bob"), carol)); status != http.StatusForbidden {
		t.Errorf("origin != sender's server: %d %s", status, body)
	}
	if status, body := put(b.Name, b.HS.Key, invite(b.user("bob"), b.user("dave"))); status != http.StatusForbidden {
		t.Errorf("invite for a non-local user: %d %s", status, body)
	}
	status, body := put(b.Name, b.HS.Key, invite(b.user("bob"), carol))
	if status != http.StatusOK {
		t.Fatalf("genuine invite: %d %s", status, body)
	}
	var resp struct {
		Event json.RawMessage `json:"event"`
	}
	_ = json.Unmarshal(body, &resp)
	impl := gomatrixserverlib.MustGetRoomVersion("12")
	redacted, _ := impl.RedactEventJSON(resp.Event)
	if err := gomatrixserverlib.VerifyJSON(a.Name, gomatrixserverlib.KeyID(a.HS.Key.ID), a.HS.Key.Public(), redacted); err != nil {
		t.Errorf("invite not signed by A: %v", err)
	}
	invites, err := a.HS.Federation.RemoteInvites(ctx, carol)
	if err != nil || len(invites) != 1 || invites[0].RoomID != roomID {
		t.Errorf("remote invite not recorded: %v %+v", err, invites)
	}
}

// TestSendJoinValidation: send_join with a non-join, another user's
// state key or a sender from another server is refused, nothing stored
// (security case 12).
func TestSendJoinValidation(t *testing.T) {
	t.Parallel()
	n := newNetwork(t, storage.SQLite)
	a, b := n.start(), n.start()
	roomID := publicRoom(t, a, a.user("alice"))
	bob := b.user("bob")
	cases := map[string]gomatrixserverlib.PDU{
		"message": buildPDU(t, a, roomID, bob, "m.room.message", nil, map[string]string{"body": "x"}, b.Name, b.HS.Key, nil),
		"leave":   buildPDU(t, a, roomID, bob, "m.room.member", &bob, map[string]string{"membership": "leave"}, b.Name, b.HS.Key, nil),
		"other state key": buildPDU(t, a, roomID, bob, "m.room.member", ptr(b.user("eve")), map[string]string{"membership": "join"},
			b.Name, b.HS.Key, nil),
	}
	for name, pdu := range cases {
		status, body := n.request(a, b.Name, b.HS.Key, a.Name, http.MethodPut,
			"/_matrix/federation/v2/send_join/"+pathEscape(roomID)+"/"+pathEscape(pdu.EventID()), json.RawMessage(pdu.JSON()))
		if status < 400 || status >= 500 {
			t.Errorf("%s: status %d %s", name, status, body)
		}
		if _, _, err := a.HS.Rooms.FederationEvent(context.Background(), pdu.EventID()); err == nil {
			t.Errorf("%s: stored", name)
		}
	}
	// A join for a user of B, sent by A's... origin C: refused.
	c := n.start()
	join := buildPDU(t, a, roomID, bob, "m.room.member", &bob, map[string]string{"membership": "join"}, b.Name, b.HS.Key, nil)
	status, _ := n.request(a, c.Name, c.HS.Key, a.Name, http.MethodPut,
		"/_matrix/federation/v2/send_join/"+pathEscape(roomID)+"/"+pathEscape(join.EventID()), json.RawMessage(join.JSON()))
	if status != http.StatusForbidden {
		t.Errorf("join of B's user sent by C: status %d", status)
	}
}

// TestTamperedTemplateAbortsJoin: a make_join template that changes
// anything we did not ask for aborts the join; send_join is never called
// (security case 14).
func TestTamperedTemplateAbortsJoin(t *testing.T) {
	t.Parallel()
	n := newNetwork(t, storage.SQLite)
	a := n.start()
	for _, tamper := range []struct{ name, path, value string }{
		{"sender", "sender", "@mallory:evil.example"},
		{"membership", "content.membership", "ban"},
		{"type", "type", "m.room.power_levels"},
		{"extra content", "content.displayname", "owned"},
		{"room", "room_id", "!other:evil.example"},
	} {
		t.Run(tamper.name, func(t *testing.T) {
			evil, sendJoins := evilServer(t, n, tamper.path, tamper.value)
			roomID := "!room:" + evil
			_, err := a.HS.Federation.JoinRemote(context.Background(), roomID, a.user("alice"), []string{evil})
			if err == nil || !strings.Contains(err.Error(), "aborted") {
				t.Fatalf("join through a tampering server: %v", err)
			}
			if sendJoins.Load() != 0 {
				t.Fatalf("send_join was called")
			}
		})
	}
}

// evilServer runs a fake homeserver named localhost:PORT that answers
// make_join with a template whose path is set to value.
func evilServer(t *testing.T, n *network, path, value string) (string, *atomic.Int32) {
	var sendJoins atomic.Int32
	name, _ := n.fakeServer(t, func(name string, mux *http.ServeMux) {
		mux.HandleFunc("/_matrix/federation/v1/make_join/", func(w http.ResponseWriter, r *http.Request) {
			parts := strings.Split(r.URL.EscapedPath(), "/")
			roomID, _ := unescape(parts[5])
			userID, _ := unescape(parts[6])
			tmpl := mustJSON(map[string]any{"type": "m.room.member", "sender": userID, "state_key": userID, "room_id": roomID,
				"content": map[string]string{"membership": "join"}, "prev_events": []string{"$prev"}, "auth_events": []string{"$create"},
				"depth": 5, "origin": name, "origin_server_ts": 1})
			tmpl, _ = sjson.SetBytes(tmpl, path, value)
			w.Header().Set("Content-Type", "application/json")
			_, _ = w.Write(mustJSON(map[string]any{"room_version": "10", "event": json.RawMessage(tmpl)}))
		})
		mux.HandleFunc("/_matrix/federation/v2/send_join/", func(w http.ResponseWriter, r *http.Request) {
			sendJoins.Add(1)
			w.WriteHeader(http.StatusInternalServerError)
		})
	})
	return name, &sendJoins
}

// fakeServer runs a fake homeserver named localhost:PORT with a TLS
// certificate from the network's CA and a signing key it publishes at
// /_matrix/key/v2/server; setup adds the routes it answers (unsigned
// requests are not refused: it trusts whoever calls).
func (n *network) fakeServer(t *testing.T, setup func(name string, mux *http.ServeMux)) (string, *signing.Key) {
	key, err := signing.Generate()
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	name := "localhost:" + strconv.Itoa(ln.Addr().(*net.TCPAddr).Port)
	mux := http.NewServeMux()
	mux.HandleFunc("/_matrix/key/v2/server", func(w http.ResponseWriter, r *http.Request) {
		doc := mustJSON(map[string]any{"server_name": name, "valid_until_ts": time.Now().Add(time.Hour).UnixMilli(),
			"verify_keys": map[string]any{key.ID: map[string]string{"key": key.PublicBase64()}}})
		signed, _ := gomatrixserverlib.SignJSON(name, gomatrixserverlib.KeyID(key.ID), key.PrivateKey, doc)
		_, _ = w.Write(signed)
	})
	setup(name, mux)
	pair, err := n.ca.Issue(name, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(mux)
	srv.Listener = ln
	cert, err := tlsKeyPair(pair.CertPEM, pair.KeyPEM)
	if err != nil {
		t.Fatal(err)
	}
	srv.TLS = cert
	srv.StartTLS()
	t.Cleanup(srv.Close)
	return name, key
}

func ptr(s string) *string { return &s }

// TestSendMembershipV1: the deprecated v1 send_join and send_leave apply
// the v2 validation (400 for anything but the right membership of the
// sender itself) and answer a good event with the v1 shape [200, {...}].
func TestSendMembershipV1(t *testing.T) {
	t.Parallel()
	n := newNetwork(t, storage.SQLite)
	a, b := n.start(), n.start()
	ctx := context.Background()
	roomID := publicRoom(t, a, a.user("alice"))
	bob := b.user("bob")
	put := func(kind string, pdu gomatrixserverlib.PDU) (int, []byte) {
		return n.request(a, b.Name, b.HS.Key, a.Name, http.MethodPut,
			"/_matrix/federation/v1/send_"+kind+"/"+pathEscape(roomID)+"/"+pathEscape(pdu.EventID()), json.RawMessage(pdu.JSON()))
	}
	for _, kind := range []string{"join", "leave"} {
		other := map[string]string{"join": "leave", "leave": "join"}[kind]
		bad := map[string]gomatrixserverlib.PDU{
			"message":       buildPDU(t, a, roomID, bob, "m.room.message", nil, map[string]string{"body": "x"}, b.Name, b.HS.Key, nil),
			"non-state":     buildPDU(t, a, roomID, bob, "m.room.member", nil, map[string]string{"membership": kind}, b.Name, b.HS.Key, nil),
			other:           buildPDU(t, a, roomID, bob, "m.room.member", &bob, map[string]string{"membership": other}, b.Name, b.HS.Key, nil),
			"invite":        buildPDU(t, a, roomID, bob, "m.room.member", &bob, map[string]string{"membership": "invite"}, b.Name, b.HS.Key, nil),
			"knock":         buildPDU(t, a, roomID, bob, "m.room.member", &bob, map[string]string{"membership": "knock"}, b.Name, b.HS.Key, nil),
			"other's state": buildPDU(t, a, roomID, bob, "m.room.member", ptr(b.user("doris")), map[string]string{"membership": kind}, b.Name, b.HS.Key, nil),
		}
		for name, pdu := range bad {
			if status, body := put(kind, pdu); status != http.StatusBadRequest {
				t.Errorf("v1 send_%s of %s: %d %s, want 400", kind, name, status, body)
			}
		}
	}

	join := buildPDU(t, a, roomID, bob, "m.room.member", &bob, map[string]string{"membership": "join"}, b.Name, b.HS.Key, nil)
	status, body := put("join", join)
	var resp []json.RawMessage
	if status != http.StatusOK || json.Unmarshal(body, &resp) != nil || len(resp) != 2 || string(resp[0]) != "200" {
		t.Fatalf("v1 send_join: %d %s, want [200, {...}]", status, body)
	}
	var res struct {
		State     []json.RawMessage `json:"state"`
		AuthChain []json.RawMessage `json:"auth_chain"`
	}
	if err := json.Unmarshal(resp[1], &res); err != nil || len(res.State) == 0 || len(res.AuthChain) == 0 {
		t.Fatalf("v1 send_join body %s", resp[1])
	}
	if m, _ := a.HS.Rooms.Membership(ctx, roomID, bob); m != "join" {
		t.Fatalf("after v1 send_join bob is %q", m)
	}

	leave := buildPDU(t, a, roomID, bob, "m.room.member", &bob, map[string]string{"membership": "leave"}, b.Name, b.HS.Key, nil)
	status, body = put("leave", leave)
	if status != http.StatusOK || strings.ReplaceAll(string(body), " ", "") != "[200,{}]" {
		t.Fatalf("v1 send_leave: %d %s, want [200,{}]", status, body)
	}
	if m, _ := a.HS.Rooms.Membership(ctx, roomID, bob); m != "leave" {
		t.Fatalf("after v1 send_leave bob is %q", m)
	}
}
