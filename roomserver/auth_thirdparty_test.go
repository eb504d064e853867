package roomserver

import (
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"testing"
	"time"

	"github.com/matrix-org/gomatrixserverlib"

	"github.com/myelin-chat/myelin/internal/mxerr"
	"github.com/myelin-chat/myelin/storage"
	"github.com/myelin-chat/myelin/storage/storagetest"
)

const dave = "@dave:test.local"

// identityKey is an identity server's Ed25519 signing key, made from a
// fixed seed byte so test events are reproducible.
func identityKey(b byte) ed25519.PrivateKey {
	seed := make([]byte, ed25519.SeedSize)
	for i := range seed {
		seed[i] = b
	}
	return ed25519.NewKeyFromSeed(seed)
}

func publicKeyB64(k ed25519.PrivateKey) string {
	return base64.RawStdEncoding.EncodeToString(k.Public().(ed25519.PublicKey))
}

// signedBlock is the identity server's signed object for mxid and token,
// signed by key as id.example's ed25519:0.
func signedBlock(t testing.TB, key ed25519.PrivateKey, mxid, token string) map[string]any {
	t.Helper()
	raw, err := json.Marshal(map[string]string{"mxid": mxid, "token": token})
	if err != nil {
		t.Fatal(err)
	}
	raw, err = gomatrixserverlib.SignJSON("id.example", "ed25519:0", key, raw)
	if err != nil {
		t.Fatal(err)
	}
	var out map[string]any
	if err := json.Unmarshal(raw, &out); err != nil {
		t.Fatal(err)
	}
	return out
}

// inviteContent is m.room.member invite content completing a third-party
// invite with the given signed object (nil: no signed property).
func inviteContent(t testing.TB, signed map[string]any) string {
	t.Helper()
	tpi := map[string]any{"display_name": "c...@example.org"}
	if signed != nil {
		tpi["signed"] = signed
	}
	raw, err := json.Marshal(map[string]any{"membership": "invite", "third_party_invite": tpi})
	if err != nil {
		t.Fatal(err)
	}
	return string(raw)
}

// addWithAuth builds event name on prev with the auth events named, for
// events whose auth events gomatrixserverlib's builder cannot choose.
func (d *dag) addWithAuth(name, sender, eventType string, stateKey *string, content, prev string, auth ...string) {
	d.t.Helper()
	impl := gomatrixserverlib.MustGetRoomVersion(gomatrixserverlib.RoomVersion(d.version))
	d.ts++
	var authIDs []string
	for _, a := range auth {
		if a == "create" && d.version == "12" {
			continue // v12 rooms leave the create event out of auth_events
		}
		authIDs = append(authIDs, d.byName[a].EventID())
	}
	p := d.byName[prev]
	proto := &gomatrixserverlib.ProtoEvent{SenderID: sender, RoomID: d.roomID, Type: eventType, StateKey: stateKey,
		Content: []byte(content), PrevEvents: []string{p.EventID()}, AuthEvents: authIDs, Depth: p.Depth() + 1, Version: impl}
	key := testKey()
	pdu, err := impl.NewEventBuilderFromProtoEvent(proto).Build(time.UnixMilli(d.ts), testServer, gomatrixserverlib.KeyID(key.ID), key.PrivateKey)
	if err != nil {
		d.t.Fatalf("building %s: %v", name, err)
	}
	d.byName[name] = pdu
	d.stateAfter[name] = d.stateAfter[prev]
}

// TestThirdPartyInviteAuth: the m.room.member invite rule for
// third_party_invite (rooms/v1–v12, "Authorization rules"), applied to
// federation events against their auth events, the state before them and
// the current state. Security case: forged third-party invites.
func TestThirdPartyInviteAuth(t *testing.T) {
	idKey, otherKey := identityKey(7), identityKey(9)
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		for _, version := range []string{"10", "12"} {
			t.Run("v"+version, func(t *testing.T) {
				testThirdPartyInviteAuth(t, db, version, idKey, otherKey)
			})
		}
	})
}

func testThirdPartyInviteAuth(t *testing.T, db *storage.DB, version string, idKey, otherKey ed25519.PrivateKey) {
	// baseRoom: alice (creator), bob (power 90) joined, public room;
	// bob and alice each make a third-party invite, the legacy one with
	// only public_key. Then alice bans dave.
	d := baseRoom(t, version)
	keys := `{"display_name":"c...","key_validity_url":"https://id.example/_matrix/identity/v2/pubkey/isvalid","public_keys":[{"public_key":"` +
		publicKeyB64(otherKey) + `"},{"public_key":"` + publicKeyB64(idKey) + `"}]}`
	d.add("tpi-bob", bob, "m.room.third_party_invite", ptr("tok-bob"), keys, "bob-join")
	d.add("tpi-bob2", bob, "m.room.third_party_invite", ptr("tok-bob2"), keys, "tpi-bob")
	d.add("tpi-alice", alice, "m.room.third_party_invite", ptr("tok-alice"), keys, "tpi-bob2")
	urlSafe := base64.RawURLEncoding.EncodeToString(idKey.Public().(ed25519.PublicKey))
	d.add("tpi-legacy", bob, "m.room.third_party_invite", ptr("tok-legacy"),
		`{"display_name":"c...","key_validity_url":"https://id.example/x","public_key":"`+urlSafe+`"}`, "tpi-alice")
	d.add("tpi-nokeys", bob, "m.room.third_party_invite", ptr("tok-nokeys"), `{"display_name":"c..."}`, "tpi-legacy")
	d.add("ban-dave", alice, "m.room.member", ptr(dave), `{"membership":"ban"}`, "tpi-nokeys")
	const tip = "ban-dave"
	base := []string{"create", "alice-join", "pl0", "jr", "bob-join", "tpi-bob", "tpi-bob2", "tpi-alice", "tpi-legacy", "tpi-nokeys", "ban-dave"}

	// Each case is one invite built on the tip.
	good := signedBlock(t, idKey, charlie, "tok-bob")
	extra := signedBlock(t, idKey, charlie, "tok-bob")
	extra["sender"] = alice // added after signing
	unsigned := signedBlock(t, idKey, charlie, "tok-bob")
	delete(unsigned, "signatures")
	swapped := signedBlock(t, idKey, charlie, "tok-bob")
	swapped["token"] = "tok-bob2" // a real token, but not the one signed
	emptySigs := signedBlock(t, idKey, charlie, "tok-bob")
	emptySigs["signatures"] = map[string]any{}
	cases := []struct {
		name, sender, target, content string
		want                          InputOutcome
		// auth, when set, names the invite's auth events (the builder
		// cannot choose them for malformed content).
		auth []string
	}{
		{"valid", bob, charlie, inviteContent(t, good), Accepted, nil},
		{"legacy public_key", bob, charlie, inviteContent(t, signedBlock(t, idKey, charlie, "tok-legacy")), Accepted, nil},
		{"signed by another key", bob, charlie, inviteContent(t, signedBlock(t, identityKey(3), charlie, "tok-bob")), Rejected, nil},
		{"field added after signing", bob, charlie, inviteContent(t, extra), Rejected, nil},
		{"no signatures", bob, charlie, inviteContent(t, unsigned), Rejected, nil},
		{"empty signatures", bob, charlie, inviteContent(t, emptySigs), Rejected, nil},
		{"no signed", bob, charlie, inviteContent(t, nil), Rejected, []string{"create", "pl0", "jr", "bob-join"}},
		{"null third_party_invite", bob, charlie, `{"membership":"invite","third_party_invite":null}`, Rejected, nil},
		{"signed token is not the signed one", bob, charlie, inviteContent(t, swapped), Rejected, nil},
		{"token of no third-party invite", bob, charlie, inviteContent(t, signedBlock(t, idKey, charlie, "tok-none")), Rejected, nil},
		{"mxid is not the target", bob, charlie, inviteContent(t, signedBlock(t, idKey, dave, "tok-bob")), Rejected, nil},
		{"third-party invite without keys", bob, charlie, inviteContent(t, signedBlock(t, idKey, charlie, "tok-nokeys")), Rejected, nil},
		{"sender did not make the third-party invite", bob, charlie, inviteContent(t, signedBlock(t, idKey, charlie, "tok-alice")), Rejected, nil},
		{"banned target", bob, dave, inviteContent(t, signedBlock(t, idKey, dave, "tok-bob")), Rejected, nil},
	}
	s := newTestServer(t, storagetest.Open(t, db.Engine()))
	for _, name := range base {
		if r := d.input(t, s, name); r.Outcome != Accepted {
			t.Fatalf("%s: %s %s", name, r.Outcome, r.Reason)
		}
	}
	for i, c := range cases {
		name := "invite-" + string(rune('a'+i))
		if c.auth != nil {
			d.addWithAuth(name, c.sender, "m.room.member", ptr(c.target), c.content, tip, c.auth...)
		} else {
			d.add(name, c.sender, "m.room.member", ptr(c.target), c.content, tip)
		}
		r := d.input(t, s, name)
		if r.Outcome != c.want {
			t.Errorf("%s: outcome %s (%s), want %s", c.name, r.Outcome, r.Reason, c.want)
		}
	}
}

// TestThirdPartyInviteBannedTargetLater: an invite built before its
// target's ban, on another branch, passes its auth events and the state
// before it but is soft-failed against the current state (the ban).
// Spec: server-server-api, "Soft failure".
func TestThirdPartyInviteBannedTargetLater(t *testing.T) {
	idKey := identityKey(7)
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		d := baseRoom(t, "10")
		d.add("tpi", bob, "m.room.third_party_invite", ptr("tok"),
			`{"display_name":"c...","public_keys":[{"public_key":"`+publicKeyB64(idKey)+`"}]}`, "bob-join")
		d.add("ban", alice, "m.room.member", ptr(charlie), `{"membership":"ban"}`, "tpi")
		d.add("invite", bob, "m.room.member", ptr(charlie), inviteContent(t, signedBlock(t, idKey, charlie, "tok")), "tpi")
		s := newTestServer(t, db)
		for _, name := range []string{"create", "alice-join", "pl0", "jr", "bob-join", "tpi", "ban"} {
			if r := d.input(t, s, name); r.Outcome != Accepted {
				t.Fatalf("%s: %s %s", name, r.Outcome, r.Reason)
			}
		}
		if r := d.input(t, s, "invite"); r.Outcome != SoftFailed {
			t.Fatalf("invite of a since-banned target: %s (%s), want soft_failed", r.Outcome, r.Reason)
		}
		mustMember(t, s, d.roomID, charlie, "ban")
	})
}

// TestLocalThirdPartyInviteAuth: the roomserver refuses a local invite
// that breaks the rule, whoever builds it.
func TestLocalThirdPartyInviteAuth(t *testing.T) {
	idKey := identityKey(7)
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		ctx := context.Background()
		s := newTestServer(t, db)
		room := mustCreate(t, s, CreateRoomRequest{Creator: alice, RoomVersion: "11", Preset: PresetPublicChat}).RoomID
		if _, err := s.Join(ctx, MembershipRequest{RoomID: room, Sender: bob}); err != nil {
			t.Fatal(err)
		}
		mustSend(t, s, room, alice, "m.room.third_party_invite", ptr("tok"),
			`{"display_name":"c...","public_keys":[{"public_key":"`+publicKeyB64(idKey)+`"}]}`)
		mustSend(t, s, room, alice, "m.room.third_party_invite", ptr("tok-legacy"),
			`{"display_name":"c...","public_key":"`+publicKeyB64(idKey)+`"}`)
		if _, err := s.Ban(ctx, MembershipRequest{RoomID: room, Sender: alice, Target: dave}); err != nil {
			t.Fatal(err)
		}
		tpi := func(mxid, token string) json.RawMessage {
			raw, _ := json.Marshal(map[string]any{"display_name": "c...", "signed": signedBlock(t, idKey, mxid, token)})
			return raw
		}
		// bob did not make the third-party invite.
		_, err := s.Invite(ctx, MembershipRequest{RoomID: room, Sender: bob, Target: charlie, ThirdPartyInvite: tpi(charlie, "tok")})
		wantCode(t, err, mxerr.Forbidden)
		// dave is banned.
		_, err = s.Invite(ctx, MembershipRequest{RoomID: room, Sender: alice, Target: dave, ThirdPartyInvite: tpi(dave, "tok")})
		wantCode(t, err, mxerr.Forbidden)
		mustMember(t, s, room, charlie, "")
		mustMember(t, s, room, dave, "ban")
		// alice's own invite, checked against the legacy public_key, passes.
		if _, err := s.Invite(ctx, MembershipRequest{RoomID: room, Sender: alice, Target: charlie, ThirdPartyInvite: tpi(charlie, "tok-legacy")}); err != nil {
			t.Fatal(err)
		}
		mustMember(t, s, room, charlie, "invite")
	})
}

// TestThirdPartyPublicKeys: the keys of an m.room.third_party_invite.
func TestThirdPartyPublicKeys(t *testing.T) {
	k1, k2 := identityKey(1), identityKey(2)
	std, url := publicKeyB64(k1), base64.RawURLEncoding.EncodeToString(k2.Public().(ed25519.PublicKey))
	padded := base64.StdEncoding.EncodeToString(k1.Public().(ed25519.PublicKey))
	cases := []struct {
		content string
		want    int
	}{
		{`{"public_key":"` + std + `"}`, 1},
		{`{"public_key":"` + padded + `"}`, 1},
		{`{"public_keys":[{"public_key":"` + std + `"},{"public_key":"` + url + `"}]}`, 2},
		{`{"public_key":"` + std + `","public_keys":[{"public_key":"` + url + `"}]}`, 2},
		{`{"public_key":"` + std + `","public_keys":"nonsense"}`, 1},
		{`{"public_key":"c2hvcnQ","public_keys":[{"public_key":7},{}]}`, 0},
		{`{}`, 0},
	}
	for _, c := range cases {
		if got := len(thirdPartyPublicKeys([]byte(c.content))); got != c.want {
			t.Errorf("%s: %d keys, want %d", c.content, got, c.want)
		}
	}
}
