//go:build goolm

package keyserver_test

import (
	"context"
	"encoding/json"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/rs/zerolog"
	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/crypto"
	"maunium.net/go/mautrix/crypto/signatures"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/myelin-chat/myelin/internal/testserver"
)

// TestMautrixDehydratedDevice: Alice dehydrates a device made of a real
// olm account (mautrix-go v0.32.0 has no client for MSC3814's endpoints,
// so the test makes the PUT itself, with the account's own keys and the
// identity key as device ID, as the MSC asks). Bob's mautrix machine
// finds it through /keys/query — marked dehydrated, its signature valid —
// claims its one-time key and sends it an Olm-encrypted to-device
// message while Alice has no device online to read it. Alice's next
// login fetches the message from /dehydrated_device/{id}/events and the
// rehydrated account decrypts it.
func TestMautrixDehydratedDevice(t *testing.T) {
	testserver.ForEachEngine(t, nil, func(t *testing.T, srv *testserver.Server) {
		ctx := context.Background()
		aliceUser := register(t, srv, "alice")
		bob := newOlmDevice(t, register(t, srv, "bob"))

		// The dehydrated device: a fresh olm account, device ID = its
		// curve25519 identity key (unpadded base64, with '+' and '/').
		cli, err := mautrix.NewClient(srv.URL, id.UserID(aliceUser.userID), aliceUser.token)
		if err != nil {
			t.Fatal(err)
		}
		logger := zerolog.Nop()
		dehydrated := crypto.NewOlmMachine(cli, &logger, crypto.NewMemoryStore(nil), noRooms{})
		if err := dehydrated.Load(ctx); err != nil {
			t.Fatal(err)
		}
		account := dehydrated.GetAccount()
		deviceID := id.DeviceID(account.IdentityKey())
		cli.DeviceID = deviceID
		userID := id.UserID(aliceUser.userID)
		keys := &mautrix.DeviceKeys{
			UserID: userID, DeviceID: deviceID, Dehydrated: true,
			Algorithms: []id.Algorithm{id.AlgorithmMegolmV1, id.AlgorithmOlmV1},
			Keys: map[id.DeviceKeyID]string{
				id.NewDeviceKeyID(id.KeyAlgorithmCurve25519, deviceID): string(account.IdentityKey()),
				id.NewDeviceKeyID(id.KeyAlgorithmEd25519, deviceID):    string(account.SigningKey()),
			},
		}
		sig, err := account.SignJSON(keys)
		if err != nil {
			t.Fatal(err)
		}
		keys.Signatures = signatures.NewSingleSignature(userID, id.KeyAlgorithmEd25519, deviceID.String(), sig)
		if err := account.Internal.GenOneTimeKeys(2); err != nil {
			t.Fatal(err)
		}
		internal, err := account.Internal.OneTimeKeys()
		if err != nil {
			t.Fatal(err)
		}
		otks := map[id.KeyID]mautrix.OneTimeKey{}
		for keyID, key := range internal {
			k := mautrix.OneTimeKey{Key: key, IsSigned: true}
			s, _ := account.SignJSON(&k)
			k.Signatures = signatures.NewSingleSignature(userID, id.KeyAlgorithmEd25519, deviceID.String(), s)
			otks[id.NewKeyID(id.KeyAlgorithmSignedCurve25519, keyID)] = k
		}
		account.Internal.MarkKeysAsPublished()
		status, body := aliceUser.do(t, http.MethodPut, dehydratedPath, map[string]any{
			"device_id":                   deviceID,
			"device_data":                 map[string]any{"algorithm": "org.matrix.msc3814.v2", "device_pickle": "opaque", "nonce": "opaque"},
			"initial_device_display_name": "Backup",
			"device_keys":                 keys,
			"one_time_keys":               otks,
		})
		if status != http.StatusOK || body["device_id"] != string(deviceID) {
			t.Fatalf("PUT dehydrated_device: %d %v", status, body)
		}
		// Alice's only logged-in device goes: nobody is online to receive.
		if status, body := aliceUser.do(t, http.MethodPost, "/_matrix/client/v3/logout", map[string]any{}); status != http.StatusOK {
			t.Fatalf("logout: %d %v", status, body)
		}

		dev := bob.fetch(t, aliceUser.userID, string(deviceID))
		if dev.IdentityKey != account.IdentityKey() || dev.SigningKey != account.SigningKey() || dev.Name != "Backup" {
			t.Fatalf("bob sees %+v, want the dehydrated account's keys named Backup", dev)
		}
		const secret = "room key for later"
		content := event.Content{Raw: map[string]any{"body": secret}}
		if err := bob.mach.SendEncryptedToDevice(ctx, dev, event.Type{Type: "org.example.secret", Class: event.ToDeviceEventType}, content); err != nil {
			t.Fatalf("SendEncryptedToDevice: %v", err)
		}

		// Alice logs in again and rehydrates.
		alice := aliceUser.login(t)
		cli.AccessToken = alice.token
		status, body = alice.do(t, http.MethodGet, dehydratedPath, nil)
		if status != http.StatusOK || body["device_id"] != string(deviceID) {
			t.Fatalf("GET dehydrated_device: %d %v", status, body)
		}
		status, body = alice.do(t, http.MethodPost, dehydratedPath+"/"+url.PathEscape(string(deviceID))+"/events", map[string]any{})
		events, _ := body["events"].([]any)
		if status != http.StatusOK || len(events) != 1 {
			t.Fatalf("events: %d %v, want 1", status, body)
		}
		raw, _ := json.Marshal(events[0])
		if strings.Contains(string(raw), secret) {
			t.Fatal("the server handed out plaintext")
		}
		var evt event.Event
		if err := json.Unmarshal(raw, &evt); err != nil {
			t.Fatal(err)
		}
		evt.Type.Class = event.ToDeviceEventType
		if err := evt.Content.ParseRaw(evt.Type); err != nil {
			t.Fatal(err)
		}
		decrypted := dehydrated.HandleEncryptedEvent(ctx, &evt)
		if decrypted == nil || decrypted.Content.Raw["body"] != secret || decrypted.Sender != id.UserID(bob.userID) {
			t.Fatalf("rehydrated account decrypted %+v, want %q from bob", decrypted, secret)
		}
	})
}
