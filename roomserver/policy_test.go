package roomserver

import (
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"errors"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/tidwall/gjson"
	"github.com/tidwall/sjson"

	"github.com/myelin-chat/myelin/internal/mxerr"
	"github.com/myelin-chat/myelin/storage"
	"github.com/myelin-chat/myelin/storage/storagetest"
)

const (
	policyServer = "policy.example"
	policyMod    = "@mod:policy.example"
)

// fakePolicySigner answers PolicySign as a policy server would, by mode:
// "sign" (with key), "badsig" (with another key), "refuse" (400
// M_FORBIDDEN) or "down" (no answer). It records the events it was asked
// to sign.
type fakePolicySigner struct {
	key   ed25519.PrivateKey
	other ed25519.PrivateKey
	mu    sync.Mutex
	mode  string   // guarded by mu
	asked []string // guarded by mu; "type/state_key" or "type"
}

const policyRefusalText = "The message appears to contain possible spam"

func newFakePolicySigner() *fakePolicySigner {
	_, key, _ := ed25519.GenerateKey(nil)
	_, other, _ := ed25519.GenerateKey(nil)
	return &fakePolicySigner{key: key, other: other, mode: "sign"}
}

func (f *fakePolicySigner) set(mode string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.mode, f.asked = mode, nil
}

func (f *fakePolicySigner) askedFor() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.asked)
}

func (f *fakePolicySigner) publicKey() string {
	return base64.RawStdEncoding.EncodeToString(f.key.Public().(ed25519.PublicKey))
}

// signPolicy returns the policy server's signature of a room v12 event
// made with key.
func signPolicy(key ed25519.PrivateKey, event []byte) (string, error) {
	redacted, err := gomatrixserverlib.MustGetRoomVersion("12").RedactEventJSON(event)
	if err != nil {
		return "", err
	}
	signed, err := gomatrixserverlib.SignJSON(policyServer, policyKeyID, key, redacted)
	if err != nil {
		return "", err
	}
	return gjson.GetBytes(signed, "signatures."+gjson.Escape(policyServer)+"."+gjson.Escape(policyKeyID)).Str, nil
}

func (f *fakePolicySigner) PolicySign(ctx context.Context, server string, event json.RawMessage) (map[string]map[string]string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	what := gjson.GetBytes(event, "type").Str
	if sk := gjson.GetBytes(event, "state_key"); sk.Exists() {
		what += "/" + sk.Str
	}
	f.asked = append(f.asked, what)
	if server != policyServer {
		return nil, errors.New("asked the wrong server " + server)
	}
	key := f.key
	switch f.mode {
	case "refuse":
		return nil, &PolicyRefusal{Server: server, Status: http.StatusBadRequest, Code: "M_FORBIDDEN", Message: policyRefusalText}
	case "down":
		return nil, errors.New("dial tcp: connection refused")
	case "badsig":
		key = f.other
	case "huge":
		// A hostile policy server: a bogus signature far past any limit.
		return map[string]map[string]string{server: {policyKeyID: strings.Repeat("A", 70000)}}, nil
	}
	sig, err := signPolicy(key, event)
	if err != nil {
		return nil, err
	}
	return map[string]map[string]string{server: {policyKeyID: sig}}, nil
}

// remoteEvent builds an event of a remote sender on the room's current
// state and forward extremities (the roomserver trusts its callers to
// have checked the origin's signature).
func remoteEvent(t testing.TB, s *Server, roomID, sender, eventType string, stateKey *string, content string) gomatrixserverlib.PDU {
	t.Helper()
	ctx := context.Background()
	impl := gomatrixserverlib.MustGetRoomVersion("12")
	evs, err := s.CurrentState(ctx, alice, roomID)
	if err != nil {
		t.Fatal(err)
	}
	var state []gomatrixserverlib.PDU
	for _, e := range evs {
		pdu, err := impl.NewEventFromTrustedJSONWithEventID(e.EventID, e.JSON, false)
		if err != nil {
			t.Fatal(err)
		}
		state = append(state, pdu)
	}
	ext, err := s.Extremities(ctx, roomID)
	if err != nil {
		t.Fatal(err)
	}
	var depth int64
	for _, id := range ext {
		e, _, err := s.FederationEvent(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		depth = max(depth, e.Depth)
	}
	proto := &gomatrixserverlib.ProtoEvent{SenderID: sender, RoomID: roomID, Type: eventType, StateKey: stateKey,
		Content: []byte(content), PrevEvents: ext, Depth: depth + 1, Version: impl}
	eb := impl.NewEventBuilderFromProtoEvent(proto)
	provider, err := gomatrixserverlib.NewAuthEvents(state)
	if err != nil {
		t.Fatal(err)
	}
	if err := eb.AddAuthEvents(provider); err != nil {
		t.Fatal(err)
	}
	_, key, _ := ed25519.GenerateKey(nil)
	pdu, err := eb.Build(time.Now(), "policy.example", "ed25519:remote", key)
	if err != nil {
		t.Fatal(err)
	}
	return pdu
}

func mustInput(t testing.TB, s *Server, raw []byte) *InputEventResponse {
	t.Helper()
	r, err := s.InputEvent(context.Background(), InputEventRequest{RoomVersion: "12", JSON: raw})
	if err != nil {
		t.Fatalf("InputEvent: %v", err)
	}
	return r
}

// withPolicySignature returns pdu's JSON with a policy signature made
// with key added.
func withPolicySignature(t testing.TB, pdu gomatrixserverlib.PDU, key ed25519.PrivateKey) []byte {
	t.Helper()
	sig, err := signPolicy(key, pdu.JSON())
	if err != nil {
		t.Fatal(err)
	}
	var ev map[string]any
	if err := json.Unmarshal(pdu.JSON(), &ev); err != nil {
		t.Fatal(err)
	}
	sigs := ev["signatures"].(map[string]any)
	sigs[policyServer].(map[string]any)[policyKeyID] = sig
	out, _ := json.Marshal(ev)
	return out
}

// storedSignature is the policy server's signature on the stored event.
func storedSignature(t testing.TB, s *Server, eventID string) string {
	t.Helper()
	e, _, err := s.FederationEvent(context.Background(), eventID)
	if err != nil {
		t.Fatal(err)
	}
	return gjson.GetBytes(e.JSON, "signatures."+gjson.Escape(policyServer)+"."+gjson.Escape(policyKeyID)).Str
}

// TestPolicyServerOutgoing: local events of a room that uses a policy
// server are signed by it before they are stored, the m.room.policy
// state event itself excepted; a room that does not use one (no
// m.room.policy, malformed content, or no joined member of its via
// server) asks nothing; a refusal, an unreachable policy server or a
// bad signature fails the send and stores nothing.
// Spec: server-server-api, "Policy Servers".
func TestPolicyServerOutgoing(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		s := newTestServer(t, db)
		ps := newFakePolicySigner()
		s.SetPolicySigner(ps)
		ctx := context.Background()
		roomID := mustCreate(t, s, CreateRoomRequest{Creator: alice, Preset: "public_chat"}).RoomID
		ps.set("refuse") // anything asked fails, so every unasked send below proves it was not asked
		msg := `{"msgtype":"m.text","body":"hello"}`
		mustSend(t, s, roomID, alice, "m.room.message", nil, msg)

		// Not (yet) used: the via server has no joined member.
		valid := `{"via":"` + policyServer + `","public_keys":{"ed25519":"` + ps.publicKey() + `"}}`
		mustSend(t, s, roomID, alice, "m.room.policy", ptr(""), valid)
		mustSend(t, s, roomID, alice, "m.room.message", nil, msg)
		if r := mustInput(t, s, remoteEvent(t, s, roomID, policyMod, "m.room.member", ptr(policyMod), `{"membership":"join"}`).JSON()); r.Outcome != Accepted {
			t.Fatalf("policy server's join before the room used it: %s %s", r.Outcome, r.Reason)
		}
		// Malformed content: not used either.
		for _, bad := range []string{
			`{"via":"` + policyServer + `"}`,
			`{"via":"` + policyServer + `","public_keys":{"curve":"x"}}`,
			`{"via":"` + policyServer + `","public_keys":{"ed25519":7}}`,
			`{"via":7,"public_keys":{"ed25519":"` + ps.publicKey() + `"}}`,
			`{"via":"` + policyServer + `","public_keys":"` + ps.publicKey() + `"}`,
		} {
			mustSend(t, s, roomID, alice, "m.room.policy", ptr(""), bad)
			mustSend(t, s, roomID, alice, "m.room.message", nil, msg)
		}
		if got := ps.askedFor(); len(got) != 0 {
			t.Fatalf("room not using a policy server asked it for %v", got)
		}

		// Enabled (the m.room.policy event itself is never asked).
		mustSend(t, s, roomID, alice, "m.room.policy", ptr(""), valid)
		if got := ps.askedFor(); len(got) != 0 {
			t.Fatalf("the m.room.policy state event was sent for signing: %v", got)
		}
		before, err := s.Extremities(ctx, roomID)
		if err != nil {
			t.Fatal(err)
		}
		events := countRows(t, db, "roomserver_events")
		for _, c := range []struct {
			mode   string
			code   mxerr.Code
			status int
			text   string
		}{
			{"refuse", "M_FORBIDDEN", http.StatusBadRequest, policyRefusalText},
			{"down", mxerr.Unknown, http.StatusBadGateway, ""},
			{"badsig", mxerr.Unknown, http.StatusBadGateway, ""},
		} {
			ps.set(c.mode)
			_, err := s.SendEvent(ctx, SendEventRequest{RoomID: roomID, Sender: alice, Type: "m.room.message", Content: json.RawMessage(msg),
				TxnID: &TxnID{DeviceID: "D", TxnID: c.mode}})
			e, ok := mxerr.As(err)
			if !ok || e.Code != c.code || e.Status() != c.status || (c.text != "" && e.Message != c.text) {
				t.Fatalf("%s: send answered %v, want %d %s %q", c.mode, err, c.status, c.code, c.text)
			}
			if got := ps.askedFor(); !slices.Equal(got, []string{"m.room.message"}) {
				t.Fatalf("%s: asked for %v", c.mode, got)
			}
			_, err = s.Join(ctx, MembershipRequest{RoomID: roomID, Sender: bob})
			if e, ok := mxerr.As(err); !ok || e.Code != c.code {
				t.Fatalf("%s: join answered %v, want %s", c.mode, err, c.code)
			}
		}
		after, err := s.Extremities(ctx, roomID)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(before, after) || countRows(t, db, "roomserver_events") != events || countTxnRows(t, db) != 0 {
			t.Fatalf("a send the policy server did not sign was stored: extremities %v -> %v", before, after)
		}

		// A user can always leave: with the policy server down the leave
		// goes out without its signature; a refusal still stops it.
		ps.set("sign")
		if _, err := s.Join(ctx, MembershipRequest{RoomID: roomID, Sender: bob}); err != nil {
			t.Fatal(err)
		}
		ps.set("refuse")
		if _, err := s.Leave(ctx, MembershipRequest{RoomID: roomID, Sender: bob}); !mxerr.Is(err, mxerr.Forbidden) {
			t.Fatalf("leave refused by the policy server: %v, want M_FORBIDDEN", err)
		}
		ps.set("down")
		left, err := s.Leave(ctx, MembershipRequest{RoomID: roomID, Sender: bob})
		if err != nil {
			t.Fatalf("leave with the policy server down: %v", err)
		}
		if storedSignature(t, s, left.EventID) != "" {
			t.Fatalf("the leave has a policy signature")
		}

		ps.set("sign")
		id := mustSend(t, s, roomID, alice, "m.room.message", nil, msg)
		if storedSignature(t, s, id) == "" {
			t.Fatalf("the sent event has no policy server signature")
		}
		// An event that fits only without the policy signature is too large.
		pad := strings.Repeat("x", 1000)
		padded := mustSend(t, s, roomID, alice, "m.room.message", nil, `{"msgtype":"m.text","body":"`+pad+`"}`)
		e, _, err := s.FederationEvent(ctx, padded)
		if err != nil {
			t.Fatal(err)
		}
		unsigned, err := sjson.DeleteBytes(e.JSON, "signatures."+gjson.Escape(policyServer))
		if err != nil {
			t.Fatal(err)
		}
		overhead := len(unsigned) - len(pad)
		ps.set("sign")
		pad = strings.Repeat("x", maxEventBytes-overhead-10)
		if _, err := s.SendEvent(ctx, SendEventRequest{RoomID: roomID, Sender: alice, Type: "m.room.message",
			Content: json.RawMessage(`{"msgtype":"m.text","body":"` + pad + `"}`)}); !mxerr.Is(err, mxerr.TooLarge) {
			t.Fatalf("event over the limit with its policy signature: %v, want M_TOO_LARGE", err)
		}
		ps.set("sign")
		mustSend(t, s, roomID, alice, "m.room.policy", ptr("other"), `{}`)
		if _, err := s.Join(ctx, MembershipRequest{RoomID: roomID, Sender: bob}); err != nil {
			t.Fatal(err)
		}
		remote := "@carol:elsewhere.example"
		invite, err := s.BuildRemoteInvite(ctx, MembershipRequest{RoomID: roomID, Sender: alice, Target: remote})
		if err != nil {
			t.Fatal(err)
		}
		if !gjson.GetBytes(invite.JSON, "signatures."+gjson.Escape(policyServer)+"."+gjson.Escape(policyKeyID)).Exists() {
			t.Fatalf("invite for another server lacks the policy signature: %s", invite.JSON)
		}
		want := []string{"m.room.policy/other", "m.room.member/" + bob, "m.room.member/" + remote}
		if got := ps.askedFor(); !slices.Equal(got, want) {
			t.Fatalf("asked for %v, want %v", got, want)
		}

		// The policy server's member leaves: the room no longer uses it.
		if r := mustInput(t, s, remoteEvent(t, s, roomID, policyMod, "m.room.member", ptr(policyMod), `{"membership":"leave"}`).JSON()); r.Outcome != Accepted {
			t.Fatalf("policy server's leave: %s %s", r.Outcome, r.Reason)
		}
		ps.set("refuse")
		mustSend(t, s, roomID, alice, "m.room.message", nil, msg)
		if got := ps.askedFor(); len(got) != 0 {
			t.Fatalf("asked for %v after the policy server left", got)
		}
	})
}

// TestPolicyServerIncoming: a federation event of a room that uses a
// policy server is accepted with the policy server's valid signature
// (nothing asked); without one, or with an invalid one, the policy
// server is asked once, and the event is soft-failed unless it signs.
// The m.room.policy state event needs no signature.
// Spec: server-server-api, "Validating Policy Server signatures".
func TestPolicyServerIncoming(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		s := newTestServer(t, db)
		ps := newFakePolicySigner()
		s.SetPolicySigner(ps)
		roomID := mustCreate(t, s, CreateRoomRequest{Creator: alice, Preset: "public_chat"}).RoomID
		if r := mustInput(t, s, remoteEvent(t, s, roomID, policyMod, "m.room.member", ptr(policyMod), `{"membership":"join"}`).JSON()); r.Outcome != Accepted {
			t.Fatalf("join: %s %s", r.Outcome, r.Reason)
		}
		msg := `{"msgtype":"m.text","body":"from afar"}`
		// Not yet used: nothing asked, accepted without a signature.
		ps.set("refuse")
		if r := mustInput(t, s, remoteEvent(t, s, roomID, policyMod, "m.room.message", nil, msg).JSON()); r.Outcome != Accepted {
			t.Fatalf("message before the room used a policy server: %s %s", r.Outcome, r.Reason)
		}
		valid := `{"via":"` + policyServer + `","public_keys":{"ed25519":"` + ps.publicKey() + `"}}`
		mustSend(t, s, roomID, alice, "m.room.power_levels", ptr(""), `{"users":{"`+policyMod+`":100}}`)
		if r := mustInput(t, s, remoteEvent(t, s, roomID, policyMod, "m.room.policy", ptr(""), valid).JSON()); r.Outcome != Accepted {
			t.Fatalf("remote m.room.policy without a policy signature: %s %s", r.Outcome, r.Reason)
		}
		if got := ps.askedFor(); len(got) != 0 {
			t.Fatalf("asked for %v", got)
		}

		for _, c := range []struct {
			name  string
			mode  string
			sign  func(gomatrixserverlib.PDU) []byte
			want  InputOutcome
			asked int
		}{
			{"good signature", "refuse", func(p gomatrixserverlib.PDU) []byte { return withPolicySignature(t, p, ps.key) }, Accepted, 0},
			{"no signature, refused", "refuse", func(p gomatrixserverlib.PDU) []byte { return p.JSON() }, SoftFailed, 1},
			{"no signature, policy server down", "down", func(p gomatrixserverlib.PDU) []byte { return p.JSON() }, SoftFailed, 1},
			{"bad signature, refused", "refuse", func(p gomatrixserverlib.PDU) []byte { return withPolicySignature(t, p, ps.other) }, SoftFailed, 1},
			{"bad signature, signed again badly", "badsig", func(p gomatrixserverlib.PDU) []byte { return withPolicySignature(t, p, ps.other) }, SoftFailed, 1},
			{"no signature, signed badly", "badsig", func(p gomatrixserverlib.PDU) []byte { return p.JSON() }, SoftFailed, 1},
			{"no signature, huge bogus signature", "huge", func(p gomatrixserverlib.PDU) []byte { return p.JSON() }, SoftFailed, 1},
			{"bad signature, signed again", "sign", func(p gomatrixserverlib.PDU) []byte { return withPolicySignature(t, p, ps.other) }, Accepted, 1},
			{"no signature, signed", "sign", func(p gomatrixserverlib.PDU) []byte { return p.JSON() }, Accepted, 1},
		} {
			ps.set(c.mode)
			// A body of its own: soft-failed events leave the extremities
			// as they were, and the same event would be a duplicate.
			pdu := remoteEvent(t, s, roomID, policyMod, "m.room.message", nil, `{"msgtype":"m.text","body":"`+c.name+`"}`)
			sent := c.sign(pdu)
			r := mustInput(t, s, sent)
			if r.Outcome != c.want {
				t.Fatalf("%s: %s %s, want %s", c.name, r.Outcome, r.Reason, c.want)
			}
			// A policy server's invalid answer is not kept on the event:
			// it is stored with the signature it arrived with.
			if sentSig := gjson.GetBytes(sent, "signatures."+gjson.Escape(policyServer)+"."+gjson.Escape(policyKeyID)).Str; c.want == SoftFailed && storedSignature(t, s, pdu.EventID()) != sentSig {
				t.Fatalf("%s: stored with the policy server's invalid signature", c.name)
			}
			if got := ps.askedFor(); len(got) != c.asked {
				t.Fatalf("%s: asked %d times (%v), want %d", c.name, len(got), got, c.asked)
			}
			if c.want == Accepted && storedSignature(t, s, pdu.EventID()) == "" {
				t.Fatalf("%s: stored without the policy signature", c.name)
			}
		}

		// The same through InputWithState (a gap's far side).
		for _, c := range []struct {
			mode string
			want InputOutcome
		}{{"refuse", SoftFailed}, {"badsig", SoftFailed}, {"huge", SoftFailed}, {"sign", Accepted}} {
			ps.set(c.mode)
			pdu := remoteEvent(t, s, roomID, policyMod, "m.room.message", nil, `{"msgtype":"m.text","body":"gap, `+c.mode+`"}`)
			r, err := s.InputWithState(context.Background(), InputWithStateRequest{RoomVersion: "12", JSON: pdu.JSON()})
			if err != nil || r.Outcome != c.want {
				t.Fatalf("InputWithState, policy server %s: %+v %v, want %s", c.mode, r, err, c.want)
			}
			if got := ps.askedFor(); len(got) != 1 {
				t.Fatalf("InputWithState, policy server %s: asked %v, want once", c.mode, got)
			}
			if c.want == SoftFailed && storedSignature(t, s, pdu.EventID()) != "" {
				t.Fatalf("InputWithState, policy server %s: stored with its invalid signature", c.mode)
			}
		}
	})
}

// TestPolicyServerPartialState: in a room joined with partial state, the
// state lacks the policy server's member; the servers send_join named
// stand in for the members until the resync, so a send is signed when
// the policy server is among them, and not when it is not.
func TestPolicyServerPartialState(t *testing.T) {
	const (
		remoteAlice = "@alice:other.example"
		carol       = "@carol:test.local"
	)
	for _, c := range []struct {
		name    string
		servers []string
		asked   int
	}{
		{"policy server named by send_join", []string{"other.example", policyServer}, 1},
		{"policy server not named", []string{"other.example"}, 0},
	} {
		t.Run(c.name, func(t *testing.T) {
			storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
				ctx := context.Background()
				s := newTestServer(t, db)
				ps := newFakePolicySigner()
				s.SetPolicySigner(ps)
				d := newDAG(t, "12")
				d.add("create", remoteAlice, "m.room.create", ptr(""), `{"room_version":"12"}`)
				d.add("alice-join", remoteAlice, "m.room.member", ptr(remoteAlice), `{"membership":"join"}`, "create")
				d.add("pl", remoteAlice, "m.room.power_levels", ptr(""), `{"users":{}}`, "alice-join")
				d.add("jr", remoteAlice, "m.room.join_rules", ptr(""), `{"join_rule":"public"}`, "pl")
				d.add("mod-join", policyMod, "m.room.member", ptr(policyMod), `{"membership":"join"}`, "jr")
				d.add("policy", remoteAlice, "m.room.policy", ptr(""), `{"via":"`+policyServer+`","public_keys":{"ed25519":"`+ps.publicKey()+`"}}`, "mod-join")
				join := d.add("carol-join", carol, "m.room.member", ptr(carol), `{"membership":"join"}`, "policy")
				var state []json.RawMessage
				for _, name := range []string{"create", "alice-join", "pl", "jr", "policy"} { // members omitted
					state = append(state, d.byName[name].JSON())
				}
				if r, err := s.ImportJoinedRoom(ctx, ImportRoomRequest{RoomVersion: "12", Join: join.JSON(), State: state,
					AuthChain: state, PartialState: true, Servers: c.servers}); err != nil || r.Outcome != Accepted {
					t.Fatalf("carol's join: %+v, %v", r, err)
				}
				id := mustSend(t, s, d.roomID, carol, "m.room.message", nil, `{"msgtype":"m.text","body":"hi"}`)
				if got := ps.askedFor(); len(got) != c.asked {
					t.Fatalf("asked for %v, want %d", got, c.asked)
				}
				if signed := storedSignature(t, s, id) != ""; signed != (c.asked == 1) {
					t.Fatalf("message signed: %v", signed)
				}
			})
		})
	}
}

// BenchmarkPolicyOfRoomWithout is what the policy server check costs a
// send in a room without a policy server, once its snapshot's keys are
// remembered (as they are after the send's own auth-event read): a
// lookup in the snapshot key cache, no query.
func BenchmarkPolicyOfRoomWithout(b *testing.B) {
	db := storagetest.OpenSQLite(b)
	s := newTestServer(b, db)
	ctx := context.Background()
	roomID := mustCreate(b, s, CreateRoomRequest{Creator: alice, RoomVersion: "12", Preset: PresetPublicChat}).RoomID
	mustSend(b, s, roomID, alice, "m.room.message", nil, `{"msgtype":"m.text","body":"warm"}`)
	room, err := loadRoom(ctx, db.Reader(), roomID)
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if pol, err := s.policyOf(ctx, db.Reader(), nil, room); err != nil || pol != nil {
			b.Fatal(pol, err)
		}
	}
}

// TestPolicyRefusalClientError: a policy server's refusal reaches the
// client with its errcode only when room_policy lists that errcode for
// POST /_matrix/policy/v1/sign; any other (M_UNKNOWN_TOKEN,
// M_USER_DEACTIVATED, … which would log the client out) becomes
// 502 M_UNKNOWN, keeping the message.
func TestPolicyRefusalClientError(t *testing.T) {
	for _, c := range []struct {
		status     int
		code       string
		wantStatus int
		wantCode   mxerr.Code
	}{
		{400, "M_FORBIDDEN", 400, mxerr.Forbidden},
		{403, "M_FORBIDDEN", 403, mxerr.Forbidden},
		{400, "M_BAD_JSON", 400, mxerr.BadJSON},
		{400, "M_NOT_JSON", 400, mxerr.NotJSON},
		{404, "M_NOT_FOUND", 404, mxerr.NotFound},
		{404, "M_UNRECOGNIZED", 404, mxerr.Unrecognized},
		{429, "M_LIMIT_EXCEEDED", 429, mxerr.LimitExceeded},
		{401, "M_UNKNOWN_TOKEN", 502, mxerr.Unknown},
		{403, "M_UNKNOWN_TOKEN", 502, mxerr.Unknown},
		{403, "M_USER_DEACTIVATED", 502, mxerr.Unknown},
		{401, "M_USER_LOCKED", 502, mxerr.Unknown},
		{400, "M_MISSING_TOKEN", 502, mxerr.Unknown},
		{400, "", 502, mxerr.Unknown},
		{500, "M_FORBIDDEN", 502, mxerr.Unknown},
	} {
		e := (&PolicyRefusal{Server: policyServer, Status: c.status, Code: c.code, Message: policyRefusalText}).clientError()
		if e.Code != c.wantCode || e.Status() != c.wantStatus || e.Message != policyRefusalText {
			t.Errorf("%d %s: client gets %d %s %q, want %d %s %q", c.status, c.code, e.Status(), e.Code, e.Message, c.wantStatus, c.wantCode, policyRefusalText)
		}
	}
}
