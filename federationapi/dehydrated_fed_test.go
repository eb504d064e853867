package federationapi_test

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"slices"
	"testing"

	"github.com/matrix-org/gomatrixserverlib"
)

// TestDehydratedDeviceAcrossServers (MSC3814): Alice's dehydrated device
// on A is one of her devices for Bob on B, who shares a room with her:
// his /keys/query (through A, then B's cache kept by device-list
// updates) shows it with its dehydrated flag, he can claim its one-time
// key, and DELETE /dehydrated_device reaches B as a deleted device.
func TestDehydratedDeviceAcrossServers(t *testing.T) {
	t.Parallel()
	forEachEngine(t, func(t *testing.T, n *network) {
		_, b, alice, bob, _ := clientPair(t, n)
		alice.uploadDeviceKeys()
		aliceID := string(alice.id())
		const dehydratedID = "DEHYDRATEDDEVICE"

		pub, priv, _ := ed25519.GenerateKey(rand.Reader)
		curve := make([]byte, 32)
		_, _ = rand.Read(curve)
		b64 := base64.RawStdEncoding.EncodeToString
		keyID := gomatrixserverlib.KeyID("ed25519:" + dehydratedID)
		dk, err := gomatrixserverlib.SignJSON(aliceID, keyID, priv, mustJSON(map[string]any{
			"user_id": aliceID, "device_id": dehydratedID, "dehydrated": true,
			"algorithms": []string{"m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"},
			"keys":       map[string]string{"ed25519:" + dehydratedID: b64(pub), "curve25519:" + dehydratedID: b64(curve)},
		}))
		if err != nil {
			t.Fatal(err)
		}
		otk, err := gomatrixserverlib.SignJSON(aliceID, keyID, priv, mustJSON(map[string]any{"key": b64(curve)}))
		if err != nil {
			t.Fatal(err)
		}
		const path = "/_matrix/client/unstable/org.matrix.msc3814.v1/dehydrated_device"
		if err := alice.rawCall(http.MethodPut, path, map[string]any{
			"device_id":     dehydratedID,
			"device_data":   map[string]any{"algorithm": "org.matrix.msc3814.v2", "device_pickle": "x", "nonce": "y"},
			"device_keys":   json.RawMessage(dk),
			"one_time_keys": map[string]json.RawMessage{"signed_curve25519:AAAAAQ": otk},
		}, nil); err != nil {
			t.Fatalf("PUT dehydrated_device: %v", err)
		}

		resp := bob.queryKeys(map[string][]string{aliceID: {}}, 5000)
		var got struct {
			Dehydrated bool `json:"dehydrated"`
		}
		if raw, ok := resp.DeviceKeys[aliceID][dehydratedID]; !ok || json.Unmarshal(raw, &got) != nil || !got.Dehydrated {
			t.Fatalf("bob's query for alice: %+v, want %s with dehydrated: true", resp.DeviceKeys[aliceID], dehydratedID)
		}
		var claim struct {
			OneTimeKeys map[string]map[string]map[string]json.RawMessage `json:"one_time_keys"`
		}
		if err := bob.rawCall(http.MethodPost, "/_matrix/client/v3/keys/claim", map[string]any{
			"one_time_keys": map[string]any{aliceID: map[string]string{dehydratedID: "signed_curve25519"}}}, &claim); err != nil {
			t.Fatal(err)
		}
		if len(claim.OneTimeKeys[aliceID][dehydratedID]) != 1 {
			t.Errorf("bob's claim of the dehydrated device's key: %+v", claim)
		}
		eventually(t, "B to cache alice's dehydrated device", func() bool {
			return slices.Contains(cachedDevices(t, b, aliceID), dehydratedID)
		})

		if err := alice.rawCall(http.MethodDelete, path, nil, nil); err != nil {
			t.Fatalf("DELETE dehydrated_device: %v", err)
		}
		eventually(t, "B to drop alice's deleted dehydrated device", func() bool {
			d := cachedDevices(t, b, aliceID)
			return len(d) == 1 && d[0] == string(alice.cli.DeviceID)
		})
		resp = bob.queryKeys(map[string][]string{aliceID: {}}, 5000)
		if _, ok := resp.DeviceKeys[aliceID][dehydratedID]; ok {
			t.Errorf("bob still sees the deleted dehydrated device: %+v", resp.DeviceKeys[aliceID])
		}
	})
}
