package keyserver_test

import (
	"context"
	"fmt"
	"maps"
	"net/http"
	"slices"
	"sync"
	"testing"

	"github.com/myelin-chat/myelin/internal/testserver"
	"github.com/myelin-chat/myelin/keyserver"
)

// TestUploadValidation covers security case 31: keys for another user or
// device, bad signatures, replaced identity keys and floods of one-time
// keys are refused with 400 and nothing is stored.
func TestUploadValidation(t *testing.T) {
	testserver.ForEachEngine(t, nil, func(t *testing.T, srv *testserver.Server) {
		alice := register(t, srv, "alice")
		bob := register(t, srv, "bob")
		keys := newDeviceKeys(t, alice.userID, alice.deviceID)

		cases := []struct {
			name string
			obj  map[string]any
			code string
		}{
			{"other user", newDeviceKeys(t, bob.userID, alice.deviceID).deviceObject(t), "M_INVALID_PARAM"},
			{"other device", newDeviceKeys(t, alice.userID, bob.deviceID).deviceObject(t), "M_INVALID_PARAM"},
			{"bob's real device", newDeviceKeys(t, bob.userID, bob.deviceID).deviceObject(t), "M_INVALID_PARAM"},
			{"bad self-signature", func() map[string]any {
				obj := keys.deviceObject(t)
				obj["algorithms"] = []string{"m.olm.v1.curve25519-aes-sha2"} // changed after signing
				return obj
			}(), "M_INVALID_SIGNATURE"},
			{"signed by another key", func() map[string]any {
				obj := keys.deviceObject(t)
				other := newDeviceKeys(t, alice.userID, alice.deviceID)
				delete(obj, "signatures")
				return other.sign(t, obj)
			}(), "M_INVALID_SIGNATURE"},
			{"malformed ed25519 key", keys.sign(t, map[string]any{
				"user_id": alice.userID, "device_id": alice.deviceID, "algorithms": []string{"m.olm.v1.curve25519-aes-sha2"},
				"keys": map[string]any{"ed25519:" + alice.deviceID: "not base64!"},
			}), "M_INVALID_PARAM"},
		}
		for _, c := range cases {
			status, body := alice.do(t, http.MethodPost, "/_matrix/client/v3/keys/upload", map[string]any{"device_keys": c.obj})
			if status != http.StatusBadRequest || body["errcode"] != c.code {
				t.Errorf("%s: %d %v, want 400 %s", c.name, status, body, c.code)
			}
		}
		status, body := bob.do(t, http.MethodPost, "/_matrix/client/v3/keys/query", map[string]any{"device_keys": map[string]any{alice.userID: []string{}, bob.userID: []string{}}})
		if status != http.StatusOK || len(dig(body, "device_keys", alice.userID).(map[string]any)) != 0 || len(dig(body, "device_keys", bob.userID).(map[string]any)) != 0 {
			t.Fatalf("rejected uploads left keys behind: %d %v", status, body)
		}

		// Unknown algorithms are accepted alongside the required keys.
		obj := keys.deviceObject(t)
		obj["keys"].(map[string]any)["org.example.future:"+alice.deviceID] = "whatever"
		delete(obj, "signatures")
		obj = keys.sign(t, obj)
		if status, body := alice.do(t, http.MethodPost, "/_matrix/client/v3/keys/upload", map[string]any{"device_keys": obj}); status != http.StatusOK {
			t.Fatalf("valid upload: %d %v", status, body)
		}
		// The same keys again are fine; different identity keys are not.
		if status, body := alice.do(t, http.MethodPost, "/_matrix/client/v3/keys/upload", map[string]any{"device_keys": obj}); status != http.StatusOK {
			t.Fatalf("identical re-upload: %d %v", status, body)
		}
		impostor := newDeviceKeys(t, alice.userID, alice.deviceID)
		if status, body := alice.do(t, http.MethodPost, "/_matrix/client/v3/keys/upload", map[string]any{"device_keys": impostor.deviceObject(t)}); status != http.StatusBadRequest || body["errcode"] != "M_INVALID_PARAM" {
			t.Errorf("replacing identity keys: %d %v, want 400 M_INVALID_PARAM", status, body)
		}
		_, body = bob.do(t, http.MethodPost, "/_matrix/client/v3/keys/query", map[string]any{"device_keys": map[string]any{alice.userID: []string{}}})
		if got := dig(body, "device_keys", alice.userID, alice.deviceID, "keys", "ed25519:"+alice.deviceID); got != keys.ed25519() {
			t.Errorf("ed25519 key after the refused overwrite: %v, want the original %s", got, keys.ed25519())
		}

		// One-time keys: a flood, a bad signature, a conflicting duplicate.
		flood := map[string]any{}
		for i := 0; i <= 1000; i++ {
			flood[fmt.Sprintf("signed_curve25519:K%04d", i)] = keys.signedOTK(t, false)
		}
		if status, body := alice.do(t, http.MethodPost, "/_matrix/client/v3/keys/upload", map[string]any{"one_time_keys": flood}); status != http.StatusBadRequest {
			t.Errorf("1001 one-time keys: %d %v, want 400", status, body)
		}
		forged := newDeviceKeys(t, alice.userID, alice.deviceID).signedOTK(t, false)
		if status, body := alice.do(t, http.MethodPost, "/_matrix/client/v3/keys/upload", map[string]any{"one_time_keys": map[string]any{"signed_curve25519:F1": forged}}); status != http.StatusBadRequest || body["errcode"] != "M_INVALID_SIGNATURE" {
			t.Errorf("one-time key with a bad signature: %d %v, want 400 M_INVALID_SIGNATURE", status, body)
		}
		good := keys.signedOTK(t, false)
		status, body = alice.do(t, http.MethodPost, "/_matrix/client/v3/keys/upload", map[string]any{"one_time_keys": map[string]any{"signed_curve25519:A1": good}})
		if status != http.StatusOK || dig(body, "one_time_key_counts", "signed_curve25519") != float64(1) {
			t.Fatalf("one good one-time key: %d %v", status, body)
		}
		if status, body := alice.do(t, http.MethodPost, "/_matrix/client/v3/keys/upload", map[string]any{"one_time_keys": map[string]any{"signed_curve25519:A1": good}}); status != http.StatusOK || dig(body, "one_time_key_counts", "signed_curve25519") != float64(1) {
			t.Errorf("the same one-time key again: %d %v, want 200 and still one key", status, body)
		}
		if status, body := alice.do(t, http.MethodPost, "/_matrix/client/v3/keys/upload", map[string]any{"one_time_keys": map[string]any{"signed_curve25519:A1": keys.signedOTK(t, false)}}); status != http.StatusBadRequest {
			t.Errorf("a different key under a used key ID: %d %v, want 400", status, body)
		}
		counts, err := srv.HS.KeyServer.OneTimeKeyCounts(context.Background(), alice.userID, alice.deviceID)
		if err != nil || counts["signed_curve25519"] != 1 {
			t.Errorf("OneTimeKeyCounts: %v %v, want signed_curve25519: 1", counts, err)
		}
	})
}

// sameKeyCounts checks that KeyCounts, the one-query read /sync uses,
// answers what OneTimeKeyCounts and UnusedFallbackKeyTypes answer apart:
// a fallback key of an algorithm must not count as a one-time key of it.
func sameKeyCounts(t *testing.T, srv *testserver.Server, userID, deviceID string) {
	t.Helper()
	ctx := context.Background()
	wantOTK, err1 := srv.HS.KeyServer.OneTimeKeyCounts(ctx, userID, deviceID)
	wantFallback, err2 := srv.HS.KeyServer.UnusedFallbackKeyTypes(ctx, userID, deviceID)
	otk, fallback, err := srv.HS.KeyServer.KeyCounts(ctx, userID, deviceID)
	if err != nil || err1 != nil || err2 != nil {
		t.Fatalf("key counts: %v, %v, %v", err, err1, err2)
	}
	if !maps.Equal(otk, wantOTK) || !slices.Equal(fallback, wantFallback) || fallback == nil {
		t.Errorf("KeyCounts = %v, %v; want %v, %v", otk, fallback, wantOTK, wantFallback)
	}
	// KeyCountsOfDevices, the grouped read of the long polls woken
	// together, answers each device as KeyCounts does: this device
	// beside another of the same user, the same device ID of another
	// user (neither has keys), and this device twice.
	devs := []keyserver.DeviceRef{{UserID: userID, DeviceID: "OTHERDEVICE"}, {UserID: userID, DeviceID: deviceID},
		{UserID: "@nobody:example.org", DeviceID: deviceID}, {UserID: userID, DeviceID: deviceID}}
	got, err := srv.HS.KeyServer.KeyCountsOfDevices(ctx, devs)
	if err != nil || len(got) != len(devs) {
		t.Fatalf("KeyCountsOfDevices: %v, %v", got, err)
	}
	for i, d := range devs {
		want := keyserver.DeviceKeyCounts{OneTimeKeys: map[string]int{}, UnusedFallback: []string{}}
		if d.UserID == userID && d.DeviceID == deviceID {
			want = keyserver.DeviceKeyCounts{OneTimeKeys: otk, UnusedFallback: fallback}
		}
		if !maps.Equal(got[i].OneTimeKeys, want.OneTimeKeys) || !slices.Equal(got[i].UnusedFallback, want.UnusedFallback) ||
			got[i].UnusedFallback == nil || got[i].OneTimeKeys == nil {
			t.Errorf("KeyCountsOfDevices[%d] (%v) = %+v, want %+v", i, d, got[i], want)
		}
	}
}

// TestClaim: each one-time key goes to exactly one claimer, even when 20
// claim at once from a device with 10; the rest get the fallback key,
// which stays and is marked used; an unknown device yields nothing.
func TestClaim(t *testing.T) {
	testserver.ForEachEngine(t, nil, func(t *testing.T, srv *testserver.Server) {
		ctx := context.Background()
		alice := register(t, srv, "alice")
		bob := register(t, srv, "bob")
		keys := newDeviceKeys(t, alice.userID, alice.deviceID)
		otks := map[string]any{}
		for i := 0; i < 10; i++ {
			otks[fmt.Sprintf("signed_curve25519:OTK%d", i)] = keys.signedOTK(t, false)
		}
		fallback := keys.signedOTK(t, true)
		status, body := alice.do(t, http.MethodPost, "/_matrix/client/v3/keys/upload", map[string]any{
			"device_keys":   keys.deviceObject(t),
			"one_time_keys": otks,
			"fallback_keys": map[string]any{"signed_curve25519:FB1": fallback},
		})
		if status != http.StatusOK || dig(body, "one_time_key_counts", "signed_curve25519") != float64(10) {
			t.Fatalf("upload: %d %v", status, body)
		}
		if types, err := srv.HS.KeyServer.UnusedFallbackKeyTypes(ctx, alice.userID, alice.deviceID); err != nil || len(types) != 1 || types[0] != "signed_curve25519" {
			t.Fatalf("unused fallback key types: %v %v", types, err)
		}
		sameKeyCounts(t, srv, alice.userID, alice.deviceID)

		const claimers = 20
		results := make([]string, claimers)
		var wg sync.WaitGroup
		for i := 0; i < claimers; i++ {
			wg.Add(1)
			go func(i int) {
				defer wg.Done()
				status, body := call(t, srv, http.MethodPost, "/_matrix/client/v3/keys/claim", bob.token, map[string]any{
					"one_time_keys": map[string]any{alice.userID: map[string]any{alice.deviceID: "signed_curve25519"}},
				})
				if status != http.StatusOK {
					t.Errorf("claim: %d %v", status, body)
					return
				}
				for keyID := range dig(body, "one_time_keys", alice.userID, alice.deviceID).(map[string]any) {
					results[i] = keyID
				}
			}(i)
		}
		wg.Wait()
		seen := map[string]int{}
		for _, k := range results {
			seen[k]++
		}
		for i := 0; i < 10; i++ {
			if n := seen[fmt.Sprintf("signed_curve25519:OTK%d", i)]; n != 1 {
				t.Errorf("one-time key OTK%d handed out %d times, want exactly once", i, n)
			}
		}
		if seen["signed_curve25519:FB1"] != claimers-10 {
			t.Errorf("fallback key handed out %d times, want %d (results %v)", seen["signed_curve25519:FB1"], claimers-10, seen)
		}
		if types, _ := srv.HS.KeyServer.UnusedFallbackKeyTypes(ctx, alice.userID, alice.deviceID); len(types) != 0 {
			t.Errorf("unused fallback key types after use: %v, want none", types)
		}
		if counts, _ := srv.HS.KeyServer.OneTimeKeyCounts(ctx, alice.userID, alice.deviceID); len(counts) != 0 {
			t.Errorf("one-time key counts after exhaustion: %v", counts)
		}
		sameKeyCounts(t, srv, alice.userID, alice.deviceID)
		// A new fallback key is unused again.
		status, _ = alice.do(t, http.MethodPost, "/_matrix/client/v3/keys/upload", map[string]any{"fallback_keys": map[string]any{"signed_curve25519:FB2": keys.signedOTK(t, true)}})
		if types, _ := srv.HS.KeyServer.UnusedFallbackKeyTypes(ctx, alice.userID, alice.deviceID); status != http.StatusOK || len(types) != 1 {
			t.Errorf("new fallback key: %d, unused types %v", status, types)
		}
		sameKeyCounts(t, srv, alice.userID, alice.deviceID)
		sameKeyCounts(t, srv, bob.userID, bob.deviceID) // no keys at all

		// Unknown device, unknown user, remote user: empty, not an error.
		status, body = bob.do(t, http.MethodPost, "/_matrix/client/v3/keys/claim", map[string]any{
			"one_time_keys": map[string]any{
				alice.userID:         map[string]any{"NOSUCHDEVICE": "signed_curve25519"},
				"@nobody:localhost":  map[string]any{"X": "signed_curve25519"},
				"@carol:example.org": map[string]any{"Y": "signed_curve25519"},
			},
		})
		if status != http.StatusOK || len(body["one_time_keys"].(map[string]any)) != 0 || dig(body, "failures", "example.org") == nil {
			t.Errorf("claim from unknown devices: %d %v, want 200, no keys, example.org in failures", status, body)
		}
	})
}
