package clientapi_test

import (
	"crypto/hmac"
	"crypto/sha1"
	"encoding/base64"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/myelin-chat/myelin/clientapi"
	"github.com/myelin-chat/myelin/config"
	"github.com/myelin-chat/myelin/internal/testserver"
	"github.com/myelin-chat/myelin/storage"
)

// TestTurnServer drives GET /voip/turnServer: no TURN configured is 200
// {}; with a shared secret the username is <expiry>:<user ID>, expiring
// ttl seconds from now, and the password the base64 HMAC-SHA1 of it; with
// a fixed username and password those are given; guests are refused
// unless allowed.
// Spec: client-server-api, "Voice over IP"; data/api/client-server/voip.yaml.
func TestTurnServer(t *testing.T) {
	const path = "/_matrix/client/v3/voip/turnServer"
	uris := []string{"turn:turn.example.com:3478?transport=udp", "turns:turn.example.com:5349?transport=tcp"}

	t.Run("not configured", func(t *testing.T) {
		srv := testserver.Start(t, storage.SQLite, nil)
		alice := clientapi.InsertTestUser(t, srv.HS.DB, "alice", false)
		guest := clientapi.InsertTestUser(t, srv.HS.DB, "guest1", true)
		runSteps(t, srv, []step{
			{name: "user", method: "GET", path: path, token: alice, wantStatus: 200, wantBody: `{}`},
			{name: "guest", method: "GET", path: path, token: guest, wantStatus: 403, wantErrcode: "M_GUEST_ACCESS_FORBIDDEN"},
			{name: "no token", method: "GET", path: path, wantStatus: 401, wantErrcode: "M_MISSING_TOKEN"},
		})
	})

	t.Run("shared secret", func(t *testing.T) {
		const secret = "s3cret"
		srv := testserver.Start(t, storage.SQLite, func(c *config.Config) {
			c.ClientAPI.TURN = config.TURN{URIs: uris, SharedSecret: secret, TTL: config.Duration(time.Hour)}
		})
		alice := clientapi.InsertTestUser(t, srv.HS.DB, "alice", false)
		guest := clientapi.InsertTestUser(t, srv.HS.DB, "guest1", true)
		before := time.Now().Unix()
		status, body := callRaw(t, srv, "GET", path, alice, "")
		after := time.Now().Unix()
		if status != 200 {
			t.Fatalf("GET: %d %v", status, body)
		}
		username, _ := body["username"].(string)
		expiry, user, _ := strings.Cut(username, ":")
		exp, err := strconv.ParseInt(expiry, 10, 64)
		if err != nil || user != "@alice:localhost" || exp < before+3600 || exp > after+3600 {
			t.Errorf("username %q: want <now+3600>:@alice:localhost (now in [%d, %d])", username, before, after)
		}
		mac := hmac.New(sha1.New, []byte(secret))
		mac.Write([]byte(username))
		if want := base64.StdEncoding.EncodeToString(mac.Sum(nil)); body["password"] != want {
			t.Errorf("password = %v, want %s", body["password"], want)
		}
		if body["ttl"] != float64(3600) || len(body["uris"].([]any)) != 2 || body["uris"].([]any)[1] != uris[1] {
			t.Errorf("ttl/uris: %v", body)
		}
		status, body = callRaw(t, srv, "GET", path, guest, "")
		expectError(t, "guest", status, body, 403, "M_GUEST_ACCESS_FORBIDDEN")
	})

	t.Run("fixed credentials, guests allowed", func(t *testing.T) {
		srv := testserver.Start(t, storage.SQLite, func(c *config.Config) {
			c.ClientAPI.TURN = config.TURN{URIs: uris[:1], Username: "turnuser", Password: "turnpass",
				TTL: config.Duration(24 * time.Hour), AllowGuests: true}
		})
		guest := clientapi.InsertTestUser(t, srv.HS.DB, "guest1", true)
		runSteps(t, srv, []step{
			{name: "guest", method: "GET", path: path, token: guest, wantStatus: 200, wantBody: `{
				"username": "turnuser", "password": "turnpass", "uris": ["turn:turn.example.com:3478?transport=udp"], "ttl": 86400}`},
		})
	})
}
