package keyserver_test

import (
	"context"
	"fmt"
	"maps"
	"net/http"
	"slices"
	"testing"

	"github.com/myelin-chat/myelin/internal/testserver"
	"github.com/myelin-chat/myelin/keyserver"
	"github.com/myelin-chat/myelin/storage"
)

// wantKeyCounts checks what a /sync response would carry for the device
// (device_one_time_keys_count, device_unused_fallback_key_types), through
// both reads /sync uses, twice each: the first may read the database,
// the second is answered from the key-count memo when the server has one.
func wantKeyCounts(t *testing.T, srv *testserver.Server, u *user, otk int, fallback []string) {
	t.Helper()
	ctx := context.Background()
	want := map[string]int{}
	if otk > 0 {
		want["signed_curve25519"] = otk
	}
	for range 2 {
		gotOTK, gotFallback, err := srv.HS.KeyServer.KeyCounts(ctx, u.userID, u.deviceID)
		if err != nil || !maps.Equal(gotOTK, want) || !slices.Equal(gotFallback, fallback) {
			t.Fatalf("KeyCounts(%s) = %v %v %v, want %v %v", u.deviceID, gotOTK, gotFallback, err, want, fallback)
		}
		got, err := srv.HS.KeyServer.KeyCountsOfDevices(ctx, []keyserver.DeviceRef{{UserID: u.userID, DeviceID: u.deviceID}})
		if err != nil || len(got) != 1 || !maps.Equal(got[0].OneTimeKeys, want) || !slices.Equal(got[0].UnusedFallback, fallback) {
			t.Fatalf("KeyCountsOfDevices(%s) = %+v %v, want %v %v", u.deviceID, got, err, want, fallback)
		}
	}
}

// upload posts keys as u and fails the test unless it succeeds.
func upload(t *testing.T, u *user, body map[string]any) {
	t.Helper()
	if status, resp := u.do(t, http.MethodPost, "/_matrix/client/v3/keys/upload", body); status != http.StatusOK {
		t.Fatalf("upload: %d %v", status, resp)
	}
}

// claim claims one signed_curve25519 key of owner's device as u and
// returns its key ID ("" when none was left).
func claim(t *testing.T, u, owner *user) string {
	t.Helper()
	status, body := u.do(t, http.MethodPost, "/_matrix/client/v3/keys/claim", map[string]any{
		"one_time_keys": map[string]any{owner.userID: map[string]any{owner.deviceID: "signed_curve25519"}},
	})
	if status != http.StatusOK {
		t.Fatalf("claim: %d %v", status, body)
	}
	keys, _ := dig(body, "one_time_keys", owner.userID, owner.deviceID).(map[string]any)
	for id := range keys {
		return id
	}
	return ""
}

// TestKeyCountMemoDroppedByEveryKeyWrite: the key counts a /sync
// response carries come from memory once read (a row written behind the
// key server's back does not show), and every write that changes them
// drops the device's entry: an upload of one-time keys, a claim of a
// one-time key, the first claim of a fallback key, the upload of a new
// fallback key, and the deletion of the device.
func TestKeyCountMemoDroppedByEveryKeyWrite(t *testing.T) {
	testserver.ForEachEngine(t, nil, func(t *testing.T, srv *testserver.Server) {
		ctx := context.Background()
		alice, bob := register(t, srv, "alice"), register(t, srv, "bob")
		keys := newDeviceKeys(t, alice.userID, alice.deviceID)
		upload(t, alice, map[string]any{
			"device_keys": keys.deviceObject(t),
			"one_time_keys": map[string]any{
				"signed_curve25519:K1": keys.signedOTK(t, false), "signed_curve25519:K2": keys.signedOTK(t, false)},
			"fallback_keys": map[string]any{"signed_curve25519:FB1": keys.signedOTK(t, true)},
		})
		sc := []string{"signed_curve25519"}
		wantKeyCounts(t, srv, alice, 2, sc)

		// The memo answers: a key written straight into the table (no
		// key-server write, so no drop) is not counted yet.
		if err := srv.HS.DB.Write(ctx, func(tx storage.Tx) error {
			_, err := tx.Exec(ctx, `INSERT INTO keyserver_one_time_keys (user_id, device_id, algorithm, key_id, key_json, created_ts)
				VALUES ($1, $2, 'signed_curve25519', 'BEHIND', '{}', 0)`, alice.userID, alice.deviceID)
			return err
		}); err != nil {
			t.Fatal(err)
		}
		wantKeyCounts(t, srv, alice, 2, sc)

		// An upload drops the entry: 2 + BEHIND + K3.
		upload(t, alice, map[string]any{"one_time_keys": map[string]any{"signed_curve25519:K3": keys.signedOTK(t, false)}})
		wantKeyCounts(t, srv, alice, 4, sc)

		// Each claim of a one-time key drops it.
		for left := 3; left >= 0; left-- {
			if id := claim(t, bob, alice); id == "" || id == "signed_curve25519:FB1" {
				t.Fatalf("claim got %q, want a one-time key", id)
			}
			wantKeyCounts(t, srv, alice, left, sc)
		}
		// The first claim of the fallback key marks it used.
		if id := claim(t, bob, alice); id != "signed_curve25519:FB1" {
			t.Fatalf("claim got %q, want the fallback key", id)
		}
		wantKeyCounts(t, srv, alice, 0, []string{})
		// A new fallback key is unused.
		upload(t, alice, map[string]any{"fallback_keys": map[string]any{"signed_curve25519:FB2": keys.signedOTK(t, true)}})
		wantKeyCounts(t, srv, alice, 0, sc)

		// Deleting a device (here by logging it out) deletes its keys.
		second := alice.login(t)
		keys2 := newDeviceKeys(t, second.userID, second.deviceID)
		upload(t, second, map[string]any{"device_keys": keys2.deviceObject(t),
			"one_time_keys": map[string]any{"signed_curve25519:S1": keys2.signedOTK(t, false)},
			"fallback_keys": map[string]any{"signed_curve25519:SFB": keys2.signedOTK(t, true)}})
		wantKeyCounts(t, srv, second, 1, sc)
		if status, body := second.do(t, http.MethodPost, "/_matrix/client/v3/logout", map[string]any{}); status != http.StatusOK {
			t.Fatalf("logout: %d %v", status, body)
		}
		wantKeyCounts(t, srv, second, 0, []string{})
		wantKeyCounts(t, srv, alice, 0, sc)
	})
}

// TestSplitModeKeyCountsSeeOtherProcess: two homeservers share one
// PostgreSQL database and Redis (split mode). Keys uploaded and claimed
// through A change the counts B's /sync reads for the device at once:
// B's key server has no key-count memo, since A's writes never reach it.
func TestSplitModeKeyCountsSeeOtherProcess(t *testing.T) {
	a, b := testserver.StartSplit(t)
	alice, bob := register(t, a, "alice"), register(t, a, "bob")
	onB := &user{srv: b, userID: alice.userID, deviceID: alice.deviceID, token: alice.token} // one database: the token works on B
	keys := newDeviceKeys(t, alice.userID, alice.deviceID)
	upload(t, alice, map[string]any{"device_keys": keys.deviceObject(t),
		"fallback_keys": map[string]any{"signed_curve25519:FB1": keys.signedOTK(t, true)}})
	sc := []string{"signed_curve25519"}
	wantKeyCounts(t, b, onB, 0, sc)
	for i := range 2 {
		upload(t, alice, map[string]any{"one_time_keys": map[string]any{
			fmt.Sprintf("signed_curve25519:K%d", i): keys.signedOTK(t, false)}})
		wantKeyCounts(t, b, onB, i+1, sc)
	}
	syncKeyCounts(t, onB, float64(2), 1)
	for left := 1; left >= 0; left-- {
		claim(t, bob, alice)
		wantKeyCounts(t, b, onB, left, sc)
	}
	claim(t, bob, alice)
	wantKeyCounts(t, b, onB, 0, []string{})
	syncKeyCounts(t, onB, nil, 0)
}

// syncKeyCounts checks the key counts of u's /sync: the signed_curve25519
// one-time key count (nil: none) and how many unused fallback key types.
func syncKeyCounts(t *testing.T, u *user, otk any, fallbackTypes int) {
	t.Helper()
	status, body := u.do(t, http.MethodGet, "/_matrix/client/v3/sync?timeout=0", nil)
	fallback, _ := body["device_unused_fallback_key_types"].([]any)
	if status != http.StatusOK || dig(body, "device_one_time_keys_count", "signed_curve25519") != otk || len(fallback) != fallbackTypes {
		t.Fatalf("/sync: %d %v %v, want %v and %d fallback types", status, body["device_one_time_keys_count"], fallback, otk, fallbackTypes)
	}
}
