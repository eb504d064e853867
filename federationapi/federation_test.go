package federationapi_test

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"testing"

	"github.com/matrix-org/gomatrixserverlib"
	"maunium.net/go/mautrix/id"

	"github.com/myelin-chat/myelin/internal/signing"
	"github.com/myelin-chat/myelin/roomserver"
	"github.com/myelin-chat/myelin/storage"
	"github.com/myelin-chat/myelin/storage/storagetest"
)

func forEachEngine(t *testing.T, fn func(t *testing.T, n *network)) {
	for _, engine := range storagetest.Engines() {
		t.Run(string(engine), func(t *testing.T) { fn(t, newNetwork(t, engine)) })
	}
}

// TestRemoteJoinAndMessages: a user on B joins a room on A through A;
// messages then flow both ways.
func TestRemoteJoinAndMessages(t *testing.T) {
	t.Parallel()
	forEachEngine(t, func(t *testing.T, n *network) {
		a, b := n.start(), n.start()
		ctx := context.Background()
		alice, bob := a.user("alice"), b.user("bob")
		roomID := publicRoom(t, a, alice)

		got, err := b.HS.Federation.JoinRemote(ctx, roomID, bob, []string{a.Name})
		if err != nil {
			t.Fatalf("join: %v", err)
		}
		if got != roomID {
			t.Fatalf("joined %s, want %s", got, roomID)
		}
		if m, _ := b.HS.Rooms.Membership(ctx, roomID, bob); m != "join" {
			t.Fatalf("bob's membership on B is %q", m)
		}
		eventually(t, "A to see bob's join", func() bool {
			m, _ := a.HS.Rooms.Membership(ctx, roomID, bob)
			return m == "join"
		})

		fromAlice := sendText(t, a, roomID, alice, "hello from A")
		eventually(t, "B to receive alice's message", func() bool { return hasEvent(b, bob, fromAlice) })
		fromBob := sendText(t, b, roomID, bob, "hello from B")
		eventually(t, "A to receive bob's message", func() bool { return hasEvent(a, alice, fromBob) })

		// Both servers agree on the room's current state.
		sameCurrentState(t, a, b, id.RoomID(roomID), id.UserID(alice), id.UserID(bob))
	})
}

// TestXMatrixAuthentication: unsigned, badly signed and misaddressed
// requests are 401 M_UNAUTHORIZED; a good one passes.
func TestXMatrixAuthentication(t *testing.T) {
	t.Parallel()
	n := newNetwork(t, storage.SQLite)
	a, b := n.start(), n.start()
	uri := "/_matrix/federation/v1/event/$nope"
	other, err := signing.Generate()
	if err != nil {
		t.Fatal(err)
	}
	other.ID = b.HS.Key.ID // same key ID, wrong key
	cases := []struct {
		name        string
		key         *signing.Key
		destination string
		want        int
	}{
		{"good", b.HS.Key, a.Name, http.StatusNotFound},
		{"unsigned", nil, a.Name, http.StatusUnauthorized},
		{"bad signature", other, a.Name, http.StatusUnauthorized},
		{"wrong destination", b.HS.Key, "elsewhere.example", http.StatusUnauthorized},
	}
	for _, tc := range cases {
		status, body := n.request(a, b.Name, tc.key, tc.destination, http.MethodGet, uri, nil)
		if status != tc.want {
			t.Errorf("%s: status %d (%s), want %d", tc.name, status, body, tc.want)
		}
		if tc.want == http.StatusUnauthorized && !strings.Contains(string(body), "M_UNAUTHORIZED") {
			t.Errorf("%s: body %s lacks M_UNAUTHORIZED", tc.name, body)
		}
	}
}

// TestKeyFetchAndNotary: A fetches B's key directly when B calls it, and
// A's notary endpoint serves B's key document countersigned by A; C,
// trusting A as notary, gets B's keys through it.
func TestKeyFetchAndNotary(t *testing.T) {
	t.Parallel()
	n := newNetwork(t, storage.SQLite)
	a, b := n.start(), n.start()
	// B calls A: A must fetch B's key to verify.
	if status, body := n.request(a, b.Name, b.HS.Key, a.Name, http.MethodGet, "/_matrix/federation/v1/event/$x", nil); status != http.StatusNotFound {
		t.Fatalf("signed request: %d %s", status, body)
	}
	status, body := n.request(a, "", nil, a.Name, http.MethodPost, "/_matrix/key/v2/query",
		map[string]any{"server_keys": map[string]any{b.Name: map[string]any{}}})
	if status != http.StatusOK {
		t.Fatalf("notary: %d %s", status, body)
	}
	var resp struct {
		ServerKeys []json.RawMessage `json:"server_keys"`
	}
	if err := json.Unmarshal(body, &resp); err != nil || len(resp.ServerKeys) != 1 {
		t.Fatalf("notary answer %s", body)
	}
	doc := resp.ServerKeys[0]
	if err := gomatrixserverlib.VerifyJSON(b.Name, gomatrixserverlib.KeyID(b.HS.Key.ID), b.HS.Key.Public(), doc); err != nil {
		t.Errorf("not signed by B: %v", err)
	}
	if err := gomatrixserverlib.VerifyJSON(a.Name, gomatrixserverlib.KeyID(a.HS.Key.ID), a.HS.Key.Public(), doc); err != nil {
		t.Errorf("not countersigned by A: %v", err)
	}
	// GET form.
	status, body = n.request(a, "", nil, a.Name, http.MethodGet, "/_matrix/key/v2/query/"+b.Name, nil)
	if status != http.StatusOK || !strings.Contains(string(body), b.HS.Key.ID) {
		t.Fatalf("notary GET: %d %s", status, body)
	}
}

// TestVersion: GET /_matrix/federation/v1/version needs no signature.
func TestVersion(t *testing.T) {
	t.Parallel()
	n := newNetwork(t, storage.SQLite)
	a := n.start()
	status, body := n.request(a, "", nil, a.Name, http.MethodGet, "/_matrix/federation/v1/version", nil)
	if status != http.StatusOK || !strings.Contains(string(body), "Myelin") {
		t.Fatalf("version: %d %s", status, body)
	}
}

// TestUnknownFederationEndpoints: an unknown path under
// /_matrix/federation is 404 M_UNRECOGNIZED even unsigned (the
// authentication middleware runs only for known routes), a known path
// with the wrong method is 405, and known routes still need a signature.
func TestUnknownFederationEndpoints(t *testing.T) {
	t.Parallel()
	n := newNetwork(t, storage.SQLite)
	a, b := n.start(), n.start()
	for _, uri := range []string{"/_matrix/federation/unknown", "/_matrix/federation/v1/unknown", "/_matrix/federation/v2/send_join"} {
		for _, key := range []*signing.Key{nil, b.HS.Key} {
			status, body := n.request(a, b.Name, key, a.Name, http.MethodGet, uri, nil)
			if status != http.StatusNotFound || !strings.Contains(string(body), "M_UNRECOGNIZED") {
				t.Errorf("GET %s (signed %v): %d %s, want 404 M_UNRECOGNIZED", uri, key != nil, status, body)
			}
		}
	}
	status, body := n.request(a, "", nil, a.Name, http.MethodPut, "/_matrix/federation/v1/version", nil)
	if status != http.StatusMethodNotAllowed || !strings.Contains(string(body), "M_UNRECOGNIZED") {
		t.Errorf("PUT version: %d %s, want 405 M_UNRECOGNIZED", status, body)
	}
	status, body = n.request(a, "", nil, a.Name, http.MethodGet, "/_matrix/federation/v1/event/$x", nil)
	if status != http.StatusUnauthorized {
		t.Errorf("unsigned GET of a known route: %d %s, want 401", status, body)
	}
}

// TestRemoteJoinNotSentBack: after B joins A's room through send_join,
// B's sender does not queue the join for anyone (A has it and sends it
// on), while B's later events, including a second local user's join,
// go to A.
func TestRemoteJoinNotSentBack(t *testing.T) {
	t.Parallel()
	n := newNetwork(t, storage.SQLite)
	a, b := n.start(), n.start()
	ctx := context.Background()
	alice, bob, carol := a.user("alice"), b.user("bob"), b.user("carol")
	roomID := publicRoom(t, a, alice)
	if _, err := b.HS.Federation.JoinRemote(ctx, roomID, bob, []string{a.Name}); err != nil {
		t.Fatal(err)
	}
	if _, err := b.HS.Rooms.Join(ctx, roomserver.MembershipRequest{RoomID: roomID, Sender: carol, Target: carol}); err != nil {
		t.Fatalf("carol's local join: %v", err)
	}
	msg := sendText(t, b, roomID, bob, "first")
	evs, _, err := b.HS.Rooms.LocalEventsAfter(ctx, 0, 1000)
	if err != nil {
		t.Fatal(err)
	}
	var sent []string
	for _, ev := range evs {
		var e struct {
			Type     string `json:"type"`
			StateKey string `json:"state_key"`
		}
		_ = json.Unmarshal(ev.JSON, &e)
		sent = append(sent, e.Type+" "+e.StateKey+" -> "+strings.Join(ev.Destinations, ","))
	}
	want := []string{"m.room.member " + carol + " -> " + a.Name, "m.room.message  -> " + a.Name}
	if strings.Join(sent, "\n") != strings.Join(want, "\n") {
		t.Fatalf("B queues:\n%s\nwant:\n%s", strings.Join(sent, "\n"), strings.Join(want, "\n"))
	}
	eventually(t, "A to receive bob's message", func() bool { return hasEvent(a, alice, msg) })
}
