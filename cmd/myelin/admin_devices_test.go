package main

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/matrix-org/gomatrixserverlib"

	"github.com/myelin-chat/myelin/clientapi"
	"github.com/myelin-chat/myelin/config"
	"github.com/myelin-chat/myelin/internal/homeserver"
	"github.com/myelin-chat/myelin/internal/testserver"
	"github.com/myelin-chat/myelin/storage"
)

// cliConfigWithUsers writes srv's configuration where the admin
// commands read it and creates each user through `myelin user create`
// (password s3cret-password); it returns the configuration's path.
func cliConfigWithUsers(t *testing.T, srv *testserver.Server, localparts ...string) string {
	t.Helper()
	configPath := filepath.Join(t.TempDir(), "myelin.yaml")
	if err := os.WriteFile(configPath, config.Sample(*srv.Config), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, u := range localparts {
		if _, err := runCLI(t, "", "user", "create", "-config", configPath, "-password", "s3cret-password", u); err != nil {
			t.Fatal(err)
		}
	}
	return configPath
}

func mustCall(t *testing.T, srv *testserver.Server, token, method, path string, body any) map[string]any {
	t.Helper()
	status, out := testserver.Call(t, srv, method, path, token, body)
	if status != http.StatusOK {
		t.Fatalf("%s %s: %d %v", method, path, status, out)
	}
	return out
}

// loginDevice logs localpart in with password and returns its token and
// device ID.
func loginDevice(t *testing.T, srv *testserver.Server, localpart, password string) (token, deviceID string) {
	t.Helper()
	out := mustCall(t, srv, "", http.MethodPost, "/_matrix/client/v3/login", map[string]any{
		"type": "m.login.password", "password": password,
		"identifier": map[string]any{"type": "m.id.user", "user": localpart},
	})
	return out["access_token"].(string), out["device_id"].(string)
}

// uploadDeviceKeysAndPusher uploads signed device keys, a one-time key
// and a fallback key for the device, and sets an http pusher for it.
func uploadDeviceKeysAndPusher(t *testing.T, srv *testserver.Server, token, userID, deviceID string) {
	t.Helper()
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	b64 := base64.RawStdEncoding.EncodeToString
	sign := func(obj map[string]any) map[string]any {
		raw, _ := json.Marshal(obj)
		canonical, err := gomatrixserverlib.CanonicalJSON(raw)
		if err != nil {
			t.Fatal(err)
		}
		obj["signatures"] = map[string]any{userID: map[string]any{"ed25519:" + deviceID: b64(ed25519.Sign(priv, canonical))}}
		return obj
	}
	curve := func() string {
		k := make([]byte, 32)
		_, _ = rand.Read(k)
		return b64(k)
	}
	out := mustCall(t, srv, token, http.MethodPost, "/_matrix/client/v3/keys/upload", map[string]any{
		"device_keys": sign(map[string]any{
			"user_id": userID, "device_id": deviceID,
			"algorithms": []string{"m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"},
			"keys":       map[string]any{"ed25519:" + deviceID: b64(pub), "curve25519:" + deviceID: curve()},
		}),
		"one_time_keys": map[string]any{"signed_curve25519:AAAA": sign(map[string]any{"key": curve()})},
		"fallback_keys": map[string]any{"signed_curve25519:BBBB": sign(map[string]any{"key": curve(), "fallback": true})},
	})
	if counts, _ := out["one_time_key_counts"].(map[string]any); counts["signed_curve25519"] != float64(1) {
		t.Fatalf("keys/upload: %v", out)
	}
	mustCall(t, srv, token, http.MethodPost, "/_matrix/client/v3/pushers/set", map[string]any{
		"kind": "http", "app_id": "org.example.app", "pushkey": "key-" + deviceID,
		"app_display_name": "Example", "device_display_name": "Phone", "lang": "en",
		"data": map[string]any{"url": "https://push.example.org/_matrix/push/v1/notify"},
	})
}

// queryDevices returns the devices /keys/query reports for userID.
func queryDevices(t *testing.T, srv *testserver.Server, token, userID string) map[string]any {
	t.Helper()
	out := mustCall(t, srv, token, http.MethodPost, "/_matrix/client/v3/keys/query",
		map[string]any{"device_keys": map[string]any{userID: []string{}}})
	devices, _ := out["device_keys"].(map[string]any)[userID].(map[string]any)
	return devices
}

// countRows counts rows of a per-device table for (userID, deviceID).
func countRows(t *testing.T, db *storage.DB, query string, args ...any) int {
	t.Helper()
	var n int
	if err := db.Reader().QueryRow(context.Background(), query, args...).Scan(&n); err != nil {
		t.Fatalf("%s: %v", query, err)
	}
	return n
}

// TestUserCommandsDeleteDeviceState: `myelin user passwd` (which logs
// every device out) and `myelin user deactivate` delete the devices'
// keys, one-time and fallback keys and pushers, and record a device-list
// change, in the same transaction, as the server's own device deletions
// do (homeserver.DevicesDeletedHook); a running server's /keys/query
// stops reporting the devices and a roommate's next /sync lists the user
// in device_lists.changed.
func TestUserCommandsDeleteDeviceState(t *testing.T) {
	testserver.ForEachEngine(t, nil, func(t *testing.T, srv *testserver.Server) {
		ctx := context.Background()
		configPath := cliConfigWithUsers(t, srv, "alice", "bob")
		db, err := storage.Open(ctx, homeserver.StorageOptions(srv.Config.Database))
		if err != nil {
			t.Fatal(err)
		}
		defer db.Close()
		const bobID = "@bob:localhost"
		aliceToken, _ := loginDevice(t, srv, "alice", "s3cret-password")
		roomID := mustCall(t, srv, aliceToken, http.MethodPost, "/_matrix/client/v3/createRoom",
			map[string]any{"preset": "public_chat"})["room_id"].(string)

		// deleted checks that deviceID's state is gone and that a
		// device-list change for it was recorded after position since.
		deleted := func(step, deviceID string, since float64) {
			t.Helper()
			if devices := queryDevices(t, srv, aliceToken, bobID); len(devices) != 0 {
				t.Errorf("%s: /keys/query still reports bob's devices %v", step, devices)
			}
			for _, table := range []string{"keyserver_device_keys", "keyserver_one_time_keys", "keyserver_fallback_keys", "pushers"} {
				if n := countRows(t, db, `SELECT COUNT(*) FROM `+table+` WHERE user_id = $1 AND device_id = $2`, bobID, deviceID); n != 0 {
					t.Errorf("%s: %d rows of %s left for the deleted device", step, n, table)
				}
			}
			if n := countRows(t, db, `SELECT COUNT(*) FROM keyserver_device_list_changes WHERE user_id = $1 AND device_id = $2 AND position > $3`,
				bobID, deviceID, int64(since)); n != 1 {
				t.Errorf("%s: %d device-list changes recorded for the deleted device, want 1", step, n)
			}
		}
		headPos := func() float64 {
			return float64(countRows(t, db, `SELECT CAST(COALESCE(MAX(position), 0) AS BIGINT) FROM keyserver_device_list_changes`))
		}

		// passwd logs bob's device out.
		bobToken, bobDevice := loginDevice(t, srv, "bob", "s3cret-password")
		mustCall(t, srv, bobToken, http.MethodPost, "/_matrix/client/v3/join/"+url.PathEscape(roomID), map[string]any{})
		uploadDeviceKeysAndPusher(t, srv, bobToken, bobID, bobDevice)
		if devices := queryDevices(t, srv, aliceToken, bobID); devices[bobDevice] == nil {
			t.Fatalf("before passwd: /keys/query reports %v, want device %s", devices, bobDevice)
		}
		before := headPos()
		if _, err := runCLI(t, "", "user", "passwd", "-config", configPath, "-password", "another-s3cret", "bob"); err != nil {
			t.Fatal(err)
		}
		deleted("user passwd", bobDevice, before)

		// deactivate deletes the new device; alice, sharing a room with
		// bob, sees the change in her next /sync.
		bobToken, bobDevice = loginDevice(t, srv, "bob", "another-s3cret")
		uploadDeviceKeysAndPusher(t, srv, bobToken, bobID, bobDevice)
		if devices := queryDevices(t, srv, aliceToken, bobID); devices[bobDevice] == nil {
			t.Fatalf("before deactivate: /keys/query reports %v, want device %s", devices, bobDevice)
		}
		since := mustCall(t, srv, aliceToken, http.MethodGet, "/_matrix/client/v3/sync?timeout=0", nil)["next_batch"].(string)
		before = headPos()
		if _, err := runCLI(t, "", "user", "deactivate", "-config", configPath, "bob"); err != nil {
			t.Fatal(err)
		}
		deleted("user deactivate", bobDevice, before)
		// The server was not notified (another process wrote): the change
		// is read from the database once sync's shared heads are older
		// than their bound (syncapi maxHeadsAge, 250 ms).
		time.Sleep(300 * time.Millisecond)
		out := mustCall(t, srv, aliceToken, http.MethodGet, "/_matrix/client/v3/sync?timeout=0&since="+url.QueryEscape(since), nil)
		changed, _ := out["device_lists"].(map[string]any)["changed"].([]any)
		found := false
		for _, u := range changed {
			found = found || u == bobID
		}
		if !found {
			t.Errorf("alice's /sync after user deactivate: device_lists %v, want %s in changed", out["device_lists"], bobID)
		}
	})
}

// TestUserDeactivateBeforeServerTables: the admin commands may run on a
// database no server of this version has opened, where only the account
// tables exist (here: made by clientapi alone, with a device). Deleting
// the device must still run the key and push servers' deletions, so the
// commands apply those components' migrations first.
func TestUserDeactivateBeforeServerTables(t *testing.T) {
	ctx := context.Background()
	configPath, dbPath := writeConfig(t)
	cfg := config.Defaults()
	cfg.Global.ServerName = "localhost"
	cfg.Database = config.Database{Engine: "sqlite", SQLitePath: dbPath}
	db, err := storage.Open(ctx, homeserver.StorageOptions(cfg.Database))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	accounts, err := clientapi.OpenAccounts(ctx, &cfg, db)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := accounts.CreateUser(ctx, "bob", "s3cret-password", false); err != nil {
		t.Fatal(err)
	}
	if err := db.Write(ctx, func(tx storage.Tx) error {
		_, err := tx.Exec(ctx, `INSERT INTO devices (localpart, device_id, created_ts) VALUES ($1, $2, $3)`, "bob", "BOBDEVICE", time.Now().UnixMilli())
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := runCLI(t, "", "user", "deactivate", "-config", configPath, "bob"); err != nil {
		t.Fatalf("user deactivate: %v", err)
	}
	if n := countRows(t, db, `SELECT COUNT(*) FROM devices WHERE localpart = 'bob'`); n != 0 {
		t.Errorf("%d devices left after user deactivate", n)
	}
	if n := countRows(t, db, `SELECT COUNT(*) FROM keyserver_device_list_changes WHERE user_id = '@bob:localhost' AND device_id = 'BOBDEVICE'`); n != 1 {
		t.Errorf("%d device-list changes recorded, want 1", n)
	}
}

// TestUserPasswdDeviceIDReuse: a running server keeps its devices'
// one-time key counts in memory (keyserver.CountMemo), which the admin
// commands' deletions cannot reach. A device created again with the ID
// of one `myelin user passwd` logged out (login with device_id) must
// start from its own keys, none, not from the deleted device's counts.
func TestUserPasswdDeviceIDReuse(t *testing.T) {
	testserver.ForEachEngine(t, nil, func(t *testing.T, srv *testserver.Server) {
		configPath := cliConfigWithUsers(t, srv, "bob")
		const bobID, device = "@bob:localhost", "REUSEDDEVICE"
		login := func(password string) string {
			out := mustCall(t, srv, "", http.MethodPost, "/_matrix/client/v3/login", map[string]any{
				"type": "m.login.password", "password": password, "device_id": device,
				"identifier": map[string]any{"type": "m.id.user", "user": "bob"},
			})
			return out["access_token"].(string)
		}
		otkCount := func(token string) any {
			out := mustCall(t, srv, token, http.MethodGet, "/_matrix/client/v3/sync?timeout=0", nil)
			counts, _ := out["device_one_time_keys_count"].(map[string]any)
			return counts["signed_curve25519"]
		}
		token := login("s3cret-password")
		uploadDeviceKeysAndPusher(t, srv, token, bobID, device)
		if n := otkCount(token); n != float64(1) {
			t.Fatalf("one-time key count before passwd: %v, want 1", n)
		}
		if _, err := runCLI(t, "", "user", "passwd", "-config", configPath, "-password", "another-s3cret", "bob"); err != nil {
			t.Fatal(err)
		}
		token = login("another-s3cret")
		if n := otkCount(token); n != nil && n != float64(0) {
			t.Errorf("one-time key count of the device created again: %v, want 0", n)
		}
	})
}
