package federationapi_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/tidwall/gjson"

	"github.com/myelin-chat/myelin/internal/mxerr"
	"github.com/myelin-chat/myelin/internal/signing"
	"github.com/myelin-chat/myelin/roomserver"
)

// fakePolicyServer is a policy server run with the network's fakeServer:
// POST /_matrix/policy/v1/sign signs (with its policy key, not its
// federation key), refuses with 400 M_FORBIDDEN, or drops the
// connection ("down"), by mode; it records the event types it was asked
// for and the X-Matrix origins of the requests.
type fakePolicyServer struct {
	name      string
	fedKey    *signing.Key // published at /_matrix/key/v2/server
	policyKey *signing.Key // in m.room.policy
	mu        sync.Mutex
	mode      string   // guarded by mu
	asked     []string // guarded by mu
	origins   []string // guarded by mu
}

const policyRefusal = "The message appears to contain possible spam"

func startPolicyServer(t *testing.T, n *network) *fakePolicyServer {
	ps := &fakePolicyServer{mode: "sign"}
	var err error
	if ps.policyKey, err = signing.Generate(); err != nil {
		t.Fatal(err)
	}
	ps.name, ps.fedKey = n.fakeServer(t, func(name string, mux *http.ServeMux) {
		mux.HandleFunc("POST /_matrix/policy/v1/sign", func(w http.ResponseWriter, r *http.Request) {
			body, _ := io.ReadAll(r.Body)
			ps.mu.Lock()
			mode := ps.mode
			ps.asked = append(ps.asked, gjson.GetBytes(body, "type").Str)
			auth := r.Header.Get("Authorization")
			origin := ""
			if i := strings.Index(auth, `origin="`); strings.HasPrefix(auth, "X-Matrix ") && i >= 0 {
				origin, _, _ = strings.Cut(auth[i+len(`origin="`):], `"`)
			}
			ps.origins = append(ps.origins, origin)
			ps.mu.Unlock()
			w.Header().Set("Content-Type", "application/json")
			switch mode {
			case "refuse":
				w.WriteHeader(http.StatusBadRequest)
				_, _ = w.Write(mustJSON(map[string]string{"errcode": "M_FORBIDDEN", "error": policyRefusal}))
				return
			case "down":
				if conn, _, err := http.NewResponseController(w).Hijack(); err == nil {
					_ = conn.Close()
				}
				return
			}
			redacted, err := gomatrixserverlib.MustGetRoomVersion("12").RedactEventJSON(body)
			if err != nil {
				w.WriteHeader(http.StatusBadRequest)
				return
			}
			signed, err := gomatrixserverlib.SignJSON(name, "ed25519:policy_server", ps.policyKey.PrivateKey, redacted)
			if err != nil {
				w.WriteHeader(http.StatusInternalServerError)
				return
			}
			pad := ""
			if mode == "huge" {
				// A valid signature in an answer past any sane size.
				pad = `,"pad":{"pad":"` + strings.Repeat("A", 70<<10) + `"}`
			}
			_, _ = w.Write([]byte(`{"` + name + `":` + gjson.GetBytes(signed, "signatures."+gjson.Escape(name)).Raw + pad + `}`))
		})
		mux.HandleFunc("PUT /_matrix/federation/v1/send/", func(w http.ResponseWriter, r *http.Request) {
			_, _ = w.Write([]byte(`{"pdus":{}}`))
		})
	})
	return ps
}

func (ps *fakePolicyServer) set(mode string) {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	ps.mode, ps.asked, ps.origins = mode, nil, nil
}

func (ps *fakePolicyServer) requests() (asked, origins []string) {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	return slices.Clone(ps.asked), slices.Clone(ps.origins)
}

// TestPolicyServerOverFederation: a room on A names a policy server (a
// fake remote server with a joined member). A asks it, with a signed
// request, to sign alice's message and stores the signature with the
// event; a refusal reaches the sender verbatim and an unreachable policy
// server fails the send, storing nothing either way, and is not asked
// again during its failure backoff; the m.room.policy
// event itself is not sent for signing. A federation message (/send)
// without the policy server's signature is soft-failed when the policy
// server refuses it, one with a valid signature is accepted.
// Spec: server-server-api, "Policy Servers".
func TestPolicyServerOverFederation(t *testing.T) {
	t.Parallel()
	forEachEngine(t, func(t *testing.T, n *network) {
		ctx := context.Background()
		a := n.start()
		alice := a.user("alice")
		roomID := publicRoom(t, a, alice)
		ps := startPolicyServer(t, n)
		mod := "@mod:" + ps.name

		join := buildPDU(t, a, roomID, mod, "m.room.member", &mod, map[string]string{"membership": "join"}, ps.name, ps.fedKey, nil)
		status, body := n.request(a, ps.name, ps.fedKey, a.Name, http.MethodPut,
			"/_matrix/federation/v2/send_join/"+pathEscape(roomID)+"/"+pathEscape(join.EventID()), json.RawMessage(join.JSON()))
		if status != http.StatusOK {
			t.Fatalf("send_join of the policy server's member: %d %s", status, body)
		}
		// Myelin is not a policy server: the endpoint is unsupported.
		// Spec: server-server-api, "Unsupported endpoints".
		status, body = n.request(a, ps.name, ps.fedKey, a.Name, http.MethodPost, "/_matrix/policy/v1/sign", json.RawMessage(join.JSON()))
		if status != http.StatusNotFound || gjson.GetBytes(body, "errcode").Str != "M_UNRECOGNIZED" {
			t.Fatalf("POST /_matrix/policy/v1/sign to Myelin: %d %s, want 404 M_UNRECOGNIZED", status, body)
		}
		ps.set("refuse")
		if _, err := a.HS.Rooms.SendEvent(ctx, roomserver.SendEventRequest{RoomID: roomID, Sender: alice, Type: "m.room.policy", StateKey: ptr(""),
			Content: mustJSON(map[string]any{"via": ps.name, "public_keys": map[string]string{"ed25519": ps.policyKey.PublicBase64()}})}); err != nil {
			t.Fatalf("setting m.room.policy: %v", err)
		}
		if asked, _ := ps.requests(); len(asked) != 0 {
			t.Fatalf("m.room.policy was sent for signing: %v", asked)
		}

		ps.set("sign")
		id := sendText(t, a, roomID, alice, "hello")
		if asked, origins := ps.requests(); !slices.Equal(asked, []string{"m.room.message"}) || !slices.Equal(origins, []string{a.Name}) {
			t.Fatalf("policy server asked for %v by %v, want one m.room.message signed by %s", asked, origins, a.Name)
		}
		ev, _, err := a.HS.Rooms.FederationEvent(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		sigs := gjson.GetBytes(ev.JSON, "signatures")
		if !sigs.Get(gjson.Escape(ps.name)+".ed25519:policy_server").Exists() || !sigs.Get(gjson.Escape(a.Name)).Exists() {
			t.Fatalf("stored event's signatures %s lack the policy server's or A's own", sigs.Raw)
		}

		ext, err := a.HS.Rooms.Extremities(ctx, roomID)
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range []struct {
			mode   string
			code   mxerr.Code
			status int
			text   string
		}{
			{"refuse", mxerr.Forbidden, http.StatusBadRequest, policyRefusal},
			{"huge", mxerr.Unknown, http.StatusBadGateway, ""},
		} {
			ps.set(c.mode)
			_, err := a.HS.Rooms.SendEvent(ctx, roomserver.SendEventRequest{RoomID: roomID, Sender: alice, Type: "m.room.message",
				Content: mustJSON(map[string]string{"msgtype": "m.text", "body": c.mode})})
			e, ok := mxerr.As(err)
			if !ok || e.Code != c.code || e.Status() != c.status || (c.text != "" && e.Message != c.text) {
				t.Fatalf("%s: send answered %v, want %d %s %q", c.mode, err, c.status, c.code, c.text)
			}
			if now, err := a.HS.Rooms.Extremities(ctx, roomID); err != nil || !slices.Equal(now, ext) {
				t.Fatalf("%s: extremities %v -> %v (%v): the refused event was stored", c.mode, ext, now, err)
			}
		}

		// Incoming, from the policy server's own member.
		ps.set("refuse")
		unsigned := buildPDU(t, a, roomID, mod, "m.room.message", nil, map[string]string{"msgtype": "m.text", "body": "unsigned"}, ps.name, ps.fedKey, nil)
		signed := buildPDU(t, a, roomID, mod, "m.room.message", nil, map[string]string{"msgtype": "m.text", "body": "signed"}, ps.name, ps.fedKey, nil)
		psSig, err := gomatrixserverlib.SignJSON(ps.name, "ed25519:policy_server", ps.policyKey.PrivateKey, mustRedact(t, gomatrixserverlib.MustGetRoomVersion("12"), signed.JSON()))
		if err != nil {
			t.Fatal(err)
		}
		var withSig map[string]any
		_ = json.Unmarshal(signed.JSON(), &withSig)
		withSig["signatures"].(map[string]any)[ps.name].(map[string]any)["ed25519:policy_server"] = gjson.GetBytes(psSig, "signatures."+gjson.Escape(ps.name)+".ed25519:policy_server").Str
		txn := map[string]any{"origin": ps.name, "origin_server_ts": time.Now().UnixMilli(),
			"pdus": []json.RawMessage{unsigned.JSON(), mustJSON(withSig)}}
		status, body = n.request(a, ps.name, ps.fedKey, a.Name, http.MethodPut, "/_matrix/federation/v1/send/policy1", txn)
		if status != http.StatusOK {
			t.Fatalf("send: %d %s", status, body)
		}
		var resp sendResponse
		if err := json.Unmarshal(body, &resp); err != nil {
			t.Fatal(err)
		}
		for _, id := range []string{unsigned.EventID(), signed.EventID()} {
			if r, ok := resp.PDUs[id]; !ok || r.Error != "" {
				t.Errorf("PDU %s answered %+v (present %v), want no error", id, r, ok)
			}
		}
		var inTimeline []string
		for _, e := range timeline(t, a, alice, roomID) {
			inTimeline = append(inTimeline, e.EventID)
		}
		if slices.Contains(inTimeline, unsigned.EventID()) {
			t.Errorf("the event the policy server did not sign is in the timeline (not soft-failed)")
		}
		if !slices.Contains(inTimeline, signed.EventID()) {
			t.Errorf("the event with the policy server's signature is not in the timeline")
		}
		if unknown, err := a.HS.Rooms.UnknownEvents(ctx, []string{unsigned.EventID()}); err != nil || len(unknown) != 0 || isRejected(a, unsigned.EventID()) {
			t.Errorf("the unsigned event was not stored soft-failed: unknown %v %v", unknown, err)
		}
		if asked, _ := ps.requests(); !slices.Equal(asked, []string{"m.room.message"}) {
			t.Errorf("policy server asked for %v, want only the unsigned message, once", asked)
		}

		// Unreachable (the connection dropped): the send fails with 502
		// M_UNKNOWN, and the policy server is not asked again during its
		// backoff, even once it is back (roomserver/policy_backoff.go).
		ext, err = a.HS.Rooms.Extremities(ctx, roomID)
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range []struct {
			mode  string
			asked []string
		}{{"down", []string{"m.room.message"}}, {"sign", nil}} {
			ps.set(c.mode)
			_, err := a.HS.Rooms.SendEvent(ctx, roomserver.SendEventRequest{RoomID: roomID, Sender: alice, Type: "m.room.message",
				Content: mustJSON(map[string]string{"msgtype": "m.text", "body": c.mode})})
			if e, ok := mxerr.As(err); !ok || e.Code != mxerr.Unknown || e.Status() != http.StatusBadGateway {
				t.Fatalf("%s: send answered %v, want 502 M_UNKNOWN", c.mode, err)
			}
			if asked, _ := ps.requests(); !slices.Equal(asked, c.asked) {
				t.Fatalf("%s: policy server asked for %v, want %v", c.mode, asked, c.asked)
			}
			if now, err := a.HS.Rooms.Extremities(ctx, roomID); err != nil || !slices.Equal(now, ext) {
				t.Fatalf("%s: extremities %v -> %v (%v): the refused event was stored", c.mode, ext, now, err)
			}
		}
	})
}

// TestPolicyServerRestrictedSendJoin: a restricted-room join another
// server sends with one of A's users as authoriser is signed by A and,
// the room using a policy server, by the policy server when A stores it;
// send_join answers the event as stored, with both signatures (partial
// and full answers, the second a duplicate).
// Spec: server-server-api, "PUT /_matrix/federation/v2/send_join" (the
// event, signed by the resident server, in the answer).
func TestPolicyServerRestrictedSendJoin(t *testing.T) {
	t.Parallel()
	forEachEngine(t, func(t *testing.T, n *network) {
		ctx := context.Background()
		a := n.start()
		alice := a.user("alice")
		ps := startPolicyServer(t, n)
		mod, joiner := "@mod:"+ps.name, "@joiner:"+ps.name
		allowed := publicRoom(t, a, alice)
		roomID := publicRoom(t, a, alice)
		for _, j := range []struct{ room, user string }{{roomID, mod}, {allowed, joiner}} {
			join := buildPDU(t, a, j.room, j.user, "m.room.member", &j.user, map[string]string{"membership": "join"}, ps.name, ps.fedKey, nil)
			status, body := n.request(a, ps.name, ps.fedKey, a.Name, http.MethodPut,
				"/_matrix/federation/v2/send_join/"+pathEscape(j.room)+"/"+pathEscape(join.EventID()), json.RawMessage(join.JSON()))
			if status != http.StatusOK {
				t.Fatalf("send_join of %s: %d %s", j.user, status, body)
			}
		}
		for _, ev := range []struct {
			typ     string
			content any
		}{
			{"m.room.join_rules", map[string]any{"join_rule": "restricted", "allow": []any{map[string]string{"type": "m.room_membership", "room_id": allowed}}}},
			{"m.room.policy", map[string]any{"via": ps.name, "public_keys": map[string]string{"ed25519": ps.policyKey.PublicBase64()}}},
		} {
			if _, err := a.HS.Rooms.SendEvent(ctx, roomserver.SendEventRequest{RoomID: roomID, Sender: alice, Type: ev.typ, StateKey: ptr(""),
				Content: mustJSON(ev.content)}); err != nil {
				t.Fatalf("%s: %v", ev.typ, err)
			}
		}
		ps.set("sign")
		join := buildPDU(t, a, roomID, joiner, "m.room.member", &joiner,
			map[string]string{"membership": "join", "join_authorised_via_users_server": alice}, ps.name, ps.fedKey, nil)
		for _, query := range []string{"?omit_members=true", ""} {
			status, body := n.request(a, ps.name, ps.fedKey, a.Name, http.MethodPut,
				"/_matrix/federation/v2/send_join/"+pathEscape(roomID)+"/"+pathEscape(join.EventID())+query, json.RawMessage(join.JSON()))
			if status != http.StatusOK {
				t.Fatalf("restricted send_join%s: %d %s", query, status, body)
			}
			answered := gjson.GetBytes(body, "event")
			sigs := answered.Get("signatures")
			if !sigs.Get(gjson.Escape(ps.name)+".ed25519:policy_server").Exists() || !sigs.Get(gjson.Escape(a.Name)).Exists() {
				t.Fatalf("send_join%s answered the join with signatures %s: want A's and the policy server's", query, sigs.Raw)
			}
			stored, _, err := a.HS.Rooms.FederationEvent(ctx, join.EventID())
			if err != nil {
				t.Fatal(err)
			}
			if answered.Raw != string(stored.JSON) {
				t.Fatalf("send_join%s answered\n%s\nstored\n%s", query, answered.Raw, stored.JSON)
			}
		}
		if asked, _ := ps.requests(); !slices.Equal(asked, []string{"m.room.member"}) {
			t.Fatalf("policy server asked for %v, want the join once", asked)
		}
	})
}
