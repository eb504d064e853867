package roomserver

import (
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"
	"github.com/tidwall/gjson"
	"github.com/tidwall/sjson"

	"github.com/myelin-chat/myelin/config"
	"github.com/myelin-chat/myelin/internal/edsign"
	"github.com/myelin-chat/myelin/storage"
	"github.com/myelin-chat/myelin/storage/storagetest"
)

// filledSigner returns a signer for key whose pool holds size nonces, so
// that the next size signatures are made with pooled nonces.
func filledSigner(t testing.TB, key ed25519.PrivateKey, size int) *edsign.Signer {
	t.Helper()
	signer, err := edsign.New(key, size)
	if err != nil {
		t.Fatal(err)
	}
	signer.Fill()
	return signer
}

// oneKeyVerifier is a gomatrixserverlib.JSONVerifier that knows one
// server's one key.
type oneKeyVerifier struct {
	server spec.ServerName
	keyID  gomatrixserverlib.KeyID
	public ed25519.PublicKey
}

func (v oneKeyVerifier) VerifyJSONs(_ context.Context, reqs []gomatrixserverlib.VerifyJSONRequest) ([]gomatrixserverlib.VerifyJSONResult, error) {
	results := make([]gomatrixserverlib.VerifyJSONResult, len(reqs))
	for i, req := range reqs {
		if req.ServerName != v.server {
			results[i].Error = fmt.Errorf("no key for %s", req.ServerName)
			continue
		}
		results[i].Error = gomatrixserverlib.VerifyJSON(string(v.server), v.keyID, v.public, req.Message)
	}
	return results, nil
}

// sameButSignature reports (as test errors) how got, made by
// buildSigned, differs from want, made by EventBuilder.Build with the
// same key: the bytes must be equal except for the value of origin's
// keyID signature, which must be another (a pooled random nonce, not
// ed25519.Sign's) and pass gomatrixserverlib's event signature check.
func sameButSignature(t *testing.T, what string, got, want gomatrixserverlib.PDU, origin spec.ServerName, keyID gomatrixserverlib.KeyID, key ed25519.PrivateKey) {
	t.Helper()
	path := "signatures." + gjson.Escape(string(origin)) + "." + gjson.Escape(string(keyID))
	gotSig, wantSig := gjson.GetBytes(got.JSON(), path).Str, gjson.GetBytes(want.JSON(), path).Str
	if raw, err := base64.RawStdEncoding.DecodeString(gotSig); err != nil || len(raw) != ed25519.SignatureSize {
		t.Errorf("%s: signature %q is not 64 bytes of unpadded base64 (%v)\n got %s", what, gotSig, err, got.JSON())
		return
	}
	if gotSig == wantSig {
		t.Errorf("%s: the signature is ed25519.Sign's, not made with a pooled nonce", what)
	}
	if n := strings.Count(string(got.JSON()), `"`+gotSig+`"`); n != 1 {
		t.Errorf("%s: the signature appears %d times in %s", what, n, got.JSON())
	}
	if swapped := strings.Replace(string(got.JSON()), `"`+gotSig+`"`, `"`+wantSig+`"`, 1); swapped != string(want.JSON()) {
		t.Errorf("%s (signature aside):\n got  %s\n want %s", what, got.JSON(), want.JSON())
	}
	verifier := oneKeyVerifier{origin, keyID, key.Public().(ed25519.PublicKey)}
	if err := gomatrixserverlib.VerifyEventSignatures(context.Background(), got, verifier, func(_ spec.RoomID, sender spec.SenderID) (*spec.UserID, error) {
		return spec.NewUserID(string(sender), true)
	}); err != nil {
		t.Errorf("%s: the event's signature does not verify: %v\n%s", what, err, got.JSON())
	}
}

// TestBuildSignedMatchesBuilder: for every room version and a spread of
// event shapes, buildSigned yields exactly the bytes and event ID that
// gomatrixserverlib's EventBuilder.Build yields but for the signature's
// value, which verifies (sameButSignature), or declines so that Build is
// used.
func TestBuildSignedMatchesBuilder(t *testing.T) {
	_, key, err := ed25519.GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	signer := filledSigner(t, key, 1024)
	empty, topic, member := "", "", "@bob:example.org"
	events := []struct {
		name     string
		typ      string
		stateKey *string
		content  string
		redacts  string
	}{
		{"message", "m.room.message", nil, `{"msgtype":"m.text","body":"hello"}`, ""},
		{"escapes and unicode", "m.room.message", nil, `{"body":"<b>&amp;</b> \u2028 \"q\" \\ \u0007 é 😀","msgtype":"m.text","z":{"b":1,"a":[-9007199254740991,9007199254740991]}}`, ""},
		{"unsorted nested content", "m.custom", nil, `{"zeta":{"y":2,"x":1},"alpha":[{"b":null,"a":true}],"mid":"\u00e9"}`, ""},
		{"empty content", "m.custom", nil, `{}`, ""},
		{"state topic", "m.room.topic", &topic, `{"topic":"a topic"}`, ""},
		{"state create-key empty", "m.room.join_rules", &empty, `{"join_rule":"public"}`, ""},
		{"member", "m.room.member", &member, `{"membership":"join","displayname":"Bob ☃"}`, ""},
		{"power levels", "m.room.power_levels", &empty, `{"users":{"@a:example.org":100},"events":{"m.room.name":50},"ban":50}`, ""},
		{"redaction top-level", "m.room.redaction", nil, `{"reason":"spam"}`, "$abc:example.org"},
		{"redaction content", "m.room.redaction", nil, `{"reason":"spam","redacts":"$abc"}`, ""},
		{"weird type", "m.\"quoted\"\u2029", nil, `{"a":"b"}`, ""},
		{"state key with a quote", "m.custom.state", ptr(`a"b\\c`), `{"a":1}`, ""},
		{"state key non-ASCII", "m.custom.state", ptr("é\u2028<&>"), `{"a":1}`, ""},
		{"control character in type", "m.custom\u0001", nil, `{}`, ""},
		{"HTML characters everywhere", "m.<&>", ptr("<&>"), `{"<":"&>"}`, ""},
		{"number out of range", "m.room.message", nil, `{"n":9007199254740992}`, ""},
		{"float", "m.room.message", nil, `{"n":1.5}`, ""},
	}
	versions := everyRoomVersion()
	ts := time.UnixMilli(1_700_000_000_123)
	fast := 0
	for _, v := range versions {
		impl, err := roomVersion(v)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range events {
			for _, roomID := range []string{"!room:example.org", "!AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"} {
				proto := &gomatrixserverlib.ProtoEvent{
					SenderID: "@alice:example.org", RoomID: roomID, Type: e.typ, StateKey: e.stateKey,
					Content: []byte(e.content), Redacts: e.redacts, Depth: 7,
					PrevEvents: []string{"$prev1", "$prev2"},
				}
				eb := impl.NewEventBuilderFromProtoEvent(proto)
				eb.AuthEvents = []string{"$create", "$pl", "$member"}
				want, wantErr := eb.Build(ts, "example.org", "ed25519:k1", key)
				got, gotErr := buildSigned(impl, eb, ts, "example.org", "ed25519:k1", signer)
				if errors.Is(gotErr, errNoFastPath) {
					continue
				}
				if (wantErr == nil) != (gotErr == nil) {
					t.Errorf("v%s %s %s: Build error %v, buildSigned error %v", v, e.name, roomID, wantErr, gotErr)
					continue
				}
				if wantErr != nil {
					continue
				}
				fast++
				sameButSignature(t, fmt.Sprintf("v%s %s %s", v, e.name, roomID), got, want, "example.org", "ed25519:k1", key)
				if got.EventID() != want.EventID() {
					t.Errorf("v%s %s %s: event ID %s, want %s", v, e.name, roomID, got.EventID(), want.EventID())
				}
			}
		}
	}
	// Versions 3 onwards (hash event IDs) must take the fast path.
	if fast < 10*len(events) {
		t.Errorf("only %d events took the fast path", fast)
	}
	if pooled, direct := signer.Counts(); pooled != uint64(fast) || direct != 0 {
		t.Errorf("%d pooled and %d direct signatures for %d fast-path events", pooled, direct, fast)
	}
	// Versions 1 and 2 (random event IDs) must not.
	impl, _ := roomVersion("1")
	eb := impl.NewEventBuilderFromProtoEvent(&gomatrixserverlib.ProtoEvent{SenderID: "@a:example.org", RoomID: "!r:example.org", Type: "m.room.message", Content: []byte(`{}`)})
	if _, err := buildSigned(impl, eb, ts, spec.ServerName("example.org"), "ed25519:k1", signer); !errors.Is(err, errNoFastPath) {
		t.Errorf("room v1: buildSigned error %v, want errNoFastPath", err)
	}
}

// TestCanonicalEventAssembled: canonicalEvent's assembled form (content
// canonicalised alone, members written in order) is byte for byte the
// canonicalisation of the whole marshalled event, with every optional
// member present or absent, and it is used for plain strings.
func TestCanonicalEventAssembled(t *testing.T) {
	impl, err := roomVersion("10")
	if err != nil {
		t.Fatal(err)
	}
	sk := "@bob:example.org"
	empty := ""
	for i, ev := range []fastEvent{
		{AuthEvents: []string{"$a", "$b"}, Content: []byte(`{"z":1,"a":{"y":[3,{"k":"v","b":null}],"x":"\u00e9"}}`), Depth: 12,
			Origin: "example.org", OriginServerTS: 1700000000123, PrevEvents: []string{"$p"}, RoomID: "!r:example.org",
			Sender: "@alice:example.org", Type: "m.room.message"},
		{AuthEvents: []string{}, Content: []byte(`{}`), Depth: 0, Origin: "o", PrevEvents: []string{},
			Sender: "@a:o", Type: "t"},
		{AuthEvents: []string{"$a"}, Content: []byte(`{"membership":"join"}`), Depth: maxSafeInt, Origin: "o",
			OriginServerTS: 5, PrevEvents: []string{"$p", "$q"}, PrevState: &[]string{}, Redacts: "$x",
			RoomID: "!r:o", Sender: "@a:o", StateKey: &sk, Type: "m.room.member"},
		{AuthEvents: []string{"$a"}, Content: []byte(`{"a":"<&>\u2028"}`), Depth: 3, Origin: "o", PrevEvents: []string{"$p"},
			PrevState: &[]string{}, Sender: "@a:o", StateKey: &empty, Type: "m.room.topic"},
	} {
		whole := ev
		raw, err := json.Marshal(&whole)
		if err != nil {
			t.Fatal(err)
		}
		want, err := gomatrixserverlib.EnforcedCanonicalJSON(raw, impl.Version())
		if err != nil {
			t.Fatal(err)
		}
		got, assembled, err := canonicalEvent(impl, &ev)
		if err != nil {
			t.Fatal(err)
		}
		if !assembled {
			t.Errorf("event %d: not assembled", i)
		}
		if string(got) != string(want) {
			t.Errorf("event %d:\n got  %s\n want %s", i, got, want)
		}
	}
	// A string that is not plain, a number out of range: the whole path.
	for _, ev := range []fastEvent{
		{Content: []byte(`{}`), Origin: "o", Sender: "@a:o", Type: "m.\"q\""},
		{Content: []byte(`{}`), Origin: "o", Sender: "@a:o", Type: "t", Depth: maxSafeInt + 1},
	} {
		if _, assembled, _ := canonicalEvent(impl, &ev); assembled {
			t.Errorf("%+v was assembled", ev)
		}
	}
}

// TestRedactStrippedMatchesAlgorithm: for every room version,
// redactStripped gives exactly the canonical bytes of gomatrixserverlib's
// redaction for types whose content redaction empties, and declines the
// content-keeping types and unknown top-level keys.
func TestRedactStrippedMatchesAlgorithm(t *testing.T) {
	events := []string{
		`{"auth_events":["$a","$b"],"content":{"body":"<b>é 😀</b>","msgtype":"m.text"},"depth":3,"hashes":{"sha256":"x"},"origin":"example.org","origin_server_ts":1,"prev_events":["$p"],"room_id":"!r:example.org","sender":"@a:example.org","type":"m.room.message"}`,
		`{"auth_events":[],"content":{"topic":"t"},"depth":9007199254740991,"hashes":{"sha256":"y"},"origin":"example.org","origin_server_ts":2,"prev_events":[],"prev_state":[],"room_id":"!r:example.org","sender":"@a:example.org","state_key":"","type":"m.room.topic"}`,
		`{"auth_events":[],"content":{},"depth":1,"hashes":{"sha256":"z"},"origin":"example.org","origin_server_ts":3,"prev_events":[],"redacts":"$t","room_id":"!r:example.org","sender":"@a:example.org","type":"m.custom\u2029"}`,
	}
	versions := everyRoomVersion()
	for _, v := range versions {
		impl, err := roomVersion(v)
		if err != nil {
			t.Fatal(err)
		}
		for _, ev := range events {
			canonical, err := gomatrixserverlib.CanonicalJSON([]byte(ev))
			if err != nil {
				t.Fatal(err)
			}
			typ := gjson.GetBytes(canonical, "type").Str
			got, ok := redactStripped(impl, typ, canonical)
			if !ok {
				t.Fatalf("v%s %s: redactStripped declined", v, typ)
			}
			want, err := impl.RedactEventJSON(canonical)
			if err != nil {
				t.Fatal(err)
			}
			if want, err = gomatrixserverlib.CanonicalJSON(want); err != nil {
				t.Fatal(err)
			}
			if string(got) != string(want) {
				t.Errorf("v%s %s:\n got %s\nwant %s", v, typ, got, want)
			}
		}
		for _, typ := range []string{"m.room.member", "m.room.power_levels", "m.room.redaction", "m.room.create"} {
			if _, ok := redactStripped(impl, typ, []byte(events[0])); ok {
				t.Errorf("v%s: redactStripped took content-keeping type %s", v, typ)
			}
		}
		if _, ok := redactStripped(impl, "m.custom", []byte(`{"content":{},"extra_key":1,"type":"m.custom"}`)); ok {
			t.Errorf("v%s: redactStripped took an event with a key the probe did not cover", v)
		}
	}
}

// TestBuildSignedKeyIDNotPlain: with a key ID that JSON must escape the
// signatures are marshalled and inserted into the hashed event, which
// buildSigned then writes for that purpose alone; the bytes are still
// Build's but for the signature's value, which verifies, and the fast
// path is still taken.
func TestBuildSignedKeyIDNotPlain(t *testing.T) {
	_, key, err := ed25519.GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	signer := filledSigner(t, key, 64)
	ts := time.UnixMilli(1_700_000_000_123)
	for _, v := range []string{"10", "12"} {
		impl, err := roomVersion(v)
		if err != nil {
			t.Fatal(err)
		}
		roomID := "!room:example.org"
		if impl.DomainlessRoomIDs() {
			roomID = "!AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
		}
		for _, typ := range []string{"m.room.message", "m.room.member"} {
			proto := &gomatrixserverlib.ProtoEvent{
				SenderID: "@alice:example.org", RoomID: roomID, Type: typ, Content: []byte(`{"membership":"join","body":"b"}`),
				Depth: 7, PrevEvents: []string{"$prev"}, AuthEvents: []string{"$pl"},
			}
			if typ == "m.room.member" {
				proto.StateKey = ptr("@alice:example.org")
			}
			keyID := gomatrixserverlib.KeyID("ed25519:é1")
			want, err := impl.NewEventBuilderFromProtoEvent(proto).Build(ts, "example.org", keyID, key)
			if err != nil {
				t.Fatal(err)
			}
			got, err := buildSigned(impl, impl.NewEventBuilderFromProtoEvent(proto), ts, "example.org", keyID, signer)
			if err != nil {
				t.Fatalf("v%s %s: %v", v, typ, err)
			}
			sameButSignature(t, fmt.Sprintf("v%s %s", v, typ), got, want, "example.org", keyID, key)
			if got.EventID() != want.EventID() {
				t.Errorf("v%s %s: event ID %s, want %s", v, typ, got.EventID(), want.EventID())
			}
		}
	}
}

// TestBuildSignedRefusesWhatBuildRefuses: an origin_server_ts before 1970
// or past 2^53 − 1, and a room ID longer than 255 bytes, are refused by
// buildSigned exactly when Build refuses them (a negative time once
// wrapped into a small negative number and was written as such), and what
// both accept is the same event (but for the signature's value, which
// verifies).
func TestBuildSignedRefusesWhatBuildRefuses(t *testing.T) {
	_, key, err := ed25519.GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	signer := filledSigner(t, key, 64)
	longRoom := "!" + strings.Repeat("r", 243) + ":example.org" // 256 bytes
	cases := []struct {
		name   string
		ts     time.Time
		roomID string
	}{
		{"ts before 1970", time.UnixMilli(-5), "!room:example.org"},
		{"ts past 2^53", time.UnixMilli(maxSafeInt + 1), "!room:example.org"},
		{"ts at 2^53 - 1", time.UnixMilli(maxSafeInt), "!room:example.org"},
		{"room ID of 256 bytes", time.UnixMilli(1_700_000_000_123), longRoom},
	}
	for _, v := range []string{"3", "10", "11", "12"} {
		impl, err := roomVersion(v)
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range cases {
			newBuilder := func() *gomatrixserverlib.EventBuilder {
				eb := impl.NewEventBuilderFromProtoEvent(&gomatrixserverlib.ProtoEvent{
					SenderID: "@alice:example.org", RoomID: c.roomID, Type: "m.room.message",
					Content: []byte(`{"msgtype":"m.text","body":"x"}`), Depth: 7, PrevEvents: []string{"$prev"},
				})
				eb.AuthEvents = []string{"$create", "$pl", "$member"}
				return eb
			}
			want, wantErr := newBuilder().Build(c.ts, "example.org", "ed25519:k1", key)
			got, gotErr := buildSigned(impl, newBuilder(), c.ts, "example.org", "ed25519:k1", signer)
			if (wantErr == nil) != (gotErr == nil) {
				t.Errorf("v%s %s: Build error %v, buildSigned error %v", v, c.name, wantErr, gotErr)
				continue
			}
			if wantErr != nil {
				continue
			}
			sameButSignature(t, fmt.Sprintf("v%s %s", v, c.name), got, want, "example.org", "ed25519:k1", key)
			if got.OriginServerTS() != want.OriginServerTS() || got.EventID() != want.EventID() {
				t.Errorf("v%s %s: origin_server_ts %d, event ID %s; want %d, %s", v, c.name, got.OriginServerTS(), got.EventID(), want.OriginServerTS(), want.EventID())
			}
		}
	}
}

// everyRoomVersion lists the room versions rooms may have here, stable
// and unstable, sorted.
func everyRoomVersion() []string {
	return append(slices.Sorted(maps.Keys(supportedVersions)), UnstableRoomVersions()...)
}

// TestSendSignsWithPooledNonce: events a send stores carry the server
// key's signature made with the roomserver's nonce pool (not
// ed25519.Sign's), which passes gomatrixserverlib's event signature
// check of the parsed stored event (hashes and event ID recomputed).
func TestSendSignsWithPooledNonce(t *testing.T) {
	testSendSignatures(t, true)
}

// TestSendSignsDeterministicByDefault: without
// room_server.precomputed_signature_nonces, every stored signature is
// ed25519.Sign's (RFC 8032's nonce from the key and the event), which a
// copied process cannot reuse (edsign's package comment).
func TestSendSignsDeterministicByDefault(t *testing.T) {
	if config.Defaults().RoomServer.PrecomputedSignatureNonces {
		t.Fatal("room_server.precomputed_signature_nonces is on by default")
	}
	testSendSignatures(t, false)
}

func testSendSignatures(t *testing.T, pooledNonces bool) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		ctx := context.Background()
		cfg := config.Defaults().RoomServer
		cfg.PrecomputedSignatureNonces = pooledNonces
		s, _ := newTestServerConfig(t, db, cfg)
		roomID := mustCreate(t, s, CreateRoomRequest{Creator: alice, RoomVersion: "12", Preset: PresetPublicChat}).RoomID
		if pooledNonces {
			s.signer.Fill()
		}
		pooledBefore, directBefore := s.signer.Counts()
		impl, err := roomVersion("12")
		if err != nil {
			t.Fatal(err)
		}
		key := s.key.PrivateKey
		verifier := oneKeyVerifier{testServer, gomatrixserverlib.KeyID(s.key.ID), key.Public().(ed25519.PublicKey)}
		const sends = 20
		for i := range sends {
			eventID := mustSend(t, s, roomID, alice, "m.room.message", nil, fmt.Sprintf(`{"msgtype":"m.text","body":"message %d"}`, i))
			e, err := s.Event(ctx, alice, eventID)
			if err != nil {
				t.Fatal(err)
			}
			pdu, err := impl.NewEventFromUntrustedJSON(e.JSON)
			if err != nil {
				t.Fatalf("stored event %s does not parse: %v", eventID, err)
			}
			if pdu.EventID() != eventID {
				t.Fatalf("stored event's ID %s, want %s", pdu.EventID(), eventID)
			}
			if err := gomatrixserverlib.VerifyEventSignatures(ctx, pdu, verifier, func(_ spec.RoomID, sender spec.SenderID) (*spec.UserID, error) {
				return spec.NewUserID(string(sender), true)
			}); err != nil {
				t.Fatalf("stored event %s: %v", eventID, err)
			}
			redacted, err := impl.RedactEventJSON(pdu.JSON())
			if err != nil {
				t.Fatal(err)
			}
			// What the signature covers (appendices, "Signing JSON"):
			// the redacted event without "signatures", canonical.
			redacted, err = sjson.DeleteBytes(redacted, "signatures")
			if err != nil {
				t.Fatal(err)
			}
			unsigned, err := gomatrixserverlib.CanonicalJSON(redacted)
			if err != nil {
				t.Fatal(err)
			}
			sig := gjson.GetBytes(pdu.JSON(), "signatures."+gjson.Escape(testServer)+"."+gjson.Escape(s.key.ID)).Str
			deterministic := sig == base64.RawStdEncoding.EncodeToString(ed25519.Sign(key, unsigned))
			if deterministic == pooledNonces {
				t.Fatalf("stored event %s: carries ed25519.Sign's signature: %v, want %v", eventID, deterministic, !pooledNonces)
			}
		}
		pooled, direct := s.signer.Counts()
		if pooledNonces && pooled-pooledBefore != sends {
			t.Errorf("%d signatures from the pool for %d sends", pooled-pooledBefore, sends)
		}
		if !pooledNonces && (pooled != 0 || direct-directBefore != sends) {
			t.Errorf("%d signatures from a pool (want none), %d by ed25519.Sign for %d sends", pooled, direct-directBefore, sends)
		}
	})
}
