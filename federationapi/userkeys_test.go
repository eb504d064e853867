package federationapi_test

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"testing"

	"github.com/matrix-org/gomatrixserverlib"
	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
)

// rawCall makes an authenticated client request as u and decodes the
// JSON answer into out.
func (u *syncer) rawCall(method, path string, body, out any) error {
	u.t.Helper()
	_, err := u.cli.MakeFullRequest(context.Background(), mautrix.FullRequest{Method: method,
		URL: u.cli.HomeserverURL.String() + path, RequestJSON: body, ResponseJSON: out})
	return err
}

// uploadDeviceKeys uploads signed device keys and one signed one-time
// key for u's device, as a client with its own ed25519 key would.
func (u *syncer) uploadDeviceKeys() {
	t := u.t
	t.Helper()
	pub, priv, _ := ed25519.GenerateKey(rand.Reader)
	user, dev := string(u.id()), string(u.cli.DeviceID)
	keyID := gomatrixserverlib.KeyID("ed25519:" + dev)
	curve := make([]byte, 32)
	_, _ = rand.Read(curve)
	b64 := base64.RawStdEncoding.EncodeToString
	dk, err := gomatrixserverlib.SignJSON(user, keyID, priv, mustJSON(map[string]any{
		"user_id": user, "device_id": dev, "algorithms": []string{"m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"},
		"keys": map[string]string{"ed25519:" + dev: b64(pub), "curve25519:" + dev: b64(curve)},
	}))
	if err != nil {
		t.Fatal(err)
	}
	otk, err := gomatrixserverlib.SignJSON(user, keyID, priv, mustJSON(map[string]any{"key": b64(curve)}))
	if err != nil {
		t.Fatal(err)
	}
	if err := u.rawCall(http.MethodPost, "/_matrix/client/v3/keys/upload", map[string]any{
		"device_keys":   json.RawMessage(dk),
		"one_time_keys": map[string]json.RawMessage{"signed_curve25519:AAAAAQ": otk},
	}, nil); err != nil {
		t.Fatalf("uploading keys of %s/%s: %v", user, dev, err)
	}
}

type keysQueryResp struct {
	DeviceKeys map[string]map[string]json.RawMessage `json:"device_keys"`
	Failures   map[string]json.RawMessage            `json:"failures"`
}

func (u *syncer) queryKeys(users map[string][]string, timeoutMS int) keysQueryResp {
	u.t.Helper()
	var resp keysQueryResp
	if err := u.rawCall(http.MethodPost, "/_matrix/client/v3/keys/query", map[string]any{"device_keys": users, "timeout": timeoutMS}, &resp); err != nil {
		u.t.Fatalf("keys/query: %v", err)
	}
	return resp
}

// login adds a device to u's account.
func (s *fedServer) login(local string) *syncer {
	t := s.n.t
	t.Helper()
	cli, err := mautrix.NewClient("https://"+s.Name, "", "")
	if err != nil {
		t.Fatal(err)
	}
	cli.Client = s.n.httpClient()
	if _, err := cli.Login(context.Background(), &mautrix.ReqLogin{Type: mautrix.AuthTypePassword, Password: e2ePassword,
		Identifier: mautrix.UserIdentifier{Type: mautrix.IdentifierTypeUser, User: local}, StoreCredentials: true}); err != nil {
		t.Fatalf("login %s: %v", local, err)
	}
	return &syncer{t: t, cli: cli, timeline: map[id.RoomID][]*event.Event{}, ephemeral: map[id.RoomID][]*event.Event{}, invites: map[id.RoomID]bool{}}
}

// cachedDevices lists the devices of userID in s's cache of remote keys.
func cachedDevices(t testing.TB, s *fedServer, userID string) []string {
	rows, err := s.HS.DB.Reader().Query(context.Background(),
		`SELECT device_id FROM keyserver_remote_device_keys WHERE user_id = $1 ORDER BY device_id`, userID)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var d string
		_ = rows.Scan(&d)
		out = append(out, d)
	}
	return out
}

// TestFederatedDeviceKeys: bob on B queries and claims alice's keys on A
// through B; an unreachable server is in failures within the timeout;
// alice's new device and its deletion reach B's cache through
// m.device_list_update EDUs, so B answers from the cache while A is down.
func TestFederatedDeviceKeys(t *testing.T) {
	t.Parallel()
	forEachEngine(t, func(t *testing.T, n *network) {
		ctx := context.Background()
		a, b, alice, bob, _ := clientPair(t, n)
		alice.uploadDeviceKeys()
		bob.uploadDeviceKeys()
		aliceID := string(alice.id())

		// Query and claim across servers.
		resp := bob.queryKeys(map[string][]string{aliceID: {}}, 5000)
		if _, ok := resp.DeviceKeys[aliceID][string(alice.cli.DeviceID)]; !ok || len(resp.Failures) != 0 {
			t.Fatalf("bob's query for alice: %+v", resp)
		}
		var claim struct {
			OneTimeKeys map[string]map[string]map[string]json.RawMessage `json:"one_time_keys"`
			Failures    map[string]json.RawMessage                       `json:"failures"`
		}
		if err := bob.rawCall(http.MethodPost, "/_matrix/client/v3/keys/claim", map[string]any{
			"one_time_keys": map[string]any{aliceID: map[string]string{string(alice.cli.DeviceID): "signed_curve25519"}}}, &claim); err != nil {
			t.Fatal(err)
		}
		if len(claim.OneTimeKeys[aliceID][string(alice.cli.DeviceID)]) != 1 || len(claim.Failures) != 0 {
			t.Fatalf("bob's claim of alice's key: %+v", claim)
		}
		// Alice's one key is gone on A now.
		claim.OneTimeKeys = nil
		if err := bob.rawCall(http.MethodPost, "/_matrix/client/v3/keys/claim", map[string]any{
			"one_time_keys": map[string]any{aliceID: map[string]string{string(alice.cli.DeviceID): "signed_curve25519"}}}, &claim); err != nil {
			t.Fatal(err)
		}
		if len(claim.OneTimeKeys[aliceID]) != 0 {
			t.Fatalf("the one-time key was handed out twice: %+v", claim)
		}

		// An unreachable server is reported, the rest answered.
		resp = bob.queryKeys(map[string][]string{aliceID: {}, "@ghost:localhost:1": {}}, 3000)
		if _, ok := resp.Failures["localhost:1"]; !ok || len(resp.DeviceKeys[aliceID]) == 0 {
			t.Fatalf("query with an unreachable server: %+v", resp)
		}

		// GET /user/devices: for A's own users only.
		code, body := n.request(a, b.Name, b.HS.Key, a.Name, http.MethodGet, "/_matrix/federation/v1/user/devices/"+pathEscape(aliceID), nil)
		var devs struct {
			UserID   string `json:"user_id"`
			StreamID int64  `json:"stream_id"`
			Devices  []struct {
				DeviceID string          `json:"device_id"`
				Keys     json.RawMessage `json:"keys"`
			} `json:"devices"`
		}
		if code != http.StatusOK || json.Unmarshal(body, &devs) != nil || devs.UserID != aliceID || devs.StreamID == 0 ||
			len(devs.Devices) != 1 || len(devs.Devices[0].Keys) == 0 {
			t.Fatalf("user/devices of alice: %d %s", code, body)
		}
		if code, _ := n.request(a, b.Name, b.HS.Key, a.Name, http.MethodGet, "/_matrix/federation/v1/user/devices/"+pathEscape(string(bob.id())), nil); code != http.StatusForbidden {
			t.Fatalf("user/devices of a user of B asked from A: %d, want 403", code)
		}

		// Alice's second device reaches B's cache through a device-list
		// update.
		eventually(t, "B to cache alice's device", func() bool { return len(cachedDevices(t, b, aliceID)) == 1 })
		alice2 := a.login("alice")
		alice2.uploadDeviceKeys()
		eventually(t, "B to cache alice's second device", func() bool { return len(cachedDevices(t, b, aliceID)) == 2 })

		// Deleting it is an update with deleted: true.
		if err := alice.cli.DeleteDevice(ctx, alice2.cli.DeviceID, &mautrix.ReqDeleteDevice[any]{Auth: map[string]any{
			"type": "m.login.password", "identifier": map[string]any{"type": "m.id.user", "user": "alice"}, "password": e2ePassword}}); err != nil {
			t.Fatalf("deleting alice's second device: %v", err)
		}
		eventually(t, "B to drop alice's deleted device", func() bool {
			d := cachedDevices(t, b, aliceID)
			return len(d) == 1 && d[0] == string(alice.cli.DeviceID)
		})

		// With A down, B answers from its cache.
		a.stop()
		resp = bob.queryKeys(map[string][]string{aliceID: {}}, 2000)
		if len(resp.Failures) != 0 || len(resp.DeviceKeys[aliceID]) != 1 {
			t.Fatalf("query while A is down: %+v", resp)
		}
		if _, ok := resp.DeviceKeys[aliceID][string(alice.cli.DeviceID)]; !ok {
			t.Fatalf("query while A is down lacks alice's device: %+v", resp)
		}
	})
}
