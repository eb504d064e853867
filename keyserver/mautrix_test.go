//go:build goolm

package keyserver_test

import (
	"context"
	"encoding/json"
	"net/http"
	"slices"
	"strings"
	"testing"

	"github.com/rs/zerolog"
	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/crypto"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/myelin-chat/myelin/internal/testserver"
)

// These tests drive the key server with mautrix-go's real crypto (pure-Go
// olm with -tags goolm): go test -tags goolm ./keyserver/

// noRooms is a crypto.StateStore for tests without rooms.
type noRooms struct{}

func (noRooms) IsEncrypted(context.Context, id.RoomID) (bool, error) { return false, nil }
func (noRooms) GetEncryptionEvent(context.Context, id.RoomID) (*event.EncryptionEventContent, error) {
	return nil, nil
}
func (noRooms) GetHistoryVisibility(context.Context, id.RoomID) (*event.HistoryVisibilityEventContent, error) {
	return nil, nil
}
func (noRooms) FindSharedRooms(context.Context, id.UserID) ([]id.RoomID, error) { return nil, nil }

// olmDevice is a device with a real olm account whose keys are uploaded.
type olmDevice struct {
	*user
	cli  *mautrix.Client
	mach *crypto.OlmMachine
}

// newOlmDevice gives u's device an olm machine and uploads its device
// keys and one-time keys (ShareKeys).
func newOlmDevice(t *testing.T, u *user) *olmDevice {
	t.Helper()
	ctx := context.Background()
	cli, err := mautrix.NewClient(u.srv.URL, id.UserID(u.userID), u.token)
	if err != nil {
		t.Fatal(err)
	}
	cli.DeviceID = id.DeviceID(u.deviceID)
	logger := zerolog.Nop()
	mach := crypto.NewOlmMachine(cli, &logger, crypto.NewMemoryStore(nil), noRooms{})
	if err := mach.Load(ctx); err != nil {
		t.Fatal(err)
	}
	if err := mach.ShareKeys(ctx, 0); err != nil {
		t.Fatalf("ShareKeys for %s: %v", u.deviceID, err)
	}
	return &olmDevice{user: u, cli: cli, mach: mach}
}

// fetch returns the device as d's machine sees it after /keys/query.
func (d *olmDevice) fetch(t *testing.T, userID, deviceID string) *id.Device {
	t.Helper()
	devices, err := d.mach.FetchKeys(context.Background(), []id.UserID{id.UserID(userID)}, true)
	if err != nil {
		t.Fatalf("FetchKeys: %v", err)
	}
	dev := devices[id.UserID(userID)][id.DeviceID(deviceID)]
	if dev == nil {
		t.Fatalf("FetchKeys: no device %s of %s in %v", deviceID, userID, devices)
	}
	return dev
}

// TestMautrixOlmRoundTrip: real device keys and one-time keys go up,
// /keys/query returns them intact, Bob claims one of Alice's one-time
// keys to open an Olm session and sends her an encrypted to-device
// message, which she decrypts from the stream; the server stored only
// ciphertext.
func TestMautrixOlmRoundTrip(t *testing.T) {
	testserver.ForEachEngine(t, nil, func(t *testing.T, srv *testserver.Server) {
		ctx := context.Background()
		alice := newOlmDevice(t, register(t, srv, "alice"))
		bob := newOlmDevice(t, register(t, srv, "bob"))

		counts, err := srv.HS.KeyServer.OneTimeKeyCounts(ctx, alice.userID, alice.deviceID)
		if err != nil || counts["signed_curve25519"] == 0 {
			t.Fatalf("alice's one-time keys on the server: %v %v", counts, err)
		}
		dev := bob.fetch(t, alice.userID, alice.deviceID)
		own := alice.mach.OwnIdentity()
		if dev.SigningKey != own.SigningKey || dev.IdentityKey != own.IdentityKey {
			t.Fatalf("queried keys %s/%s, want alice's own %s/%s", dev.SigningKey, dev.IdentityKey, own.SigningKey, own.IdentityKey)
		}

		const secret = "the eagle lands at midnight"
		content := event.Content{Raw: map[string]any{"body": secret}}
		if err := bob.mach.SendEncryptedToDevice(ctx, dev, event.Type{Type: "org.example.secret", Class: event.ToDeviceEventType}, content); err != nil {
			t.Fatalf("SendEncryptedToDevice: %v", err)
		}
		after, _ := srv.HS.KeyServer.OneTimeKeyCounts(ctx, alice.userID, alice.deviceID)
		if after["signed_curve25519"] != counts["signed_curve25519"]-1 {
			t.Errorf("one-time keys after one claim: %d, want %d", after["signed_curve25519"], counts["signed_curve25519"]-1)
		}

		events, _, err := srv.HS.KeyServer.ToDeviceSince(ctx, alice.userID, alice.deviceID, 0)
		if err != nil || len(events) != 1 || events[0].Type != "m.room.encrypted" {
			t.Fatalf("alice's to-device inbox: %+v %v", events, err)
		}
		if strings.Contains(string(events[0].Content), secret) {
			t.Fatal("the server holds the plaintext of an encrypted to-device message")
		}
		raw, _ := json.Marshal(map[string]any{"sender": events[0].Sender, "type": events[0].Type, "content": events[0].Content})
		var evt event.Event
		if err := json.Unmarshal(raw, &evt); err != nil {
			t.Fatal(err)
		}
		evt.Type.Class = event.ToDeviceEventType
		if err := evt.Content.ParseRaw(evt.Type); err != nil {
			t.Fatal(err)
		}
		decrypted := alice.mach.HandleEncryptedEvent(ctx, &evt)
		if decrypted == nil || decrypted.Content.Raw["body"] != secret || decrypted.Sender != id.UserID(bob.userID) {
			t.Fatalf("alice decrypted %+v, want %q from bob", decrypted, secret)
		}
		var rows int
		q := `SELECT COUNT(*) FROM keyserver_to_device WHERE content LIKE '%eagle%'`
		if err := srv.HS.DB.Reader().QueryRow(ctx, q).Scan(&rows); err != nil || rows != 0 {
			t.Errorf("plaintext rows in keyserver_to_device: %d %v", rows, err)
		}
	})
}

// TestMautrixCrossSigning: Alice bootstraps cross-signing with mautrix
// (no UIA for the first keys), signs her device with her self-signing
// key, and Bob sees that device as cross-signed; once Bob signs Alice's
// master key with his user-signing key, as verified. Replacing keys needs
// UIA; bad signatures are reported per key; user-signing keys are private.
func TestMautrixCrossSigning(t *testing.T) {
	testserver.ForEachEngine(t, nil, func(t *testing.T, srv *testserver.Server) {
		ctx := context.Background()
		alice := newOlmDevice(t, register(t, srv, "alice"))
		bob := newOlmDevice(t, register(t, srv, "bob"))
		ks := srv.HS.KeyServer
		before, _ := ks.DeviceListPosition(ctx)
		beforeToken := nextBatch(t, alice.user)

		aliceKeys, err := alice.mach.GenerateCrossSigningKeys()
		if err != nil {
			t.Fatal(err)
		}
		if err := alice.mach.PublishCrossSigningKeys(ctx, aliceKeys, nil); err != nil {
			t.Fatalf("first cross-signing upload (no UIA expected): %v", err)
		}
		// The same keys again are idempotent, still without UIA.
		if err := alice.mach.PublishCrossSigningKeys(ctx, aliceKeys, nil); err != nil {
			t.Fatalf("re-uploading the same keys: %v", err)
		}
		if err := alice.mach.SignOwnDevice(ctx, alice.mach.OwnIdentity()); err != nil {
			t.Fatalf("SignOwnDevice: %v", err)
		}

		dev := bob.fetch(t, alice.userID, alice.deviceID)
		if trust := bob.mach.ResolveTrust(dev); trust != id.TrustStateCrossSignedTOFU {
			t.Fatalf("bob's trust in alice's device: %s, want cross-signed (TOFU)", trust)
		}
		status, body := bob.do(t, http.MethodPost, "/_matrix/client/v3/keys/query", map[string]any{"device_keys": map[string]any{alice.userID: []string{}}})
		if status != 200 || dig(body, "master_keys", alice.userID) == nil || dig(body, "self_signing_keys", alice.userID) == nil {
			t.Fatalf("bob's query of alice: %d %v", status, body)
		}
		if dig(body, "user_signing_keys", alice.userID) != nil {
			t.Errorf("bob can see alice's user-signing key: %v", body["user_signing_keys"])
		}
		sskID := "ed25519:" + aliceKeys.SelfSigningKey.PublicKey().String()
		if dig(body, "device_keys", alice.userID, alice.deviceID, "signatures", alice.userID, sskID) == nil {
			t.Errorf("alice's device lacks the self-signing signature: %v", dig(body, "device_keys", alice.userID, alice.deviceID))
		}
		_, own := alice.do(t, http.MethodPost, "/_matrix/client/v3/keys/query", map[string]any{"device_keys": map[string]any{alice.userID: []string{}}})
		if dig(own, "user_signing_keys", alice.userID) == nil {
			t.Errorf("alice cannot see her own user-signing key: %v", own)
		}

		// Bob cross-signs himself, then signs alice's master key.
		bobKeys, _ := bob.mach.GenerateCrossSigningKeys()
		if err := bob.mach.PublishCrossSigningKeys(ctx, bobKeys, nil); err != nil {
			t.Fatal(err)
		}
		if err := bob.mach.SignOwnMasterKey(ctx); err != nil {
			t.Fatalf("SignOwnMasterKey: %v", err)
		}
		if err := bob.mach.SignUser(ctx, id.UserID(alice.userID), aliceKeys.MasterKey.PublicKey()); err != nil {
			t.Fatalf("SignUser: %v", err)
		}
		dev = bob.fetch(t, alice.userID, alice.deviceID)
		if trust := bob.mach.ResolveTrust(dev); trust != id.TrustStateCrossSignedVerified {
			t.Errorf("after bob signed alice's master key: %s, want cross-signed verified", trust)
		}
		// Bob's user-signing signature is his own business.
		_, own = alice.do(t, http.MethodPost, "/_matrix/client/v3/keys/query", map[string]any{"device_keys": map[string]any{alice.userID: []string{}}})
		if sigs := dig(own, "master_keys", alice.userID, "signatures", bob.userID); sigs != nil {
			t.Errorf("alice sees bob's user-signing signature on her master key: %v", sigs)
		}

		// A forged signature is reported per key; the rest is stored.
		forged := map[string]any{
			"user_id": alice.userID, "usage": []string{"master"},
			"keys":       map[string]any{"ed25519:" + aliceKeys.MasterKey.PublicKey().String(): aliceKeys.MasterKey.PublicKey().String()},
			"signatures": map[string]any{bob.userID: map[string]any{"ed25519:" + bobKeys.UserSigningKey.PublicKey().String(): strings.Repeat("A", 86)}},
		}
		status, body = bob.do(t, http.MethodPost, "/_matrix/client/v3/keys/signatures/upload", map[string]any{
			alice.userID: map[string]any{aliceKeys.MasterKey.PublicKey().String(): forged, "NOSUCHDEVICE": map[string]any{"signatures": map[string]any{bob.userID: map[string]any{}}}},
		})
		if status != 200 || dig(body, "failures", alice.userID, aliceKeys.MasterKey.PublicKey().String(), "errcode") != "M_INVALID_SIGNATURE" ||
			dig(body, "failures", alice.userID, "NOSUCHDEVICE") == nil {
			t.Errorf("forged signature upload: %d %v, want per-key failures with M_INVALID_SIGNATURE", status, body)
		}

		// Replacing keys needs the password (UIA).
		newKeys, _ := alice.mach.GenerateCrossSigningKeys()
		err = alice.mach.PublishCrossSigningKeys(ctx, newKeys, nil)
		var httpErr mautrix.HTTPError
		if !errorsAs(err, &httpErr) || httpErr.Response.StatusCode != http.StatusUnauthorized {
			t.Fatalf("replacing keys without UIA: %v, want 401", err)
		}
		local := strings.TrimPrefix(strings.Split(alice.userID, ":")[0], "@")
		err = alice.mach.PublishCrossSigningKeys(ctx, newKeys, func(uia *mautrix.RespUserInteractive) any {
			if !uia.HasSingleStageFlow(mautrix.AuthTypePassword) {
				t.Errorf("UIA flows: %+v, want m.login.password", uia.Flows)
			}
			return map[string]any{"type": "m.login.password", "session": uia.Session, "password": testPassword,
				"identifier": map[string]any{"type": "m.id.user", "user": local}}
		})
		if err != nil {
			t.Fatalf("replacing keys with UIA: %v", err)
		}
		_, body = bob.do(t, http.MethodPost, "/_matrix/client/v3/keys/query", map[string]any{"device_keys": map[string]any{alice.userID: []string{}}})
		if dig(body, "master_keys", alice.userID, "keys", "ed25519:"+newKeys.MasterKey.PublicKey().String()) == nil {
			t.Errorf("master key after replacement: %v", dig(body, "master_keys", alice.userID))
		}
		if dig(body, "device_keys", alice.userID, alice.deviceID, "signatures", alice.userID, sskID) != nil {
			t.Errorf("the old self-signing key's signature outlived the key")
		}

		// Every change above went into the device-list stream.
		after, _ := ks.DeviceListPosition(ctx)
		changed, left, err := ks.DeviceListChanges(ctx, alice.userID, before, after, keyserverDelta(nil, nil))
		if err != nil || !slices.Equal(changed, []string{alice.userID}) || len(left) != 0 {
			t.Errorf("alice's device-list changes: %v %v %v (without shared rooms only her own)", changed, left, err)
		}
		changed, left, _ = ks.DeviceListChanges(ctx, alice.userID, before, after, keyserverDelta([]string{bob.userID}, []string{"@carol:localhost"}))
		if !slices.Equal(changed, []string{alice.userID, bob.userID}) || !slices.Equal(left, []string{"@carol:localhost"}) {
			t.Errorf("with bob newly sharing a room and carol gone: changed %v left %v", changed, left)
		}
		status, body = alice.do(t, http.MethodGet, "/_matrix/client/v3/keys/changes?from="+beforeToken+"&to="+nextBatch(t, alice.user), nil)
		if status != 200 || !slices.Equal(toStrings(body["changed"]), []string{alice.userID}) {
			t.Errorf("/keys/changes: %d %v", status, body)
		}

		// Deleting a device deletes its keys (clientapi's hook).
		second := newOlmDevice(t, alice.user.login(t))
		if dev := bob.fetch(t, alice.userID, second.deviceID); dev == nil {
			t.Fatal("alice's second device is not in /keys/query")
		}
		if status, body := second.do(t, http.MethodPost, "/_matrix/client/v3/logout", map[string]any{}); status != 200 {
			t.Fatalf("logout: %d %v", status, body)
		}
		_, body = bob.do(t, http.MethodPost, "/_matrix/client/v3/keys/query", map[string]any{"device_keys": map[string]any{alice.userID: []string{}}})
		if dig(body, "device_keys", alice.userID, second.deviceID) != nil {
			t.Errorf("a logged-out device is still in /keys/query")
		}
		var rows int
		if err := srv.HS.DB.Reader().QueryRow(ctx, `SELECT COUNT(*) FROM keyserver_one_time_keys WHERE device_id = $1`, second.deviceID).Scan(&rows); err != nil || rows != 0 {
			t.Errorf("one-time keys of a logged-out device: %d %v", rows, err)
		}
	})
}
