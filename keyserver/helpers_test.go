package keyserver_test

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"strings"
	"testing"

	"github.com/matrix-org/gomatrixserverlib"

	"github.com/myelin-chat/myelin/internal/testserver"
)

const testPassword = "correct horse battery staple"

// user is a registered test user with one device.
type user struct {
	srv      *testserver.Server
	userID   string
	deviceID string
	token    string
}

// register creates name with m.login.dummy (open registration).
func register(t *testing.T, srv *testserver.Server, name string) *user {
	t.Helper()
	status, body := call(t, srv, http.MethodPost, "/_matrix/client/v3/register", "", map[string]any{
		"username": name, "password": testPassword, "auth": map[string]any{"type": "m.login.dummy"},
	})
	if status != http.StatusOK {
		t.Fatalf("register %s: %d %v", name, status, body)
	}
	return &user{srv: srv, userID: body["user_id"].(string), deviceID: body["device_id"].(string), token: body["access_token"].(string)}
}

// login adds a device for u's account.
func (u *user) login(t *testing.T) *user {
	t.Helper()
	local := strings.TrimPrefix(strings.Split(u.userID, ":")[0], "@")
	status, body := call(t, u.srv, http.MethodPost, "/_matrix/client/v3/login", "", map[string]any{
		"type": "m.login.password", "identifier": map[string]any{"type": "m.id.user", "user": local}, "password": testPassword,
	})
	if status != http.StatusOK {
		t.Fatalf("login: %d %v", status, body)
	}
	return &user{srv: u.srv, userID: u.userID, deviceID: body["device_id"].(string), token: body["access_token"].(string)}
}

// do makes an authenticated request as u.
func (u *user) do(t *testing.T, method, path string, body any) (int, map[string]any) {
	t.Helper()
	return call(t, u.srv, method, path, u.token, body)
}

// call makes a raw request and decodes the JSON object answer.
func call(t *testing.T, srv *testserver.Server, method, path, token string, body any) (int, map[string]any) {
	t.Helper()
	return testserver.Call(t, srv, method, path, token, body)
}

// deviceKeys is a hand-made device identity, for tests that need to
// forge or break signatures (the mautrix tests use real olm accounts).
type deviceKeys struct {
	userID, deviceID string
	priv             ed25519.PrivateKey
	curve            string
}

func newDeviceKeys(t *testing.T, userID, deviceID string) *deviceKeys {
	t.Helper()
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	curve := make([]byte, 32)
	_, _ = rand.Read(curve)
	return &deviceKeys{userID: userID, deviceID: deviceID, priv: priv, curve: b64(curve)}
}

func b64(b []byte) string { return base64.RawStdEncoding.EncodeToString(b) }

func (k *deviceKeys) ed25519() string { return b64(k.priv.Public().(ed25519.PublicKey)) }

// sign adds k's signature to obj (a JSON object as a map).
func (k *deviceKeys) sign(t *testing.T, obj map[string]any) map[string]any {
	t.Helper()
	return signWith(t, obj, k.userID, "ed25519:"+k.deviceID, k.priv)
}

// signWith signs obj's canonical JSON (without signatures and unsigned)
// and adds the signature under userID/keyID.
func signWith(t *testing.T, obj map[string]any, userID, keyID string, priv ed25519.PrivateKey) map[string]any {
	t.Helper()
	unsigned := map[string]any{}
	for k, v := range obj {
		if k != "signatures" && k != "unsigned" {
			unsigned[k] = v
		}
	}
	raw, _ := json.Marshal(unsigned)
	canonical, err := gomatrixserverlib.CanonicalJSON(raw)
	if err != nil {
		t.Fatal(err)
	}
	sig := b64(ed25519.Sign(priv, canonical))
	sigs, _ := obj["signatures"].(map[string]any)
	if sigs == nil {
		sigs = map[string]any{}
	}
	byUser, _ := sigs[userID].(map[string]any)
	if byUser == nil {
		byUser = map[string]any{}
	}
	byUser[keyID] = sig
	sigs[userID] = byUser
	obj["signatures"] = sigs
	return obj
}

// deviceObject is k's signed device keys object.
func (k *deviceKeys) deviceObject(t *testing.T) map[string]any {
	return k.sign(t, map[string]any{
		"user_id":    k.userID,
		"device_id":  k.deviceID,
		"algorithms": []string{"m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"},
		"keys": map[string]any{
			"ed25519:" + k.deviceID:    k.ed25519(),
			"curve25519:" + k.deviceID: k.curve,
		},
	})
}

// signedOTK is a signed_curve25519 one-time key signed by k.
func (k *deviceKeys) signedOTK(t *testing.T, fallback bool) map[string]any {
	key := make([]byte, 32)
	_, _ = rand.Read(key)
	obj := map[string]any{"key": b64(key)}
	if fallback {
		obj["fallback"] = true
	}
	return k.sign(t, obj)
}

// dig walks a decoded JSON object.
func dig(v any, path ...string) any {
	for _, p := range path {
		m, ok := v.(map[string]any)
		if !ok {
			return nil
		}
		v = m[p]
	}
	return v
}

// nextBatch is u's next_batch from an immediate /sync: a sync token.
func nextBatch(t *testing.T, u *user) string {
	t.Helper()
	status, body := u.do(t, http.MethodGet, "/_matrix/client/v3/sync?timeout=0", nil)
	token, _ := body["next_batch"].(string)
	if status != http.StatusOK || token == "" {
		t.Fatalf("/sync: %d %v", status, body)
	}
	return token
}
